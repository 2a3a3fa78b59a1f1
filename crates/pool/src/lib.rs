//! Worker pool: per-function worker sets, acquire/release, concurrency
//! limits, bounded wait then throttle, idle reaping, pre-warm, replacement of
//! crashed workers.
//!
//! Lambda semantics: a worker runs one invocation at a time; the most
//! recently used idle worker is reused first (LIFO, so the others can idle
//! out); a new worker starts only when every worker of the function is busy
//! and neither the function's `ReservedConcurrentExecutions` nor the
//! pool-wide `max_workers` is reached. Past a limit, requests wait in a
//! bounded FIFO queue for a bounded time and are then throttled. The policy
//! is written down in `docs/pool.md`.
//!
//! The warm path (pick an idle worker, run, put it back) takes one short
//! `parking_lot::Mutex` section per function on each side and never talks to
//! another task; hand-off to a waiting request goes through a
//! `tokio::sync::oneshot`. Every slot (a running or starting worker) is held
//! by a [`Ticket`] whose `Drop` gives it back, so a caller's future dropped
//! at any `.await` leaks nothing.
//!
//! Must not: parse HTTP or know how a worker is started (that is the
//! [`RuntimeBackend`]'s job).
//!
//! One file per job: `config` (settings, limits, errors, status),
//! `registry` (the books: functions, workers, counts), `ticket` (slots held
//! by callers, invocations finished after the caller left), `queue`
//! (acquire: warm worker, start right or bounded wait), `slots` (cold
//! starts, release, discard), `global` (the pool-wide limit and eviction),
//! `reaper` (idle timeout, shutdown), `warmer` (pre-warm, `min_warm`),
//! `breaker` (fail fast after repeated init failures, contract W13).
#![forbid(unsafe_code)]

mod breaker;
mod config;
mod counters;
mod edits;
mod global;
mod queue;
mod reaper;
mod registry;
mod slots;
#[cfg(test)]
mod tests;
mod ticket;
mod warmer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

use esb_runtimes_core::{
    FunctionSpec, Invocation, InvokeResult, RuntimeBackend, RuntimeError, WorkerError,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

pub use breaker::BreakerState;
pub use config::{FunctionLimits, FunctionStatus, PoolConfig, PoolError, ThrottleReason};
pub use edits::EditGuard;
use registry::{FnState, Global, Inner, spawn_stop};
use ticket::{InFlight, settle};

/// The pool. Cheap to clone; all clones share the same workers.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("backend", &self.inner.backend.name())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool that starts workers through `backend`.
    pub fn new(backend: Arc<dyn RuntimeBackend>, config: PoolConfig) -> Self {
        let (shutdown_tx, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                backend,
                config,
                functions: RwLock::new(HashMap::new()),
                global: Mutex::new(Global::default()),
                blocked_hint: AtomicUsize::new(0),
                shutting_down: AtomicBool::new(false),
                next_key: AtomicU64::new(1),
                shutdown_tx,
                edits: edits::Edits::default(),
            }),
        }
    }

    /// Says that function code is being edited until the guard is dropped
    /// (the hot reloader, from a burst's first file event until the new
    /// specs are registered): a cold start whose init fails meanwhile is
    /// retried once on the new code (`edits.rs`).
    pub fn code_changing(&self) -> EditGuard {
        self.inner.edits.begin()
    }

    /// The settings the pool was built with.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Adds a function (before or after start; re-registering replaces the
    /// spec for new workers).
    ///
    /// When the spec changed, idle workers of the old spec are stopped and
    /// busy ones are stopped when their invocation ends; the limits apply
    /// from the next request on.
    pub fn register(&self, spec: FunctionSpec, limits: FunctionLimits) {
        let inner = &self.inner;
        let spec = Arc::new(spec);
        let existing = inner.functions.read().get(&spec.name).cloned();
        let f = match existing {
            Some(f) => f,
            None => {
                let mut map = inner.functions.write();
                match map.get(&spec.name) {
                    Some(f) => f.clone(),
                    None => {
                        let f = Arc::new(FnState::new(spec.clone(), limits));
                        map.insert(spec.name.clone(), f);
                        return;
                    }
                }
            }
        };
        let retired = {
            let mut st = f.lock();
            let mut retired = Vec::new();
            if *st.spec != *spec {
                st.generation += 1;
                while let Some(idle) = st.idle.pop_front() {
                    st.workers.remove(&idle.slot.key);
                    retired.push(idle.slot.worker);
                }
            }
            st.spec = spec;
            st.limits = limits;
            retired
        };
        for worker in retired {
            inner.free_slot(&f, f.lock());
            spawn_stop(worker);
        }
        // A raised limit lets queued requests start workers now.
        inner.fill_waiters(&f);
    }

    /// The spec of a registered function.
    pub fn function(&self, name: &str) -> Option<Arc<FunctionSpec>> {
        let f = self.inner.lookup(name)?;
        Some(f.lock().spec.clone())
    }

    /// All registered functions.
    pub fn functions(&self) -> Vec<Arc<FunctionSpec>> {
        let mut specs: Vec<_> = self
            .inner
            .all_functions()
            .iter()
            .map(|f| f.lock().spec.clone())
            .collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs
    }

    /// Runs one invocation on a warm worker, a new one, or after a bounded
    /// wait; throttles when none becomes free.
    ///
    /// A warm worker that turns out to be gone before the invocation was
    /// delivered ([`WorkerError::Gone`]) is dropped and the invocation is
    /// retried once on another worker; nothing else is retried, since the
    /// function may already have run.
    pub async fn invoke(
        &self,
        function: &str,
        invocation: Invocation,
    ) -> Result<InvokeResult, PoolError> {
        let f = self
            .inner
            .lookup(function)
            .ok_or_else(|| PoolError::UnknownFunction(function.to_string()))?;
        // Metrics (`counters.rs`): atomics only.
        let _running = f.counters.begin();
        let result = self.invoke_on(&f, function, invocation).await;
        f.count(&result);
        result
    }

    async fn invoke_on(
        &self,
        f: &Arc<FnState>,
        function: &str,
        invocation: Invocation,
    ) -> Result<InvokeResult, PoolError> {
        let inner = &self.inner;
        let mut invocation = invocation;
        let mut may_retry = true;
        let mut may_retry_edit = true;
        loop {
            let mut ticket = inner.acquire(f).await?;
            if ticket.is_start() {
                // Dropping the refused ticket hands its slot to the next
                // waiter, which is refused the same way.
                inner.admit_start(f)?;
                let generation = f.lock().generation;
                ticket = match inner.cold_start(f, ticket).await {
                    Ok(ticket) => ticket,
                    // Init failed, perhaps on a file an editor was still
                    // writing: once the edit settled, new code is tried once.
                    Err(e @ PoolError::Start(RuntimeError::Init { .. })) if may_retry_edit => {
                        may_retry_edit = false;
                        inner.edits.settled().await;
                        if f.lock().generation == generation {
                            return Err(e);
                        }
                        tracing::info!(
                            function,
                            "init failed during a code edit; retrying once on the new code"
                        );
                        continue;
                    }
                    Err(e) => return Err(e),
                };
            }
            let Some(worker) = ticket.worker() else {
                return Err(PoolError::Start(RuntimeError::Backend(
                    "internal error: no worker in ticket".to_string(),
                )));
            };
            // Only a warm worker's `Gone` is retried, so only then is a copy
            // needed (a fresh worker reporting `Gone` is a start problem).
            let retry = (may_retry && ticket.is_warm()).then(|| invocation.clone());
            let mut call = InFlight::new(ticket, worker, invocation);
            let result = (&mut call).await;
            let ticket = call.take_ticket();
            match result {
                Ok(res) => {
                    if let Some(ticket) = ticket {
                        settle(ticket, res.worker_alive);
                    }
                    return Ok(res);
                }
                Err(WorkerError::Gone(id)) => {
                    if let Some(ticket) = ticket {
                        ticket.discard();
                    }
                    match retry {
                        Some(again) => {
                            tracing::debug!(function, worker = %id, "warm worker gone, retrying once");
                            invocation = again;
                            may_retry = false;
                        }
                        None => return Err(PoolError::Worker(WorkerError::Gone(id))),
                    }
                }
                Err(err) => {
                    if let Some(ticket) = ticket {
                        ticket.discard();
                    }
                    return Err(PoolError::Worker(err));
                }
            }
        }
    }

    /// Workers per function.
    pub fn status(&self) -> Vec<FunctionStatus> {
        let max = self.inner.config.max_workers;
        let mut out: Vec<FunctionStatus> = self
            .inner
            .all_functions()
            .iter()
            .map(|f| {
                let st = f.lock();
                let now = tokio::time::Instant::now();
                let mut pids: Vec<u32> = st.workers.values().filter_map(|w| w.pid()).collect();
                pids.sort_unstable();
                FunctionStatus {
                    name: st.spec.name.clone(),
                    warm: st.idle.len(),
                    busy: st.busy(),
                    starting: st.starting,
                    limit: st.cap(max),
                    pids,
                    queued: st.waiters.len(),
                    breaker: st.breaker.state(now).as_str().to_string(),
                    init_failures: st.breaker.failures,
                    retry_in_ms: st
                        .breaker
                        .retry_in(now)
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
