//! Checks at start for what would otherwise fail at the first request: a
//! missing code folder, a handler module (or `bootstrap`) that is not in
//! it, a runtime ESB does not run. Each problem names the template, the
//! property and the function; `esb validate` fails on it. `esb up` warns;
//! it leaves the function out when it cannot start at all (no code folder,
//! a runtime ESB does not run) and keeps serving it when only the handler
//! module is missing, so its invocations fail with
//! `Runtime.ImportModuleError` as they do on AWS.
//!
//! Must not: start anything (it only looks at files).

use std::path::Path;

use esb_template::{Function, FunctionCode};

/// Runtimes the process and docker backends run.
pub const SUPPORTED_RUNTIMES: &str =
    "python3.x, nodejs18.x, nodejs20.x, nodejs22.x, provided, provided.al2, provided.al2023";

/// Whether a function with a problem can still be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// It cannot start: leave it out.
    Fatal,
    /// It starts and fails at its invocations with the runtime's own error
    /// (`Runtime.ImportModuleError`), as on AWS: keep serving it.
    FailsAtInvoke,
}

/// Why `f` cannot run and how badly; see [`function_problem`].
pub fn function_problem_severity(template: &Path, f: &Function) -> Option<(String, Severity)> {
    let problem = function_problem(template, f)?;
    let runtime = f.runtime.as_deref().unwrap_or_default();
    let fails_at_invoke = runtime_problem(f).is_none()
        && matches!(&f.code, FunctionCode::Zip { code_uri } if code_uri.is_dir())
        && (runtime.starts_with("python3") || runtime.starts_with("nodejs"));
    let severity = if fails_at_invoke {
        Severity::FailsAtInvoke
    } else {
        Severity::Fatal
    };
    Some((problem, severity))
}

/// Why `f` cannot run, located (`template.yaml: Resources.Fn.Properties.CodeUri: ...`);
/// `None` when nothing is wrong or the template already said why.
pub fn function_problem(template: &Path, f: &Function) -> Option<String> {
    if f.unavailable.is_some() {
        return None;
    }
    let at = |prop: &str| {
        format!(
            "{}: Resources.{}.Properties.{prop}",
            template.display(),
            f.logical_id
        )
    };
    let FunctionCode::Zip { code_uri } = &f.code else {
        // Images bring their runtime; inline code is written by ESB.
        return runtime_problem(f).map(|why| format!("{}: {why}", at("Runtime")));
    };
    if let Some(why) = runtime_problem(f) {
        return Some(format!("{}: {why}", at("Runtime")));
    }
    let code_prop = if f.resource_type == "AWS::Lambda::Function" {
        "Code"
    } else {
        "CodeUri"
    };
    if !code_uri.exists() {
        return Some(format!(
            "{}: function {}: code folder {} does not exist",
            at(code_prop),
            f.name,
            code_uri.display()
        ));
    }
    if f.code_is_zip || !code_uri.is_dir() || !f.layers.is_empty() {
        // A zip is checked when unpacked; layers may bring the module.
        return None;
    }
    let runtime = f.runtime.as_deref().unwrap_or_default();
    if runtime.starts_with("python3") {
        let handler = f.handler.as_deref().unwrap_or_default();
        let Some((module, _)) = handler.rsplit_once('.') else {
            return Some(format!(
                "{}: function {}: handler {handler:?} is not module.function",
                at("Handler"),
                f.name
            ));
        };
        let rel = module.replace('.', "/");
        let file = code_uri.join(format!("{rel}.py"));
        let package = code_uri.join(&rel).join("__init__.py");
        if !file.is_file() && !package.is_file() && !code_uri.join(&rel).is_dir() {
            return Some(format!(
                "{}: function {}: handler module {module} not found ({} does not exist)",
                at("Handler"),
                f.name,
                file.display()
            ));
        }
    } else if runtime.starts_with("nodejs") {
        let handler = f.handler.as_deref().unwrap_or_default();
        let slash = handler.rfind('/').map_or(0, |i| i + 1);
        let Some(dot) = handler[slash..].find('.').map(|i| i + slash) else {
            return Some(format!(
                "{}: function {}: handler {handler:?} is not file.function",
                at("Handler"),
                f.name
            ));
        };
        let module = &handler[..dot];
        let found = ["js", "mjs", "cjs"]
            .iter()
            .any(|ext| code_uri.join(format!("{module}.{ext}")).is_file());
        if !found {
            return Some(format!(
                "{}: function {}: handler file {module}.js (or .mjs, .cjs) not found in {}",
                at("Handler"),
                f.name,
                code_uri.display()
            ));
        }
    } else if runtime.starts_with("provided") && !code_uri.join("bootstrap").is_file() {
        return Some(format!(
            "{}: function {}: runtime {runtime} needs an executable `bootstrap` in {}",
            at(code_prop),
            f.name,
            code_uri.display()
        ));
    }
    None
}

/// Why the function's runtime cannot run here.
fn runtime_problem(f: &Function) -> Option<String> {
    let runtime = f.runtime.as_deref()?;
    let ok = esb_runtimes_core::launch::python_version(runtime).is_some()
        || esb_runtimes_core::launch::NODE_RUNTIMES.contains(&runtime)
        || runtime == "provided"
        || runtime.starts_with("provided.");
    (!ok).then(|| {
        format!(
            "function {}: runtime {runtime} is not run by ESB (supported: {SUPPORTED_RUNTIMES})",
            f.name
        )
    })
}

/// Why `f`'s runtime cannot run on this machine under the process runtime:
/// no interpreter of its exact version (`python3.12` needs `python3.12`,
/// `nodejs22.x` a Node.js 22), located at its `Runtime` property. Runs the
/// interpreters once to read their versions (cached).
pub fn host_problem(
    template: &Path,
    f: &Function,
    options: &esb_runtimes_core::launch::LaunchOptions,
) -> Option<String> {
    if f.unavailable.is_some()
        || !matches!(
            f.code,
            FunctionCode::Zip { .. } | FunctionCode::Inline { .. }
        )
    {
        return None;
    }
    let runtime = f.runtime.as_deref()?;
    let why = esb_runtimes_core::launch::host_runtime_problem(runtime, options)?;
    Some(format!(
        "{}: Resources.{}.Properties.Runtime: function {}: {why}",
        template.display(),
        f.logical_id,
        f.name
    ))
}

/// The launch options the process runtime will use for `settings`.
pub fn launch_options(settings: &esb_config::Settings) -> esb_runtimes_core::launch::LaunchOptions {
    esb_runtimes_core::launch::LaunchOptions {
        python: settings.python.clone(),
        ..esb_runtimes_core::launch::LaunchOptions::default()
    }
}

/// Every problem of the app's functions, in template order.
pub fn problems(template: &Path, app: &esb_template::AppModel) -> Vec<String> {
    app.functions
        .iter()
        .filter_map(|f| function_problem(template, f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_missing_folder_module_bootstrap_and_runtime() {
        let root = std::env::temp_dir().join(format!("esb-checks-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join("src/pkg")).unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("src/app.py"), "def handler(e, c): return 1\n").unwrap();
        std::fs::write(root.join("src/pkg/mod.py"), "def h(e, c): return 1\n").unwrap();
        let fn_yaml = |id: &str, code: &str, handler: &str, runtime: &str| {
            format!(
                "  {id}:\n    Type: AWS::Serverless::Function\n    Properties: {{CodeUri: {code}, Handler: {handler}, Runtime: {runtime}}}\n"
            )
        };
        let template = format!(
            "Transform: AWS::Serverless-2016-10-31\nResources:\n{}{}{}{}{}{}",
            fn_yaml("Good", "src/", "app.handler", "python3.11"),
            fn_yaml("Dotted", "src/", "pkg.mod.h", "python3.12"),
            fn_yaml("NoDir", "nope/", "app.handler", "python3.11"),
            fn_yaml("NoFile", "src/", "missing.handler", "python3.11"),
            fn_yaml("Node16", "src/", "app.handler", "nodejs16.x"),
            fn_yaml("NoBootstrap", "bin/", "x", "provided.al2023"),
        );
        std::fs::write(root.join("template.yaml"), template).unwrap();
        let loaded = esb_template::load(
            &root.join("template.yaml"),
            &esb_template::ResolveOptions::default(),
        )
        .unwrap();
        let found = problems(Path::new("template.yaml"), &loaded.app);
        let text = found.join("\n");
        assert_eq!(found.len(), 4, "{text}");
        assert!(
            text.contains("Resources.NoDir.Properties.CodeUri"),
            "{text}"
        );
        assert!(text.contains("code folder"), "{text}");
        assert!(
            text.contains("Resources.NoFile.Properties.Handler"),
            "{text}"
        );
        assert!(text.contains("runtime nodejs16.x is not run"), "{text}");
        assert!(
            text.contains("NoBootstrap") && text.contains("bootstrap"),
            "{text}"
        );
        assert!(!text.contains("Good") && !text.contains("Dotted"), "{text}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
