//! ESB's metrics: the counters the hot path bumps and the Prometheus text
//! the gateway serves on `/metrics` (docs/observability.md lists every name).
//!
//! Owns the counter types ([`FunctionCounters`], [`RouteCounters`],
//! [`ServiceCounters`]), the registry they are read from at scrape time
//! ([`Metrics`]) and the rendering. Must not hold state of its own beyond
//! counters: gauges (workers, queues) are read from their owners when a
//! scraper asks.
//!
//! The hot path is atomics only: each function's and each route's counters
//! are created once (when the function is registered, when the routes are
//! compiled) and reached through an `Arc`, so a request never takes a lock
//! or builds a label set. Rendering uses `prometheus-client`'s text encoder
//! through a [`prometheus_client::collector::Collector`] over a snapshot.
#![forbid(unsafe_code)]

mod hist;
mod process;
mod render;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

pub use hist::{Histogram, LATENCY_BOUNDS};

/// One function's counters (Lambda's `Invocations`, `Errors`, `Throttles`,
/// `Duration`, `ConcurrentExecutions`, plus init duration and cold starts).
#[derive(Debug, Default)]
pub struct FunctionCounters {
    /// Invocations that ran (successful or not; throttles excluded).
    pub invocations: AtomicU64,
    /// Invocations that ended in a function error, a timeout or a worker
    /// failure.
    pub errors: AtomicU64,
    /// Requests refused because no worker became free.
    pub throttles: AtomicU64,
    /// Invocations that started a new worker.
    pub cold_starts: AtomicU64,
    /// Invocations in progress (waiting for or running on a worker).
    pub concurrent: AtomicI64,
    /// Time from handing the event over to the response.
    pub duration: Histogram,
    /// Init duration of cold starts.
    pub init_duration: Histogram,
}

impl FunctionCounters {
    /// Counts an invocation in progress until the guard is dropped.
    pub fn begin(&self) -> Running<'_> {
        self.concurrent.fetch_add(1, Ordering::Relaxed);
        Running(self)
    }

    /// An invocation that ran.
    pub fn finished(&self, duration: Duration, init: Option<Duration>, error: bool) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(duration);
        if let Some(init) = init {
            self.cold_starts.fetch_add(1, Ordering::Relaxed);
            self.init_duration.observe(init);
        }
    }

    /// An invocation whose worker failed (start failure, crash, lost).
    pub fn failed(&self) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused for lack of a worker.
    pub fn throttled(&self) {
        self.throttles.fetch_add(1, Ordering::Relaxed);
    }
}

/// Guard of [`FunctionCounters::begin`].
#[derive(Debug)]
pub struct Running<'a>(&'a FunctionCounters);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.concurrent.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Status codes counted under their own label; any other is counted under
/// its class (`2xx` … `5xx`, `other`).
pub const STATUS_CODES: [u16; 20] = [
    200, 201, 202, 204, 301, 302, 304, 400, 401, 403, 404, 405, 409, 413, 415, 429, 500, 502, 503,
    504,
];
const STATUS_LABELS: [&str; 26] = [
    "200", "201", "202", "204", "301", "302", "304", "400", "401", "403", "404", "405", "409",
    "413", "415", "429", "500", "502", "503", "504", "1xx", "2xx", "3xx", "4xx", "5xx", "other",
];

fn status_slot(status: u16) -> usize {
    match STATUS_CODES.iter().position(|c| *c == status) {
        Some(i) => i,
        None => match status {
            100..=599 => STATUS_CODES.len() + usize::from(status / 100 - 1),
            _ => STATUS_LABELS.len() - 1,
        },
    }
}

/// One gateway route's requests by status and latency. Labels are fixed
/// when the routes are compiled.
#[derive(Debug)]
pub struct RouteCounters {
    /// `api` label (the API's logical id, or `_esb` for ESB's own paths).
    pub api: String,
    /// `route` label (`GET /pets/{id}`, `$default`, `invoke`, …).
    pub route: String,
    by_status: [AtomicU64; STATUS_LABELS.len()],
    latency: Histogram,
}

impl RouteCounters {
    /// Counters for `api` / `route`.
    pub fn new(api: impl Into<String>, route: impl Into<String>) -> Self {
        Self {
            api: api.into(),
            route: route.into(),
            by_status: Default::default(),
            latency: Histogram::default(),
        }
    }

    /// One answered request.
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.by_status[status_slot(status)].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(elapsed);
    }
}

/// Operations of one embedded data service (S3, DynamoDB) by operation
/// name and status class.
#[derive(Debug)]
pub struct ServiceCounters {
    /// `service` label.
    pub service: &'static str,
    ops: RwLock<BTreeMap<String, Arc<[AtomicU64; 3]>>>,
}

impl ServiceCounters {
    /// Counters for `service`.
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            ops: RwLock::new(BTreeMap::new()),
        }
    }

    /// One operation with its HTTP status. Operation names come from a
    /// fixed set (the service's API), so the map stays small.
    pub fn record(&self, operation: &str, status: u16) {
        let class = match status {
            0..=399 => 0,
            400..=499 => 1,
            _ => 2,
        };
        if let Some(c) = self.ops.read().get(operation) {
            c[class].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut ops = self.ops.write();
        // Bounded: a hostile client cannot make unbounded label sets.
        if ops.len() >= 256 && !ops.contains_key(operation) {
            return;
        }
        let c = ops.entry(operation.to_string()).or_default();
        c[class].fetch_add(1, Ordering::Relaxed);
    }
}

/// What the pool reports about one function at scrape time.
#[derive(Debug, Clone)]
pub struct FunctionSample {
    /// Function name.
    pub name: String,
    /// Its counters.
    pub counters: Arc<FunctionCounters>,
    /// Idle workers.
    pub warm: usize,
    /// Workers running an invocation.
    pub busy: usize,
    /// Workers being started.
    pub starting: usize,
    /// Requests waiting for a worker.
    pub waiting: usize,
}

/// The `Event` queue at scrape time.
#[derive(Debug, Clone, Default)]
pub struct AsyncSample {
    /// Held events per function.
    pub depth: BTreeMap<String, usize>,
    /// Age of the oldest held event.
    pub oldest_age: Option<Duration>,
}

type FunctionSource = Box<dyn Fn() -> Vec<FunctionSample> + Send + Sync>;
type AsyncSource = Box<dyn Fn() -> AsyncSample + Send + Sync>;

/// The registry `/metrics` renders. Sources and route lists are set at
/// start-up and on reload; requests only touch the counters they hold.
#[derive(Default)]
pub struct Metrics {
    functions: RwLock<Option<FunctionSource>>,
    async_queue: RwLock<Option<AsyncSource>>,
    routes: RwLock<Vec<Arc<RouteCounters>>>,
    services: RwLock<Vec<Arc<ServiceCounters>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where the per-function samples come from (the pool).
    pub fn set_functions(&self, source: impl Fn() -> Vec<FunctionSample> + Send + Sync + 'static) {
        *self.functions.write() = Some(Box::new(source));
    }

    /// Where the `Event` queue's sample comes from.
    pub fn set_async_queue(&self, source: impl Fn() -> AsyncSample + Send + Sync + 'static) {
        *self.async_queue.write() = Some(Box::new(source));
    }

    /// Replaces the gateway's route counters (start-up, reload).
    pub fn set_routes(&self, routes: Vec<Arc<RouteCounters>>) {
        *self.routes.write() = routes;
    }

    /// Adds a data service's counters.
    pub fn add_service(&self, service: Arc<ServiceCounters>) {
        self.services.write().push(service);
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let snapshot = render::Snapshot {
            functions: self
                .functions
                .read()
                .as_ref()
                .map(|f| f())
                .unwrap_or_default(),
            async_queue: self
                .async_queue
                .read()
                .as_ref()
                .map(|f| f())
                .unwrap_or_default(),
            routes: self.routes.read().clone(),
            services: self.services.read().clone(),
            process: process::sample(),
        };
        render::render(snapshot)
    }
}

#[cfg(test)]
mod tests;
