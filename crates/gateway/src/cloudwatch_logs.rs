//! The CloudWatch Logs API on the gateway's listener: `POST /` with
//! `X-Amz-Target: Logs_20140328.<Operation>` and a JSON 1.1 body, signed
//! with SigV4 for service `logs` like the Invoke API is for `lambda`. The
//! operations themselves are `esb_services_logs::cloudwatch` over the log
//! store; this file is the HTTP glue (enabled with
//! [`GatewayState::enable_cloudwatch_logs`]).

use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

use crate::GatewayState;
use crate::auth::sigv4;
use crate::context::Ctx;
use crate::limits;
use crate::response::Body;

/// `X-Amz-Target` prefix of CloudWatch Logs.
const TARGET_PREFIX: &str = "Logs_20140328.";
/// Largest request body (`PutLogEvents` allows 1 MB of events).
const BODY_LIMIT: usize = 2 * 1024 * 1024;

pub(crate) type Slot = OnceLock<PathBuf>;

impl GatewayState {
    /// Serves the CloudWatch Logs subset over the store in `dir`. A second
    /// call is ignored.
    pub fn enable_cloudwatch_logs(&self, dir: PathBuf) {
        let _ = self.inner.logs_dir.set(dir);
    }
}

/// The operation when this is a CloudWatch Logs call ESB serves.
pub(crate) fn operation(state: &GatewayState, parts: &Parts) -> Option<String> {
    state.inner.logs_dir.get()?;
    // AWS clients post to `/`; other paths stay the APIs'.
    if parts.method != Method::POST || parts.uri.path() != "/" {
        return None;
    }
    let target = parts.headers.get("x-amz-target")?.to_str().ok()?;
    target.strip_prefix(TARGET_PREFIX).map(str::to_string)
}

fn answer(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    r
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "__type": kind, "message": message });
    answer(status, body.to_string().into_bytes())
}

/// Answers one call.
pub(crate) async fn handle<B>(ctx: &Ctx<'_>, op: String, body: B) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let state = ctx.state;
    let Some(dir) = state.inner.logs_dir.get().cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "not served",
        );
    };
    let body = match limits::read_body(&ctx.parts.headers, body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "InvalidParameterException",
                "request body too large",
            );
        }
    };
    if let Err(e) = sigv4::check_service(ctx, &body, "logs") {
        tracing::info!(
            request_id = ctx.request_id,
            "cloudwatch logs call refused: {e}"
        );
        return error(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    }
    let functions: Vec<String> = state
        .invoker()
        .functions()
        .iter()
        .map(|f| f.name.clone())
        .collect();
    let region = state.inner.settings.region.clone();
    let account = state.inner.settings.account_id.clone();
    // File reads: off the async threads.
    let out = tokio::task::spawn_blocking(move || {
        let scope = esb_services_logs::cloudwatch::Scope {
            dir: &dir,
            functions: &functions,
            region: &region,
            account: &account,
        };
        esb_services_logs::cloudwatch::handle(&scope, &op, &body)
    })
    .await;
    match out {
        Ok(Ok(value)) => answer(StatusCode::OK, value.to_string().into_bytes()),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.kind, &e.message),
        Err(e) => {
            tracing::error!(
                request_id = ctx.request_id,
                "cloudwatch logs task failed: {e}"
            );
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceUnavailableException",
                "internal error",
            )
        }
    }
}
