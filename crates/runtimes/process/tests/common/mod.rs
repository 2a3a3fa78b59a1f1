//! Helpers shared by the process runtime's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use esb_runtimes_core::{FunctionSpec, Invocation, LogSink};
use esb_runtimes_process::{ProcessBackend, ProcessOptions, PythonBootstrap};

/// Records every log line.
#[derive(Default)]
pub struct MemorySink {
    pub lines: Mutex<Vec<(Option<String>, String)>>,
}

impl LogSink for MemorySink {
    fn line(&self, _function: &str, _worker: &str, request_id: Option<&str>, line: &str) {
        self.lines
            .lock()
            .unwrap()
            .push((request_id.map(str::to_string), line.to_string()));
    }
}

impl MemorySink {
    pub fn text(&self) -> String {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!(
        "esb-process-test-{}-{name}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A code directory with one file.
pub fn code_dir(name: &str, file: &str, source: &str) -> PathBuf {
    let dir = temp_dir(name);
    write_file(&dir, file, source);
    dir
}

pub fn write_file(dir: &Path, file: &str, source: &str) {
    std::fs::write(dir.join(file), source).unwrap();
}

pub fn spec(
    name: &str,
    runtime: &str,
    handler: Option<&str>,
    code_dir: PathBuf,
) -> Arc<FunctionSpec> {
    Arc::new(FunctionSpec {
        name: name.to_string(),
        runtime: runtime.to_string(),
        handler: handler.map(str::to_string),
        code_dir,
        image: None,
        memory_mb: 128,
        timeout: Duration::from_secs(3),
        environment: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        region: "us-east-1".to_string(),
        account_id: "123456789012".to_string(),
        code_hash: "test".to_string(),
    })
}

#[allow(unsafe_code)]
pub fn backend(mode: PythonBootstrap, sink: Arc<MemorySink>) -> ProcessBackend {
    let backend = ProcessBackend::new(ProcessOptions {
        python: None,
        python_bootstrap: mode,
        log_sink: sink,
        cache_dir: temp_dir("cache"),
        // The default: stock clients are tested inside the sandbox (when
        // the tests run as root).
        sandbox: true,
    });
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            esb_supervisor::sandbox::enabled(),
            "as root, workers run in the sandbox"
        );
    }
    backend
}

pub fn invocation(request_id: &str, payload: &str) -> Invocation {
    Invocation {
        request_id: request_id.to_string(),
        payload: Bytes::from(payload.to_string()),
        invoked_function_arn: String::new(),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
        timeout: None,
    }
}

pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

pub fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

pub fn awslambdaric_available() -> bool {
    let python = esb_runtimes_core::launch::find_on_path(
        "python3.11",
        std::env::var("PATH").ok().as_deref(),
    )
    .or_else(|| {
        esb_runtimes_core::launch::find_on_path("python3", std::env::var("PATH").ok().as_deref())
    });
    let Some(python) = python else { return false };
    std::process::Command::new(python)
        .args(["-c", "import awslambdaric"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// False, with a note, when a test's tool is missing; a missing tool fails
/// the test under `CI=true`, where it is installed.
pub fn present(what: &str, found: bool) -> bool {
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what} is required under CI=true"
        );
        eprintln!("skipped: {what} is missing");
    }
    found
}
