//! Function specs and pool limits from the template: where each function's
//! code is, the environment it sees (endpoints, credentials, its own
//! variables), its content hash, and the functions that cannot be served
//! (with the reason, for the caller to show).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use esb_config::{RuntimeKind, Settings};
use esb_runtimes_core::FunctionSpec;

use crate::code_hash::{HashInput, code_hash};
use crate::error::{AppError, Context};

/// What workers are told about their surroundings.
#[derive(Debug, Clone, Default)]
pub struct WorkerContext<'a> {
    /// URL workers use for chained invocations (`AWS_ENDPOINT_URL_LAMBDA`).
    pub lambda_endpoint: &'a str,
    /// Certificate they must trust for it (HTTPS).
    pub ca_bundle: Option<&'a Path>,
    /// Data services' endpoints (a function's own variables override them).
    pub service_env: BTreeMap<String, String>,
    /// Gives each function its own credentials (`AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY`); `None`: the runtime's placeholders.
    pub iam: Option<std::sync::Arc<esb_iam::Iam>>,
}

/// The functions to register, and why others are left out.
#[derive(Debug, Default)]
pub struct FunctionSet {
    /// Spec and limits of every function that can run.
    pub functions: Vec<(FunctionSpec, esb_pool::FunctionLimits)>,
    /// One line per function that is not served.
    pub warnings: Vec<String>,
}

impl FunctionSet {
    /// The spec of `name` (canonical name, logical id, or an alias such as
    /// a nested function's `FunctionName`).
    pub fn find(&self, app: &esb_template::AppModel, name: &str) -> Option<&FunctionSpec> {
        self.functions.iter().map(|(s, _)| s).find(|s| {
            s.name == name
                || app.functions.iter().any(|f| {
                    f.name == s.name
                        && (f.logical_id == name || f.aliases.iter().any(|a| a == name))
                })
        })
    }
}

/// Builds the specs and limits for the pool. `data_dir` receives inline
/// code.
pub fn function_specs(
    app: &esb_template::AppModel,
    settings: &Settings,
    data_dir: &Path,
    ctx: &WorkerContext<'_>,
) -> Result<FunctionSet, AppError> {
    let mut set = FunctionSet::default();
    let env_vars = match &settings.env_vars {
        Some(path) => {
            let e = crate::env_vars::EnvVars::load(path)?;
            for key in e.unknown_keys(app) {
                set.warnings.push(format!(
                    "warning: {}: {key:?} names no function of the template",
                    path.display()
                ));
            }
            Some(e)
        }
        None => None,
    };
    let launch_options = crate::checks::launch_options(settings);
    for f in &app.functions {
        // Located while loading (no handler, image without ImageUri, code
        // that cannot be found): only this function is left out, and its
        // routes answer with the reason (see `gateway::gateway_config`).
        if let Some(reason) = &f.unavailable {
            set.warnings.push(format!(
                "warning: function {} cannot run and is not served: {reason}",
                f.name
            ));
            continue;
        }
        // Checked at start, not at the first request.
        match crate::checks::function_problem_severity(&settings.template, f) {
            Some((problem, crate::checks::Severity::Fatal)) => {
                set.warnings.push(format!(
                    "warning: {problem}; function {} is not served",
                    f.name
                ));
                continue;
            }
            Some((problem, crate::checks::Severity::FailsAtInvoke)) => {
                set.warnings.push(format!(
                    "warning: {problem}; its invocations fail with Runtime.ImportModuleError"
                ));
            }
            None => {}
        }
        // Each runtime runs on its own interpreter version (`python3.12`
        // on Python 3.12, `nodejs20.x` on Node.js 20), never silently on
        // another one.
        if settings.runtime == RuntimeKind::Process
            && let Some(problem) =
                crate::checks::host_problem(&settings.template, f, &launch_options)
        {
            set.warnings.push(format!(
                "warning: {problem}; function {} is not served",
                f.name
            ));
            continue;
        }
        // The container runtimes' Node.js images are Debian's: Node.js 18
        // (bookworm) and 20 (trixie).
        if settings.runtime.is_container()
            && esb_runtimes_core::launch::node_major(f.runtime.as_deref().unwrap_or(""))
                .is_some_and(|major| major != 18 && major != 20)
            && !matches!(f.code, esb_template::FunctionCode::Image { .. })
        {
            set.warnings.push(format!(
                "warning: {}: Resources.{}.Properties.Runtime: function {}: the docker runtime has images for nodejs18.x and nodejs20.x only (Debian's Node.js; use --runtime process); it is not served",
                settings.template.display(),
                f.logical_id,
                f.name
            ));
            continue;
        }
        let code_dir = match &f.code {
            // A local `.zip` is unpacked once into the data dir, keyed by
            // its content hash.
            esb_template::FunctionCode::Zip { code_uri } if f.code_is_zip => {
                match esb_template::unpack_zip(code_uri, data_dir) {
                    Ok(dir) => dir,
                    Err(e) => {
                        set.warnings
                            .push(format!("warning: function {} is not served: {e}", f.name));
                        continue;
                    }
                }
            }
            esb_template::FunctionCode::Zip { code_uri } => code_uri.clone(),
            esb_template::FunctionCode::Inline { code } => {
                let ext = if f.runtime.as_deref().unwrap_or("").starts_with("nodejs") {
                    "js"
                } else {
                    "py"
                };
                write_inline(data_dir, &f.name, f.handler.as_deref(), code, ext)?
            }
            esb_template::FunctionCode::S3 { uri } => {
                set.warnings.push(format!(
                    "warning: function {}: code in S3 ({uri}) cannot be fetched offline; point CodeUri at a local directory",
                    f.name
                ));
                continue;
            }
            esb_template::FunctionCode::Image { docker_context, .. } => {
                if !settings.runtime.is_container() {
                    set.warnings.push(format!(
                        "warning: function {} is a container image (PackageType: Image); the process runtime cannot run it and it is not served: use `esb build` and `esb up --runtime docker`",
                        f.name
                    ));
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
            ctx.lambda_endpoint.to_string(),
        );
        // obs: CloudWatch Logs is served on the same listener.
        environment.insert(
            "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS".to_string(),
            ctx.lambda_endpoint.to_string(),
        );
        if let Some(ca) = ctx.ca_bundle {
            environment.insert("AWS_CA_BUNDLE".to_string(), ca.display().to_string());
        }
        environment.extend(ctx.service_env.clone());
        // The function's own credentials, never the box's: its calls to
        // S3, DynamoDB and the Invoke API are checked against its policies.
        if let Some(iam) = &ctx.iam {
            let creds = iam.credentials(&f.name);
            environment.insert("AWS_ACCESS_KEY_ID".to_string(), creds.access_key_id);
            environment.insert("AWS_SECRET_ACCESS_KEY".to_string(), creds.secret_access_key);
        }
        environment.extend(f.environment.clone());
        if let Some(e) = &env_vars {
            e.apply(f, &mut environment);
        }
        let layers = layer_dirs(app, f);
        // Dependencies `esb build` installed (docs/template.md, "esb build").
        let built = if settings.runtime == RuntimeKind::Process
            && matches!(f.code, esb_template::FunctionCode::Zip { .. })
        {
            crate::zip_build::artefacts(app, f, data_dir)
        } else {
            crate::zip_build::Artefacts::default()
        };
        set.warnings.extend(built.notes.iter().cloned());
        if settings.runtime == RuntimeKind::Process {
            let mut with_built = layers.clone();
            with_built.extend(built.layer_roots.iter().cloned());
            add_layer_python_path(&mut environment, &with_built);
            add_layer_node_path(&mut environment, &with_built);
            prepend_path(&mut environment, "PYTHONPATH", &built.python_path);
            prepend_path(&mut environment, "NODE_PATH", &built.node_path);
        }
        let layer_refs: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
        // A new build must restart workers: its stamps (not its thousands
        // of installed files) join the hash.
        let build_stamps: String = built
            .python_path
            .iter()
            .chain(&built.node_path)
            .chain(&built.layer_roots)
            .map(|p| {
                std::fs::read_to_string(
                    p.ancestors()
                        .find(|a| a.join(".esb-build.json").is_file())
                        .unwrap_or(p)
                        .join(".esb-build.json"),
                )
                .unwrap_or_default()
            })
            .collect();
        let image_or_build = match &image {
            Some(image) => image.clone(),
            None => build_stamps,
        };
        let hash = code_hash(&HashInput {
            code_dir: &code_dir,
            layers: &layer_refs,
            handler: f.handler.as_deref().unwrap_or(""),
            runtime: f.runtime.as_deref().unwrap_or(""),
            image: &image_or_build,
            environment: &environment,
        });
        let spec = FunctionSpec {
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
        set.functions.push((spec, limits));
    }
    Ok(set)
}

/// Puts the layers' Python folders on the function's `PYTHONPATH`, in
/// layer order, before the function's own entries: on AWS a layer is
/// unpacked into `/opt` and `/opt/python` (plus its
/// `python/lib/pythonX.Y/site-packages`) is on `sys.path`. The process
/// runtime uses the layer folders where they are.
fn add_layer_python_path(environment: &mut BTreeMap<String, String>, layers: &[PathBuf]) {
    let mut entries = Vec::new();
    for layer in layers {
        let python = layer.join("python");
        if !python.is_dir() {
            continue;
        }
        entries.push(python.display().to_string());
        if let Ok(lib) = std::fs::read_dir(python.join("lib")) {
            let mut versions: Vec<PathBuf> = lib
                .filter_map(Result::ok)
                .map(|e| e.path().join("site-packages"))
                .filter(|p| p.is_dir())
                .collect();
            versions.sort();
            entries.extend(versions.iter().map(|p| p.display().to_string()));
        }
    }
    if entries.is_empty() {
        return;
    }
    if let Some(own) = environment.get("PYTHONPATH").filter(|p| !p.is_empty()) {
        entries.push(own.clone());
    }
    environment.insert("PYTHONPATH".to_string(), entries.join(":"));
}

/// Puts `dirs` first on the `PATH`-style variable `name`.
fn prepend_path(environment: &mut BTreeMap<String, String>, name: &str, dirs: &[PathBuf]) {
    if dirs.is_empty() {
        return;
    }
    let mut entries: Vec<String> = dirs.iter().map(|p| p.display().to_string()).collect();
    if let Some(own) = environment.get(name).filter(|p| !p.is_empty()) {
        entries.push(own.clone());
    }
    environment.insert(name.to_string(), entries.join(":"));
}

/// Puts the layers' `nodejs/node_modules` folders on `NODE_PATH`, as AWS
/// does with `/opt/nodejs/node_modules`.
fn add_layer_node_path(environment: &mut BTreeMap<String, String>, layers: &[PathBuf]) {
    let mut entries: Vec<String> = layers
        .iter()
        .map(|l| l.join("nodejs").join("node_modules"))
        .filter(|p| p.is_dir())
        .map(|p| p.display().to_string())
        .collect();
    if entries.is_empty() {
        return;
    }
    if let Some(own) = environment.get("NODE_PATH").filter(|p| !p.is_empty()) {
        entries.push(own.clone());
    }
    environment.insert("NODE_PATH".to_string(), entries.join(":"));
}

/// Local content directories of the template layers a function uses.
fn layer_dirs(app: &esb_template::AppModel, f: &esb_template::Function) -> Vec<PathBuf> {
    f.layers
        .iter()
        .filter_map(|l| {
            let id = l.layer.as_deref()?;
            let layer = app.layers.iter().find(|x| x.logical_id == id)?;
            match &layer.content {
                Some(esb_template::FunctionCode::Zip { code_uri }) => Some(code_uri.clone()),
                _ => None,
            }
        })
        .collect()
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
/// The file stays readable (0644) inside the 0700 data directory: a
/// container worker with another uid reads it through its bind mount.
fn write_inline(
    data_dir: &Path,
    function: &str,
    handler: Option<&str>,
    code: &str,
    ext: &str,
) -> Result<PathBuf, AppError> {
    let dir = data_dir.join("inline").join(function);
    std::fs::create_dir_all(&dir).context(|| format!("cannot create {}", dir.display()))?;
    let module = handler
        .and_then(|h| h.rsplit_once('.').map(|(m, _)| m))
        .unwrap_or("index");
    let file = dir.join(format!("{module}.{ext}"));
    std::fs::write(&file, code).context(|| format!("cannot write {}", file.display()))?;
    std::fs::canonicalize(&dir).context(|| format!("cannot resolve {}", dir.display()))
}
