//! Lambda authorizers: REST `TOKEN` and `REQUEST`, HTTP API payload 1.0 and
//! 2.0 (simple or IAM-policy responses). Decisions are cached per API,
//! authorizer and identity values for the authorizer's TTL (none without
//! identity sources), as API Gateway does.

use std::time::Instant;

use bytes::Bytes;
use serde_json::{Value, json};

use esb_auth::Auth;
use esb_auth::policy::{self, Decision};
use esb_runtimes_core::{Invocation, InvocationOutcome};

use super::{RouteRequest, identity, lambda_event};
use crate::config::{ApiKind, AuthorizerConfig, AuthorizerKind};
use crate::error::Rejection;

/// Runs (or recalls) the authorizer; `Ok` is `requestContext.authorizer`.
pub(crate) async fn check(
    auth: &Auth,
    authorizer: &AuthorizerConfig,
    req: &RouteRequest<'_, '_, '_, '_>,
) -> Result<Value, Rejection> {
    let AuthorizerKind::Lambda {
        token, payload_v2, ..
    } = &authorizer.kind
    else {
        return Err(Rejection::AuthorizerFailed);
    };
    let values = if !*token && authorizer.identity_sources.is_empty() {
        Some(Vec::new())
    } else {
        identity::values(&authorizer.identity_sources, req)
    };
    let Some(values) = values else {
        tracing::info!(request_id = req.ctx.request_id, authorizer = %authorizer.name, "identity source missing");
        return Err(Rejection::Unauthorized { bearer: false });
    };
    let arn = method_arn(req);
    let decision = decide(auth, authorizer, req, &values, &arn).await?;
    match policy::apply_policy(&decision, &arn) {
        Decision::Allow {
            principal_id,
            context,
            ..
        } => allowed(authorizer, req, *payload_v2, principal_id, context),
        Decision::Deny(kind) => {
            tracing::info!(request_id = req.ctx.request_id, authorizer = %authorizer.name, "denied by authorizer");
            Err(Rejection::Denied(kind))
        }
        Decision::Unauthorized => Err(Rejection::Unauthorized { bearer: false }),
    }
}

/// The cached decision, or a fresh one from the function (then cached).
async fn decide(
    auth: &Auth,
    authorizer: &AuthorizerConfig,
    req: &RouteRequest<'_, '_, '_, '_>,
    values: &[String],
    arn: &str,
) -> Result<Decision, Rejection> {
    let cache_key = (!values.is_empty()).then(|| {
        format!(
            "{}\u{0}{}\u{0}{}",
            req.m.api.api_id,
            authorizer.name,
            values.join("\u{0}")
        )
    });
    if let Some(d) = cache_key
        .as_ref()
        .and_then(|k| auth.cache.get(k, Instant::now()))
    {
        return Ok(d);
    }
    let event = lambda_event::build(authorizer, req, values, arn);
    let decision = call(authorizer, req, event)
        .await
        .ok_or(Rejection::AuthorizerFailed)?;
    if let Some(k) = cache_key {
        auth.cache
            .put(k, decision.clone(), authorizer.ttl, Instant::now());
    }
    Ok(decision)
}

/// `requestContext.authorizer` for an allowed request.
fn allowed(
    authorizer: &AuthorizerConfig,
    req: &RouteRequest<'_, '_, '_, '_>,
    payload_v2: bool,
    principal_id: Option<String>,
    context: serde_json::Map<String, Value>,
) -> Result<Value, Rejection> {
    if payload_v2 {
        return Ok(json!({ "lambda": context }));
    }
    let mut map = match policy::stringify_context(&context) {
        Ok(m) if req.m.api.config.kind == ApiKind::Rest => m,
        Ok(_) => context,
        Err(e) => {
            tracing::warn!(request_id = req.ctx.request_id, authorizer = %authorizer.name, "{e}");
            return Err(Rejection::AuthorizerFailed);
        }
    };
    if let Some(p) = principal_id {
        map.insert("principalId".into(), json!(p));
    }
    map.insert("integrationLatency".into(), json!(0));
    Ok(Value::Object(map))
}

fn method_arn(req: &RouteRequest<'_, '_, '_, '_>) -> String {
    let s = &req.ctx.state.inner.settings;
    let m = req.m;
    let path = m.path_without_stage.trim_start_matches('/');
    format!(
        "arn:aws:execute-api:{}:{}:{}/{}/{}/{}",
        s.region, s.account_id, m.api.api_id, m.api.stage, req.ctx.parts.method, path
    )
}

/// Invokes the authorizer function; `None` when it failed or answered
/// something unusable (API Gateway: 500).
async fn call(
    authorizer: &AuthorizerConfig,
    req: &RouteRequest<'_, '_, '_, '_>,
    event: Value,
) -> Option<Decision> {
    let AuthorizerKind::Lambda {
        function,
        payload_v2,
        simple_responses,
        ..
    } = &authorizer.kind
    else {
        return None;
    };
    let state = req.ctx.state;
    let request_id = req.ctx.request_id;
    let s = &state.inner.settings;
    let invocation = Invocation {
        request_id: uuid::Uuid::new_v4().to_string(),
        payload: Bytes::from(event.to_string()),
        invoked_function_arn: s.function_arn(function),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
        timeout: Some(s.integration_timeout),
    };
    let result = match state.inner.invoker.invoke(function, invocation).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(request_id, function, "authorizer invoke failed: {e}");
            return None;
        }
    };
    let payload = match result.outcome {
        InvocationOutcome::Success(p) => p,
        InvocationOutcome::Error { payload, .. } => {
            // `raise Exception("Unauthorized")` is API Gateway's 401.
            let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
            if v.get("errorMessage").and_then(Value::as_str) == Some("Unauthorized") {
                return Some(Decision::Unauthorized);
            }
            tracing::warn!(request_id, function, "authorizer failed");
            return None;
        }
    };
    let Ok(v) = serde_json::from_slice::<Value>(&payload) else {
        tracing::warn!(request_id, function, "authorizer returned non-JSON");
        return None;
    };
    if v.as_str() == Some("Unauthorized") {
        return Some(Decision::Unauthorized);
    }
    let parsed = if *simple_responses && *payload_v2 {
        policy::parse_simple_response(&v)
    } else {
        policy::parse_policy_response(&v)
    };
    parsed
        .map_err(|e| tracing::warn!(request_id, function, "{e}"))
        .ok()
}
