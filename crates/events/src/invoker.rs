//! The one thing the queue needs from the rest of ESB: a way to run a function.

use bytes::Bytes;

use crate::chain::ChainContext;

/// What one synchronous attempt at an invocation gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvokeOutcome {
    /// The function returned; `response` is its result payload.
    Success {
        /// The function's response bytes.
        response: Bytes,
    },
    /// The function failed (error returned or raised, crash, timeout):
    /// consumes an attempt (`X-Amz-Function-Error: Unhandled`).
    FunctionError {
        /// The error object the runtime produced.
        response: Bytes,
    },
    /// No capacity now (pool at its concurrency limit, 429): retried with a
    /// growing back-off without consuming an attempt, until the event's age runs out.
    Throttled,
    /// ESB could not run it for a passing reason (cold start failed, backend
    /// down): handled like a throttle, as AWS does for its 5xx.
    ServiceError {
        /// For the log.
        message: String,
    },
    /// It can never run (function no longer exists): goes to on-failure/DLQ at once.
    Rejected {
        /// Put in the failure record's `responsePayload.errorMessage`.
        message: String,
    },
}

/// Runs one invocation synchronously (implemented by the app over the pool).
///
/// The queue calls it at most `QueueConfig::max_in_flight` times at once; the
/// implementation must give the function `chain` (see
/// [`ChainContext::to_header_value`]) so calls it makes carry it on.
#[async_trait::async_trait]
pub trait Invoker: Send + Sync + 'static {
    /// Runs `function` with `payload`; `request_id` is the event id (the same
    /// request id on every retry, as on AWS).
    async fn invoke(
        &self,
        function: &str,
        payload: Bytes,
        request_id: &str,
        chain: &ChainContext,
    ) -> InvokeOutcome;
}
