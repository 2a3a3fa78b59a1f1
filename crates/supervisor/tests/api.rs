//! The Runtime API as a runtime client sees it, driven by a raw HTTP
//! client (the "runtime" here is the test itself; the child process only
//! publishes the address and sleeps).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use esb_runtimes_core::launch::LaunchPlan;
use esb_runtimes_core::{
    ErrorKind, FunctionSpec, Invocation, InvocationOutcome, NullLogSink, RuntimeError,
};
use esb_supervisor::{Supervisor, SupervisorConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// One request on its own connection (`Connection: close`).
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before reading everything.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn temp_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("esb-api-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn spec() -> Arc<FunctionSpec> {
    Arc::new(FunctionSpec {
        name: "raw".to_string(),
        runtime: "provided.al2023".to_string(),
        handler: None,
        code_dir: std::env::temp_dir(),
        image: None,
        memory_mb: 128,
        timeout: Duration::from_secs(5),
        environment: BTreeMap::new(),
        region: "us-east-1".to_string(),
        account_id: "123456789012".to_string(),
        code_hash: "x".to_string(),
    })
}

fn sleeper(addr_file: &std::path::Path) -> LaunchPlan {
    LaunchPlan {
        program: PathBuf::from("/bin/sh"),
        args: vec![
            "-c".to_string(),
            format!(
                "echo \"$AWS_LAMBDA_RUNTIME_API\" > {}; echo booted; exec sleep 60",
                addr_file.display()
            ),
        ],
        env: vec![],
        working_dir: std::env::temp_dir(),
        execution_env: None,
        description: "sleeper".to_string(),
    }
}

fn invocation(id: &str, payload: &str) -> Invocation {
    Invocation {
        request_id: id.to_string(),
        payload: Bytes::from(payload.to_string()),
        invoked_function_arn: String::new(),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
        timeout: None,
    }
}

async fn read_addr(file: &std::path::Path) -> String {
    for _ in 0..500 {
        if let Ok(text) = std::fs::read_to_string(file)
            && text.ends_with('\n')
        {
            return text.trim().to_string();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("runtime never wrote its address");
}

const NEXT: &str = "/2018-06-01/runtime/invocation/next";

#[tokio::test]
async fn runtime_api_follows_the_lambda_protocol() {
    let addr_file = temp_file("addr");
    let config = SupervisorConfig::new("w-api", spec(), sleeper(&addr_file), Arc::new(NullLogSink));
    let start = tokio::spawn(Supervisor::start(config));
    let addr = read_addr(&addr_file).await;

    // The first /next marks the runtime ready and parks.
    let first_next = tokio::spawn({
        let addr = addr.clone();
        async move { http(&addr, "GET", NEXT, &[], b"").await }
    });
    let supervisor = Arc::new(start.await.unwrap().unwrap());
    assert_eq!(supervisor.runtime_api_addr().to_string(), addr);
    let pid = supervisor.pid();

    let mut inv = invocation("req-1", r#"{"hello":"world"}"#);
    inv.client_context = Some(r#"{"custom":{"a":1}}"#.to_string());
    let running = tokio::spawn({
        let supervisor = supervisor.clone();
        async move { supervisor.invoke(inv).await }
    });
    let next = first_next.await.unwrap();
    assert_eq!(next.status, 200);
    assert_eq!(next.body, br#"{"hello":"world"}"#);
    assert_eq!(next.headers["lambda-runtime-aws-request-id"], "req-1");
    assert_eq!(
        next.headers["lambda-runtime-invoked-function-arn"],
        "arn:aws:lambda:us-east-1:123456789012:function:raw"
    );
    let deadline: u128 = next.headers["lambda-runtime-deadline-ms"].parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert!(
        deadline > now + 4000 && deadline <= now + 5000,
        "{deadline} vs {now}"
    );
    assert!(next.headers["lambda-runtime-trace-id"].starts_with("Root=1-"));
    assert_eq!(
        next.headers["lambda-runtime-client-context"],
        r#"{"custom":{"a":1}}"#
    );
    assert!(!next.headers.contains_key("lambda-runtime-cognito-identity"));

    // Unknown id: 400 InvalidRequestID.
    let unknown = http(
        &addr,
        "POST",
        "/2018-06-01/runtime/invocation/nope/response",
        &[],
        b"x",
    )
    .await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.json()["errorType"], "InvalidRequestID");
    // /next before answering the current invocation: 403.
    let early = http(&addr, "GET", NEXT, &[], b"").await;
    assert_eq!(early.status, 403);
    assert_eq!(early.json()["errorType"], "InvalidStateTransition");

    let ok = http(
        &addr,
        "POST",
        "/2018-06-01/runtime/invocation/req-1/response",
        &[],
        b"\"done\"",
    )
    .await;
    assert_eq!(ok.status, 202);
    assert_eq!(ok.json(), serde_json::json!({"status": "OK"}));
    let result = running.await.unwrap().unwrap();
    match &result.outcome {
        InvocationOutcome::Success(body) => assert_eq!(&body[..], b"\"done\""),
        other => panic!("{other:?}"),
    }
    assert!(result.worker_alive);
    assert!(result.log_tail.contains("START RequestId: req-1"));
    assert!(result.log_tail.contains("REPORT RequestId: req-1\t"));

    // Duplicate answer: 400.
    let dup = http(
        &addr,
        "POST",
        "/2018-06-01/runtime/invocation/req-1/response",
        &[],
        b"again",
    )
    .await;
    assert_eq!(dup.status, 400);
    assert_eq!(dup.json()["errorType"], "InvalidRequestID");

    // Oversized response: 413 to the runtime, Function.ResponseSizeTooLarge to the caller.
    let running = tokio::spawn({
        let supervisor = supervisor.clone();
        async move { supervisor.invoke(invocation("req-2", "{}")).await }
    });
    let next = http(&addr, "GET", NEXT, &[], b"").await;
    assert_eq!(next.headers["lambda-runtime-aws-request-id"], "req-2");
    let big = vec![b'a'; 7 * 1024 * 1024];
    let too_large = http(
        &addr,
        "POST",
        "/2018-06-01/runtime/invocation/req-2/response",
        &[],
        &big,
    )
    .await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.json()["errorType"], "RequestEntityTooLarge");
    let result = running.await.unwrap().unwrap();
    match &result.outcome {
        InvocationOutcome::Error { kind, payload } => {
            assert_eq!(*kind, ErrorKind::ResponseTooLarge);
            let payload: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(payload["errorType"], "Function.ResponseSizeTooLarge");
            assert!(
                payload["errorMessage"]
                    .as_str()
                    .unwrap()
                    .contains("(7340032 bytes)")
            );
        }
        other => panic!("{other:?}"),
    }

    // /error with only the error-type header: the caller still gets JSON.
    let running = tokio::spawn({
        let supervisor = supervisor.clone();
        async move { supervisor.invoke(invocation("req-3", "{}")).await }
    });
    let next = http(&addr, "GET", NEXT, &[], b"").await;
    assert_eq!(next.headers["lambda-runtime-aws-request-id"], "req-3");
    let posted = http(
        &addr,
        "POST",
        "/2018-06-01/runtime/invocation/req-3/error",
        &[("Lambda-Runtime-Function-Error-Type", "Runtime.Custom")],
        b"",
    )
    .await;
    assert_eq!(posted.status, 202);
    let result = running.await.unwrap().unwrap();
    match &result.outcome {
        InvocationOutcome::Error { kind, payload } => {
            assert_eq!(*kind, ErrorKind::Function);
            let payload: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(payload["errorType"], "Runtime.Custom");
        }
        other => panic!("{other:?}"),
    }

    // Init already finished: /init/error is refused.
    let late = http(&addr, "POST", "/2018-06-01/runtime/init/error", &[], b"{}").await;
    assert_eq!(late.status, 403);
    let missing = http(&addr, "GET", "/2018-06-01/runtime/nothing", &[], b"").await;
    assert_eq!(missing.status, 404);

    supervisor.stop().await;
    assert!(!supervisor.is_alive());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[tokio::test]
async fn init_that_never_polls_times_out() {
    let addr_file = temp_file("addr-init");
    let mut config =
        SupervisorConfig::new("w-init", spec(), sleeper(&addr_file), Arc::new(NullLogSink));
    config.init_timeout = Some(Duration::from_millis(300));
    let err = Supervisor::start(config).await.unwrap_err();
    let RuntimeError::Init { payload, .. } = err else {
        panic!("{err:?}");
    };
    let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(payload["errorType"], "Sandbox.Timedout");
}

#[tokio::test]
async fn missing_program_is_a_spawn_error() {
    let mut plan = sleeper(&temp_file("unused"));
    plan.program = PathBuf::from("/nonexistent/bootstrap");
    let config = SupervisorConfig::new("w-x", spec(), plan, Arc::new(NullLogSink));
    let err = Supervisor::start(config).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Spawn { .. }), "{err:?}");
    assert!(err.to_string().contains("could not start worker"));
}

/// W5: a runtime that streams its response without end (chunked, no
/// `Content-Length`) is cut at the 6 MB cap: the caller gets
/// `Function.ResponseSizeTooLarge`, not the function's timeout, and the
/// worker serves the next invocation.
#[tokio::test]
async fn w5_endless_streamed_response_is_cut_at_the_cap() {
    let addr_file = temp_file("addr-w5");
    let mut long = (*spec()).clone();
    long.timeout = Duration::from_secs(120);
    let config = SupervisorConfig::new(
        "w-w5",
        Arc::new(long),
        sleeper(&addr_file),
        Arc::new(NullLogSink),
    );
    let start = tokio::spawn(Supervisor::start(config));
    let addr = read_addr(&addr_file).await;
    let first_next = tokio::spawn({
        let addr = addr.clone();
        async move { http(&addr, "GET", NEXT, &[], b"").await }
    });
    let supervisor = Arc::new(start.await.unwrap().unwrap());
    let running = tokio::spawn({
        let supervisor = supervisor.clone();
        async move { supervisor.invoke(invocation("req-w5", "{}")).await }
    });
    assert_eq!(first_next.await.unwrap().status, 200);
    // Stream chunks until the server stops listening (at most 10x the cap,
    // so a broken cap fails the test instead of hanging it).
    let writer = tokio::spawn({
        let addr = addr.clone();
        async move {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            let head = format!(
                "POST /2018-06-01/runtime/invocation/req-w5/response HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b'a'; 64 * 1024];
            let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
            frame.extend_from_slice(&chunk);
            frame.extend_from_slice(b"\r\n");
            let mut sent = 0usize;
            while sent < 10 * esb_supervisor::MAX_RESPONSE_SIZE {
                if stream.write_all(&frame).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            let mut reply = Vec::new();
            let _ = stream.read_to_end(&mut reply).await;
            (sent, String::from_utf8_lossy(&reply).to_string())
        }
    });
    let result = running.await.unwrap().unwrap();
    match &result.outcome {
        InvocationOutcome::Error { kind, payload } => {
            assert_eq!(*kind, ErrorKind::ResponseTooLarge);
            let payload: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(payload["errorType"], "Function.ResponseSizeTooLarge");
            assert_eq!(
                payload["errorMessage"],
                "Response payload size exceeded maximum allowed payload size (6291556 bytes)."
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(result.worker_alive, "worker reusable");
    let (sent, reply) = writer.await.unwrap();
    assert!(
        sent < 10 * esb_supervisor::MAX_RESPONSE_SIZE,
        "reading stopped"
    );
    if !reply.is_empty() {
        assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    }
    // The worker takes the next invocation.
    let running = tokio::spawn({
        let supervisor = supervisor.clone();
        async move { supervisor.invoke(invocation("req-w5b", "{}")).await }
    });
    let next = http(&addr, "GET", NEXT, &[], b"").await;
    assert_eq!(next.headers["lambda-runtime-aws-request-id"], "req-w5b");
    let ok = http(
        &addr,
        "POST",
        "/2018-06-01/runtime/invocation/req-w5b/response",
        &[],
        b"\"fine\"",
    )
    .await;
    assert_eq!(ok.status, 202);
    let result = running.await.unwrap().unwrap();
    assert!(matches!(result.outcome, InvocationOutcome::Success(ref b) if &b[..] == b"\"fine\""));
    supervisor.stop().await;
}

/// W2/W3: a runtime that takes the event and never answers, here frozen
/// with SIGSTOP, times out at ESB's own deadline (not the runtime's), and
/// its process is killed and reaped.
#[tokio::test]
async fn w2_w3_frozen_runtime_times_out_and_is_killed() {
    let addr_file = temp_file("addr-w3");
    let config = SupervisorConfig::new("w-w3", spec(), sleeper(&addr_file), Arc::new(NullLogSink));
    let start = tokio::spawn(Supervisor::start(config));
    let addr = read_addr(&addr_file).await;
    let first_next = tokio::spawn({
        let addr = addr.clone();
        async move { http(&addr, "GET", NEXT, &[], b"").await }
    });
    let supervisor = Arc::new(start.await.unwrap().unwrap());
    let pid = supervisor.pid();
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let mut inv = invocation("req-w3", "{}");
    inv.timeout = Some(Duration::from_millis(300));
    let result = supervisor.invoke(inv).await.unwrap();
    match &result.outcome {
        InvocationOutcome::Error { kind, payload } => {
            assert_eq!(*kind, ErrorKind::Timeout);
            let payload: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(payload["errorType"], "Sandbox.Timedout");
            assert!(
                payload["errorMessage"]
                    .as_str()
                    .unwrap()
                    .ends_with("Task timed out after 0.30 seconds")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!result.worker_alive, "a timed-out worker is not reused");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process reaped"
    );
    // The event had been delivered (the runtime froze after taking it).
    assert_eq!(first_next.await.unwrap().status, 200);
}
