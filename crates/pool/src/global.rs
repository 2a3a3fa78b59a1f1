//! The pool-wide limit (`max_workers`): reserving slots, handing a freed
//! slot to a function blocked on the limit, and evicting other functions'
//! idle workers to make room.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use crate::queue::offer;
use crate::registry::{FnInner, FnState, Inner, spawn_stop};
use crate::ticket::Ticket;

impl Inner {
    /// Takes one pool-wide slot if `max_workers` allows.
    pub(crate) fn try_reserve_global(&self) -> bool {
        let mut global = self.global.lock();
        if global.total < self.config.max_workers {
            global.total += 1;
            true
        } else {
            false
        }
    }

    /// Takes one pool-wide slot for `f`, or (with `register`) records `f`
    /// as blocked on the pool-wide limit. Both under one lock, so a slot
    /// freed in between cannot be missed.
    pub(crate) fn reserve_global(
        &self,
        f: &Arc<FnState>,
        st: &mut FnInner,
        register: bool,
    ) -> bool {
        let mut global = self.global.lock();
        if global.total < self.config.max_workers {
            global.total += 1;
            return true;
        }
        if register && !st.in_blocked {
            st.in_blocked = true;
            global.blocked.push_back(f.clone());
            self.blocked_hint
                .store(global.blocked.len(), Ordering::Relaxed);
        }
        false
    }

    /// Gives a pool-wide slot to the first function blocked on it, or back.
    pub(crate) fn release_global_slot(self: &Arc<Self>) {
        let max = self.config.max_workers;
        loop {
            let f = {
                let mut global = self.global.lock();
                match global.blocked.pop_front() {
                    Some(f) => {
                        self.blocked_hint
                            .store(global.blocked.len(), Ordering::Relaxed);
                        f
                    }
                    None => {
                        global.total = global.total.saturating_sub(1);
                        return;
                    }
                }
            };
            let mut st = f.lock();
            st.in_blocked = false;
            if self.is_shutting_down() || st.waiters.is_empty() || st.live() >= st.cap(max) {
                continue;
            }
            st.starting += 1;
            let ticket = Ticket::start(self.clone(), f.clone());
            match offer(&mut st, ticket) {
                None => {
                    if !st.waiters.is_empty() && st.live() < st.cap(max) {
                        self.mark_blocked(&f, &mut st);
                    }
                    return;
                }
                Some(mut ticket) => {
                    ticket.kind = None;
                    st.starting -= 1;
                }
            }
        }
    }

    /// Records that `f` has requests waiting on the pool-wide limit.
    pub(crate) fn mark_blocked(&self, f: &Arc<FnState>, st: &mut FnInner) {
        if st.in_blocked {
            return;
        }
        st.in_blocked = true;
        let mut global = self.global.lock();
        global.blocked.push_back(f.clone());
        self.blocked_hint
            .store(global.blocked.len(), Ordering::Relaxed);
    }

    /// Whether some function really waits on the pool-wide limit; drops
    /// stale entries from the front of the blocked list.
    pub(crate) fn prune_blocked(&self) -> bool {
        let max = self.config.max_workers;
        loop {
            let f = {
                let mut global = self.global.lock();
                match global.blocked.pop_front() {
                    Some(f) => f,
                    None => {
                        self.blocked_hint.store(0, Ordering::Relaxed);
                        return false;
                    }
                }
            };
            let mut st = f.lock();
            if !self.is_shutting_down() && !st.waiters.is_empty() && st.live() < st.cap(max) {
                let mut global = self.global.lock();
                global.blocked.push_front(f.clone());
                self.blocked_hint
                    .store(global.blocked.len(), Ordering::Relaxed);
                return true;
            }
            st.in_blocked = false;
            drop(st);
            let global = self.global.lock();
            self.blocked_hint
                .store(global.blocked.len(), Ordering::Relaxed);
        }
    }

    /// Stops idle workers of other functions while requests wait on the
    /// pool-wide limit, handing their slots over.
    pub(crate) fn evict_while_blocked(self: &Arc<Self>) {
        while self.prune_blocked() {
            if !self.evict_one(None) {
                return;
            }
            self.release_global_slot();
        }
    }

    /// Stops the longest-idle worker of any function other than `exclude`
    /// that has more than `min_warm` workers. On success the caller holds
    /// the freed pool-wide slot.
    pub(crate) fn evict_one(&self, exclude: Option<&Arc<FnState>>) -> bool {
        let max = self.config.max_workers;
        let mut best: Option<(Instant, Arc<FnState>)> = None;
        for f in self.all_functions() {
            if exclude.is_some_and(|e| Arc::ptr_eq(e, &f)) {
                continue;
            }
            let since = {
                let st = f.lock();
                match st.idle.front() {
                    Some(idle) if st.live() > st.min_warm(max) => idle.since,
                    _ => continue,
                }
            };
            if best.as_ref().is_none_or(|(t, _)| since < *t) {
                best = Some((since, f));
            }
        }
        let Some((_, victim)) = best else {
            return false;
        };
        let worker = {
            let mut st = victim.lock();
            if st.live() <= st.min_warm(max) {
                return false;
            }
            let Some(idle) = st.idle.pop_front() else {
                return false;
            };
            st.workers.remove(&idle.slot.key);
            idle.slot.worker
        };
        tracing::debug!(
            worker = worker.id(),
            "stopping idle worker for another function"
        );
        spawn_stop(worker);
        true
    }
}
