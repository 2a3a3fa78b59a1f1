//! The Lambda Invoke API on the gateway's listener, so SDKs pointed at ESB
//! (`AWS_ENDPOINT_URL_LAMBDA`) work unchanged. Signatures are not checked.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::json;

use esb_pool::{PoolError, ThrottleReason};
use esb_runtimes_core::{Invocation, InvocationOutcome, MAX_SYNC_PAYLOAD, RuntimeError};

use crate::GatewayState;
use crate::handler::{BodyError, content_length, discard, json_response, read_body};
use crate::response::Body;

/// Lambda's limit for `Event` payloads.
pub const MAX_ASYNC_PAYLOAD: usize = 1024 * 1024;

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

fn aws_error(
    status: StatusCode,
    code: &'static str,
    kind: &str,
    message: &str,
    request_id: &str,
) -> Response<Body> {
    let body = json!({"Type": kind, "Message": message, "message": message});
    let mut r = json_response(status, body.to_string());
    r.headers_mut()
        .insert("x-amzn-errortype", HeaderValue::from_static(code));
    set_request_id(r.headers_mut(), request_id);
    r
}

fn set_request_id(headers: &mut HeaderMap, request_id: &str) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", v);
    }
}

fn throttled(reason: &str, request_id: &str) -> Response<Body> {
    let body = json!({"Reason": reason, "Type": "User", "message": "Rate Exceeded."});
    let mut r = json_response(StatusCode::TOO_MANY_REQUESTS, body.to_string());
    r.headers_mut().insert(
        "x-amzn-errortype",
        HeaderValue::from_static("TooManyRequestsException"),
    );
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    set_request_id(r.headers_mut(), request_id);
    r
}

fn reason_text(reason: ThrottleReason) -> &'static str {
    match reason {
        ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded => {
            "ReservedFunctionConcurrentInvocationLimitExceeded"
        }
        ThrottleReason::ConcurrentInvocationLimitExceeded => "ConcurrentInvocationLimitExceeded",
    }
}

enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

/// Handles one Invoke API call.
pub(crate) async fn handle<B>(
    state: &GatewayState,
    call: ApiCall,
    parts: &http::request::Parts,
    body: B,
    request_id: String,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let settings = &state.inner.settings;
    let (raw_name, is_invoke) = match &call {
        ApiCall::Invoke(n) => (n.as_str(), true),
        ApiCall::GetFunction(n) => (n.as_str(), false),
    };
    let decoded = percent_decode_str(raw_name).decode_utf8_lossy();
    let arn_of = |name: &str| {
        format!(
            "arn:aws:lambda:{}:{}:function:{}",
            settings.region, settings.account_id, name
        )
    };
    let not_found = |name: &str| {
        aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            "User",
            &format!("Function not found: {}", arn_of(name)),
            &request_id,
        )
    };
    let Some(function) = parse_function_ref(&decoded) else {
        return not_found(&decoded);
    };
    let query_qualifier = parts.uri.query().and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "Qualifier").then(|| percent_decode_str(v).decode_utf8_lossy().into_owned())
        })
    });
    if let (Some(a), Some(b)) = (&function.qualifier, &query_qualifier)
        && a != b
    {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            "User",
            "The derived qualifier from the function name does not match the specified qualifier.",
            &request_id,
        );
    }
    let qualifier = function.qualifier.as_ref().or(query_qualifier.as_ref());
    // ESB has no versions: `$LATEST` and alias names run the function;
    // numbered versions do not exist.
    if qualifier.is_some_and(|q| !q.is_empty() && q.bytes().all(|b| b.is_ascii_digit())) {
        return not_found(&format!(
            "{}:{}",
            function.name,
            qualifier.map_or("", String::as_str)
        ));
    }
    let Some(spec) = state.inner.invoker.function(&function.name) else {
        return not_found(&function.name);
    };

    if !is_invoke {
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
        let mut r = json_response(
            StatusCode::OK,
            json!({"Configuration": config, "Code": {"RepositoryType": "S3"}}).to_string(),
        );
        set_request_id(r.headers_mut(), &request_id);
        return r;
    }

    let invocation_type = match parts
        .headers
        .get("x-amz-invocation-type")
        .map(|v| v.to_str().unwrap_or(""))
    {
        None | Some("RequestResponse") => InvocationType::RequestResponse,
        Some("Event") => InvocationType::Event,
        Some("DryRun") => InvocationType::DryRun,
        Some(other) => {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                "User",
                &format!("Unsupported invocation type {other:?}"),
                &request_id,
            );
        }
    };
    let limit = match invocation_type {
        InvocationType::Event => MAX_ASYNC_PAYLOAD,
        _ => MAX_SYNC_PAYLOAD,
    };
    let too_large = |size: Option<u64>| {
        let message = match (&invocation_type, size) {
            (InvocationType::Event, Some(size)) => format!(
                "{size} byte payload is too large for the Event invocation type (limit {MAX_ASYNC_PAYLOAD} bytes)"
            ),
            (InvocationType::Event, None) => format!(
                "Payload is too large for the Event invocation type (limit {MAX_ASYNC_PAYLOAD} bytes)"
            ),
            _ => format!(
                "Request must be smaller than {MAX_SYNC_PAYLOAD} bytes for the InvokeFunction operation"
            ),
        };
        aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            "User",
            &message,
            &request_id,
        )
    };
    let declared = content_length(&parts.headers);
    if declared.is_some_and(|len| len > limit as u64) {
        discard(body).await;
        return too_large(declared);
    }
    let payload = match read_body(body, limit).await {
        Ok(p) => p,
        Err(BodyError::TooLarge) => return too_large(None),
        Err(BodyError::Read(e)) => {
            tracing::info!(%request_id, "reading invoke payload failed: {e}");
            return aws_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                "User",
                "Could not read request body",
                &request_id,
            );
        }
    };
    // An empty payload is the empty event, as SAM CLI and the SDKs treat it.
    let payload = if payload.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        payload
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&payload) {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "User",
            &format!("Could not parse request body into json: {e}"),
            &request_id,
        );
    }
    let client_context = match parts.headers.get("x-amz-client-context") {
        None => None,
        Some(v) => match base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        {
            Some(text) if v.len() <= 3583 => Some(text),
            _ => {
                return aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameterValueException",
                    "User",
                    "Client context must be a base64-encoded JSON object of at most 3583 bytes",
                    &request_id,
                );
            }
        },
    };
    let invocation = Invocation {
        request_id: request_id.clone(),
        payload,
        invoked_function_arn: match qualifier {
            Some(q) => format!("{}:{q}", spec.arn()),
            None => spec.arn(),
        },
        trace_id: None,
        client_context,
        cognito_identity: None,
        timeout: None,
    };
    let name = spec.name.clone();

    match invocation_type {
        InvocationType::DryRun => {
            let mut r = json_response(StatusCode::NO_CONTENT, Bytes::new());
            r.headers_mut().remove(http::header::CONTENT_TYPE);
            set_request_id(r.headers_mut(), &request_id);
            r
        }
        InvocationType::Event => {
            let Ok(permit) = state.inner.async_permits.clone().try_acquire_owned() else {
                tracing::warn!(%request_id, function = %name, "too many async invocations in flight");
                return throttled("ConcurrentInvocationLimitExceeded", &request_id);
            };
            let invoker = Arc::clone(&state.inner.invoker);
            let rid = request_id.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match invoker.invoke(&name, invocation).await {
                    Ok(result) => match result.outcome {
                        InvocationOutcome::Success(_) => {
                            tracing::debug!(request_id = %rid, function = %name, "async invocation done");
                        }
                        InvocationOutcome::Error { kind, payload } => tracing::warn!(
                            request_id = %rid,
                            function = %name,
                            ?kind,
                            error = %String::from_utf8_lossy(&payload),
                            "async invocation failed"
                        ),
                    },
                    Err(e) => {
                        tracing::warn!(request_id = %rid, function = %name, "async invocation not run: {e}");
                    }
                }
            });
            let mut r = json_response(StatusCode::ACCEPTED, Bytes::new());
            set_request_id(r.headers_mut(), &request_id);
            r
        }
        InvocationType::RequestResponse => {
            let tail = parts
                .headers
                .get("x-amz-log-type")
                .is_some_and(|v| v.as_bytes() == b"Tail");
            let (payload, function_error, log_tail) =
                match state.inner.invoker.invoke(&name, invocation).await {
                    Ok(result) => match result.outcome {
                        InvocationOutcome::Success(p) => (p, false, result.log_tail),
                        InvocationOutcome::Error { payload, .. } => {
                            (payload, true, result.log_tail)
                        }
                    },
                    Err(PoolError::Throttled(reason)) => {
                        return throttled(reason_text(reason), &request_id);
                    }
                    Err(PoolError::UnknownFunction(_)) => return not_found(&name),
                    // A failed cold start answers like a function error, with
                    // the init error as payload (as AWS does).
                    Err(PoolError::Start(RuntimeError::Init { payload, .. })) => {
                        (payload, true, String::new())
                    }
                    Err(PoolError::ShuttingDown) => {
                        return aws_error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "ServiceException",
                            "Service",
                            "ESB is shutting down",
                            &request_id,
                        );
                    }
                    Err(e) => {
                        tracing::error!(%request_id, function = %name, "invoke failed: {e}");
                        return aws_error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "ServiceException",
                            "Service",
                            "The function could not be run; see the ESB log",
                            &request_id,
                        );
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
            if tail {
                let encoded = base64::engine::general_purpose::STANDARD.encode(log_tail.as_bytes());
                if let Ok(v) = HeaderValue::from_str(&encoded) {
                    headers.insert("x-amz-log-result", v);
                }
            }
            set_request_id(headers, &request_id);
            r
        }
    }
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
