//! The Lambda Runtime API (HTTP/1.1, keep-alive) for one worker.
//!
//! Routes: `GET /2018-06-01/runtime/invocation/next` (long poll),
//! `POST .../invocation/{id}/response`, `POST .../invocation/{id}/error`,
//! `POST /2018-06-01/runtime/init/error`, `GET /2018-06-01/ping`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::rendezvous::{Completion, Delivery, InitSignal, Shared};

/// RIE's limit for a buffered response: 6 MiB plus 100 bytes.
pub(crate) const MAX_RESPONSE_BYTES: usize = esb_runtimes_core::MAX_SYNC_PAYLOAD + 100;

const PREFIX: &str = "/2018-06-01/runtime/";

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "runtime api accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small request/response pairs: Nagle would add 40 ms stalls.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, request).await) }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn json(status: StatusCode, body: Bytes) -> Reply {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn accepted() -> Reply {
    json(
        StatusCode::ACCEPTED,
        Bytes::from_static(br#"{"status":"OK"}"#),
    )
}

fn error(status: StatusCode, error_type: &str, message: &str) -> Reply {
    let body = serde_json::json!({ "errorMessage": message, "errorType": error_type });
    json(status, Bytes::from(body.to_string()))
}

fn invalid_request_id() -> Reply {
    error(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        "Invalid request ID",
    )
}

async fn route(shared: &Arc<Shared>, request: Request<Incoming>) -> Reply {
    let path = request.uri().path();
    if path == "/2018-06-01/ping" {
        return Response::new(Full::new(Bytes::from_static(b"pong")));
    }
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return error(StatusCode::NOT_FOUND, "NotFound", "unknown path");
    };
    let method = request.method().clone();
    match rest {
        "invocation/next" if method == Method::GET => next(shared).await,
        "init/error" if method == Method::POST => init_error(shared, request).await,
        _ => match rest
            .strip_prefix("invocation/")
            .and_then(|r| r.rsplit_once('/'))
        {
            Some((id, "response")) if method == Method::POST => {
                let id = id.to_string();
                respond(shared, &id, request, false).await
            }
            Some((id, "error")) if method == Method::POST => {
                let id = id.to_string();
                respond(shared, &id, request, true).await
            }
            Some((_, "response" | "error")) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "method not allowed",
            ),
            _ if rest == "invocation/next" || rest == "init/error" => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "method not allowed",
            ),
            _ => error(StatusCode::NOT_FOUND, "NotFound", "unknown path"),
        },
    }
}

fn delivery_response(delivery: Delivery) -> Reply {
    let mut response = Response::new(Full::new(delivery.payload));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("lambda-runtime-aws-request-id", delivery.request_id);
    headers.insert("lambda-runtime-deadline-ms", delivery.deadline_ms);
    headers.insert("lambda-runtime-invoked-function-arn", delivery.arn);
    headers.insert("lambda-runtime-trace-id", delivery.trace_id);
    if let Some(value) = delivery.client_context {
        headers.insert("lambda-runtime-client-context", value);
    }
    if let Some(value) = delivery.cognito_identity {
        headers.insert("lambda-runtime-cognito-identity", value);
    }
    response
}

async fn next(shared: &Arc<Shared>) -> Reply {
    let receiver = {
        let mut state = shared.lock_state();
        if state.dead {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Runtime.Shutdown",
                "worker is shutting down",
            );
        }
        if let Some(ready) = state.init.take() {
            let _ = ready.send(InitSignal::Ready);
        }
        if state.current.as_ref().is_some_and(|c| c.delivered) {
            return error(
                StatusCode::FORBIDDEN,
                "InvalidStateTransition",
                "State transition from Invoking to Ready failed: the current invocation has no response yet",
            );
        }
        if let Some(delivery) = state.queued.take() {
            if let Some(current) = state.current.as_mut() {
                current.delivered = true;
            }
            drop(state);
            return delivery_response(delivery);
        }
        let (sender, receiver) = oneshot::channel();
        // A newer poll replaces an older one (whose connection is likely
        // gone); the older one then answers 500.
        state.next_waiter = Some(sender);
        receiver
    };
    match receiver.await {
        Ok(delivery) => delivery_response(delivery),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Runtime.Shutdown",
            "worker is shutting down",
        ),
    }
}

enum Body {
    Complete(Bytes),
    /// Over the limit: the declared size when the runtime sent a
    /// `Content-Length`, else 0 (reading stopped past the limit, so the
    /// real size is not known).
    TooLarge(usize),
    Broken,
}

/// Reads a request body up to `limit` bytes. A declared `Content-Length`
/// over it is refused without reading; a streamed (chunked) body is read
/// only until it passes the limit, so a runtime that never stops writing
/// is cut at the cap instead of being read until the function's timeout
/// (contract W5).
async fn read_body(request: Request<Incoming>, limit: usize) -> Body {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = declared.filter(|size| *size > limit) {
        return Body::TooLarge(size);
    }
    let mut body = request.into_body();
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Body::Broken;
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Body::TooLarge(declared.unwrap_or(0));
            }
            buf.extend_from_slice(&data);
        }
    }
    Body::Complete(buf.freeze())
}

fn error_type_header(request: &Request<Incoming>) -> Option<String> {
    request
        .headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// An error body for a post whose body was empty: built from the
/// `Lambda-Runtime-Function-Error-Type` header.
fn error_body(body: Bytes, error_type: Option<String>) -> Bytes {
    if !body.is_empty() {
        return body;
    }
    let error_type = error_type.unwrap_or_else(|| "Runtime.Unknown".to_string());
    Bytes::from(serde_json::json!({ "errorMessage": "", "errorType": error_type }).to_string())
}

async fn respond(
    shared: &Arc<Shared>,
    request_id: &str,
    request: Request<Incoming>,
    is_error: bool,
) -> Reply {
    // Cheap check first, so a wrong id is not answered only after a
    // 6 MB upload.
    if !shared.is_current(request_id) {
        return invalid_request_id();
    }
    if !is_error
        && let Some(mode) = request
            .headers()
            .get("lambda-runtime-function-response-mode")
        && mode.as_bytes() != b"streaming"
    {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidFunctionResponseMode",
            "Invalid function response mode",
        );
    }
    let error_type = if is_error {
        error_type_header(&request)
    } else {
        None
    };
    let body = read_body(request, MAX_RESPONSE_BYTES).await;
    let completion = match body {
        Body::Complete(bytes) if is_error => Completion::Error(error_body(bytes, error_type)),
        Body::Complete(bytes) => Completion::Response(bytes),
        Body::TooLarge(size) => Completion::TooLarge(size),
        Body::Broken => {
            return error(
                StatusCode::BAD_REQUEST,
                "TruncatedHTTPRequest",
                "HTTP request detected as truncated",
            );
        }
    };
    let too_large = matches!(completion, Completion::TooLarge(_));
    let Some(done) = shared.take_current(request_id) else {
        return invalid_request_id();
    };
    let _ = done.send(completion);
    if too_large {
        let mut reply = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            &format!("Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."),
        );
        // The rest of the body is never read: the connection cannot be
        // reused.
        reply
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return reply;
    }
    accepted()
}

async fn init_error(shared: &Arc<Shared>, request: Request<Incoming>) -> Reply {
    let error_type = error_type_header(&request);
    let body = match read_body(request, MAX_RESPONSE_BYTES).await {
        Body::Complete(bytes) => error_body(bytes, error_type),
        Body::TooLarge(_) | Body::Broken => error_body(Bytes::new(), error_type),
    };
    let sender = shared.lock_state().init.take();
    match sender {
        Some(sender) => {
            let _ = sender.send(InitSignal::Error(body));
            accepted()
        }
        None => error(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "State transition from Ready to InitError failed: init already finished",
        ),
    }
}
