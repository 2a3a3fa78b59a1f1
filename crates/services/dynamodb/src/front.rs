//! The public side: read the body (bounded), verify SigV4 (the box's key
//! or a function's), check a function's policies (esb-iam: each table the
//! operation names), forward to dynoxide on its loopback listener, relay
//! the answer.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use esb_services_s3::listener::TimedBody;
use esb_sigv4::{Payload, SigV4Error};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

/// DynamoDB's own request limit.
pub(crate) const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;

pub(crate) struct Front {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub backend: http::uri::Authority,
    pub client: Client<HttpConnector, Full<Bytes>>,
    pub max_body: usize,
    pub iam: Option<Arc<esb_iam::Iam>>,
    /// ARNs and shard ids as AWS shows them (`streams.rs`).
    pub identity: Option<crate::StreamIdentity>,
    /// Told about each answered request (operation, status): `/metrics`.
    pub on_operation: Option<OperationObserver>,
}

/// Told about each answered request: the operation of `X-Amz-Target`
/// (`PutItem`, `GetRecords`; `Other` when absent or odd) and the HTTP status.
#[derive(Clone)]
pub struct OperationObserver(pub Arc<ObserverFn>);

/// The callback inside an [`OperationObserver`].
pub type ObserverFn = dyn Fn(&str, u16) + Send + Sync;

impl std::fmt::Debug for OperationObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperationObserver")
    }
}

/// The operation name of `X-Amz-Target` (`DynamoDB_20120810.PutItem` ->
/// `PutItem`); names that are not short ASCII words become `Other`, so a
/// client cannot put arbitrary text into a metric label.
fn operation_of(headers: &http::HeaderMap) -> &str {
    headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit_once('.'))
        .map(|(_, op)| op)
        .filter(|op| {
            !op.is_empty() && op.len() <= 40 && op.bytes().all(|b| b.is_ascii_alphanumeric())
        })
        .unwrap_or("Other")
}

/// DynamoDB's error code and message for a refused signature. Chosen by
/// variant: the client sees AWS's wording, never what exactly mismatched.
pub fn map_auth_error(err: &SigV4Error) -> (&'static str, &'static str) {
    match err {
        SigV4Error::Missing => (
            "MissingAuthenticationTokenException",
            "Request is missing Authentication Token",
        ),
        SigV4Error::Malformed(_) | SigV4Error::UnsupportedAlgorithm => (
            "IncompleteSignatureException",
            "The request signature does not conform to AWS standards.",
        ),
        SigV4Error::UnknownAccessKey => (
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ),
        SigV4Error::RequestTimeTooSkewed | SigV4Error::Expired => (
            "InvalidSignatureException",
            "Signature expired: the request time is too far from the server time.",
        ),
        SigV4Error::WrongService => (
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'dynamodb'.",
        ),
        SigV4Error::PayloadHashMismatch | SigV4Error::SignatureDoesNotMatch => (
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ),
    }
}

/// A DynamoDB JSON error response (`__type` + `message`).
pub fn auth_error_response(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "__type": format!("com.amazon.coral.service#{code}"),
        "message": message,
    })
    .to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    resp.headers_mut().insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&request_id()).unwrap_or(HeaderValue::from_static("esb")),
    );
    resp
}

fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:032X}", (t << 20) ^ u128::from(n))
}

pub(crate) async fn handle(front: Arc<Front>, req: Request<TimedBody>) -> Response<Full<Bytes>> {
    let Some(observe) = front.on_operation.clone() else {
        return handle_request(front, req).await;
    };
    let op = operation_of(req.headers()).to_string();
    let resp = handle_request(front, req).await;
    (observe.0)(&op, resp.status().as_u16());
    resp
}

async fn handle_request(front: Arc<Front>, req: Request<TimedBody>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > front.max_body as u64) {
        return too_large();
    }
    let body = match Limited::new(body, front.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return too_large();
            }
            tracing::debug!("dynamodb: reading request body failed: {e}");
            return auth_error_response(
                StatusCode::BAD_REQUEST,
                "SerializationException",
                "Could not read the request body",
            );
        }
    };
    // DynamoDB answers an unsigned `GET /` with its health line.
    let health = parts.method == http::Method::GET && parts.uri.path() == "/";
    if !health {
        let verified = esb_sigv4::verify(
            parts.method.as_str(),
            parts.uri.path(),
            parts.uri.query().unwrap_or(""),
            &parts.headers,
            Payload::Body(&body),
            |akid| {
                if akid == front.access_key_id {
                    Some(front.secret_access_key.clone())
                } else {
                    front.iam.as_ref().and_then(|iam| iam.secret_for(akid))
                }
            },
            SystemTime::now(),
        )
        .and_then(|v| v.require_service("dynamodb").map(|()| v));
        let verified = match verified {
            Ok(v) => v,
            Err(err) => {
                tracing::debug!("dynamodb: refused request: {err}");
                let (code, message) = map_auth_error(&err);
                return auth_error_response(StatusCode::BAD_REQUEST, code, message);
            }
        };
        if let Some(iam) = &front.iam
            && let Err(denied) = authorize(iam, &verified.access_key_id, &parts.headers, &body)
        {
            return auth_error_response(
                StatusCode::BAD_REQUEST,
                "AccessDeniedException",
                &denied.message,
            );
        }
    }
    let target = crate::streams::target(&parts.headers);
    let body = crate::streams::request(front.identity.as_ref(), &target, body);
    let resp = forward(&front, parts, body).await;
    crate::streams::answer(front.identity.as_ref(), &target, resp).await
}

/// A function's policies for the operation of `X-Amz-Target`
/// (`DynamoDB_20120810.PutItem` needs `dynamodb:PutItem` on each table it
/// names). The box's key is allowed everything.
fn authorize(
    iam: &esb_iam::Iam,
    access_key_id: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<(), esb_iam::Denied> {
    if !iam.evaluates(access_key_id) {
        return Ok(());
    }
    let op = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit_once('.'))
        .map_or("Unknown", |(_, op)| op);
    let needs = esb_iam::actions::dynamodb(iam.arn_context(), op, body);
    iam.check_all(access_key_id, &needs)
}

fn too_large() -> Response<Full<Bytes>> {
    auth_error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        "Request entity too large",
    )
}

async fn forward(front: &Front, parts: http::request::Parts, body: Bytes) -> Response<Full<Bytes>> {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri = match http::Uri::builder()
        .scheme("http")
        .authority(front.backend.clone())
        .path_and_query(path_and_query)
        .build()
    {
        Ok(u) => u,
        Err(_) => {
            return auth_error_response(
                StatusCode::BAD_REQUEST,
                "SerializationException",
                "Invalid request URI",
            );
        }
    };
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = parts.headers;
    strip_hop_by_hop(out.headers_mut());
    match front.client.request(out).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            match body.collect().await {
                Ok(b) => Response::from_parts(parts, Full::new(b.to_bytes())),
                Err(e) => internal_error(&e),
            }
        }
        Err(e) => internal_error(&e),
    }
}

/// Connection-level headers belong to one hop; lengths are recomputed from
/// the buffered body.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "content-length",
    ] {
        headers.remove(name);
    }
}

fn internal_error(e: &dyn std::fmt::Display) -> Response<Full<Bytes>> {
    tracing::warn!("dynamodb backend failed: {e}");
    auth_error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
        "Internal server error",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_secret_and_unknown_key_get_aws_codes() {
        assert_eq!(
            map_auth_error(&SigV4Error::SignatureDoesNotMatch).0,
            "InvalidSignatureException"
        );
        assert_eq!(
            map_auth_error(&SigV4Error::UnknownAccessKey).0,
            "UnrecognizedClientException"
        );
        assert_eq!(
            map_auth_error(&SigV4Error::Missing).0,
            "MissingAuthenticationTokenException"
        );
    }

    #[tokio::test]
    async fn error_body_is_dynamodb_json() {
        let resp = auth_error_response(StatusCode::BAD_REQUEST, "UnrecognizedClientException", "m");
        assert_eq!(resp.status(), 400);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["__type"],
            "com.amazon.coral.service#UnrecognizedClientException"
        );
    }
}

#[cfg(test)]
mod operation_tests {
    use super::operation_of;

    #[test]
    fn operation_names_come_from_the_target_and_odd_ones_are_other() {
        let mut h = http::HeaderMap::new();
        assert_eq!(operation_of(&h), "Other");
        h.insert("x-amz-target", "DynamoDB_20120810.PutItem".parse().unwrap());
        assert_eq!(operation_of(&h), "PutItem");
        h.insert(
            "x-amz-target",
            "DynamoDBStreams_20120810.GetRecords".parse().unwrap(),
        );
        assert_eq!(operation_of(&h), "GetRecords");
        h.insert("x-amz-target", "X.a b\\\"".parse().unwrap());
        assert_eq!(operation_of(&h), "Other");
    }
}
