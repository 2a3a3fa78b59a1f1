//! `isolation = "sandbox"` (the default): stock clients keep working inside
//! the worker's own namespaces (a shell `bootstrap` with curl, the built-in
//! Python bootstrap), as an unprivileged uid of their own, with the Runtime
//! API on `127.0.0.1:9001`. Needs root; fails in CI (`CI=true`) without.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::*;
use esb_runtimes_core::{InvocationOutcome, RuntimeBackend};
use esb_runtimes_process::{ProcessBackend, ProcessOptions, PythonBootstrap};

const ID_BOOTSTRAP: &str = r#"#!/bin/sh
set -eu
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
HEADERS="$(mktemp)"
while true; do
  EVENT=$(curl -sS -D "$HEADERS" "$API/invocation/next")
  REQUEST_ID=$(grep -i '^lambda-runtime-aws-request-id:' "$HEADERS" | cut -d: -f2 | tr -d '[:space:]')
  curl -sS -X POST "$API/invocation/$REQUEST_ID/response" -d "{\"uid\":$(id -u),\"api\":\"$AWS_LAMBDA_RUNTIME_API\",\"procs\":$(ls /proc | grep -c '^[0-9]')}" > /dev/null
done
"#;

const PY_HANDLER: &str = r#"
import os
def handler(event, context):
    return {"uid": os.getuid(), "tmp_writable": os.access("/tmp", os.W_OK),
            "code_writable": os.access(os.getcwd(), os.W_OK)}
"#;

/// The backend with the sandbox on, or None (skipped) where it cannot be.
fn sandboxed_backend(sink: Arc<MemorySink>) -> Option<ProcessBackend> {
    let backend = ProcessBackend::new(ProcessOptions {
        python: None,
        python_bootstrap: PythonBootstrap::Builtin,
        log_sink: sink,
        cache_dir: temp_dir("sandbox-cache"),
        sandbox: true,
    });
    if esb_supervisor::sandbox::enabled() {
        return Some(backend);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the sandbox needs root in CI"
    );
    eprintln!("skipped: the sandbox is not available (not root)");
    None
}

#[tokio::test]
async fn shell_bootstrap_runs_as_its_own_uid_with_its_own_runtime_api() {
    let sink = Arc::new(MemorySink::default());
    let Some(backend) = sandboxed_backend(sink.clone()) else {
        return;
    };
    let dir = code_dir("sandbox-provided", "bootstrap", ID_BOOTSTRAP);
    std::fs::set_permissions(
        dir.join("bootstrap"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let worker = backend
        .start_worker(spec("shell", "provided.al2023", None, dir))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", sink.text()));
    let result = worker.invoke(invocation("req-1", "{}")).await.unwrap();
    let InvocationOutcome::Success(body) = &result.outcome else {
        panic!("{:?} {}", result.outcome, result.log_tail);
    };
    let body = json(body);
    let uid = body["uid"].as_u64().unwrap();
    assert!(
        (u64::from(esb_supervisor::sandbox::UID_BASE)..u64::from(u32::MAX)).contains(&uid),
        "{body}"
    );
    assert_eq!(body["api"], "127.0.0.1:9001");
    // Its /proc shows its own processes only: the shell, curl, ls...
    assert!(body["procs"].as_u64().unwrap() < 10, "{body}");
    let pid = worker.pid().unwrap();
    worker.stop().await;
    assert!(!process_exists(pid));
    backend.shutdown().await;
}

#[tokio::test]
async fn builtin_python_bootstrap_runs_with_read_only_code_and_private_tmp() {
    let sink = Arc::new(MemorySink::default());
    let Some(backend) = sandboxed_backend(sink) else {
        return;
    };
    let dir = code_dir("sandbox-python", "app.py", PY_HANDLER);
    let worker = backend
        .start_worker(spec("py", "python3.11", Some("app.handler"), dir))
        .await
        .unwrap();
    let result = worker.invoke(invocation("req-1", "{}")).await.unwrap();
    let InvocationOutcome::Success(body) = &result.outcome else {
        panic!("{:?} {}", result.outcome, result.log_tail);
    };
    let body = json(body);
    assert!(
        body["uid"].as_u64().unwrap() >= u64::from(esb_supervisor::sandbox::UID_BASE),
        "{body}"
    );
    assert_eq!(body["tmp_writable"], true);
    assert_eq!(body["code_writable"], false);
    worker.stop().await;
    backend.shutdown().await;
}
