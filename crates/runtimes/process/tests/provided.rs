//! `provided` runtimes: a shell `bootstrap` that speaks the Runtime API
//! with curl, as the AWS custom runtime tutorial does.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::*;
use esb_runtimes_core::{InvocationOutcome, RuntimeBackend, RuntimeError};
use esb_runtimes_process::PythonBootstrap;

const ECHO_BOOTSTRAP: &str = r#"#!/bin/sh
set -eu
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
HEADERS="$(mktemp)"
trap 'rm -f "$HEADERS"' EXIT
while true; do
  EVENT=$(curl -sS -D "$HEADERS" "$API/invocation/next")
  REQUEST_ID=$(grep -i '^lambda-runtime-aws-request-id:' "$HEADERS" | cut -d: -f2 | tr -d '[:space:]')
  echo "bootstrap handling $REQUEST_ID for $AWS_LAMBDA_FUNCTION_NAME"
  curl -sS -X POST "$API/invocation/$REQUEST_ID/response" -d "{\"echo\":$EVENT,\"exec_env\":\"${AWS_EXECUTION_ENV:-unset}\"}" > /dev/null
done
"#;

const INIT_FAIL_BOOTSTRAP: &str = r#"#!/bin/sh
curl -sS -X POST "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/init/error" \
  -H 'Lambda-Runtime-Function-Error-Type: Runtime.ConfigInvalid' \
  -d '{"errorType":"Runtime.ConfigInvalid","errorMessage":"missing TABLE"}' > /dev/null
exit 1
"#;

fn has_curl() -> bool {
    esb_runtimes_core::launch::find_on_path("curl", std::env::var("PATH").ok().as_deref()).is_some()
}

fn bootstrap_dir(name: &str, source: &str) -> std::path::PathBuf {
    let dir = code_dir(name, "bootstrap", source);
    std::fs::set_permissions(
        dir.join("bootstrap"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn shell_bootstrap_with_curl_serves_invocations() {
    if !present("curl", has_curl()) {
        return;
    }
    let sink = Arc::new(MemorySink::default());
    let backend = common::backend(PythonBootstrap::Auto, sink);
    let dir = bootstrap_dir("provided", ECHO_BOOTSTRAP);
    let worker = backend
        .start_worker(spec("shell", "provided.al2023", None, dir))
        .await
        .unwrap();
    for n in 0..3 {
        let result = worker
            .invoke(invocation(&format!("req-{n}"), &format!(r#"{{"n":{n}}}"#)))
            .await
            .unwrap();
        let InvocationOutcome::Success(body) = &result.outcome else {
            panic!("{:?} {}", result.outcome, result.log_tail);
        };
        let body = json(body);
        assert_eq!(body["echo"]["n"], n);
        // AWS does not set AWS_EXECUTION_ENV for provided runtimes.
        assert_eq!(body["exec_env"], "unset");
        assert!(
            result
                .log_tail
                .contains(&format!("bootstrap handling req-{n} for shell\n")),
            "{}",
            result.log_tail
        );
    }
    let pid = worker.pid().unwrap();
    worker.stop().await;
    assert!(!process_exists(pid));
}

#[tokio::test]
async fn bootstrap_init_error_fails_the_start() {
    if !present("curl", has_curl()) {
        return;
    }
    let sink = Arc::new(MemorySink::default());
    let backend = common::backend(PythonBootstrap::Auto, sink);
    let dir = bootstrap_dir("provided-init", INIT_FAIL_BOOTSTRAP);
    let err = backend
        .start_worker(spec("shell", "provided", None, dir))
        .await
        .unwrap_err();
    let RuntimeError::Init { payload, .. } = err else {
        panic!("{err:?}");
    };
    let payload = json(&payload);
    assert_eq!(payload["errorType"], "Runtime.ConfigInvalid");
    assert_eq!(payload["errorMessage"], "missing TABLE");
}

#[tokio::test]
async fn missing_bootstrap_is_invalid_code() {
    let sink = Arc::new(MemorySink::default());
    let backend = common::backend(PythonBootstrap::Auto, sink);
    let dir = temp_dir("no-bootstrap");
    let err = backend
        .start_worker(spec("shell", "provided.al2", None, dir.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidCode { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&dir.join("bootstrap").display().to_string())
    );
}

/// The fixture built from `fixtures/rust-bootstrap` (scripts/test builds it
/// before `cargo test`).
fn rust_fixture() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../target"),
        std::path::PathBuf::from,
    );
    let bin = target.join("debug/esb-fixture-rust-bootstrap");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p esb-fixture-rust-bootstrap` first (scripts/test does)",
        bin.display()
    );
    bin
}

#[tokio::test]
async fn rust_lambda_runtime_bootstrap_serves_invocations_and_errors() {
    let dir = temp_dir("provided-rust");
    std::fs::copy(rust_fixture(), dir.join("bootstrap")).unwrap();
    let sink = Arc::new(MemorySink::default());
    let backend = common::backend(PythonBootstrap::Auto, sink);
    let worker = backend
        .start_worker(spec("rusty", "provided.al2023", None, dir))
        .await
        .unwrap();
    let first = worker
        .invoke(invocation("rust-1", r#"{"echo":"hi"}"#))
        .await
        .unwrap();
    let InvocationOutcome::Success(body) = &first.outcome else {
        panic!("{:?} {}", first.outcome, first.log_tail);
    };
    let response = json(body);
    assert_eq!(response["statusCode"], 200);
    let inner: serde_json::Value =
        serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(inner["requestId"], "rust-1");
    assert_eq!(inner["function"], "rusty");
    assert_eq!(inner["echo"], "hi");
    assert!(first.init_duration.is_some(), "first call is a cold start");
    assert!(
        first.log_tail.contains("REPORT RequestId: rust-1"),
        "{}",
        first.log_tail
    );

    // Warm: the same process answers, and a handler error has Lambda's shape.
    let second = worker
        .invoke(invocation("rust-2", r#"{"fail":true}"#))
        .await
        .unwrap();
    let InvocationOutcome::Error { payload, .. } = &second.outcome else {
        panic!("expected an error: {:?}", second.outcome);
    };
    let error = json(payload);
    assert_eq!(error["errorMessage"], "asked to fail", "{error}");
    assert!(second.init_duration.is_none());
    assert!(second.worker_alive);
    let third = worker.invoke(invocation("rust-3", "{}")).await.unwrap();
    let InvocationOutcome::Success(body) = &third.outcome else {
        panic!("{:?}", third.outcome);
    };
    let inner: serde_json::Value =
        serde_json::from_str(json(body)["body"].as_str().unwrap()).unwrap();
    assert_eq!(inner["pid"], worker.pid().unwrap());
    let pid = worker.pid().unwrap();
    worker.stop().await;
    assert!(!process_exists(pid));
}

/// A `bootstrap` still open for writing (a build or an editor finishing it,
/// or a descriptor a concurrent fork inherited) makes `exec` fail with
/// `ETXTBSY` for a moment; the start waits that out instead of failing.
#[tokio::test]
async fn bootstrap_briefly_open_for_writing_still_starts() {
    if !present("curl", has_curl()) {
        return;
    }
    let dir = bootstrap_dir("provided-busy", ECHO_BOOTSTRAP);
    let writer = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("bootstrap"))
        .unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(150));
        drop(writer);
    });
    let sink = Arc::new(MemorySink::default());
    let backend = common::backend(PythonBootstrap::Auto, sink);
    let worker = backend
        .start_worker(spec("busy", "provided.al2023", None, dir))
        .await
        .unwrap();
    release.join().unwrap();
    let result = worker
        .invoke(invocation("busy-1", r#"{"n":1}"#))
        .await
        .unwrap();
    let InvocationOutcome::Success(body) = &result.outcome else {
        panic!("{:?} {}", result.outcome, result.log_tail);
    };
    assert_eq!(json(body)["echo"]["n"], 1);
    worker.stop().await;
}
