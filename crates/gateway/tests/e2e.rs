//! End-to-end: real sockets (port 0), a real Pool, fake workers.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use esb_gateway::{
    ApiConfig, ApiKind, CorsConfig, GatewayAuth, GatewayConfig, GatewaySettings, GatewayState,
    PayloadVersion, RouteAuth, RouteConfig, RouteTarget, TlsConfig, handle, serve,
};
use esb_pool::{FunctionLimits, Pool, PoolConfig};
use esb_runtimes_core::{ErrorKind, FunctionSpec, Invocation, InvocationOutcome};
use esb_test_support::{FakeBackend, spec};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A function that answers with a proxy response whose body is the event
/// it received, and which reports its Lambda request id in a header.
fn mirror(_: &FunctionSpec, inv: &Invocation) -> InvocationOutcome {
    let event = String::from_utf8(inv.payload.to_vec()).unwrap();
    let out = json!({
        "statusCode": 200,
        "headers": {"content-type": "application/json", "x-lambda-request-id": inv.request_id},
        "body": event,
    });
    InvocationOutcome::Success(Bytes::from(out.to_string()))
}

fn route(api: &str, method: &str, path: &str, function: &str, v: PayloadVersion) -> RouteConfig {
    RouteConfig {
        api_id: api.into(),
        method: method.into(),
        path: path.into(),
        target: RouteTarget::Function(function.into()),
        payload_version: v,
        auth: RouteAuth::None,
        api_key_required: false,
        scopes: Vec::new(),
    }
}

fn config() -> GatewayConfig {
    let mut http = ApiConfig::new("HttpApi", ApiKind::Http);
    http.cors = Some(CorsConfig {
        allow_origins: vec!["https://app.example.com".into()],
        allow_methods: vec!["GET".into(), "POST".into()],
        allow_headers: vec!["content-type".into()],
        max_age: Some(300),
        ..Default::default()
    });
    let mut rest = ApiConfig::new("RestApi", ApiKind::Rest);
    rest.binary_media_types = vec!["image/png".into()];
    GatewayConfig {
        apis: vec![rest, http],
        routes: vec![
            route("RestApi", "GET", "/pets/{id}", "mirror", PayloadVersion::V1),
            route("RestApi", "POST", "/fail", "fail", PayloadVersion::V1),
            route("RestApi", "GET", "/slow", "slow", PayloadVersion::V1),
            route(
                "RestApi",
                "GET",
                "/throttled",
                "throttled",
                PayloadVersion::V1,
            ),
            route("RestApi", "GET", "/bad", "bad", PayloadVersion::V1),
            route("RestApi", "POST", "/upload", "mirror", PayloadVersion::V1),
            route("RestApi", "GET", "/png", "png", PayloadVersion::V1),
            route(
                "HttpApi",
                "ANY",
                "/h/{proxy+}",
                "mirror",
                PayloadVersion::V2,
            ),
            route("HttpApi", "GET", "/hfail", "fail", PayloadVersion::V2),
            route("HttpApi", "GET", "/hslow", "slow", PayloadVersion::V2),
            route("HttpApi", "GET", "/hello", "hello", PayloadVersion::V2),
        ],
        settings: GatewaySettings {
            max_body_bytes: 64 * 1024,
            ..Default::default()
        },
        auth: GatewayAuth::Open,
        function_aliases: Default::default(),
    }
}

struct Harness {
    addr: SocketAddr,
    client: reqwest::Client,
    base: String,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), esb_gateway::GatewayError>>,
    state: GatewayState,
    backend: Arc<FakeBackend>,
    seen: Arc<Mutex<Vec<String>>>,
    _events_dir: tempfile::TempDir,
}

impl Harness {
    async fn start(tls: bool) -> Self {
        Self::start_with(tls, config(), Duration::ZERO).await
    }

    /// Every fake invocation takes `delay`; `slow` has a 50 ms timeout.
    async fn start_with(tls: bool, config: GatewayConfig, delay: Duration) -> Self {
        esb_gateway::tls::install_crypto_provider();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_in = Arc::clone(&seen);
        let backend = Arc::new(
            FakeBackend::new(move |spec, inv| {
                seen_in.lock().unwrap().push(inv.request_id.clone());
                match spec.name.as_str() {
                    "fail" => InvocationOutcome::Error {
                        kind: ErrorKind::Function,
                        payload: Bytes::from_static(
                            br#"{"errorMessage":"boom","errorType":"Exception"}"#,
                        ),
                    },
                    "bad" => InvocationOutcome::Success(Bytes::from_static(b"not json")),
                    "hello" => {
                        InvocationOutcome::Success(Bytes::from_static(br#""Hello from Lambda!""#))
                    }
                    "echo" => InvocationOutcome::Success(inv.payload.clone()),
                    "png" => InvocationOutcome::Success(Bytes::from_static(
                        br#"{"statusCode":200,"headers":{"Content-Type":"image/png"},"body":"iVBORw0KGgo=","isBase64Encoded":true}"#,
                    )),
                    _ => mirror(spec, inv),
                }
            })
            .with_delay(delay),
        );
        let pool = Pool::new(
            backend.clone(),
            PoolConfig {
                queue_timeout: Duration::from_millis(200),
                ..Default::default()
            },
        );
        for name in ["mirror", "fail", "bad", "hello", "echo", "png"] {
            pool.register(spec(name), FunctionLimits::default());
        }
        let mut slow = spec("slow");
        slow.timeout = Duration::from_millis(50);
        pool.register(slow, FunctionLimits::default());
        pool.register(
            spec("throttled"),
            FunctionLimits {
                reserved_concurrency: Some(0),
                ..Default::default()
            },
        );
        let events_dir = tempfile::tempdir().unwrap();
        let queue = esb_events::EventQueue::open(
            events_dir.path().join("queue"),
            esb_events::QueueConfig::default(),
        )
        .unwrap();
        let invoker: Arc<dyn esb_gateway::Invoker> = Arc::new(pool);
        queue.start_dispatcher(Arc::new(esb_gateway::QueueInvoker(invoker.clone())));
        let state = GatewayState::with_event_queue(config, invoker, queue).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = reqwest::Client::builder();
        let (tls_config, scheme) = if tls {
            let dir = std::env::temp_dir().join(format!("esb-gw-e2e-{}", uuid::Uuid::new_v4()));
            let t = TlsConfig::self_signed(&dir).unwrap();
            client = client.add_root_certificate(
                reqwest::Certificate::from_pem(t.certificate_pem().as_bytes()).unwrap(),
            );
            (Some(t), "https")
        } else {
            (None, "http")
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, tls_config, state.clone(), async move {
            let _ = stopped.await;
        }));
        let host = if tls { "localhost" } else { "127.0.0.1" };
        Self {
            addr,
            client: client.build().unwrap(),
            base: format!("{scheme}://{host}:{}", addr.port()),
            stop: Some(stop),
            server,
            state,
            backend,
            seen,
            _events_dir: events_dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }
}

/// Polls `check` every 5 ms for up to 5 s.
async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    check()
}

async fn json_of(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn rest_event_reaches_function_with_matching_request_ids() {
    let h = Harness::start(false).await;
    let r = h
        .client
        .get(h.url("/Prod/pets/42?tag=a&tag=b"))
        .header("x-multi", "1")
        .header("x-multi", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let header_id = r.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_string();
    let lambda_id = r.headers()["x-lambda-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let e = json_of(r).await;
    assert_eq!(e["resource"], "/pets/{id}");
    assert_eq!(e["path"], "/pets/42");
    assert_eq!(e["pathParameters"], json!({"id": "42"}));
    assert_eq!(e["queryStringParameters"], json!({"tag": "b"}));
    assert_eq!(
        e["multiValueQueryStringParameters"],
        json!({"tag": ["a", "b"]})
    );
    assert_eq!(e["multiValueHeaders"]["X-Multi"], json!(["1", "2"]));
    assert_eq!(e["headers"]["X-Forwarded-Port"], h.addr.port().to_string());
    assert_eq!(e["headers"]["X-Forwarded-Proto"], "http");
    assert_eq!(e["requestContext"]["stage"], "Prod");
    assert_eq!(e["requestContext"]["path"], "/Prod/pets/42");
    assert_eq!(e["requestContext"]["identity"]["sourceIp"], "127.0.0.1");
    assert_eq!(e["requestContext"]["domainName"], "127.0.0.1");
    assert_eq!(e["requestContext"]["requestId"], header_id.as_str());
    assert_eq!(header_id, lambda_id);
    assert!(uuid::Uuid::parse_str(&header_id).is_ok());

    // Unprefixed, as `sam local start-api` serves it.
    let r = h.get("/pets/7").await;
    assert_eq!(r.status(), 200);
    let e = json_of(r).await;
    assert_eq!(e["path"], "/pets/7");
    assert_eq!(e["requestContext"]["stage"], "Prod");
}

#[tokio::test]
async fn http_api_over_tls_with_cookies_cors_and_inference() {
    let h = Harness::start(true).await;
    let r = h
        .client
        .post(h.url("/h/a/b%20c?x=1&x=2"))
        .header("cookie", "a=1; b=2")
        .header("origin", "https://app.example.com")
        .header("content-type", "application/json")
        .body(r#"{"k":"v"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let id = r.headers()["apigw-requestid"].to_str().unwrap().to_string();
    let e = json_of(r).await;
    assert_eq!(e["version"], "2.0");
    assert_eq!(e["routeKey"], "ANY /h/{proxy+}");
    assert_eq!(e["rawPath"], "/h/a/b%20c");
    assert_eq!(e["pathParameters"], json!({"proxy": "a/b c"}));
    assert_eq!(e["rawQueryString"], "x=1&x=2");
    assert_eq!(e["queryStringParameters"], json!({"x": "1,2"}));
    assert_eq!(e["cookies"], json!(["a=1", "b=2"]));
    assert_eq!(e["body"], r#"{"k":"v"}"#);
    assert_eq!(e["isBase64Encoded"], false);
    assert_eq!(e["headers"]["x-forwarded-proto"], "https");
    assert_eq!(e["requestContext"]["domainName"], "localhost");
    assert_eq!(e["requestContext"]["stage"], "$default");
    assert_eq!(e["requestContext"]["requestId"], id.as_str());

    let r = h
        .client
        .request(reqwest::Method::OPTIONS, h.url("/hello"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-methods"], "GET,POST");
    assert_eq!(r.headers()["access-control-max-age"], "300");
    assert_eq!(
        h.seen.lock().unwrap().len(),
        1,
        "preflight must not invoke the function"
    );

    let r = h.get("/hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), "Hello from Lambda!");
}

#[tokio::test]
async fn gateway_errors_by_api_kind() {
    let h = Harness::start_with(false, config(), Duration::from_millis(100)).await;
    let cases = [
        (
            "/nothing/here",
            403,
            r#"{"message":"Missing Authentication Token"}"#,
        ),
        (
            "/fail",
            403,
            r#"{"message":"Missing Authentication Token"}"#,
        ), // wrong method
        ("/hfail", 500, r#"{"message":"Internal Server Error"}"#),
        ("/bad", 502, r#"{"message": "Internal server error"}"#),
        ("/slow", 504, r#"{"message": "Endpoint request timed out"}"#),
        ("/hslow", 503, r#"{"message":"Service Unavailable"}"#),
        ("/throttled", 429, r#"{"message":"Too Many Requests"}"#),
    ];
    for (path, status, body) in cases {
        let r = h.get(path).await;
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(r.text().await.unwrap(), body, "{path}");
    }
    let r = h.client.post(h.url("/fail")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.headers()["x-amzn-errortype"],
        "InternalServerErrorException"
    );
    // The HTTP API knows /hello, but not for DELETE: its 404.
    let r = h.client.delete(h.url("/hello")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), r#"{"message":"Not Found"}"#);
    let r = h.get("/nothing").await;
    assert_eq!(
        r.headers()["x-amzn-errortype"],
        "MissingAuthenticationTokenException"
    );

    let r = h
        .client
        .post(h.url("/h/x"))
        .body(vec![b'a'; 64 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn health_answers_without_hiding_routes() {
    let h = Harness::start(false).await;
    let r = h.get("/_esb/health").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    assert!(h.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn invoke_api_request_response_tail_and_errors() {
    let h = Harness::start(false).await;
    let url = |name: &str| h.url(&format!("/2015-03-31/functions/{name}/invocations"));

    let r = h
        .client
        .post(url("echo"))
        .header("x-amz-log-type", "Tail")
        .body(r#"{"a":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-amz-executed-version"], "$LATEST");
    assert!(r.headers().get("x-amz-function-error").is_none());
    let id = r.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_string();
    let log = base64::engine::general_purpose::STANDARD
        .decode(r.headers()["x-amz-log-result"].as_bytes())
        .unwrap();
    assert_eq!(
        String::from_utf8(log).unwrap(),
        format!("START RequestId: {id}\n")
    );
    assert_eq!(r.text().await.unwrap(), r#"{"a":1}"#);

    for name in [
        "arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Aecho",
        "123456789012:function:echo",
        "echo%3A%24LATEST",
    ] {
        let r = h.client.post(url(name)).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
    }
    let r = h
        .client
        .post(format!("{}?Qualifier=%24LATEST", url("echo")))
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{}");

    let r = h.client.post(url("fail")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-amz-function-error"], "Unhandled");
    assert_eq!(json_of(r).await["errorMessage"], "boom");

    let r = h.client.post(url("nope")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-amzn-errortype"], "ResourceNotFoundException");
    let body = json_of(r).await;
    assert_eq!(body["Type"], "User");
    assert_eq!(
        body["Message"],
        "Function not found: arn:aws:lambda:us-east-1:123456789012:function:nope"
    );

    let r = h
        .client
        .post(url("echo"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.headers()["x-amzn-errortype"],
        "InvalidRequestContentException"
    );

    let r = h
        .client
        .post(url("throttled"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-amzn-errortype"], "TooManyRequestsException");
    assert_eq!(
        json_of(r).await["Reason"],
        "ReservedFunctionConcurrentInvocationLimitExceeded"
    );

    let r = h
        .client
        .post(url("echo"))
        .header("x-amz-invocation-type", "Event")
        .body(format!("\"{}\"", "x".repeat(1024 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.headers()["x-amzn-errortype"],
        "RequestEntityTooLargeException"
    );

    h.backend.set_fail_start(true);
    let r = h.client.post(url("hello")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-amz-function-error"], "Unhandled");
    assert_eq!(json_of(r).await["errorMessage"], "fake init failure");
}

#[tokio::test]
async fn invoke_api_event_and_dry_run() {
    let h = Harness::start(false).await;
    let url = h.url("/2015-03-31/functions/echo/invocations");
    let r = h
        .client
        .post(&url)
        .header("x-amz-invocation-type", "DryRun")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = h
        .client
        .post(h.url("/2015-03-31/functions/missing/invocations"))
        .header("x-amz-invocation-type", "DryRun")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        h.seen.lock().unwrap().is_empty(),
        "DryRun must not run the function"
    );

    let r = h
        .client
        .post(&url)
        .header("x-amz-invocation-type", "Event")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        eventually(|| h.seen.lock().unwrap().contains(&id)).await,
        "async invocation never ran"
    );

    let r = h
        .client
        .get(h.url("/2015-03-31/functions/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["Configuration"]["FunctionName"], "echo");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let mut h = Harness::start_with(false, config(), Duration::from_millis(300)).await;
    let slow = {
        let client = h.client.clone();
        let url = h.url("/2015-03-31/functions/echo/invocations");
        tokio::spawn(async move { client.post(url).body("{}").send().await })
    };
    // Wait until the request is with the worker before shutting down.
    let state = h.state.clone();
    assert!(
        eventually(|| {
            let status: Value = serde_json::from_slice(&state.invoker().status_json()).unwrap();
            status
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["name"] == "echo" && f["busy"] == 1)
        })
        .await,
        "the request never reached a worker"
    );
    assert!(
        h.seen.lock().unwrap().is_empty(),
        "request finished too early"
    );
    h.stop.take().unwrap().send(()).unwrap();
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::timeout(Duration::from_secs(5), &mut h.server)
        .await
        .expect("serve did not return after shutdown")
        .unwrap()
        .unwrap();
    assert!(TcpListenerGone::check(h.addr).await);
}

struct TcpListenerGone;

impl TcpListenerGone {
    async fn check(addr: SocketAddr) -> bool {
        tokio::net::TcpStream::connect(addr).await.is_err()
    }
}

#[tokio::test]
async fn handle_works_without_sockets() {
    let h = Harness::start(false).await;
    let req = http::Request::builder()
        .method("GET")
        .uri("/hello")
        .header("host", "example.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let peer: SocketAddr = "10.0.0.9:5555".parse().unwrap();
    let r = handle(&h.state, req, peer).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("apigw-requestid"));
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "Hello from Lambda!");
}

#[tokio::test]
async fn rest_binary_bodies_both_ways() {
    let h = Harness::start(false).await;
    let r = h
        .client
        .post(h.url("/upload"))
        .header("content-type", "image/png")
        .body(vec![0u8, 159, 146, 150, 255])
        .send()
        .await
        .unwrap();
    let e = json_of(r).await;
    assert_eq!(e["isBase64Encoded"], true);
    assert_eq!(e["body"], "AJ+Slv8=");

    let r = h
        .client
        .get(h.url("/png"))
        .header("accept", "image/png")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        b"\x89PNG\r\n\x1a\n".as_slice()
    );
    // Without a binary Accept type the client gets the base64 text.
    let r = h.get("/png").await;
    assert_eq!(r.text().await.unwrap(), "iVBORw0KGgo=");
}

#[tokio::test]
async fn rest_cors_answers_options_and_decorates_responses() {
    let mut cfg = config();
    cfg.apis[0].cors = Some(CorsConfig {
        allow_origins: vec!["*".into()],
        allow_headers: vec!["Content-Type".into(), "X-Api-Key".into()],
        ..Default::default()
    });
    let h = Harness::start_with(false, cfg, Duration::ZERO).await;
    let r = h
        .client
        .request(reqwest::Method::OPTIONS, h.url("/pets/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        r.headers()["access-control-allow-methods"],
        "DELETE,GET,HEAD,OPTIONS,PATCH,POST,PUT"
    );
    assert_eq!(
        r.headers()["access-control-allow-headers"],
        "Content-Type,X-Api-Key"
    );
    assert!(h.seen.lock().unwrap().is_empty());
    let r = h.get("/pets/1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    // Unknown path: still no route.
    let r = h
        .client
        .request(reqwest::Method::OPTIONS, h.url("/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
