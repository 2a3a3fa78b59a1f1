//! ESB's own endpoints on the gateway's listener: health, worker status,
//! JWKS, OpenID configuration and the login endpoint (guarded by the API
//! key). JWKS, OpenID and login exist only when auth is enforced.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

use crate::GatewayState;
use crate::auth;
use crate::context::{ConnInfo, Ctx};
use crate::error::{PayloadLimit, Rejection, Shape, json_response};
use crate::limits::{self, LOGIN_BODY_LIMIT};
use crate::response::Body;

/// ESB's health endpoint (answers `ok`).
pub const HEALTH_PATH: &str = "/_esb/health";
/// Workers per function as JSON (`esb ps`).
pub const STATUS_PATH: &str = "/_esb/status";
/// The `Event` queue's depth, oldest age and counts as JSON (`esb ps`).
pub const EVENTS_STATUS_PATH: &str = "/_esb/status/events";
/// JWKS path.
pub(crate) const JWKS_PATH: &str = "/.well-known/jwks.json";
/// OpenID configuration path.
pub(crate) const OPENID_PATH: &str = "/.well-known/openid-configuration";

/// One of ESB's own endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnEndpoint {
    Health,
    Status,
    EventsStatus,
    Jwks,
    OpenId,
    Login,
    /// `/metrics` (`metrics.rs`).
    Metrics,
    /// The web console (`esb-console`, installed by the app).
    Console,
}

/// Which own endpoint `method` and `path` name, if any.
pub(crate) fn recognise(state: &GatewayState, method: &Method, path: &str) -> Option<OwnEndpoint> {
    let get = *method == Method::GET;
    match path {
        HEALTH_PATH if get || *method == Method::HEAD => return Some(OwnEndpoint::Health),
        STATUS_PATH if get => return Some(OwnEndpoint::Status),
        EVENTS_STATUS_PATH if get => return Some(OwnEndpoint::EventsStatus),
        crate::metrics::METRICS_PATH if get && state.metrics_enabled() => {
            return Some(OwnEndpoint::Metrics);
        }
        p if state.console().is_some()
            && p.strip_prefix(crate::CONSOLE_PREFIX)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')) =>
        {
            return Some(OwnEndpoint::Console);
        }
        _ => {}
    }
    state.inner.auth.enforced()?;
    match path {
        JWKS_PATH if get => Some(OwnEndpoint::Jwks),
        OPENID_PATH if get => Some(OwnEndpoint::OpenId),
        p if p == state.inner.settings.login_path && *method == Method::POST => {
            Some(OwnEndpoint::Login)
        }
        _ => None,
    }
}

/// Answers an own endpoint. `fallback` is the API kind whose error shape
/// login refusals use.
pub(crate) async fn answer<B>(
    ctx: &Ctx<'_>,
    endpoint: OwnEndpoint,
    body: B,
    fallback: crate::config::ApiKind,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let state = ctx.state;
    match endpoint {
        OwnEndpoint::Health => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        }
        OwnEndpoint::Status => json_response(StatusCode::OK, state.invoker().status_json()),
        OwnEndpoint::EventsStatus => {
            let stats = state.event_queue().map(|q| q.stats()).unwrap_or_default();
            json_response(
                StatusCode::OK,
                serde_json::to_vec(&stats).unwrap_or_else(|_| b"{}".to_vec()),
            )
        }
        OwnEndpoint::Metrics => crate::metrics::answer(ctx, fallback),
        OwnEndpoint::Console => console(ctx, body, fallback).await,
        OwnEndpoint::Jwks | OwnEndpoint::OpenId | OwnEndpoint::Login => {
            let Some(auth) = state.inner.auth.enforced() else {
                return Rejection::NoRoute.into_response(Shape::ApiGateway(fallback));
            };
            match endpoint {
                OwnEndpoint::Jwks => json_response(StatusCode::OK, auth.jwks_json()),
                OwnEndpoint::OpenId => {
                    let scheme = if ctx.tls() { "https" } else { "http" };
                    // `Host` (HTTP/1.1), else the `:authority` (HTTP/2),
                    // else the address the request came in on: the port is
                    // always named.
                    let local = ctx.parts.extensions.get::<ConnInfo>().map(|c| c.local);
                    let host = ctx
                        .header("host")
                        .map(str::to_string)
                        .or_else(|| ctx.parts.uri.authority().map(|a| a.to_string()))
                        .or_else(|| local.map(|a| a.to_string()))
                        .unwrap_or_else(|| "localhost".to_string());
                    let base = format!("{scheme}://{host}");
                    json_response(StatusCode::OK, auth.openid_configuration(&base))
                }
                _ => login(ctx, auth, body)
                    .await
                    .unwrap_or_else(|r| r.into_response(Shape::ApiGateway(fallback))),
            }
        }
    }
}

/// Hands a console request, body read, to the handler the app installed.
async fn console<B>(ctx: &Ctx<'_>, body: B, fallback: crate::config::ApiKind) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(handler) = ctx.state.console() else {
        return Rejection::NoRoute.into_response(Shape::ApiGateway(fallback));
    };
    let limit = match ctx.state.console_gate() {
        Some(gate) => match gate(ctx.parts) {
            Ok(limit) => limit.min(crate::CONSOLE_BODY_LIMIT),
            Err(answer) => return answer.map(Full::new),
        },
        None => crate::CONSOLE_BODY_LIMIT,
    };
    let Ok(body) = limits::read_body(&ctx.parts.headers, body, limit).await else {
        return Rejection::TooLarge(PayloadLimit::Body).into_response(Shape::ApiGateway(fallback));
    };
    let mut req = http::Request::new(body);
    *req.method_mut() = ctx.parts.method.clone();
    *req.uri_mut() = ctx.parts.uri.clone();
    *req.headers_mut() = ctx.parts.headers.clone();
    handler(req, ctx.peer).await.map(Full::new)
}

/// `POST {login_path}`: API key first, then user and password.
async fn login<B>(
    ctx: &Ctx<'_>,
    auth: &Arc<esb_auth::Auth>,
    body: B,
) -> Result<Response<Body>, Rejection>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body = limits::read_body(&ctx.parts.headers, body, LOGIN_BODY_LIMIT)
        .await
        .map_err(|_| Rejection::TooLarge(PayloadLimit::Body))?;
    auth::api_key::check(auth, ctx)?;
    let peer = ctx.peer.ip();
    // Argon2 and the users file: off the async threads.
    let blocking = Arc::clone(auth);
    let now = Instant::now();
    let out =
        tokio::task::spawn_blocking(move || blocking.login(&body, peer, auth::now_unix(), now))
            .await
            .map_err(|e| {
                tracing::error!(request_id = ctx.request_id, "login task failed: {e}");
                Rejection::AuthorizerFailed
            })?;
    let mut r = json_response(
        StatusCode::from_u16(out.status).unwrap_or(StatusCode::BAD_REQUEST),
        out.body,
    );
    if let Some(secs) = out.retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if out.status != 200 {
        tracing::info!(source = %peer, status = out.status, "login refused");
    }
    Ok(r)
}
