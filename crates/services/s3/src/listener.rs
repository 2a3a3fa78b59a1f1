//! The accept loop shared by the S3 and DynamoDB listeners, with the HTTP
//! edge limits of robustness H10/H11 (defaults from
//! `shared/reference/robustness.md`):
//!
//! - **header timeout** (10 s): a connection must deliver a complete request
//!   head within this time of its first byte (of its accept for a new
//!   connection), or it is closed;
//! - **body timeout** (30 s): a request body must arrive completely within
//!   this time of the head; otherwise the body read fails and the connection
//!   is closed;
//! - **idle timeout** (60 s): a keep-alive connection with no request in
//!   flight and no bytes moving is closed; a response a client stops
//!   reading counts as no bytes moving;
//! - **connection limit** (10,000): at the limit a new connection evicts the
//!   oldest connection that has no request in flight (slowloris and idle
//!   keep-alive connections), so half-sent requests can never lock other
//!   clients out; only when every connection is busy is the newcomer shed
//!   with `503` and closed.
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a
//! keep-alive connection waits for its next request, so it cannot tell a
//! slow head (10 s) from an idle connection (60 s). Instead a small watchdog
//! per connection reads timestamps the connection's I/O wrapper and the
//! service record.
//!
//! Must not: know about S3 or DynamoDB (the caller's handler does), or
//! buffer bodies.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// Boxed error of a request body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Timeouts and the connection cap of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time for a complete request head, from its first byte.
    pub header_timeout: Duration,
    /// Time for a complete request body, from the end of the head.
    pub body_timeout: Duration,
    /// Time a connection may sit with no request in flight and no I/O.
    pub idle_timeout: Duration,
    /// Connections held at once (see the module doc for what happens at
    /// the limit).
    pub max_connections: usize,
}

impl Default for Limits {
    /// robustness.md: header 10 s, body 30 s, idle 60 s, 10,000 connections.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

const UNSET: u64 = u64::MAX;

/// What the watchdog knows about one connection. Times are milliseconds
/// since `start` (monotonic).
#[derive(Debug)]
struct ConnState {
    start: Instant,
    /// Requests whose handler is running.
    active: AtomicUsize,
    /// When the current request head started arriving; `UNSET` while idle.
    head_started: AtomicU64,
    /// Set after a response: the next byte read starts a new head.
    awaiting_head: AtomicBool,
    /// Last time bytes were read or written, or a request ended.
    last_io: AtomicU64,
    kill: Notify,
    killed: AtomicBool,
}

impl ConnState {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            active: AtomicUsize::new(0),
            // A fresh connection is expected to send a request head now.
            head_started: AtomicU64::new(0),
            awaiting_head: AtomicBool::new(false),
            last_io: AtomicU64::new(0),
            kill: Notify::new(),
            killed: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(UNSET - 1)
    }

    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill.notify_one();
    }

    fn on_read(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = self.now_ms();
        self.last_io.store(now, Ordering::Relaxed);
        if self.awaiting_head.swap(false, Ordering::AcqRel) {
            self.head_started.store(now, Ordering::Release);
        }
    }

    fn on_write(&self, n: usize) {
        if n > 0 {
            self.last_io.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(UNSET, Ordering::Release);
    }

    fn request_ended(&self) {
        self.last_io.store(self.now_ms(), Ordering::Relaxed);
        self.awaiting_head.store(true, Ordering::Release);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the connection overstayed a timeout now.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        if self.active.load(Ordering::Acquire) > 0 {
            // The body timeout is enforced by `TimedBody`; a response being
            // written is bounded by the idle timeout on I/O below only when
            // no handler runs.
            return None;
        }
        let now = self.now_ms();
        let head = self.head_started.load(Ordering::Acquire);
        if head != UNSET && now.saturating_sub(head) > ms(limits.header_timeout) {
            return Some("request head not complete within the header timeout");
        }
        let last = self.last_io.load(Ordering::Relaxed);
        (head == UNSET && now.saturating_sub(last) > ms(limits.idle_timeout))
            .then_some("idle keep-alive connection past the idle timeout")
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(UNSET - 1)
}

/// Ends a request's `active` count even when its future is dropped.
struct ActiveGuard(Arc<ConnState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A stream that reports its reads and writes to the watchdog.
struct Tracked {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            self.state.on_read(buf.filled().len() - before);
        }
        res
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.state.on_write(n);
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            self.state.on_write(n);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why a request body read failed: it did not arrive within the body
/// timeout.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body not received within the body timeout")]
pub struct BodyTimeout;

/// A request body that fails once the body timeout has passed (and then
/// closes its connection: the rest of the body will never be read).
pub struct TimedBody {
    inner: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    state: Arc<ConnState>,
}

impl std::fmt::Debug for TimedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedBody").finish_non_exhaustive()
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.state.kill();
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Live connections by accept order, for eviction at the limit.
#[derive(Debug, Default)]
struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<ConnState>>>,
}

impl Registry {
    /// Registers a connection, evicting the oldest one with no request in
    /// flight when at `max`. `None` when every connection is busy.
    fn admit(&self, id: u64, state: Arc<ConnState>, max: usize) -> Option<()> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() >= max.max(1) {
            let victim = conns
                .iter()
                .find(|(_, c)| c.active.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id)?;
            if let Some(c) = conns.remove(&victim) {
                c.kill();
            }
        }
        conns.insert(id, state);
        Some(())
    }

    fn remove(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

/// Serves `handler` on `listener` with `limits` until `stopped` turns
/// true, then lets connections finish (graceful shutdown). `name` appears
/// in log lines.
pub async fn serve<H, Fut, B>(
    listener: TcpListener,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
    name: &'static str,
    handler: H,
) where
    H: Fn(http::Request<TimedBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let registry = Arc::new(Registry::default());
    let tick = (limits.header_timeout.min(limits.idle_timeout) / 5)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut next_id: u64 = 0;
    loop {
        let (mut stream, _) = tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("{name}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A response's head and body go out as separate writes; without
        // this, Nagle plus the client's delayed ACK stalls each one ~40 ms.
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let state = Arc::new(ConnState::new());
        if registry
            .admit(id, state.clone(), limits.max_connections)
            .is_none()
        {
            tracing::warn!(
                "{name}: {} connections, all busy: shedding a new one",
                limits.max_connections
            );
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n",
                    ),
                )
                .await;
            });
            continue;
        }
        let svc_state = state.clone();
        let handler = handler.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            svc_state.request_started();
            let guard = ActiveGuard(svc_state.clone());
            let req = req.map(|inner| TimedBody {
                inner,
                sleep: Box::pin(tokio::time::sleep(limits.body_timeout)),
                state: svc_state.clone(),
            });
            let fut = handler(req);
            async move {
                let resp = fut.await;
                drop(guard);
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let io = TokioIo::new(Tracked {
            inner: stream,
            state: state.clone(),
        });
        let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .into_owned();
        let conn = graceful.watch(conn);
        let registry = registry.clone();
        tokio::spawn(async move {
            let watchdog = async {
                loop {
                    tokio::time::sleep(tick).await;
                    if let Some(why) = state.expired(&limits) {
                        return why;
                    }
                }
            };
            tokio::select! {
                res = conn => {
                    if let Err(e) = res {
                        tracing::debug!("{name} connection: {e}");
                    }
                }
                why = watchdog => tracing::debug!("{name}: closing a connection: {why}"),
                () = state.kill.notified() => {
                    tracing::debug!("{name}: closing a connection (evicted or body timeout)");
                }
            }
            registry.remove(id);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_timeout: Duration::from_millis(100),
            body_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
            max_connections: 2,
        }
    }

    #[test]
    fn fresh_connection_is_held_to_the_header_timeout() {
        let s = ConnState::new();
        assert!(s.expired(&limits()).is_none());
        std::thread::sleep(Duration::from_millis(150));
        assert!(s.expired(&limits()).unwrap().contains("header"));
    }

    #[test]
    fn idle_after_a_response_uses_the_idle_timeout() {
        let s = ConnState::new();
        s.request_started();
        std::thread::sleep(Duration::from_millis(150));
        assert!(s.expired(&limits()).is_none(), "busy is never expired");
        s.request_ended();
        std::thread::sleep(Duration::from_millis(150));
        assert!(s.expired(&limits()).is_none(), "idle 150 ms < 300 ms");
        s.on_read(5);
        std::thread::sleep(Duration::from_millis(150));
        assert!(s.expired(&limits()).unwrap().contains("header"));
    }

    #[test]
    fn at_the_limit_the_oldest_idle_connection_is_evicted() {
        let r = Registry::default();
        let busy = Arc::new(ConnState::new());
        busy.request_started();
        let idle = Arc::new(ConnState::new());
        assert!(r.admit(1, busy.clone(), 2).is_some());
        assert!(r.admit(2, idle.clone(), 2).is_some());
        assert!(r.admit(3, Arc::new(ConnState::new()), 2).is_some());
        assert!(idle.killed.load(Ordering::Acquire));
        assert!(!busy.killed.load(Ordering::Acquire));
        // Now 1 (busy) and 3 (idle): 3 goes next; with both busy, shed.
        let c4 = Arc::new(ConnState::new());
        c4.request_started();
        assert!(r.admit(4, c4, 2).is_some());
        assert!(r.admit(5, Arc::new(ConnState::new()), 2).is_none());
    }
}
