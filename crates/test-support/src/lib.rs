//! Test fakes and fixtures shared by the crates' tests: a [`FakeBackend`]
//! whose workers answer with a closure instead of a real runtime, and
//! records what it was asked to do.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use esb_runtimes_core::{
    ErrorKind, FunctionSpec, Invocation, InvocationOutcome, InvokeResult, RuntimeBackend,
    RuntimeError, Worker, WorkerError, WorkerInfo,
};

/// A worker failure a fake worker can be told to report on its next
/// invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeFailure {
    /// [`WorkerError::Gone`]: the invocation was not delivered (and the
    /// worker is dead from then on).
    Gone,
    /// [`WorkerError::Transport`]: the invocation may have run.
    Transport,
}

impl FakeFailure {
    fn code(self) -> u8 {
        match self {
            Self::Gone => 1,
            Self::Transport => 2,
        }
    }
}

/// What a fake worker answers for one invocation.
pub type Handler = dyn Fn(&FunctionSpec, &Invocation) -> InvocationOutcome + Send + Sync;

/// A runtime backend whose workers run a Rust closure.
pub struct FakeBackend {
    handler: Arc<Handler>,
    /// Extra time each invocation takes.
    delay: Duration,
    /// Time each start takes.
    start_delay: Duration,
    /// Failure code (see [`FakeFailure::code`]) new workers report on their
    /// first invocation; 0 = none.
    first_failure: std::sync::atomic::AtomicU8,
    started: AtomicUsize,
    next_pid: AtomicU32,
    fail_start: AtomicBool,
    /// Every worker started so far.
    pub workers: Mutex<Vec<Arc<FakeWorker>>>,
}

impl FakeBackend {
    /// Workers answer with `handler`.
    pub fn new(
        handler: impl Fn(&FunctionSpec, &Invocation) -> InvocationOutcome + Send + Sync + 'static,
    ) -> Self {
        Self {
            handler: Arc::new(handler),
            delay: Duration::ZERO,
            start_delay: Duration::ZERO,
            first_failure: std::sync::atomic::AtomicU8::new(0),
            started: AtomicUsize::new(0),
            next_pid: AtomicU32::new(1000),
            fail_start: AtomicBool::new(false),
            workers: Mutex::new(Vec::new()),
        }
    }

    /// Workers echo the event back.
    pub fn echo() -> Self {
        Self::new(|_, inv| InvocationOutcome::Success(inv.payload.clone()))
    }

    /// Each invocation sleeps `delay` before answering.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Each start takes `delay` (the failure of [`Self::set_fail_start`] is
    /// decided when the start begins and reported after the delay).
    pub fn with_start_delay(mut self, delay: Duration) -> Self {
        self.start_delay = delay;
        self
    }

    /// Workers started from now on report `failure` on their first
    /// invocation (or behave, with `None`).
    pub fn set_first_invoke_failure(&self, failure: Option<FakeFailure>) {
        self.first_failure
            .store(failure.map_or(0, FakeFailure::code), Ordering::SeqCst);
    }

    /// The `i`-th worker started (0-based).
    pub fn worker(&self, i: usize) -> Arc<FakeWorker> {
        self.workers.lock().expect("fake backend lock poisoned")[i].clone()
    }

    /// How many started workers were stopped (by `stop`).
    pub fn stopped(&self) -> usize {
        self.workers
            .lock()
            .expect("fake backend lock poisoned")
            .iter()
            .filter(|w| w.was_stopped())
            .count()
    }

    /// Makes the next starts fail with an init error (or succeed again).
    pub fn set_fail_start(&self, fail: bool) {
        self.fail_start.store(fail, Ordering::SeqCst);
    }

    /// How many workers were started.
    pub fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl RuntimeBackend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn start_worker(&self, spec: Arc<FunctionSpec>) -> Result<Arc<dyn Worker>, RuntimeError> {
        let fail = self.fail_start.load(Ordering::SeqCst);
        if !self.start_delay.is_zero() {
            tokio::time::sleep(self.start_delay).await;
        }
        if fail {
            return Err(RuntimeError::Init {
                function: spec.name.clone(),
                payload: Bytes::from_static(
                    br#"{"errorType":"Runtime.ExitError","errorMessage":"fake init failure"}"#,
                ),
            });
        }
        self.started.fetch_add(1, Ordering::SeqCst);
        let pid = self.next_pid.fetch_add(1, Ordering::SeqCst);
        let worker = Arc::new(FakeWorker {
            id: format!("fake-{pid}"),
            pid,
            spec,
            handler: self.handler.clone(),
            delay: self.delay,
            alive: AtomicBool::new(true),
            busy: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            fail_next: std::sync::atomic::AtomicU8::new(self.first_failure.load(Ordering::SeqCst)),
            invocations: AtomicUsize::new(0),
        });
        self.workers
            .lock()
            .expect("fake backend lock poisoned")
            .push(worker.clone());
        Ok(worker)
    }

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>, RuntimeError> {
        let workers = self.workers.lock().expect("fake backend lock poisoned");
        Ok(workers
            .iter()
            .filter(|w| !w.was_stopped())
            .map(|w| WorkerInfo {
                id: w.id.clone(),
                function: w.spec.name.clone(),
                code_hash: w.spec.code_hash.clone(),
                pid: Some(w.pid),
                state: if w.alive.load(Ordering::SeqCst) {
                    "running".to_string()
                } else {
                    "exited".to_string()
                },
            })
            .collect())
    }

    async fn shutdown(&self) {
        let workers: Vec<_> = self
            .workers
            .lock()
            .expect("fake backend lock poisoned")
            .clone();
        for worker in workers {
            worker.stop().await;
        }
    }
}

/// A worker of the [`FakeBackend`].
pub struct FakeWorker {
    id: String,
    pid: u32,
    spec: Arc<FunctionSpec>,
    handler: Arc<Handler>,
    delay: Duration,
    alive: AtomicBool,
    busy: AtomicBool,
    stopped: AtomicBool,
    fail_next: std::sync::atomic::AtomicU8,
    /// How many invocations it ran.
    pub invocations: AtomicUsize,
}

impl std::fmt::Debug for FakeWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeWorker").field("id", &self.id).finish()
    }
}

impl FakeWorker {
    /// Simulates the runtime dying (as `kill -9` would).
    pub fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
    }

    /// Makes the next invocation fail with `failure` while the worker still
    /// looks alive until then (a supervisor that went away unnoticed).
    pub fn fail_next(&self, failure: FakeFailure) {
        self.fail_next.store(failure.code(), Ordering::SeqCst);
    }

    /// Whether `stop` was called.
    pub fn was_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// How many invocations it ran to the end.
    pub fn invocations(&self) -> usize {
        self.invocations.load(Ordering::SeqCst)
    }

    /// The process id it reports.
    pub fn fake_pid(&self) -> u32 {
        self.pid
    }
}

#[async_trait::async_trait]
impl Worker for FakeWorker {
    fn id(&self) -> &str {
        &self.id
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    async fn invoke(&self, invocation: Invocation) -> Result<InvokeResult, WorkerError> {
        if !self.alive.load(Ordering::SeqCst) {
            return Err(WorkerError::Gone(self.id.clone()));
        }
        match self.fail_next.swap(0, Ordering::SeqCst) {
            1 => {
                self.alive.store(false, Ordering::SeqCst);
                return Err(WorkerError::Gone(self.id.clone()));
            }
            2 => {
                return Err(WorkerError::Transport {
                    worker: self.id.clone(),
                    message: "fake transport failure".to_string(),
                });
            }
            _ => {}
        }
        if self.busy.swap(true, Ordering::SeqCst) {
            return Err(WorkerError::Busy(self.id.clone()));
        }
        let start = Instant::now();
        let limit = invocation
            .timeout
            .map_or(self.spec.timeout, |t| t.min(self.spec.timeout));
        let outcome = if self.delay > limit {
            tokio::time::sleep(limit).await;
            self.alive.store(false, Ordering::SeqCst);
            InvocationOutcome::Error {
                kind: ErrorKind::Timeout,
                payload: Bytes::from(format!(
                    r#"{{"errorType":"Sandbox.Timedout","errorMessage":"RequestId: {} Error: Task timed out after {:.2} seconds"}}"#,
                    invocation.request_id,
                    limit.as_secs_f64()
                )),
            }
        } else {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            (self.handler)(&self.spec, &invocation)
        };
        self.invocations.fetch_add(1, Ordering::SeqCst);
        self.busy.store(false, Ordering::SeqCst);
        Ok(InvokeResult {
            outcome,
            log_tail: format!("START RequestId: {}\n", invocation.request_id),
            duration: start.elapsed(),
            init_duration: None,
            worker_alive: self.alive.load(Ordering::SeqCst),
        })
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    async fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.alive.store(false, Ordering::SeqCst);
    }
}

/// A function spec for tests.
pub fn spec(name: &str) -> FunctionSpec {
    FunctionSpec {
        name: name.to_string(),
        runtime: "python3.12".to_string(),
        handler: Some("app.handler".to_string()),
        code_dir: std::env::temp_dir(),
        image: None,
        memory_mb: 128,
        timeout: Duration::from_secs(3),
        environment: Default::default(),
        region: "us-east-1".to_string(),
        account_id: "123456789012".to_string(),
        code_hash: "test".to_string(),
    }
}
