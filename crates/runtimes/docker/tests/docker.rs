//! Docker backend against a real engine. Skipped (with a message) when no
//! daemon answers or the base image / static supervisor are missing,
//! except under `CI=true`, where they must be there.

#![allow(clippy::unwrap_used)] // tests may unwrap
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use esb_runtimes_core::{FunctionSpec, Invocation, InvocationOutcome, RuntimeBackend};
use esb_runtimes_docker::{DEFAULT_PYTHON_IMAGE, DockerBackend, DockerOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

fn supervisor_bin() -> PathBuf {
    std::env::var_os("ESB_SUPERVISOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            root().join("target/supervisor/x86_64-unknown-linux-gnu/release/esb-supervisor")
        })
}

async fn backend(instance: &str) -> Option<DockerBackend> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let options = DockerOptions::new(instance, supervisor_bin());
    match DockerBackend::connect(options).await {
        Ok(b) => {
            let image = std::process::Command::new("docker")
                .args(["image", "inspect", DEFAULT_PYTHON_IMAGE])
                .output()
                .is_ok_and(|o| o.status.success());
            if !image {
                assert!(!ci, "{DEFAULT_PYTHON_IMAGE} missing under CI");
                eprintln!("skipped: {DEFAULT_PYTHON_IMAGE} missing (scripts/build-images.sh)");
                return None;
            }
            Some(b)
        }
        Err(e) => {
            assert!(!ci, "docker backend unavailable under CI: {e}");
            eprintln!("skipped: docker backend unavailable: {e}");
            None
        }
    }
}

fn spec(name: &str, dir: &str, timeout: Duration, memory_mb: u32) -> Arc<FunctionSpec> {
    Arc::new(FunctionSpec {
        name: name.to_string(),
        runtime: "python3.11".to_string(),
        handler: Some("app.handler".to_string()),
        code_dir: std::fs::canonicalize(root().join(dir)).unwrap(),
        image: None,
        memory_mb,
        timeout,
        environment: Default::default(),
        region: "us-east-1".to_string(),
        account_id: "123456789012".to_string(),
        code_hash: "h1".to_string(),
    })
}

fn invocation(payload: &str) -> Invocation {
    Invocation {
        request_id: uuid::Uuid::new_v4().to_string(),
        payload: Bytes::from(payload.to_string()),
        invoked_function_arn: String::new(),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
        timeout: None,
    }
}

#[tokio::test]
async fn hello_runs_in_a_container_and_stays_warm() {
    let Some(backend) = backend("test-hello").await else {
        return;
    };
    let spec = spec(
        "hello",
        "examples/app/src/hello",
        Duration::from_secs(10),
        128,
    );
    let worker = backend.start_worker(spec).await.unwrap();
    for _ in 0..3 {
        let result = worker.invoke(invocation("{}")).await.unwrap();
        match &result.outcome {
            InvocationOutcome::Success(body) => {
                let text = String::from_utf8_lossy(body);
                assert!(text.contains("Hello"), "{text}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(result.worker_alive);
    }
    assert_eq!(backend.containers().len(), 1);
    worker.stop().await;
    assert!(backend.containers().is_empty());
}
