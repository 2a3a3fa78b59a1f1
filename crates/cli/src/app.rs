//! Turns the template's app model into what the runtime side needs:
//! function specs and limits for the pool, the gateway's route
//! configuration, and the environment functions see.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use esb_config::Settings;

/// Loads the template with the settings' parameters, printing warnings once
/// (a local run lives with them; `esb validate` is the strict one).
pub fn load_template(settings: &Settings) -> anyhow::Result<esb_template::Loaded> {
    let opts = resolve_options(settings);
    match esb_template::load(&settings.template, &opts) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            if !loaded.warnings.is_empty() {
                eprintln!(
                    "note: {} warning(s) above; running anyway (`esb validate` fails on them)",
                    loaded.warnings.len()
                );
            }
            Ok(loaded)
        }
        Err(err) => Err(anyhow::anyhow!("{err}"))
            .with_context(|| format!("invalid template {}", settings.template.display())),
    }
}

/// Template resolution options from the settings.
pub fn resolve_options(settings: &Settings) -> esb_template::ResolveOptions {
    esb_template::ResolveOptions {
        region: settings.region.clone(),
        account_id: settings.account_id.clone(),
        stack_name: settings.stack_name.clone(),
        parameter_overrides: settings.parameters.clone(),
    }
}

/// A stable hash of a function's configuration (code path, handler,
/// runtime, environment), for telling stale workers apart.
fn config_hash(parts: &[&str]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Function specs and limits for the pool. `lambda_endpoint` is the URL
/// workers use for chained invocations; `ca_bundle` the certificate they
/// must trust for it (HTTPS); `service_env` the data services' endpoints
/// and the box credentials (a function's own variables override them).
pub fn function_specs(
    app: &esb_template::AppModel,
    settings: &Settings,
    lambda_endpoint: &str,
    ca_bundle: Option<&Path>,
    service_env: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<(esb_runtimes_core::FunctionSpec, esb_pool::FunctionLimits)>> {
    let mut out = Vec::new();
    for f in &app.functions {
        let code_dir = match &f.code {
            esb_template::FunctionCode::Zip { code_uri } => code_uri.clone(),
            esb_template::FunctionCode::Inline { code } => {
                write_inline(settings, &f.name, f.handler.as_deref(), code)?
            }
            esb_template::FunctionCode::S3 { uri } => {
                eprintln!(
                    "warning: function {}: code in S3 ({uri}) cannot be fetched offline; point CodeUri at a local directory",
                    f.name
                );
                continue;
            }
            esb_template::FunctionCode::Image { docker_context, .. } => {
                if settings.runtime != esb_config::RuntimeKind::Docker {
                    eprintln!(
                        "warning: function {} is a container image (PackageType: Image); the process runtime cannot run it and it is not served: use `esb build` and `esb up --runtime docker`",
                        f.name
                    );
                    continue;
                }
                // The image carries the code; the context only feeds the hash.
                docker_context
                    .clone()
                    .unwrap_or_else(|| app.base_dir.clone())
            }
        };
        let image = image_tag(f);
        let mut environment = BTreeMap::new();
        environment.insert(
            "AWS_ENDPOINT_URL_LAMBDA".to_string(),
            lambda_endpoint.to_string(),
        );
        if let Some(ca) = ca_bundle {
            environment.insert("AWS_CA_BUNDLE".to_string(), ca.display().to_string());
        }
        environment.extend(service_env.clone());
        environment.extend(f.environment.clone());
        let hash = config_hash(&[
            &code_dir.display().to_string(),
            f.handler.as_deref().unwrap_or(""),
            f.runtime.as_deref().unwrap_or(""),
            image.as_deref().unwrap_or(""),
            &format!("{environment:?}"),
        ]);
        let spec = esb_runtimes_core::FunctionSpec {
            name: f.name.clone(),
            runtime: f.runtime.clone().unwrap_or_default(),
            handler: f.handler.clone(),
            code_dir,
            image,
            memory_mb: f.memory_size,
            timeout: Duration::from_secs(f.timeout.into()),
            environment,
            region: settings.region.clone(),
            account_id: settings.account_id.clone(),
            code_hash: hash,
        };
        let limits = esb_pool::FunctionLimits {
            reserved_concurrency: f.reserved_concurrent_executions,
            min_warm: f.provisioned_concurrency.unwrap_or(0),
        };
        out.push((spec, limits));
    }
    Ok(out)
}

/// The image an image function runs: `ImageUri`, else the tag `esb build`
/// gives it, `<function name, lower-case>:<DockerTag or latest>`. `None`
/// for zip and inline functions.
pub fn image_tag(f: &esb_template::Function) -> Option<String> {
    let esb_template::FunctionCode::Image {
        image_uri,
        docker_tag,
        ..
    } = &f.code
    else {
        return None;
    };
    if let Some(uri) = image_uri {
        return Some(uri.clone());
    }
    // A repository name is lower-case letters, digits and separators.
    let repo: String = f
        .name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    Some(format!(
        "{repo}:{}",
        docker_tag.as_deref().unwrap_or("latest")
    ))
}

/// Writes `InlineCode` into the data directory as the handler's module.
fn write_inline(
    settings: &Settings,
    function: &str,
    handler: Option<&str>,
    code: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let dir = settings.data_dir.join("inline").join(function);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let module = handler
        .and_then(|h| h.rsplit_once('.').map(|(m, _)| m))
        .unwrap_or("index");
    let file = dir.join(format!("{module}.py"));
    std::fs::write(&file, code).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(std::fs::canonicalize(&dir)?)
}

/// Renders rows as an aligned text table (first row is the header).
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
