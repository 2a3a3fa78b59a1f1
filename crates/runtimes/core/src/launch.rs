//! Launch plans: which program starts the runtime client for a Lambda
//! runtime identifier, and the environment it gets.
//!
//! A [`LaunchPlan`] is pure data (program, arguments, extra variables,
//! working directory) so the in-process supervisor and a future
//! in-container supervisor start runtimes the same way. [`plan`] may look
//! at the machine (is `python3.11` on `PATH`, can it import
//! `awslambdaric`) and writes ESB's built-in Python files into the cache
//! directory; it is blocking, so async callers run it on a blocking thread.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::{FunctionSpec, RuntimeError};

/// Source of ESB's built-in Python runtime client (standard library only).
pub const PYTHON_BOOTSTRAP_SOURCE: &str = include_str!("../assets/python/esb_bootstrap.py");

/// Source of the `sitecustomize.py` that makes old botocore honour
/// `AWS_ENDPOINT_URL_<SERVICE>`; put first on `PYTHONPATH` for Python
/// workers.
pub const PYTHON_SITECUSTOMIZE_SOURCE: &str = include_str!("../assets/python/sitecustomize.py");

/// `PATH` given to runtimes when ESB itself has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Which Python runtime client runs `python3.x` functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PythonBootstrap {
    /// `awslambdaric` when the interpreter can import it, else the built-in
    /// bootstrap.
    #[default]
    Auto,
    /// Always ESB's built-in bootstrap.
    Builtin,
    /// Always `python -m awslambdaric` (fails to start when not installed).
    Awslambdaric,
}

impl PythonBootstrap {
    /// Parses the value of `ESB_PYTHON_BOOTSTRAP` (`auto`, `builtin`,
    /// `awslambdaric`).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(Self::Auto),
            "builtin" | "built-in" => Some(Self::Builtin),
            "awslambdaric" | "ric" => Some(Self::Awslambdaric),
            _ => None,
        }
    }
}

/// Machine-level choices for [`plan`].
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Python interpreter to use instead of `python3.11` / `python3` from
    /// `PATH`.
    pub python: Option<PathBuf>,
    /// Which Python runtime client to run.
    pub python_bootstrap: PythonBootstrap,
    /// Directory where ESB writes its built-in runtime files.
    pub cache_dir: PathBuf,
    /// `PATH` used to find interpreters (ESB's own `PATH`).
    pub search_path: Option<String>,
    /// Backend name for [`RuntimeError::UnsupportedRuntime`].
    pub backend: &'static str,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        Self {
            python: None,
            python_bootstrap: PythonBootstrap::Auto,
            cache_dir: default_cache_dir(),
            search_path: std::env::var("PATH").ok(),
            backend: "process",
        }
    }
}

/// `$TMPDIR/esb-runtime-<uid>`: a per-user cache for the built-in runtime
/// files when no data directory is configured.
pub fn default_cache_dir() -> PathBuf {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".to_string());
    std::env::temp_dir().join(format!("esb-runtime-{user}"))
}

/// How to start one function's runtime client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Program to execute.
    pub program: PathBuf,
    /// Its arguments (without the program itself).
    pub args: Vec<String>,
    /// Runtime-specific variables (`PYTHONPATH`, `PYTHONUNBUFFERED`);
    /// [`runtime_environment`] merges them with the Lambda variables.
    pub env: Vec<(String, String)>,
    /// Working directory (the code directory, like `/var/task`).
    pub working_dir: PathBuf,
    /// Value of `AWS_EXECUTION_ENV` (`AWS_Lambda_python3.12`); `None` for
    /// `provided` runtimes, as on AWS.
    pub execution_env: Option<String>,
    /// Short human description (`python3.11 + awslambdaric`).
    pub description: String,
}

/// Chooses the program for `spec`'s runtime.
///
/// Errors: [`RuntimeError::InvalidCode`] when a `provided` function has no
/// executable `bootstrap`, [`RuntimeError::UnsupportedRuntime`] for
/// runtimes without a plan, [`RuntimeError::Spawn`] when no Python
/// interpreter is found.
pub fn plan(spec: &FunctionSpec, options: &LaunchOptions) -> Result<LaunchPlan, RuntimeError> {
    let runtime = spec.runtime.as_str();
    if runtime.starts_with("python3") {
        return plan_python(spec, options);
    }
    if runtime == "provided" || runtime.starts_with("provided.") {
        return plan_provided(spec);
    }
    Err(RuntimeError::UnsupportedRuntime {
        function: spec.name.clone(),
        runtime: spec.runtime.clone(),
        backend: options.backend,
    })
}

fn plan_provided(spec: &FunctionSpec) -> Result<LaunchPlan, RuntimeError> {
    let bootstrap = spec.code_dir.join("bootstrap");
    let executable = std::fs::metadata(&bootstrap)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    if !executable {
        return Err(RuntimeError::InvalidCode {
            function: spec.name.clone(),
            message: format!(
                "Runtime.InvalidEntrypoint: no executable bootstrap at {}",
                bootstrap.display()
            ),
        });
    }
    Ok(LaunchPlan {
        program: bootstrap,
        args: Vec::new(),
        env: Vec::new(),
        working_dir: spec.code_dir.clone(),
        execution_env: None,
        description: format!("{} bootstrap", spec.runtime),
    })
}

fn plan_python(spec: &FunctionSpec, options: &LaunchOptions) -> Result<LaunchPlan, RuntimeError> {
    let spawn_error = |message: String| RuntimeError::Spawn {
        function: spec.name.clone(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, message),
    };
    let requested = match &options.python {
        Some(path) => path.clone(),
        None => ["python3.11", "python3"]
            .iter()
            .find_map(|name| find_on_path(name, options.search_path.as_deref()))
            .ok_or_else(|| spawn_error("no python3.11 or python3 on PATH".to_string()))?,
    };
    let info = probe_python(&requested).map_err(spawn_error)?;
    let handler = spec.handler.clone().unwrap_or_default();
    let use_ric = match options.python_bootstrap {
        PythonBootstrap::Auto => info.has_awslambdaric,
        PythonBootstrap::Builtin => false,
        PythonBootstrap::Awslambdaric => {
            if !info.has_awslambdaric {
                return Err(RuntimeError::Backend(format!(
                    "function {}: awslambdaric is not importable by {} (pip install awslambdaric)",
                    spec.name,
                    info.executable.display()
                )));
            }
            true
        }
    };
    let files = write_python_files(&options.cache_dir).map_err(|source| RuntimeError::Spawn {
        function: spec.name.clone(),
        source,
    })?;
    let (args, description) = if use_ric {
        (
            vec!["-m".to_string(), "awslambdaric".to_string(), handler],
            format!("{} + awslambdaric", info.executable.display()),
        )
    } else {
        (
            // `-S`: no `site` start-up (its `.pth` hooks cost megabytes per
            // worker); the bootstrap adds site-packages itself.
            vec![
                "-S".to_string(),
                files.bootstrap.to_string_lossy().into_owned(),
                handler,
            ],
            format!("{} + esb built-in bootstrap", info.executable.display()),
        )
    };
    Ok(LaunchPlan {
        program: info.executable,
        args,
        env: vec![
            (
                "PYTHONPATH".to_string(),
                files.site_dir.to_string_lossy().into_owned(),
            ),
            ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        ],
        working_dir: spec.code_dir.clone(),
        execution_env: Some(format!("AWS_Lambda_{}", spec.runtime)),
        description,
    })
}

/// Finds an executable `name` in a `PATH`-style list.
pub fn find_on_path(name: &str, search_path: Option<&str>) -> Option<PathBuf> {
    let search_path = search_path.unwrap_or(DEFAULT_PATH);
    std::env::split_paths(OsStr::new(search_path))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[derive(Debug, Clone)]
struct PythonInfo {
    /// `sys.executable`: the real interpreter, so a pyenv shim (a shell
    /// script costing tens of ms) is not run for every worker.
    executable: PathBuf,
    has_awslambdaric: bool,
}

static PYTHON_PROBES: Mutex<Option<HashMap<PathBuf, PythonInfo>>> = Mutex::new(None);

fn probe_python(python: &Path) -> Result<PythonInfo, String> {
    if let Ok(guard) = PYTHON_PROBES.lock()
        && let Some(info) = guard.as_ref().and_then(|m| m.get(python))
    {
        return Ok(info.clone());
    }
    let output = std::process::Command::new(python)
        .args([
            "-c",
            "import sys, importlib.util\nprint(sys.executable)\nprint(1 if importlib.util.find_spec('awslambdaric') else 0)",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed: {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let executable = lines
        .next()
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| python.to_path_buf());
    let has_awslambdaric = lines.next() == Some("1");
    let info = PythonInfo {
        executable,
        has_awslambdaric,
    };
    if let Ok(mut guard) = PYTHON_PROBES.lock() {
        guard
            .get_or_insert_with(HashMap::new)
            .insert(python.to_path_buf(), info.clone());
    }
    Ok(info)
}

/// Where the built-in Python files were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonFiles {
    /// The built-in bootstrap script.
    pub bootstrap: PathBuf,
    /// Directory holding `sitecustomize.py` (first on `PYTHONPATH`).
    pub site_dir: PathBuf,
}

/// Writes the built-in bootstrap and `sitecustomize.py` under `cache_dir`
/// (only when missing or different, atomically by rename so concurrent
/// starts never see a half-written file).
pub fn write_python_files(cache_dir: &Path) -> std::io::Result<PythonFiles> {
    let bootstrap_dir = cache_dir.join("python-bootstrap");
    let site_dir = cache_dir.join("python-site");
    let bootstrap = bootstrap_dir.join("esb_bootstrap.py");
    write_if_changed(&bootstrap, PYTHON_BOOTSTRAP_SOURCE)?;
    write_if_changed(
        &site_dir.join("sitecustomize.py"),
        PYTHON_SITECUSTOMIZE_SOURCE,
    )?;
    Ok(PythonFiles {
        bootstrap,
        site_dir,
    })
}

fn write_if_changed(path: &Path, content: &str) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == content.as_bytes()) {
        return Ok(());
    }
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("cache path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

/// Per-worker values for [`runtime_environment`].
#[derive(Debug, Clone)]
pub struct WorkerEnvironment<'a> {
    /// `host:port` of the worker's Runtime API.
    pub runtime_api: &'a str,
    /// Worker id (log stream suffix).
    pub worker_id: &'a str,
    /// Today's date as `YYYY/MM/DD` (log stream prefix).
    pub date: &'a str,
    /// `PATH` for the runtime (ESB's own, so interpreters are found).
    pub path: Option<&'a str>,
    /// `HOME` for the runtime.
    pub home: Option<&'a str>,
}

/// The complete environment of a runtime process: the only variables it
/// sees (the supervisor clears ESB's own environment).
///
/// Precedence, lowest first (as RIE): unreserved defaults (`PATH`, `LANG`,
/// `HOME`) < the function's variables (`spec.environment`) < credentials
/// (the function's, else placeholders) < runtime-specific variables
/// (`PYTHONPATH` is prefixed, not replaced) < reserved Lambda variables.
pub fn runtime_environment(
    spec: &FunctionSpec,
    plan: &LaunchPlan,
    worker: &WorkerEnvironment<'_>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let set = |env: &mut BTreeMap<String, String>, k: &str, v: &str| {
        env.insert(k.to_string(), v.to_string());
    };
    set(&mut env, "PATH", worker.path.unwrap_or(DEFAULT_PATH));
    if let Some(home) = worker.home {
        set(&mut env, "HOME", home);
    }
    set(&mut env, "LANG", "en_US.UTF-8");
    for (k, v) in &spec.environment {
        env.insert(k.clone(), v.clone());
    }
    for (k, placeholder) in [
        ("AWS_ACCESS_KEY_ID", "esb-local-access-key"),
        ("AWS_SECRET_ACCESS_KEY", "esb-local-secret-key"),
        ("AWS_SESSION_TOKEN", "esb-local-session-token"),
    ] {
        env.entry(k.to_string())
            .or_insert_with(|| placeholder.to_string());
    }
    for (k, v) in &plan.env {
        match (k.as_str(), env.get(k)) {
            ("PYTHONPATH", Some(user)) if !user.is_empty() => {
                let joined = format!("{v}:{user}");
                env.insert(k.clone(), joined);
            }
            _ => {
                env.insert(k.clone(), v.clone());
            }
        }
    }
    let task_root = spec.code_dir.to_string_lossy();
    let memory = spec.memory_mb.to_string();
    let log_group = format!("/aws/lambda/{}", spec.name);
    let log_stream = format!("{}/[$LATEST]{}", worker.date, worker.worker_id);
    let handler = spec.handler.as_deref().unwrap_or("");
    for (k, v) in [
        ("AWS_LAMBDA_RUNTIME_API", worker.runtime_api),
        ("_HANDLER", handler),
        ("LAMBDA_TASK_ROOT", &task_root),
        ("LAMBDA_RUNTIME_DIR", &task_root),
        ("AWS_LAMBDA_FUNCTION_NAME", &spec.name),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", &memory),
        ("AWS_LAMBDA_LOG_GROUP_NAME", &log_group),
        ("AWS_LAMBDA_LOG_STREAM_NAME", &log_stream),
        ("AWS_REGION", &spec.region),
        ("AWS_DEFAULT_REGION", &spec.region),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand"),
        ("TZ", ":UTC"),
    ] {
        set(&mut env, k, v);
    }
    match &plan.execution_env {
        Some(exec_env) => set(&mut env, "AWS_EXECUTION_ENV", exec_env),
        None => {
            env.remove("AWS_EXECUTION_ENV");
        }
    }
    // Internal to AWS: RICs would write framed logs to it instead of stdout.
    env.remove("_LAMBDA_TELEMETRY_LOG_FD");
    env.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(runtime: &str, code_dir: PathBuf) -> FunctionSpec {
        FunctionSpec {
            name: "hello".to_string(),
            runtime: runtime.to_string(),
            handler: Some("app.handler".to_string()),
            code_dir,
            image: None,
            memory_mb: 256,
            timeout: Duration::from_secs(3),
            environment: BTreeMap::from([
                ("TABLE".to_string(), "items".to_string()),
                (
                    "AWS_LAMBDA_FUNCTION_NAME".to_string(),
                    "spoofed".to_string(),
                ),
                ("AWS_ACCESS_KEY_ID".to_string(), "AKIAUSER".to_string()),
                ("PYTHONPATH".to_string(), "/opt/python".to_string()),
            ]),
            region: "eu-west-1".to_string(),
            account_id: "123456789012".to_string(),
            code_hash: "h".to_string(),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("esb-launch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn provided_requires_an_executable_bootstrap() {
        let dir = temp_dir("provided");
        let spec = spec("provided.al2023", dir.clone());
        let err = plan(&spec, &LaunchOptions::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("Runtime.InvalidEntrypoint"), "{text}");
        assert!(
            text.contains(&dir.join("bootstrap").display().to_string()),
            "{text}"
        );

        std::fs::write(dir.join("bootstrap"), "#!/bin/sh\n").unwrap();
        assert!(
            plan(&spec, &LaunchOptions::default()).is_err(),
            "not executable yet"
        );
        std::fs::set_permissions(
            dir.join("bootstrap"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let plan = plan(&spec, &LaunchOptions::default()).unwrap();
        assert_eq!(plan.program, dir.join("bootstrap"));
        assert_eq!(plan.execution_env, None);
    }

    #[test]
    fn unknown_runtime_is_unsupported() {
        let spec = spec("java21", std::env::temp_dir());
        assert!(matches!(
            plan(&spec, &LaunchOptions::default()),
            Err(RuntimeError::UnsupportedRuntime { .. })
        ));
    }

    #[test]
    fn python_builtin_plan_writes_the_bootstrap() {
        let cache = temp_dir("cache");
        let options = LaunchOptions {
            python_bootstrap: PythonBootstrap::Builtin,
            cache_dir: cache.clone(),
            ..LaunchOptions::default()
        };
        let spec = spec("python3.12", std::env::temp_dir());
        let plan = plan(&spec, &options).unwrap();
        let script = cache.join("python-bootstrap/esb_bootstrap.py");
        assert_eq!(
            plan.args,
            vec![
                "-S".to_string(),
                script.display().to_string(),
                "app.handler".to_string()
            ]
        );
        assert_eq!(
            std::fs::read_to_string(script).unwrap(),
            PYTHON_BOOTSTRAP_SOURCE
        );
        assert!(cache.join("python-site/sitecustomize.py").is_file());
        assert_eq!(plan.execution_env.as_deref(), Some("AWS_Lambda_python3.12"));
    }

    #[test]
    fn environment_reserved_variables_win_and_user_values_pass() {
        let spec = spec("python3.12", PathBuf::from("/srv/code"));
        let plan = LaunchPlan {
            program: PathBuf::from("/usr/bin/python3"),
            args: vec![],
            env: vec![("PYTHONPATH".to_string(), "/cache/site".to_string())],
            working_dir: spec.code_dir.clone(),
            execution_env: Some("AWS_Lambda_python3.12".to_string()),
            description: String::new(),
        };
        let env: BTreeMap<_, _> = runtime_environment(
            &spec,
            &plan,
            &WorkerEnvironment {
                runtime_api: "127.0.0.1:4000",
                worker_id: "w1",
                date: "2026/01/02",
                path: Some("/bin"),
                home: None,
            },
        )
        .into_iter()
        .collect();
        assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "hello");
        assert_eq!(env["TABLE"], "items");
        assert_eq!(env["AWS_ACCESS_KEY_ID"], "AKIAUSER");
        assert_eq!(env["AWS_SECRET_ACCESS_KEY"], "esb-local-secret-key");
        assert_eq!(env["PYTHONPATH"], "/cache/site:/opt/python");
        assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/hello");
        assert_eq!(env["AWS_LAMBDA_LOG_STREAM_NAME"], "2026/01/02/[$LATEST]w1");
        assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256");
        assert_eq!(env["AWS_LAMBDA_RUNTIME_API"], "127.0.0.1:4000");
        assert_eq!(env["LAMBDA_TASK_ROOT"], "/srv/code");
        assert_eq!(env["AWS_REGION"], "eu-west-1");
        assert_eq!(env["TZ"], ":UTC");
        assert_eq!(env["PATH"], "/bin");
        assert_eq!(env["AWS_LAMBDA_INITIALIZATION_TYPE"], "on-demand");
    }

    #[test]
    fn bootstrap_mode_parses() {
        assert_eq!(
            PythonBootstrap::parse("builtin"),
            Some(PythonBootstrap::Builtin)
        );
        assert_eq!(
            PythonBootstrap::parse("AWSLAMBDARIC"),
            Some(PythonBootstrap::Awslambdaric)
        );
        assert_eq!(PythonBootstrap::parse("other"), None);
    }
}
