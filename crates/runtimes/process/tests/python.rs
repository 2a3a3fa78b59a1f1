//! The process runtime with real Python workers (built-in bootstrap and
//! awslambdaric).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use esb_runtimes_core::{ErrorKind, InvocationOutcome, RuntimeBackend, RuntimeError};
use esb_runtimes_process::PythonBootstrap;

const APP: &str = r#"
import os, time

def handler(event, context):
    print("handling", event.get("n"))
    return {
        "event": event,
        "pid": os.getpid(),
        "function_name": context.function_name,
        "function_version": context.function_version,
        "arn": context.invoked_function_arn,
        "memory": str(context.memory_limit_in_mb),
        "request_id": context.aws_request_id,
        "log_group": context.log_group_name,
        "log_stream": context.log_stream_name,
        "remaining": context.get_remaining_time_in_millis(),
        "env": {k: os.environ.get(k) for k in [
            "GREETING", "_HANDLER", "AWS_LAMBDA_FUNCTION_NAME", "AWS_EXECUTION_ENV", "TZ",
            "AWS_REGION", "AWS_ACCESS_KEY_ID", "CARGO_PKG_NAME", "LAMBDA_TASK_ROOT",
            "AWS_LAMBDA_RUNTIME_API", "PYTHONUNBUFFERED"]},
    }

def fail(event, context):
    raise ValueError("boom " + str(event.get("n")))

def slow(event, context):
    print("sleeping")
    time.sleep(30)

def crash(event, context):
    print("about to crash")
    os._exit(1)
"#;

async fn warm_reuse(mode: PythonBootstrap) {
    let sink = Arc::new(MemorySink::default());
    let backend = common::backend(mode, sink.clone());
    let dir = code_dir("warm", "app.py", APP);
    let worker = backend
        .start_worker(spec(
            "hello",
            "python3.12",
            Some("app.handler"),
            dir.clone(),
        ))
        .await
        .unwrap();
    let pid = worker.pid().unwrap();

    let first = worker
        .invoke(invocation("req-1", r#"{"n":1}"#))
        .await
        .unwrap();
    let InvocationOutcome::Success(body) = &first.outcome else {
        panic!(
            "expected success, got {:?} / {}",
            first.outcome, first.log_tail
        );
    };
    let body = json(body);
    assert_eq!(body["event"]["n"], 1);
    assert_eq!(body["pid"], pid);
    assert_eq!(body["function_name"], "hello");
    assert_eq!(body["function_version"], "$LATEST");
    assert_eq!(
        body["arn"],
        "arn:aws:lambda:us-east-1:123456789012:function:hello"
    );
    assert_eq!(body["memory"], "128");
    assert_eq!(body["request_id"], "req-1");
    assert_eq!(body["log_group"], "/aws/lambda/hello");
    assert!(
        body["log_stream"]
            .as_str()
            .unwrap()
            .ends_with(&format!("[$LATEST]{}", worker.id()))
    );
    let remaining = body["remaining"].as_i64().unwrap();
    assert!(
        remaining > 2000 && remaining <= 3000,
        "remaining {remaining}"
    );
    let env = &body["env"];
    assert_eq!(env["GREETING"], "hello");
    assert_eq!(env["_HANDLER"], "app.handler");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "hello");
    assert_eq!(env["AWS_EXECUTION_ENV"], "AWS_Lambda_python3.12");
    assert_eq!(env["TZ"], ":UTC");
    assert_eq!(env["AWS_REGION"], "us-east-1");
    assert_eq!(env["PYTHONUNBUFFERED"], "1");
    assert_eq!(env["LAMBDA_TASK_ROOT"], dir.display().to_string());
    assert!(env["AWS_ACCESS_KEY_ID"].is_string());
    assert!(
        env["AWS_LAMBDA_RUNTIME_API"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(
        env["CARGO_PKG_NAME"].is_null(),
        "esb's own environment leaked"
    );

    assert!(first.worker_alive);
    assert!(first.init_duration.is_some());
    let tail = &first.log_tail;
    assert!(
        tail.starts_with("START RequestId: req-1 Version: $LATEST\n"),
        "{tail}"
    );
    assert!(tail.contains("handling 1\n"), "{tail}");
    assert!(tail.contains("END RequestId: req-1\n"), "{tail}");
    assert!(
        tail.contains("REPORT RequestId: req-1\tDuration: "),
        "{tail}"
    );
    assert!(
        tail.contains("\tMemory Size: 128 MB\tMax Memory Used: "),
        "{tail}"
    );
    assert!(tail.contains("Init Duration: "), "{tail}");

    let second = worker
        .invoke(invocation("req-2", r#"{"n":2}"#))
        .await
        .unwrap();
    let InvocationOutcome::Success(body) = &second.outcome else {
        panic!("expected success, got {:?}", second.outcome);
    };
    assert_eq!(json(body)["pid"], pid, "warm worker reused");
    assert!(second.init_duration.is_none());
    assert!(second.log_tail.contains("handling 2\n"));
    assert!(!second.log_tail.contains("handling 1"));
    assert!(!second.log_tail.contains("Init Duration"));
    // The sink saw the function's line tagged with its request.
    assert!(
        sink.lines
            .lock()
            .unwrap()
            .iter()
            .any(|(id, l)| id.as_deref() == Some("req-2") && l == "handling 2")
    );

    // Dropping the backend and worker leaves no process behind.
    drop(worker);
    drop(backend);
    for _ in 0..100 {
        if !process_exists(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!process_exists(pid), "runtime {pid} outlived its worker");
}

#[tokio::test]
async fn builtin_bootstrap_reuses_a_warm_worker() {
    warm_reuse(PythonBootstrap::Builtin).await;
}

#[tokio::test]
async fn awslambdaric_reuses_a_warm_worker() {
    if !present(
        "awslambdaric (pip install awslambdaric)",
        awslambdaric_available(),
    ) {
        return;
    }
    warm_reuse(PythonBootstrap::Awslambdaric).await;
}

async fn handler_error(mode: PythonBootstrap) {
    let sink = Arc::new(MemorySink::default());
    let backend = common::backend(mode, sink);
    let dir = code_dir("error", "app.py", APP);
    let worker = backend
        .start_worker(spec("err", "python3.12", Some("app.fail"), dir))
        .await
        .unwrap();
    let result = worker
        .invoke(invocation("req-e", r#"{"n":7}"#))
        .await
        .unwrap();
    let InvocationOutcome::Error { kind, payload } = &result.outcome else {
        panic!("expected error, got {:?}", result.outcome);
    };
    assert_eq!(*kind, ErrorKind::Function);
    let payload = json(payload);
    assert_eq!(payload["errorType"], "ValueError");
    assert_eq!(payload["errorMessage"], "boom 7");
    let trace = payload["stackTrace"].as_array().unwrap();
    assert!(!trace.is_empty());
    assert!(trace.iter().all(|f| f.is_string()));
    assert!(
        trace
            .iter()
            .any(|f| f.as_str().unwrap().contains("in fail")),
        "{trace:?}"
    );
    assert!(
        result.log_tail.contains("[ERROR] ValueError: boom 7"),
        "{}",
        result.log_tail
    );
    assert!(result.worker_alive);
    // Still usable.
    let again = worker
        .invoke(invocation("req-f", r#"{"n":8}"#))
        .await
        .unwrap();
    assert!(matches!(
        again.outcome,
        InvocationOutcome::Error {
            kind: ErrorKind::Function,
            ..
        }
    ));
}

const LOGGING_APP: &str = r#"
import logging

logger = logging.getLogger()
logger.setLevel(logging.INFO)
logger.info("module loaded")

def handler(event, context):
    logger.info("handling %s", event["n"])
    logging.getLogger("child").warning("careful")
    return {"ok": True}
"#;

/// The `logging` module writes Lambda's line format
/// (`[LEVEL]\t<UTC time>\t<request id>\t<message>`), configured before
/// the function's module-level code runs.
async fn logging_format(mode: PythonBootstrap) {
    let sink = Arc::new(MemorySink::default());
    let backend = common::backend(mode, sink.clone());
    let dir = code_dir("logging", "app.py", LOGGING_APP);
    let worker = backend
        .start_worker(spec("logs", "python3.12", Some("app.handler"), dir))
        .await
        .unwrap();
    let result = worker
        .invoke(invocation("req-log", r#"{"n":5}"#))
        .await
        .unwrap();
    assert!(
        matches!(result.outcome, InvocationOutcome::Success(_)),
        "{:?} {}",
        result.outcome,
        result.log_tail
    );
    let info = result
        .log_tail
        .lines()
        .find(|l| l.ends_with("\treq-log\thandling 5"))
        .unwrap_or_else(|| panic!("no handler log line in {:?}", result.log_tail));
    let fields: Vec<&str> = info.split('\t').collect();
    assert_eq!(fields[0], "[INFO]", "{info:?}");
    assert!(
        chrono_like(fields[1]),
        "timestamp {:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ",
        fields[1]
    );
    assert!(
        result.log_tail.contains("[WARNING]") && result.log_tail.contains("\treq-log\tcareful"),
        "{}",
        result.log_tail
    );
    let all = sink.text();
    assert!(
        all.lines()
            .any(|l| l.starts_with("[INFO]\t") && l.ends_with("\tmodule loaded")),
        "the module-level log line is not in Lambda's format: {all}"
    );
    worker.stop().await;
}

fn chrono_like(stamp: &str) -> bool {
    let b = stamp.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[23] == b'Z'
        && stamp
            .chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10 | 13 | 16 | 19 | 23) || c.is_ascii_digit())
}

#[tokio::test]
async fn builtin_bootstrap_logging_has_lambdas_format() {
    logging_format(PythonBootstrap::Builtin).await;
}

#[tokio::test]
async fn awslambdaric_logging_has_lambdas_format() {
    if !present(
        "awslambdaric (pip install awslambdaric)",
        awslambdaric_available(),
    ) {
        return;
    }
    logging_format(PythonBootstrap::Awslambdaric).await;
}

#[tokio::test]
async fn builtin_bootstrap_reports_handler_errors_like_lambda() {
    handler_error(PythonBootstrap::Builtin).await;
}

#[tokio::test]
async fn awslambdaric_reports_handler_errors_like_lambda() {
    if !present(
        "awslambdaric (pip install awslambdaric)",
        awslambdaric_available(),
    ) {
        return;
    }
    handler_error(PythonBootstrap::Awslambdaric).await;
}

#[tokio::test]
async fn timeout_kills_the_runtime() {
    let sink = Arc::new(MemorySink::default());
    let backend = common::backend(PythonBootstrap::Builtin, sink.clone());
    let dir = code_dir("timeout", "app.py", APP);
    let mut spec = (*spec("slow", "python3.12", Some("app.slow"), dir)).clone();
    spec.timeout = Duration::from_secs(1);
    let worker = backend.start_worker(Arc::new(spec)).await.unwrap();
    let pid = worker.pid().unwrap();
    let started = std::time::Instant::now();
    let result = worker.invoke(invocation("req-t", "{}")).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    let InvocationOutcome::Error { kind, payload } = &result.outcome else {
        panic!("expected timeout, got {:?}", result.outcome);
    };
    assert_eq!(*kind, ErrorKind::Timeout);
    let payload = json(payload);
    assert_eq!(payload["errorType"], "Sandbox.Timedout");
    assert_eq!(
        payload["errorMessage"],
        "RequestId: req-t Error: Task timed out after 1.00 seconds"
    );
    assert!(!result.worker_alive);
    assert!(!worker.is_alive());
    assert!(!process_exists(pid), "killed runtime {pid} was not reaped");
    assert!(result.log_tail.contains("sleeping\n"));
    assert!(
        result
            .log_tail
            .contains(" req-t Task timed out after 1.00 seconds\n"),
        "{}",
        result.log_tail
    );
    assert!(
        result.log_tail.contains("Duration: 1000.00 ms"),
        "{}",
        result.log_tail
    );
    assert!(matches!(
        worker.invoke(invocation("req-u", "{}")).await,
        Err(esb_runtimes_core::WorkerError::Gone(_))
    ));
}

#[tokio::test]
async fn invocation_timeout_below_function_timeout_wins() {
    let sink = Arc::new(MemorySink::default());
    let backend = common::backend(PythonBootstrap::Builtin, sink);
    let dir = code_dir("timeout2", "app.py", APP);
    let worker = backend
        .start_worker(spec("slow", "python3.12", Some("app.slow"), dir))
        .await
        .unwrap();
    let mut inv = invocation("req-t2", "{}");
    inv.timeout = Some(Duration::from_millis(500));
    let result = worker.invoke(inv).await.unwrap();
    let InvocationOutcome::Error { payload, .. } = &result.outcome else {
        panic!("expected timeout");
    };
    assert_eq!(
        json(payload)["errorMessage"],
        "RequestId: req-t2 Error: Task timed out after 0.50 seconds"
    );
}

#[tokio::test]
async fn crash_mid_invocation_is_a_runtime_exit_error() {
    let sink = Arc::new(MemorySink::default());
    let backend = common::backend(PythonBootstrap::Builtin, sink);
    let dir = code_dir("crash", "app.py", APP);
    let worker = backend
        .start_worker(spec("crash", "python3.12", Some("app.crash"), dir))
        .await
        .unwrap();
    let pid = worker.pid().unwrap();
    let result = worker.invoke(invocation("req-c", "{}")).await.unwrap();
    let InvocationOutcome::Error { kind, payload } = &result.outcome else {
        panic!("expected exit error, got {:?}", result.outcome);
    };
    assert_eq!(*kind, ErrorKind::RuntimeExit);
    let payload = json(payload);
    assert_eq!(payload["errorType"], "Runtime.ExitError");
    assert_eq!(
        payload["errorMessage"],
        "RequestId: req-c Error: Runtime exited with error: exit status 1"
    );
    assert!(!result.worker_alive);
    assert!(!process_exists(pid));
    assert!(
        result.log_tail.contains("about to crash\n"),
        "{}",
        result.log_tail
    );
    assert!(result.log_tail.contains("END RequestId: req-c"));
}

async fn init_error(
    mode: PythonBootstrap,
    file: &str,
    source: &str,
    handler: &str,
) -> serde_json::Value {
    let sink = Arc::new(MemorySink::default());
    let backend = common::backend(mode, sink);
    let dir = code_dir("init", file, source);
    match backend
        .start_worker(spec("broken", "python3.12", Some(handler), dir))
        .await
    {
        Err(RuntimeError::Init { payload, .. }) => json(&payload),
        other => panic!("expected init error, got {other:?}"),
    }
}

#[tokio::test]
async fn init_errors_carry_the_runtime_error_type() {
    let syntax = init_error(
        PythonBootstrap::Builtin,
        "app.py",
        "def handler(:\n",
        "app.handler",
    )
    .await;
    assert_eq!(syntax["errorType"], "Runtime.UserCodeSyntaxError");
    let missing = init_error(PythonBootstrap::Builtin, "app.py", "x = 1\n", "app.handler").await;
    assert_eq!(missing["errorType"], "Runtime.HandlerNotFound");
    let import = init_error(
        PythonBootstrap::Builtin,
        "app.py",
        "import not_a_module_xyz\n",
        "app.handler",
    )
    .await;
    assert_eq!(import["errorType"], "Runtime.ImportModuleError");
    assert!(
        import["errorMessage"]
            .as_str()
            .unwrap()
            .contains("not_a_module_xyz")
    );
    let exits = init_error(
        PythonBootstrap::Builtin,
        "app.py",
        "import os\nos._exit(3)\n",
        "app.handler",
    )
    .await;
    assert_eq!(exits["errorType"], "Runtime.ExitError");
    assert_eq!(
        exits["errorMessage"],
        "Error: Runtime exited with error: exit status 3"
    );
}

#[tokio::test]
async fn awslambdaric_init_errors_carry_the_runtime_error_type() {
    if !present(
        "awslambdaric (pip install awslambdaric)",
        awslambdaric_available(),
    ) {
        return;
    }
    let missing = init_error(
        PythonBootstrap::Awslambdaric,
        "app.py",
        "x = 1\n",
        "app.handler",
    )
    .await;
    assert_eq!(missing["errorType"], "Runtime.HandlerNotFound");
}

#[tokio::test]
async fn sitecustomize_points_old_style_botocore_at_esb() {
    let cache = temp_dir("site");
    let files = esb_runtimes_core::launch::write_python_files(&cache).unwrap();
    let python = esb_runtimes_core::launch::find_on_path(
        "python3.11",
        std::env::var("PATH").ok().as_deref(),
    )
    .or_else(|| {
        esb_runtimes_core::launch::find_on_path("python3", std::env::var("PATH").ok().as_deref())
    })
    .expect("python3 on PATH");

    // Without boto3 in use, nothing is imported and nothing breaks.
    let lazy = std::process::Command::new(&python)
        .args(["-c", "import sys; print('botocore' in sys.modules)"])
        .env("PYTHONPATH", &files.site_dir)
        .env("AWS_ENDPOINT_URL_LAMBDA", "http://127.0.0.1:4010")
        .output()
        .unwrap();
    assert!(
        lazy.status.success(),
        "{}",
        String::from_utf8_lossy(&lazy.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&lazy.stdout).trim(), "False");

    let has_boto3 = std::process::Command::new(&python)
        .args(["-c", "import boto3"])
        .output()
        .unwrap()
        .status
        .success();
    if !has_boto3 {
        eprintln!("skipped the boto3 half: boto3 is not installed");
        return;
    }
    // AWS_IGNORE_CONFIGURED_ENDPOINT_URLS turns off new botocore's own
    // support, so only the patch can produce the endpoint.
    let script = "import boto3, botocore.session\n\
        c = boto3.client('lambda', region_name='us-east-1')\n\
        s3 = boto3.client('s3', region_name='us-east-1', endpoint_url='http://explicit:1')\n\
        print(c.meta.endpoint_url)\n\
        print(s3.meta.endpoint_url)\n\
        print(getattr(botocore.session.Session.create_client, '__esb_patched__', False))\n";
    let output = std::process::Command::new(&python)
        .args(["-c", script])
        .env("PYTHONPATH", &files.site_dir)
        .env("AWS_ENDPOINT_URL_LAMBDA", "http://127.0.0.1:4010")
        .env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
        .env("ESB_FORCE_ENDPOINT_PATCH", "1")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["http://127.0.0.1:4010", "http://explicit:1", "True"]
    );
}

/// Not a pass/fail test: prints warm-path latency percentiles.
/// `cargo test -p esb-runtimes-process --release --test python -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn warm_latency_report() {
    let backend = common::backend(PythonBootstrap::Builtin, Arc::new(MemorySink::default()));
    let dir = code_dir(
        "latency",
        "echo.py",
        "def handler(event, context):\n    return event\n",
    );
    let worker = backend
        .start_worker(spec("echo", "python3.12", Some("echo.handler"), dir))
        .await
        .unwrap();
    let mut samples = Vec::new();
    for n in 0..3000 {
        let started = std::time::Instant::now();
        let result = worker
            .invoke(invocation(&format!("r{n}"), r#"{"a":1}"#))
            .await
            .unwrap();
        samples.push(started.elapsed());
        assert!(matches!(result.outcome, InvocationOutcome::Success(_)));
    }
    samples.sort();
    let total: Duration = samples.iter().sum();
    eprintln!(
        "warm invoke: p50 {:?} p99 {:?} max {:?}; {:.0}/s sequential",
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        samples[samples.len() - 1],
        samples.len() as f64 / total.as_secs_f64()
    );
}

#[tokio::test]
async fn list_shows_the_children_and_shutdown_kills_them_all() {
    let sink = Arc::new(MemorySink::default());
    let backend = common::backend(PythonBootstrap::Builtin, sink);
    let dir = code_dir("list", "app.py", APP);
    let a = backend
        .start_worker(spec("a", "python3.12", Some("app.handler"), dir.clone()))
        .await
        .unwrap();
    let b = backend
        .start_worker(spec("b", "python3.12", Some("app.handler"), dir))
        .await
        .unwrap();
    let mut listed = RuntimeBackend::list_workers(&backend).await.unwrap();
    listed.sort_by(|x, y| x.function.cmp(&y.function));
    let seen: Vec<(&str, Option<u32>, &str)> = listed
        .iter()
        .map(|w| (w.function.as_str(), w.pid, w.state.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![("a", a.pid(), "running"), ("b", b.pid(), "running")]
    );
    assert_eq!(listed[0].id, a.id());
    assert_eq!(listed[0].code_hash, "test");

    // The pool still holds both workers; shutdown kills them anyway.
    RuntimeBackend::shutdown(&backend).await;
    for pid in [a.pid().unwrap(), b.pid().unwrap()] {
        assert!(!process_exists(pid), "pid {pid} survived shutdown");
    }
    assert!(!a.is_alive() && !b.is_alive());
    let states: Vec<String> = RuntimeBackend::list_workers(&backend)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.state)
        .collect();
    assert_eq!(states, vec!["exited".to_string(), "exited".to_string()]);
    RuntimeBackend::shutdown(&backend).await;
}
