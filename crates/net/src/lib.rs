//! The HTTP listener machinery every ESB listener shares (gateway, S3,
//! DynamoDB): the accept loop, optional TLS, HTTP/1.1 and HTTP/2 through
//! hyper, and the edge limits of robustness H1/H2/H8/H10/H11/H13 (defaults
//! from `shared/reference/robustness.md`):
//!
//! - **header timeout** (10 s): a connection must deliver a complete request
//!   head within this time of its first byte (of its accept for a new
//!   connection), or it is closed; an HTTP/2 connection must open its first
//!   stream within it;
//! - **body timeout** (30 s): a request body must arrive completely within
//!   this time of the head; otherwise the body read fails and the connection
//!   is closed;
//! - **idle timeout** (60 s): a keep-alive connection with no request in
//!   flight is closed (HTTP/1.1: no bytes moving; HTTP/2: no stream since
//!   the last one ended, pings do not count);
//! - **write timeout** (30 s): a connection whose writes have been blocked
//!   this long (a client that stopped reading) is closed, busy or not;
//! - **TLS handshake timeout** (10 s);
//! - **connection limit** (10,000): at the limit a new connection evicts the
//!   oldest connection that has no request in flight (slowloris and idle
//!   keep-alive connections), so half-sent requests can never lock other
//!   clients out; only when every connection is busy is the newcomer shed
//!   with `503` and closed;
//! - **head size** ([`HttpLimits`]): hyper's read buffer (HTTP/1.1) and
//!   `SETTINGS_MAX_HEADER_LIST_SIZE` (HTTP/2) cap what a head may hold
//!   before the handler runs (hyper answers 431 past it); the handler
//!   applies the exact limits (see the gateway's `edge` module);
//! - **early answers**: a request body the handler did not read is kept
//!   until the response has gone out. HTTP/2 then reads a small rest to
//!   its end (so curl, which fails uploads whose stream is reset, sees a
//!   clean close) or resets a large one with `NO_ERROR` (RFC 9113 §8.1); an
//!   HTTP/1.1 connection with a large unread body gets `Connection: close`
//!   and a bounded lingering close (its input is read and dropped for a
//!   moment after the answer), so a client that sends its whole body
//!   before reading still sees the answer instead of a reset.
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a
//! keep-alive connection waits for its next request, so it cannot tell a
//! slow head (10 s) from an idle connection (60 s). Instead a small watchdog
//! per connection reads timestamps the connection's I/O wrapper and the
//! service record.
//!
//! Hand-written because no maintained crate offers per-phase timeouts and
//! eviction for hyper 1 servers (tower's timeouts bound a whole request,
//! not a phase of a connection).
//!
//! HTTP/1.1 heads are also seen raw (up to [`CAPTURE_LIMIT`] bytes per
//! head) so [`HeadFacts`] can count `Content-Length` and
//! `Transfer-Encoding` lines: hyper drops a second identical
//! `Content-Length` and any `Content-Length` next to `Transfer-Encoding`
//! before the handler could see them (robustness H7/H8).
//!
//! Must not: know about S3, DynamoDB or API Gateway (the caller's handler
//! does), or buffer bodies.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
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
    /// Time a connection may sit with no request in flight.
    pub idle_timeout: Duration,
    /// Time a write may stay blocked (the client does not read).
    pub write_timeout: Duration,
    /// Time for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Connections held at once (see the module doc for what happens at
    /// the limit).
    pub max_connections: usize,
}

impl Default for Limits {
    /// robustness.md: header 10 s, body 30 s, idle 60 s, 10,000
    /// connections; write 30 s and handshake 10 s.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

/// Protocol limits handed to hyper. `None` keeps hyper's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HttpLimits {
    /// Most header lines of an HTTP/1.1 request (hyper answers 431 past it).
    pub max_headers: Option<usize>,
    /// Hard cap on an HTTP/1.1 head (hyper's read buffer, at least 8,192)
    /// and on an HTTP/2 header list (`SETTINGS_MAX_HEADER_LIST_SIZE`);
    /// hyper/h2 answer 431 past it.
    pub max_head_bytes: Option<usize>,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: Option<u32>,
}

/// Everything [`serve_with`] needs besides the socket and the handler.
#[derive(Clone)]
pub struct Options {
    /// Shown in log lines.
    pub name: &'static str,
    /// Timeouts and the connection cap.
    pub limits: Limits,
    /// hyper's protocol limits.
    pub http: HttpLimits,
    /// TLS (HTTP/2 by ALPN when the acceptor offers `h2`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// How long shutdown waits for open connections (`None`: until done).
    pub drain: Option<Duration>,
    /// Keep HTTP/1.1 heads raw for [`HeadFacts`] (costs a copy of each
    /// head, at most [`CAPTURE_LIMIT`] bytes per connection).
    pub head_facts: bool,
}

/// The connection a request came in on (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// The listener's address.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// What the raw HTTP/1.1 head said about framing (a request extension;
/// absent for HTTP/2 and for heads that were already buffered when the
/// request before them ended, i.e. pipelined ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadFacts {
    /// `Content-Length` lines.
    pub content_length_lines: usize,
    /// `Transfer-Encoding` lines.
    pub transfer_encoding_lines: usize,
}

/// Most bytes of one HTTP/1.1 head kept for [`HeadFacts`] (a head past
/// this is over any sane head limit anyway).
pub const CAPTURE_LIMIT: usize = 16 * 1024;
/// Unread body beyond which an HTTP/1.1 answer closes the connection.
const UNREAD_CLOSE: u64 = 64 * 1024;
/// Lingering close: most time and bytes spent reading and dropping input
/// after an early answer.
const LINGER_TIME: Duration = Duration::from_secs(3);
const LINGER_BYTES: usize = 16 * 1024 * 1024;
/// Most time spent reading the rest of a small HTTP/2 request body after
/// an early answer.
const H2_DRAIN_TIME: Duration = Duration::from_secs(1);

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
    /// Last time bytes were read or written, or a request ended (HTTP/2:
    /// only the latter).
    last_io: AtomicU64,
    /// Since when writes are blocked; `UNSET` when they are not.
    write_blocked: AtomicU64,
    /// The connection speaks HTTP/2 (preface seen, or ALPN `h2`).
    h2: AtomicBool,
    /// The first read was looked at for the HTTP/2 preface.
    sniffed: AtomicBool,
    /// Raw bytes of the HTTP/1.1 head being received (never when
    /// `capture_off`).
    capture_off: AtomicBool,
    capturing: AtomicBool,
    capture: Mutex<Vec<u8>>,
    /// Read and drop input for a moment before closing (early answer).
    linger: AtomicBool,
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
            write_blocked: AtomicU64::new(UNSET),
            h2: AtomicBool::new(false),
            sniffed: AtomicBool::new(false),
            capture_off: AtomicBool::new(false),
            capturing: AtomicBool::new(true),
            capture: Mutex::new(Vec::new()),
            linger: AtomicBool::new(false),
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

    fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    fn on_read(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if !self.sniffed.swap(true, Ordering::Relaxed) && bytes.starts_with(b"PRI ") {
            self.h2.store(true, Ordering::Relaxed);
        }
        if self.is_h2() {
            // Pings and window updates are no sign of use; streams are.
            return;
        }
        let now = self.now_ms();
        self.last_io.store(now, Ordering::Relaxed);
        if self.awaiting_head.swap(false, Ordering::AcqRel) {
            self.head_started.store(now, Ordering::Release);
        }
        if self.capturing.load(Ordering::Acquire) && !self.capture_off.load(Ordering::Relaxed) {
            let mut capture = self.capture.lock().unwrap_or_else(|e| e.into_inner());
            let room = CAPTURE_LIMIT.saturating_sub(capture.len());
            capture.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }

    fn on_write(&self, n: usize) {
        if self.write_blocked.load(Ordering::Relaxed) != UNSET {
            self.write_blocked.store(UNSET, Ordering::Relaxed);
        }
        if n > 0 && !self.is_h2() {
            self.last_io.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn on_write_blocked(&self) {
        if self.write_blocked.load(Ordering::Relaxed) == UNSET {
            self.write_blocked.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// A request's handler starts; returns the raw facts of its head when
    /// `want_facts` (HTTP/1.1 only).
    fn request_started(&self, want_facts: bool) -> Option<HeadFacts> {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(UNSET, Ordering::Release);
        if self.is_h2() || self.capture_off.load(Ordering::Relaxed) {
            return None;
        }
        self.capturing.store(false, Ordering::Release);
        let mut capture = self.capture.lock().unwrap_or_else(|e| e.into_inner());
        let facts = (want_facts && !capture.is_empty()).then(|| head_facts(&capture));
        capture.clear();
        if capture.capacity() > 4096 {
            capture.shrink_to(1024);
        }
        facts
    }

    fn request_ended(&self) {
        self.last_io.store(self.now_ms(), Ordering::Relaxed);
        if !self.is_h2() {
            self.capturing.store(true, Ordering::Release);
            self.awaiting_head.store(true, Ordering::Release);
        }
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the connection overstayed a timeout now.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        let now = self.now_ms();
        let blocked = self.write_blocked.load(Ordering::Relaxed);
        if blocked != UNSET && now.saturating_sub(blocked) > ms(limits.write_timeout) {
            return Some("writes blocked past the write timeout (client not reading)");
        }
        if self.active.load(Ordering::Acquire) > 0 {
            // The body timeout is enforced by `TimedBody`.
            return None;
        }
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

/// Counts the `Content-Length` and `Transfer-Encoding` lines of the first
/// head in `raw` (request line, header lines, empty line).
fn head_facts(raw: &[u8]) -> HeadFacts {
    let mut facts = HeadFacts::default();
    for line in raw.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            facts.content_length_lines += 1;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            facts.transfer_encoding_lines += 1;
        }
    }
    facts
}

/// Ends a request's `active` count even when its future is dropped.
struct ActiveGuard(Arc<ConnState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A plain or TLS stream.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Io {
    fn into_tcp(self) -> TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.into_inner().0,
        }
    }
}

macro_rules! io_dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Io::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        io_dispatch!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        io_dispatch!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        io_dispatch!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        io_dispatch!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        io_dispatch!(self, s => s.poll_shutdown(cx))
    }
}

/// A stream (above TLS) that reports its reads and writes to the
/// watchdog, and lingers on drop after an early answer.
struct Tracked {
    inner: Option<Io>,
    state: Arc<ConnState>,
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "connection closed")
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.state.linger.load(Ordering::Acquire) {
            return;
        }
        let Some(io) = self.inner.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(linger(io.into_tcp()));
        }
    }
}

/// Sends FIN, then reads and drops what the client still sends (bounded),
/// so it can finish sending and read the answer before the socket closes.
async fn linger(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen = 0usize;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while seen <= LINGER_BYTES {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
        }
    })
    .await;
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let Some(io) = self.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let res = Pin::new(io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            self.state.on_read(&buf.filled()[before..]);
        }
        res
    }
}

impl Tracked {
    fn note<T>(&self, res: &Poll<std::io::Result<T>>, n: impl FnOnce(&T) -> usize) {
        match res {
            Poll::Ready(Ok(v)) => self.state.on_write(n(v)),
            Poll::Pending => self.state.on_write_blocked(),
            Poll::Ready(Err(_)) => {}
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let Some(io) = self.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let res = Pin::new(io).poll_write(cx, buf);
        self.note(&res, |n| *n);
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let Some(io) = self.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let res = Pin::new(io).poll_write_vectored(cx, bufs);
        self.note(&res, |n| *n);
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(Io::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(io) = self.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let res = Pin::new(io).poll_flush(cx);
        self.note(&res, |()| 0);
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(io) = self.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        Pin::new(io).poll_shutdown(cx)
    }
}

/// Why a request body read failed: it did not arrive within the body
/// timeout.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body not received within the body timeout")]
pub struct BodyTimeout;

/// Where an unread request body waits until its response has gone out.
type Keep = Arc<Mutex<Option<Incoming>>>;

/// A request body that fails once the body timeout has passed (and then
/// closes its connection: the rest of the body will never be read). When
/// dropped unread it is kept until the response is sent (see the module
/// doc).
pub struct TimedBody {
    inner: Option<Incoming>,
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    state: Arc<ConnState>,
    keep: Keep,
}

impl std::fmt::Debug for TimedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedBody").finish_non_exhaustive()
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take()
            && !inner.is_end_stream()
        {
            *self.keep.lock().unwrap_or_else(|e| e.into_inner()) = Some(inner);
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.state.kill();
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(Incoming::size_hint)
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

/// A response body that holds its request's unread body until it is
/// dropped (after the response went out). On HTTP/2 a small rest is then
/// read to its end (bounded), so the stream closes without a reset: curl
/// 7.x fails a request whose stream is reset while it still uploads, even
/// with `NO_ERROR` after a complete response (issue 13).
pub struct HeldBody<B> {
    inner: B,
    keep: Keep,
    h2: bool,
}

impl<B> Drop for HeldBody<B> {
    fn drop(&mut self) {
        if !self.h2 {
            return;
        }
        let Some(mut body) = self.keep.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        if body.is_end_stream() || body.size_hint().lower() > UNREAD_CLOSE {
            return; // dropped: reset with NO_ERROR
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let mut seen = 0u64;
            let _ = tokio::time::timeout(H2_DRAIN_TIME, async {
                while seen <= UNREAD_CLOSE {
                    let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
                    match frame {
                        Some(Ok(frame)) => {
                            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                        }
                        _ => break,
                    }
                }
            })
            .await;
        });
    }
}

impl<B: Body + Unpin> Body for HeldBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
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

/// Serves `handler` on `listener` with `limits` (plain HTTP, hyper's
/// protocol defaults) until `stopped` turns true, then lets connections
/// finish (graceful shutdown). `name` appears in log lines.
pub async fn serve<H, Fut, B>(
    listener: TcpListener,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
    name: &'static str,
    handler: H,
) where
    H: Fn(http::Request<TimedBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let options = Options {
        name,
        limits,
        http: HttpLimits::default(),
        tls: None,
        drain: None,
        head_facts: false,
    };
    serve_with(
        listener,
        options,
        async move {
            let _ = stopped.changed().await;
        },
        handler,
    )
    .await;
}

fn builder(http: &HttpLimits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    {
        let mut h1 = b.http1();
        h1.keep_alive(true);
        if let Some(n) = http.max_headers {
            h1.max_headers(n);
        }
        if let Some(n) = http.max_head_bytes {
            h1.max_buf_size(n.max(8192));
        }
    }
    {
        let mut h2 = b.http2();
        if let Some(n) = http.max_streams {
            h2.max_concurrent_streams(n);
        }
        if let Some(n) = http.max_head_bytes {
            h2.max_header_list_size(u32::try_from(n).unwrap_or(u32::MAX));
        }
    }
    b
}

/// Serves `handler` on `listener` with `options` until `shutdown`
/// resolves, then stops accepting and lets connections finish (bounded by
/// `options.drain`).
pub async fn serve_with<H, Fut, B>(
    listener: TcpListener,
    options: Options,
    shutdown: impl Future<Output = ()>,
    handler: H,
) where
    H: Fn(http::Request<TimedBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let Options {
        name,
        limits,
        http,
        tls,
        drain,
        head_facts,
    } = options;
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{name}: listener has no address: {e}");
            return;
        }
    };
    let builder = Arc::new(builder(&http));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let registry = Arc::new(Registry::default());
    let tick = (limits
        .header_timeout
        .min(limits.idle_timeout)
        .min(limits.write_timeout)
        / 5)
    .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut next_id: u64 = 0;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (mut stream, addr) = tokio::select! {
            () = &mut shutdown => break,
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
        if !head_facts {
            state.capture_off.store(true, Ordering::Relaxed);
        }
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
        let peer = Peer {
            addr,
            local,
            tls: tls.is_some(),
        };
        let conn = Connection {
            name,
            limits,
            tick,
            peer,
            state,
            builder: builder.clone(),
            handler: handler.clone(),
        };
        let watcher = graceful.watcher();
        let registry = registry.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            conn.run(stream, tls, watcher).await;
            registry.remove(id);
        });
    }
    drop(listener);
    match drain {
        Some(bound) => {
            if tokio::time::timeout(bound, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("{name}: drain timed out; closing remaining connections");
            }
        }
        None => graceful.shutdown().await,
    }
}

/// One accepted connection.
struct Connection<H> {
    name: &'static str,
    limits: Limits,
    tick: Duration,
    peer: Peer,
    state: Arc<ConnState>,
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    handler: H,
}

impl<H, Fut, B> Connection<H>
where
    H: Fn(http::Request<TimedBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    async fn run(
        self,
        stream: TcpStream,
        tls: Option<tokio_rustls::TlsAcceptor>,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let Self {
            name,
            limits,
            tick,
            peer,
            state,
            builder,
            handler,
        } = self;
        let io = match tls {
            None => Io::Plain(stream),
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream));
                tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(tls)) => {
                            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                                state.h2.store(true, Ordering::Relaxed);
                            }
                            Io::Tls(Box::new(tls))
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer.addr, "{name}: TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer.addr, "{name}: TLS handshake timed out");
                            return;
                        }
                    },
                    () = state.kill.notified() => return,
                }
            }
        };
        let svc_state = state.clone();
        let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            let state = svc_state.clone();
            let want_facts = req.headers().contains_key(CONTENT_LENGTH)
                || req.headers().contains_key(TRANSFER_ENCODING);
            if let Some(facts) = state.request_started(want_facts) {
                req.extensions_mut().insert(facts);
            }
            req.extensions_mut().insert(peer);
            let guard = ActiveGuard(state.clone());
            let keep: Keep = Arc::default();
            let req = req.map(|inner| TimedBody {
                inner: Some(inner),
                deadline: tokio::time::Instant::now() + limits.body_timeout,
                sleep: None,
                state: state.clone(),
                keep: keep.clone(),
            });
            let fut = handler(req);
            async move {
                let mut resp = fut.await;
                drop(guard);
                if !state.is_h2() && unread_is_large(&keep) {
                    // hyper would not reuse the connection anyway; say so,
                    // and let the client finish sending and read this.
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                    state.linger.store(true, Ordering::Release);
                }
                let h2 = state.is_h2();
                Ok::<_, std::convert::Infallible>(resp.map(|inner| HeldBody { inner, keep, h2 }))
            }
        });
        let io = TokioIo::new(Tracked {
            inner: Some(io),
            state: state.clone(),
        });
        let conn = builder.serve_connection(io, svc);
        let conn = watcher.watch(conn.into_owned());
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
                    tracing::debug!(peer = %peer.addr, "{name} connection: {e}");
                }
            }
            why = watchdog => tracing::debug!(peer = %peer.addr, "{name}: closing a connection: {why}"),
            () = state.kill.notified() => {
                tracing::debug!(peer = %peer.addr, "{name}: closing a connection (evicted or body timeout)");
            }
        }
    }
}

/// Whether the body a handler left unread is too large to drain.
fn unread_is_large(keep: &Keep) -> bool {
    let kept = keep.lock().unwrap_or_else(|e| e.into_inner());
    kept.as_ref().is_some_and(|body| {
        !body.is_end_stream() && body.size_hint().upper().is_none_or(|n| n > UNREAD_CLOSE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_timeout: Duration::from_millis(100),
            body_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
            write_timeout: Duration::from_millis(100),
            handshake_timeout: Duration::from_millis(100),
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
        s.request_started(false);
        std::thread::sleep(Duration::from_millis(150));
        assert!(s.expired(&limits()).is_none(), "busy is never expired");
        s.request_ended();
        std::thread::sleep(Duration::from_millis(150));
        assert!(s.expired(&limits()).is_none(), "idle 150 ms < 300 ms");
        s.on_read(b"GET");
        std::thread::sleep(Duration::from_millis(150));
        assert!(s.expired(&limits()).unwrap().contains("header"));
    }

    #[test]
    fn http2_pings_do_not_keep_an_idle_connection() {
        let s = ConnState::new();
        s.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        s.request_started(false);
        s.request_ended();
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(100));
            s.on_read(b"ping");
            s.on_write(17);
        }
        assert!(s.expired(&limits()).unwrap().contains("idle"));
    }

    #[test]
    fn blocked_writes_expire_even_while_busy() {
        let s = ConnState::new();
        s.request_started(false);
        s.on_write_blocked();
        std::thread::sleep(Duration::from_millis(150));
        assert!(s.expired(&limits()).unwrap().contains("write"));
        s.on_write(10);
        assert!(s.expired(&limits()).is_none());
    }

    #[test]
    fn head_facts_count_framing_lines() {
        let f = head_facts(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\ncontent-length : 3\r\nTransfer-Encoding: chunked\r\n\r\nContent-Length: 9\r\n",
        );
        assert_eq!(f.content_length_lines, 2);
        assert_eq!(f.transfer_encoding_lines, 1);
        let s = ConnState::new();
        s.on_read(b"GET / HTTP/1.1\r\nContent-Length: 1\r\n\r\n");
        assert_eq!(
            s.request_started(true).unwrap().content_length_lines,
            1,
            "the head is captured"
        );
        s.request_ended();
        s.on_read(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(s.request_started(true).unwrap().content_length_lines, 0);
    }

    #[test]
    fn at_the_limit_the_oldest_idle_connection_is_evicted() {
        let r = Registry::default();
        let busy = Arc::new(ConnState::new());
        busy.request_started(false);
        let idle = Arc::new(ConnState::new());
        assert!(r.admit(1, busy.clone(), 2).is_some());
        assert!(r.admit(2, idle.clone(), 2).is_some());
        assert!(r.admit(3, Arc::new(ConnState::new()), 2).is_some());
        assert!(idle.killed.load(Ordering::Acquire));
        assert!(!busy.killed.load(Ordering::Acquire));
        // Now 1 (busy) and 3 (idle): 3 goes next; with both busy, shed.
        let c4 = Arc::new(ConnState::new());
        c4.request_started(false);
        assert!(r.admit(4, c4, 2).is_some());
        assert!(r.admit(5, Arc::new(ConnState::new()), 2).is_none());
    }
}
