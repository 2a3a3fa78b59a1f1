//! Auth enforcement on the request path: API keys, Cognito / JWT / Lambda /
//! IAM authorizers for routes, SigV4 for the Invoke API, and ESB's own
//! endpoints (login, JWKS, OpenID configuration).
//!
//! Never logs or echoes a token, key, signature or cookie: log lines name
//! the route and the reason only.

// `Err` carries the finished response; it is built once per refused request,
// so boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Response, StatusCode};
use serde_json::{Map, Value, json};

use esb_auth::policy::{self, Decision, DenyKind};
use esb_auth::{Auth, Rules};
use esb_runtimes_core::{Invocation, InvocationOutcome};

use crate::GatewayState;
use crate::config::{ApiKind, AuthorizerConfig, AuthorizerKind, RouteAuth};
use crate::handler::json_response;
use crate::response::Body;
use crate::router::RouteMatch;

/// JWKS path.
pub(crate) const JWKS_PATH: &str = "/.well-known/jwks.json";
/// OpenID configuration path.
pub(crate) const OPENID_PATH: &str = "/.well-known/openid-configuration";

/// What the integration event gets from a passed check.
#[derive(Debug, Default)]
pub(crate) struct Granted {
    /// `requestContext.authorizer`.
    pub authorizer: Option<Value>,
    /// `requestContext.identity.apiKey` (REST).
    pub api_key: Option<String>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn unauthorized(bearer: bool) -> Response<Body> {
    let mut r = json_response(StatusCode::UNAUTHORIZED, r#"{"message":"Unauthorized"}"#);
    if bearer {
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="invalid_token""#),
        );
    }
    r
}

fn forbidden() -> Response<Body> {
    json_response(StatusCode::FORBIDDEN, r#"{"message":"Forbidden"}"#)
}

fn too_many(retry_after: u64) -> Response<Body> {
    let mut r = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        r#"{"message":"Too Many Requests"}"#,
    );
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        r.headers_mut().insert(RETRY_AFTER, v);
    }
    r
}

fn internal(kind: ApiKind) -> Response<Body> {
    let _ = kind;
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        r#"{"message":"Internal server error"}"#,
    )
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn header<'a>(parts: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks the API key with the brute-force brake. `Err` is the answer.
fn check_api_key(
    auth: &Auth,
    parts: &http::request::Parts,
    peer: SocketAddr,
) -> Result<String, Response<Body>> {
    let now = Instant::now();
    if let Some(secs) = auth.limiter.check(peer.ip(), now) {
        return Err(too_many(secs));
    }
    let presented = header(parts, "x-api-key");
    if auth.check_api_key(presented) {
        return Ok(presented.unwrap_or_default().to_string());
    }
    if let Some(secs) = auth.limiter.failure(peer.ip(), now) {
        return Err(too_many(secs));
    }
    Err(forbidden())
}

/// ESB's own auth endpoints; `None` when `path` is none of them.
pub(crate) fn own_endpoint(
    state: &GatewayState,
    parts: &http::request::Parts,
    body: Option<&Bytes>,
    peer: SocketAddr,
) -> Option<Response<Body>> {
    let auth = state.inner.auth.as_ref()?;
    let path = parts.uri.path();
    if parts.method == Method::GET && path == JWKS_PATH {
        return Some(json_response(StatusCode::OK, auth.jwks_json()));
    }
    if parts.method == Method::GET && path == OPENID_PATH {
        let scheme = match parts.extensions.get::<crate::handler::ConnInfo>() {
            Some(c) if c.tls => "https",
            _ => "http",
        };
        let host = header(parts, "host").unwrap_or("localhost");
        let base = format!("{scheme}://{host}");
        return Some(json_response(
            StatusCode::OK,
            auth.openid_configuration(&base),
        ));
    }
    if path == state.inner.settings.login_path && parts.method == Method::POST {
        if let Err(r) = check_api_key(auth, parts, peer) {
            return Some(r);
        }
        let body = body.map_or(&b""[..], |b| b.as_ref());
        let out = auth.login(body, peer.ip(), now_unix(), Instant::now());
        let mut r = json_response(
            StatusCode::from_u16(out.status).unwrap_or(StatusCode::BAD_REQUEST),
            out.body,
        );
        if let Some(secs) = out.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            r.headers_mut().insert(RETRY_AFTER, v);
        }
        if out.status != 200 {
            tracing::info!(source = %peer.ip(), status = out.status, "login refused");
        }
        return Some(r);
    }
    None
}

/// Whether `path` is the login endpoint (the handler reads the body first).
pub(crate) fn is_login(state: &GatewayState, parts: &http::request::Parts) -> bool {
    state.inner.auth.is_some()
        && parts.method == Method::POST
        && parts.uri.path() == state.inner.settings.login_path
}

/// The Invoke API's check: SigV4 (service `lambda`) with the box's
/// credentials, except unsigned loopback calls in dev mode. `Err` is the
/// answer (Lambda's error shapes).
pub(crate) fn check_invoke(
    state: &GatewayState,
    parts: &http::request::Parts,
    body: &[u8],
    peer: SocketAddr,
    request_id: &str,
) -> Result<(), Response<Body>> {
    let Some(auth) = state.inner.auth.as_ref() else {
        return Ok(());
    };
    let signed = parts.headers.contains_key(AUTHORIZATION)
        || parts
            .uri
            .query()
            .is_some_and(|q| q.contains("X-Amz-Signature="));
    if !signed && auth.dev() && is_loopback(peer.ip()) {
        return Ok(());
    }
    let result = verify_sigv4(auth, parts, body).and_then(|v| v.require_service("lambda"));
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            use esb_sigv4::SigV4Error as E;
            tracing::info!(request_id, source = %peer.ip(), "invoke api signature refused: {e}");
            let (code, message) = match e {
                E::Missing => (
                    "MissingAuthenticationTokenException",
                    "Missing Authentication Token",
                ),
                E::UnknownAccessKey => (
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                ),
                E::RequestTimeTooSkewed | E::Expired => {
                    ("InvalidSignatureException", "Signature expired")
                }
                _ => (
                    "InvalidSignatureException",
                    "The request signature we calculated does not match the signature you provided.",
                ),
            };
            let mut r = json_response(
                StatusCode::FORBIDDEN,
                json!({"Type": "User", "message": message}).to_string(),
            );
            r.headers_mut()
                .insert("x-amzn-errortype", HeaderValue::from_static(code));
            Err(r)
        }
    }
}

fn verify_sigv4(
    auth: &Auth,
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<esb_sigv4::Verified, esb_sigv4::SigV4Error> {
    let mut headers = parts.headers.clone();
    // HTTP/2 carries the host in :authority.
    if !headers.contains_key(http::header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        headers.insert(http::header::HOST, v);
    }
    esb_sigv4::verify(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
        &headers,
        esb_sigv4::Payload::Body(body),
        |akid| auth.lookup_secret(akid),
        SystemTime::now(),
    )
}

/// Identity values for `sources` (API Gateway notation), `None` when one is
/// missing or empty.
fn identity_values(
    sources: &[String],
    parts: &http::request::Parts,
    m: &RouteMatch<'_, '_>,
) -> Option<Vec<String>> {
    let default = ["method.request.header.Authorization".to_string()];
    let sources = if sources.is_empty() {
        &default[..]
    } else {
        sources
    };
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            q.split('&')
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    let d = |s: &str| {
                        percent_encoding::percent_decode_str(s)
                            .decode_utf8_lossy()
                            .into_owned()
                    };
                    (d(k), d(v))
                })
                .collect()
        })
        .unwrap_or_default();
    sources
        .iter()
        .map(|s| {
            let s = s.trim();
            let v = if let Some(h) = s
                .strip_prefix("method.request.header.")
                .or_else(|| s.strip_prefix("$request.header."))
            {
                header(parts, &h.to_ascii_lowercase()).map(str::to_string)
            } else if let Some(q) = s
                .strip_prefix("method.request.querystring.")
                .or_else(|| s.strip_prefix("$request.querystring."))
            {
                query
                    .iter()
                    .rev()
                    .find(|(k, _)| k == q)
                    .map(|(_, v)| v.clone())
            } else if let Some(n) = s
                .strip_prefix("stageVariables.")
                .or_else(|| s.strip_prefix("$stageVariables."))
            {
                m.api.config.stage_variables.get(n).cloned()
            } else if s == "$context.routeKey" || s == "context.resourcePath" {
                Some(m.route.route_key.clone())
            } else if s == "$context.httpMethod" || s == "context.httpMethod" {
                Some(parts.method.to_string())
            } else {
                None
            };
            v.filter(|v| !v.is_empty())
        })
        .collect()
}

fn method_arn(
    state: &GatewayState,
    parts: &http::request::Parts,
    m: &RouteMatch<'_, '_>,
) -> String {
    let s = &state.inner.settings;
    let path = m.path_without_stage.trim_start_matches('/');
    format!(
        "arn:aws:execute-api:{}:{}:{}/{}/{}/{}",
        s.region, s.account_id, m.api.api_id, m.api.stage, parts.method, path
    )
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

/// Runs every check the route requires. `Ok` carries what the event shows.
pub(crate) async fn authorize(
    state: &GatewayState,
    parts: &http::request::Parts,
    m: &RouteMatch<'_, '_>,
    body: &[u8],
    peer: SocketAddr,
    request_id: &str,
) -> Result<Granted, Response<Body>> {
    let config = &m.route.config;
    let needs_key = config.api_key_required || config.auth == RouteAuth::ApiKey;
    let name = match &config.auth {
        RouteAuth::Authorizer(n) if n != "NONE" => Some(n.as_str()),
        _ => None,
    };
    if !needs_key && name.is_none() {
        return Ok(Granted::default());
    }
    let Some(auth) = state.inner.auth.as_ref() else {
        tracing::warn!(request_id, route = %m.route.route_key, "route needs auth but none is configured");
        return Err(if needs_key {
            forbidden()
        } else {
            unauthorized(false)
        });
    };
    let mut granted = Granted::default();
    if needs_key {
        granted.api_key = Some(check_api_key(auth, parts, peer)?);
    }
    let Some(name) = name else {
        return Ok(granted);
    };
    let kind = m.api.config.kind;
    let authorizer = if name == "AWS_IAM" {
        None
    } else {
        match m.api.config.authorizers.iter().find(|a| a.name == name) {
            Some(a) => Some(a),
            None => {
                tracing::error!(
                    request_id,
                    authorizer = name,
                    "route names an unknown authorizer"
                );
                return Err(internal(kind));
            }
        }
    };
    let Some(authorizer) = authorizer else {
        // AWS_IAM.
        return match verify_sigv4(auth, parts, body).and_then(|v| v.require_service("execute-api"))
        {
            Ok(()) => Ok(granted),
            Err(e) => {
                tracing::info!(request_id, "iam auth refused: {e}");
                Err(forbidden())
            }
        };
    };
    let fail = |why: &dyn std::fmt::Display| {
        tracing::info!(request_id, authorizer = %authorizer.name, source = %peer.ip(), "unauthorized: {why}");
        unauthorized(true)
    };
    match &authorizer.kind {
        AuthorizerKind::Cognito | AuthorizerKind::Jwt { .. } => {
            let Some(values) = identity_values(&authorizer.identity_sources, parts, m) else {
                return Err(fail(&"identity source missing"));
            };
            let token = values.first().map(String::as_str).unwrap_or_default();
            let scopes_required = &config.scopes;
            let (issuer, audience, token_use): (&str, &[String], &[&str]) = match &authorizer.kind {
                AuthorizerKind::Jwt { issuer, audience } => {
                    (issuer.as_deref().unwrap_or(auth.issuer()), audience, &[])
                }
                _ if scopes_required.is_empty() => (auth.issuer(), &[], &["id"]),
                _ => (auth.issuer(), &[], &["access"]),
            };
            let rules = Rules {
                issuer,
                audiences: audience,
                token_use,
            };
            let claims = match auth.verify_token(token, &rules, now_unix()) {
                Ok(c) => c,
                Err(e) => return Err(fail(&e)),
            };
            let scopes = esb_auth::jwt::scopes(&claims);
            if !scopes_required.is_empty() && !scopes_required.iter().any(|s| scopes.contains(s)) {
                tracing::info!(request_id, authorizer = %authorizer.name, "token lacks the route's scopes");
                return Err(forbidden());
            }
            granted.authorizer = Some(match authorizer.kind {
                AuthorizerKind::Cognito => json!({"claims": esb_auth::claims_as_strings(&claims)}),
                _ => json!({"jwt": {
                    "claims": string_claims(&claims),
                    "scopes": if scopes.is_empty() { Value::Null } else { json!(scopes) },
                }}),
            });
            Ok(granted)
        }
        AuthorizerKind::Lambda { .. } => {
            granted.authorizer =
                Some(lambda(state, auth, authorizer, parts, m, peer, request_id).await?);
            Ok(granted)
        }
        AuthorizerKind::Iam => {
            match verify_sigv4(auth, parts, body).and_then(|v| v.require_service("execute-api")) {
                Ok(()) => Ok(granted),
                Err(e) => {
                    tracing::info!(request_id, "iam auth refused: {e}");
                    Err(forbidden())
                }
            }
        }
    }
}

async fn lambda(
    state: &GatewayState,
    auth: &Auth,
    authorizer: &AuthorizerConfig,
    parts: &http::request::Parts,
    m: &RouteMatch<'_, '_>,
    peer: SocketAddr,
    request_id: &str,
) -> Result<Value, Response<Body>> {
    let AuthorizerKind::Lambda {
        function,
        token,
        payload_v2,
        simple_responses,
    } = &authorizer.kind
    else {
        return Err(internal(m.api.config.kind));
    };
    let kind = m.api.config.kind;
    let sources = if *token && authorizer.identity_sources.is_empty() {
        vec!["method.request.header.Authorization".to_string()]
    } else {
        authorizer.identity_sources.clone()
    };
    let values = if sources.is_empty() {
        Some(Vec::new())
    } else {
        identity_values(&sources, parts, m)
    };
    let Some(values) = values else {
        tracing::info!(request_id, authorizer = %authorizer.name, "identity source missing");
        return Err(unauthorized(false));
    };
    let arn = method_arn(state, parts, m);
    // Cache key: the identity values (API Gateway's rule); no cache without
    // identity sources.
    let cache_key = (!values.is_empty()).then(|| {
        format!(
            "{}\u{0}{}\u{0}{}",
            m.api.api_id,
            authorizer.name,
            values.join("\u{0}")
        )
    });
    let cached = cache_key
        .as_ref()
        .and_then(|k| auth.cache.get(k, Instant::now()));
    let decision = match cached {
        Some(d) => d,
        None => {
            let event = lambda_event(
                state,
                parts,
                m,
                peer,
                &values,
                *token,
                *payload_v2,
                &arn,
                request_id,
            );
            let decision = call_authorizer(
                state,
                function,
                event,
                request_id,
                *simple_responses && *payload_v2,
            )
            .await;
            let decision = match decision {
                Ok(d) => d,
                Err(()) => return Err(internal(kind)),
            };
            if let Some(k) = cache_key {
                auth.cache
                    .put(k, decision.clone(), authorizer.ttl, Instant::now());
            }
            decision
        }
    };
    match policy::apply_policy(&decision, &arn) {
        Decision::Allow {
            principal_id,
            context,
            ..
        } => {
            if *payload_v2 {
                Ok(json!({"lambda": context}))
            } else {
                let mut map = match policy::stringify_context(&context) {
                    Ok(m) if kind == ApiKind::Rest => m,
                    Ok(_) => context.clone(),
                    Err(e) => {
                        tracing::warn!(request_id, authorizer = %authorizer.name, "{e}");
                        return Err(internal(kind));
                    }
                };
                if let Some(p) = principal_id {
                    map.insert("principalId".into(), json!(p));
                }
                map.insert("integrationLatency".into(), json!(0));
                Ok(Value::Object(map))
            }
        }
        Decision::Deny(d) => {
            tracing::info!(request_id, authorizer = %authorizer.name, "denied by authorizer");
            let body = if kind == ApiKind::Http {
                DenyKind::Simple.body()
            } else {
                d.body()
            };
            Err(json_response(StatusCode::FORBIDDEN, body))
        }
        Decision::Unauthorized => Err(unauthorized(false)),
    }
}

#[allow(clippy::too_many_arguments)]
fn lambda_event(
    state: &GatewayState,
    parts: &http::request::Parts,
    m: &RouteMatch<'_, '_>,
    peer: SocketAddr,
    values: &[String],
    token: bool,
    payload_v2: bool,
    arn: &str,
    request_id: &str,
) -> Value {
    if token {
        return json!({"type": "TOKEN", "authorizationToken": values.first(), "methodArn": arn});
    }
    let mut headers = Map::new();
    for (k, v) in &parts.headers {
        if let Ok(v) = v.to_str() {
            headers.insert(k.as_str().to_string(), json!(v));
        }
    }
    let mut query = Map::new();
    if let Some(q) = parts.uri.query() {
        for p in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let d = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            query.insert(d(k), json!(d(v)));
        }
    }
    let path_params: Map<String, Value> = m
        .path_params
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let request_context = json!({
        "accountId": state.inner.settings.account_id,
        "apiId": m.api.api_id,
        "stage": m.api.stage,
        "requestId": request_id,
        "routeKey": m.route.route_key,
        "http": {"method": parts.method.as_str(), "path": parts.uri.path(), "sourceIp": peer.ip().to_string()},
        "identity": {"sourceIp": peer.ip().to_string()},
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

async fn call_authorizer(
    state: &GatewayState,
    function: &str,
    event: Value,
    request_id: &str,
    simple: bool,
) -> Result<Decision, ()> {
    let s = &state.inner.settings;
    let invocation = Invocation {
        request_id: uuid::Uuid::new_v4().to_string(),
        payload: Bytes::from(event.to_string()),
        invoked_function_arn: format!(
            "arn:aws:lambda:{}:{}:function:{function}",
            s.region, s.account_id
        ),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
        timeout: Some(s.integration_timeout),
    };
    let result = match state.inner.invoker.invoke(function, invocation).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(request_id, function, "authorizer invoke failed: {e}");
            return Err(());
        }
    };
    let payload = match result.outcome {
        InvocationOutcome::Success(p) => p,
        InvocationOutcome::Error { payload, .. } => {
            // `raise Exception("Unauthorized")` is API Gateway's 401.
            let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
            if v.get("errorMessage").and_then(Value::as_str) == Some("Unauthorized") {
                return Ok(Decision::Unauthorized);
            }
            tracing::warn!(request_id, function, "authorizer failed");
            return Err(());
        }
    };
    let v: Value = match serde_json::from_slice(&payload) {
        Ok(v) => v,
        Err(_) => {
            tracing::warn!(request_id, function, "authorizer returned non-JSON");
            return Err(());
        }
    };
    if v.as_str() == Some("Unauthorized") {
        return Ok(Decision::Unauthorized);
    }
    let parsed = if simple {
        policy::parse_simple_response(&v)
    } else {
        policy::parse_policy_response(&v)
    };
    parsed.map_err(|e| tracing::warn!(request_id, function, "{e}"))
}

/// Puts `granted` into a built event (only on authorized routes, so the
/// re-parse costs nothing on open routes).
pub(crate) fn decorate_event(event: Vec<u8>, granted: &Granted) -> Vec<u8> {
    if granted.authorizer.is_none() && granted.api_key.is_none() {
        return event;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(&event) else {
        return event;
    };
    if let Some(rc) = v.get_mut("requestContext").and_then(Value::as_object_mut) {
        if let Some(a) = &granted.authorizer {
            rc.insert("authorizer".into(), a.clone());
        }
        if let Some(key) = &granted.api_key
            && let Some(identity) = rc.get_mut("identity").and_then(Value::as_object_mut)
        {
            identity.insert("apiKey".into(), json!(key));
        }
    }
    serde_json::to_vec(&v).unwrap_or(event)
}
