//! `GET /metrics` (Prometheus text, `esb-metrics`) and the gateway's
//! per-route request counters.
//!
//! Route counters are created once per compiled route when metrics are
//! enabled ([`GatewayState::enable_metrics`]) and found by the route's
//! position in its API, so counting a request is one slice index and two
//! atomic adds. Requests that match no route are counted under
//! `api="_esb"` with `route` = `own` (ESB's endpoints), `invoke` (Lambda
//! Invoke API), `control_plane` or `none`.
//!
//! Who may scrape: with the box's auth enforced, the scraper presents one
//! of the box's API keys (`x-api-key: KEY` or `Authorization: Bearer KEY`,
//! Prometheus's `authorization` / `bearer_token`), unless the operator set
//! `metrics_public`.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use esb_metrics::{Metrics, RouteCounters};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::GatewayState;
use crate::context::Ctx;
use crate::error::{Rejection, Shape};
use crate::response::Body;
use crate::router::{Route, RouteMatch};

/// Path of the Prometheus endpoint.
pub const METRICS_PATH: &str = "/metrics";

/// The gateway's metrics: the registry and the route counters.
pub(crate) struct GatewayMetrics {
    registry: Arc<Metrics>,
    /// `[api index][route index]`.
    routes: Vec<Vec<Arc<RouteCounters>>>,
    own: Arc<RouteCounters>,
    invoke: Arc<RouteCounters>,
    control_plane: Arc<RouteCounters>,
    none: Arc<RouteCounters>,
    public: bool,
}

/// What a request turned out to be, for its counter.
pub(crate) enum Counted<'a> {
    Route(&'a RouteMatch<'a, 'a>),
    Own,
    Invoke,
    ControlPlane,
    None,
}

pub(crate) type Slot = OnceLock<GatewayMetrics>;

impl GatewayState {
    /// Serves `GET /metrics` from `registry` and counts requests per route
    /// into it. `public`: scrapers need no API key. A second call is
    /// ignored.
    pub fn enable_metrics(&self, registry: Arc<Metrics>, public: bool) {
        let inner = &self.inner;
        let routes: Vec<Vec<Arc<RouteCounters>>> = inner
            .router
            .apis
            .iter()
            .map(|api| {
                api.routes
                    .iter()
                    .map(|r| {
                        Arc::new(RouteCounters::new(
                            api.config.id.clone(),
                            r.route_key.clone(),
                        ))
                    })
                    .collect()
            })
            .collect();
        let special = |name: &str| Arc::new(RouteCounters::new("_esb", name));
        let m = GatewayMetrics {
            registry,
            routes,
            own: special("own"),
            invoke: special("invoke"),
            control_plane: special("control_plane"),
            none: special("none"),
            public,
        };
        let mut all: Vec<Arc<RouteCounters>> = m.routes.iter().flatten().cloned().collect();
        all.extend([
            m.own.clone(),
            m.invoke.clone(),
            m.control_plane.clone(),
            m.none.clone(),
        ]);
        m.registry.set_routes(all);
        let _ = inner.metrics.set(m);
    }

    /// Enables metrics on this (new, reloaded) state as they were on
    /// `old`: same registry and scraper rule, route counters for this
    /// state's routes.
    pub(crate) fn carry_metrics_from(&self, old: &GatewayState) {
        if let Some(m) = old.inner.metrics.get() {
            self.enable_metrics(m.registry.clone(), m.public);
        }
    }

    /// Whether `/metrics` is served.
    pub(crate) fn metrics_enabled(&self) -> bool {
        self.inner.metrics.get().is_some()
    }
}

/// Counts one answered request (nothing when metrics are off).
pub(crate) fn count(state: &GatewayState, what: Counted<'_>, status: StatusCode, started: Instant) {
    let Some(m) = state.inner.metrics.get() else {
        return;
    };
    let counters = match what {
        Counted::Route(rm) => route_counters(m, rm).unwrap_or(&m.none),
        Counted::Own => &m.own,
        Counted::Invoke => &m.invoke,
        Counted::ControlPlane => &m.control_plane,
        Counted::None => &m.none,
    };
    counters.record(status.as_u16(), started.elapsed());
}

/// The route's counters, by its position in its API's route list.
fn route_counters<'m>(
    m: &'m GatewayMetrics,
    rm: &RouteMatch<'_, '_>,
) -> Option<&'m Arc<RouteCounters>> {
    let routes = &rm.api.routes;
    let base = routes.as_ptr() as usize;
    let at = rm.route as *const Route as usize;
    let size = std::mem::size_of::<Route>().max(1);
    let index = at.checked_sub(base)? / size;
    m.routes.get(rm.api.index)?.get(index)
}

/// `GET /metrics`.
pub(crate) fn answer(ctx: &Ctx<'_>, fallback: crate::config::ApiKind) -> Response<Body> {
    let Some(m) = ctx.state.inner.metrics.get() else {
        return Rejection::NoRoute.into_response(Shape::ApiGateway(fallback));
    };
    if !m.public
        && let Some(auth) = ctx.state.inner.auth.enforced()
        && let Err(rejection) = check_key(auth, ctx)
    {
        return rejection.into_response(Shape::ApiGateway(fallback));
    }
    let mut r = Response::new(Full::new(Bytes::from(m.registry.render())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    *r.status_mut() = StatusCode::OK;
    r
}

/// One of the box's API keys, as `x-api-key` or a bearer token, with the
/// same failed-attempt limit as every other key check.
fn check_key(auth: &esb_auth::Auth, ctx: &Ctx<'_>) -> Result<(), Rejection> {
    let now = std::time::Instant::now();
    let source = ctx.peer.ip();
    if let Some(retry_after) = auth.limiter.check(source, now) {
        return Err(Rejection::TooManyAttempts { retry_after });
    }
    let presented = ctx.header("x-api-key").or_else(|| {
        ctx.header("authorization")
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
    });
    if auth.check_api_key(presented) {
        return Ok(());
    }
    if let Some(retry_after) = auth.limiter.failure(source, now) {
        return Err(Rejection::TooManyAttempts { retry_after });
    }
    Err(Rejection::Forbidden)
}
