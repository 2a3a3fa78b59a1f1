//! Acquiring a slot: a warm worker (LIFO), the right to start one, or a
//! place in the function's bounded FIFO queue for a bounded time.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;
use tokio::sync::oneshot;

use crate::config::{PoolError, ThrottleReason};
use crate::registry::{FnInner, FnState, Inner, spawn_stop};
use crate::ticket::{Ticket, TicketKind};

pub(crate) struct Waiter {
    pub(crate) id: u64,
    pub(crate) tx: oneshot::Sender<Ticket>,
}

/// A queued request. Dropping it (timeout, or the caller's future dropped)
/// takes the request out of the queue; a ticket that was already handed to
/// it is dropped with the receiver afterwards, which gives the slot back.
pub(crate) struct WaitGuard {
    pub(crate) f: Arc<FnState>,
    pub(crate) id: u64,
    pub(crate) queued: bool,
    // Fields drop after `Drop::drop` has released the lock, so a ticket
    // still in the channel can take that lock to give its slot back.
    pub(crate) rx: oneshot::Receiver<Ticket>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if self.queued {
            let mut st = self.f.lock();
            if let Some(pos) = st.waiters.iter().position(|w| w.id == self.id) {
                st.waiters.remove(pos);
            }
        }
    }
}

/// What `acquire_now` decided.
pub(crate) enum Acquire {
    Ready(Ticket),
    Wait(WaitGuard),
    Throttled(ThrottleReason),
    ShuttingDown,
    /// The state changed while the lock was released; look again
    /// (without stopping another function's worker this time).
    Retry,
}

impl Inner {
    /// A ticket for `f`: a warm worker, the right to start one, or a place
    /// in the queue.
    pub(crate) async fn acquire(self: &Arc<Self>, f: &Arc<FnState>) -> Result<Ticket, PoolError> {
        let mut may_evict = true;
        loop {
            match self.acquire_now(f, may_evict) {
                Acquire::Ready(ticket) => return Ok(ticket),
                Acquire::Throttled(reason) => return Err(PoolError::Throttled(reason)),
                Acquire::ShuttingDown => return Err(PoolError::ShuttingDown),
                Acquire::Retry => may_evict = false,
                Acquire::Wait(guard) => return self.wait(guard).await,
            }
        }
    }

    pub(crate) fn acquire_now(self: &Arc<Self>, f: &Arc<FnState>, may_evict: bool) -> Acquire {
        let max = self.config.max_workers;
        let mut dead = Vec::new();
        let mut st = f.lock();
        if self.is_shutting_down() {
            return Acquire::ShuttingDown;
        }
        let mut found = None;
        while let Some(idle) = st.idle.pop_back() {
            if idle.slot.generation == st.generation && idle.slot.worker.is_alive() {
                found = Some(idle.slot);
                break;
            }
            st.workers.remove(&idle.slot.key);
            dead.push(idle.slot.worker);
        }
        let ticket = match found {
            Some(slot) => Some(Ticket {
                inner: self.clone(),
                f: f.clone(),
                kind: Some(TicketKind::Worker { slot, warm: true }),
            }),
            // Idle workers existed, so nobody waits: start the replacement
            // of a crashed one in its slot.
            None if !dead.is_empty() => {
                st.starting += 1;
                Some(Ticket::start(self.clone(), f.clone()))
            }
            None => None,
        };
        if let Some(ticket) = ticket {
            drop(st);
            let reused = usize::from(ticket.is_start());
            for _ in reused..dead.len() {
                self.free_slot(f, f.lock());
            }
            for worker in dead {
                spawn_stop(worker);
            }
            return Acquire::Ready(ticket);
        }
        if st.waiters.is_empty() && st.live() < st.cap(max) {
            if self.reserve_global(f, &mut st, false) {
                st.starting += 1;
                drop(st);
                return Acquire::Ready(Ticket::start(self.clone(), f.clone()));
            }
            // Functions already waiting on the pool-wide limit go first.
            if may_evict && self.blocked_hint.load(Ordering::Relaxed) == 0 {
                // Pool-wide limit: stop another function's idle worker and
                // take its slot rather than throttle.
                drop(st);
                if !self.evict_one(Some(f)) {
                    return Acquire::Retry;
                }
                let mut st = f.lock();
                if !self.is_shutting_down()
                    && st.idle.is_empty()
                    && st.waiters.is_empty()
                    && st.live() < st.cap(max)
                {
                    st.starting += 1;
                    drop(st);
                    return Acquire::Ready(Ticket::start(self.clone(), f.clone()));
                }
                drop(st);
                self.release_global_slot();
                return Acquire::Retry;
            }
        }
        self.enqueue(f, st)
    }

    /// Queues a request for `f` (it found no idle worker and no room).
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        f: &Arc<FnState>,
        mut st: MutexGuard<'_, FnInner>,
    ) -> Acquire {
        let max = self.config.max_workers;
        let cap = st.cap(max);
        let reason = st.throttle_reason();
        if cap == 0 || st.waiters.len() >= self.config.queue_len {
            return Acquire::Throttled(reason);
        }
        let globally_blocked = st.live() < cap;
        if globally_blocked && self.reserve_global(f, &mut st, true) {
            // Room appeared since the last look: it belongs to the oldest
            // request, which may be this one.
            st.starting += 1;
            let ticket = Ticket::start(self.clone(), f.clone());
            let Some(ticket) = offer(&mut st, ticket) else {
                drop(st);
                return Acquire::Retry;
            };
            drop(st);
            return Acquire::Ready(ticket);
        }
        let id = st.next_waiter;
        st.next_waiter += 1;
        let (tx, rx) = oneshot::channel();
        st.waiters.push_back(Waiter { id, tx });
        drop(st);
        if globally_blocked {
            // `reserve_global` registered us as blocked, so a worker of
            // another function going idle from now on sees us; this catches
            // one that was idle already.
            self.evict_while_blocked();
        }
        Acquire::Wait(WaitGuard {
            f: f.clone(),
            id,
            queued: true,
            rx,
        })
    }

    pub(crate) async fn wait(self: &Arc<Self>, mut guard: WaitGuard) -> Result<Ticket, PoolError> {
        match tokio::time::timeout(self.config.queue_timeout, &mut guard.rx).await {
            Ok(Ok(ticket)) => {
                guard.queued = false;
                Ok(ticket)
            }
            // The sender was dropped without a ticket: only shutdown does it.
            Ok(Err(_)) => {
                guard.queued = false;
                Err(PoolError::ShuttingDown)
            }
            Err(_elapsed) => {
                let reason = {
                    let mut st = guard.f.lock();
                    match st.waiters.iter().position(|w| w.id == guard.id) {
                        Some(pos) => {
                            st.waiters.remove(pos);
                            Some(st.throttle_reason())
                        }
                        None => None,
                    }
                };
                guard.queued = false;
                match reason {
                    Some(reason) => Err(PoolError::Throttled(reason)),
                    // Taken out of the queue under the lock by a hand-off,
                    // so the ticket is already in the channel (or the queue
                    // was drained by shutdown).
                    None => guard.rx.try_recv().map_err(|_| PoolError::ShuttingDown),
                }
            }
        }
    }
}

/// Hands `ticket` to the oldest waiter still listening; gives it back when
/// there is none.
pub(crate) fn offer(st: &mut FnInner, ticket: Ticket) -> Option<Ticket> {
    let mut ticket = ticket;
    while let Some(waiter) = st.waiters.pop_front() {
        match waiter.tx.send(ticket) {
            Ok(()) => return None,
            Err(back) => ticket = back,
        }
    }
    Some(ticket)
}
