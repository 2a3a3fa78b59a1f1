//! `esb build` for zip functions and layers, as `sam build` does for their
//! dependencies: a function's `requirements.txt` (or `pyproject.toml`) is
//! installed with pip of the function's own Python version, a
//! `package.json` with `npm install --omit=dev`, into
//! `<data dir>/build/<function>/` (a layer's into
//! `<data dir>/build/layer-<LogicalId>/python` or `/nodejs`).
//!
//! Only the dependencies go there: the code stays where it is, so an edit
//! is served at once by hot reload; the build folder is put on
//! `PYTHONPATH` / `NODE_PATH` after the code folder ([`artefacts`]). Each
//! build is keyed by a hash of the dependency files and the runtime; with
//! an unchanged key nothing runs. A build goes to a temporary folder and
//! replaces the old one by rename, so a failed or interrupted build never
//! leaves a half-installed folder in use.
//!
//! Must not: start workers or touch the user's code folder.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::AppError;

/// Name of the stamp file that records what a build folder was made from.
const STAMP: &str = ".esb-build.json";

/// The dependency files a language's build reads, in order of preference.
const PYTHON_FILES: &[&str] = &["requirements.txt", "pyproject.toml"];
const NODE_FILES: &[&str] = &["package.json", "package-lock.json"];

/// What kind of dependencies a job installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Language {
    /// pip, for this runtime (`python3.12`).
    Python(String),
    /// npm, for this runtime (`nodejs20.x`).
    Node(String),
}

/// One dependency install.
#[derive(Debug, Clone)]
pub struct BuildJob {
    /// Function name, or `layer <LogicalId>`.
    pub label: String,
    /// Folder holding the dependency file (code or layer content).
    pub source: PathBuf,
    /// What to run.
    pub language: Language,
    /// The build folder (`<data>/build/<name>`).
    pub out: PathBuf,
    /// Sub-folder the packages go into (`""` for functions, `python` or
    /// `nodejs` for layers, as AWS unpacks layers into `/opt`).
    pub subdir: &'static str,
}

impl BuildJob {
    /// Where the packages are (what goes on the module path).
    pub fn packages_dir(&self) -> PathBuf {
        let base = if self.subdir.is_empty() {
            self.out.clone()
        } else {
            self.out.join(self.subdir)
        };
        match self.language {
            Language::Python(_) => base,
            Language::Node(_) => base.join("node_modules"),
        }
    }

    /// The key of the inputs: runtime and dependency files' contents.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        let (runtime, files) = match &self.language {
            Language::Python(r) => (r, PYTHON_FILES),
            Language::Node(r) => (r, NODE_FILES),
        };
        h.update(runtime.as_bytes());
        h.update([0]);
        for name in files {
            h.update(name.as_bytes());
            match std::fs::read(self.source.join(name)) {
                Ok(bytes) => {
                    h.update((bytes.len() as u64).to_le_bytes());
                    h.update(&bytes);
                }
                Err(_) => h.update(u64::MAX.to_le_bytes()),
            }
        }
        hex::encode(h.finalize())
    }

    /// The key recorded by the last successful build, if any.
    pub fn built_key(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.out.join(STAMP)).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json.get("key")?.as_str().map(str::to_string)
    }
}

fn language_of(runtime: &str, dir: &Path) -> Option<Language> {
    if runtime.starts_with("python") {
        PYTHON_FILES
            .iter()
            .any(|f| dir.join(f).is_file())
            .then(|| Language::Python(runtime.to_string()))
    } else if runtime.starts_with("nodejs") {
        dir.join("package.json")
            .is_file()
            .then(|| Language::Node(runtime.to_string()))
    } else {
        None
    }
}

/// A folder name from a function or layer name.
fn folder_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The dependency installs the template asks for: zip functions and
/// layers whose folder has a dependency file. `only` restricts to these
/// function names or logical ids (and the layers they use).
pub fn jobs(app: &esb_template::AppModel, data_dir: &Path, only: &[String]) -> Vec<BuildJob> {
    // Absolute: the path goes into workers' PYTHONPATH / NODE_PATH, and
    // workers run in their code folder.
    let build =
        std::path::absolute(data_dir.join("build")).unwrap_or_else(|_| data_dir.join("build"));
    let mut out = Vec::new();
    let wanted = |f: &esb_template::Function| {
        only.is_empty() || only.iter().any(|n| *n == f.name || *n == f.logical_id)
    };
    for f in app.functions.iter().filter(|f| wanted(f)) {
        let esb_template::FunctionCode::Zip { code_uri } = &f.code else {
            continue;
        };
        if f.code_is_zip || !code_uri.is_dir() {
            continue;
        }
        let Some(language) = language_of(f.runtime.as_deref().unwrap_or(""), code_uri) else {
            continue;
        };
        out.push(BuildJob {
            label: f.name.clone(),
            source: code_uri.clone(),
            language,
            out: build.join(folder_name(&f.name)),
            subdir: "",
        });
    }
    for layer in &app.layers {
        let Some(esb_template::FunctionCode::Zip { code_uri }) = &layer.content else {
            continue;
        };
        // The runtime of the first (wanted) function using it, else the
        // layer's first compatible runtime.
        let users: Vec<&esb_template::Function> = app
            .functions
            .iter()
            .filter(|f| {
                f.layers
                    .iter()
                    .any(|l| l.layer.as_deref() == Some(&layer.logical_id))
            })
            .collect();
        if !only.is_empty() && !users.iter().any(|f| wanted(f)) {
            continue;
        }
        let runtime = users
            .iter()
            .find_map(|f| f.runtime.clone())
            .or_else(|| layer.compatible_runtimes.first().cloned())
            .unwrap_or_default();
        let Some(language) = language_of(&runtime, code_uri) else {
            continue;
        };
        let subdir = match language {
            Language::Python(_) => "python",
            Language::Node(_) => "nodejs",
        };
        out.push(BuildJob {
            label: format!("layer {}", layer.logical_id),
            source: code_uri.clone(),
            language,
            out: build.join(format!("layer-{}", folder_name(&layer.logical_id))),
            subdir,
        });
    }
    out
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOutcome {
    /// The key matched the last build: nothing ran.
    UpToDate,
    /// The dependencies were installed.
    Built,
}

/// Runs one job (or nothing when it is up to date), sending the tool's
/// output lines to `progress` as they come.
pub fn run(
    job: &BuildJob,
    options: &esb_runtimes_core::launch::LaunchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BuildOutcome, AppError> {
    let key = job.key();
    if job.built_key().as_deref() == Some(key.as_str()) && job.packages_dir().is_dir() {
        return Ok(BuildOutcome::UpToDate);
    }
    let parent = job
        .out
        .parent()
        .ok_or_else(|| AppError::Refused("build folder has no parent".into()))?;
    std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    let tmp = parent.join(format!(
        ".tmp-{}-{}",
        job.out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let target = if job.subdir.is_empty() {
        tmp.clone()
    } else {
        tmp.join(job.subdir)
    };
    std::fs::create_dir_all(&target).map_err(|e| io_error(&target, e))?;
    let result = match &job.language {
        Language::Python(runtime) => build_python(job, runtime, &target, options, progress),
        Language::Node(_) => build_node(job, &target, progress),
    };
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let stamp = serde_json::json!({
        "key": key,
        "source": job.source,
        "language": match &job.language { Language::Python(r) | Language::Node(r) => r },
    });
    std::fs::write(tmp.join(STAMP), stamp.to_string()).map_err(|e| io_error(&tmp, e))?;
    let _ = std::fs::remove_dir_all(&job.out);
    std::fs::rename(&tmp, &job.out).map_err(|e| io_error(&job.out, e))?;
    Ok(BuildOutcome::Built)
}

fn io_error(path: &Path, e: std::io::Error) -> AppError {
    AppError::Refused(format!("{}: {e}", path.display()))
}

fn build_python(
    job: &BuildJob,
    runtime: &str,
    target: &Path,
    options: &esb_runtimes_core::launch::LaunchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<(), AppError> {
    let python = esb_runtimes_core::launch::find_python(runtime, options)
        .map_err(|why| AppError::Refused(format!("{}: {why}", job.label)))?;
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pip", "install", "--disable-pip-version-check"])
        .args([
            "--no-input",
            "--progress-bar",
            "off",
            "--upgrade",
            "--target",
        ])
        .arg(target);
    if job.source.join("requirements.txt").is_file() {
        cmd.arg("-r").arg(job.source.join("requirements.txt"));
    } else {
        // A pyproject.toml project: its declared dependencies (and the
        // project itself, which the code folder shadows on the path).
        cmd.arg(&job.source);
    }
    // No bytecode written next to the installed packages' sources is
    // fine here (the build folder is ESB's), but keep pip's own output
    // plain for the progress lines.
    cmd.env("PIP_NO_COLOR", "1").current_dir(&job.source);
    stream(
        cmd,
        &format!("{} -m pip install", python.display()),
        progress,
    )
}

fn build_node(
    job: &BuildJob,
    target: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), AppError> {
    for name in NODE_FILES {
        let from = job.source.join(name);
        if from.is_file() {
            std::fs::copy(&from, target.join(name)).map_err(|e| io_error(&from, e))?;
        }
    }
    let npm = esb_runtimes_core::launch::find_on_path("npm", std::env::var("PATH").ok().as_deref())
        .ok_or_else(|| AppError::Refused(format!("{}: npm is not on PATH", job.label)))?;
    let mut cmd = Command::new(npm);
    cmd.args([
        "install",
        "--omit=dev",
        "--no-audit",
        "--no-fund",
        "--install-links",
        "--color=false",
    ])
    .current_dir(target);
    // The install runs on a copy of package.json in the build folder, so a
    // `file:` dependency must be an absolute path.
    stream(cmd, "npm install --omit=dev", progress)
}

/// Runs `cmd`, passing each output line (stdout and stderr) to `progress`.
fn stream(mut cmd: Command, what: &str, progress: &mut dyn FnMut(&str)) -> Result<(), AppError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| AppError::Refused(format!("cannot run {what}: {e}")))?;
    let stderr = child.stderr.take();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let err_tx = tx.clone();
    let err_thread = std::thread::spawn(move || {
        if let Some(stderr) = stderr {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        }
    });
    let stdout = child.stdout.take();
    let out_thread = std::thread::spawn(move || {
        if let Some(stdout) = stdout {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }
    });
    let mut tail: Vec<String> = Vec::new();
    for line in rx {
        progress(&line);
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    let _ = out_thread.join();
    let _ = err_thread.join();
    let status = child
        .wait()
        .map_err(|e| AppError::Refused(format!("{what}: {e}")))?;
    if !status.success() {
        return Err(AppError::Refused(format!(
            "{what} failed ({status}):\n{}",
            tail.join("\n")
        )));
    }
    Ok(())
}

/// What `esb up` uses from earlier builds, for one function.
#[derive(Debug, Default)]
pub struct Artefacts {
    /// Package folders for the function's module path (its own first,
    /// then its layers').
    pub python_path: Vec<PathBuf>,
    /// Built layer roots (holding `python/` or `nodejs/`).
    pub layer_roots: Vec<PathBuf>,
    /// The function's own `node_modules` build, for `NODE_PATH`.
    pub node_path: Vec<PathBuf>,
    /// One line per build that is missing or out of date.
    pub notes: Vec<String>,
}

/// The built dependencies of `f` (and its layers) under `data_dir`, with a
/// note when one is stale (its dependency file changed since) or was
/// never built.
pub fn artefacts(
    app: &esb_template::AppModel,
    f: &esb_template::Function,
    data_dir: &Path,
) -> Artefacts {
    let mut found = Artefacts::default();
    let names = [f.name.clone()];
    for job in jobs(app, data_dir, &names) {
        let own = job.subdir.is_empty();
        if own && job.label != f.name {
            continue;
        }
        let file = match job.language {
            Language::Python(_) if job.source.join("requirements.txt").is_file() => {
                "requirements.txt"
            }
            Language::Python(_) => "pyproject.toml",
            Language::Node(_) => "package.json",
        };
        match job.built_key() {
            None => found.notes.push(format!(
                "note: {}: {} in {} is not installed; run `esb build`",
                job.label,
                file,
                job.source.display()
            )),
            Some(built) => {
                if built != job.key() {
                    found.notes.push(format!(
                        "warning: {}: the build in {} is stale ({} changed since `esb build`); using it until you run `esb build` again",
                        job.label,
                        job.out.display(),
                        file
                    ));
                }
                if own {
                    match job.language {
                        Language::Python(_) => found.python_path.push(job.packages_dir()),
                        Language::Node(_) => found.node_path.push(job.packages_dir()),
                    }
                } else {
                    found.layer_roots.push(job.out.clone());
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_follows_the_dependency_file_and_runtime() {
        let dir = std::env::temp_dir().join(format!("esb-zipbuild-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("requirements.txt"), "six\n").unwrap();
        let job = |runtime: &str| BuildJob {
            label: "fn".into(),
            source: dir.clone(),
            language: Language::Python(runtime.into()),
            out: dir.join("out"),
            subdir: "",
        };
        let a = job("python3.11").key();
        assert_eq!(a, job("python3.11").key());
        assert_ne!(a, job("python3.12").key());
        std::fs::write(dir.join("app.py"), "x = 1\n").unwrap();
        assert_eq!(
            a,
            job("python3.11").key(),
            "code edits are live, not rebuilt"
        );
        std::fs::write(dir.join("requirements.txt"), "six==1.16.0\n").unwrap();
        assert_ne!(a, job("python3.11").key());
        assert_eq!(job("python3.11").built_key(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
