//! One request, start to end: the edge checks (`crate::edge`), parse the path, classify the request
//! (`crate::request`), hand it to the module for its kind, and add the
//! request-id header API Gateway sends.
//!
//! | kind | module |
//! |---|---|
//! | ESB's own endpoints | `own.rs` |
//! | Invoke API call | `invoke_api.rs` |
//! | routed API request | `api_request.rs` |
//! | nothing (CORS preflight or "no route") | here |

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};

use crate::GatewayState;
use crate::api_request;
use crate::config::ApiKind;
use crate::context::Ctx;
use crate::cors;
use crate::error::{Rejection, Shape};
use crate::invoke_api;
use crate::metrics::{self, Counted};
use crate::own;
use crate::request::{Classified, classify};
use crate::response::Body;
use crate::router::RequestPath;

/// Handles one request. `peer` is the client's address (`sourceIp`).
pub async fn handle<B>(state: &GatewayState, req: Request<B>, peer: SocketAddr) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = std::time::Instant::now();
    let request_id = crate::ids::new_v4().to_string();
    let (mut parts, body) = req.into_parts();
    let fallback = state.inner.router.first_kind();
    if let Err(rejection) = crate::edge::check(&parts, &state.inner.settings) {
        let r = rejection.clone().into_response(Shape::ApiGateway(fallback));
        let r = if rejection == Rejection::NoRoute {
            r
        } else {
            crate::edge::close(r, parts.version)
        };
        return with_id(r, fallback, &request_id);
    }
    crate::edge::strip_hop_by_hop(&mut parts.headers);
    let ctx = Ctx {
        state,
        parts: &parts,
        peer,
        request_id: &request_id,
    };
    let path = match RequestPath::parse(parts.uri.path()) {
        Ok(path) => path,
        Err(e) => {
            tracing::info!(%request_id, path = parts.uri.path(), "bad request path: {e}");
            let r = Rejection::BadRequest.into_response(Shape::ApiGateway(fallback));
            return with_id(r, fallback, &request_id);
        }
    };
    if let Some(call) = crate::control_plane::parse(&parts.method, parts.uri.path()) {
        let r = crate::control_plane::handle(&ctx, call);
        metrics::count(state, Counted::ControlPlane, r.status(), started);
        return r;
    }
    if let Some(op) = crate::cloudwatch_logs::operation(state, &parts) {
        let r = crate::cloudwatch_logs::handle(&ctx, op, body).await;
        metrics::count(state, Counted::Own, r.status(), started);
        return r;
    }
    match classify(state, &parts.method, &path) {
        Classified::Own(endpoint) => {
            let r = own::answer(&ctx, endpoint, body, fallback).await;
            metrics::count(state, Counted::Own, r.status(), started);
            r
        }
        Classified::Invoke(call) => {
            let r = invoke_api::handle(&ctx, call, body).await;
            metrics::count(state, Counted::Invoke, r.status(), started);
            r
        }
        Classified::Route(m) => {
            let kind = m.api.config.kind;
            let r = with_id(api_request::handle(&ctx, &m, body).await, kind, &request_id);
            metrics::count(state, Counted::Route(&m), r.status(), started);
            r
        }
        Classified::NoRoute(kind) => {
            let (r, kind) = unrouted(&ctx, &path, kind);
            metrics::count(state, Counted::None, r.status(), started);
            with_id(r, kind, &request_id)
        }
    }
}

/// No route: a CORS preflight for a path the API serves under other
/// methods, else API Gateway's "no route" answer.
fn unrouted(ctx: &Ctx<'_>, path: &RequestPath<'_>, kind: ApiKind) -> (Response<Body>, ApiKind) {
    let parts = ctx.parts;
    if parts.method == Method::OPTIONS
        && let Ok(owner) = ctx.state.inner.router.find(None, path)
        && let Some(cors_config) = &owner.api.config.cors
        && cors::is_preflight(owner.api.config.kind, &parts.method, &parts.headers)
    {
        let kind = owner.api.config.kind;
        return (cors::preflight(kind, cors_config, &parts.headers), kind);
    }
    tracing::debug!(request_id = ctx.request_id, method = %parts.method, path = parts.uri.path(), "no route");
    (
        Rejection::NoRoute.into_response(Shape::ApiGateway(kind)),
        kind,
    )
}

/// Adds the request-id header API Gateway sends for `kind`.
fn with_id(mut response: Response<Body>, kind: ApiKind, request_id: &str) -> Response<Body> {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        let name = match kind {
            ApiKind::Rest | ApiKind::FunctionUrl => "x-amzn-requestid",
            ApiKind::Http => "apigw-requestid",
        };
        response.headers_mut().insert(name, value);
    }
    response
}
