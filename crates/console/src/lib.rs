//! ESB's web console: three embedded assets (`index.html`, `app.js`,
//! `app.css`, plain HTML/JS/CSS built into the binary) served under
//! `/_esb/console/`, and a small JSON API under `/_esb/console/api/`.
//!
//! The gateway knows nothing of this crate: the app builds a [`Console`]
//! and installs [`Console::handler`] with `GatewayState::set_console`, as it
//! does for `/metrics`. The console is off unless the `console` setting is
//! on (docs/console.md).
//!
//! Auth: `POST api/login` takes a user pool username and password and runs
//! the pool's login (Argon2 on the blocking pool, the brute-force limiter
//! included) through [`esb_auth::Auth::login_async`]; the browser keeps the
//! access token in `sessionStorage` and sends it as `Authorization: Bearer`.
//! Every other API call verifies it ([`esb_auth::Auth::verify_token`]:
//! signature, issuer, expiry, user not removed, password not changed).
//! Because the token travels in a header a page of another origin cannot
//! set, there is no cookie and so no CSRF. Every answer carries a strict
//! Content-Security-Policy (scripts only from the console itself), and the
//! page renders data with `textContent` only.
//!
//! Storage pages (`services.rs`) call the box's own S3 and DynamoDB
//! endpoints with SigV4-signed requests made with the box's credentials,
//! rather than reaching into the services' internals: the console then
//! sees and does exactly what an SDK client does (event notifications,
//! streams and external endpoints included), and needs no dependency on
//! the S3 or DynamoDB crates.

mod api;
mod services;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};

pub use services::Endpoint;

/// Path prefix the console is served under.
pub const PREFIX: &str = "/_esb/console";
/// Body a console upload may send (the gateway's own cap is the same).
pub const UPLOAD_LIMIT: usize = 16 * 1024 * 1024;
/// Body of a login or of any request that is not an authorised API call.
pub const SMALL_BODY_LIMIT: usize = 16 * 1024;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Policy of every console answer: nothing but the console's own scripts
/// and styles, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// One function as the Functions page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FunctionInfo {
    /// Function name.
    pub name: String,
    /// Runtime (`python3.11`, `provided.al2023`, ...).
    pub runtime: String,
    /// Routes that run it (`GET /hello`).
    pub routes: Vec<String>,
    /// Idle workers.
    pub warm: usize,
    /// Workers running an invocation.
    pub busy: usize,
    /// Workers starting.
    pub starting: usize,
    /// Requests waiting for a worker.
    pub queued: usize,
}

/// Where the Functions page reads from.
pub type FunctionsSource = Arc<dyn Fn() -> Vec<FunctionInfo> + Send + Sync>;

/// What the console reads and acts on.
pub struct ConsoleConfig {
    /// The box's auth state (user pool, token keys).
    pub auth: Arc<esb_auth::Auth>,
    /// The log store's directory (`<data_dir>/logs`).
    pub logs_dir: PathBuf,
    /// The `/metrics` registry, when metrics are on.
    pub metrics: Option<Arc<esb_metrics::Metrics>>,
    /// Functions, routes and workers.
    pub functions: FunctionsSource,
    /// The S3 endpoint, when there is one.
    pub s3: Option<Endpoint>,
    /// The DynamoDB endpoint, when there is one.
    pub dynamodb: Option<Endpoint>,
}

/// The console: cheap to clone.
#[derive(Clone)]
pub struct Console {
    inner: Arc<ConsoleConfig>,
    client: reqwest::Client,
}

/// Errors building the console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The HTTP client for the storage endpoints could not be built.
    #[error("console HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl Console {
    /// A console over `config`.
    pub fn new(config: ConsoleConfig) -> Result<Self, ConsoleError> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Self {
            inner: Arc::new(config),
            client,
        })
    }

    /// The callback the gateway calls for requests under [`PREFIX`]
    /// (`GatewayState::set_console`).
    #[allow(clippy::type_complexity)]
    pub fn handler(
        self,
    ) -> Arc<
        dyn Fn(
                Request<Bytes>,
                SocketAddr,
            )
                -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Bytes>> + Send>>
            + Send
            + Sync,
    > {
        Arc::new(move |req, peer| {
            let console = self.clone();
            Box::pin(async move { console.handle(req, peer).await })
        })
    }

    /// The gateway's check of a console request's head, before any body
    /// is read (`GatewayState::set_console_gate`): API calls other than
    /// login need a valid token first and may then send up to the upload
    /// limit; login and pages get a small body.
    #[allow(clippy::type_complexity, clippy::result_large_err)]
    pub fn gate(
        self,
    ) -> Arc<dyn Fn(&http::request::Parts) -> Result<usize, Response<Bytes>> + Send + Sync> {
        Arc::new(move |parts| self.body_limit(parts))
    }

    /// See [`Console::gate`].
    #[allow(clippy::result_large_err)]
    pub fn body_limit(&self, parts: &http::request::Parts) -> Result<usize, Response<Bytes>> {
        let rest = parts.uri.path().strip_prefix(PREFIX).unwrap_or("");
        match rest.strip_prefix("/api/") {
            Some("login") | None => Ok(SMALL_BODY_LIMIT),
            Some(_) => api::authorize(self, &parts.headers)
                .map(|()| UPLOAD_LIMIT)
                .map_err(secure),
        }
    }

    /// Answers one request under [`PREFIX`].
    pub async fn handle(&self, req: Request<Bytes>, peer: SocketAddr) -> Response<Bytes> {
        let path = req.uri().path().to_string();
        let rest = path.strip_prefix(PREFIX).unwrap_or("");
        let r = match (req.method(), rest) {
            (&Method::GET, "") => redirect(&format!("{PREFIX}/")),
            (&Method::GET, "/" | "/index.html") => asset(INDEX_HTML, "text/html; charset=utf-8"),
            (&Method::GET, "/app.js") => asset(APP_JS, "text/javascript; charset=utf-8"),
            (&Method::GET, "/app.css") => asset(APP_CSS, "text/css; charset=utf-8"),
            (_, r) if r.starts_with("/api/") => api::handle(self, req, peer, &r[5..]).await,
            _ => text(StatusCode::NOT_FOUND, "not found"),
        };
        secure(r)
    }

    pub(crate) fn config(&self) -> &ConsoleConfig {
        &self.inner
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// The Functions page's source over a pool: spec, workers, and the routes
/// `routes` (function name, `METHOD /path`) name.
pub fn pool_functions(pool: esb_pool::Pool, routes: Vec<(String, String)>) -> FunctionsSource {
    let mut by_function: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (function, route) in routes {
        by_function.entry(function).or_default().push(route);
    }
    Arc::new(move || {
        let status: BTreeMap<String, esb_pool::FunctionStatus> = pool
            .status()
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        pool.functions()
            .iter()
            .map(|spec| {
                let s = status.get(&spec.name);
                FunctionInfo {
                    name: spec.name.clone(),
                    runtime: spec.runtime.clone(),
                    routes: by_function.get(&spec.name).cloned().unwrap_or_default(),
                    warm: s.map_or(0, |s| s.warm),
                    busy: s.map_or(0, |s| s.busy),
                    starting: s.map_or(0, |s| s.starting),
                    queued: s.map_or(0, |s| s.queued),
                }
            })
            .collect()
    })
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from_static(body.as_bytes()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn redirect(to: &str) -> Response<Bytes> {
    let mut r = Response::new(Bytes::new());
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
}

pub(crate) fn text(status: StatusCode, body: &str) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Headers every console answer carries.
fn secure(mut r: Response<Bytes>) -> Response<Bytes> {
    let h = r.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(dir: &std::path::Path) -> Console {
        let auth = esb_auth::Auth::open(&esb_auth::AuthConfig::new(dir)).expect("auth");
        Console::new(ConsoleConfig {
            auth: Arc::new(auth),
            logs_dir: dir.join("logs"),
            metrics: None,
            functions: Arc::new(Vec::new),
            s3: None,
            dynamodb: None,
        })
        .expect("console")
    }

    fn get(path: &str, auth: Option<&str>) -> Request<Bytes> {
        let mut b = Request::builder().method("GET").uri(path);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Bytes::new()).expect("request")
    }

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1234);

    #[tokio::test]
    async fn assets_are_served_with_a_strict_policy_and_the_api_needs_a_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = console(dir.path());
        let page = c.handle(get("/_esb/console/", None), PEER).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert!(std::str::from_utf8(page.body()).is_ok_and(|b| b.contains("ESB console")));
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .expect("csp");
        assert!(csp.contains("script-src 'self'"));
        for auth in [None, Some("Bearer nope"), Some("Basic Zm9vOmJhcg==")] {
            for call in [
                "functions",
                "users",
                "logs",
                "s3/buckets",
                "dynamodb/tables",
            ] {
                let r = c
                    .handle(get(&format!("/_esb/console/api/{call}"), auth), PEER)
                    .await;
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{call} {auth:?}");
            }
        }
        // A token the box signed but for no user of the pool with the
        // wrong issuer is refused too.
        let mut claims = serde_json::Map::new();
        claims.insert("iss".into(), "https://elsewhere".into());
        claims.insert("token_use".into(), "access".into());
        claims.insert("exp".into(), (i64::MAX / 2).into());
        let token = c.config().auth.sign(&claims).expect("sign");
        let r = c
            .handle(
                get("/_esb/console/api/users", Some(&format!("Bearer {token}"))),
                PEER,
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let missing = c.handle(get("/_esb/console/nope", None), PEER).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn an_upload_without_a_valid_token_is_refused_before_its_body_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        esb_auth::UserStore::load(dir.path())
            .expect("users")
            .add("ops", "a-long-Passw0rd!", &[])
            .expect("add");
        let c = console(dir.path());
        let head = |path: &str, auth: Option<&str>| {
            let mut b = Request::builder().method("POST").uri(path);
            if let Some(a) = auth {
                b = b.header("authorization", a);
            }
            b.body(()).expect("request").into_parts().0
        };
        let upload = "/_esb/console/api/s3/upload?bucket=b&key=k";
        for auth in [None, Some("Bearer nope")] {
            let refused = c.body_limit(&head(upload, auth)).expect_err("refused");
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
            assert!(refused.headers().contains_key("content-security-policy"));
        }
        assert_eq!(
            c.body_limit(&head("/_esb/console/api/login", None)).ok(),
            Some(SMALL_BODY_LIMIT)
        );
        assert_eq!(
            c.body_limit(&head("/_esb/console/", None)).ok(),
            Some(SMALL_BODY_LIMIT)
        );
        let login = Request::builder()
            .method("POST")
            .uri("/_esb/console/api/login")
            .body(Bytes::from_static(
                br#"{"username":"ops","password":"a-long-Passw0rd!"}"#,
            ))
            .expect("request");
        let answer = c.handle(login, PEER).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let token: serde_json::Value = serde_json::from_slice(answer.body()).expect("json");
        let bearer = format!("Bearer {}", token["token"].as_str().expect("token"));
        assert_eq!(
            c.body_limit(&head(upload, Some(&bearer))).ok(),
            Some(UPLOAD_LIMIT)
        );
    }
}
