//! JWT authorizers: REST Cognito user-pool authorizers (the built-in user
//! pool stands in) and HTTP API JWT authorizers. Keys come only from local
//! config (robustness A1-A6); a route's `AuthorizationScopes` need one of
//! the token's scopes.

use serde_json::{Map, Value, json};

use esb_auth::{Auth, Rules};

use super::{RouteRequest, identity, now_unix};
use crate::config::{AuthorizerConfig, AuthorizerKind};
use crate::error::Rejection;

/// Verifies the token; `Ok` is `requestContext.authorizer`.
pub(crate) fn check(
    auth: &Auth,
    authorizer: &AuthorizerConfig,
    req: &RouteRequest<'_, '_, '_, '_>,
) -> Result<Value, Rejection> {
    let request_id = req.ctx.request_id;
    let refuse = |why: &dyn std::fmt::Display| {
        tracing::info!(request_id, authorizer = %authorizer.name, source = %req.ctx.peer.ip(), "unauthorized: {why}");
        Rejection::Unauthorized { bearer: true }
    };
    let Some(values) = identity::values(&authorizer.identity_sources, req) else {
        return Err(refuse(&"identity source missing"));
    };
    let token = values.first().map(String::as_str).unwrap_or_default();
    let scopes_required = &req.m.route.config.scopes;
    let (issuer, audiences, token_use): (&str, &[String], &[&str]) = match &authorizer.kind {
        AuthorizerKind::Jwt { issuer, audience } => {
            (issuer.as_deref().unwrap_or(auth.issuer()), audience, &[])
        }
        _ if scopes_required.is_empty() => (auth.issuer(), &[], &["id"]),
        _ => (auth.issuer(), &[], &["access"]),
    };
    let rules = Rules {
        issuer,
        audiences,
        token_use,
    };
    let claims = auth
        .verify_token(token, &rules, now_unix())
        .map_err(|e| refuse(&e))?;
    let scopes = esb_auth::jwt::scopes(&claims);
    if !scopes_required.is_empty() && !scopes_required.iter().any(|s| scopes.contains(s)) {
        tracing::info!(request_id, authorizer = %authorizer.name, "token lacks the route's scopes");
        return Err(Rejection::Forbidden);
    }
    Ok(match authorizer.kind {
        AuthorizerKind::Cognito => json!({"claims": esb_auth::claims_as_strings(&claims)}),
        _ => json!({"jwt": {
            "claims": string_claims(&claims),
            "scopes": if scopes.is_empty() { Value::Null } else { json!(scopes) },
        }}),
    })
}

fn string_claims(claims: &Map<String, Value>) -> Map<String, Value> {
    claims
        .iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => Value::String(s.clone()),
                other => Value::String(other.to_string()),
            };
            (k.clone(), s)
        })
        .collect()
}
