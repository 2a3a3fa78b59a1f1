//! The Lambda Invoke API on the gateway's listener, so SDKs pointed at ESB
//! (`AWS_ENDPOINT_URL_LAMBDA`) work unchanged: `Invoke` (RequestResponse,
//! Event, DryRun) and `GetFunction`. Steps: read the payload (bounded),
//! check the SigV4 signature (`crate::auth::sigv4`), resolve the function
//! (aliases, qualifiers), then run it. Every refusal is a
//! [`Rejection`] in Lambda's shape.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::json;

use esb_runtimes_core::{
    FunctionSpec, Invocation, InvocationOutcome, InvokeResult, MAX_SYNC_PAYLOAD, RuntimeError,
};

use crate::auth::sigv4;
use crate::context::Ctx;
use crate::error::{PayloadLimit, Rejection, Shape, json_response};
use crate::limits::{self, BodyError, MAX_ASYNC_PAYLOAD};
use crate::query::Query;
use crate::response::Body;

/// Longest `X-Amz-Client-Context` header Lambda accepts.
const MAX_CLIENT_CONTEXT: usize = 3583;

const PREFIX: &str = "/2015-03-31/functions/";

/// A parsed Invoke API request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ApiCall {
    /// `POST .../{name}/invocations`.
    Invoke(String),
    /// `GET .../{name}`.
    GetFunction(String),
}

/// Recognises the Invoke API's paths; `None` for anything else.
pub(crate) fn parse(method: &Method, path: &str) -> Option<ApiCall> {
    let rest = path.strip_prefix(PREFIX)?;
    if let Some(name) = rest.strip_suffix("/invocations") {
        if *method == Method::POST && !name.is_empty() && !name.contains('/') {
            return Some(ApiCall::Invoke(name.to_string()));
        }
        return None;
    }
    if *method == Method::GET && !rest.is_empty() && !rest.contains('/') {
        return Some(ApiCall::GetFunction(rest.to_string()));
    }
    None
}

/// A function reference as the Invoke API accepts it: name, partial ARN or
/// full ARN, each with an optional qualifier.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FunctionRef {
    pub name: String,
    pub qualifier: Option<String>,
}

/// Parses `my-fn`, `my-fn:alias`, `123456789012:function:my-fn`,
/// `arn:aws:lambda:us-east-1:123456789012:function:my-fn[:q]` (already
/// percent-decoded).
pub(crate) fn parse_function_ref(text: &str) -> Option<FunctionRef> {
    let parts: Vec<&str> = text.split(':').collect();
    let (name, qualifier) = match parts.iter().position(|p| *p == "function") {
        Some(i) => (*parts.get(i + 1)?, parts.get(i + 2).copied()),
        None => match parts.as_slice() {
            [name] => (*name, None),
            [name, q] => (*name, Some(*q)),
            _ => return None,
        },
    };
    if let Some(i) = parts.iter().position(|p| *p == "function")
        && parts.len() > i + 3
    {
        return None;
    }
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    if !valid(name) {
        return None;
    }
    Some(FunctionRef {
        name: name.to_string(),
        qualifier: qualifier.map(str::to_string),
    })
}

/// `X-Amz-Invocation-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

impl InvocationType {
    fn parse(ctx: &Ctx<'_>) -> Result<Self, Rejection> {
        match ctx.parts.headers.get("x-amz-invocation-type") {
            None => Ok(Self::RequestResponse),
            Some(v) => match v.as_bytes() {
                b"RequestResponse" => Ok(Self::RequestResponse),
                b"Event" => Ok(Self::Event),
                b"DryRun" => Ok(Self::DryRun),
                other => Err(Rejection::InvalidParameter(format!(
                    "Unsupported invocation type {:?}",
                    String::from_utf8_lossy(other)
                ))),
            },
        }
    }

    fn limit(self) -> PayloadLimit {
        match self {
            Self::Event => PayloadLimit::Async(None),
            _ => PayloadLimit::Sync,
        }
    }
}

/// Handles one Invoke API call.
pub(crate) async fn handle<B>(ctx: &Ctx<'_>, call: ApiCall, body: B) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut r = match run(ctx, call, body).await {
        Ok(r) => r,
        Err(rejection) => rejection.into_response(Shape::Lambda),
    };
    // An accepted Event keeps its event id as request id.
    if !r.headers().contains_key("x-amzn-requestid")
        && let Ok(v) = HeaderValue::from_str(ctx.request_id)
    {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}

async fn run<B>(ctx: &Ctx<'_>, call: ApiCall, body: B) -> Result<Response<Body>, Rejection>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let invocation_type = InvocationType::parse(ctx)?;
    let payload = read_payload(ctx, body, invocation_type.limit()).await?;
    let query = Query::parse(ctx.parts.uri.query().unwrap_or(""));
    // The signature covers the body, so it is read (bounded) first.
    let signer = sigv4::check_invoke(ctx, &query, &payload)?;
    match call {
        ApiCall::GetFunction(name) => {
            let (spec, qualifier) = resolve(ctx, &name, &query)?;
            let denied = sigv4::invoke_denied(
                ctx,
                signer.as_deref(),
                "lambda:GetFunction",
                &spec.name,
                qualifier.as_deref(),
            );
            Ok(denied.unwrap_or_else(|| get_function(&spec)))
        }
        ApiCall::Invoke(name) => {
            let (spec, qualifier) = resolve(ctx, &name, &query)?;
            // The caller's policies (a function's own credentials).
            if let Some(denied) = sigv4::invoke_denied(
                ctx,
                signer.as_deref(),
                "lambda:InvokeFunction",
                &spec.name,
                qualifier.as_deref(),
            ) {
                return Ok(denied);
            }
            let invocation = invocation(ctx, &spec, qualifier.as_deref(), payload)?;
            match invocation_type {
                InvocationType::DryRun => {
                    let mut r = json_response(StatusCode::NO_CONTENT, Bytes::new());
                    r.headers_mut().remove(http::header::CONTENT_TYPE);
                    Ok(r)
                }
                InvocationType::Event => enqueue(ctx, &spec, invocation).await,
                InvocationType::RequestResponse => invoke_sync(ctx, &spec, invocation).await,
            }
        }
    }
}

/// The payload, bounded by the invocation type's limit.
async fn read_payload<B>(ctx: &Ctx<'_>, body: B, limit: PayloadLimit) -> Result<Bytes, Rejection>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max = match limit {
        PayloadLimit::Async(_) => MAX_ASYNC_PAYLOAD,
        PayloadLimit::Sync | PayloadLimit::Body => MAX_SYNC_PAYLOAD,
    };
    limits::read_body(&ctx.parts.headers, body, max)
        .await
        .map_err(|e| match (e, limit) {
            (BodyError::TooLarge { declared }, PayloadLimit::Async(_)) => {
                Rejection::TooLarge(PayloadLimit::Async(declared))
            }
            (BodyError::TooLarge { .. }, _) => Rejection::TooLarge(PayloadLimit::Sync),
            (BodyError::Read(e), _) => {
                tracing::info!(
                    request_id = ctx.request_id,
                    "reading invoke payload failed: {e}"
                );
                Rejection::BadRequest
            }
        })
}

/// The function a call names (through `function_aliases`) and the
/// qualifier in force.
pub(crate) fn resolve(
    ctx: &Ctx<'_>,
    raw_name: &str,
    query: &Query,
) -> Result<(Arc<FunctionSpec>, Option<String>), Rejection> {
    let settings = &ctx.state.inner.settings;
    let not_found = |name: &str| Rejection::FunctionNotFound(settings.function_arn(name));
    let decoded = percent_decode_str(raw_name).decode_utf8_lossy();
    let aliases = &ctx.state.inner.function_aliases;
    // A whole alias (`Child/Function`) may not parse as a function name.
    let function = match aliases.get(decoded.as_ref()) {
        Some(canonical) => FunctionRef {
            name: canonical.clone(),
            qualifier: None,
        },
        // Nested-stack functions are named `Child/Function`; no ARN or
        // plain name contains a `/`.
        None if decoded.contains('/') => FunctionRef {
            name: decoded.to_string(),
            qualifier: None,
        },
        None => parse_function_ref(&decoded).ok_or_else(|| not_found(&decoded))?,
    };
    let query_qualifier = query.last("Qualifier");
    if let (Some(a), Some(b)) = (&function.qualifier, query_qualifier)
        && a != b
    {
        return Err(Rejection::InvalidParameter(
            "The derived qualifier from the function name does not match the specified qualifier."
                .into(),
        ));
    }
    let qualifier = function
        .qualifier
        .clone()
        .or(query_qualifier.map(str::to_string));
    // ESB has no versions: `$LATEST` and alias names run the function;
    // numbered versions do not exist.
    if let Some(q) = &qualifier
        && !q.is_empty()
        && q.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(not_found(&format!("{}:{q}", function.name)));
    }
    let name = aliases.get(&function.name).unwrap_or(&function.name);
    let spec = ctx
        .state
        .inner
        .invoker
        .function(name)
        .ok_or_else(|| not_found(&function.name))?;
    Ok((spec, qualifier))
}

/// `GetFunction`'s answer.
fn get_function(spec: &FunctionSpec) -> Response<Body> {
    let config = json!({
        "FunctionName": spec.name,
        "FunctionArn": spec.arn(),
        "Runtime": spec.runtime,
        "Handler": spec.handler,
        "Timeout": spec.timeout.as_secs(),
        "MemorySize": spec.memory_mb,
        "Version": "$LATEST",
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": if spec.image.is_some() { "Image" } else { "Zip" },
    });
    json_response(
        StatusCode::OK,
        json!({"Configuration": config, "Code": {"RepositoryType": "S3"}}).to_string(),
    )
}

/// The invocation for a checked payload.
fn invocation(
    ctx: &Ctx<'_>,
    spec: &FunctionSpec,
    qualifier: Option<&str>,
    payload: Bytes,
) -> Result<Invocation, Rejection> {
    // An empty payload is the empty event, as SAM CLI and the SDKs treat it.
    let payload = if payload.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        payload
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&payload) {
        return Err(Rejection::InvalidRequestContent(format!(
            "Could not parse request body into json: {e}"
        )));
    }
    Ok(Invocation {
        request_id: ctx.request_id.to_string(),
        payload,
        invoked_function_arn: match qualifier {
            Some(q) => format!("{}:{q}", spec.arn()),
            None => spec.arn(),
        },
        trace_id: None,
        client_context: client_context(ctx)?,
        cognito_identity: None,
        timeout: None,
    })
}

/// `X-Amz-Client-Context`: base64 of at most [`MAX_CLIENT_CONTEXT`] bytes.
fn client_context(ctx: &Ctx<'_>) -> Result<Option<String>, Rejection> {
    let Some(v) = ctx.parts.headers.get("x-amz-client-context") else {
        return Ok(None);
    };
    base64::engine::general_purpose::STANDARD
        .decode(v.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|_| v.len() <= MAX_CLIENT_CONTEXT)
        .map(Some)
        .ok_or_else(|| {
            Rejection::InvalidParameter(format!(
                "Client context must be a base64-encoded JSON object of at most {MAX_CLIENT_CONTEXT} bytes"
            ))
        })
}

/// The caller's `X-Amzn-Trace-Id` (the chain it belongs to), if any.
fn caller_trace<'a>(ctx: &'a Ctx<'_>) -> Option<&'a str> {
    ctx.parts
        .headers
        .get(esb_events::TRACE_HEADER)
        .and_then(|v| v.to_str().ok())
}

/// Lambda's answer to a call that continues a chain past 16 hops.
fn recursion_refused(e: &esb_events::RecursionError) -> Response<Body> {
    let message = e.to_string();
    let body = json!({"Type": "User", "Message": message, "message": message});
    let mut r = json_response(StatusCode::BAD_REQUEST, body.to_string());
    r.headers_mut().insert(
        "x-amzn-errortype",
        HeaderValue::from_static("RecursiveInvocationException"),
    );
    r
}

/// `Event`: written to the durable queue, then 202 with the event id as the
/// request id. Queue full: 429, as Lambda answers.
async fn enqueue(
    ctx: &Ctx<'_>,
    spec: &FunctionSpec,
    invocation: Invocation,
) -> Result<Response<Body>, Rejection> {
    let Some(queue) = ctx.state.event_queue() else {
        tracing::warn!(request_id = ctx.request_id, function = %spec.name, "no event queue: Event invocation refused");
        return Err(Rejection::Integration);
    };
    let caller = caller_trace(ctx).and_then(esb_events::ChainContext::from_header_value);
    if let Some(c) = &caller {
        // The queued invocation runs one hop below its caller.
        if let Err(e) = c.next_hop() {
            return Ok(recursion_refused(&e));
        }
    }
    let meta = esb_events::EventMeta::new("invoke", caller);
    match queue.enqueue(&spec.name, invocation.payload, meta).await {
        Ok(id) => {
            let mut r = json_response(StatusCode::ACCEPTED, Bytes::new());
            if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
                r.headers_mut().insert("x-amzn-requestid", v);
            }
            Ok(r)
        }
        Err(esb_events::EnqueueError::QueueFull) => {
            tracing::warn!(request_id = ctx.request_id, function = %spec.name, "event queue full: 429");
            Err(Rejection::Throttled(Some(
                esb_pool::ThrottleReason::ConcurrentInvocationLimitExceeded,
            )))
        }
        Err(esb_events::EnqueueError::PayloadTooLarge { .. }) => {
            Err(Rejection::TooLarge(PayloadLimit::Async(None)))
        }
        Err(e) => {
            tracing::error!(request_id = ctx.request_id, function = %spec.name, "cannot enqueue: {e}");
            Err(Rejection::Integration)
        }
    }
}

/// `RequestResponse`: the function's payload, with `X-Amz-Function-Error`
/// when it failed and the log tail when asked for.
async fn invoke_sync(
    ctx: &Ctx<'_>,
    spec: &FunctionSpec,
    invocation: Invocation,
) -> Result<Response<Body>, Rejection> {
    let name = spec.name.as_str();
    let mut invocation = invocation;
    match esb_events::ChainContext::for_incoming(caller_trace(ctx)) {
        Ok(chain) => invocation.trace_id = Some(chain.to_header_value()),
        Err(e) => return Ok(recursion_refused(&e)),
    }
    let (payload, function_error, log_tail) =
        match ctx.state.inner.invoker.invoke(name, invocation).await {
            Ok(InvokeResult {
                outcome, log_tail, ..
            }) => match outcome {
                InvocationOutcome::Success(p) => (p, false, log_tail),
                InvocationOutcome::Error { payload, .. } => (payload, true, log_tail),
            },
            // A failed cold start answers like a function error, with the
            // init error as payload (as AWS does).
            Err(esb_pool::PoolError::Start(RuntimeError::Init { payload, .. })) => {
                (payload, true, String::new())
            }
            Err(e) => {
                tracing::warn!(
                    request_id = ctx.request_id,
                    function = name,
                    "invoke failed: {e}"
                );
                return Err(Rejection::from_pool(&e, || spec.arn()));
            }
        };
    let mut r = json_response(StatusCode::OK, payload);
    let headers = r.headers_mut();
    headers.insert(
        "x-amz-executed-version",
        HeaderValue::from_static("$LATEST"),
    );
    if function_error {
        headers.insert(
            "x-amz-function-error",
            HeaderValue::from_static("Unhandled"),
        );
    }
    let tail = ctx
        .parts
        .headers
        .get("x-amz-log-type")
        .is_some_and(|v| v.as_bytes() == b"Tail");
    if tail {
        let encoded = base64::engine::general_purpose::STANDARD.encode(log_tail.as_bytes());
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            headers.insert("x-amz-log-result", v);
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            parse(&Method::POST, "/2015-03-31/functions/f/invocations"),
            Some(ApiCall::Invoke("f".into()))
        );
        assert_eq!(
            parse(&Method::GET, "/2015-03-31/functions/f"),
            Some(ApiCall::GetFunction("f".into()))
        );
        assert_eq!(
            parse(&Method::GET, "/2015-03-31/functions/f/invocations"),
            None
        );
        assert_eq!(
            parse(&Method::POST, "/2015-03-31/functions//invocations"),
            None
        );
        assert_eq!(parse(&Method::POST, "/other"), None);
    }

    #[test]
    fn function_names() {
        let r = |n: &str, q: Option<&str>| {
            Some(FunctionRef {
                name: n.into(),
                qualifier: q.map(Into::into),
            })
        };
        assert_eq!(parse_function_ref("my-function"), r("my-function", None));
        assert_eq!(
            parse_function_ref("my-function:v1"),
            r("my-function", Some("v1"))
        );
        assert_eq!(
            parse_function_ref("123456789012:function:my-function"),
            r("my-function", None)
        );
        assert_eq!(
            parse_function_ref("arn:aws:lambda:us-west-2:123456789012:function:my-function"),
            r("my-function", None)
        );
        assert_eq!(
            parse_function_ref(
                "arn:aws:lambda:us-west-2:123456789012:function:my-function:$LATEST"
            ),
            r("my-function", Some("$LATEST"))
        );
        assert_eq!(parse_function_ref("a:b:c"), None);
        assert_eq!(parse_function_ref("bad name"), None);
        assert_eq!(parse_function_ref(""), None);
    }
}
