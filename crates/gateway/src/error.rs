//! Every answer the gateway makes up by itself (as opposed to a function's
//! response) is a [`Rejection`], turned into bytes here and only here, in
//! one of two shapes:
//!
//! * [`Shape::ApiGateway`]: API Gateway's `{"message": "..."}` with the
//!   status, `x-amzn-ErrorType` and extra headers the API kind uses;
//! * [`Shape::Lambda`]: the Lambda Invoke API's
//!   `{"Type": "User"|"Service", "Message": "...", "message": "..."}` with
//!   `x-amzn-ErrorType` (botocore reads either message key).
//!
//! The rejection is chosen from the cause (a typed error), never from an
//! error's message text. Details go to the log at the place that rejects;
//! clients get the generic text below.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use esb_auth::policy::DenyKind;
use esb_pool::{PoolError, ThrottleReason};
use esb_runtimes_core::MAX_SYNC_PAYLOAD;

use crate::config::ApiKind;
use crate::limits::MAX_ASYNC_PAYLOAD;
use crate::response::Body;

/// Why the gateway answers instead of a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// A request that cannot be handled safely (bad path, duplicate Host,
    /// unreadable body).
    BadRequest,
    /// No route for the path and method.
    NoRoute,
    /// The request line plus headers, or their number, is over the limit
    /// (431).
    HeadersTooLarge,
    /// The request line alone is over the head limit (414).
    UriTooLong,
    /// The request body (or the event built from it) is over the limit.
    TooLarge(PayloadLimit),
    /// Missing or invalid token (`bearer`: send
    /// `WWW-Authenticate: Bearer error="invalid_token"`).
    Unauthorized {
        /// A JWT/Cognito authorizer refused the token.
        bearer: bool,
    },
    /// Missing or wrong API key, IAM signature refused, token without the
    /// route's scopes.
    Forbidden,
    /// A Lambda authorizer denied the request.
    Denied(DenyKind),
    /// Too many failed key or password attempts from this source.
    TooManyAttempts {
        /// Seconds until the next attempt is accepted.
        retry_after: u64,
    },
    /// No worker could be had within the wait.
    Throttled(Option<ThrottleReason>),
    /// The integration ran past its timeout.
    Timeout,
    /// The function failed, crashed, or answered something unusable.
    Integration,
    /// An authorizer failed or the route's auth is misconfigured (API
    /// Gateway: 500 "Internal server error").
    AuthorizerFailed,
    /// ESB is shutting down.
    Unavailable,
    /// No compute node can run a worker now (every agent lost).
    NoCompute(String),
    /// The route's integration is not run by ESB (contract: `RouteTarget`).
    RouteUnavailable {
        /// Status to answer.
        status: StatusCode,
        /// The `message`.
        message: String,
    },
    /// Invoke API: no such function (the ARN shown).
    FunctionNotFound(String),
    /// Invoke API: a parameter has a bad value.
    InvalidParameter(String),
    /// Invoke API: the payload is not usable.
    InvalidRequestContent(String),
    /// Invoke API: the SigV4 check refused the call.
    Signature(SignatureRefusal),
}

/// Which payload limit a request broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadLimit {
    /// The API's request body limit (API Gateway: 10 MB).
    Body,
    /// A synchronous invocation's payload or event (6 MB).
    Sync,
    /// An `Event` invocation's payload (1 MB); the declared size if known.
    Async(Option<u64>),
}

/// Why a signed Invoke API call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureRefusal {
    /// No signature at all.
    Missing,
    /// The access key is not the box's.
    UnknownAccessKey,
    /// Signed too long ago (or in the future).
    Expired,
    /// The signature does not match.
    Mismatch,
}

impl From<&esb_sigv4::SigV4Error> for SignatureRefusal {
    fn from(e: &esb_sigv4::SigV4Error) -> Self {
        use esb_sigv4::SigV4Error as E;
        match e {
            E::Missing => Self::Missing,
            E::UnknownAccessKey => Self::UnknownAccessKey,
            E::RequestTimeTooSkewed | E::Expired => Self::Expired,
            _ => Self::Mismatch,
        }
    }
}

/// The wire shape of a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// API Gateway, as the API of this kind answers.
    ApiGateway(ApiKind),
    /// The Lambda Invoke API.
    Lambda,
}

impl Rejection {
    /// The one mapping of a pool failure. `arn` names the function for
    /// "not found".
    pub(crate) fn from_pool(e: &PoolError, arn: impl FnOnce() -> String) -> Self {
        match e {
            PoolError::Throttled(reason) => Self::Throttled(Some(*reason)),
            PoolError::UnknownFunction(_) => Self::FunctionNotFound(arn()),
            PoolError::ShuttingDown => Self::Unavailable,
            PoolError::Start(esb_runtimes_core::RuntimeError::NoCompute(m)) => {
                Self::NoCompute(m.clone())
            }
            PoolError::Start(_) | PoolError::Worker(_) => Self::Integration,
        }
    }

    /// The response in `shape`.
    pub fn into_response(self, shape: Shape) -> Response<Body> {
        match shape {
            Shape::ApiGateway(kind) => self.api_gateway(kind),
            Shape::Lambda => self.lambda(),
        }
    }

    fn api_gateway(self, kind: ApiKind) -> Response<Body> {
        let (status, body, error_type) = self.api_gateway_parts(kind == ApiKind::Rest);
        let mut r = json_response(status, body);
        let headers = r.headers_mut();
        if let Some(t) = error_type {
            headers.insert("x-amzn-errortype", HeaderValue::from_static(t));
        }
        match self {
            Self::Unauthorized { bearer: true } => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                );
            }
            Self::TooManyAttempts { retry_after } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
            }
            Self::Throttled(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }

    /// API Gateway's status, body and `x-amzn-ErrorType` (REST only).
    fn api_gateway_parts(&self, rest: bool) -> (StatusCode, Bytes, Option<&'static str>) {
        let rest_type = |t: &'static str| rest.then_some(t);
        match self {
            Self::BadRequest | Self::InvalidParameter(_) | Self::InvalidRequestContent(_) => (
                StatusCode::BAD_REQUEST,
                Bytes::from_static(br#"{"message":"Bad Request"}"#),
                rest_type("BadRequestException"),
            ),
            Self::NoRoute if rest => (
                StatusCode::FORBIDDEN,
                Bytes::from_static(br#"{"message":"Missing Authentication Token"}"#),
                Some("MissingAuthenticationTokenException"),
            ),
            Self::NoRoute => (
                StatusCode::NOT_FOUND,
                Bytes::from_static(br#"{"message":"Not Found"}"#),
                None,
            ),
            Self::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Bytes::from_static(br#"{"message":"Request Too Long"}"#),
                rest_type("RequestTooLongException"),
            ),
            Self::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Bytes::from_static(br#"{"message":"Request Header Fields Too Large"}"#),
                None,
            ),
            Self::UriTooLong => (
                StatusCode::URI_TOO_LONG,
                Bytes::from_static(br#"{"message":"Request-URI Too Long"}"#),
                None,
            ),
            Self::Unauthorized { .. } => (
                StatusCode::UNAUTHORIZED,
                Bytes::from_static(br#"{"message":"Unauthorized"}"#),
                None,
            ),
            Self::Forbidden | Self::Signature(_) => (
                StatusCode::FORBIDDEN,
                Bytes::from_static(br#"{"message":"Forbidden"}"#),
                None,
            ),
            // HTTP APIs answer every deny with the simple body.
            Self::Denied(d) => (
                StatusCode::FORBIDDEN,
                Bytes::from_static(if rest { *d } else { DenyKind::Simple }.body().as_bytes()),
                None,
            ),
            Self::TooManyAttempts { .. } | Self::Throttled(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                Bytes::from_static(br#"{"message":"Too Many Requests"}"#),
                rest_type("TooManyRequestsException"),
            ),
            Self::Timeout if rest => (
                StatusCode::GATEWAY_TIMEOUT,
                Bytes::from_static(br#"{"message": "Endpoint request timed out"}"#),
                None,
            ),
            Self::Timeout | Self::Unavailable | Self::NoCompute(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(br#"{"message":"Service Unavailable"}"#),
                None,
            ),
            Self::Integration | Self::FunctionNotFound(_) if rest => (
                StatusCode::BAD_GATEWAY,
                Bytes::from_static(br#"{"message": "Internal server error"}"#),
                Some("InternalServerErrorException"),
            ),
            Self::Integration | Self::FunctionNotFound(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(br#"{"message":"Internal Server Error"}"#),
                None,
            ),
            Self::AuthorizerFailed => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(br#"{"message":"Internal server error"}"#),
                None,
            ),
            Self::RouteUnavailable { status, message } => (
                *status,
                Bytes::from(serde_json::json!({ "message": message }).to_string()),
                None,
            ),
        }
    }

    fn lambda(self) -> Response<Body> {
        const USER: &str = "User";
        let (status, code, kind, message): (StatusCode, &'static str, &str, String) = match self {
            Self::FunctionNotFound(arn) => (
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                USER,
                format!("Function not found: {arn}"),
            ),
            Self::InvalidParameter(m) => (
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                USER,
                m,
            ),
            Self::InvalidRequestContent(m) => (
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                USER,
                m,
            ),
            Self::BadRequest => (
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                USER,
                "Could not read request body".into(),
            ),
            Self::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLargeException",
                USER,
                too_large_message(limit),
            ),
            Self::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "RequestTooLargeException",
                USER,
                "Request header fields too large".into(),
            ),
            Self::UriTooLong => (
                StatusCode::URI_TOO_LONG,
                "RequestTooLargeException",
                USER,
                "Request-URI too long".into(),
            ),
            Self::Throttled(reason) => return throttled(reason),
            Self::Signature(refusal) => {
                let (code, message) = signature_text(refusal);
                (StatusCode::FORBIDDEN, code, USER, message.into())
            }
            Self::NoRoute | Self::Unauthorized { .. } | Self::Forbidden | Self::Denied(_) => (
                StatusCode::FORBIDDEN,
                "AccessDeniedException",
                USER,
                "Access denied".into(),
            ),
            Self::TooManyAttempts { retry_after } => {
                let mut r = throttled(None);
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after));
                return r;
            }
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceException",
                "Service",
                "ESB is shutting down".into(),
            ),
            Self::NoCompute(message) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceException",
                "Service",
                message,
            ),
            Self::Integration
            | Self::Timeout
            | Self::AuthorizerFailed
            | Self::RouteUnavailable { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "Service",
                "The function could not be run; see the ESB log".into(),
            ),
        };
        let body = serde_json::json!({"Type": kind, "Message": message, "message": message});
        let mut r = json_response(status, body.to_string());
        r.headers_mut()
            .insert("x-amzn-errortype", HeaderValue::from_static(code));
        r
    }
}

fn too_large_message(limit: PayloadLimit) -> String {
    match limit {
        PayloadLimit::Async(Some(size)) => format!(
            "{size} byte payload is too large for the Event invocation type (limit {MAX_ASYNC_PAYLOAD} bytes)"
        ),
        PayloadLimit::Async(None) => format!(
            "Payload is too large for the Event invocation type (limit {MAX_ASYNC_PAYLOAD} bytes)"
        ),
        PayloadLimit::Sync | PayloadLimit::Body => format!(
            "Request must be smaller than {MAX_SYNC_PAYLOAD} bytes for the InvokeFunction operation"
        ),
    }
}

fn signature_text(refusal: SignatureRefusal) -> (&'static str, &'static str) {
    match refusal {
        SignatureRefusal::Missing => (
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ),
        SignatureRefusal::UnknownAccessKey => (
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ),
        SignatureRefusal::Expired => ("InvalidSignatureException", "Signature expired"),
        SignatureRefusal::Mismatch => (
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        ),
    }
}

/// Lambda's `TooManyRequestsException` (`Reason` names the limit).
fn throttled(reason: Option<ThrottleReason>) -> Response<Body> {
    let reason = reason.unwrap_or(ThrottleReason::ConcurrentInvocationLimitExceeded);
    let body =
        serde_json::json!({"Reason": reason.as_str(), "Type": "User", "message": "Rate Exceeded."});
    let mut r = json_response(StatusCode::TOO_MANY_REQUESTS, body.to_string());
    let headers = r.headers_mut();
    headers.insert(
        "x-amzn-errortype",
        HeaderValue::from_static("TooManyRequestsException"),
    );
    headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// A response with a JSON body.
pub(crate) fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: Response<Body>) -> serde_json::Value {
        use http_body_util::BodyExt as _;
        let collected = futures_lite_block(r.into_body().collect()).unwrap();
        serde_json::from_slice(&collected.to_bytes()).unwrap_or(serde_json::Value::Null)
    }

    /// `Full` is ready at once: poll it with a no-op waker.
    fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a Full body is always ready"),
        }
    }

    #[test]
    fn api_gateway_table() {
        let rest = Shape::ApiGateway(ApiKind::Rest);
        let http = Shape::ApiGateway(ApiKind::Http);
        let r = Rejection::NoRoute.into_response(rest);
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.headers()["x-amzn-errortype"],
            "MissingAuthenticationTokenException"
        );
        assert_eq!(body(r)["message"], "Missing Authentication Token");
        assert_eq!(Rejection::NoRoute.into_response(http).status(), 404);
        let r = Rejection::Integration.into_response(rest);
        assert_eq!(r.status(), 502);
        assert_eq!(body(r)["message"], "Internal server error");
        assert_eq!(Rejection::Integration.into_response(http).status(), 500);
        assert_eq!(Rejection::Timeout.into_response(rest).status(), 504);
        assert_eq!(Rejection::Timeout.into_response(http).status(), 503);
        let r = Rejection::Throttled(None).into_response(http);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        assert_eq!(
            Rejection::TooLarge(PayloadLimit::Body)
                .into_response(rest)
                .status(),
            413
        );
        let r = Rejection::Unauthorized { bearer: true }.into_response(http);
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
        let r = Rejection::TooManyAttempts { retry_after: 7 }.into_response(rest);
        assert_eq!(r.headers()[RETRY_AFTER], "7");
        let r = Rejection::Denied(DenyKind::Explicit).into_response(http);
        assert_eq!(body(r)["message"], "Forbidden");
        let r = Rejection::RouteUnavailable {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "integration type HTTP_PROXY is not run by ESB".into(),
        }
        .into_response(rest);
        assert_eq!(r.status(), 500);
        assert_eq!(
            body(r)["message"],
            "integration type HTTP_PROXY is not run by ESB"
        );
    }

    #[test]
    fn lambda_table() {
        let r = Rejection::FunctionNotFound("arn:x".into()).into_response(Shape::Lambda);
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["x-amzn-errortype"], "ResourceNotFoundException");
        let b = body(r);
        assert_eq!(b["Type"], "User");
        assert_eq!(b["message"], "Function not found: arn:x");
        let r = Rejection::TooLarge(PayloadLimit::Sync).into_response(Shape::Lambda);
        assert_eq!(r.status(), 413);
        assert_eq!(
            body(r)["message"],
            format!(
                "Request must be smaller than {MAX_SYNC_PAYLOAD} bytes for the InvokeFunction operation"
            )
        );
        let r = Rejection::Throttled(Some(
            ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded,
        ))
        .into_response(Shape::Lambda);
        assert_eq!(r.status(), 429);
        assert_eq!(
            body(r)["Reason"],
            "ReservedFunctionConcurrentInvocationLimitExceeded"
        );
        let r =
            Rejection::Signature(SignatureRefusal::UnknownAccessKey).into_response(Shape::Lambda);
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.headers()["x-amzn-errortype"],
            "UnrecognizedClientException"
        );
        let r = Rejection::Unavailable.into_response(Shape::Lambda);
        assert_eq!(r.status(), 503);
        assert_eq!(body(r)["Type"], "Service");
    }

    #[test]
    fn pool_errors_by_cause() {
        let arn = || "arn:f".to_string();
        assert_eq!(
            Rejection::from_pool(&PoolError::ShuttingDown, arn),
            Rejection::Unavailable
        );
        assert_eq!(
            Rejection::from_pool(&PoolError::UnknownFunction("f".into()), arn),
            Rejection::FunctionNotFound("arn:f".into())
        );
        assert_eq!(
            Rejection::from_pool(
                &PoolError::Throttled(ThrottleReason::ConcurrentInvocationLimitExceeded),
                arn
            ),
            Rejection::Throttled(Some(ThrottleReason::ConcurrentInvocationLimitExceeded))
        );
    }

    #[test]
    fn no_compute_node_is_503_in_both_shapes() {
        let e = PoolError::Start(esb_runtimes_core::RuntimeError::NoCompute(
            "no compute node is reachable (agents: http://10.0.0.2:7443)".into(),
        ));
        let arn = || "arn".to_string();
        for kind in [ApiKind::Rest, ApiKind::Http] {
            let r = Rejection::from_pool(&e, arn).into_response(Shape::ApiGateway(kind));
            assert_eq!(r.status(), 503, "{kind:?}");
        }
        let r = Rejection::from_pool(&e, arn).into_response(Shape::Lambda);
        assert_eq!(r.status(), 503);
    }
}
