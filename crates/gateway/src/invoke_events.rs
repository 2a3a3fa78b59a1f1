//! [`QueueInvoker`]: the durable `Event` queue's [`esb_events::Invoker`]
//! over the gateway's [`Invoker`] (the pool), so queued invocations, retries
//! and destinations run through the same pool and limits as synchronous ones.
//! It passes the invocation's chain to the worker as its trace id, which the
//! runtime exposes as `_X_AMZN_TRACE_ID` and SDKs send back on nested calls.

use std::sync::Arc;

use bytes::Bytes;
use esb_events::{ChainContext, InvokeOutcome};
use esb_pool::PoolError;
use esb_runtimes_core::{Invocation, InvocationOutcome, RuntimeError};

use crate::Invoker;

/// Runs queued `Event` invocations through an [`Invoker`].
pub struct QueueInvoker(pub Arc<dyn Invoker>);

#[async_trait::async_trait]
impl esb_events::Invoker for QueueInvoker {
    async fn invoke(
        &self,
        function: &str,
        payload: Bytes,
        request_id: &str,
        chain: &ChainContext,
    ) -> InvokeOutcome {
        let Some(spec) = self.0.function(function) else {
            return InvokeOutcome::Rejected {
                message: format!("Function not found: {function}"),
            };
        };
        let invocation = Invocation {
            request_id: request_id.to_string(),
            payload,
            invoked_function_arn: spec.arn(),
            trace_id: Some(chain.to_header_value()),
            client_context: None,
            cognito_identity: None,
            timeout: None,
        };
        match self.0.invoke(function, invocation).await {
            Ok(r) => match r.outcome {
                InvocationOutcome::Success(response) => InvokeOutcome::Success { response },
                InvocationOutcome::Error { payload, .. } => {
                    InvokeOutcome::FunctionError { response: payload }
                }
            },
            Err(PoolError::Throttled(_)) => InvokeOutcome::Throttled,
            Err(PoolError::UnknownFunction(f)) => InvokeOutcome::Rejected {
                message: format!("Function not found: {f}"),
            },
            Err(PoolError::Start(RuntimeError::Init { payload, .. })) => {
                InvokeOutcome::FunctionError { response: payload }
            }
            Err(e) => InvokeOutcome::ServiceError {
                message: e.to_string(),
            },
        }
    }
}
