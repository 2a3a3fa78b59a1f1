//! Per-function counters for `/metrics` (`esb-metrics`): each function's
//! [`FunctionCounters`] live beside its books in [`FnState`] from
//! registration on (a re-registered function keeps them), and
//! [`Pool::metrics_samples`] reads them with the worker gauges at scrape
//! time. The hot path only bumps atomics (see `Pool::invoke`).

use std::sync::Arc;

use esb_metrics::{FunctionCounters, FunctionSample};
use esb_runtimes_core::{InvocationOutcome, InvokeResult};

use crate::Pool;
use crate::config::PoolError;
use crate::registry::FnState;

impl FnState {
    /// Counts the outcome of one `Pool::invoke`.
    pub(crate) fn count(&self, result: &Result<InvokeResult, PoolError>) {
        let c = &self.counters;
        match result {
            Ok(r) => c.finished(
                r.duration,
                r.init_duration,
                matches!(r.outcome, InvocationOutcome::Error { .. }),
            ),
            Err(PoolError::Throttled(_)) => c.throttled(),
            Err(PoolError::UnknownFunction(_) | PoolError::ShuttingDown) => {}
            Err(_) => c.failed(),
        }
    }
}

impl Pool {
    /// Every function's counters and worker gauges, by name.
    pub fn metrics_samples(&self) -> Vec<FunctionSample> {
        let mut out: Vec<FunctionSample> = self
            .inner
            .all_functions()
            .iter()
            .map(|f| {
                let counters: Arc<FunctionCounters> = f.counters.clone();
                let st = f.lock();
                FunctionSample {
                    name: st.spec.name.clone(),
                    counters,
                    warm: st.idle.len(),
                    busy: st.busy(),
                    starting: st.starting,
                    waiting: st.waiters.len(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
