//! Launch plans: which program starts the runtime client for a Lambda
//! runtime identifier, and the environment it gets.
//!
//! A [`LaunchPlan`] is pure data (program, arguments, extra variables,
//! working directory). [`plan_for_target`] is the only planner: the process
//! runtime and the docker runtime (inside the agent) describe their
//! sandbox as a [`LaunchTarget`] and get the same choices (built-in
//! bootstrap or awslambdaric, `provided` bootstrap, image ENTRYPOINT/CMD).
//! [`plan`] is the process runtime's entry: it looks at the machine (is
//! `python3.11` on `PATH`, can it import `awslambdaric`) and writes ESB's
//! built-in Python files into the cache directory; it is blocking, so async
//! callers run it on a blocking thread.

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

/// Source of ESB's built-in Node.js runtime client (Node's standard library
/// only), an ES module so it can load CommonJS and ES module handlers.
pub const NODE_BOOTSTRAP_SOURCE: &str = include_str!("../assets/node/esb_bootstrap.mjs");

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

/// Which Node.js runtime client runs `nodejsNN.x` functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeBootstrap {
    /// AWS's `aws-lambda-ric` when the function's `node_modules` has it,
    /// else the built-in bootstrap.
    #[default]
    Auto,
    /// Always ESB's built-in bootstrap.
    Builtin,
    /// Always `aws-lambda-ric` (fails to start when not installed).
    AwsLambdaRic,
}

impl NodeBootstrap {
    /// Parses the value of `ESB_NODE_BOOTSTRAP` (`auto`, `builtin`,
    /// `aws-lambda-ric`).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(Self::Auto),
            "builtin" | "built-in" => Some(Self::Builtin),
            "aws-lambda-ric" | "awslambdaric" | "ric" => Some(Self::AwsLambdaRic),
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
    /// Node.js binary to try first for `nodejsNN.x` functions (`ESB_NODE`);
    /// used when its major version is the function's.
    pub node: Option<PathBuf>,
    /// Which Node.js runtime client to run (`ESB_NODE_BOOTSTRAP`).
    pub node_bootstrap: NodeBootstrap,
}

impl Default for LaunchOptions {
    /// Defaults, with `ESB_NODE` and `ESB_NODE_BOOTSTRAP` read from the
    /// environment (an unknown bootstrap value means `auto`).
    fn default() -> Self {
        Self {
            python: None,
            python_bootstrap: PythonBootstrap::Auto,
            cache_dir: default_cache_dir(),
            search_path: std::env::var("PATH").ok(),
            backend: "process",
            node: std::env::var_os("ESB_NODE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            node_bootstrap: std::env::var("ESB_NODE_BOOTSTRAP")
                .ok()
                .and_then(|v| NodeBootstrap::parse(&v))
                .unwrap_or_default(),
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

/// A Python interpreter as the sandbox sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonRuntime {
    /// The interpreter (`/usr/bin/python3.11` here, `python3` in a
    /// container).
    pub program: PathBuf,
    /// Whether it can import `awslambdaric`.
    pub has_awslambdaric: bool,
}

/// `ENTRYPOINT`, `CMD` and labels of a function's container image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// The image's `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// The image's `CMD`.
    pub cmd: Vec<String>,
    /// The image's `WORKDIR`, if set.
    pub working_dir: Option<String>,
    /// The `io.esb.runtime` label of ESB's base images (`python3.11`).
    pub esb_runtime: Option<String>,
}

/// Where a plan will run, as seen from inside the sandbox: the one input
/// that differs between the process runtime (host paths, a probed
/// interpreter) and the docker runtime (`/var/task`, `/esb/runtime`, the
/// image's `python3`).
#[derive(Debug, Clone)]
pub struct LaunchTarget {
    /// Backend name for [`RuntimeError::UnsupportedRuntime`].
    pub backend: &'static str,
    /// The interpreter for `python3.x` functions; `None` when there is
    /// none (a Python function then fails to start).
    pub python: Option<PythonRuntime>,
    /// Which Python runtime client to run.
    pub python_bootstrap: PythonBootstrap,
    /// ESB's built-in runtime files (`python-bootstrap/`, `python-site/`)
    /// as the runtime sees them.
    pub runtime_files: PathBuf,
    /// The function's code as the runtime sees it (`LAMBDA_TASK_ROOT`).
    pub task_root: PathBuf,
    /// The image's configuration, for `PackageType: Image` functions.
    pub image: Option<ImageConfig>,
}

/// A plan and the handler (`_HANDLER`) the runtime gets with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLaunch {
    /// How to start the runtime client.
    pub plan: LaunchPlan,
    /// The handler: the `Handler` property, or for images
    /// `ImageConfig.Command` / the image's `CMD`.
    pub handler: Option<String>,
}

/// Chooses the program for `spec`'s runtime on this machine (the process
/// runtime): finds and probes the Python interpreter, writes the built-in
/// files into the cache directory, then plans with [`plan_for_target`].
///
/// Errors: [`RuntimeError::InvalidCode`] when a `provided` function has no
/// executable `bootstrap`, [`RuntimeError::UnsupportedRuntime`] for
/// runtimes without a plan, [`RuntimeError::Spawn`] when no Python
/// interpreter is found.
pub fn plan(spec: &FunctionSpec, options: &LaunchOptions) -> Result<LaunchPlan, RuntimeError> {
    let mut target = LaunchTarget {
        backend: options.backend,
        python: None,
        python_bootstrap: options.python_bootstrap,
        runtime_files: options.cache_dir.clone(),
        task_root: spec.code_dir.clone(),
        image: None,
    };
    let spawn_error = |message: String| RuntimeError::Spawn {
        function: spec.name.clone(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, message),
    };
    if spec.image.is_none() && node_major(&spec.runtime).is_some() {
        let node = find_node(&spec.runtime, options).map_err(spawn_error)?;
        write_node_files(&options.cache_dir).map_err(|source| RuntimeError::Spawn {
            function: spec.name.clone(),
            source,
        })?;
        return plan_node(spec, &node, options);
    }
    if spec.runtime.starts_with("python3") {
        // The function's own version (`python3.12`) when the machine has
        // it; else, for library callers, the configured or default
        // interpreter (ESB's start checks refuse that case first, see
        // [`host_runtime_problem`]).
        let requested = match find_python(&spec.runtime, options) {
            Ok(path) => path,
            Err(why) => match &options.python {
                Some(path) => path.clone(),
                None => ["python3.11", "python3"]
                    .iter()
                    .find_map(|name| find_on_path(name, options.search_path.as_deref()))
                    .ok_or_else(|| spawn_error(why))?,
            },
        };
        let info = probe_python(&requested).map_err(spawn_error)?;
        write_python_files(&options.cache_dir).map_err(|source| RuntimeError::Spawn {
            function: spec.name.clone(),
            source,
        })?;
        target.python = Some(PythonRuntime {
            program: info.executable,
            has_awslambdaric: info.has_awslambdaric,
        });
    }
    plan_for_target(spec, &target).map(|planned| planned.plan)
}

/// `"3.12"` for `python3.12`.
pub fn python_version(runtime: &str) -> Option<&str> {
    let version = runtime.strip_prefix("python")?;
    let (major, minor) = version.split_once('.')?;
    (major == "3" && !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()))
        .then_some(version)
}

/// `20` for `nodejs20.x`.
pub fn node_major(runtime: &str) -> Option<u32> {
    runtime
        .strip_prefix("nodejs")?
        .strip_suffix(".x")?
        .parse()
        .ok()
}

/// Node.js runtimes the process runtime runs (each on a Node.js of the
/// same major version).
pub const NODE_RUNTIMES: [&str; 3] = ["nodejs18.x", "nodejs20.x", "nodejs22.x"];

/// The interpreter of exactly `runtime`'s version (`python3.12`): the
/// configured one (`ESB_PYTHON`) when it is that version, else
/// `python3.12` on `PATH`. The error says what was found instead.
pub fn find_python(runtime: &str, options: &LaunchOptions) -> Result<PathBuf, String> {
    let Some(want) = python_version(runtime) else {
        return Err(format!("{runtime} is not a Python runtime identifier"));
    };
    let mut found = Vec::new();
    if let Some(configured) = &options.python {
        match probe_python(configured) {
            Ok(info) if info.version == want => return Ok(configured.clone()),
            Ok(info) => found.push(format!(
                "ESB_PYTHON {} is Python {}",
                configured.display(),
                info.version
            )),
            Err(e) => found.push(first_line(&e)),
        }
    }
    let name = format!("python{want}");
    if let Some(path) = find_on_path(&name, options.search_path.as_deref()) {
        match probe_python(&path) {
            Ok(info) if info.version == want => return Ok(path),
            Ok(info) => found.push(format!("{} is Python {}", path.display(), info.version)),
            Err(e) => found.push(first_line(&e)),
        }
    } else {
        found.push(format!("no {name} on PATH"));
    }
    let others: Vec<String> = [
        "python3",
        "python3.13",
        "python3.12",
        "python3.11",
        "python3.10",
        "python3.9",
    ]
    .iter()
    .filter(|n| **n != name)
    .filter_map(|n| find_on_path(n, options.search_path.as_deref()))
    .filter_map(|p| {
        probe_python(&p)
            .ok()
            .map(|i| format!("{} (Python {})", p.display(), i.version))
    })
    .collect();
    let mut text = format!(
        "runtime {runtime} needs a Python {want} interpreter: {}",
        found.join("; ")
    );
    if !others.is_empty() {
        text.push_str(&format!("; found {}", others.join(", ")));
    }
    text.push_str(&format!(
        "; install python{want}, set ESB_PYTHON to one, or use --runtime docker"
    ));
    Err(text)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

/// A Node.js binary and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The binary.
    pub program: PathBuf,
    /// `process.versions.node` (`20.11.1`).
    pub version: String,
}

/// The Node.js binary for `runtime` (`nodejs20.x`): the first of
/// `ESB_NODE`, `node20` and `node` on `PATH` whose major version is 20.
/// The error names the runtime and what was found instead.
pub fn find_node(runtime: &str, options: &LaunchOptions) -> Result<NodeInfo, String> {
    let Some(want) = node_major(runtime) else {
        return Err(format!("{runtime} is not a Node.js runtime identifier"));
    };
    let mut candidates = Vec::new();
    if let Some(node) = &options.node {
        candidates.push(node.clone());
    }
    for name in [
        format!("node{want}"),
        "node".to_string(),
        "nodejs".to_string(),
    ] {
        if let Some(path) = find_on_path(&name, options.search_path.as_deref()) {
            candidates.push(path);
        }
    }
    let mut found = Vec::new();
    for program in candidates {
        match probe_node(&program) {
            Ok(version) => {
                if version.split('.').next() == Some(want.to_string().as_str()) {
                    return Ok(NodeInfo { program, version });
                }
                found.push(format!("{} is v{version}", program.display()));
            }
            Err(e) => found.push(e),
        }
    }
    if found.is_empty() {
        found.push("no node on PATH".to_string());
    }
    Err(format!(
        "runtime {runtime} needs Node.js {want}: {}; install Node.js {want} (as node{want} or node on PATH) or set ESB_NODE",
        found.join("; ")
    ))
}

static NODE_PROBES: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);

fn probe_node(node: &Path) -> Result<String, String> {
    if let Ok(guard) = NODE_PROBES.lock()
        && let Some(version) = guard.as_ref().and_then(|m| m.get(node))
    {
        return Ok(version.clone());
    }
    let output = std::process::Command::new(node)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", node.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().trim_start_matches('v').to_string();
    if !output.status.success() || version.is_empty() {
        return Err(format!("{} --version failed", node.display()));
    }
    if let Ok(mut guard) = NODE_PROBES.lock() {
        guard
            .get_or_insert_with(HashMap::new)
            .insert(node.to_path_buf(), version.clone());
    }
    Ok(version)
}

/// Why `runtime` cannot run on this machine under the process runtime
/// (no interpreter of its version), or `None` when it can or the runtime
/// needs none (`provided`, images). Probes interpreters (cached).
pub fn host_runtime_problem(runtime: &str, options: &LaunchOptions) -> Option<String> {
    if python_version(runtime).is_some() {
        return find_python(runtime, options).err();
    }
    if node_major(runtime).is_some() {
        if !NODE_RUNTIMES.contains(&runtime) {
            return None; // the runtime check names it unsupported
        }
        return find_node(runtime, options).err();
    }
    None
}

/// `aws-lambda-ric`'s entry script in the function's `node_modules`, from
/// its `package.json` `bin`.
pub fn find_node_ric(code_dir: &Path) -> Option<PathBuf> {
    let package = code_dir.join("node_modules").join("aws-lambda-ric");
    let text = std::fs::read_to_string(package.join("package.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let bin = match json.get("bin")? {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(map) => map
            .get("aws-lambda-ric")
            .or_else(|| map.values().next())?
            .as_str()?
            .to_string(),
        _ => return None,
    };
    let script = package.join(bin);
    script.is_file().then_some(script)
}

fn plan_node(
    spec: &FunctionSpec,
    node: &NodeInfo,
    options: &LaunchOptions,
) -> Result<LaunchPlan, RuntimeError> {
    let handler = spec.handler.clone().unwrap_or_default();
    let ric = match options.node_bootstrap {
        NodeBootstrap::Builtin => None,
        NodeBootstrap::Auto => find_node_ric(&spec.code_dir),
        NodeBootstrap::AwsLambdaRic => Some(find_node_ric(&spec.code_dir).ok_or_else(|| {
            RuntimeError::Backend(format!(
                "function {}: aws-lambda-ric is not installed in {}/node_modules (npm install aws-lambda-ric)",
                spec.name,
                spec.code_dir.display()
            ))
        })?),
    };
    let (script, description) = match ric {
        Some(script) => (script, format!("node v{} + aws-lambda-ric", node.version)),
        None => (
            options
                .cache_dir
                .join("node-bootstrap")
                .join("esb_bootstrap.mjs"),
            format!("node v{} + esb built-in bootstrap", node.version),
        ),
    };
    let mut env = Vec::new();
    // The AWS SDK for JavaScript does not read AWS_CA_BUNDLE; Node trusts
    // extra certificates from NODE_EXTRA_CA_CERTS.
    if let Some(ca) = spec.environment.get("AWS_CA_BUNDLE")
        && !spec.environment.contains_key("NODE_EXTRA_CA_CERTS")
    {
        env.push(("NODE_EXTRA_CA_CERTS".to_string(), ca.clone()));
    }
    Ok(LaunchPlan {
        program: node.program.clone(),
        args: vec![script.to_string_lossy().into_owned(), handler],
        env,
        working_dir: spec.code_dir.clone(),
        execution_env: Some(format!("AWS_Lambda_{}", spec.runtime)),
        description,
    })
}

/// Writes the built-in Node.js bootstrap under `cache_dir` (only when
/// missing or different, atomically).
pub fn write_node_files(cache_dir: &Path) -> std::io::Result<PathBuf> {
    let script = cache_dir.join("node-bootstrap").join("esb_bootstrap.mjs");
    write_if_changed(&script, NODE_BOOTSTRAP_SOURCE)?;
    Ok(script)
}

/// The one launch planner: how `spec` starts in `target`. Pure (reads only
/// the `bootstrap` file's mode for `provided` functions); the backends
/// supply what they found out about the sandbox in `target`.
pub fn plan_for_target(
    spec: &FunctionSpec,
    target: &LaunchTarget,
) -> Result<PlannedLaunch, RuntimeError> {
    if spec.image.is_some() {
        return plan_image(spec, target);
    }
    let runtime = spec.runtime.as_str();
    let plan = if runtime.starts_with("python3") {
        let handler = spec.handler.clone().unwrap_or_default();
        plan_python(spec, runtime, handler, target, &target.task_root)?
    } else if runtime == "provided" || runtime.starts_with("provided.") {
        plan_provided(spec, target)?
    } else {
        return Err(RuntimeError::UnsupportedRuntime {
            function: spec.name.clone(),
            runtime: spec.runtime.clone(),
            backend: target.backend,
        });
    };
    Ok(PlannedLaunch {
        plan,
        handler: spec.handler.clone(),
    })
}

fn invalid_entrypoint(spec: &FunctionSpec, message: String) -> RuntimeError {
    RuntimeError::InvalidCode {
        function: spec.name.clone(),
        message: format!("Runtime.InvalidEntrypoint: {message}"),
    }
}

fn plan_provided(spec: &FunctionSpec, target: &LaunchTarget) -> Result<LaunchPlan, RuntimeError> {
    // The code is checked where it lies (on this machine); the program is
    // the same file as the sandbox sees it.
    let bootstrap = spec.code_dir.join("bootstrap");
    let executable = std::fs::metadata(&bootstrap)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    if !executable {
        return Err(invalid_entrypoint(
            spec,
            format!("no executable bootstrap at {}", bootstrap.display()),
        ));
    }
    Ok(LaunchPlan {
        program: target.task_root.join("bootstrap"),
        args: Vec::new(),
        env: Vec::new(),
        working_dir: target.task_root.clone(),
        execution_env: None,
        description: format!("{} bootstrap", spec.runtime),
    })
}

fn plan_python(
    spec: &FunctionSpec,
    runtime: &str,
    handler: String,
    target: &LaunchTarget,
    working_dir: &Path,
) -> Result<LaunchPlan, RuntimeError> {
    let python = target.python.as_ref().ok_or_else(|| RuntimeError::Spawn {
        function: spec.name.clone(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no Python interpreter for this function",
        ),
    })?;
    let use_ric = match target.python_bootstrap {
        PythonBootstrap::Auto => python.has_awslambdaric,
        PythonBootstrap::Builtin => false,
        PythonBootstrap::Awslambdaric => {
            if !python.has_awslambdaric {
                return Err(RuntimeError::Backend(format!(
                    "function {}: awslambdaric is not importable by {} (pip install awslambdaric)",
                    spec.name,
                    python.program.display()
                )));
            }
            true
        }
    };
    let bootstrap = target
        .runtime_files
        .join("python-bootstrap")
        .join("esb_bootstrap.py");
    let site_dir = target.runtime_files.join("python-site");
    let (args, description) = if use_ric {
        (
            vec!["-m".to_string(), "awslambdaric".to_string(), handler],
            format!("{} + awslambdaric", python.program.display()),
        )
    } else {
        (
            // `-S`: no `site` start-up (its `.pth` hooks cost megabytes per
            // worker); the bootstrap adds site-packages itself.
            vec![
                "-S".to_string(),
                bootstrap.to_string_lossy().into_owned(),
                handler,
            ],
            format!("{} + esb built-in bootstrap", python.program.display()),
        )
    };
    Ok(LaunchPlan {
        program: python.program.clone(),
        args,
        env: vec![
            (
                "PYTHONPATH".to_string(),
                site_dir.to_string_lossy().into_owned(),
            ),
            ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
            // No `__pycache__` written into the user's code folder.
            ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
        ],
        working_dir: working_dir.to_path_buf(),
        execution_env: Some(format!("AWS_Lambda_{runtime}")),
        description,
    })
}

/// How an image function starts, and the handler (`_HANDLER`) it gets.
/// `ImageConfig.Command` (its first element reaches us as the handler)
/// overrides the image's CMD. An ESB base image without ENTRYPOINT
/// (`FROM esb/python3.11` + `CMD ["app.handler"]`) runs the CMD as a
/// handler under the Python runtime client, as a zip function would; any
/// other image (AWS base images: `/lambda-entrypoint.sh` + CMD handler)
/// runs its own ENTRYPOINT + CMD.
fn plan_image(spec: &FunctionSpec, target: &LaunchTarget) -> Result<PlannedLaunch, RuntimeError> {
    let image = target.image.clone().unwrap_or_default();
    let cmd = match &spec.handler {
        Some(handler) => vec![handler.clone()],
        None => image.cmd.clone(),
    };
    let handler = cmd.first().cloned();
    let working_dir = image
        .working_dir
        .as_ref()
        .map_or_else(|| target.task_root.clone(), PathBuf::from);
    if image.entrypoint.is_empty()
        && let (Some(runtime), Some(handler)) = (&image.esb_runtime, &handler)
        && runtime.starts_with("python3")
    {
        let plan = plan_python(spec, runtime, handler.clone(), target, &working_dir)?;
        return Ok(PlannedLaunch {
            plan,
            handler: Some(handler.clone()),
        });
    }
    let mut argv = image.entrypoint.clone();
    argv.extend(cmd);
    if argv.is_empty() {
        return Err(invalid_entrypoint(
            spec,
            "the image has no ENTRYPOINT or CMD".to_string(),
        ));
    }
    let program = PathBuf::from(argv.remove(0));
    let description = format!("{} from the image", program.display());
    Ok(PlannedLaunch {
        plan: LaunchPlan {
            program,
            args: argv,
            env: Vec::new(),
            working_dir,
            execution_env: None,
            description,
        },
        handler,
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
    /// `major.minor`.
    version: String,
}

static PYTHON_PROBES: Mutex<Option<HashMap<PathBuf, Result<PythonInfo, String>>>> =
    Mutex::new(None);

/// Probes `python` once per process (failures too: a pyenv shim of an
/// inactive version costs tens of ms, and checks run at every reload).
fn probe_python(python: &Path) -> Result<PythonInfo, String> {
    if let Ok(guard) = PYTHON_PROBES.lock()
        && let Some(result) = guard.as_ref().and_then(|m| m.get(python))
    {
        return result.clone();
    }
    let result = probe_python_uncached(python);
    if let Ok(mut guard) = PYTHON_PROBES.lock() {
        guard
            .get_or_insert_with(HashMap::new)
            .insert(python.to_path_buf(), result.clone());
    }
    result
}

fn probe_python_uncached(python: &Path) -> Result<PythonInfo, String> {
    let output = std::process::Command::new(python)
        .args([
            "-c",
            "import sys, importlib.util\nprint(sys.executable)\nprint(1 if importlib.util.find_spec('awslambdaric') else 0)\nprint('%d.%d' % sys.version_info[:2])",
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
    let version = lines.next().unwrap_or_default().trim().to_string();
    Ok(PythonInfo {
        executable,
        has_awslambdaric,
        version,
    })
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

    fn container_target(image: Option<ImageConfig>, has_ric: bool) -> LaunchTarget {
        LaunchTarget {
            backend: "docker",
            python: Some(PythonRuntime {
                program: PathBuf::from("python3"),
                has_awslambdaric: has_ric,
            }),
            python_bootstrap: PythonBootstrap::Auto,
            runtime_files: PathBuf::from("/esb/runtime"),
            task_root: PathBuf::from("/var/task"),
            image,
        }
    }

    fn image_spec(handler: Option<&str>) -> FunctionSpec {
        let mut spec = spec("", PathBuf::from("/ctx"));
        spec.image = Some("imagefn:latest".to_string());
        spec.handler = handler.map(str::to_string);
        spec
    }

    fn image(entrypoint: &[&str], cmd: &[&str], esb_runtime: Option<&str>) -> ImageConfig {
        ImageConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            working_dir: Some("/var/task".to_string()),
            esb_runtime: esb_runtime.map(str::to_string),
        }
    }

    #[test]
    fn container_python_uses_container_paths_and_the_image_ric() {
        let spec = spec("python3.11", std::env::temp_dir());
        let planned = plan_for_target(&spec, &container_target(None, false)).unwrap();
        assert_eq!(planned.plan.program, PathBuf::from("python3"));
        assert_eq!(
            planned.plan.args,
            vec![
                "-S".to_string(),
                "/esb/runtime/python-bootstrap/esb_bootstrap.py".to_string(),
                "app.handler".to_string()
            ]
        );
        assert_eq!(planned.plan.working_dir, PathBuf::from("/var/task"));
        let planned = plan_for_target(&spec, &container_target(None, true)).unwrap();
        assert_eq!(planned.plan.args[..2], ["-m", "awslambdaric"]);
    }

    #[test]
    fn esb_base_image_runs_its_cmd_as_a_python_handler() {
        let target = container_target(
            Some(image(&[], &["app.handler"], Some("python3.11"))),
            false,
        );
        let planned = plan_for_target(&image_spec(None), &target).unwrap();
        assert_eq!(planned.handler.as_deref(), Some("app.handler"));
        assert_eq!(planned.plan.program, PathBuf::from("python3"));
        assert_eq!(
            planned.plan.args.last().map(String::as_str),
            Some("app.handler")
        );
        assert_eq!(
            planned.plan.execution_env.as_deref(),
            Some("AWS_Lambda_python3.11")
        );
    }

    #[test]
    fn aws_base_image_runs_entrypoint_with_cmd_or_image_config_command() {
        let aws = container_target(
            Some(image(&["/lambda-entrypoint.sh"], &["app.handler"], None)),
            false,
        );
        let planned = plan_for_target(&image_spec(None), &aws).unwrap();
        assert_eq!(planned.plan.program, PathBuf::from("/lambda-entrypoint.sh"));
        assert_eq!(planned.plan.args, vec!["app.handler".to_string()]);
        assert_eq!(planned.handler.as_deref(), Some("app.handler"));
        // ImageConfig.Command overrides CMD.
        let planned = plan_for_target(&image_spec(Some("other.main")), &aws).unwrap();
        assert_eq!(planned.plan.args, vec!["other.main".to_string()]);
        assert_eq!(planned.handler.as_deref(), Some("other.main"));
        // Nothing to run is an init error, not a crash.
        let empty = container_target(Some(image(&[], &[], None)), false);
        let err = plan_for_target(&image_spec(None), &empty).unwrap_err();
        assert!(err.to_string().contains("InvalidEntrypoint"), "{err}");
    }

    #[test]
    fn runtime_identifiers_parse() {
        assert_eq!(python_version("python3.12"), Some("3.12"));
        assert_eq!(python_version("python3"), None);
        assert_eq!(python_version("python3.x"), None);
        assert_eq!(node_major("nodejs20.x"), Some(20));
        assert_eq!(node_major("nodejs"), None);
        assert_eq!(node_major("nodejs20.y"), None);
    }

    fn fake_node(dir: &Path, version: &str) -> PathBuf {
        let node = dir.join("node");
        std::fs::write(&node, format!("#!/bin/sh\necho v{version}\n")).unwrap();
        std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).unwrap();
        node
    }

    #[test]
    fn node_runs_on_its_major_version_or_names_what_was_found() {
        let bin = temp_dir("nodebin");
        fake_node(&bin, "20.5.1");
        let options = LaunchOptions {
            search_path: Some(bin.display().to_string()),
            node: None,
            cache_dir: temp_dir("nodecache"),
            ..LaunchOptions::default()
        };
        let found = find_node("nodejs20.x", &options).unwrap();
        assert_eq!(found.version, "20.5.1");
        let err = find_node("nodejs22.x", &options).unwrap_err();
        assert!(err.contains("runtime nodejs22.x needs Node.js 22"), "{err}");
        assert!(err.contains("is v20.5.1"), "{err}");
        assert!(host_runtime_problem("nodejs22.x", &options).is_some());
        assert!(host_runtime_problem("provided.al2023", &options).is_none());

        let code = temp_dir("nodecode");
        let mut spec = spec("nodejs20.x", code.clone());
        spec.handler = Some("index.handler".to_string());
        spec.environment
            .insert("AWS_CA_BUNDLE".to_string(), "/ca.pem".to_string());
        let plan = plan(&spec, &options).unwrap();
        let script = options.cache_dir.join("node-bootstrap/esb_bootstrap.mjs");
        assert_eq!(
            plan.args,
            vec![script.display().to_string(), "index.handler".to_string()]
        );
        assert_eq!(
            std::fs::read_to_string(&script).unwrap(),
            NODE_BOOTSTRAP_SOURCE
        );
        assert_eq!(plan.execution_env.as_deref(), Some("AWS_Lambda_nodejs20.x"));
        assert!(
            plan.env
                .contains(&("NODE_EXTRA_CA_CERTS".to_string(), "/ca.pem".to_string()))
        );
    }

    #[test]
    fn node_picks_aws_lambda_ric_from_node_modules() {
        let bin = temp_dir("ricbin");
        fake_node(&bin, "20.1.0");
        let code = temp_dir("riccode");
        let options = LaunchOptions {
            search_path: Some(bin.display().to_string()),
            node: None,
            node_bootstrap: NodeBootstrap::AwsLambdaRic,
            cache_dir: temp_dir("riccache"),
            ..LaunchOptions::default()
        };
        let mut spec = spec("nodejs20.x", code.clone());
        spec.handler = Some("index.handler".to_string());
        assert!(plan(&spec, &options).is_err(), "not installed");
        let package = code.join("node_modules/aws-lambda-ric");
        std::fs::create_dir_all(package.join("bin")).unwrap();
        std::fs::write(package.join("bin/index.mjs"), "").unwrap();
        std::fs::write(
            package.join("package.json"),
            r#"{"name":"aws-lambda-ric","bin":{"aws-lambda-ric":"bin/index.mjs"}}"#,
        )
        .unwrap();
        let auto = LaunchOptions {
            node_bootstrap: NodeBootstrap::Auto,
            ..options.clone()
        };
        for options in [&options, &auto] {
            let plan = plan(&spec, options).unwrap();
            assert_eq!(
                plan.args[0],
                package.join("bin/index.mjs").display().to_string()
            );
            assert!(plan.description.contains("aws-lambda-ric"));
        }
        let builtin = LaunchOptions {
            node_bootstrap: NodeBootstrap::Builtin,
            ..options.clone()
        };
        assert!(plan(&spec, &builtin).unwrap().args[0].ends_with("esb_bootstrap.mjs"));
    }

    #[test]
    fn bootstrap_mode_parses() {
        assert_eq!(
            NodeBootstrap::parse("aws-lambda-ric"),
            Some(NodeBootstrap::AwsLambdaRic)
        );
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
