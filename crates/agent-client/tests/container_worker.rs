//! `ContainerWorker` against an in-process stand-in for the container
//! supervisor's `POST /invoke` (the real wire format): one connection for
//! many invocations, a connection the supervisor closed is replaced without
//! losing or repeating an invocation, and an unreachable supervisor makes
//! the worker gone.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use esb_agent_client::{ContainerWorker, SupervisorClient, WorkerOwner};
use esb_container_supervisor::wire;
use esb_runtimes_core::{Invocation, InvocationOutcome, InvokeResult, Worker, WorkerError};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

struct NoOwner;

#[async_trait::async_trait]
impl WorkerOwner for NoOwner {
    async fn destroy(&self, _worker_id: &str) {}
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    invocations: AtomicUsize,
}

/// Echoes each event back (upper-cased) with the request id as log tail.
/// With `close_every` set, closes the connection after that many answers.
async fn fake_supervisor(close_every: Option<usize>) -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let shared = counts.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let counts = shared.clone();
            tokio::spawn(async move {
                let served = Arc::new(AtomicUsize::new(0));
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let counts = counts.clone();
                    let served = served.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let invocation = wire::invocation_from(&parts.headers, body).unwrap();
                        counts.invocations.fetch_add(1, Ordering::SeqCst);
                        let result = InvokeResult {
                            outcome: InvocationOutcome::Success(Bytes::from(
                                invocation.payload.to_ascii_uppercase(),
                            )),
                            log_tail: format!("END RequestId: {}\n", invocation.request_id),
                            duration: Duration::from_micros(42),
                            init_duration: None,
                            worker_alive: true,
                        };
                        let (headers, body) = wire::result_parts(&result);
                        let mut response = Response::new(Full::new(body));
                        *response.headers_mut() = headers;
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        if close_every.is_some_and(|every| n.is_multiple_of(every)) {
                            response.headers_mut().insert(
                                hyper::header::CONNECTION,
                                hyper::header::HeaderValue::from_static("close"),
                            );
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, counts)
}

fn worker(addr: SocketAddr) -> (ContainerWorker, Arc<AtomicBool>) {
    let alive = Arc::new(AtomicBool::new(true));
    let worker = ContainerWorker::new(
        "w1".to_string(),
        addr,
        Duration::from_secs(10),
        SupervisorClient::with_connect_timeout(Duration::from_millis(500)),
        alive.clone(),
        Arc::new(NoOwner),
    );
    (worker, alive)
}

fn invocation(i: usize) -> Invocation {
    Invocation {
        request_id: format!("req-{i}"),
        payload: Bytes::from(format!("{{\"n\":\"event {i}\"}}")),
        invoked_function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f".to_string(),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
        timeout: None,
    }
}

fn payload(result: &InvokeResult) -> String {
    match &result.outcome {
        InvocationOutcome::Success(p) => String::from_utf8(p.to_vec()).unwrap(),
        InvocationOutcome::Error { .. } => panic!("error outcome"),
    }
}

#[tokio::test]
async fn many_invocations_share_one_connection() {
    let (addr, counts) = fake_supervisor(None).await;
    let (worker, _) = worker(addr);
    for i in 0..50 {
        let result = worker.invoke(invocation(i)).await.unwrap();
        assert_eq!(payload(&result), format!("{{\"N\":\"EVENT {i}\"}}"));
        assert_eq!(result.log_tail, format!("END RequestId: req-{i}\n"));
        assert_eq!(result.duration, Duration::from_micros(42));
    }
    assert_eq!(counts.invocations.load(Ordering::SeqCst), 50);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_closed_connection_is_replaced_and_no_invocation_is_lost_or_repeated() {
    let (addr, counts) = fake_supervisor(Some(3)).await;
    let (worker, alive) = worker(addr);
    for i in 0..12 {
        let result = worker.invoke(invocation(i)).await.unwrap();
        assert_eq!(payload(&result), format!("{{\"N\":\"EVENT {i}\"}}"));
    }
    assert_eq!(counts.invocations.load(Ordering::SeqCst), 12);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 4);
    assert!(alive.load(Ordering::SeqCst));
}

#[tokio::test]
async fn an_unreachable_supervisor_makes_the_worker_gone() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (worker, alive) = worker(addr);
    match worker.invoke(invocation(0)).await {
        Err(WorkerError::Gone(id)) => assert_eq!(id, "w1"),
        other => panic!("expected Gone, got {other:?}"),
    }
    assert!(!alive.load(Ordering::SeqCst));
}
