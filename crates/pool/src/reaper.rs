//! The reaper task (idle timeout, crashed workers, top-up, eviction for
//! blocked functions) and shutdown.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::Pool;
use crate::config::{REAPER_TICK, SHUTDOWN_POLL};
use crate::registry::{Inner, spawn_stop};

impl Pool {
    /// Stops idle workers past the idle timeout, until shutdown (spawned
    /// once by `esb up`).
    ///
    /// Each pass also drops crashed idle workers, starts workers back up to
    /// `min_warm`, and stops idle workers of other functions for requests
    /// waiting on the pool-wide limit. It sleeps until the next idle expiry,
    /// at most one second. The task ends at shutdown or when the pool is
    /// dropped.
    pub fn spawn_reaper(&self) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let mut shutdown = self.inner.shutdown_tx.subscribe();
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { break };
                if inner.is_shutting_down() {
                    break;
                }
                let now = Instant::now();
                let next_expiry = inner.reap(now);
                inner.top_up(now);
                inner.evict_while_blocked();
                drop(inner);
                let mut wake = now + REAPER_TICK;
                if let Some(expiry) = next_expiry {
                    wake = wake.min(expiry);
                }
                // Never spin: an expiry in the past was just handled.
                wake = wake.max(now + Duration::from_millis(1));
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => {}
                    changed = shutdown.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
            }
        })
    }

    /// Refuses new invocations, waits (bounded by `grace`) for running ones,
    /// then stops every worker.
    ///
    /// Queued requests fail with [`PoolError::ShuttingDown`] at once.
    /// Workers still busy after `grace` are stopped too (their callers see
    /// the worker die).
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.shutting_down.store(true, Ordering::SeqCst);
        inner.shutdown_tx.send_replace(true);
        let functions = inner.all_functions();
        for f in &functions {
            // Dropping the senders wakes each waiter with "closed".
            let waiters = std::mem::take(&mut f.lock().waiters);
            drop(waiters);
        }
        {
            let mut global = inner.global.lock();
            global.blocked.clear();
            inner.blocked_hint.store(0, Ordering::Relaxed);
        }
        let deadline = Instant::now() + grace;
        loop {
            let active: usize = functions
                .iter()
                .map(|f| {
                    let st = f.lock();
                    st.busy() + st.starting
                })
                .sum();
            let now = Instant::now();
            if active == 0 || now >= deadline {
                break;
            }
            tokio::time::sleep(SHUTDOWN_POLL.min(deadline - now)).await;
        }
        let mut to_stop = Vec::new();
        let mut freed = 0;
        for f in &functions {
            let mut st = f.lock();
            while let Some(idle) = st.idle.pop_front() {
                st.workers.remove(&idle.slot.key);
                to_stop.push(idle.slot.worker);
                freed += 1;
            }
            // Busy past the grace: stopped now; their tickets free the slots
            // when the invocation returns.
            to_stop.extend(st.workers.values().cloned());
        }
        {
            let mut global = inner.global.lock();
            global.total = global.total.saturating_sub(freed);
        }
        let mut stops = tokio::task::JoinSet::new();
        for worker in to_stop {
            stops.spawn(async move { worker.stop().await });
        }
        while stops.join_next().await.is_some() {}
    }
}

impl Inner {
    /// Stops idle workers past the idle timeout (keeping `min_warm`) and
    /// crashed ones. Returns the next time an idle worker expires.
    pub(crate) fn reap(self: &Arc<Self>, now: Instant) -> Option<Instant> {
        let max = self.config.max_workers;
        let timeout = self.config.idle_timeout;
        let mut next: Option<Instant> = None;
        for f in self.all_functions() {
            let mut stop = Vec::new();
            {
                let mut st = f.lock();
                let generation = st.generation;
                let mut gone = Vec::new();
                st.idle.retain(|idle| {
                    let keep = idle.slot.generation == generation && idle.slot.worker.is_alive();
                    if !keep {
                        gone.push((idle.slot.key, idle.slot.worker.clone()));
                    }
                    keep
                });
                for (key, worker) in gone {
                    st.workers.remove(&key);
                    stop.push(worker);
                }
                let keep = st.min_warm(max);
                while let Some(idle) = st.idle.front() {
                    let expiry = idle.since + timeout;
                    if expiry > now {
                        next = Some(next.map_or(expiry, |n| n.min(expiry)));
                        break;
                    }
                    if st.live() <= keep {
                        break;
                    }
                    if let Some(idle) = st.idle.pop_front() {
                        st.workers.remove(&idle.slot.key);
                        stop.push(idle.slot.worker);
                    }
                }
            }
            for worker in stop {
                tracing::debug!(worker = worker.id(), "stopping idle or crashed worker");
                self.free_slot(&f, f.lock());
                spawn_stop(worker);
            }
        }
        next
    }
}
