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
//! | what a request is (own endpoint, Invoke API, route) | `request.rs` |
//! | ESB's own endpoints (`/_esb/*`, JWKS, login) | `own.rs` |
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
mod config;
mod control_plane;
mod cors;
mod error;
mod event;
mod integration;
mod invoke_api;
mod limits;
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
use std::time::Duration;

use esb_pool::{Pool, PoolError};
use esb_runtimes_core::{FunctionSpec, Invocation, InvokeResult};
use tokio::sync::Semaphore;

pub use config::{
    ApiConfig, ApiKind, AuthorizerConfig, AuthorizerKind, CorsConfig, GatewayAuth, GatewayConfig,
    GatewaySettings, PayloadVersion, RouteAuth, RouteConfig, RouteTarget,
};
pub use error::{PayloadLimit, Rejection, Shape, SignatureRefusal};
pub use limits::MAX_ASYNC_PAYLOAD;
pub use own::{HEALTH_PATH, STATUS_PATH};
pub use pipeline::handle;
pub use request::ConnInfo;
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
}

struct Inner {
    router: router::Router,
    settings: GatewaySettings,
    invoker: Arc<dyn Invoker>,
    auth: GatewayAuth,
    /// Alias -> canonical function name (Invoke API).
    function_aliases: HashMap<String, String>,
    /// Permits for background (`Event`) invocations.
    async_permits: Arc<Semaphore>,
}

impl GatewayState {
    /// A gateway over `pool`.
    pub fn new(config: GatewayConfig, pool: Pool) -> Result<Self, GatewayError> {
        Self::with_invoker(config, Arc::new(pool))
    }

    /// A gateway over any [`Invoker`].
    pub fn with_invoker(
        config: GatewayConfig,
        invoker: Arc<dyn Invoker>,
    ) -> Result<Self, GatewayError> {
        let router = router::Router::new(&config)?;
        let permits = config.settings.max_async_in_flight.max(1);
        Ok(Self {
            inner: Arc::new(Inner {
                router,
                settings: config.settings,
                invoker,
                auth: config.auth,
                function_aliases: config.function_aliases,
                async_permits: Arc::new(Semaphore::new(permits)),
            }),
        })
    }

    /// What runs the functions.
    pub fn invoker(&self) -> &Arc<dyn Invoker> {
        &self.inner.invoker
    }

    /// The settings in force.
    pub fn settings(&self) -> &GatewaySettings {
        &self.inner.settings
    }

    /// Background invocations still running.
    pub fn async_in_flight(&self) -> usize {
        self.inner.settings.max_async_in_flight.max(1)
            - self.inner.async_permits.available_permits()
    }

    /// Waits (at most `timeout`) until no background invocation runs.
    /// Returns false when some were still running.
    pub async fn drain_async(&self, timeout: Duration) -> bool {
        let all = u32::try_from(self.inner.settings.max_async_in_flight.max(1)).unwrap_or(u32::MAX);
        matches!(
            tokio::time::timeout(timeout, self.inner.async_permits.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }
}
