//! What the container's supervisor and its host-side client exchange:
//! the start configuration (one JSON environment variable), the small JSON
//! bodies of `GET /ready` and `GET /status`, and the lean framing of the
//! warm path, `POST /invoke`: the event is the raw request body and the
//! result the raw answer body (followed by the log tail), with the few
//! other fields in [`header`]s, so nothing is base64-encoded or parsed as
//! JSON per invocation. HTTP/1.1 keep-alive stays the transport: it is
//! what hyper already gives both sides (no hand-written framing code).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use esb_runtimes_core::launch::LaunchPlan;
use esb_runtimes_core::{ErrorKind, FunctionSpec, Invocation, InvocationOutcome, InvokeResult};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

/// Environment variable holding the [`ContainerConfig`] as JSON.
pub const CONFIG_ENV: &str = "ESB_SUPERVISOR_CONFIG";

/// Port the supervisor serves its invoke API on inside the container.
pub const DEFAULT_PORT: u16 = 9100;

/// Where the function's code is inside the container.
pub const TASK_ROOT: &str = "/var/task";

/// Everything the in-container supervisor needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// Worker id (also the container's `io.esb.worker` label).
    pub worker_id: String,
    /// The function, as the runtime must see it.
    pub function: FunctionConfig,
    /// How to start the runtime client inside the container.
    pub launch: LaunchConfig,
    /// Port of the invoke API (all interfaces of the container).
    pub port: u16,
    /// Loopback ports of the container forwarded to services outside it,
    /// so endpoint URLs such as `https://127.0.0.1:8443` (and the
    /// certificate names they were issued for) work unchanged inside.
    #[serde(default)]
    pub forwards: Vec<Forward>,
}

/// One forwarded loopback port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// Port on the container's `127.0.0.1`.
    pub local_port: u16,
    /// Host name (a network alias such as `s3-storage`) or address.
    pub host: String,
    /// Port there.
    pub port: u16,
}

/// The serialisable part of a [`FunctionSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// Function name.
    pub name: String,
    /// Lambda runtime identifier (empty for images).
    pub runtime: String,
    /// Handler, if any.
    pub handler: Option<String>,
    /// `MemorySize` in MB.
    pub memory_mb: u32,
    /// `Timeout` in milliseconds.
    pub timeout_ms: u64,
    /// The function's environment (template variables and endpoints).
    pub environment: BTreeMap<String, String>,
    /// Region.
    pub region: String,
    /// Account id.
    pub account_id: String,
    /// Code hash.
    pub code_hash: String,
}

impl FunctionConfig {
    /// Copies the fields of `spec` (its code directory is replaced by
    /// [`TASK_ROOT`] on the other side).
    pub fn from_spec(spec: &FunctionSpec) -> Self {
        Self {
            name: spec.name.clone(),
            runtime: spec.runtime.clone(),
            handler: spec.handler.clone(),
            memory_mb: spec.memory_mb,
            timeout_ms: u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
            environment: spec.environment.clone(),
            region: spec.region.clone(),
            account_id: spec.account_id.clone(),
            code_hash: spec.code_hash.clone(),
        }
    }

    /// The spec inside the container: code at `code_dir`, no image.
    pub fn to_spec(&self, code_dir: PathBuf) -> FunctionSpec {
        FunctionSpec {
            name: self.name.clone(),
            runtime: self.runtime.clone(),
            handler: self.handler.clone(),
            code_dir,
            image: None,
            memory_mb: self.memory_mb,
            timeout: Duration::from_millis(self.timeout_ms),
            environment: self.environment.clone(),
            region: self.region.clone(),
            account_id: self.account_id.clone(),
            code_hash: self.code_hash.clone(),
        }
    }
}

/// The serialisable form of a [`LaunchPlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchConfig {
    /// Program (path inside the container).
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Runtime-specific variables.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub working_dir: String,
    /// `AWS_EXECUTION_ENV`.
    pub execution_env: Option<String>,
}

impl LaunchConfig {
    /// The launch plan it describes.
    pub fn to_plan(&self) -> LaunchPlan {
        LaunchPlan {
            program: PathBuf::from(&self.program),
            args: self.args.clone(),
            env: self.env.clone(),
            working_dir: PathBuf::from(&self.working_dir),
            execution_env: self.execution_env.clone(),
            description: format!("{} in a container", self.program),
        }
    }
}

/// Headers of `POST /invoke` and its answer. The event and the result
/// travel as the raw HTTP body (no JSON, no base64): the few fields around
/// them are headers, JSON texts (client context, Cognito identity) base64
/// in theirs because header values must be visible ASCII.
pub mod header {
    /// Request id (`Lambda-Runtime-Aws-Request-Id`).
    pub const REQUEST_ID: &str = "esb-request-id";
    /// Invoked function ARN.
    pub const FUNCTION_ARN: &str = "esb-function-arn";
    /// Trace id, when the caller sent one.
    pub const TRACE_ID: &str = "esb-trace-id";
    /// Client context JSON, base64.
    pub const CLIENT_CONTEXT: &str = "esb-client-context";
    /// Cognito identity JSON, base64.
    pub const COGNITO_IDENTITY: &str = "esb-cognito-identity";
    /// Upper bound of this invocation in milliseconds.
    pub const TIMEOUT_MS: &str = "esb-timeout-ms";
    /// Answer: `success`, `function`, `timeout`, `runtime_exit`, `init`,
    /// `too_large`.
    pub const OUTCOME: &str = "esb-outcome";
    /// Answer: duration in microseconds.
    pub const DURATION_US: &str = "esb-duration-us";
    /// Answer: init duration in microseconds (first invocation only).
    pub const INIT_DURATION_US: &str = "esb-init-duration-us";
    /// Answer: `0` when the runtime died and the worker must not be reused.
    pub const WORKER_ALIVE: &str = "esb-worker-alive";
    /// Answer: the body's last N bytes are the invocation's log tail
    /// (UTF-8), the bytes before them the response or error payload.
    pub const LOG_TAIL_BYTES: &str = "esb-log-tail-bytes";
}

/// A field that cannot travel in a header (not visible ASCII).
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a valid header value")]
pub struct HeaderError(&'static str);

fn put(headers: &mut HeaderMap, name: &'static str, value: &str) -> Result<(), HeaderError> {
    let value = HeaderValue::from_str(value).map_err(|_| HeaderError(name))?;
    headers.insert(HeaderName::from_static(name), value);
    Ok(())
}

fn put_number(headers: &mut HeaderMap, name: &'static str, value: u64) {
    headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
}

fn text<'a>(headers: &'a HeaderMap, name: &'static str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn number(headers: &HeaderMap, name: &'static str) -> Option<u64> {
    text(headers, name).and_then(|v| v.parse().ok())
}

fn base64_text(headers: &HeaderMap, name: &'static str) -> Result<Option<String>, ()> {
    match text(headers, name) {
        None => Ok(None),
        Some(v) => STANDARD
            .decode(v)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(Some)
            .ok_or(()),
    }
}

/// The headers of `POST /invoke` for `invocation` (its payload is the
/// body). A trace id that is not a valid header value is dropped; a
/// request id or ARN that is not is an error (ESB makes both).
pub fn invoke_headers(invocation: &Invocation) -> Result<HeaderMap, HeaderError> {
    let mut headers = HeaderMap::new();
    put(&mut headers, header::REQUEST_ID, &invocation.request_id)?;
    put(
        &mut headers,
        header::FUNCTION_ARN,
        &invocation.invoked_function_arn,
    )?;
    if let Some(trace) = &invocation.trace_id {
        let _ = put(&mut headers, header::TRACE_ID, trace);
    }
    if let Some(context) = &invocation.client_context {
        put(
            &mut headers,
            header::CLIENT_CONTEXT,
            &STANDARD.encode(context),
        )?;
    }
    if let Some(identity) = &invocation.cognito_identity {
        put(
            &mut headers,
            header::COGNITO_IDENTITY,
            &STANDARD.encode(identity),
        )?;
    }
    if let Some(timeout) = invocation.timeout {
        put_number(&mut headers, header::TIMEOUT_MS, micros(timeout) / 1000);
    }
    Ok(headers)
}

/// The invocation a `POST /invoke` carries; `None` without a request id or
/// with a field that does not decode.
pub fn invocation_from(headers: &HeaderMap, payload: Bytes) -> Option<Invocation> {
    Some(Invocation {
        request_id: text(headers, header::REQUEST_ID)?.to_string(),
        payload,
        invoked_function_arn: text(headers, header::FUNCTION_ARN)
            .unwrap_or_default()
            .to_string(),
        trace_id: text(headers, header::TRACE_ID).map(str::to_string),
        client_context: base64_text(headers, header::CLIENT_CONTEXT).ok()?,
        cognito_identity: base64_text(headers, header::COGNITO_IDENTITY).ok()?,
        timeout: match headers.get(header::TIMEOUT_MS) {
            None => None,
            Some(_) => Some(Duration::from_millis(number(headers, header::TIMEOUT_MS)?)),
        },
    })
}

/// The answer to `POST /invoke`: headers, and the body (payload followed
/// by the log tail).
pub fn result_parts(result: &InvokeResult) -> (HeaderMap, Bytes) {
    let (outcome, payload) = match &result.outcome {
        InvocationOutcome::Success(p) => ("success", p),
        InvocationOutcome::Error { kind, payload } => (kind_name(*kind), payload),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static(header::OUTCOME),
        HeaderValue::from_static(outcome),
    );
    put_number(&mut headers, header::DURATION_US, micros(result.duration));
    if let Some(init) = result.init_duration {
        put_number(&mut headers, header::INIT_DURATION_US, micros(init));
    }
    headers.insert(
        HeaderName::from_static(header::WORKER_ALIVE),
        HeaderValue::from_static(if result.worker_alive { "1" } else { "0" }),
    );
    let tail = result.log_tail.as_bytes();
    let body = if tail.is_empty() {
        payload.clone()
    } else {
        put_number(&mut headers, header::LOG_TAIL_BYTES, tail.len() as u64);
        let mut body = Vec::with_capacity(payload.len() + tail.len());
        body.extend_from_slice(payload);
        body.extend_from_slice(tail);
        Bytes::from(body)
    };
    (headers, body)
}

/// Decodes an answer to `POST /invoke`; `None` for an unknown outcome or
/// a malformed header.
pub fn result_from(headers: &HeaderMap, mut body: Bytes) -> Option<InvokeResult> {
    let tail_len = match headers.get(header::LOG_TAIL_BYTES) {
        None => 0,
        Some(_) => usize::try_from(number(headers, header::LOG_TAIL_BYTES)?).ok()?,
    };
    let split = body.len().checked_sub(tail_len)?;
    let tail = body.split_off(split);
    let log_tail = String::from_utf8_lossy(&tail).into_owned();
    let outcome = match text(headers, header::OUTCOME)? {
        "success" => InvocationOutcome::Success(body),
        other => InvocationOutcome::Error {
            kind: parse_kind(other)?,
            payload: body,
        },
    };
    Some(InvokeResult {
        outcome,
        log_tail,
        duration: Duration::from_micros(number(headers, header::DURATION_US)?),
        init_duration: match headers.get(header::INIT_DURATION_US) {
            None => None,
            Some(_) => Some(Duration::from_micros(number(
                headers,
                header::INIT_DURATION_US,
            )?)),
        },
        worker_alive: text(headers, header::WORKER_ALIVE)? != "0",
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Function => "function",
        ErrorKind::Timeout => "timeout",
        ErrorKind::RuntimeExit => "runtime_exit",
        ErrorKind::Init => "init",
        ErrorKind::ResponseTooLarge => "too_large",
    }
}

fn parse_kind(name: &str) -> Option<ErrorKind> {
    Some(match name {
        "function" => ErrorKind::Function,
        "timeout" => ErrorKind::Timeout,
        "runtime_exit" => ErrorKind::RuntimeExit,
        "init" => ErrorKind::Init,
        "too_large" => ErrorKind::ResponseTooLarge,
        _ => return None,
    })
}

/// Body of `GET /ready` (200 when ready, 502 with `error` when init
/// failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyResponse {
    /// Worker id.
    pub worker_id: String,
    /// Init duration in microseconds, when ready.
    pub init_duration_us: Option<u64>,
    /// The Lambda init error JSON, when init failed.
    pub error: Option<String>,
}

/// Body of `GET /status`: what the janitor checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// Worker id.
    pub worker_id: String,
    /// Function name.
    pub function: String,
    /// Code hash the worker was started with.
    pub code_hash: String,
    /// Runtime ready and alive.
    pub alive: bool,
    /// An invocation is running.
    pub busy: bool,
    /// Milliseconds since the last invocation ended (or since start).
    pub idle_ms: u64,
    /// Invocations served.
    pub invocations: u64,
}

/// `GET /logs`: the function's output as a stream of records, one per
/// line: the request id (empty outside an invocation), a tab, the line,
/// a newline. An empty record (a lone newline) is a heartbeat.
///
/// Appends one record to `out`. A request id never holds a tab or a line
/// break (they are replaced), and a line never holds a newline (the
/// supervisor splits output on them; a stray one is replaced too), so
/// every record parses back.
pub fn push_log_record(out: &mut String, request_id: Option<&str>, line: &str) {
    if let Some(id) = request_id {
        out.extend(id.chars().map(|c| {
            if matches!(c, '\t' | '\n' | '\r') {
                ' '
            } else {
                c
            }
        }));
    }
    out.push('\t');
    if line.contains('\n') {
        out.push_str(&line.replace('\n', " "));
    } else {
        out.push_str(line);
    }
    out.push('\n');
}

/// One record of the `GET /logs` stream (without its newline): the
/// request id (`None` when empty) and the line; `None` for a heartbeat
/// or a record without a tab.
pub fn parse_log_record(record: &str) -> Option<(Option<&str>, &str)> {
    let (id, line) = record.split_once('\t')?;
    Some(((!id.is_empty()).then_some(id), line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_round_trip_and_cannot_be_split_by_their_content() {
        let mut out = String::new();
        push_log_record(&mut out, Some("r1"), "hello\tworld");
        push_log_record(&mut out, None, "outside");
        push_log_record(&mut out, Some("bad\tid\n"), "two\nlines");
        let records: Vec<_> = out.lines().map(parse_log_record).collect();
        assert_eq!(
            records,
            vec![
                Some((Some("r1"), "hello\tworld")),
                Some((None, "outside")),
                Some((Some("bad id "), "two lines")),
            ]
        );
        assert_eq!(parse_log_record(""), None);
    }

    #[test]
    fn invocation_round_trips_with_binary_payload() {
        let invocation = Invocation {
            request_id: "r1".to_string(),
            payload: Bytes::from_static(&[0, 159, 146, 150, b'{']),
            invoked_function_arn: "arn:x".to_string(),
            trace_id: Some("t".to_string()),
            client_context: Some("{\"custom\":\"\u{e9}\\n\"}".to_string()),
            cognito_identity: None,
            timeout: Some(Duration::from_millis(1500)),
        };
        let headers = invoke_headers(&invocation).unwrap();
        let back = invocation_from(&headers, invocation.payload.clone()).unwrap();
        assert_eq!(back.payload, invocation.payload);
        assert_eq!(back.request_id, "r1");
        assert_eq!(back.invoked_function_arn, "arn:x");
        assert_eq!(back.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(back.trace_id.as_deref(), Some("t"));
        assert_eq!(back.client_context, invocation.client_context);
        assert_eq!(back.cognito_identity, None);
    }

    #[test]
    fn hostile_trace_id_is_dropped_and_bad_headers_are_refused() {
        let invocation = Invocation {
            request_id: "r1".to_string(),
            payload: Bytes::new(),
            invoked_function_arn: "arn:x".to_string(),
            trace_id: Some("a\r\nX-Injected: 1".to_string()),
            client_context: None,
            cognito_identity: None,
            timeout: None,
        };
        let headers = invoke_headers(&invocation).unwrap();
        assert!(headers.get(header::TRACE_ID).is_none());
        assert!(headers.get("x-injected").is_none());

        let mut bad = headers.clone();
        bad.insert(header::CLIENT_CONTEXT, HeaderValue::from_static("%%%"));
        assert!(invocation_from(&bad, Bytes::new()).is_none());
        let mut bad = headers.clone();
        bad.insert(header::TIMEOUT_MS, HeaderValue::from_static("soon"));
        assert!(invocation_from(&bad, Bytes::new()).is_none());
        let mut bad = headers;
        bad.remove(header::REQUEST_ID);
        assert!(invocation_from(&bad, Bytes::new()).is_none());
    }

    fn describe(outcome: &InvocationOutcome) -> (Option<ErrorKind>, Vec<u8>) {
        match outcome {
            InvocationOutcome::Success(p) => (None, p.to_vec()),
            InvocationOutcome::Error { kind, payload } => (Some(*kind), payload.to_vec()),
        }
    }

    #[test]
    fn result_round_trips_every_outcome_with_its_log_tail() {
        let mut outcomes = vec![InvocationOutcome::Success(Bytes::from_static(
            b"{\"ok\":1}",
        ))];
        for kind in [
            ErrorKind::Function,
            ErrorKind::Timeout,
            ErrorKind::RuntimeExit,
            ErrorKind::Init,
            ErrorKind::ResponseTooLarge,
        ] {
            outcomes.push(InvocationOutcome::Error {
                kind,
                payload: Bytes::from_static(b"{\"errorType\":\"X\"}"),
            });
        }
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let result = InvokeResult {
                outcome: outcome.clone(),
                log_tail: if i % 2 == 0 {
                    "START\nEND \u{e9}\n".to_string()
                } else {
                    String::new()
                },
                duration: Duration::from_micros(1234),
                init_duration: (i == 1).then(|| Duration::from_millis(5)),
                worker_alive: i != 3,
            };
            let (headers, body) = result_parts(&result);
            let back = result_from(&headers, body).unwrap();
            assert_eq!(describe(&back.outcome), describe(&outcome));
            assert_eq!(back.log_tail, result.log_tail);
            assert_eq!(back.duration, Duration::from_micros(1234));
            assert_eq!(back.init_duration, result.init_duration);
            assert_eq!(back.worker_alive, result.worker_alive);
        }
    }

    #[test]
    fn malformed_answers_are_rejected() {
        let result = InvokeResult {
            outcome: InvocationOutcome::Success(Bytes::from_static(b"ok")),
            log_tail: "tail".to_string(),
            duration: Duration::from_micros(1),
            init_duration: None,
            worker_alive: true,
        };
        let (headers, body) = result_parts(&result);
        let mut weird = headers.clone();
        weird.insert(header::OUTCOME, HeaderValue::from_static("weird"));
        assert!(result_from(&weird, body.clone()).is_none());
        let mut long = headers.clone();
        long.insert(header::LOG_TAIL_BYTES, HeaderValue::from_static("99"));
        assert!(result_from(&long, body.clone()).is_none());
        let mut none = headers;
        none.remove(header::DURATION_US);
        assert!(result_from(&none, body).is_none());
    }
}
