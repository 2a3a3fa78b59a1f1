//! The gateway's own input types. The CLI converts the template model into
//! these, so the gateway never depends on how the template crate lays out
//! its model.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Everything the gateway serves: APIs, their routes, and settings.
/// The default has no APIs and [`GatewayAuth::DenyAll`].
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    /// APIs in template declaration order (the order breaks ties between
    /// APIs that declare the same route).
    pub apis: Vec<ApiConfig>,
    /// Routes of all APIs; each names its API by logical id.
    pub routes: Vec<RouteConfig>,
    /// Limits and identity values.
    pub settings: GatewaySettings,
    /// Keys, users and tokens, or an explicit choice to run without them.
    pub auth: GatewayAuth,
    /// Other names of functions (alias -> canonical pool name): nested-stack
    /// `Child/Function` names, `FunctionName` properties. The Invoke API
    /// resolves a name through it before asking the pool.
    pub function_aliases: HashMap<String, String>,
}

/// How requests are authenticated. There is no "open by accident": the
/// default refuses everything that needs a check.
#[derive(Debug, Clone, Default)]
pub enum GatewayAuth {
    /// Checks against the box's keys, users and signing keys.
    Enforced(Arc<esb_auth::Auth>),
    /// Nothing can pass a check: the Invoke API answers 403, there is no
    /// login endpoint, routes that need a key or authorizer are refused.
    #[default]
    DenyAll,
    /// Explicitly unauthenticated (tests, embedding): the Invoke API takes
    /// unsigned calls, there is no login endpoint, routes that need a key
    /// or authorizer are still refused.
    Open,
}

impl GatewayAuth {
    /// The box's auth state when checks are enforced.
    pub(crate) fn enforced(&self) -> Option<&Arc<esb_auth::Auth>> {
        match self {
            Self::Enforced(auth) => Some(auth),
            Self::DenyAll | Self::Open => None,
        }
    }
}

/// The two API Gateway products, and Lambda function URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// `AWS::Serverless::Api` (REST API, event v1).
    Rest,
    /// `AWS::Serverless::HttpApi` (HTTP API, payload 2.0 by default).
    Http,
    /// A Lambda function URL: payload 2.0 like an HTTP API, no stage;
    /// served under its `base_path`.
    FunctionUrl,
}

impl ApiKind {
    /// HTTP API rules apply (payload 2.0 conventions, error bodies, CORS by
    /// origin): HTTP APIs and function URLs.
    pub fn is_http_like(self) -> bool {
        matches!(self, Self::Http | Self::FunctionUrl)
    }
}

/// One API (`AWS::Serverless::Api` or `AWS::Serverless::HttpApi`, or an
/// implicit one).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Logical id (`ServerlessRestApi`, `ServerlessHttpApi`, `MyApi`).
    pub id: String,
    /// REST or HTTP API.
    pub kind: ApiKind,
    /// `StageName`. REST: `None` means `Prod` (SAM's implicit stage). HTTP:
    /// `None` or `$default` means the unprefixed `$default` stage.
    pub stage_name: Option<String>,
    /// REST `BinaryMediaTypes` (already unescaped: `image/png`, `*/*`).
    pub binary_media_types: Vec<String>,
    /// `Cors` (REST) / `CorsConfiguration` (HTTP).
    pub cors: Option<CorsConfig>,
    /// Stage variables (`Variables` of the stage).
    pub stage_variables: BTreeMap<String, String>,
    /// The `apiId` shown in events; derived from the logical id when
    /// `None` (10 lower-case characters, stable across restarts).
    pub api_id: Option<String>,
    /// `Auth.Authorizers`.
    pub authorizers: Vec<AuthorizerConfig>,
    /// A path prefix (`/lambda-url/my-fn`, a base path mapping) that must be
    /// present and is stripped before route matching, so the event's
    /// `path` / `rawPath` do not show it. When set it replaces the stage
    /// prefixes as the API's only mount.
    pub base_path: Option<String>,
}

/// One authorizer of an API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerConfig {
    /// Its name under `Authorizers`.
    pub name: String,
    /// What it checks.
    pub kind: AuthorizerKind,
    /// Identity sources in API Gateway notation
    /// (`method.request.header.Authorization`, `$request.header.Authorization`).
    /// Empty: the `Authorization` header.
    pub identity_sources: Vec<String>,
    /// Result cache TTL (Lambda authorizers; 0 disables).
    pub ttl: Duration,
}

/// Authorizer kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizerKind {
    /// REST Cognito user-pool authorizer; the built-in pool stands in.
    Cognito,
    /// HTTP API JWT authorizer.
    Jwt {
        /// Required `iss`; `None`: the built-in issuer.
        issuer: Option<String>,
        /// Accepted `aud` / `client_id` values; empty accepts any.
        audience: Vec<String>,
    },
    /// Lambda authorizer.
    Lambda {
        /// Function (pool name) to call.
        function: String,
        /// REST `TOKEN` (true) or `REQUEST`.
        token: bool,
        /// HTTP API payload format `2.0` (else 1.0 / REST).
        payload_v2: bool,
        /// HTTP API simple responses.
        simple_responses: bool,
    },
    /// `AWS_IAM`: a SigV4 signature (service `execute-api`) with the box's
    /// credentials.
    Iam,
}

impl ApiConfig {
    /// An API with no stage name, CORS, binary types or variables.
    pub fn new(id: impl Into<String>, kind: ApiKind) -> Self {
        Self {
            id: id.into(),
            kind,
            stage_name: None,
            binary_media_types: Vec::new(),
            cors: None,
            stage_variables: BTreeMap::new(),
            api_id: None,
            authorizers: Vec::new(),
            base_path: None,
        }
    }
}

/// CORS settings. REST: the values are sent as configured (SAM's `Cors`
/// strings without their single quotes). HTTP API: origins are matched
/// against the request's `Origin`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsConfig {
    /// Allowed origins (`*`, `https://example.com`, `https://*.example.com`).
    pub allow_origins: Vec<String>,
    /// Allowed methods (`GET`, `POST`, `*`).
    pub allow_methods: Vec<String>,
    /// Allowed request headers (`content-type`, `*`).
    pub allow_headers: Vec<String>,
    /// Response headers exposed to the browser (HTTP API only).
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age` in seconds.
    pub max_age: Option<u64>,
    /// `Access-Control-Allow-Credentials: true`.
    pub allow_credentials: bool,
}

/// Event format sent to the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadVersion {
    /// REST proxy event (also HTTP API `PayloadFormatVersion: "1.0"`).
    V1,
    /// HTTP API payload format 2.0.
    V2,
}

/// What a route requires before the function runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RouteAuth {
    /// Open route.
    #[default]
    None,
    /// REST `ApiKeyRequired: true`.
    ApiKey,
    /// A named authorizer of the API.
    Authorizer(String),
}

/// One route: an `Api` / `HttpApi` event of a function.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Logical id of the API it belongs to.
    pub api_id: String,
    /// `GET`, `POST`, ... or `ANY` (upper or lower case).
    pub method: String,
    /// Path template (`/pets/{id}`, `/{proxy+}`), or `$default` for the
    /// HTTP API catch-all route.
    pub path: String,
    /// What the route runs.
    pub target: RouteTarget,
    /// Event format.
    pub payload_version: PayloadVersion,
    /// Authorizer (or API key only).
    pub auth: RouteAuth,
    /// An API key is required (also together with an authorizer).
    pub api_key_required: bool,
    /// `AuthorizationScopes` of the route.
    pub scopes: Vec<String>,
}

/// What a route's integration runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// A function (name as registered in the pool).
    Function(String),
    /// Nothing ESB can run (the integration names a function not in the
    /// template, or an integration type ESB does not run): answered with
    /// `status` and API Gateway's `{"message": message}`, the reason logged
    /// at warn once per request.
    Unavailable {
        /// HTTP status (500 for both cases above).
        status: u16,
        /// The `message` of the body.
        message: String,
    },
}

impl RouteTarget {
    /// The function, when the route runs one.
    pub fn function(&self) -> Option<&str> {
        match self {
            Self::Function(name) => Some(name),
            Self::Unavailable { .. } => None,
        }
    }
}

/// Gateway-wide limits and the identity values shown in events.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// `requestContext.accountId`.
    pub account_id: String,
    /// Region used in ARNs.
    pub region: String,
    /// Integration timeout (API Gateway: 29 s); the function's own timeout
    /// applies when lower.
    pub integration_timeout: Duration,
    /// Largest request body (API Gateway: 10 MB).
    pub max_body_bytes: usize,
    /// Serve REST routes without their stage prefix too (as
    /// `sam local start-api` does).
    pub rest_unprefixed: bool,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Path of the login endpoint (POST, guarded by an API key).
    pub login_path: String,
    /// Listener timeouts and connection cap (robustness H10/H11).
    pub listener: esb_net::Limits,
    /// Most header lines of a request (robustness H1: 431 past it).
    pub max_headers: usize,
    /// Most bytes of request line plus headers (robustness H1: 414 when
    /// the request line alone is over it, else 431).
    pub max_head_bytes: usize,
}

impl GatewaySettings {
    /// `arn:aws:lambda:{region}:{account}:function:{name}`.
    pub fn function_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{name}",
            self.region, self.account_id
        )
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            account_id: "123456789012".to_string(),
            region: "us-east-1".to_string(),
            integration_timeout: Duration::from_secs(29),
            max_body_bytes: 10 * 1024 * 1024,
            rest_unprefixed: true,
            drain_timeout: Duration::from_secs(30),
            login_path: esb_auth::DEFAULT_LOGIN_PATH.to_string(),
            listener: esb_net::Limits::default(),
            max_headers: 100,
            max_head_bytes: 10_240,
        }
    }
}

/// A stable 10-character API id derived from a logical id (FNV-1a, base36),
/// so URLs and events do not change across restarts.
pub(crate) fn derive_api_id(logical_id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in logical_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(10);
    for _ in 0..10 {
        out.push(char::from(ALPHABET[(hash % 36) as usize]));
        hash /= 36;
        // Re-mix so the tail is not all zeros for short hashes.
        hash = hash.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
    }
    out
}
