//! What the container's supervisor and its host-side client exchange:
//! the start configuration (one JSON environment variable) and the JSON
//! bodies of the small HTTP API (`GET /ready`, `POST /invoke`,
//! `GET /status`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use esb_runtimes_core::launch::LaunchPlan;
use esb_runtimes_core::{ErrorKind, FunctionSpec, Invocation, InvocationOutcome, InvokeResult};
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

/// Body of `POST /invoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeRequest {
    /// Request id.
    pub request_id: String,
    /// Event bytes, base64.
    pub payload: String,
    /// Invoked ARN.
    pub invoked_function_arn: String,
    /// Trace id.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Client context JSON.
    #[serde(default)]
    pub client_context: Option<String>,
    /// Cognito identity JSON.
    #[serde(default)]
    pub cognito_identity: Option<String>,
    /// Upper bound in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl InvokeRequest {
    /// Encodes an invocation.
    pub fn from_invocation(invocation: &Invocation) -> Self {
        Self {
            request_id: invocation.request_id.clone(),
            payload: STANDARD.encode(&invocation.payload),
            invoked_function_arn: invocation.invoked_function_arn.clone(),
            trace_id: invocation.trace_id.clone(),
            client_context: invocation.client_context.clone(),
            cognito_identity: invocation.cognito_identity.clone(),
            timeout_ms: invocation
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Decodes it; `None` when the payload is not base64.
    pub fn into_invocation(self) -> Option<Invocation> {
        let payload = STANDARD.decode(self.payload.as_bytes()).ok()?;
        Some(Invocation {
            request_id: self.request_id,
            payload: Bytes::from(payload),
            invoked_function_arn: self.invoked_function_arn,
            trace_id: self.trace_id,
            client_context: self.client_context,
            cognito_identity: self.cognito_identity,
            timeout: self.timeout_ms.map(Duration::from_millis),
        })
    }
}

/// Body of a `POST /invoke` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeResponse {
    /// `success`, `function`, `timeout`, `runtime_exit`, `init`,
    /// `too_large`.
    pub outcome: String,
    /// Response or error bytes, base64.
    pub payload: String,
    /// Last 4 KB of the invocation's log.
    pub log_tail: String,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// Init duration in microseconds (first invocation only).
    pub init_duration_us: Option<u64>,
    /// False when the runtime died and the worker must not be reused.
    pub worker_alive: bool,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl InvokeResponse {
    /// Encodes a result.
    pub fn from_result(result: &InvokeResult) -> Self {
        let (outcome, payload) = match &result.outcome {
            InvocationOutcome::Success(p) => ("success", p),
            InvocationOutcome::Error { kind, payload } => (kind_name(*kind), payload),
        };
        Self {
            outcome: outcome.to_string(),
            payload: STANDARD.encode(payload),
            log_tail: result.log_tail.clone(),
            duration_us: micros(result.duration),
            init_duration_us: result.init_duration.map(micros),
            worker_alive: result.worker_alive,
        }
    }

    /// Decodes it; `None` for an unknown outcome or bad base64.
    pub fn into_result(self) -> Option<InvokeResult> {
        let payload = Bytes::from(STANDARD.decode(self.payload.as_bytes()).ok()?);
        let outcome = if self.outcome == "success" {
            InvocationOutcome::Success(payload)
        } else {
            InvocationOutcome::Error {
                kind: parse_kind(&self.outcome)?,
                payload,
            }
        };
        Some(InvokeResult {
            outcome,
            log_tail: self.log_tail,
            duration: Duration::from_micros(self.duration_us),
            init_duration: self.init_duration_us.map(Duration::from_micros),
            worker_alive: self.worker_alive,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocation_round_trips_with_binary_payload() {
        let invocation = Invocation {
            request_id: "r1".to_string(),
            payload: Bytes::from_static(&[0, 159, 146, 150, b'{']),
            invoked_function_arn: "arn:x".to_string(),
            trace_id: Some("t".to_string()),
            client_context: None,
            cognito_identity: None,
            timeout: Some(Duration::from_millis(1500)),
        };
        let text = serde_json::to_string(&InvokeRequest::from_invocation(&invocation)).unwrap();
        let back = serde_json::from_str::<InvokeRequest>(&text)
            .unwrap()
            .into_invocation()
            .unwrap();
        assert_eq!(back.payload, invocation.payload);
        assert_eq!(back.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(back.trace_id.as_deref(), Some("t"));
    }

    #[test]
    fn result_round_trips_every_error_kind() {
        for kind in [
            ErrorKind::Function,
            ErrorKind::Timeout,
            ErrorKind::RuntimeExit,
            ErrorKind::Init,
            ErrorKind::ResponseTooLarge,
        ] {
            let result = InvokeResult {
                outcome: InvocationOutcome::Error {
                    kind,
                    payload: Bytes::from_static(b"{\"errorType\":\"X\"}"),
                },
                log_tail: "END".to_string(),
                duration: Duration::from_micros(1234),
                init_duration: Some(Duration::from_millis(5)),
                worker_alive: false,
            };
            let back = InvokeResponse::from_result(&result).into_result().unwrap();
            match back.outcome {
                InvocationOutcome::Error { kind: k, payload } => {
                    assert_eq!(k, kind);
                    assert_eq!(&payload[..], b"{\"errorType\":\"X\"}");
                }
                InvocationOutcome::Success(_) => panic!("became a success"),
            }
            assert_eq!(back.duration, Duration::from_micros(1234));
            assert!(!back.worker_alive);
        }
    }

    #[test]
    fn unknown_outcome_is_rejected() {
        let response = InvokeResponse {
            outcome: "weird".to_string(),
            payload: String::new(),
            log_tail: String::new(),
            duration_us: 0,
            init_duration_us: None,
            worker_alive: true,
        };
        assert!(response.into_result().is_none());
    }
}
