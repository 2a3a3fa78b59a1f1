//! The event a Lambda authorizer receives: `TOKEN`, `REQUEST` payload 1.0
//! (REST and HTTP API) and `REQUEST` payload 2.0. Query parameters come
//! from the same parser as the integration event, so both see a value the
//! same.

use serde_json::{Map, Value, json};

use super::RouteRequest;
use crate::config::{AuthorizerConfig, AuthorizerKind};

/// Builds the authorizer's event.
pub(crate) fn build(
    authorizer: &AuthorizerConfig,
    req: &RouteRequest<'_, '_, '_, '_>,
    values: &[String],
    arn: &str,
) -> Value {
    let (token, payload_v2) = match &authorizer.kind {
        AuthorizerKind::Lambda {
            token, payload_v2, ..
        } => (*token, *payload_v2),
        _ => (false, false),
    };
    if token {
        return json!({"type": "TOKEN", "authorizationToken": values.first(), "methodArn": arn});
    }
    let parts = req.ctx.parts;
    let m = req.m;
    let mut headers = Map::new();
    for (k, v) in &parts.headers {
        if let Ok(v) = v.to_str() {
            headers.insert(k.as_str().to_string(), json!(v));
        }
    }
    let query: Map<String, Value> = req
        .query
        .0
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), json!(v.last()?))))
        .collect();
    let path_params: Map<String, Value> = m
        .path_params
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let source_ip = req.ctx.peer.ip().to_string();
    let request_context = json!({
        "accountId": req.ctx.state.inner.settings.account_id,
        "apiId": m.api.api_id,
        "stage": m.api.stage,
        "requestId": req.ctx.request_id,
        "routeKey": m.route.route_key,
        "http": {"method": parts.method.as_str(), "path": parts.uri.path(), "sourceIp": source_ip},
        "identity": {"sourceIp": source_ip},
        "resourcePath": m.route.resource,
        "httpMethod": parts.method.as_str(),
    });
    if payload_v2 {
        json!({
            "version": "2.0", "type": "REQUEST", "routeArn": arn, "identitySource": values,
            "routeKey": m.route.route_key, "rawPath": parts.uri.path(),
            "rawQueryString": parts.uri.query().unwrap_or(""),
            "headers": headers, "queryStringParameters": query, "pathParameters": path_params,
            "stageVariables": m.api.config.stage_variables, "requestContext": request_context,
        })
    } else {
        let joined = values.join(",");
        json!({
            "version": "1.0", "type": "REQUEST", "methodArn": arn,
            "identitySource": joined, "authorizationToken": joined,
            "resource": m.route.resource, "path": parts.uri.path(), "httpMethod": parts.method.as_str(),
            "headers": headers, "queryStringParameters": query, "pathParameters": path_params,
            "stageVariables": m.api.config.stage_variables, "requestContext": request_context,
        })
    }
}
