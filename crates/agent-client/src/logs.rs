//! Follows a container worker's output into ESB's log store: one
//! `GET /logs` stream per worker from its supervisor (the framing is
//! `esb_container_supervisor::wire::push_log_record`), each record handed
//! to the [`LogSink`] with its function, worker and request id, as the
//! process runtime does for its workers.
//!
//! The stream lives as long as the worker: a broken or taken-over stream
//! is opened again (after 0.1 s, doubling to 2 s while it keeps failing)
//! until the worker's `alive` flag drops; a stream silent for three
//! heartbeats is treated as broken. A supervisor without `GET /logs` (an
//! adopted container of an older ESB) answers 404, and is left to write
//! to its container's output as before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use esb_container_supervisor::logs::HEARTBEAT;
use esb_container_supervisor::wire::parse_log_record;
use esb_runtimes_core::LogSink;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Longest a partial record is kept waiting for its newline.
const MAX_RECORD: usize = 1024 * 1024;

/// Why one stream ended.
enum End {
    /// The supervisor has no log stream: stop following.
    Unsupported,
    /// Closed, broken, silent or taken over: open it again while alive.
    Again,
}

/// Follows the output of worker `worker_id` (supervisor at `addr`) into
/// `sink` until `alive` is false.
pub fn follow(
    addr: SocketAddr,
    function: String,
    worker_id: String,
    sink: Arc<dyn LogSink>,
    alive: Arc<AtomicBool>,
) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        while alive.load(Ordering::SeqCst) {
            match stream_once(addr, &function, &worker_id, sink.as_ref()).await {
                Ok(End::Unsupported) => {
                    tracing::debug!(worker = %worker_id, "supervisor has no log stream");
                    return;
                }
                Ok(End::Again) => backoff = Duration::from_millis(100),
                Err(()) => {}
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
}

/// One `GET /logs` stream, to its end. `Err` when no stream could be
/// opened.
async fn stream_once(
    addr: SocketAddr,
    function: &str,
    worker_id: &str,
    sink: &dyn LogSink,
) -> Result<End, ()> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| ())?
        .map_err(|_| ())?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get("/logs")
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|_| ())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .map_err(|_| ())?
        .map_err(|_| ())?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(End::Unsupported),
        _ => return Err(()),
    }
    let mut body = response.into_body();
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let frame = match tokio::time::timeout(HEARTBEAT * 3, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            // Ended (taken over, container gone), broken, or silent.
            Ok(None) | Ok(Some(Err(_))) | Err(_) => return Ok(End::Again),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        partial.extend_from_slice(&data);
        let Some(last) = partial.iter().rposition(|&b| b == b'\n') else {
            if partial.len() > MAX_RECORD {
                partial.clear();
            }
            continue;
        };
        let text = String::from_utf8_lossy(&partial[..last]);
        for record in text.split('\n') {
            if let Some((request_id, line)) = parse_log_record(record) {
                sink.line(function, worker_id, request_id, line);
            }
        }
        partial.drain(..=last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Function, worker, request id, line.
    type Record = (String, String, Option<String>, String);

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Record>>);

    impl LogSink for Recorder {
        fn line(&self, function: &str, worker_id: &str, request_id: Option<&str>, line: &str) {
            self.0.lock().unwrap().push((
                function.into(),
                worker_id.into(),
                request_id.map(str::to_string),
                line.into(),
            ));
        }
    }

    /// A real supervisor's log stream (the container supervisor's
    /// `LogBuffer` served over HTTP) followed into a recording sink.
    #[tokio::test]
    async fn lines_reach_the_sink_and_a_taken_over_stream_is_reopened() {
        use esb_container_supervisor::logs::LogBuffer;
        use hyper::server::conn::http1 as server;
        use hyper::service::service_fn;

        let buffer = LogBuffer::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = buffer.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let buffer = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_request| {
                        let body = buffer.subscribe();
                        async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(body)) }
                    });
                    let _ = server::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        buffer.push(None, "init");
        buffer.push(Some("r1"), "START RequestId: r1");
        let recorder = Arc::new(Recorder::default());
        let alive = Arc::new(AtomicBool::new(true));
        follow(
            addr,
            "fn".into(),
            "w1".into(),
            recorder.clone(),
            alive.clone(),
        );
        let seen = |n: usize| {
            let recorder = recorder.clone();
            async move {
                for _ in 0..500 {
                    if recorder.0.lock().unwrap().len() >= n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("only {:?}", recorder.0.lock().unwrap());
            }
        };
        seen(2).await;
        // Someone else takes the stream (what a function inside its own
        // container could do): the follower opens it again and gets what
        // comes after.
        let _thief = buffer.subscribe();
        // Lines pushed before the follower is back go to the thief; push
        // until one reaches the follower.
        for _ in 0..500 {
            if recorder.0.lock().unwrap().len() > 2 {
                break;
            }
            buffer.push(Some("r2"), "after");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lines = recorder.0.lock().unwrap().clone();
        assert_eq!(
            lines[..2],
            [
                ("fn".into(), "w1".into(), None, "init".into()),
                (
                    "fn".into(),
                    "w1".into(),
                    Some("r1".into()),
                    "START RequestId: r1".into()
                ),
            ]
        );
        assert_eq!(
            lines.get(2),
            Some(&("fn".into(), "w1".into(), Some("r2".into()), "after".into()))
        );
        alive.store(false, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn a_supervisor_without_a_log_stream_is_left_alone() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_request| async {
                    let mut response = hyper::Response::new(http_body_util::Empty::<Bytes>::new());
                    *response.status_mut() = StatusCode::NOT_FOUND;
                    Ok::<_, std::convert::Infallible>(response)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        let recorder = Arc::new(Recorder::default());
        let alive = Arc::new(AtomicBool::new(true));
        follow(addr, "fn".into(), "w1".into(), recorder, alive);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
