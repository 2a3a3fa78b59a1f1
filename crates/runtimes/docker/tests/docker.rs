//! Docker backend against a real engine. Skipped (with a message) when no
//! daemon answers or the base image / the `esb` binary are missing,
//! except under `CI=true`, where they must be there.

#![allow(clippy::unwrap_used)] // tests may unwrap
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use esb_runtimes_core::{FunctionSpec, Invocation, InvocationOutcome, RuntimeBackend};
use esb_runtimes_docker::{DEFAULT_PYTHON_IMAGE, DockerBackend, DockerOptions, SupervisorMount};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

/// The `esb` executable (it runs as `esb container-supervisor` in each
/// container) with the loader and libraries this test process runs with
/// (the same toolchain and C library).
fn supervisor() -> SupervisorMount {
    let mut mount = SupervisorMount::this_executable().unwrap();
    mount.exe = std::env::var_os("ESB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/debug/esb"));
    mount
}

async fn backend(instance: &str) -> Option<DockerBackend> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let options = DockerOptions::new(instance, supervisor());
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

/// The base image's last step (import a tree with ENV/WORKDIR/LABEL
/// changes through the engine API, no `docker` CLI) on a tiny tree, so it
/// is checked without the minutes of debootstrap.
#[tokio::test]
async fn a_directory_tree_is_imported_as_an_image_with_its_changes() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let builder = match esb_runtimes_docker::ImageBuilder::connect().await {
        Ok(b) => b,
        Err(e) => {
            assert!(!ci, "docker engine unavailable under CI: {e}");
            eprintln!("skipped: docker engine unavailable: {e}");
            return;
        }
    };
    let root = std::env::temp_dir().join(format!("esb-import-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hello"), "hi\n").unwrap();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let mut output = |_: &str| {};
    esb_runtimes_docker::base_image::import_tree(
        &builder,
        &root,
        "esb-test/import",
        &tag,
        vec![
            "WORKDIR /var/task".to_string(),
            "LABEL io.esb.runtime=python3.11 io.esb.awslambdaric=no".to_string(),
        ],
        &mut output,
    )
    .await
    .unwrap();
    let image = format!("esb-test/import:{tag}");
    let inspect = std::process::Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Config.WorkingDir}} {{index .Config.Labels \"io.esb.runtime\"}}",
            &image,
        ])
        .output()
        .unwrap();
    let _ = std::process::Command::new("docker")
        .args(["image", "rm", "-f", &image])
        .output();
    std::fs::remove_dir_all(&root).unwrap();
    assert!(inspect.status.success(), "{inspect:?}");
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "/var/task python3.11"
    );
}
