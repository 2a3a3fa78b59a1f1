//! The HTTP(S) front of ESB: API Gateway emulation and the Lambda Invoke
//! API on one listener.
//!
//! Owns route matching (path templates, `{proxy+}`, `ANY`, `$default`,
//! stages, several APIs), the REST proxy event (v1) and HTTP API payload
//! 2.0, response mapping, API Gateway's own error answers, CORS, the Lambda
//! Invoke API (`/2015-03-31/functions/{name}/invocations`), TLS, and
//! graceful shutdown of the listener.
//!
//! Must not: know how workers are started (it only calls [`Invoker`], which
//! the [`esb_pool::Pool`] implements), or depend on the template model's
//! layout (the CLI converts the model into [`GatewayConfig`]).
//!
//! Where each concern lives (docs/gateway.md has the same table):
//!
//! | concern | file |
//! |---|---|
//! | listener, TLS, HTTP/1.1 + HTTP/2, drain | `server.rs`, `tls.rs` |
//! | one request start to end | `pipeline.rs` |
//! | checks every request passes first, hop-by-hop headers | `edge.rs` |
//! | what every step reads (`Ctx`, `ConnInfo`) | `context.rs` |
//! | what a request is (own endpoint, Invoke API, route) | `request.rs` |
//! | ESB's own endpoints (`/_esb/*`, JWKS, login) | `own.rs` |
//! | `/metrics` and per-route request counters | `metrics.rs` |
//! | the CloudWatch Logs API (`X-Amz-Target: Logs_20140328.*`) | `cloudwatch_logs.rs` |
//! | route matching | `router.rs` |
//! | a routed request's steps | `api_request.rs` |
//! | limits (body size, ambiguous headers) | `limits.rs` |
//! | auth (API keys, JWT, Lambda authorizers, SigV4) | `auth/` |
//! | CORS | `cors.rs` |
//! | query strings | `query.rs` |
//! | event v1 / 2.0 | `event.rs` |
//! | invoking the function for a route | `integration.rs` |
//! | response mapping | `response.rs` |
//! | every error answer (API Gateway and Lambda shapes) | `error.rs` |
//! | the Lambda Invoke API | `invoke_api.rs` |
//! | input types | `config.rs` |
#![forbid(unsafe_code)]

mod api_request;
mod auth;
mod cloudwatch_logs;
mod config;
mod context;
mod control_plane;
mod cors;
mod edge;
mod error;
mod event;
#[doc(hidden)]
pub mod fuzzing;
mod ids;
mod integration;
mod invoke_api;
mod invoke_events;
mod limits;
mod metrics;
mod own;
mod pipeline;
mod query;
mod request;
mod response;
mod router;
mod server;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;

use esb_pool::{Pool, PoolError};
use esb_runtimes_core::{FunctionSpec, Invocation, InvokeResult};

pub use config::{
    ApiConfig, ApiKind, AuthorizerConfig, AuthorizerKind, CorsConfig, GatewayAuth, GatewayConfig,
    GatewaySettings, PayloadVersion, RouteAuth, RouteConfig, RouteTarget,
};
pub use context::ConnInfo;
pub use error::{PayloadLimit, Rejection, Shape, SignatureRefusal};
pub use esb_net::Limits as ListenerLimits;
pub use invoke_events::QueueInvoker;
pub use limits::MAX_ASYNC_PAYLOAD;
pub use metrics::METRICS_PATH;
pub use own::{EVENTS_STATUS_PATH, HEALTH_PATH, STATUS_PATH};
pub use pipeline::handle;
pub use response::{Body, MalformedResponse};
pub use router::RouterError;
pub use server::serve;
pub use tls::{TlsConfig, TlsError};

/// Errors of the gateway as a whole.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The routes cannot be served.
    #[error("invalid gateway configuration: {0}")]
    Config(#[from] RouterError),
    /// Accepting connections failed for good.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// What the gateway calls to run a function. [`Pool`] implements it; tests
/// may pass their own.
#[async_trait::async_trait]
pub trait Invoker: Send + Sync + 'static {
    /// Runs one invocation of `function`.
    async fn invoke(
        &self,
        function: &str,
        invocation: Invocation,
    ) -> Result<InvokeResult, PoolError>;
    /// The spec of a registered function.
    fn function(&self, name: &str) -> Option<Arc<FunctionSpec>>;
    /// Functions and their workers as JSON, for `GET /_esb/status`.
    fn status_json(&self) -> Vec<u8> {
        b"[]".to_vec()
    }
    /// Every registered function (`ListFunctions`); none by default.
    fn functions(&self) -> Vec<Arc<FunctionSpec>> {
        Vec::new()
    }
}

#[async_trait::async_trait]
impl Invoker for Pool {
    async fn invoke(
        &self,
        function: &str,
        invocation: Invocation,
    ) -> Result<InvokeResult, PoolError> {
        Pool::invoke(self, function, invocation).await
    }

    fn functions(&self) -> Vec<Arc<FunctionSpec>> {
        Pool::functions(self)
    }

    fn function(&self, name: &str) -> Option<Arc<FunctionSpec>> {
        Pool::function(self, name)
    }

    fn status_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.status()).unwrap_or_else(|_| b"[]".to_vec())
    }
}

/// Everything a request needs: compiled routes, settings, the invoker.
/// Cheap to clone.
#[derive(Clone)]
pub struct GatewayState {
    inner: Arc<Inner>,
    /// Hooks of the app (helper `devloop`): routes swapped in by hot
    /// reload, and the per-request log line.
    hooks: Arc<Hooks>,
}

/// What the app may change while the gateway serves.
struct Hooks {
    /// Routes, APIs, auth and aliases in force: the ones the state was
    /// built with, then the last given to [`GatewayState::replace`]. Each
    /// new request loads it without a lock (`arc-swap`: one atomic load
    /// and a reference count, no reader ever waits for a reload).
    current: arc_swap::ArcSwap<Inner>,
    /// Called once per request with method, path, status and duration.
    on_request: std::sync::OnceLock<RequestObserver>,
    /// The web console under `/_esb/console` (helper `console`).
    console: std::sync::OnceLock<ConsoleHandler>,
    /// Its check of a request's head before any body is read.
    console_gate: std::sync::OnceLock<ConsoleGate>,
}

/// Answers a request under [`CONSOLE_PREFIX`] (body already read, at most
/// [`CONSOLE_BODY_LIMIT`] bytes) from the client at the address given.
pub type ConsoleHandler = Arc<
    dyn Fn(
            http::Request<bytes::Bytes>,
            std::net::SocketAddr,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = http::Response<bytes::Bytes>> + Send>,
        > + Send
        + Sync,
>;
/// Decides from a console request's head alone how much body it may send:
/// `Ok(limit)` (at most [`CONSOLE_BODY_LIMIT`]), or the answer to give
/// without reading the body at all (a caller that is not logged in never
/// gets to upload megabytes).
pub type ConsoleGate =
    Arc<dyn Fn(&http::request::Parts) -> Result<usize, http::Response<bytes::Bytes>> + Send + Sync>;
/// Path prefix of the web console.
pub const CONSOLE_PREFIX: &str = "/_esb/console";
/// Largest request body the console is given (uploads).
pub const CONSOLE_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Called after each request: method, path, status, time to the response
/// head.
pub type RequestObserver = Arc<dyn Fn(&http::Method, &str, u16, std::time::Duration) + Send + Sync>;

struct Inner {
    router: router::Router,
    settings: GatewaySettings,
    invoker: Arc<dyn Invoker>,
    auth: GatewayAuth,
    /// Alias -> canonical function name (Invoke API).
    function_aliases: HashMap<String, String>,
    /// The durable queue `Event` invocations go to (`None`: refused with 500).
    events: Option<Arc<esb_events::EventQueue>>,
    /// `/metrics` and route counters, once enabled (`metrics.rs`).
    metrics: metrics::Slot,
    /// The log store CloudWatch Logs calls read, once enabled.
    logs_dir: cloudwatch_logs::Slot,
}

impl GatewayState {
    /// A gateway over `pool`.
    pub fn new(config: GatewayConfig, pool: Pool) -> Result<Self, GatewayError> {
        Self::with_invoker(config, Arc::new(pool))
    }

    /// A gateway over `invoker` whose `Event` invocations go to `events`.
    pub fn with_event_queue(
        config: GatewayConfig,
        invoker: Arc<dyn Invoker>,
        events: Arc<esb_events::EventQueue>,
    ) -> Result<Self, GatewayError> {
        Self::build(config, invoker, Some(events))
    }

    /// A gateway over any [`Invoker`].
    pub fn with_invoker(
        config: GatewayConfig,
        invoker: Arc<dyn Invoker>,
    ) -> Result<Self, GatewayError> {
        Self::build(config, invoker, None)
    }

    fn build(
        config: GatewayConfig,
        invoker: Arc<dyn Invoker>,
        events: Option<Arc<esb_events::EventQueue>>,
    ) -> Result<Self, GatewayError> {
        let router = router::Router::new(&config)?;
        let inner = Arc::new(Inner {
            router,
            settings: config.settings,
            invoker,
            auth: config.auth,
            function_aliases: config.function_aliases,
            events,
            metrics: metrics::Slot::new(),
            logs_dir: cloudwatch_logs::Slot::new(),
        });
        Ok(Self {
            hooks: Arc::new(Hooks {
                current: arc_swap::ArcSwap::new(inner.clone()),
                on_request: std::sync::OnceLock::new(),
                console: std::sync::OnceLock::new(),
                console_gate: std::sync::OnceLock::new(),
            }),
            inner,
        })
    }

    /// The state a new request uses: the last configuration given to
    /// [`GatewayState::replace`] (on this state or a clone), else this one.
    pub fn current(&self) -> GatewayState {
        GatewayState {
            inner: self.hooks.current.load_full(),
            hooks: self.hooks.clone(),
        }
    }

    /// Serves `config` (routes, APIs, auth, aliases) from the next request
    /// on; in-flight requests finish on the configuration they started
    /// with. The invoker and event queue stay. An invalid configuration is
    /// refused and the old one kept.
    pub fn replace(&self, config: GatewayConfig) -> Result<(), GatewayError> {
        let router = router::Router::new(&config)?;
        let base = self.current();
        let inner = Arc::new(Inner {
            router,
            settings: config.settings,
            invoker: base.inner.invoker.clone(),
            auth: config.auth,
            function_aliases: config.function_aliases,
            events: base.inner.events.clone(),
            metrics: metrics::Slot::new(),
            logs_dir: base.inner.logs_dir.clone(),
        });
        // Metrics stay on across a reload, with counters for the new routes.
        GatewayState {
            inner: inner.clone(),
            hooks: self.hooks.clone(),
        }
        .carry_metrics_from(&base);
        self.hooks.current.store(inner);
        Ok(())
    }

    /// Sets the per-request observer (once; later calls are ignored).
    pub fn set_request_observer(&self, observer: RequestObserver) {
        let _ = self.hooks.on_request.set(observer);
    }

    /// Serves the web console under [`CONSOLE_PREFIX`] through `handler`
    /// (once; later calls are ignored).
    pub fn set_console(&self, handler: ConsoleHandler) {
        let _ = self.hooks.console.set(handler);
    }

    pub(crate) fn console(&self) -> Option<&ConsoleHandler> {
        self.hooks.console.get()
    }

    /// Checks console requests before their body is read (see
    /// [`ConsoleGate`]); without one, every console request may send up to
    /// [`CONSOLE_BODY_LIMIT`].
    pub fn set_console_gate(&self, gate: ConsoleGate) {
        let _ = self.hooks.console_gate.set(gate);
    }

    pub(crate) fn console_gate(&self) -> Option<&ConsoleGate> {
        self.hooks.console_gate.get()
    }

    pub(crate) fn request_observer(&self) -> Option<&RequestObserver> {
        self.hooks.on_request.get()
    }

    /// What runs the functions.
    pub fn invoker(&self) -> &Arc<dyn Invoker> {
        &self.inner.invoker
    }

    /// The settings in force.
    pub fn settings(&self) -> &GatewaySettings {
        &self.inner.settings
    }

    /// The durable `Event` queue, when set.
    pub fn event_queue(&self) -> Option<&Arc<esb_events::EventQueue>> {
        self.inner.events.as_ref()
    }
}
