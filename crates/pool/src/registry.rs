//! The pool's books: registered functions, each function's workers (idle,
//! busy, starting) and waiters, and the pool-wide count. Lock order: a
//! function's lock may be held while taking the pool-wide one, never the
//! other way round.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use esb_runtimes_core::{FunctionSpec, RuntimeBackend, RuntimeError, Worker};
use parking_lot::{Mutex, MutexGuard, RwLock};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::breaker::Breaker;
use crate::config::{FunctionLimits, PoolConfig, PoolError, ThrottleReason};
use crate::queue::Waiter;

/// Shared state behind every clone of a [`Pool`].
pub(crate) struct Inner {
    pub(crate) backend: Arc<dyn RuntimeBackend>,
    pub(crate) config: PoolConfig,
    pub(crate) functions: RwLock<HashMap<String, Arc<FnState>>>,
    pub(crate) global: Mutex<Global>,
    /// Length of `Global::blocked`, readable without the lock: a worker
    /// going idle checks it to decide whether another function needs its
    /// slot more.
    pub(crate) blocked_hint: AtomicUsize,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) next_key: AtomicU64,
    pub(crate) shutdown_tx: watch::Sender<bool>,
    /// Code edits in progress (`edits.rs`).
    pub(crate) edits: crate::edits::Edits,
}

/// Pool-wide accounting. Lock order: a function's lock may be held while
/// taking this one, never the other way round.
#[derive(Default)]
pub(crate) struct Global {
    /// Live plus starting workers over all functions.
    pub(crate) total: usize,
    /// Functions with requests waiting because `max_workers` is reached;
    /// a freed slot goes to the first of them.
    pub(crate) blocked: VecDeque<Arc<FnState>>,
}

pub(crate) struct FnState {
    pub(crate) state: Mutex<FnInner>,
    /// `/metrics` counters (`counters.rs`); kept across re-registration.
    pub(crate) counters: Arc<esb_metrics::FunctionCounters>,
}

impl FnState {
    pub(crate) fn new(spec: Arc<FunctionSpec>, limits: FunctionLimits) -> Self {
        Self {
            state: Mutex::new(FnInner::new(spec, limits)),
            counters: Arc::default(),
        }
    }

    /// The function's books. `parking_lot` does not poison: a panic while
    /// the lock was held leaves counters that are still usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, FnInner> {
        self.state.lock()
    }
}

pub(crate) struct FnInner {
    pub(crate) spec: Arc<FunctionSpec>,
    /// Bumped when the spec changes; workers of an older generation are not
    /// reused.
    pub(crate) generation: u64,
    pub(crate) limits: FunctionLimits,
    /// Idle workers, least recently used first: taken from the back (LIFO),
    /// reaped from the front.
    pub(crate) idle: VecDeque<IdleWorker>,
    /// Slots reserved for workers being started.
    pub(crate) starting: usize,
    /// Every live worker (idle and busy), for `status` and `shutdown`.
    pub(crate) workers: HashMap<u64, Arc<dyn Worker>>,
    /// Requests waiting for a worker, oldest first.
    pub(crate) waiters: VecDeque<Waiter>,
    pub(crate) next_waiter: u64,
    /// Whether this function is in `Global::blocked`.
    pub(crate) in_blocked: bool,
    /// No background (top-up) start before this time.
    pub(crate) warm_retry_at: Option<Instant>,
    /// Start failures in a row and whether starts are refused for now.
    pub(crate) breaker: Breaker,
}

impl FnInner {
    pub(crate) fn new(spec: Arc<FunctionSpec>, limits: FunctionLimits) -> Self {
        Self {
            spec,
            generation: 0,
            limits,
            idle: VecDeque::new(),
            starting: 0,
            workers: HashMap::new(),
            waiters: VecDeque::new(),
            next_waiter: 0,
            in_blocked: false,
            warm_retry_at: None,
            breaker: Breaker::default(),
        }
    }

    /// Slots held: live workers plus starting ones.
    pub(crate) fn live(&self) -> usize {
        self.workers.len() + self.starting
    }

    pub(crate) fn busy(&self) -> usize {
        self.workers.len().saturating_sub(self.idle.len())
    }

    /// The most workers this function may have.
    pub(crate) fn cap(&self, max_workers: usize) -> usize {
        self.limits
            .reserved_concurrency
            .map_or(max_workers, |r| (r as usize).min(max_workers))
    }

    pub(crate) fn min_warm(&self, max_workers: usize) -> usize {
        (self.limits.min_warm as usize).min(self.cap(max_workers))
    }

    /// Which limit a request that finds no worker is up against.
    pub(crate) fn throttle_reason(&self) -> ThrottleReason {
        if self
            .limits
            .reserved_concurrency
            .is_some_and(|r| self.live() >= r as usize)
        {
            ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded
        } else {
            ThrottleReason::ConcurrentInvocationLimitExceeded
        }
    }
}

pub(crate) struct IdleWorker {
    pub(crate) slot: WorkerSlot,
    pub(crate) since: Instant,
}

pub(crate) struct WorkerSlot {
    pub(crate) key: u64,
    pub(crate) generation: u64,
    pub(crate) worker: Arc<dyn Worker>,
}

impl Inner {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<Arc<FnState>> {
        self.functions.read().get(name).cloned()
    }

    pub(crate) fn all_functions(&self) -> Vec<Arc<FnState>> {
        self.functions.read().values().cloned().collect()
    }
}

impl Drop for Inner {
    /// The last handle went away without `shutdown`: stop the workers
    /// anyway (best effort, without waiting) rather than leave processes
    /// behind.
    fn drop(&mut self) {
        let functions = std::mem::take(&mut *self.functions.write());
        for f in functions.values() {
            for worker in f.lock().workers.values() {
                spawn_stop(worker.clone());
            }
        }
    }
}

pub(crate) fn start_task_lost() -> PoolError {
    PoolError::Start(RuntimeError::Backend(
        "worker start task ended unexpectedly".to_string(),
    ))
}

/// Stops a worker without waiting for it.
pub(crate) fn spawn_stop(worker: Arc<dyn Worker>) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move { worker.stop().await });
    }
}
