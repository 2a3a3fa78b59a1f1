//! The per-function circuit breaker on worker starts (contract W13).
//!
//! A function whose workers keep failing init (the runtime exits before its
//! first `/next`, posts an init error, or does not get there within the
//! init timeout) would otherwise make every request pay a full start, up
//! to the 10 s init deadline. After `breaker_threshold` start failures in a
//! row the breaker **opens**: requests that would start a worker fail at
//! once with the last init error, annotated. After `breaker_cooldown` it is
//! **half-open**: the next request that needs a worker starts one (the
//! probe) while the others still fail fast; the probe's success closes the
//! breaker, its failure opens it again for another cool-down.
//!
//! Warm workers are never refused: the breaker only gates starts.
//!
//! Failing fast answers as a failed init does on AWS, which is the nearest
//! AWS behaviour (Lambda itself has no breaker; it retries init on every
//! invocation and returns the init error): the error is
//! `RuntimeError::Init` with the last init error's `errorType` and a
//! message that says the start was not even tried. The gateway maps it
//! to 502 `Internal server error` (API Gateway) and to 200 with
//! `X-Amz-Function-Error: Unhandled` (Invoke API). Start failures other
//! than init (spawn errors, backend errors) count as well; their fast
//! answer is `RuntimeError::Backend` with the last message.

use std::time::Duration;

use bytes::Bytes;
use esb_runtimes_core::RuntimeError;
use tokio::time::Instant;

/// What a failed start left behind, to answer fast with while open.
#[derive(Debug, Clone)]
pub(crate) enum LastFailure {
    /// Init failed: the Lambda error payload.
    Init(Bytes),
    /// Any other start error, as text.
    Other(String),
}

impl LastFailure {
    pub(crate) fn of(err: &RuntimeError) -> Self {
        match err {
            RuntimeError::Init { payload, .. } => Self::Init(payload.clone()),
            other => Self::Other(other.to_string()),
        }
    }
}

/// The breaker's state, as shown by `esb ps` and `/_esb/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Starts are tried (the count of failures in a row may be above 0).
    Closed,
    /// Starts are refused until the cool-down ends.
    Open,
    /// One probe start is running; others are refused until it ends.
    HalfOpen,
}

impl BreakerState {
    /// `ok`, `open` or `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "ok",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Breaker {
    /// Start failures in a row (reset by a successful start).
    pub(crate) failures: u32,
    /// Open until then.
    open_until: Option<Instant>,
    /// A probe start is running.
    probing: bool,
    last: Option<LastFailure>,
}

/// May a start go ahead?
pub(crate) enum Admit {
    Go,
    /// Refused: answer with this.
    FailFast(RuntimeError),
}

impl Breaker {
    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        if self.probing {
            BreakerState::HalfOpen
        } else if self.open_until.is_some_and(|t| now < t) {
            BreakerState::Open
        } else if self.open_until.is_some() {
            // Cool-down over: the next start is the probe.
            BreakerState::HalfOpen
        } else {
            BreakerState::Closed
        }
    }

    /// Whether background starts (pre-warm top-up) should wait.
    pub(crate) fn is_tripped(&self) -> bool {
        self.open_until.is_some() || self.probing
    }

    /// Decides whether a start may go ahead now; the start after the
    /// cool-down becomes the probe.
    pub(crate) fn admit(&mut self, function: &str, now: Instant, cooldown: Duration) -> Admit {
        let Some(until) = self.open_until else {
            return Admit::Go;
        };
        if !self.probing && now >= until {
            self.probing = true;
            return Admit::Go;
        }
        let retry_in = until.saturating_duration_since(now);
        Admit::FailFast(self.fast_error(function, retry_in, cooldown))
    }

    fn fast_error(&self, function: &str, retry_in: Duration, cooldown: Duration) -> RuntimeError {
        let note = format!(
            "ESB did not start a worker: init failed {} times in a row, so new workers are \
             refused for {:.0} s (next attempt in {:.1} s{})",
            self.failures,
            cooldown.as_secs_f64(),
            retry_in.as_secs_f64(),
            if self.probing {
                ", one attempt running now"
            } else {
                ""
            },
        );
        match &self.last {
            Some(LastFailure::Init(payload)) => RuntimeError::Init {
                function: function.to_string(),
                payload: annotate(payload, &note),
            },
            Some(LastFailure::Other(message)) => RuntimeError::Backend(format!(
                "function {function}: {note}; last error: {message}"
            )),
            None => RuntimeError::Backend(format!("function {function}: {note}")),
        }
    }

    /// A start succeeded: close.
    pub(crate) fn success(&mut self) {
        *self = Self::default();
    }

    /// A start failed: count it; open at the threshold (0 = never), or
    /// again after a failed probe. Returns true when it just opened.
    pub(crate) fn failure(
        &mut self,
        last: LastFailure,
        now: Instant,
        threshold: u32,
        cooldown: Duration,
    ) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.last = Some(last);
        let was_probe = std::mem::take(&mut self.probing);
        if threshold == 0 {
            return false;
        }
        if was_probe || self.failures >= threshold {
            let reopened = self.open_until.is_none() || was_probe;
            self.open_until = Some(now + cooldown);
            return reopened;
        }
        false
    }

    /// Seconds until a probe may start, when open.
    pub(crate) fn retry_in(&self, now: Instant) -> Option<Duration> {
        self.open_until
            .filter(|_| !self.probing)
            .map(|t| t.saturating_duration_since(now))
    }
}

/// The init error payload with `note` appended to its `errorMessage` (or a
/// `Runtime.Unknown` payload when it is not a JSON object).
fn annotate(payload: &Bytes, note: &str) -> Bytes {
    let mut value: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    match value.as_object_mut() {
        Some(obj) => {
            let message = obj
                .get("errorMessage")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string();
            let joined = if message.is_empty() {
                note.to_string()
            } else {
                format!("{message} ({note})")
            };
            obj.insert("errorMessage".into(), joined.into());
        }
        None => {
            value = serde_json::json!({"errorType": "Runtime.Unknown", "errorMessage": note});
        }
    }
    Bytes::from(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(10);

    fn init_failure() -> LastFailure {
        LastFailure::Init(Bytes::from_static(
            br#"{"errorType":"Sandbox.Timedout","errorMessage":"Error: Init timed out after 10.00 seconds"}"#,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn w13_opens_after_threshold_then_half_opens_once() {
        let mut b = Breaker::default();
        let now = Instant::now();
        assert!(!b.failure(init_failure(), now, 3, COOL));
        assert!(!b.failure(init_failure(), now, 3, COOL));
        assert!(matches!(b.admit("f", now, COOL), Admit::Go));
        assert!(b.failure(init_failure(), now, 3, COOL));
        assert_eq!(b.state(now), BreakerState::Open);
        match b.admit("f", now + Duration::from_secs(1), COOL) {
            Admit::FailFast(RuntimeError::Init { payload, .. }) => {
                let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                assert_eq!(v["errorType"], "Sandbox.Timedout");
                let msg = v["errorMessage"].as_str().unwrap();
                assert!(msg.starts_with("Error: Init timed out"), "{msg}");
                assert!(msg.contains("init failed 3 times in a row"), "{msg}");
            }
            _ => panic!("expected a fast init error"),
        }
        let later = now + COOL;
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert!(matches!(b.admit("f", later, COOL), Admit::Go), "probe");
        assert!(matches!(b.admit("f", later, COOL), Admit::FailFast(_)));
        // The probe fails: open again for a full cool-down.
        assert!(b.failure(init_failure(), later, 3, COOL));
        assert_eq!(b.state(later + COOL / 2), BreakerState::Open);
        assert!(matches!(b.admit("f", later + COOL, COOL), Admit::Go));
        b.success();
        assert_eq!(b.state(later + COOL), BreakerState::Closed);
        assert_eq!(b.failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn w13_threshold_zero_never_opens() {
        let mut b = Breaker::default();
        let now = Instant::now();
        for _ in 0..10 {
            assert!(!b.failure(init_failure(), now, 0, COOL));
        }
        assert!(matches!(b.admit("f", now, COOL), Admit::Go));
    }

    #[test]
    fn non_json_init_payload_is_replaced() {
        let out = annotate(&Bytes::from_static(b"boom"), "note");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["errorType"], "Runtime.Unknown");
        assert_eq!(v["errorMessage"], "note");
    }
}
