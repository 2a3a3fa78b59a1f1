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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may unwrap

    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use esb_runtimes_core::Invocation;
    use esb_test_support::{FakeBackend, spec};

    use crate::{FunctionLimits, Pool, PoolConfig, PoolError};

    fn inv() -> Invocation {
        Invocation {
            request_id: "r".into(),
            payload: b"{}".to_vec().into(),
            invoked_function_arn: String::new(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
            timeout: None,
        }
    }

    fn sample(pool: &Pool, name: &str) -> esb_metrics::FunctionSample {
        pool.metrics_samples()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
    }

    #[tokio::test]
    async fn invocations_throttles_and_failures_are_counted() {
        let backend = Arc::new(FakeBackend::echo().with_delay(Duration::from_millis(200)));
        let pool = Pool::new(
            backend.clone(),
            PoolConfig {
                max_workers: 4,
                idle_timeout: Duration::from_secs(60),
                queue_timeout: Duration::from_millis(20),
                queue_len: 1,
                ..PoolConfig::default()
            },
        );
        let one = FunctionLimits {
            reserved_concurrency: Some(1),
            min_warm: 0,
        };
        pool.register(spec("a"), one);
        let (first, second) = tokio::join!(pool.invoke("a", inv()), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let busy = sample(&pool, "a");
            assert_eq!(busy.counters.concurrent.load(Ordering::Relaxed), 1);
            assert_eq!(busy.busy + busy.starting, 1);
            pool.invoke("a", inv()).await
        });
        assert!(first.is_ok());
        assert!(matches!(second, Err(PoolError::Throttled(_))), "{second:?}");
        let a = sample(&pool, "a");
        let c = &a.counters;
        assert_eq!(c.invocations.load(Ordering::Relaxed), 1);
        assert_eq!(c.throttles.load(Ordering::Relaxed), 1);
        assert_eq!(c.errors.load(Ordering::Relaxed), 0);
        assert_eq!(c.concurrent.load(Ordering::Relaxed), 0);
        assert_eq!(c.duration.snapshot().1, 1);
        assert_eq!((a.warm, a.busy), (1, 0));

        backend.set_fail_start(true);
        pool.register(spec("b"), FunctionLimits::default());
        assert!(pool.invoke("b", inv()).await.is_err());
        let b = sample(&pool, "b");
        assert_eq!(b.counters.invocations.load(Ordering::Relaxed), 1);
        assert_eq!(b.counters.errors.load(Ordering::Relaxed), 1);
        // Unknown functions count nowhere.
        assert!(pool.invoke("nope", inv()).await.is_err());
        assert_eq!(pool.metrics_samples().len(), 2);
    }
}
