//! Auth on the request path, one check per file:
//!
//! | file | checks |
//! |---|---|
//! | `api_key.rs` | `x-api-key` with the brute-force brake (routes, login) |
//! | `jwt.rs` | Cognito user-pool and HTTP API JWT authorizers |
//! | `lambda.rs` | Lambda `TOKEN` / `REQUEST` authorizers, their cache and policies |
//! | `lambda_event.rs` | the event a Lambda authorizer receives |
//! | `identity.rs` | identity sources (`method.request.header.X`, `$request.querystring.q`...) |
//! | `sigv4.rs` | `AWS_IAM` routes and the Invoke API's SigV4 check |
//!
//! This file decides which checks a route needs and collects what the
//! event shows ([`Granted`]). Never logs or echoes a token, key, signature
//! or cookie: log lines name the route and the reason only.

pub(crate) mod api_key;
mod identity;
mod jwt;
mod lambda;
mod lambda_event;
pub(crate) mod sigv4;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::config::RouteAuth;
use crate::context::Ctx;
use crate::error::Rejection;
use crate::query::Query;
use crate::router::RouteMatch;

/// What the integration event gets from a passed check.
#[derive(Debug, Default)]
pub(crate) struct Granted {
    /// `requestContext.authorizer`.
    pub authorizer: Option<Value>,
    /// `requestContext.identity.apiKey` (REST).
    pub api_key: Option<String>,
}

/// Seconds since the Unix epoch (token times).
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A routed request as the checks see it.
pub(crate) struct RouteRequest<'c, 'a, 'r, 'p> {
    pub ctx: &'c Ctx<'a>,
    pub m: &'c RouteMatch<'r, 'p>,
    pub query: &'c Query,
    pub body: &'c [u8],
}

/// Runs every check the route requires. `Ok` carries what the event shows.
pub(crate) async fn authorize(req: &RouteRequest<'_, '_, '_, '_>) -> Result<Granted, Rejection> {
    let config = &req.m.route.config;
    let needs_key = config.api_key_required || config.auth == RouteAuth::ApiKey;
    let name = match &config.auth {
        RouteAuth::Authorizer(n) if n != "NONE" => Some(n.as_str()),
        _ => None,
    };
    if !needs_key && name.is_none() {
        return Ok(Granted::default());
    }
    let Some(auth) = req.ctx.state.inner.auth.enforced() else {
        tracing::warn!(request_id = req.ctx.request_id, route = %req.m.route.route_key, "route needs auth but none is configured");
        return Err(if needs_key {
            Rejection::Forbidden
        } else {
            Rejection::Unauthorized { bearer: false }
        });
    };
    let mut granted = Granted::default();
    if needs_key {
        granted.api_key = Some(api_key::check(auth, req.ctx)?);
    }
    let Some(name) = name else {
        return Ok(granted);
    };
    if name == "AWS_IAM" {
        sigv4::check_route(auth, req)?;
        return Ok(granted);
    }
    let Some(authorizer) = req.m.api.config.authorizers.iter().find(|a| a.name == name) else {
        tracing::error!(
            request_id = req.ctx.request_id,
            authorizer = name,
            "route names an unknown authorizer"
        );
        return Err(Rejection::AuthorizerFailed);
    };
    use crate::config::AuthorizerKind as K;
    granted.authorizer = match &authorizer.kind {
        K::Cognito | K::Jwt { .. } => Some(jwt::check(auth, authorizer, req)?),
        K::Lambda { .. } => Some(lambda::check(auth, authorizer, req).await?),
        K::Iam => {
            sigv4::check_route(auth, req)?;
            None
        }
    };
    Ok(granted)
}
