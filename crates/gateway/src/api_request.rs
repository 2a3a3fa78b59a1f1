//! A routed API request, one step per concern in this order: CORS
//! preflight (`crate::cors`), limits (`crate::limits`), auth
//! (`crate::auth`), the integration (`crate::integration`), then CORS
//! headers on the function's answer and the request-id header.

use bytes::Bytes;
use http::Response;

use crate::auth::{self, RouteRequest};
use crate::context::Ctx;
use crate::cors;
use crate::error::{PayloadLimit, Rejection, Shape};
use crate::integration;
use crate::limits::{self, BodyError};
use crate::query::Query;
use crate::response::Body;
use crate::router::RouteMatch;

/// Handles a request that matched a route.
pub(crate) async fn handle<B>(ctx: &Ctx<'_>, m: &RouteMatch<'_, '_>, body: B) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let kind = m.api.config.kind;
    let parts = ctx.parts;
    if let Some(cors_config) = &m.api.config.cors
        && cors::is_preflight(kind, &parts.method, &parts.headers)
        && (kind.is_http_like() || m.route.method.as_ref() != Some(&http::Method::OPTIONS))
    {
        return cors::preflight(kind, cors_config, &parts.headers);
    }
    let body = match read(ctx, body).await {
        Ok(body) => body,
        Err(rejection) => return rejection.into_response(Shape::ApiGateway(kind)),
    };
    let query = Query::parse(parts.uri.query().unwrap_or(""));
    let req = RouteRequest {
        ctx,
        m,
        query: &query,
        body: &body,
    };
    let granted = match auth::authorize(&req).await {
        Ok(granted) => granted,
        Err(rejection) => return rejection.into_response(Shape::ApiGateway(kind)),
    };
    let mut response = integration::run(&req, &granted)
        .await
        .unwrap_or_else(|rejection| rejection.into_response(Shape::ApiGateway(kind)));
    if let Some(cors_config) = &m.api.config.cors {
        cors::apply(kind, cors_config, &parts.headers, response.headers_mut());
    }
    response
}

/// The request's body, bounded (identity headers were checked by
/// `crate::edge`).
async fn read<B>(ctx: &Ctx<'_>, body: B) -> Result<Bytes, Rejection>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let request_id = ctx.request_id;
    let max_body = ctx.state.inner.settings.max_body_bytes;
    limits::read_body(&ctx.parts.headers, body, max_body)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { .. } => Rejection::TooLarge(PayloadLimit::Body),
            BodyError::Read(e) => {
                tracing::info!(request_id, "reading request body failed: {e}");
                Rejection::BadRequest
            }
        })
}
