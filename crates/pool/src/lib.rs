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
//! `std::sync::Mutex` section per function on each side and never talks to
//! another task; hand-off to a waiting request goes through a
//! `tokio::sync::oneshot`. Every slot (a running or starting worker) is held
//! by a [`Ticket`] whose `Drop` gives it back, so a caller's future dropped
//! at any `.await` leaks nothing.
//!
//! Must not: parse HTTP or know how a worker is started (that is the
//! [`RuntimeBackend`]'s job).
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use esb_runtimes_core::{
    FunctionSpec, Invocation, InvokeResult, RuntimeBackend, RuntimeError, Worker, WorkerError,
};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// Longest sleep of the reaper: crashed idle workers are noticed within it.
const REAPER_TICK: Duration = Duration::from_secs(1);
/// After a background start (pre-warm top-up) fails, wait this long before
/// trying again, so a broken function does not start a process every tick.
const WARM_RETRY_BACKOFF: Duration = Duration::from_secs(30);
/// How often `shutdown` looks whether in-flight invocations are done.
const SHUTDOWN_POLL: Duration = Duration::from_millis(10);

/// Pool-wide settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Most workers alive at once over all functions (AWS: account
    /// concurrency). Over it: `ConcurrentInvocationLimitExceeded`.
    pub max_workers: usize,
    /// A worker idle this long is stopped (default 5 minutes).
    pub idle_timeout: Duration,
    /// How long a request waits for a worker when the limit is reached.
    pub queue_timeout: Duration,
    /// How many requests may wait per function; more are throttled at once.
    pub queue_len: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_workers: 64,
            idle_timeout: Duration::from_secs(300),
            queue_timeout: Duration::from_secs(10),
            queue_len: 100,
        }
    }
}

/// Per-function limits from the template.
#[derive(Debug, Clone, Default)]
pub struct FunctionLimits {
    /// `ReservedConcurrentExecutions` (0 = always throttled).
    pub reserved_concurrency: Option<u32>,
    /// Workers kept warm from start (`ProvisionedConcurrencyConfig`).
    pub min_warm: u32,
}

/// Which limit throttled a request (the Invoke API's `Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleReason {
    /// The function's `ReservedConcurrentExecutions` is used up.
    ReservedFunctionConcurrentInvocationLimitExceeded,
    /// The pool-wide maximum is used up.
    ConcurrentInvocationLimitExceeded,
}

impl ThrottleReason {
    /// The `Reason` member of Lambda's `TooManyRequestsException`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReservedFunctionConcurrentInvocationLimitExceeded => {
                "ReservedFunctionConcurrentInvocationLimitExceeded"
            }
            Self::ConcurrentInvocationLimitExceeded => "ConcurrentInvocationLimitExceeded",
        }
    }
}

impl std::fmt::Display for ThrottleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the pool could not run an invocation.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No function with that name is registered.
    #[error("function not found: {0}")]
    UnknownFunction(String),
    /// Every allowed worker was busy for the whole wait.
    #[error("rate exceeded ({0:?})")]
    Throttled(ThrottleReason),
    /// A cold start failed.
    #[error(transparent)]
    Start(#[from] RuntimeError),
    /// The worker failed (not the function).
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The pool is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// A function's workers right now (`esb ps`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FunctionStatus {
    /// Function name.
    pub name: String,
    /// Idle, ready workers.
    pub warm: usize,
    /// Workers running an invocation.
    pub busy: usize,
    /// Workers being started.
    pub starting: usize,
    /// Concurrency limit that applies to it.
    pub limit: usize,
    /// Process ids of its workers, when known.
    pub pids: Vec<u32>,
    /// Requests waiting for a worker.
    #[serde(default)]
    pub queued: usize,
}

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
            }),
        }
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
        let existing = read(&inner.functions).get(&spec.name).cloned();
        let f = match existing {
            Some(f) => f,
            None => {
                let mut map = write(&inner.functions);
                match map.get(&spec.name) {
                    Some(f) => f.clone(),
                    None => {
                        let f = Arc::new(FnState {
                            state: Mutex::new(FnInner::new(spec.clone(), limits)),
                        });
                        map.insert(spec.name.clone(), f);
                        return;
                    }
                }
            }
        };
        let retired = {
            let mut st = lock(&f);
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
            inner.free_slot(&f, lock(&f));
            spawn_stop(worker);
        }
        // A raised limit lets queued requests start workers now.
        inner.fill_waiters(&f);
    }

    /// The spec of a registered function.
    pub fn function(&self, name: &str) -> Option<Arc<FunctionSpec>> {
        let f = self.inner.lookup(name)?;
        Some(lock(&f).spec.clone())
    }

    /// All registered functions.
    pub fn functions(&self) -> Vec<Arc<FunctionSpec>> {
        let mut specs: Vec<_> = self
            .inner
            .all_functions()
            .iter()
            .map(|f| lock(f).spec.clone())
            .collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs
    }

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
                let mut st = lock(&f);
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
        let inner = &self.inner;
        let f = inner
            .lookup(function)
            .ok_or_else(|| PoolError::UnknownFunction(function.to_string()))?;
        let mut invocation = invocation;
        let mut may_retry = true;
        loop {
            let mut ticket = inner.acquire(&f).await?;
            if ticket.is_start() {
                ticket = inner.cold_start(&f, ticket).await?;
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
                let st = lock(f);
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
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

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
            let waiters = std::mem::take(&mut lock(f).waiters);
            drop(waiters);
        }
        {
            let mut global = lock_global(&inner.global);
            global.blocked.clear();
            inner.blocked_hint.store(0, Ordering::Relaxed);
        }
        let deadline = Instant::now() + grace;
        loop {
            let active: usize = functions
                .iter()
                .map(|f| {
                    let st = lock(f);
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
            let mut st = lock(f);
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
            let mut global = lock_global(&inner.global);
            global.total = global.total.saturating_sub(freed);
        }
        let mut stops = tokio::task::JoinSet::new();
        for worker in to_stop {
            stops.spawn(async move { worker.stop().await });
        }
        while stops.join_next().await.is_some() {}
    }
}

/// Shared state behind every clone of a [`Pool`].
struct Inner {
    backend: Arc<dyn RuntimeBackend>,
    config: PoolConfig,
    functions: RwLock<HashMap<String, Arc<FnState>>>,
    global: Mutex<Global>,
    /// Length of `Global::blocked`, readable without the lock: a worker
    /// going idle checks it to decide whether another function needs its
    /// slot more.
    blocked_hint: AtomicUsize,
    shutting_down: AtomicBool,
    next_key: AtomicU64,
    shutdown_tx: watch::Sender<bool>,
}

/// Pool-wide accounting. Lock order: a function's lock may be held while
/// taking this one, never the other way round.
#[derive(Default)]
struct Global {
    /// Live plus starting workers over all functions.
    total: usize,
    /// Functions with requests waiting because `max_workers` is reached;
    /// a freed slot goes to the first of them.
    blocked: VecDeque<Arc<FnState>>,
}

struct FnState {
    state: Mutex<FnInner>,
}

struct FnInner {
    spec: Arc<FunctionSpec>,
    /// Bumped when the spec changes; workers of an older generation are not
    /// reused.
    generation: u64,
    limits: FunctionLimits,
    /// Idle workers, least recently used first: taken from the back (LIFO),
    /// reaped from the front.
    idle: VecDeque<IdleWorker>,
    /// Slots reserved for workers being started.
    starting: usize,
    /// Every live worker (idle and busy), for `status` and `shutdown`.
    workers: HashMap<u64, Arc<dyn Worker>>,
    /// Requests waiting for a worker, oldest first.
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    /// Whether this function is in `Global::blocked`.
    in_blocked: bool,
    /// No background (top-up) start before this time.
    warm_retry_at: Option<Instant>,
}

impl FnInner {
    fn new(spec: Arc<FunctionSpec>, limits: FunctionLimits) -> Self {
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
        }
    }

    /// Slots held: live workers plus starting ones.
    fn live(&self) -> usize {
        self.workers.len() + self.starting
    }

    fn busy(&self) -> usize {
        self.workers.len().saturating_sub(self.idle.len())
    }

    /// The most workers this function may have.
    fn cap(&self, max_workers: usize) -> usize {
        self.limits
            .reserved_concurrency
            .map_or(max_workers, |r| (r as usize).min(max_workers))
    }

    fn min_warm(&self, max_workers: usize) -> usize {
        (self.limits.min_warm as usize).min(self.cap(max_workers))
    }

    /// Which limit a request that finds no worker is up against.
    fn throttle_reason(&self) -> ThrottleReason {
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

struct IdleWorker {
    slot: WorkerSlot,
    since: Instant,
}

struct WorkerSlot {
    key: u64,
    generation: u64,
    worker: Arc<dyn Worker>,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Ticket>,
}

/// One slot of a function: either a worker reserved for the holder, or the
/// right to start one. Dropping it gives the slot back (the worker goes to
/// the oldest waiter or the idle set; an unused start right goes to a
/// waiter or the pool), so no slot leaks whatever future is dropped.
///
/// Must never be dropped while its function's lock is held (its `Drop`
/// takes that lock); paths that could only do so clear `kind` first.
struct Ticket {
    inner: Arc<Inner>,
    f: Arc<FnState>,
    kind: Option<TicketKind>,
}

enum TicketKind {
    /// A busy worker; `warm` when it ran an invocation before.
    Worker { slot: WorkerSlot, warm: bool },
    /// Counted in `starting`; the holder may start a worker.
    Start,
}

impl Ticket {
    fn start(inner: Arc<Inner>, f: Arc<FnState>) -> Self {
        Self {
            inner,
            f,
            kind: Some(TicketKind::Start),
        }
    }

    fn worker(&self) -> Option<Arc<dyn Worker>> {
        match &self.kind {
            Some(TicketKind::Worker { slot, .. }) => Some(slot.worker.clone()),
            _ => None,
        }
    }

    fn is_start(&self) -> bool {
        matches!(self.kind, Some(TicketKind::Start))
    }

    fn is_warm(&self) -> bool {
        matches!(self.kind, Some(TicketKind::Worker { warm: true, .. }))
    }

    /// Drops the worker (dead or untrustworthy) instead of reusing it.
    fn discard(mut self) {
        match self.kind.take() {
            Some(TicketKind::Worker { slot, .. }) => self.inner.discard(&self.f, slot),
            other => self.kind = other,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        match self.kind.take() {
            Some(TicketKind::Worker { slot, .. }) => self.inner.release(&self.f, slot),
            Some(TicketKind::Start) => {
                let mut st = lock(&self.f);
                st.starting = st.starting.saturating_sub(1);
                self.inner.free_slot(&self.f, st);
            }
            None => {}
        }
    }
}

/// Puts a worker back after an invocation, or drops it when it died.
fn settle(ticket: Ticket, worker_alive: bool) {
    if worker_alive {
        // `release` also checks `is_alive`.
        drop(ticket);
    } else {
        ticket.discard();
    }
}

type InvokeFuture = Pin<Box<dyn Future<Output = Result<InvokeResult, WorkerError>> + Send>>;

/// A running invocation and the ticket of its worker. If the caller's
/// future is dropped mid-invocation, the invocation is finished in a task
/// and the worker is settled then, instead of being cut off half-way (which
/// would leave it in an unknown state).
struct InFlight {
    fut: Option<InvokeFuture>,
    ticket: Option<Ticket>,
}

impl InFlight {
    fn new(ticket: Ticket, worker: Arc<dyn Worker>, invocation: Invocation) -> Self {
        Self {
            fut: Some(Box::pin(async move { worker.invoke(invocation).await })),
            ticket: Some(ticket),
        }
    }

    fn take_ticket(&mut self) -> Option<Ticket> {
        self.ticket.take()
    }
}

impl Future for InFlight {
    type Output = Result<InvokeResult, WorkerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(Err(WorkerError::Busy(
                "invocation polled after completion".to_string(),
            )));
        };
        match fut.as_mut().poll(cx) {
            Poll::Ready(result) => {
                this.fut = None;
                Poll::Ready(result)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let (Some(fut), Some(ticket)) = (self.fut.take(), self.ticket.take()) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let result = fut.await;
                    let alive = matches!(&result, Ok(res) if res.worker_alive);
                    settle(ticket, alive);
                });
            }
            // No runtime to finish it on: the worker's state is unknown.
            Err(_) => {
                drop(fut);
                ticket.discard();
            }
        }
    }
}

/// A queued request. Dropping it (timeout, or the caller's future dropped)
/// takes the request out of the queue; a ticket that was already handed to
/// it is dropped with the receiver afterwards, which gives the slot back.
struct WaitGuard {
    f: Arc<FnState>,
    id: u64,
    queued: bool,
    // Fields drop after `Drop::drop` has released the lock, so a ticket
    // still in the channel can take that lock to give its slot back.
    rx: oneshot::Receiver<Ticket>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if self.queued {
            let mut st = lock(&self.f);
            if let Some(pos) = st.waiters.iter().position(|w| w.id == self.id) {
                st.waiters.remove(pos);
            }
        }
    }
}

/// What `acquire_now` decided.
enum Acquire {
    Ready(Ticket),
    Wait(WaitGuard),
    Throttled(ThrottleReason),
    ShuttingDown,
    /// The state changed while the lock was released; look again
    /// (without stopping another function's worker this time).
    Retry,
}

impl Inner {
    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    fn lookup(&self, name: &str) -> Option<Arc<FnState>> {
        read(&self.functions).get(name).cloned()
    }

    fn all_functions(&self) -> Vec<Arc<FnState>> {
        read(&self.functions).values().cloned().collect()
    }

    /// Takes one pool-wide slot if `max_workers` allows.
    fn try_reserve_global(&self) -> bool {
        let mut global = lock_global(&self.global);
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
    fn reserve_global(&self, f: &Arc<FnState>, st: &mut FnInner, register: bool) -> bool {
        let mut global = lock_global(&self.global);
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

    /// A ticket for `f`: a warm worker, the right to start one, or a place
    /// in the queue.
    async fn acquire(self: &Arc<Self>, f: &Arc<FnState>) -> Result<Ticket, PoolError> {
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

    fn acquire_now(self: &Arc<Self>, f: &Arc<FnState>, may_evict: bool) -> Acquire {
        let max = self.config.max_workers;
        let mut dead = Vec::new();
        let mut st = lock(f);
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
                self.free_slot(f, lock(f));
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
                let mut st = lock(f);
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
    fn enqueue(self: &Arc<Self>, f: &Arc<FnState>, mut st: MutexGuard<'_, FnInner>) -> Acquire {
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

    async fn wait(self: &Arc<Self>, mut guard: WaitGuard) -> Result<Ticket, PoolError> {
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
                    let mut st = lock(&guard.f);
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

    /// Starts a worker for a `Start` ticket and waits for it.
    async fn cold_start(
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
    fn spawn_start(
        self: &Arc<Self>,
        f: &Arc<FnState>,
        ticket: Ticket,
        reply: Option<oneshot::Sender<Result<Ticket, PoolError>>>,
    ) {
        let inner = self.clone();
        let f = f.clone();
        let (spec, generation) = {
            let st = lock(&f);
            (st.spec.clone(), st.generation)
        };
        tokio::spawn(async move {
            let mut ticket = ticket;
            let name = spec.name.clone();
            tracing::debug!(function = %name, "starting worker");
            let outcome = match inner.backend.start_worker(spec).await {
                Ok(worker) => {
                    let accepted = {
                        let mut st = lock(&f);
                        if inner.is_shutting_down() {
                            false
                        } else {
                            let key = inner.next_key.fetch_add(1, Ordering::Relaxed);
                            st.starting = st.starting.saturating_sub(1);
                            st.workers.insert(key, worker.clone());
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
                    // Frees the slot; the oldest waiter gets to try itself.
                    drop(ticket);
                    if reply.is_none() {
                        lock(&f).warm_retry_at = Some(Instant::now() + WARM_RETRY_BACKOFF);
                    }
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
    fn release(self: &Arc<Self>, f: &Arc<FnState>, slot: WorkerSlot) {
        let mut st = lock(f);
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
    fn discard(self: &Arc<Self>, f: &Arc<FnState>, slot: WorkerSlot) {
        let mut st = lock(f);
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
    fn free_slot(self: &Arc<Self>, f: &Arc<FnState>, mut st: MutexGuard<'_, FnInner>) {
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

    /// Gives a pool-wide slot to the first function blocked on it, or back.
    fn release_global_slot(self: &Arc<Self>) {
        let max = self.config.max_workers;
        loop {
            let f = {
                let mut global = lock_global(&self.global);
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
            let mut st = lock(&f);
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
    fn mark_blocked(&self, f: &Arc<FnState>, st: &mut FnInner) {
        if st.in_blocked {
            return;
        }
        st.in_blocked = true;
        let mut global = lock_global(&self.global);
        global.blocked.push_back(f.clone());
        self.blocked_hint
            .store(global.blocked.len(), Ordering::Relaxed);
    }

    /// Whether some function really waits on the pool-wide limit; drops
    /// stale entries from the front of the blocked list.
    fn prune_blocked(&self) -> bool {
        let max = self.config.max_workers;
        loop {
            let f = {
                let mut global = lock_global(&self.global);
                match global.blocked.pop_front() {
                    Some(f) => f,
                    None => {
                        self.blocked_hint.store(0, Ordering::Relaxed);
                        return false;
                    }
                }
            };
            let mut st = lock(&f);
            if !self.is_shutting_down() && !st.waiters.is_empty() && st.live() < st.cap(max) {
                let mut global = lock_global(&self.global);
                global.blocked.push_front(f.clone());
                self.blocked_hint
                    .store(global.blocked.len(), Ordering::Relaxed);
                return true;
            }
            st.in_blocked = false;
            drop(st);
            let global = lock_global(&self.global);
            self.blocked_hint
                .store(global.blocked.len(), Ordering::Relaxed);
        }
    }

    /// Stops idle workers of other functions while requests wait on the
    /// pool-wide limit, handing their slots over.
    fn evict_while_blocked(self: &Arc<Self>) {
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
    fn evict_one(&self, exclude: Option<&Arc<FnState>>) -> bool {
        let max = self.config.max_workers;
        let mut best: Option<(Instant, Arc<FnState>)> = None;
        for f in self.all_functions() {
            if exclude.is_some_and(|e| Arc::ptr_eq(e, &f)) {
                continue;
            }
            let since = {
                let st = lock(&f);
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
            let mut st = lock(&victim);
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

    /// Lets queued requests start workers while `f` has room (after its
    /// limit was raised).
    fn fill_waiters(self: &Arc<Self>, f: &Arc<FnState>) {
        let max = self.config.max_workers;
        loop {
            let mut st = lock(f);
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

    /// Stops idle workers past the idle timeout (keeping `min_warm`) and
    /// crashed ones. Returns the next time an idle worker expires.
    fn reap(self: &Arc<Self>, now: Instant) -> Option<Instant> {
        let max = self.config.max_workers;
        let timeout = self.config.idle_timeout;
        let mut next: Option<Instant> = None;
        for f in self.all_functions() {
            let mut stop = Vec::new();
            {
                let mut st = lock(&f);
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
                self.free_slot(&f, lock(&f));
                spawn_stop(worker);
            }
        }
        next
    }

    /// Starts workers in the background up to `min_warm` (after crashes or
    /// reaping below it).
    fn top_up(self: &Arc<Self>, now: Instant) {
        let max = self.config.max_workers;
        for f in self.all_functions() {
            let mut starts = 0;
            {
                let mut st = lock(&f);
                if st.warm_retry_at.is_some_and(|at| now < at) {
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

impl Drop for Inner {
    /// The last handle went away without `shutdown`: stop the workers
    /// anyway (best effort, without waiting) rather than leave processes
    /// behind.
    fn drop(&mut self) {
        let functions = std::mem::take(&mut *write(&self.functions));
        for f in functions.values() {
            for worker in lock(f).workers.values() {
                spawn_stop(worker.clone());
            }
        }
    }
}

/// Hands `ticket` to the oldest waiter still listening; gives it back when
/// there is none.
fn offer(st: &mut FnInner, ticket: Ticket) -> Option<Ticket> {
    let mut ticket = ticket;
    while let Some(waiter) = st.waiters.pop_front() {
        match waiter.tx.send(ticket) {
            Ok(()) => return None,
            Err(back) => ticket = back,
        }
    }
    Some(ticket)
}

fn start_task_lost() -> PoolError {
    PoolError::Start(RuntimeError::Backend(
        "worker start task ended unexpectedly".to_string(),
    ))
}

/// Stops a worker without waiting for it.
fn spawn_stop(worker: Arc<dyn Worker>) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move { worker.stop().await });
    }
}

/// A poisoned lock only means another thread panicked mid-update; the
/// counters stay usable, and refusing every later request would be worse.
fn lock(f: &FnState) -> MutexGuard<'_, FnInner> {
    f.state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn lock_global(global: &Mutex<Global>) -> MutexGuard<'_, Global> {
    global.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use esb_test_support::{FakeBackend, spec};

    fn inv(id: u64) -> Invocation {
        Invocation {
            request_id: format!("req-{id}"),
            payload: id.to_string().into_bytes().into(),
            invoked_function_arn: String::new(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
            timeout: None,
        }
    }

    /// The pool-wide count equals the sum of the functions' slots, and
    /// nothing is left busy, starting or queued.
    fn assert_quiet_and_consistent(pool: &Pool) {
        let inner = &pool.inner;
        let mut live = 0;
        for f in inner.all_functions() {
            let st = lock(&f);
            assert_eq!(st.busy(), 0, "{}", st.spec.name);
            assert_eq!(st.starting, 0, "{}", st.spec.name);
            assert!(st.waiters.is_empty(), "{}", st.spec.name);
            assert!(st.live() <= st.cap(inner.config.max_workers));
            live += st.live();
        }
        let total = lock_global(&inner.global).total;
        assert_eq!(total, live, "pool-wide count matches the workers");
        assert!(total <= inner.config.max_workers);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn storm_with_cancellations_and_crashes_keeps_the_books_straight() {
        let backend = Arc::new(FakeBackend::echo().with_delay(Duration::from_millis(2)));
        let pool = Pool::new(
            backend.clone(),
            PoolConfig {
                max_workers: 4,
                idle_timeout: Duration::from_millis(30),
                queue_timeout: Duration::from_millis(40),
                queue_len: 6,
            },
        );
        let fns = [
            (
                "a",
                FunctionLimits {
                    reserved_concurrency: Some(2),
                    min_warm: 0,
                },
            ),
            (
                "b",
                FunctionLimits {
                    reserved_concurrency: None,
                    min_warm: 0,
                },
            ),
            (
                "c",
                FunctionLimits {
                    reserved_concurrency: Some(3),
                    min_warm: 1,
                },
            ),
        ];
        for (name, limits) in &fns {
            pool.register(spec(name), limits.clone());
        }
        let reaper = pool.spawn_reaper();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut tasks = Vec::new();
        for i in 0..600u64 {
            let r = next();
            let name = fns[(r % 3) as usize].0;
            let p = pool.clone();
            let cancel_after = (r >> 8) % 4 == 0;
            tasks.push(tokio::spawn(async move {
                let call = p.invoke(name, inv(i));
                if cancel_after {
                    let _ = tokio::time::timeout(Duration::from_millis(1), call).await;
                } else {
                    match call.await {
                        Ok(_)
                        | Err(PoolError::Throttled(_))
                        | Err(PoolError::Worker(WorkerError::Gone(_))) => {}
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                }
            }));
            if (r >> 16) % 50 == 0 {
                let started = backend.started();
                if started > 0 {
                    backend.worker((r >> 24) as usize % started).kill();
                }
            }
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Let cancelled invocations finish and the reaper settle.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_quiet_and_consistent(&pool);
        // Still serving: parallel calls of one function run, evicting the
        // others' idle workers as needed (`c` keeps its `min_warm`).
        let calls: Vec<_> = (0..4)
            .map(|i| {
                let p = pool.clone();
                tokio::spawn(async move { p.invoke("b", inv(1000 + i)).await })
            })
            .collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        pool.shutdown(Duration::from_secs(1)).await;
        reaper.await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(backend.stopped(), backend.started(), "every worker stopped");
    }
}
