//! Gateway auth, request by request through [`esb_gateway::handle`] with a
//! fake invoker (no sockets, no workers): API keys and their brute-force
//! brake, JWT / Cognito authorizers, Lambda TOKEN and REQUEST authorizers
//! and their cache, SigV4 on the Invoke API, the login endpoint, and the
//! template hooks (`RouteTarget`, `base_path`, `function_aliases`).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use esb_auth::{Auth, AuthConfig};
use esb_gateway::{
    ApiConfig, ApiKind, AuthorizerConfig, AuthorizerKind, GatewayAuth, GatewayConfig, GatewayState,
    Invoker, PayloadVersion, RouteAuth, RouteConfig, RouteTarget, handle,
};
use esb_pool::PoolError;
use esb_runtimes_core::{FunctionSpec, Invocation, InvocationOutcome, InvokeResult};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

type Answer = dyn Fn(&str, &Value) -> InvocationOutcome + Send + Sync;

/// Runs nothing: answers each function with `answer` and records the
/// (function, event) pairs it was given.
struct FakeInvoker {
    answer: Box<Answer>,
    calls: Mutex<Vec<(String, Value)>>,
}

impl FakeInvoker {
    fn new(answer: impl Fn(&str, &Value) -> InvocationOutcome + Send + Sync + 'static) -> Self {
        Self {
            answer: Box::new(answer),
            calls: Mutex::new(Vec::new()),
        }
    }

    fn calls_to(&self, function: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(f, _)| f == function)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

#[async_trait::async_trait]
impl Invoker for FakeInvoker {
    async fn invoke(
        &self,
        function: &str,
        invocation: Invocation,
    ) -> Result<InvokeResult, PoolError> {
        let event: Value = serde_json::from_slice(&invocation.payload).unwrap_or(Value::Null);
        self.calls
            .lock()
            .unwrap()
            .push((function.to_string(), event.clone()));
        Ok(InvokeResult {
            outcome: (self.answer)(function, &event),
            log_tail: String::new(),
            duration: Duration::ZERO,
            init_duration: None,
            worker_alive: true,
        })
    }

    fn function(&self, name: &str) -> Option<Arc<FunctionSpec>> {
        ["app", "authz", "simple"]
            .contains(&name)
            .then(|| Arc::new(esb_test_support::spec(name)))
    }
}

/// `app` answers with its event as the body; authorizers follow the token.
fn answer(function: &str, event: &Value) -> InvocationOutcome {
    let ok = |v: Value| InvocationOutcome::Success(Bytes::from(v.to_string()));
    match function {
        "authz" => {
            let token = event["authorizationToken"].as_str().unwrap_or("");
            let effect = match token {
                "allow" | "a b" => "Allow",
                "deny" => "Deny",
                "unauthorized" => {
                    return InvocationOutcome::Error {
                        kind: esb_runtimes_core::ErrorKind::Function,
                        payload: Bytes::from_static(br#"{"errorMessage":"Unauthorized"}"#),
                    };
                }
                _ => return ok(json!("broken")),
            };
            ok(json!({
                "principalId": "user-1",
                "policyDocument": {"Version": "2012-10-17", "Statement": [
                    {"Action": "execute-api:Invoke", "Effect": effect, "Resource": "*"}
                ]},
                "context": {"tenant": "t1", "n": 7},
            }))
        }
        "simple" => ok(json!({"isAuthorized": true, "context": {"role": "admin"}})),
        _ => ok(json!({"statusCode": 200, "body": event.to_string()})),
    }
}

struct Gateway {
    state: GatewayState,
    invoker: Arc<FakeInvoker>,
    auth: Arc<Auth>,
    dir: std::path::PathBuf,
}

fn route(api: &str, method: &str, path: &str, auth: RouteAuth) -> RouteConfig {
    RouteConfig {
        api_id: api.into(),
        method: method.into(),
        path: path.into(),
        target: RouteTarget::Function("app".into()),
        payload_version: if api == "Rest" {
            PayloadVersion::V1
        } else {
            PayloadVersion::V2
        },
        auth,
        api_key_required: false,
        scopes: Vec::new(),
    }
}

fn lambda_authorizer(
    name: &str,
    function: &str,
    token: bool,
    sources: &[&str],
) -> AuthorizerConfig {
    AuthorizerConfig {
        name: name.into(),
        kind: AuthorizerKind::Lambda {
            function: function.into(),
            token,
            payload_v2: false,
            simple_responses: false,
        },
        identity_sources: sources.iter().map(|s| s.to_string()).collect(),
        ttl: Duration::from_secs(300),
    }
}

fn config() -> GatewayConfig {
    let mut rest = ApiConfig::new("Rest", ApiKind::Rest);
    rest.authorizers = vec![
        lambda_authorizer("TokenAuth", "authz", true, &[]),
        lambda_authorizer(
            "QueryAuth",
            "authz",
            false,
            &["method.request.querystring.token"],
        ),
        AuthorizerConfig {
            name: "Pool".into(),
            kind: AuthorizerKind::Cognito,
            identity_sources: Vec::new(),
            ttl: Duration::ZERO,
        },
    ];
    let mut http = ApiConfig::new("Http", ApiKind::Http);
    http.authorizers = vec![
        AuthorizerConfig {
            name: "Jwt".into(),
            kind: AuthorizerKind::Jwt {
                issuer: None,
                audience: vec!["my-client".into()],
            },
            identity_sources: vec!["$request.header.Authorization".into()],
            ttl: Duration::ZERO,
        },
        AuthorizerConfig {
            name: "Simple".into(),
            kind: AuthorizerKind::Lambda {
                function: "simple".into(),
                token: false,
                payload_v2: true,
                simple_responses: true,
            },
            identity_sources: vec!["$request.header.x-token".into()],
            ttl: Duration::ZERO,
        },
    ];
    let mut url = ApiConfig::new("Url", ApiKind::FunctionUrl);
    url.base_path = Some("/lambda-url/app".into());
    let mut scoped = route(
        "Http",
        "GET",
        "/scoped",
        RouteAuth::Authorizer("Jwt".into()),
    );
    scoped.scopes = vec!["orders/read".into()];
    GatewayConfig {
        apis: vec![rest, http, url],
        routes: vec![
            route("Rest", "GET", "/keyed", RouteAuth::ApiKey),
            route(
                "Rest",
                "GET",
                "/token",
                RouteAuth::Authorizer("TokenAuth".into()),
            ),
            route(
                "Rest",
                "GET",
                "/query",
                RouteAuth::Authorizer("QueryAuth".into()),
            ),
            route(
                "Rest",
                "GET",
                "/cognito",
                RouteAuth::Authorizer("Pool".into()),
            ),
            route("Http", "GET", "/jwt", RouteAuth::Authorizer("Jwt".into())),
            scoped,
            route(
                "Http",
                "GET",
                "/simple",
                RouteAuth::Authorizer("Simple".into()),
            ),
            RouteConfig {
                target: RouteTarget::Unavailable {
                    status: 500,
                    message: "integration type HTTP_PROXY is not run by ESB".into(),
                },
                ..route("Http", "GET", "/proxy", RouteAuth::None)
            },
            route("Url", "ANY", "/{proxy+}", RouteAuth::None),
        ],
        function_aliases: HashMap::from([
            ("Child/app".to_string(), "app".to_string()),
            ("my-app-name".to_string(), "app".to_string()),
        ]),
        ..Default::default()
    }
}

fn gateway(dev: bool) -> Gateway {
    let dir = std::env::temp_dir().join(format!("esb-gw-auth-{}", uuid::Uuid::new_v4()));
    let mut auth_config = AuthConfig::new(&dir);
    auth_config.dev = dev;
    let auth = Arc::new(Auth::open(&auth_config).unwrap());
    let invoker = Arc::new(FakeInvoker::new(answer));
    let mut config = config();
    config.auth = GatewayAuth::Enforced(Arc::clone(&auth));
    let state = GatewayState::with_invoker(config, invoker.clone()).unwrap();
    Gateway {
        state,
        invoker,
        auth,
        dir,
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const CLIENT: &str = "127.0.0.1:50000";

async fn send(
    state: &GatewayState,
    req: Request<Full<Bytes>>,
    peer: &str,
) -> (u16, HeaderMap, Value) {
    let r: Response<_> = handle(state, req, peer.parse::<SocketAddr>().unwrap()).await;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

fn get(uri: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(uri).header("host", "localhost:3000");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn api_key_required_with_brute_force_brake() {
    let g = gateway(false);
    let key = g.auth.credentials().api_key.clone();
    let (status, _, body) = send(&g.state, get("/keyed", &[]), CLIENT).await;
    assert_eq!(status, 403);
    assert_eq!(body, json!({"message": "Forbidden"}));

    let (status, _, body) = send(&g.state, get("/keyed", &[("x-api-key", &key)]), CLIENT).await;
    assert_eq!(status, 200);
    assert_eq!(body["requestContext"]["identity"]["apiKey"], key.as_str());

    // Repeated wrong keys from one source: 429 with Retry-After.
    let mut last = (0, HeaderMap::new());
    for _ in 0..=esb_auth::limiter::FREE_FAILURES {
        let (s, h, _) = send(
            &g.state,
            get("/keyed", &[("x-api-key", "wrong")]),
            "10.0.0.9:1",
        )
        .await;
        last = (s, h);
    }
    assert_eq!(last.0, 429);
    assert!(last.1.contains_key("retry-after"));
    // Another source is not affected.
    let (status, _, _) = send(&g.state, get("/keyed", &[("x-api-key", &key)]), CLIENT).await;
    assert_eq!(status, 200);
}

fn claims(auth: &Auth, extra: Value) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // ESB accepts only ID and access tokens as bearer tokens.
    let mut c = json!({"iss": auth.issuer(), "sub": "u-1", "iat": now, "exp": now + 600, "token_use": "access"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    auth.sign(c.as_object().unwrap()).unwrap()
}

#[tokio::test]
async fn jwt_authorizer_checks_token_audience_and_scopes() {
    let g = gateway(false);
    let good = claims(&g.auth, json!({"aud": "my-client", "scope": "orders/read"}));
    let bearer = format!("Bearer {good}");
    let (status, _, body) =
        send(&g.state, get("/jwt", &[("authorization", &bearer)]), CLIENT).await;
    assert_eq!(status, 200);
    let event = body;
    assert_eq!(
        event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"],
        "u-1"
    );
    assert_eq!(
        event["requestContext"]["authorizer"]["jwt"]["scopes"],
        json!(["orders/read"])
    );

    for bad in [
        "Bearer not.a.token".to_string(),
        format!("Bearer {}", claims(&g.auth, json!({"aud": "other"}))),
        format!(
            "Bearer {}",
            claims(&g.auth, json!({"aud": "my-client", "exp": 1}))
        ),
    ] {
        let (status, headers, body) =
            send(&g.state, get("/jwt", &[("authorization", &bad)]), CLIENT).await;
        assert_eq!(status, 401, "{bad}");
        assert_eq!(body, json!({"message": "Unauthorized"}));
        assert_eq!(
            headers["www-authenticate"],
            r#"Bearer error="invalid_token""#
        );
    }
    let (status, _, _) = send(&g.state, get("/jwt", &[]), CLIENT).await;
    assert_eq!(status, 401);

    // The route wants a scope the token does not have.
    let unscoped = format!("Bearer {}", claims(&g.auth, json!({"aud": "my-client"})));
    let (status, _, _) = send(
        &g.state,
        get("/scoped", &[("authorization", &unscoped)]),
        CLIENT,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = send(
        &g.state,
        get("/scoped", &[("authorization", &bearer)]),
        CLIENT,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn login_then_cognito_authorizer() {
    let g = gateway(false);
    let key = g.auth.credentials().api_key.clone();
    let login = |api_key: &str, body: Value| {
        Request::post(esb_auth::DEFAULT_LOGIN_PATH)
            .header("host", "localhost:3000")
            .header("x-api-key", api_key)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let creds = json!({"AuthParameters": {"USERNAME": "alice", "PASSWORD": "correct-horse-1"}});
    let (status, _, _) = send(&g.state, login("wrong", creds.clone()), CLIENT).await;
    assert_eq!(status, 403, "login needs the API key");
    let (status, _, body) = send(&g.state, login(&key, creds.clone()), CLIENT).await;
    assert_eq!(status, 400);
    assert_eq!(body["__type"], "NotAuthorizedException");

    esb_auth::users::UserStore::load(&g.dir)
        .unwrap()
        .add("alice", "correct-horse-1", &[])
        .unwrap();
    let (status, _, body) = send(&g.state, login(&key, creds), CLIENT).await;
    assert_eq!(status, 200);
    let id_token = body["AuthenticationResult"]["IdToken"]
        .as_str()
        .unwrap()
        .to_string();

    let (status, _, body) = send(
        &g.state,
        get("/cognito", &[("authorization", &id_token)]),
        CLIENT,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["requestContext"]["authorizer"]["claims"]["cognito:username"],
        "alice"
    );
    let (status, _, _) = send(
        &g.state,
        get("/cognito", &[("authorization", "nope")]),
        CLIENT,
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn lambda_token_authorizer_allow_deny_unauthorized_and_cache() {
    let g = gateway(false);
    let (status, _, body) = send(
        &g.state,
        get("/token", &[("authorization", "allow")]),
        CLIENT,
    )
    .await;
    assert_eq!(status, 200);
    let authorizer = &body["requestContext"]["authorizer"];
    assert_eq!(authorizer["principalId"], "user-1");
    assert_eq!(authorizer["tenant"], "t1");
    assert_eq!(authorizer["n"], "7", "REST context values are strings");
    let calls = g.invoker.calls_to("authz");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["type"], "TOKEN");
    assert_eq!(calls[0]["authorizationToken"], "allow");

    // Same token again: the cached decision, no second call.
    let (status, _, _) = send(
        &g.state,
        get("/token", &[("authorization", "allow")]),
        CLIENT,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(g.invoker.calls_to("authz").len(), 1);

    let (status, _, body) = send(
        &g.state,
        get("/token", &[("authorization", "deny")]),
        CLIENT,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        body["Message"],
        "User is not authorized to access this resource with an explicit deny"
    );
    let (status, _, _) = send(
        &g.state,
        get("/token", &[("authorization", "unauthorized")]),
        CLIENT,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, body) = send(
        &g.state,
        get("/token", &[("authorization", "garbage")]),
        CLIENT,
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(body, json!({"message": "Internal server error"}));
    let (status, _, _) = send(&g.state, get("/token", &[]), CLIENT).await;
    assert_eq!(status, 401, "missing identity source");
}

#[tokio::test]
async fn plus_in_query_reaches_authorizer_and_event_as_the_same_value() {
    let g = gateway(false);
    let (status, _, body) = send(&g.state, get("/query?token=a+b", &[]), CLIENT).await;
    assert_eq!(status, 200);
    let authz = g.invoker.calls_to("authz");
    assert_eq!(authz[0]["type"], "REQUEST");
    assert_eq!(authz[0]["queryStringParameters"]["token"], "a b");
    assert_eq!(authz[0]["identitySource"], "a b");
    assert_eq!(body["queryStringParameters"]["token"], "a b");
    assert_eq!(
        body["multiValueQueryStringParameters"]["token"],
        json!(["a b"])
    );
}

#[tokio::test]
async fn http_api_simple_authorizer_context() {
    let g = gateway(false);
    let (status, _, body) = send(&g.state, get("/simple", &[("x-token", "t")]), CLIENT).await;
    assert_eq!(status, 200);
    let event = body;
    assert_eq!(
        event["requestContext"]["authorizer"],
        json!({"lambda": {"role": "admin"}})
    );
    let call = &g.invoker.calls_to("simple")[0];
    assert_eq!(call["version"], "2.0");
    assert_eq!(call["identitySource"], json!(["t"]));
    let (status, _, _) = send(&g.state, get("/simple", &[]), CLIENT).await;
    assert_eq!(status, 401);
}

fn invoke(path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "localhost:3000")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn signed_invoke(path: &str, body: &str, akid: &str, secret: &str) -> Request<Full<Bytes>> {
    let mut headers = HeaderMap::new();
    headers.insert("host", "localhost:3000".parse().unwrap());
    esb_sigv4::sign(
        "POST",
        path,
        "",
        &mut headers,
        esb_sigv4::Payload::Body(body.as_bytes()),
        &esb_sigv4::SigningParams {
            access_key_id: akid,
            secret_access_key: secret,
            region: "us-east-1",
            service: "lambda",
            time: SystemTime::now(),
        },
    )
    .unwrap();
    let mut req = invoke(path, body);
    *req.headers_mut() = headers;
    req
}

#[tokio::test]
async fn invoke_api_requires_sigv4() {
    let g = gateway(false);
    let path = "/2015-03-31/functions/app/invocations";
    let (status, headers, body) = send(&g.state, invoke(path, "{}"), CLIENT).await;
    assert_eq!(status, 403);
    assert_eq!(
        headers["x-amzn-errortype"],
        "MissingAuthenticationTokenException"
    );
    assert_eq!(body["Type"], "User");

    let creds = g.auth.credentials().clone();
    let ok = signed_invoke(
        path,
        "{}",
        &creds.aws_access_key_id,
        &creds.aws_secret_access_key,
    );
    let (status, _, _) = send(&g.state, ok, CLIENT).await;
    assert_eq!(status, 200);

    let wrong = signed_invoke(
        path,
        "{}",
        &creds.aws_access_key_id,
        "0000000000000000000000000000000000000000",
    );
    let (status, headers, _) = send(&g.state, wrong, CLIENT).await;
    assert_eq!(status, 403);
    assert_eq!(headers["x-amzn-errortype"], "InvalidSignatureException");

    let unknown = signed_invoke(
        path,
        "{}",
        "AKIAUNKNOWN000000000",
        &creds.aws_secret_access_key,
    );
    let (_, headers, _) = send(&g.state, unknown, CLIENT).await;
    assert_eq!(headers["x-amzn-errortype"], "UnrecognizedClientException");
}

#[tokio::test]
async fn invoke_api_dev_mode_allows_unsigned_loopback_only() {
    let g = gateway(true);
    let path = "/2015-03-31/functions/app/invocations";
    let (status, _, _) = send(&g.state, invoke(path, "{}"), CLIENT).await;
    assert_eq!(status, 200);
    let (status, _, _) = send(&g.state, invoke(path, "{}"), "192.0.2.7:1000").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn default_config_denies_the_invoke_api() {
    let invoker = Arc::new(FakeInvoker::new(answer));
    let config = GatewayConfig {
        auth: GatewayAuth::default(),
        ..config()
    };
    let state = GatewayState::with_invoker(config, invoker.clone()).unwrap();
    let (status, headers, _) = send(
        &state,
        invoke("/2015-03-31/functions/app/invocations", "{}"),
        CLIENT,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        headers["x-amzn-errortype"],
        "MissingAuthenticationTokenException"
    );
    assert!(invoker.calls_to("app").is_empty());
    // No login endpoint either.
    let (status, _, _) = send(&state, invoke(esb_auth::DEFAULT_LOGIN_PATH, "{}"), CLIENT).await;
    assert_ne!(status, 200);
}

#[tokio::test]
async fn invoke_api_resolves_function_aliases() {
    let invoker = Arc::new(FakeInvoker::new(answer));
    let config = GatewayConfig {
        auth: GatewayAuth::Open,
        ..config()
    };
    let state = GatewayState::with_invoker(config, invoker.clone()).unwrap();
    for name in ["my-app-name", "Child%2Fapp", "app"] {
        let path = format!("/2015-03-31/functions/{name}/invocations");
        let (status, _, _) = send(&state, invoke(&path, r#"{"n":1}"#), CLIENT).await;
        assert_eq!(status, 200, "{name}");
    }
    assert_eq!(invoker.calls_to("app").len(), 3);
    let (status, headers, _) = send(
        &state,
        invoke("/2015-03-31/functions/other/invocations", "{}"),
        CLIENT,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(headers["x-amzn-errortype"], "ResourceNotFoundException");
}

#[tokio::test]
async fn unavailable_route_answers_its_status_and_message() {
    let g = gateway(false);
    let (status, headers, body) = send(&g.state, get("/proxy", &[]), CLIENT).await;
    assert_eq!(status, 500);
    assert_eq!(
        body,
        json!({"message": "integration type HTTP_PROXY is not run by ESB"})
    );
    assert!(headers.contains_key("apigw-requestid"));
    assert!(g.invoker.calls_to("app").is_empty());
}

#[tokio::test]
async fn function_url_strips_its_base_path_and_sends_payload_v2() {
    let g = gateway(false);
    let (status, _, body) = send(&g.state, get("/lambda-url/app/orders/7?x=1", &[]), CLIENT).await;
    assert_eq!(status, 200);
    let event = body;
    assert_eq!(event["version"], "2.0");
    assert_eq!(event["rawPath"], "/orders/7");
    assert_eq!(event["requestContext"]["http"]["path"], "/orders/7");
    assert_eq!(event["pathParameters"]["proxy"], "orders/7");
    assert_eq!(event["requestContext"]["stage"], "$default");
    let (status, _, _) = send(&g.state, get("/orders/7", &[]), CLIENT).await;
    assert_ne!(status, 200, "the base path is required");
}
