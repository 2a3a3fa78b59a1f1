//! Starting workers into slots and giving slots back: cold starts in their
//! own task, release to the oldest waiter or the idle set, discard.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::breaker::{Admit, LastFailure};
use crate::config::{PoolError, WARM_RETRY_BACKOFF};
use crate::queue::offer;
use crate::registry::{
    FnInner, FnState, IdleWorker, Inner, WorkerSlot, spawn_stop, start_task_lost,
};
use crate::ticket::{Ticket, TicketKind};

impl Inner {
    /// Asks the function's circuit breaker whether a worker may be started
    /// now; refused while it is open (or a probe runs).
    pub(crate) fn admit_start(&self, f: &Arc<FnState>) -> Result<(), PoolError> {
        let mut st = f.lock();
        let name = st.spec.name.clone();
        match st
            .breaker
            .admit(&name, Instant::now(), self.config.breaker_cooldown)
        {
            Admit::Go => Ok(()),
            Admit::FailFast(err) => Err(PoolError::Start(err)),
        }
    }

    /// Starts a worker for a `Start` ticket and waits for it.
    pub(crate) async fn cold_start(
        self: &Arc<Self>,
        f: &Arc<FnState>,
        ticket: Ticket,
    ) -> Result<Ticket, PoolError> {
        let (tx, rx) = oneshot::channel();
        self.spawn_start(f, ticket, Some(tx));
        rx.await.unwrap_or_else(|_| Err(start_task_lost()))
    }

    /// Starts a worker in its own task, so a caller that goes away does not
    /// cut a start half-way: the worker then joins the pool. With `reply`
    /// the new worker's ticket (busy, for the caller) is sent there; without
    /// it the worker goes idle.
    pub(crate) fn spawn_start(
        self: &Arc<Self>,
        f: &Arc<FnState>,
        ticket: Ticket,
        reply: Option<oneshot::Sender<Result<Ticket, PoolError>>>,
    ) {
        let inner = self.clone();
        let f = f.clone();
        let (spec, generation) = {
            let st = f.lock();
            (st.spec.clone(), st.generation)
        };
        tokio::spawn(async move {
            let mut ticket = ticket;
            let name = spec.name.clone();
            tracing::debug!(function = %name, "starting worker");
            let outcome = match inner.backend.start_worker(spec).await {
                Ok(worker) => {
                    let accepted = {
                        let mut st = f.lock();
                        if inner.is_shutting_down() {
                            false
                        } else {
                            let key = inner.next_key.fetch_add(1, Ordering::Relaxed);
                            st.starting = st.starting.saturating_sub(1);
                            st.workers.insert(key, worker.clone());
                            st.breaker.success();
                            ticket.kind = Some(TicketKind::Worker {
                                slot: WorkerSlot {
                                    key,
                                    generation,
                                    worker: worker.clone(),
                                },
                                warm: false,
                            });
                            true
                        }
                    };
                    if accepted {
                        Ok(ticket)
                    } else {
                        drop(ticket);
                        worker.stop().await;
                        Err(PoolError::ShuttingDown)
                    }
                }
                Err(err) => {
                    tracing::warn!(function = %name, error = %err, "worker start failed");
                    {
                        // Counted before the slot goes to a waiter, which
                        // then sees an opened breaker.
                        let mut st = f.lock();
                        let now = Instant::now();
                        let cfg = &inner.config;
                        if st.breaker.failure(
                            LastFailure::of(&err),
                            now,
                            cfg.breaker_threshold,
                            cfg.breaker_cooldown,
                        ) {
                            tracing::warn!(
                                function = %name,
                                failures = st.breaker.failures,
                                cooldown_s = cfg.breaker_cooldown.as_secs_f64(),
                                "worker starts keep failing: new starts refused for the cool-down (circuit breaker open)"
                            );
                        }
                        if reply.is_none() {
                            st.warm_retry_at = Some(now + WARM_RETRY_BACKOFF);
                        }
                    }
                    // Frees the slot; the oldest waiter gets to try itself.
                    drop(ticket);
                    Err(PoolError::Start(err))
                }
            };
            match reply {
                // A caller that went away drops the ticket with the channel,
                // which puts the worker in the pool.
                Some(tx) => {
                    let _ = tx.send(outcome);
                }
                None => drop(outcome),
            }
        });
    }

    /// A worker finished an invocation (or was never used): hand it to the
    /// oldest waiter, give its slot to a function blocked on the pool-wide
    /// limit, or put it in the idle set.
    pub(crate) fn release(self: &Arc<Self>, f: &Arc<FnState>, slot: WorkerSlot) {
        let mut st = f.lock();
        let reusable =
            !self.is_shutting_down() && slot.generation == st.generation && slot.worker.is_alive();
        if !reusable {
            drop(st);
            self.discard(f, slot);
            return;
        }
        let mut slot = slot;
        if !st.waiters.is_empty() {
            let ticket = Ticket {
                inner: self.clone(),
                f: f.clone(),
                kind: Some(TicketKind::Worker { slot, warm: true }),
            };
            let Some(mut ticket) = offer(&mut st, ticket) else {
                return;
            };
            match ticket.kind.take() {
                Some(TicketKind::Worker { slot: back, .. }) => slot = back,
                _ => return,
            }
        }
        st.idle.push_back(IdleWorker {
            slot,
            since: Instant::now(),
        });
        drop(st);
        if self.blocked_hint.load(Ordering::Relaxed) > 0 {
            // Another function waits on the pool-wide limit: an idle
            // worker's slot serves it better (checked after pushing, so a
            // function registering as blocked meanwhile sees this worker).
            self.evict_while_blocked();
        }
    }

    /// Removes a worker from the pool, frees its slot and stops it.
    pub(crate) fn discard(self: &Arc<Self>, f: &Arc<FnState>, slot: WorkerSlot) {
        let mut st = f.lock();
        if st.workers.remove(&slot.key).is_some() {
            self.free_slot(f, st);
        } else {
            drop(st);
        }
        spawn_stop(slot.worker);
    }

    /// One of `f`'s slots became free (its count already lowered, the
    /// pool-wide slot still held): the oldest waiter may start a worker in
    /// it; otherwise it goes back to the pool.
    pub(crate) fn free_slot(self: &Arc<Self>, f: &Arc<FnState>, mut st: MutexGuard<'_, FnInner>) {
        if !self.is_shutting_down()
            && !st.waiters.is_empty()
            && st.live() < st.cap(self.config.max_workers)
        {
            st.starting += 1;
            let ticket = Ticket::start(self.clone(), f.clone());
            match offer(&mut st, ticket) {
                None => return,
                Some(mut ticket) => {
                    ticket.kind = None;
                    st.starting -= 1;
                }
            }
        }
        drop(st);
        self.release_global_slot();
    }

    /// Lets queued requests start workers while `f` has room (after its
    /// limit was raised).
    pub(crate) fn fill_waiters(self: &Arc<Self>, f: &Arc<FnState>) {
        let max = self.config.max_workers;
        loop {
            let mut st = f.lock();
            if self.is_shutting_down() || st.waiters.is_empty() || st.live() >= st.cap(max) {
                return;
            }
            if !self.try_reserve_global() {
                self.mark_blocked(f, &mut st);
                return;
            }
            st.starting += 1;
            let ticket = Ticket::start(self.clone(), f.clone());
            if let Some(mut ticket) = offer(&mut st, ticket) {
                ticket.kind = None;
                st.starting -= 1;
                drop(st);
                self.release_global_slot();
                return;
            }
        }
    }
}
