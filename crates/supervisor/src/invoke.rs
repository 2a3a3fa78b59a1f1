//! One invocation on a worker: hand the event over, wait for the answer,
//! the timeout or the runtime's exit, and write START / END / REPORT.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use esb_runtimes_core::{ErrorKind, Invocation, InvocationOutcome, InvokeResult, WorkerError};
use http::HeaderValue;
use tokio::sync::oneshot;

use crate::process::{describe_exit, kill_process_group};
use crate::rendezvous::{Completion, Delivery};
use crate::server::MAX_RESPONSE_BYTES;
use crate::supervisor::{Supervisor, error_payload};

/// How the wait for the runtime ended.
enum Ended {
    Completed(Completion),
    Exited,
    TimedOut,
}

impl Supervisor {
    /// Runs one invocation to its end: response, function error, timeout
    /// (the runtime is killed), crash, or oversized response.
    ///
    /// If the returned future is dropped before it finishes, the runtime
    /// is killed: its state would be unknown.
    pub async fn invoke(&self, invocation: Invocation) -> Result<InvokeResult, WorkerError> {
        if !self.is_alive() {
            return Err(WorkerError::Gone(self.id.clone()));
        }
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(WorkerError::Busy(self.id.clone()));
        }
        let mut guard = CancelGuard {
            supervisor: self,
            armed: true,
        };
        let result = self.run(invocation).await;
        guard.armed = false;
        self.busy.store(false, Ordering::Release);
        result
    }

    async fn run(&self, invocation: Invocation) -> Result<InvokeResult, WorkerError> {
        let limit = invocation
            .timeout
            .map_or(self.spec.timeout, |t| t.min(self.spec.timeout));
        let delivery = self.delivery(&invocation, limit)?;
        let request_id: Arc<str> = Arc::from(invocation.request_id.as_str());
        let (done_tx, done_rx) = oneshot::channel();
        self.logs.begin(
            request_id.clone(),
            &format!("START RequestId: {request_id} Version: $LATEST"),
        );
        let started = Instant::now();
        if self
            .shared
            .post(request_id.clone(), delivery, done_tx)
            .is_err()
        {
            self.logs.finish(&[]);
            return Err(WorkerError::Gone(self.id.clone()));
        }
        let ended = self.wait(done_rx, limit).await;
        let duration = started.elapsed();
        if let Some(mb) = self.proc_status.peak_rss_mb() {
            self.max_memory_mb.store(mb, Ordering::Relaxed);
        }
        let init_duration = self.init_duration.lock().take();
        let mut closing = Vec::new();
        let (outcome, duration) = self
            .outcome(ended, &request_id, limit, duration, &mut closing)
            .await;
        self.shared.end(&request_id);
        closing.push(format!("END RequestId: {request_id}"));
        closing.push(self.report_line(&request_id, duration, init_duration));
        let closing: Vec<&str> = closing.iter().map(String::as_str).collect();
        let log_tail = self.logs.finish(&closing);
        Ok(InvokeResult {
            outcome,
            log_tail,
            duration,
            init_duration,
            worker_alive: self.is_alive(),
        })
    }

    /// The headers and body `/next` hands over, prepared outside locks.
    fn delivery(&self, invocation: &Invocation, limit: Duration) -> Result<Delivery, WorkerError> {
        let now = SystemTime::now();
        let deadline_ms = now.duration_since(UNIX_EPOCH).unwrap_or_default() + limit;
        let transport = |message: &str| WorkerError::Transport {
            worker: self.id.clone(),
            message: message.to_string(),
        };
        let request_id = header_value(&invocation.request_id)
            .ok_or_else(|| transport("request id is not a valid header value"))?;
        let arn = if invocation.invoked_function_arn.is_empty() {
            header_value(&self.spec.arn())
        } else {
            header_value(&invocation.invoked_function_arn)
        }
        .ok_or_else(|| transport("invalid function arn"))?;
        let trace_id = invocation
            .trace_id
            .as_deref()
            .and_then(header_value)
            .unwrap_or_else(|| {
                HeaderValue::from_str(&generated_trace_id(now)).unwrap_or(HeaderValue::from_static(
                    "Root=1-00000000-000000000000000000000000;Sampled=0",
                ))
            });
        Ok(Delivery {
            request_id,
            deadline_ms: HeaderValue::from(deadline_ms.as_millis() as u64),
            arn,
            trace_id,
            client_context: invocation.client_context.as_deref().and_then(header_value),
            cognito_identity: invocation
                .cognito_identity
                .as_deref()
                .and_then(header_value),
            payload: invocation.payload.clone(),
        })
    }

    async fn wait(&self, done: oneshot::Receiver<Completion>, limit: Duration) -> Ended {
        let mut exit = self.exit.clone();
        tokio::select! {
            biased;
            completion = done => match completion {
                Ok(c) => Ended::Completed(c),
                Err(_) => Ended::Exited,
            },
            _ = exit.wait_for(Option::is_some) => Ended::Exited,
            _ = tokio::time::sleep(limit) => Ended::TimedOut,
        }
    }

    /// What the caller gets, and the billed duration; lines to log before
    /// END go to `closing`. A timeout or crash kills and reaps the runtime.
    async fn outcome(
        &self,
        ended: Ended,
        request_id: &str,
        limit: Duration,
        duration: Duration,
        closing: &mut Vec<String>,
    ) -> (InvocationOutcome, Duration) {
        let error = |kind, error_type: &str, message: &str| InvocationOutcome::Error {
            kind,
            payload: error_payload(error_type, message),
        };
        match ended {
            Ended::Completed(Completion::Response(body)) => {
                (InvocationOutcome::Success(body), duration)
            }
            Ended::Completed(Completion::Error(payload)) => (
                InvocationOutcome::Error {
                    kind: ErrorKind::Function,
                    payload,
                },
                duration,
            ),
            Ended::Completed(Completion::TooLarge(size)) => {
                // 0: a streamed body cut at the cap, size unknown.
                let message = if size > 0 {
                    format!(
                        "Response payload size ({size} bytes) exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."
                    )
                } else {
                    format!(
                        "Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."
                    )
                };
                closing.push(format!("{} {request_id} {message}", iso_now()));
                let kind = ErrorKind::ResponseTooLarge;
                (
                    error(kind, "Function.ResponseSizeTooLarge", &message),
                    duration,
                )
            }
            Ended::TimedOut => {
                self.kill_and_reap().await;
                let seconds = format!("{:.2}", limit.as_secs_f64());
                closing.push(format!(
                    "{} {request_id} Task timed out after {seconds} seconds",
                    iso_now()
                ));
                let message = format!(
                    "RequestId: {request_id} Error: Task timed out after {seconds} seconds"
                );
                (
                    error(ErrorKind::Timeout, "Sandbox.Timedout", &message),
                    limit,
                )
            }
            Ended::Exited => {
                // Make sure the process is reaped (and the group killed).
                self.kill_and_reap().await;
                let reason = self
                    .exit
                    .borrow()
                    .as_ref()
                    .map(describe_exit)
                    .unwrap_or_else(|| "exited without providing a reason".to_string());
                let message =
                    format!("RequestId: {request_id} Error: Runtime exited with error: {reason}");
                // Past MemorySize the cgroup's OOM killer ended it, as on AWS.
                let error_type = if crate::containment::oom_killed(self.pid) {
                    "Runtime.OutOfMemory"
                } else {
                    "Runtime.ExitError"
                };
                closing.push(message.clone());
                closing.push(error_type.to_string());
                let kind = ErrorKind::RuntimeExit;
                (error(kind, error_type, &message), duration)
            }
        }
    }

    fn report_line(
        &self,
        request_id: &str,
        duration: Duration,
        init_duration: Option<Duration>,
    ) -> String {
        let duration_ms = duration.as_secs_f64() * 1000.0;
        let mut report = format!(
            "REPORT RequestId: {request_id}\tDuration: {duration_ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\tMax Memory Used: {} MB\t",
            duration_ms.ceil().max(1.0) as u64,
            self.spec.memory_mb,
            self.max_memory_mb.load(Ordering::Relaxed),
        );
        if let Some(init) = init_duration {
            report.push_str(&format!(
                "Init Duration: {:.2} ms\t",
                init.as_secs_f64() * 1000.0
            ));
        }
        report
    }
}

/// Kills the runtime when an invocation is abandoned half-way.
struct CancelGuard<'a> {
    supervisor: &'a Supervisor,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let supervisor = self.supervisor;
            supervisor.alive.store(false, Ordering::SeqCst);
            if supervisor.exit.borrow().is_none() {
                kill_process_group(supervisor.pid);
            }
            supervisor.shared.mark_dead();
            supervisor.busy.store(false, Ordering::Release);
        }
    }
}

fn header_value(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(value).ok()
}

/// An X-Ray style trace id for a caller that sent none. Trace ids need to
/// be unique, not unguessable: the bits come from std's per-thread random
/// hash keys over a counter, so no `getrandom` system call is made per
/// invocation (two `Uuid::new_v4` calls made two, measured in
/// docs/benchmarks.md).
pub(crate) fn generated_trace_id(now: SystemTime) -> String {
    let epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (a, b) = (random_u64(), random_u64());
    format!(
        "Root=1-{epoch:08x}-{:08x}{a:016x};Parent={b:016x};Sampled=0",
        (b >> 32) as u32 ^ (a as u32)
    )
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

fn iso_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_trace_id_has_xray_shape() {
        let id = generated_trace_id(SystemTime::now());
        let parts: Vec<&str> = id.split(';').collect();
        assert_eq!(parts.len(), 3);
        assert!(parts[0].starts_with("Root=1-") && parts[0].len() == "Root=1-".len() + 8 + 1 + 24);
        assert_eq!(parts[1].len(), "Parent=".len() + 16);
        assert_eq!(parts[2], "Sampled=0");
        assert_ne!(id, generated_trace_id(SystemTime::now()), "ids differ");
    }
}
