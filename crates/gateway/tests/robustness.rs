//! Robustness contract, HTTP edge (`shared/reference/robustness.md`
//! H1–H14): each test is named by its case and speaks to a real listener
//! over raw TCP, TLS or HTTP/2 sockets, with short configured timeouts.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use esb_gateway::{
    ApiConfig, ApiKind, GatewayAuth, GatewayConfig, GatewaySettings, GatewayState, ListenerLimits,
    PayloadVersion, RouteAuth, RouteConfig, RouteTarget, TlsConfig, serve,
};
use esb_pool::{FunctionLimits, Pool, PoolConfig};
use esb_runtimes_core::{FunctionSpec, Invocation, InvocationOutcome};
use esb_test_support::{FakeBackend, spec};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const BIG: usize = 4 * 1024 * 1024;

fn mirror(inv: &Invocation) -> InvocationOutcome {
    let event = String::from_utf8(inv.payload.to_vec()).unwrap();
    let out =
        json!({"statusCode": 200, "headers": {"content-type": "application/json"}, "body": event});
    InvocationOutcome::Success(Bytes::from(out.to_string()))
}

fn route(method: &str, path: &str, function: &str) -> RouteConfig {
    RouteConfig {
        api_id: "RestApi".into(),
        method: method.into(),
        path: path.into(),
        target: RouteTarget::Function(function.into()),
        payload_version: PayloadVersion::V1,
        auth: RouteAuth::None,
        api_key_required: false,
        scopes: Vec::new(),
    }
}

fn short_limits() -> ListenerLimits {
    ListenerLimits {
        header_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(800),
        write_timeout: Duration::from_millis(800),
        handshake_timeout: Duration::from_millis(400),
        max_connections: 64,
    }
}

struct Gw {
    addr: SocketAddr,
    tls: Option<TlsConfig>,
    seen: Arc<Mutex<Vec<String>>>,
    _stop: oneshot::Sender<()>,
}

impl Gw {
    async fn start(tls: bool) -> Self {
        Self::start_with(tls, short_limits()).await
    }

    async fn start_with(tls: bool, listener: ListenerLimits) -> Self {
        Self::start_full(tls, listener, 64 * 1024).await
    }

    async fn start_full(tls: bool, listener: ListenerLimits, max_body_bytes: usize) -> Self {
        esb_gateway::tls::install_crypto_provider();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_in = seen.clone();
        let backend = Arc::new(FakeBackend::new(
            move |spec: &FunctionSpec, inv: &Invocation| {
                seen_in.lock().unwrap().push(spec.name.clone());
                match spec.name.as_str() {
                    "s101" => InvocationOutcome::Success(Bytes::from_static(
                        br#"{"statusCode":101,"headers":{"upgrade":"websocket","connection":"upgrade"}}"#,
                    )),
                    "framing" => InvocationOutcome::Success(Bytes::from_static(
                        br#"{"statusCode":200,"headers":{"content-length":"999","connection":"close","transfer-encoding":"chunked"},"body":"hi"}"#,
                    )),
                    "big" => {
                        let out = json!({"statusCode": 200, "body": "x".repeat(BIG)});
                        InvocationOutcome::Success(Bytes::from(out.to_string()))
                    }
                    _ => mirror(inv),
                }
            },
        ));
        let pool = Pool::new(backend, PoolConfig::default());
        for name in ["mirror", "s101", "framing", "big"] {
            pool.register(spec(name), FunctionLimits::default());
        }
        let config = GatewayConfig {
            apis: vec![ApiConfig::new("RestApi", ApiKind::Rest)],
            routes: vec![
                route("ANY", "/r/{proxy+}", "mirror"),
                route("GET", "/recho/{p}", "mirror"),
                route("GET", "/s101", "s101"),
                route("GET", "/framing", "framing"),
                route("GET", "/big", "big"),
            ],
            settings: GatewaySettings {
                max_body_bytes,
                listener,
                ..Default::default()
            },
            auth: GatewayAuth::Open,
            function_aliases: Default::default(),
        };
        let state = GatewayState::with_invoker(config, Arc::new(pool)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = tls.then(|| {
            let dir = std::env::temp_dir().join(format!("esb-gw-rob-{}", uuid::Uuid::new_v4()));
            TlsConfig::self_signed(&dir).unwrap()
        });
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, tls.clone(), state, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            tls,
            seen,
            _stop: stop,
        }
    }

    fn invoked(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// A raw connection (TLS when the gateway is), offering `alpn`.
    async fn connect_alpn(&self, alpn: &[&[u8]]) -> Box<dyn Stream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let Some(tls) = &self.tls else {
            return Box::new(tcp);
        };
        let mut roots = rustls::RootCertStore::empty();
        let pem = tls.certificate_pem().as_bytes().to_vec();
        for cert in rustls_pemfile_certs(&pem) {
            roots.add(cert).unwrap();
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        Box::new(connector.connect(name, tcp).await.unwrap())
    }

    async fn connect(&self) -> Box<dyn Stream> {
        self.connect_alpn(&[b"http/1.1"]).await
    }

    /// Sends `request` on a fresh connection; returns what came back
    /// and whether the server closed the connection (within 5 s).
    async fn exchange(&self, request: &[u8]) -> (String, bool) {
        let mut s = self.connect().await;
        s.write_all(request).await.unwrap();
        read_until_closed(&mut s, Duration::from_secs(5)).await
    }

    /// An HTTP/2 connection (prior knowledge, or ALPN over TLS).
    async fn h2<B>(&self) -> hyper::client::conn::http2::SendRequest<B>
    where
        B: hyper::body::Body + Unpin + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let io = self.connect_alpn(&[b"h2"]).await;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}

/// Reads until EOF (or a reset) or `limit`; returns the text and whether
/// the connection ended.
async fn read_until_closed(s: &mut (impl AsyncRead + Unpin), limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn responses(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count()
}

const FOLLOWER: &str = "GET /r/follower HTTP/1.1\r\nHost: a\r\n\r\n";

/// A refused request answers 400, closes, and its pipelined follower
/// never runs.
async fn refused_with_follower(gw: &Gw, head: &str) {
    let req = format!("{head}{FOLLOWER}");
    let (text, closed) = gw.exchange(req.as_bytes()).await;
    assert_eq!(status_of(&text), 400, "{head:?} -> {text}");
    assert!(closed, "connection left open after {head:?}");
    assert_eq!(responses(&text), 1, "a pipelined follower ran: {text}");
    assert!(
        gw.invoked().is_empty(),
        "a function ran: {:?}",
        gw.invoked()
    );
}

// ---------------------------------------------------------------- H8

#[tokio::test]
async fn h8_te_gzip_chunked_rejected() {
    for tls in [false, true] {
        let gw = Gw::start(tls).await;
        refused_with_follower(
            &gw,
            "POST /r/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .await;
    }
}

#[tokio::test]
async fn h8_te_chunked_chunked_rejected() {
    let gw = Gw::start(false).await;
    refused_with_follower(
        &gw,
        "POST /r/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    refused_with_follower(
        &gw,
        "POST /r/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn h8_te_other_than_chunked_rejected() {
    let gw = Gw::start(false).await;
    refused_with_follower(
        &gw,
        "POST /r/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn h8_cl_te_rejected() {
    for tls in [false, true] {
        let gw = Gw::start(tls).await;
        // Both orders: hyper drops Content-Length either way.
        refused_with_follower(
            &gw,
            "POST /r/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .await;
        refused_with_follower(
            &gw,
            "POST /r/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .await;
    }
}

#[tokio::test]
async fn h8_bad_chunk_rejected() {
    let gw = Gw::start(false).await;
    let (text, closed) = gw
        .exchange(b"POST /r/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
        .await;
    assert_eq!(status_of(&text), 400, "{text}");
    assert!(closed);
    assert!(gw.invoked().is_empty());
}

#[tokio::test]
async fn h8_folded_header_rejected() {
    let gw = Gw::start(false).await;
    let req = format!("GET /r/x HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n{FOLLOWER}");
    let (text, closed) = gw.exchange(req.as_bytes()).await;
    assert_eq!(status_of(&text), 400, "{text}");
    assert!(closed);
    assert_eq!(responses(&text), 1);
    assert!(gw.invoked().is_empty());
}

#[tokio::test]
async fn h8_hop_by_hop_headers_never_reach_the_function() {
    for tls in [false, true] {
        let gw = Gw::start(tls).await;
        let req = "GET /r/x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n\
                   Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x-t\r\nUpgrade: websocket\r\n\
                   Proxy-Authorization: Basic eA==\r\nProxy-Foo: 1\r\nX-Kept: 1\r\nConnection: close\r\n\r\n";
        let (text, _) = gw.exchange(req.as_bytes()).await;
        assert_eq!(status_of(&text), 200, "{text}");
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let event: Value = serde_json::from_str(body).unwrap();
        let headers = event["headers"].as_object().unwrap();
        let names: Vec<String> = headers.keys().map(|k| k.to_ascii_lowercase()).collect();
        assert!(names.contains(&"x-kept".to_string()), "{names:?}");
        for hop in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
            "proxy-authorization",
            "proxy-foo",
            "transfer-encoding",
        ] {
            assert!(
                !names.contains(&hop.to_string()),
                "{hop} reached the function: {names:?}"
            );
            assert!(event["multiValueHeaders"].get(hop).is_none());
        }
    }
}

// ---------------------------------------------------------------- H10

#[tokio::test]
async fn h10_gateway_silent_connection_closed() {
    let gw = Gw::start(false).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "a silent connection is still open");
    assert!(text.is_empty());
}

#[tokio::test]
async fn h10_gateway_silent_tls_connection_closed_at_handshake_timeout() {
    let gw = Gw::start(true).await;
    // Nothing, then half a ClientHello: both are stalled handshakes.
    for first in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(first).await.unwrap();
        let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(closed, "a stalled TLS handshake is still open");
    }
}

#[tokio::test]
async fn h10_gateway_slowloris_closed_at_header_timeout() {
    for tls in [false, true] {
        let gw = Gw::start(tls).await;
        let mut s = gw.connect().await;
        s.write_all(b"GET /r/x HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        // One header byte every 100 ms: the head never completes in time.
        let mut closed = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"X").await.is_err() {
                closed = true;
                break;
            }
            let mut buf = [0u8; 64];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
            {
                closed = true;
                break;
            }
        }
        assert!(
            closed,
            "slowloris connection still open after 5 s (tls {tls})"
        );
        assert!(gw.invoked().is_empty());
    }
}

#[tokio::test]
async fn h10_gateway_slow_body_closed_at_body_timeout() {
    for tls in [false, true] {
        let gw = Gw::start(tls).await;
        let mut s = gw.connect().await;
        s.write_all(b"POST /r/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(closed, "a stalled body is still open (tls {tls})");
        assert!(gw.invoked().is_empty());
    }
}

#[tokio::test]
async fn h10_gateway_idle_keepalive_closed_at_idle_timeout() {
    for tls in [false, true] {
        let gw = Gw::start(tls).await;
        let mut s = gw.connect().await;
        s.write_all(b"GET /r/x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert_eq!(status_of(&text), 200, "{text}");
        assert!(closed, "idle keep-alive connection still open (tls {tls})");
    }
}

#[tokio::test]
async fn h10_gateway_http2_idle_connection_closed() {
    let gw = Gw::start(false).await;
    let mut h2 = gw.h2().await;
    let r = h2
        .send_request(
            http::Request::get(gw.url("/r/x"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !h2.is_closed() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(h2.is_closed(), "idle HTTP/2 connection still open");
}

#[tokio::test]
async fn h10_gateway_slow_reader_closed_at_write_timeout() {
    let gw = Gw::start(false).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(gw.addr).await.unwrap();
    let mut req = String::new();
    for _ in 0..8 {
        req.push_str("GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
    }
    s.write_all(req.as_bytes()).await.unwrap();
    // Do not read while the server writes 8 x 4 MiB.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Good traffic is served meanwhile.
    let (text, _) = gw
        .exchange(b"GET /r/ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&text), 200);
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got += n,
            Err(_) => break false,
        }
    };
    assert!(ended, "the slow reader's connection was not closed");
    assert!(
        got < 8 * BIG,
        "all {got} bytes were written: no write timeout"
    );
}

#[tokio::test]
async fn h10_gateway_connection_limit_evicts_idle_not_good_traffic() {
    let limits = ListenerLimits {
        header_timeout: Duration::from_secs(30),
        max_connections: 8,
        ..short_limits()
    };
    let gw = Gw::start_with(false, limits).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /r/x HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    for _ in 0..5 {
        let (text, _) = gw
            .exchange(b"GET /r/ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await;
        assert_eq!(status_of(&text), 200, "locked out: {text:?}");
    }
}

// ---------------------------------------------------------------- H1

#[tokio::test]
async fn h1_header_too_large_431() {
    for tls in [false, true] {
        let gw = Gw::start(tls).await;
        let req = format!(
            "GET /r/x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n{FOLLOWER}",
            "a".repeat(11 * 1024)
        );
        let (text, closed) = gw.exchange(req.as_bytes()).await;
        assert_eq!(status_of(&text), 431, "{text}");
        assert!(closed);
        assert_eq!(responses(&text), 1);
        // Far past the limit hyper refuses before the gateway sees it.
        let req = format!(
            "GET /r/x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "a".repeat(100 * 1024)
        );
        let (text, closed) = gw.exchange(req.as_bytes()).await;
        assert_eq!(status_of(&text), 431, "{text}");
        assert!(closed);
        assert!(gw.invoked().is_empty());
    }
}

#[tokio::test]
async fn h1_uri_too_long_414() {
    let gw = Gw::start(false).await;
    let req = format!(
        "GET /r/{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "a".repeat(11 * 1024)
    );
    let (text, closed) = gw.exchange(req.as_bytes()).await;
    assert_eq!(status_of(&text), 414, "{text}");
    assert!(closed);
    assert!(gw.invoked().is_empty());
}

#[tokio::test]
async fn h1_too_many_headers_431() {
    let gw = Gw::start(false).await;
    let mut req = String::from("GET /r/x HTTP/1.1\r\nHost: a\r\n");
    for i in 0..150 {
        req.push_str(&format!("X-H{i}: 1\r\n"));
    }
    req.push_str("\r\n");
    let (text, closed) = gw.exchange(req.as_bytes()).await;
    assert_eq!(status_of(&text), 431, "{text}");
    assert!(closed);
}

#[tokio::test]
async fn h1_http2_too_many_or_too_large_headers_431() {
    for tls in [false, true] {
        let gw = Gw::start(tls).await;
        let mut h2 = gw.h2().await;
        let mut req = http::Request::get(gw.url("/r/x"));
        for i in 0..150 {
            req = req.header(format!("x-h{i}"), "1");
        }
        let r = h2
            .send_request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 431, "150 headers over HTTP/2 (tls {tls})");
        let big = "a".repeat(11 * 1024);
        let req = http::Request::get(gw.url("/r/x")).header("x-big", big.as_str());
        let r = h2
            .send_request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 431, "11 KiB header over HTTP/2");
        // Far past the limit: h2's SETTINGS_MAX_HEADER_LIST_SIZE answers.
        let mut h2 = gw.h2().await;
        let huge = "a".repeat(40 * 1024);
        let req = http::Request::get(gw.url("/r/x")).header("x-big", huge.as_str());
        let r = h2
            .send_request(req.body(Full::new(Bytes::new())).unwrap())
            .await;
        assert!(
            r.as_ref().map_or(true, |r| r.status() == 431),
            "40 KiB header list: {:?}",
            r.map(|r| r.status())
        );
        assert!(gw.invoked().is_empty());
    }
}

// ---------------------------------------------------------------- H2

#[tokio::test]
async fn h2_declared_body_over_limit_413_at_once() {
    for tls in [false, true] {
        let gw = Gw::start(tls).await;
        // Only the head is sent: the answer must not wait for the body.
        let (text, closed) = gw
            .exchange(b"POST /r/x HTTP/1.1\r\nHost: a\r\nContent-Length: 67108864\r\n\r\n")
            .await;
        assert_eq!(status_of(&text), 413, "{text}");
        assert!(closed, "connection left open after 413");
        assert!(gw.invoked().is_empty());
    }
}

#[tokio::test]
async fn h2_streamed_body_over_limit_413_and_client_sees_it() {
    let gw = Gw::start(false).await;
    let mut s = gw.connect().await;
    s.write_all(b"POST /r/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // 1 MiB in chunks, sent in full before reading (as boto3 does): the
    // lingering close lets it finish and still read the 413.
    let chunk = format!("10000\r\n{}\r\n", "z".repeat(0x10000));
    let mut send_failed = false;
    for _ in 0..16 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            send_failed = true;
            break;
        }
    }
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status_of(&text), 413, "send failed: {send_failed}; {text}");
    assert!(closed);
    assert!(gw.invoked().is_empty());
}

#[tokio::test]
async fn h2_http2_body_over_limit_413_other_streams_unaffected() {
    for tls in [false, true] {
        let gw = Gw::start(tls).await;
        let mut h2 = gw.h2().await;
        let r = h2
            .send_request(
                http::Request::post(gw.url("/r/x"))
                    .body(Full::new(Bytes::from(vec![b'a'; 200 * 1024])))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        let r = h2
            .send_request(
                http::Request::get(gw.url("/r/after"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the connection's next stream (tls {tls})");
    }
}

// ---------------------------------------------------------------- H3

#[tokio::test]
async fn h3_binary_body_whose_event_passes_6mib_413() {
    let gw = Gw::start_full(false, short_limits(), 10 * 1024 * 1024).await;
    let body = vec![0xffu8; 5 * 1024 * 1024]; // under the body limit; base64 is ~7 MB
    let mut s = gw.connect().await;
    let head = format!(
        "POST /r/x HTTP/1.1\r\nHost: a\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let (text, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert_eq!(status_of(&text), 413, "{}", &text[..text.len().min(300)]);
    assert!(gw.invoked().is_empty());
}

// ---------------------------------------------------------------- H4, H5, H6

#[tokio::test]
async fn h4_invalid_utf8_query_or_path_400() {
    let gw = Gw::start(false).await;
    for target in ["/r/x?a=%FF", "/r/x?a=%C3&b=%A9", "/r/%FF", "/r/%C3%28"] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let (text, _) = gw.exchange(req.as_bytes()).await;
        assert_eq!(status_of(&text), 400, "{target}: {text}");
    }
    assert!(gw.invoked().is_empty());
}

#[tokio::test]
async fn h5_encoded_dot_segments_never_reach_a_function() {
    let gw = Gw::start(false).await;
    for target in [
        "/recho/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/r/a/../b",
        "/r/a/%2e%2e/b",
        "/r/a/%2E/b",
        "/r/a/..%5c..%5cwin.ini",
        "/r/a%00b",
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let (text, _) = gw.exchange(req.as_bytes()).await;
        assert_eq!(status_of(&text), 400, "{target}: {text}");
    }
    assert!(gw.invoked().is_empty());
    // Decoded once: `%252e%252e` is the literal text `%2e%2e`.
    let (text, _) = gw
        .exchange(b"GET /recho/%252e%252e HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&text), 200, "{text}");
    let event: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(event["pathParameters"]["p"], "%2e%2e");
}

#[tokio::test]
async fn h6_repeated_query_keys() {
    let gw = Gw::start(false).await;
    let (text, _) = gw
        .exchange(b"GET /r/x?a=1&b=2&a=3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    let event: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(event["queryStringParameters"]["a"], "3");
    assert_eq!(
        event["multiValueQueryStringParameters"]["a"],
        json!(["1", "3"])
    );
}

// ---------------------------------------------------------------- H7

#[tokio::test]
async fn h7_duplicate_identity_headers_rejected() {
    let gw = Gw::start(false).await;
    for (path, dup) in [
        ("/r/x", "Host: b\r\n"),
        ("/r/x", "Authorization: a\r\nAuthorization: b\r\n"),
        ("/user/auth/ver1.0", "x-api-key: a\r\nx-api-key: b\r\n"),
        ("/2015-03-31/functions/mirror/invocations", "Host: b\r\n"),
    ] {
        refused_with_follower(
            &gw,
            &format!("POST {path} HTTP/1.1\r\nHost: a\r\n{dup}Content-Length: 2\r\n\r\n{{}}"),
        )
        .await;
    }
}

#[tokio::test]
async fn h7_duplicate_content_length_rejected() {
    let gw = Gw::start(false).await;
    for cl in [
        "Content-Length: 2\r\nContent-Length: 2\r\n",
        "Content-Length: 2, 2\r\n",
    ] {
        let req = format!("POST /r/x HTTP/1.1\r\nHost: a\r\n{cl}\r\n{{}}{FOLLOWER}");
        let (text, closed) = gw.exchange(req.as_bytes()).await;
        assert_eq!(status_of(&text), 400, "{cl:?}: {text}");
        assert!(closed);
        assert_eq!(responses(&text), 1);
    }
    assert!(gw.invoked().is_empty());
}

#[tokio::test]
async fn h7_duplicate_plain_headers_last_and_all() {
    let gw = Gw::start(false).await;
    let (text, _) = gw
        .exchange(b"GET /r/x HTTP/1.1\r\nHost: a\r\nX-D: 1\r\nX-D: 2\r\nConnection: close\r\n\r\n")
        .await;
    let event: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    let last = event["headers"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-d"))
        .map(|(_, v)| v.clone());
    assert_eq!(last, Some(json!("2")));
}

// ---------------------------------------------------------------- H9

#[tokio::test]
async fn h9_function_status_101_is_502() {
    for tls in [false, true] {
        let gw = Gw::start(tls).await;
        let (text, _) = gw
            .exchange(b"GET /s101 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await;
        assert_eq!(status_of(&text), 502, "{text}");
        // Only the status line matters: request ids are random hex and may hold "101".
        assert!(!text.contains("Switching Protocols"), "{text}");
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "one response, no interim 101: {text}"
        );
        let mut h2 = gw.h2().await;
        let r = h2
            .send_request(
                http::Request::get(gw.url("/s101"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
    }
}

#[tokio::test]
async fn h9_function_framing_headers_are_dropped() {
    let gw = Gw::start(false).await;
    let mut s = gw.connect().await;
    s.write_all(b"GET /framing HTTP/1.1\r\nHost: a\r\n\r\nGET /r/next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status_of(&text), 200, "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(!lower.contains("content-length: 999"), "{text}");
    assert!(!lower.contains("transfer-encoding"), "{text}");
    assert_eq!(responses(&text), 2, "the connection stayed usable: {text}");
}

// ---------------------------------------------------------------- H12, H13, H14

#[tokio::test]
async fn h12_http2_rapid_reset_then_service_continues() {
    let gw = Gw::start(false).await;
    let h2 = gw.h2().await;
    for _ in 0..300 {
        let mut sender = h2.clone();
        let req = http::Request::get(gw.url("/r/x"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        // Started and dropped at once: the client resets the stream.
        let fut = sender.send_request(req);
        drop(tokio::time::timeout(Duration::from_micros(1), fut).await);
    }
    let mut fresh = gw.h2().await;
    let r = fresh
        .send_request(
            http::Request::get(gw.url("/r/after"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn h13_plaintext_on_the_tls_port_closed() {
    let gw = Gw::start(true).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /r/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(!text.contains("HTTP/1.1 200"));
    assert!(gw.invoked().is_empty());
}

#[tokio::test]
async fn h14_connect_trace_star_and_absolute_form_have_no_route() {
    let gw = Gw::start(false).await;
    for req in [
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        "TRACE /r/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "GET http://example.com/r/x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    ] {
        let (text, _) = gw.exchange(req.as_bytes()).await;
        assert_eq!(status_of(&text), 403, "{req:?}: {text}");
        assert!(text.contains("Missing Authentication Token"), "{text}");
    }
    assert!(gw.invoked().is_empty());
    // HEAD answers without a body.
    let (text, _) = gw
        .exchange(b"HEAD /r/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(text.ends_with("\r\n\r\n"), "HEAD sent a body: {text:?}");
}

// ---------------------------------------------------------------- issue 13

/// A request body that never ends.
struct Endless;

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

/// curl's `Stream error in the HTTP/2 framing layer`: an answer to a
/// POST whose body the gateway does not read (no route) came with a reset
/// of the stream while curl was still uploading. Now the small rest is
/// read and the stream ends cleanly: the client can finish its upload
/// after the answer and no reset ever comes.
#[tokio::test]
async fn issue13_http2_unread_body_stream_ends_without_reset() {
    for tls in [false, true] {
        let gw = Gw::start(tls).await;
        let io = gw.connect_alpn(&[b"h2"]).await;
        let (client, conn) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(conn);
        for i in 0..50 {
            let mut client = client.clone().ready().await.unwrap();
            let req = http::Request::post(gw.url("/nope")).body(()).unwrap();
            let (resp, mut send) = client.send_request(req, false).unwrap();
            send.send_data(Bytes::from_static(b"{"), false).unwrap();
            let resp = resp
                .await
                .unwrap_or_else(|e| panic!("try {i} (tls {tls}): {e}"));
            assert_eq!(resp.status(), 403);
            let mut body = resp.into_body();
            let mut got = Vec::new();
            while let Some(chunk) = body.data().await {
                got.extend_from_slice(&chunk.unwrap_or_else(|e| panic!("try {i}: body: {e}")));
            }
            assert_eq!(got, br#"{"message":"Missing Authentication Token"}"#);
            send.send_data(Bytes::from_static(b"}"), true)
                .unwrap_or_else(|e| panic!("try {i} (tls {tls}): upload cut: {e}"));
            let reset = tokio::time::timeout(
                Duration::from_millis(50),
                std::future::poll_fn(|cx| send.poll_reset(cx)),
            )
            .await;
            assert!(
                reset.is_err(),
                "try {i} (tls {tls}): stream reset: {reset:?}"
            );
        }
    }
}

#[tokio::test]
async fn issue13_http2_early_answer_with_body_still_open_is_answered() {
    let gw = Gw::start(true).await;
    let mut h2 = gw.h2::<Endless>().await;
    for i in 0..20 {
        let r = h2
            .send_request(http::Request::post(gw.url("/nope")).body(Endless).unwrap())
            .await
            .unwrap_or_else(|e| panic!("try {i}: {e}"));
        assert_eq!(r.status(), 403);
    }
}

#[tokio::test]
async fn issue13_http2_post_to_unrouted_path_is_answered_not_reset() {
    for tls in [false, true] {
        let gw = Gw::start(tls).await;
        let mut h2 = gw.h2().await;
        for i in 0..50 {
            let r = h2
                .send_request(
                    http::Request::post(gw.url("/nope"))
                        .body(Full::new(Bytes::from_static(b"{}")))
                        .unwrap(),
                )
                .await
                .unwrap_or_else(|e| panic!("try {i} (tls {tls}): {e}"));
            assert_eq!(r.status(), 403);
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, r#"{"message":"Missing Authentication Token"}"#);
        }
    }
}
