//! Keeping `min_warm` workers: pre-warm at start and top-up after crashes
//! or reaping.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::Pool;
use crate::config::{PoolError, ThrottleReason};
use crate::registry::{Inner, start_task_lost};
use crate::ticket::Ticket;

impl Pool {
    /// Starts `min_warm` workers for every function.
    ///
    /// Starts run in parallel; the first start error is returned after all
    /// have finished. When the pool-wide limit leaves no room for all of
    /// them, the ones that fit are started and the result is
    /// `Throttled(ConcurrentInvocationLimitExceeded)`.
    pub async fn prewarm(&self) -> Result<(), PoolError> {
        let inner = &self.inner;
        let mut pending = Vec::new();
        let mut short = false;
        for f in inner.all_functions() {
            loop {
                let mut st = f.lock();
                if inner.is_shutting_down() {
                    return Err(PoolError::ShuttingDown);
                }
                if st.live() >= st.min_warm(inner.config.max_workers) {
                    break;
                }
                if !inner.try_reserve_global() {
                    short = true;
                    break;
                }
                st.starting += 1;
                drop(st);
                let ticket = Ticket::start(inner.clone(), f.clone());
                let (tx, rx) = oneshot::channel();
                inner.spawn_start(&f, ticket, Some(tx));
                pending.push(rx);
            }
        }
        let mut first_error = None;
        for rx in pending {
            match rx.await {
                // Dropping the ticket puts the new worker in the idle set.
                Ok(Ok(ticket)) => drop(ticket),
                Ok(Err(err)) => {
                    first_error.get_or_insert(err);
                }
                Err(_) => {
                    first_error.get_or_insert(start_task_lost());
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None if short => Err(PoolError::Throttled(
                ThrottleReason::ConcurrentInvocationLimitExceeded,
            )),
            None => Ok(()),
        }
    }
}

impl Inner {
    /// Starts workers in the background up to `min_warm` (after crashes or
    /// reaping below it).
    pub(crate) fn top_up(self: &Arc<Self>, now: Instant) {
        let max = self.config.max_workers;
        for f in self.all_functions() {
            let mut starts = 0;
            {
                let mut st = f.lock();
                if st.warm_retry_at.is_some_and(|at| now < at) || st.breaker.is_tripped() {
                    continue;
                }
                while !self.is_shutting_down()
                    && st.live() < st.min_warm(max)
                    && self.try_reserve_global()
                {
                    st.starting += 1;
                    starts += 1;
                }
            }
            for _ in 0..starts {
                let ticket = Ticket::start(self.clone(), f.clone());
                self.spawn_start(&f, ticket, None);
            }
        }
    }
}
