//! The integration of a routed request: build the event once (v1 or 2.0,
//! auth results included), invoke the function under the integration
//! timeout, and map its answer (response mapping itself is
//! `crate::response`).

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http::header::{ACCEPT, HOST};
use http::{HeaderMap, Response};
use uuid::Uuid;

use esb_runtimes_core::{ErrorKind, Invocation, InvocationOutcome, MAX_SYNC_PAYLOAD};

use crate::auth::{Granted, RouteRequest};
use crate::config::{ApiKind, PayloadVersion, RouteTarget};
use crate::context::ConnInfo;
use crate::error::{PayloadLimit, Rejection};
use crate::event::{EventInput, build_event, matches_binary_type};
use crate::response::{Body, map_v1, map_v2};

/// Runs the route's target for an authorized request.
pub(crate) async fn run(
    req: &RouteRequest<'_, '_, '_, '_>,
    granted: &Granted,
) -> Result<Response<Body>, Rejection> {
    let request_id = req.ctx.request_id;
    let function = match &req.m.route.config.target {
        RouteTarget::Function(name) => name.as_str(),
        RouteTarget::Unavailable { status, message } => {
            tracing::warn!(request_id, route = %req.m.route.route_key, "route not run: {message}");
            return Err(Rejection::RouteUnavailable {
                status: http::StatusCode::from_u16(*status)
                    .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
                message: message.clone(),
            });
        }
    };
    let (event, trace) = event(req, granted)?;
    let payload = invoke(req, function, event, trace).await?;
    map_response(req, &payload).map_err(|e| {
        tracing::warn!(request_id, function, "{e}");
        Rejection::Integration
    })
}

/// The event bytes and the trace root used for it.
fn event(
    req: &RouteRequest<'_, '_, '_, '_>,
    granted: &Granted,
) -> Result<(Vec<u8>, String), Rejection> {
    let parts = req.ctx.parts;
    let m = req.m;
    let settings = &req.ctx.state.inner.settings;
    let now = Utc::now();
    let conn = parts.extensions.get::<ConnInfo>().copied();
    let (domain, host_port) = host_name(parts);
    let tls = conn.is_some_and(|c| c.tls);
    let forwarded_port = conn
        .map(|c| c.local.port())
        .or(host_port)
        .unwrap_or(if tls { 443 } else { 80 });
    let extended = crate::ids::new_v4();
    let extended_request_id = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&extended.as_bytes()[..11])
    };
    let trace = trace_root(&extended, now.timestamp());
    let source_ip = req.ctx.peer.ip().to_string();
    // Behind a base path the function sees the path without it.
    let raw_path = if m.api.config.base_path.is_some() {
        m.path_without_stage
    } else {
        parts.uri.path()
    };
    let input = EventInput {
        method: &parts.method,
        raw_path,
        path_without_stage: m.path_without_stage,
        raw_query: parts.uri.query().unwrap_or(""),
        query: req.query,
        granted,
        headers: &parts.headers,
        version: parts.version,
        body: req.body,
        source_ip: &source_ip,
        request_id: req.ctx.request_id,
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
    let event = build_event(&input).map_err(|e| {
        tracing::error!(
            request_id = req.ctx.request_id,
            "building the event failed: {e}"
        );
        Rejection::Integration
    })?;
    // Judge the event, not the body: base64 grows it by a third (H3).
    if event.len() > MAX_SYNC_PAYLOAD {
        tracing::info!(
            request_id = req.ctx.request_id,
            size = event.len(),
            "event over the 6 MB invoke limit"
        );
        return Err(Rejection::TooLarge(PayloadLimit::Sync));
    }
    Ok((event, trace))
}

/// Invokes `function` with `event`; `Ok` is its successful payload.
async fn invoke(
    req: &RouteRequest<'_, '_, '_, '_>,
    function: &str,
    event: Vec<u8>,
    trace: String,
) -> Result<Bytes, Rejection> {
    let request_id = req.ctx.request_id;
    let state = req.ctx.state;
    let settings = &state.inner.settings;
    let invocation = Invocation {
        request_id: request_id.to_string(),
        payload: Bytes::from(event),
        invoked_function_arn: settings.function_arn(function),
        trace_id: Some(format!("{trace};Sampled=0")),
        client_context: None,
        cognito_identity: None,
        timeout: Some(settings.integration_timeout),
    };
    // The pool enforces the timeout; this timer is the gateway's own
    // backstop (a cold start or queue wait counts against API Gateway's
    // limit too).
    let deadline = settings.integration_timeout + Duration::from_secs(1);
    let result = tokio::time::timeout(deadline, state.inner.invoker.invoke(function, invocation))
        .await
        .map_err(|_| {
            tracing::warn!(
                request_id,
                function,
                "integration timed out after {deadline:?}"
            );
            Rejection::Timeout
        })?
        .map_err(|e| {
            tracing::warn!(request_id, function, "invoke failed: {e}");
            Rejection::from_pool(&e, || settings.function_arn(function))
        })?;
    match result.outcome {
        InvocationOutcome::Success(payload) => Ok(payload),
        InvocationOutcome::Error {
            kind: ErrorKind::Timeout,
            payload,
        } => {
            tracing::warn!(request_id, function, error = %String::from_utf8_lossy(&payload), "function timed out");
            Err(Rejection::Timeout)
        }
        InvocationOutcome::Error { kind, payload } => {
            tracing::warn!(request_id, function, error_kind = ?kind, error = %String::from_utf8_lossy(&payload), "function failed");
            Err(Rejection::Integration)
        }
    }
}

fn map_response(
    req: &RouteRequest<'_, '_, '_, '_>,
    payload: &[u8],
) -> Result<Response<Body>, crate::MalformedResponse> {
    let m = req.m;
    let mapped = match (m.route.config.payload_version, m.api.config.kind) {
        (PayloadVersion::V1, ApiKind::Rest) => {
            let decode =
                first_accept_is_binary(&req.ctx.parts.headers, &m.api.config.binary_media_types);
            map_v1(payload, true, decode)
        }
        (PayloadVersion::V1, _) => map_v1(payload, false, true),
        (PayloadVersion::V2, _) => map_v2(payload),
    }?;
    Ok(mapped.into_response())
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

fn host_name(parts: &http::request::Parts) -> (String, Option<u16>) {
    let authority = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
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
        _ => (authority.to_string(), None),
    }
}

fn trace_root(request_id: &Uuid, epoch_secs: i64) -> String {
    let hex = request_id.simple().to_string();
    format!("Root=1-{:08x}-{}", epoch_secs, &hex[..24])
}
