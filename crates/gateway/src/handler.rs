//! One request, start to end: control endpoints, routing, event, invoke,
//! response mapping, CORS and request-id headers.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use uuid::Uuid;

use esb_pool::PoolError;
use esb_runtimes_core::{ErrorKind, Invocation, InvocationOutcome, MAX_SYNC_PAYLOAD};

use crate::GatewayState;
use crate::auth;
use crate::config::{ApiKind, PayloadVersion};
use crate::cors;
use crate::event::{EventInput, build_event, matches_binary_type};
use crate::invoke_api;
use crate::response::{self, Body, GatewayFailure, map_v1, map_v2};
use crate::router::{NoRoute, RequestPath, RouteMatch};

/// ESB's health endpoint (answers `ok`). It never hides a route a template
/// declares explicitly; only a greedy or `$default` route would otherwise
/// catch it.
pub const HEALTH_PATH: &str = "/_esb/health";
/// Workers per function as JSON (`esb ps`); same rules as the health path.
pub const STATUS_PATH: &str = "/_esb/status";

/// Facts about the connection a request came in on, put into the request
/// extensions by [`crate::serve`]. Without it, `http` and the Host port are
/// assumed.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The listener's local address.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Most bytes read and thrown away after a body turned out too large, so
/// clients that send the whole body before reading (boto3, requests) still
/// get the 413 instead of a reset connection.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;
/// Most time spent draining such a body.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a body up to `limit` bytes. A larger body is drained (bounded by
/// [`DRAIN_LIMIT`] and [`DRAIN_TIME`], memory stays flat) and reported as
/// [`BodyError::TooLarge`].
pub(crate) async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total: usize = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.into().to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total = total.saturating_add(data.len());
        if total > limit {
            drain(body.as_mut(), total as u64).await;
            return Err(BodyError::TooLarge);
        }
        chunks.push(data);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut all = Vec::with_capacity(total);
            for c in &chunks {
                all.extend_from_slice(c);
            }
            Bytes::from(all)
        }
    })
}

/// Reads and discards what is left of a body, within the drain bounds.
pub(crate) async fn drain<B>(mut body: std::pin::Pin<&mut B>, mut seen: u64)
where
    B: hyper::body::Body<Data = Bytes>,
{
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while seen <= DRAIN_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        seen += data.len() as u64;
                    }
                }
                _ => break,
            }
        }
    })
    .await;
}

/// Drains a whole body whose declared length is already too large.
pub(crate) async fn discard<B>(body: B)
where
    B: hyper::body::Body<Data = Bytes>,
{
    let body = std::pin::pin!(body);
    drain(body, 0).await;
}

#[derive(Debug)]
pub(crate) enum BodyError {
    TooLarge,
    Read(String),
}

/// The declared `Content-Length`, if any and valid.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Handles one request. `peer` is the client's address (`sourceIp`).
pub async fn handle<B>(state: &GatewayState, req: Request<B>, peer: SocketAddr) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let request_id = Uuid::new_v4().to_string();
    let (parts, body) = req.into_parts();
    let router = &state.inner.router;
    let fallback_kind = router.apis.first().map_or(ApiKind::Http, |a| a.config.kind);

    let path = match RequestPath::parse(parts.uri.path()) {
        Ok(path) => path,
        Err(e) => {
            tracing::info!(%request_id, path = parts.uri.path(), "bad request path: {e}");
            return with_ids(
                response::failure(fallback_kind, GatewayFailure::BadRequest),
                fallback_kind,
                &request_id,
            );
        }
    };
    let found = router.find(Some(&parts.method), &path);
    let explicit = matches!(&found, Ok(m) if m.route.resource != "$default" && !m.route.resource.contains("+}"));
    if !explicit {
        let raw_path = parts.uri.path();
        if raw_path == HEALTH_PATH && (parts.method == Method::GET || parts.method == Method::HEAD)
        {
            let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return r;
        }
        if raw_path == STATUS_PATH && parts.method == Method::GET {
            let mut r = Response::new(Full::new(Bytes::from(state.invoker().status_json())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return r;
        }
        if auth::is_login(state, &parts) {
            let body = match read_body(body, 64 * 1024).await {
                Ok(b) => b,
                Err(_) => {
                    return json_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        r#"{"message":"Request Too Long"}"#,
                    );
                }
            };
            return auth::own_endpoint(state, &parts, Some(&body), peer)
                .unwrap_or_else(|| response::failure(fallback_kind, GatewayFailure::NoRoute));
        }
        if let Some(r) = auth::own_endpoint(state, &parts, None, peer) {
            return r;
        }
        if let Some(call) = invoke_api::parse(&parts.method, raw_path) {
            if state.inner.auth.is_none() {
                return invoke_api::handle(state, call, &parts, body, request_id).await;
            }
            let too_large = || {
                let mut r = json_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    r#"{"Type":"User","message":"Request must be smaller than 6291456 bytes for the InvokeFunction operation"}"#,
                );
                r.headers_mut().insert(
                    "x-amzn-errortype",
                    HeaderValue::from_static("RequestEntityTooLargeException"),
                );
                r
            };
            if content_length(&parts.headers).is_some_and(|len| len > MAX_SYNC_PAYLOAD as u64) {
                // Let the client finish sending so it sees the 413.
                discard(body).await;
                return too_large();
            }
            // The signature covers the body, so read it (bounded) first.
            let body = match read_body(body, MAX_SYNC_PAYLOAD).await {
                Ok(b) => b,
                Err(BodyError::TooLarge) => return too_large(),
                Err(BodyError::Read(e)) => {
                    tracing::info!(%request_id, "reading invoke payload failed: {e}");
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        r#"{"Type":"User","message":"Could not read request body"}"#,
                    );
                }
            };
            if let Err(r) = auth::check_invoke(state, &parts, &body, peer, &request_id) {
                return r;
            }
            return invoke_api::handle(state, call, &parts, Full::new(body), request_id).await;
        }
    }

    let m = match found {
        Ok(m) => m,
        Err(NoRoute { kind }) => {
            // A preflight for a path the API serves under other methods.
            if parts.method == Method::OPTIONS
                && let Ok(owner) = router.find(None, &path)
                && let Some(cors_config) = &owner.api.config.cors
                && cors::is_preflight(owner.api.config.kind, &parts.method, &parts.headers)
            {
                let kind = owner.api.config.kind;
                return with_ids(
                    cors::preflight(kind, cors_config, &parts.headers),
                    kind,
                    &request_id,
                );
            }
            tracing::debug!(%request_id, method = %parts.method, path = parts.uri.path(), "no route");
            return with_ids(
                response::failure(kind, GatewayFailure::NoRoute),
                kind,
                &request_id,
            );
        }
    };
    let kind = m.api.config.kind;
    if let Some(cors_config) = &m.api.config.cors
        && cors::is_preflight(kind, &parts.method, &parts.headers)
        && (kind == ApiKind::Http || m.route.method.as_ref() != Some(&Method::OPTIONS))
    {
        return with_ids(
            cors::preflight(kind, cors_config, &parts.headers),
            kind,
            &request_id,
        );
    }
    let fail = |failure| with_ids(response::failure(kind, failure), kind, &request_id);

    if has_duplicate(&parts.headers) {
        tracing::info!(%request_id, "duplicate Host, Authorization or x-api-key header");
        return fail(GatewayFailure::BadRequest);
    }
    let max_body = state.inner.settings.max_body_bytes;
    if content_length(&parts.headers).is_some_and(|len| len > max_body as u64) {
        discard(body).await;
        return fail(GatewayFailure::TooLarge);
    }
    let body = match read_body(body, max_body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return fail(GatewayFailure::TooLarge),
        Err(BodyError::Read(e)) => {
            tracing::info!(%request_id, "reading request body failed: {e}");
            return fail(GatewayFailure::BadRequest);
        }
    };

    let granted = match auth::authorize(state, &parts, &m, &body, peer, &request_id).await {
        Ok(g) => g,
        Err(r) => return with_ids(r, kind, &request_id),
    };
    let mut response = invoke_route(state, &parts, &m, body, &request_id, peer, &granted).await;
    if let Some(cors_config) = &m.api.config.cors {
        cors::apply(kind, cors_config, &parts.headers, response.headers_mut());
    }
    with_ids(response, kind, &request_id)
}

/// Two Host, Authorization or x-api-key headers make the request ambiguous
/// (robustness H7).
fn has_duplicate(headers: &HeaderMap) -> bool {
    [HOST.as_str(), AUTHORIZATION.as_str(), "x-api-key"]
        .iter()
        .any(|name| headers.get_all(*name).iter().nth(1).is_some())
}

/// Adds the request id headers API Gateway sends.
fn with_ids(mut response: Response<Body>, kind: ApiKind, request_id: &str) -> Response<Body> {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        let name = match kind {
            ApiKind::Rest => "x-amzn-requestid",
            ApiKind::Http => "apigw-requestid",
        };
        response.headers_mut().insert(name, value);
    }
    response
}

fn host_name(parts: &http::request::Parts) -> (String, Option<u16>) {
    let authority = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_string()))
        .unwrap_or_else(|| "localhost".to_string());
    // `[::1]:3000`, `host:3000`, `host`.
    if let Some(rest) = authority.strip_prefix('[')
        && let Some((ip, tail)) = rest.split_once(']')
    {
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return (ip.to_string(), port);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            (host.to_string(), port.parse().ok())
        }
        _ => (authority, None),
    }
}

fn trace_root(request_id: &Uuid, epoch_secs: i64) -> String {
    let hex = request_id.simple().to_string();
    format!("Root=1-{:08x}-{}", epoch_secs, &hex[..24])
}

async fn invoke_route(
    state: &GatewayState,
    parts: &http::request::Parts,
    m: &RouteMatch<'_, '_>,
    body: Bytes,
    request_id: &str,
    peer: SocketAddr,
    granted: &auth::Granted,
) -> Response<Body> {
    let kind = m.api.config.kind;
    let settings = &state.inner.settings;
    let fail = |failure| response::failure(kind, failure);
    let now = Utc::now();
    let conn = parts.extensions.get::<ConnInfo>().copied();
    let (domain, host_port) = host_name(parts);
    let tls = conn.is_some_and(|c| c.tls);
    let forwarded_port = conn
        .map(|c| c.local.port())
        .or(host_port)
        .unwrap_or(if tls { 443 } else { 80 });
    let extended = Uuid::new_v4();
    let extended_request_id = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&extended.as_bytes()[..11])
    };
    let trace = trace_root(&extended, now.timestamp());
    let source_ip = peer.ip().to_string();
    let input = EventInput {
        method: &parts.method,
        raw_path: parts.uri.path(),
        path_without_stage: m.path_without_stage,
        raw_query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        version: parts.version,
        body: &body,
        source_ip: &source_ip,
        request_id,
        extended_request_id: &extended_request_id,
        time: now,
        api: m.api,
        route: m.route,
        path_params: &m.path_params,
        domain_name: &domain,
        forwarded_proto: if tls { "https" } else { "http" },
        forwarded_port,
        trace_header: &trace,
        account_id: &settings.account_id,
    };
    let event = match build_event(&input) {
        Ok(event) => event,
        Err(e) => {
            tracing::error!(request_id, "building the event failed: {e}");
            return fail(GatewayFailure::Integration);
        }
    };
    let event = auth::decorate_event(event, granted);
    // Judge the event, not the body: base64 grows it by a third (H3).
    if event.len() > MAX_SYNC_PAYLOAD {
        tracing::info!(
            request_id,
            size = event.len(),
            "event over the 6 MB invoke limit"
        );
        return fail(GatewayFailure::TooLarge);
    }
    let function = m.route.config.function.as_str();
    let invocation = Invocation {
        request_id: request_id.to_string(),
        payload: Bytes::from(event),
        invoked_function_arn: format!(
            "arn:aws:lambda:{}:{}:function:{}",
            settings.region, settings.account_id, function
        ),
        trace_id: Some(format!("{trace};Sampled=0")),
        client_context: None,
        cognito_identity: None,
        timeout: Some(settings.integration_timeout),
    };
    // The pool enforces the timeout; this timer is the gateway's own
    // backstop (a cold start or queue wait counts against API Gateway's
    // limit too).
    let deadline = settings.integration_timeout + Duration::from_secs(1);
    let result = match tokio::time::timeout(
        deadline,
        state.inner.invoker.invoke(function, invocation),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                request_id,
                function,
                "integration timed out after {deadline:?}"
            );
            return fail(GatewayFailure::Timeout);
        }
    };
    let result = match result {
        Ok(result) => result,
        Err(PoolError::Throttled(reason)) => {
            tracing::warn!(request_id, function, ?reason, "throttled");
            return fail(GatewayFailure::Throttled);
        }
        Err(PoolError::ShuttingDown) => return fail(GatewayFailure::Unavailable),
        Err(e) => {
            tracing::error!(request_id, function, "invoke failed: {e}");
            return fail(GatewayFailure::Integration);
        }
    };
    let payload = match result.outcome {
        InvocationOutcome::Success(payload) => payload,
        InvocationOutcome::Error {
            kind: ErrorKind::Timeout,
            payload,
        } => {
            tracing::warn!(request_id, function, error = %String::from_utf8_lossy(&payload), "function timed out");
            return fail(GatewayFailure::Timeout);
        }
        InvocationOutcome::Error {
            kind: error_kind,
            payload,
        } => {
            tracing::warn!(request_id, function, ?error_kind, error = %String::from_utf8_lossy(&payload), "function failed");
            return fail(GatewayFailure::Integration);
        }
    };
    let mapped = match (m.route.config.payload_version, kind) {
        (PayloadVersion::V1, ApiKind::Rest) => {
            let decode = first_accept_is_binary(&parts.headers, &m.api.config.binary_media_types);
            map_v1(&payload, true, decode)
        }
        (PayloadVersion::V1, ApiKind::Http) => map_v1(&payload, false, true),
        (PayloadVersion::V2, _) => map_v2(&payload),
    };
    match mapped {
        Ok(mapped) => mapped.into_response(),
        Err(e) => {
            tracing::warn!(request_id, function, "{e}");
            fail(GatewayFailure::Integration)
        }
    }
}

/// REST decodes a base64 response only when the request's first `Accept`
/// type is a binary media type.
fn first_accept_is_binary(headers: &HeaderMap, binary_types: &[String]) -> bool {
    if binary_types.is_empty() {
        return false;
    }
    let Some(accept) = headers.get(ACCEPT).and_then(|a| a.to_str().ok()) else {
        return false;
    };
    let first = accept
        .split(',')
        .next()
        .and_then(|m| m.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    !first.is_empty() && matches_binary_type(&first, binary_types)
}

/// JSON error body helper shared with the Invoke API.
pub(crate) fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
