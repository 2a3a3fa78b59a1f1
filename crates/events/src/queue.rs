//! The durable `Event` queue and its dispatcher.
//!
//! `enqueue` returns only once the event is in the write-ahead log on disk
//! (see [`crate::store`]). The dispatcher is one task that hands ready events
//! to an [`Invoker`], at most `max_in_flight` at once, and applies AWS's
//! asynchronous invocation rules to each outcome: retries after function
//! errors (1x then 2x the base delay), back-off without consuming attempts on
//! throttles, the event age limit, destinations and the dead-letter queue.
//! Every state change is logged before it is acted on, so after a crash an
//! event is either finished (`Done` record) or delivered again: at least once.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use crate::chain::ChainContext;
use crate::config::{EventInvokeConfig, QueueConfig, Target};
use crate::invoker::{InvokeOutcome, Invoker};
use crate::store::{self, Record, SegmentCounts, StoredEvent, Writer};

/// Id of an accepted event; also the invocation's request id (`x-amzn-RequestId`).
pub type EventId = Uuid;

/// Where an event came from and whose chain it continues.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EventMeta {
    /// Chain of the invocation that caused this event (decoded from the
    /// caller's trace header), or `None` for a new chain. The event runs one
    /// hop below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<ChainContext>,
    /// Informational source tag: `invoke`, `schedule`, `s3`, `dynamodb`, `destination`, `dlq`.
    #[serde(default)]
    pub source: String,
}

impl EventMeta {
    /// Meta for an event from `source` continuing `caller`'s chain.
    pub fn new(source: &str, caller: Option<ChainContext>) -> Self {
        Self {
            caller,
            source: source.to_string(),
        }
    }
}

/// Why an event was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The queue holds `capacity` events: the Invoke API answers 429
    /// `TooManyRequestsException`.
    #[error("event queue is full")]
    QueueFull,
    /// Payload over `max_payload_bytes`: 413 `RequestEntityTooLargeException`.
    #[error("{size} byte payload is too large for the Event invocation type (limit {limit} bytes)")]
    PayloadTooLarge {
        /// Payload size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The log could not be written (disk full, I/O error): 500.
    #[error("event queue write failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Opening the queue failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Directory or log unreadable / unwritable.
    #[error("cannot open event queue at {path}: {source}")]
    Io {
        /// The queue directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Another open queue (this process or another `esb`) uses the directory.
    #[error("{0} is in use by another ESB instance")]
    Locked(PathBuf),
}

/// A snapshot for `esb ps` and the status endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Events held: queued, waiting for a retry, or running.
    pub depth: usize,
    /// Of those, waiting for a retry, a back-off or a slot of their function.
    pub waiting: usize,
    /// Of those, being invoked now.
    pub in_flight: usize,
    /// Age of the oldest held event.
    pub oldest_age_ms: Option<u64>,
    /// Held events per function.
    pub by_function: BTreeMap<String, usize>,
    /// Events finished (any outcome) since open.
    pub completed: u64,
    /// Events that ended in failure (retries exhausted, too old, recursion) since open.
    pub failed: u64,
}

struct Held {
    ev: Arc<StoredEvent>,
    seg: u64,
    throttles: u32,
    running: bool,
}

#[derive(Default)]
struct State {
    held: HashMap<Uuid, Held>,
    /// Accepted count including reservations of enqueues still being written.
    reserved: usize,
    /// Payload bytes of `reserved`.
    reserved_bytes: usize,
    ready: VecDeque<Uuid>,
    delayed: BinaryHeap<Reverse<(Instant, Uuid)>>,
    in_flight: usize,
    seg_live: SegmentCounts,
    /// Highest segment the writer has reported (never deleted).
    current_seg: u64,
    /// `current_seg` as seen when each in-progress enqueue was sent: its record
    /// lands in that segment or a later one, so nothing from the lowest floor
    /// on may be deleted until it is registered.
    floors: BTreeMap<u64, usize>,
    /// Running invocations per function.
    fn_in_flight: HashMap<String, usize>,
    /// Ready events waiting for a slot of their function.
    parked: HashMap<String, VecDeque<Uuid>>,
}

impl State {
    /// Takes the fully finished prefix of segments, to delete (never the one
    /// being written, nor one an enqueue in progress may land in).
    fn dead_prefix(&mut self) -> Vec<u64> {
        let floor = self.floors.first_key_value().map_or(u64::MAX, |(f, _)| *f);
        let mut dead = Vec::new();
        while let Some((&seg, &n)) = self.seg_live.first_key_value() {
            if n > 0 || seg >= self.current_seg || seg >= floor {
                break;
            }
            self.seg_live.remove(&seg);
            dead.push(seg);
        }
        dead
    }

    fn slot_freed(&mut self, function: &str) {
        self.in_flight -= 1;
        if let Some(n) = self.fn_in_flight.get_mut(function) {
            *n -= 1;
            if *n == 0 {
                self.fn_in_flight.remove(function);
            }
        }
        if let Some(p) = self.parked.get_mut(function) {
            if let Some(id) = p.pop_front() {
                self.ready.push_front(id);
            }
            if p.is_empty() {
                self.parked.remove(function);
            }
        }
    }

    fn note_segment(&mut self, seg: u64) {
        self.current_seg = self.current_seg.max(seg);
        self.seg_live.entry(seg).or_default();
    }
    fn drop_floor(&mut self, floor: u64) {
        if let Some(n) = self.floors.get_mut(&floor) {
            *n -= 1;
            if *n == 0 {
                self.floors.remove(&floor);
            }
        }
    }
}

/// The durable asynchronous invocation queue. Cheap to share as `Arc<EventQueue>`.
pub struct EventQueue {
    dir: PathBuf,
    config: QueueConfig,
    writer: Writer,
    state: Mutex<State>,
    notify: Notify,
    configs: RwLock<HashMap<String, EventInvokeConfig>>,
    shutdown: AtomicBool,
    completed: AtomicU64,
    failed: AtomicU64,
    /// Held for the queue's life: one writer per directory.
    _lock: std::fs::File,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The outcome that ends an event badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    RetriesExhausted,
    EventAgeExceeded,
    RecursiveInvocationDetected,
}

impl Failure {
    fn condition(self) -> &'static str {
        match self {
            Failure::RetriesExhausted => "RetriesExhausted",
            Failure::EventAgeExceeded => "EventAgeExceeded",
            Failure::RecursiveInvocationDetected => "RecursiveInvocationDetected",
        }
    }
}

impl EventQueue {
    /// Opens (creating if needed) the queue in `dir` (e.g. `<data dir>/events/queue`)
    /// and loads every event accepted before and not yet finished; they are
    /// delivered again once a dispatcher runs.
    pub fn open(dir: impl AsRef<Path>, config: QueueConfig) -> Result<Arc<EventQueue>, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        let io = |source| OpenError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let lock = store::lock_dir(&dir)
            .map_err(io)?
            .ok_or_else(|| OpenError::Locked(dir.clone()))?;
        let replayed = store::replay(&dir).map_err(io)?;
        let writer =
            Writer::start(dir.clone(), replayed.next_segment, config.segment_bytes).map_err(io)?;
        let mut st = State {
            current_seg: replayed.next_segment,
            ..State::default()
        };
        let now_wall = now_ms();
        let now = Instant::now();
        for (ev, seg, not_before_ms) in replayed.events {
            let id = ev.id;
            *st.seg_live.entry(seg).or_default() += 1;
            if not_before_ms > now_wall {
                let wait = Duration::from_millis((not_before_ms - now_wall).min(86_400_000));
                st.delayed.push(Reverse((now + wait, id)));
            } else {
                st.ready.push_back(id);
            }
            st.held.insert(
                id,
                Held {
                    ev: Arc::new(ev),
                    seg,
                    throttles: 0,
                    running: false,
                },
            );
        }
        st.reserved = st.held.len();
        st.reserved_bytes = st.held.values().map(|h| h.ev.payload.len()).sum();
        // Segments with nothing live (fully delivered before the restart).
        // Only the prefix below the oldest live event: a later segment may hold
        // the `Done` records of events in an earlier one.
        let lowest_live = st.seg_live.keys().next().copied().unwrap_or(u64::MAX);
        let mut dead = Vec::new();
        for &seg in &replayed.segments {
            if seg < lowest_live {
                dead.push(seg);
            } else {
                st.seg_live.entry(seg).or_default();
            }
        }
        st.seg_live.entry(replayed.next_segment).or_default();
        store::remove_segments(&dir, &dead);
        if !st.held.is_empty() {
            tracing::info!(
                events = st.held.len(),
                "event queue: re-delivering events accepted before restart"
            );
        }
        Ok(Arc::new(EventQueue {
            dir,
            config,
            writer,
            state: Mutex::new(st),
            notify: Notify::new(),
            configs: RwLock::new(HashMap::new()),
            shutdown: AtomicBool::new(false),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            _lock: lock,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets (replaces) a function's `EventInvokeConfig`; functions without one
    /// use the defaults (2 retries, 6 hours).
    pub fn set_invoke_config(&self, function: &str, config: EventInvokeConfig) {
        self.configs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(function.to_string(), config);
    }

    fn invoke_config(&self, function: &str) -> EventInvokeConfig {
        self.configs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(function)
            .cloned()
            .unwrap_or_default()
    }

    /// Accepts an `Event` invocation of `function` (canonical name). Returns
    /// once the event is durable on disk; concurrent calls share one fsync.
    ///
    /// The Invoke API answers 202 with the id as `x-amzn-RequestId` on `Ok`,
    /// 429 on [`EnqueueError::QueueFull`], 413 on `PayloadTooLarge`.
    pub async fn enqueue(
        &self,
        function: &str,
        payload: Bytes,
        meta: EventMeta,
    ) -> Result<EventId, EnqueueError> {
        self.enqueue_inner(function, payload, meta, true).await
    }

    /// `check_capacity = false` is for destination and DLQ records of events
    /// already held: they may overshoot `capacity` by at most `max_in_flight`,
    /// which keeps a full queue from deadlocking on its own hand-offs.
    async fn enqueue_inner(
        &self,
        function: &str,
        payload: Bytes,
        mut meta: EventMeta,
        check_capacity: bool,
    ) -> Result<EventId, EnqueueError> {
        if meta.caller.is_none() {
            // A new chain, fixed now so every retry and destination shares it:
            // depth 0 stands for "outside ESB", the event itself runs at depth 1.
            meta.caller = Some(ChainContext {
                depth: 0,
                ..ChainContext::root()
            });
        }
        if payload.len() > self.config.max_payload_bytes {
            return Err(EnqueueError::PayloadTooLarge {
                size: payload.len(),
                limit: self.config.max_payload_bytes,
            });
        }
        let floor = {
            let mut st = self.lock();
            if check_capacity
                && (st.reserved >= self.config.capacity
                    || st.reserved_bytes + payload.len() > self.config.capacity_bytes)
            {
                return Err(EnqueueError::QueueFull);
            }
            st.reserved += 1;
            st.reserved_bytes += payload.len();
            let floor = st.current_seg;
            *st.floors.entry(floor).or_default() += 1;
            floor
        };
        let size = payload.len();
        let ev = StoredEvent {
            id: Uuid::now_v7(),
            function: function.to_string(),
            payload,
            enqueued_ms: now_ms(),
            attempts: 0,
            meta,
        };
        let frame = store::encode(&Record::Enqueued(ev.clone()));
        match self.writer.append(frame).await {
            Ok(seg) => {
                let id = ev.id;
                let mut st = self.lock();
                st.note_segment(seg);
                st.drop_floor(floor);
                *st.seg_live.entry(seg).or_default() += 1;
                st.held.insert(
                    id,
                    Held {
                        ev: Arc::new(ev),
                        seg,
                        throttles: 0,
                        running: false,
                    },
                );
                st.ready.push_back(id);
                drop(st);
                self.notify.notify_one();
                Ok(id)
            }
            Err(e) => {
                let mut st = self.lock();
                st.reserved -= 1;
                st.reserved_bytes -= size;
                st.drop_floor(floor);
                Err(EnqueueError::Io(e))
            }
        }
    }

    /// Depth, age and per-function counts.
    pub fn stats(&self) -> QueueStats {
        let st = self.lock();
        let now = now_ms();
        let mut s = QueueStats {
            depth: st.held.len(),
            waiting: st.delayed.len() + st.parked.values().map(VecDeque::len).sum::<usize>(),
            in_flight: st.in_flight,
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            ..QueueStats::default()
        };
        for h in st.held.values() {
            *s.by_function.entry(h.ev.function.clone()).or_default() += 1;
            let age = now.saturating_sub(h.ev.enqueued_ms);
            s.oldest_age_ms = Some(s.oldest_age_ms.map_or(age, |a| a.max(age)));
        }
        s
    }

    /// Directory holding stored dead-letter and destination records.
    pub fn dead_letter_dir(&self) -> PathBuf {
        self.dir.join("dead-letter")
    }

    /// Starts the dispatcher on the current tokio runtime. Run exactly one per queue.
    pub fn start_dispatcher(
        self: &Arc<Self>,
        invoker: Arc<dyn Invoker>,
    ) -> tokio::task::JoinHandle<()> {
        let q = Arc::clone(self);
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            // Compaction runs beside the dispatcher and ends with the queue.
            let mut tick = tokio::time::interval(COMPACT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(q) = weak.upgrade() else { return };
                if q.shutdown.load(Ordering::SeqCst) {
                    return;
                }
                q.compact().await;
            }
        });
        tokio::spawn(async move { q.dispatch_loop(invoker).await })
    }

    /// Moves the few events that still pin old segments (an event in retry
    /// or back-off for hours keeps every later segment alive) into the
    /// current one, so the old segments can be deleted. Returns how many
    /// events were moved.
    pub(crate) async fn compact(&self) -> usize {
        let mut moved = 0;
        for _ in 0..16 {
            let victims: Vec<Arc<StoredEvent>> = {
                let st = self.lock();
                let Some((&oldest, &live)) = st.seg_live.iter().find(|(_, n)| **n > 0) else {
                    return moved;
                };
                // Only worth it when the pinned segment is not the newest ones
                // and holds few events.
                if oldest + 1 >= st.current_seg || live > COMPACT_MAX_EVENTS {
                    return moved;
                }
                st.held
                    .values()
                    .filter(|h| h.seg == oldest)
                    .map(|h| Arc::clone(&h.ev))
                    .collect()
            };
            for ev in victims {
                let frame = store::encode(&Record::Enqueued((*ev).clone()));
                let seg = match self.writer.append(frame).await {
                    Ok(seg) => seg,
                    Err(e) => {
                        tracing::warn!(error = %e, "event queue compaction failed");
                        return moved;
                    }
                };
                let mut st = self.lock();
                st.note_segment(seg);
                let Some(h) = st.held.get_mut(&ev.id) else {
                    continue; // finished meanwhile
                };
                let old = std::mem::replace(&mut h.seg, seg);
                if let Some(n) = st.seg_live.get_mut(&old) {
                    *n -= 1;
                }
                *st.seg_live.entry(seg).or_default() += 1;
                moved += 1;
            }
            let dead = self.lock().dead_prefix();
            store::remove_segments(&self.dir, &dead);
        }
        moved
    }

    /// Stops handing out events (running invocations finish and are recorded).
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    async fn dispatch_loop(self: Arc<Self>, invoker: Arc<dyn Invoker>) {
        loop {
            if self.shutdown.load(Ordering::SeqCst) {
                return;
            }
            let mut to_run = Vec::new();
            let next_due = {
                let mut st = self.lock();
                let now = Instant::now();
                while let Some(Reverse((due, id))) = st.delayed.peek().copied() {
                    if due > now {
                        break;
                    }
                    st.delayed.pop();
                    st.ready.push_back(id);
                }
                let per_fn = self.config.max_in_flight_per_function.max(1);
                while st.in_flight < self.config.max_in_flight {
                    let Some(id) = st.ready.pop_front() else {
                        break;
                    };
                    let Some(ev) = st.held.get(&id).map(|h| Arc::clone(&h.ev)) else {
                        continue;
                    };
                    let running = st.fn_in_flight.get(&ev.function).copied().unwrap_or(0);
                    if running >= per_fn {
                        // Wait for one of this function's own slots, so a slow
                        // function cannot hold every slot.
                        st.parked
                            .entry(ev.function.clone())
                            .or_default()
                            .push_back(id);
                        continue;
                    }
                    if let Some(h) = st.held.get_mut(&id) {
                        h.running = true;
                    }
                    *st.fn_in_flight.entry(ev.function.clone()).or_default() += 1;
                    st.in_flight += 1;
                    to_run.push(ev);
                }
                st.delayed.peek().map(|Reverse((due, _))| *due)
            };
            for ev in to_run {
                let q = Arc::clone(&self);
                let inv = Arc::clone(&invoker);
                tokio::spawn(async move {
                    let function = ev.function.clone();
                    q.run_one(ev, inv.as_ref()).await;
                    q.lock().slot_freed(&function);
                    q.notify.notify_one();
                });
            }
            match next_due {
                Some(due) => {
                    tokio::select! {
                        _ = self.notify.notified() => {}
                        _ = tokio::time::sleep_until(due) => {}
                    }
                }
                None => self.notify.notified().await,
            }
        }
    }

    fn function_arn(&self, function: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{}:$LATEST",
            self.config.region, self.config.account_id, function
        )
    }

    async fn run_one(&self, ev: Arc<StoredEvent>, invoker: &dyn Invoker) {
        let cfg = self.invoke_config(&ev.function);
        let age = Duration::from_millis(now_ms().saturating_sub(ev.enqueued_ms));
        if age > cfg.maximum_event_age {
            let resp =
                error_payload("event age exceeded MaximumEventAgeInSeconds before it could run");
            return self
                .fail(
                    &ev,
                    &cfg,
                    Failure::EventAgeExceeded,
                    ev.attempts,
                    resp,
                    None,
                )
                .await;
        }
        let chain = match &ev.meta.caller {
            Some(c) => c.next_hop(),
            None => Ok(ChainContext::root()),
        };
        let chain = match chain {
            Ok(c) => c,
            Err(e) => {
                let resp = error_payload(&e.to_string());
                return self
                    .fail(
                        &ev,
                        &cfg,
                        Failure::RecursiveInvocationDetected,
                        ev.attempts,
                        resp,
                        None,
                    )
                    .await;
            }
        };
        let request_id = ev.id.to_string();
        let outcome = invoker
            .invoke(&ev.function, ev.payload.clone(), &request_id, &chain)
            .await;
        match outcome {
            InvokeOutcome::Success { response } => {
                let count = ev.attempts + 1;
                if let Some(target) = &cfg.on_success {
                    let record = self.destination_record(&ev, "Success", count, &response, false);
                    self.deliver(target, &ev, "on-success", record, &chain)
                        .await;
                }
                self.finish(&ev, false).await;
            }
            InvokeOutcome::FunctionError { response } => {
                let attempts = ev.attempts + 1;
                if attempts > cfg.maximum_retry_attempts {
                    return self
                        .fail(
                            &ev,
                            &cfg,
                            Failure::RetriesExhausted,
                            attempts,
                            response,
                            Some(&chain),
                        )
                        .await;
                }
                // 1x base before the first retry, 2x before the second.
                let delay = self.config.retry_base_delay * (1u32 << (attempts - 1).min(8));
                let not_before_ms = now_ms() + delay.as_millis() as u64;
                let rec = Record::Retry {
                    id: ev.id,
                    attempts,
                    not_before_ms,
                };
                match self.writer.append(store::encode(&rec)).await {
                    Ok(seg) => self.lock().note_segment(seg),
                    Err(e) => tracing::error!(error = %e, "event queue: could not record a retry"),
                }
                tracing::info!(request_id = %ev.id, function = %ev.function, attempt = attempts,
                    retry_in_ms = delay.as_millis() as u64, "async invocation failed; will retry");
                let mut new_ev = (*ev).clone();
                new_ev.attempts = attempts;
                let mut st = self.lock();
                if let Some(h) = st.held.get_mut(&ev.id) {
                    h.ev = Arc::new(new_ev);
                    h.running = false;
                    h.throttles = 0;
                }
                st.delayed.push(Reverse((Instant::now() + delay, ev.id)));
            }
            InvokeOutcome::Throttled => self.back_off(&ev).await,
            InvokeOutcome::ServiceError { message } => {
                tracing::warn!(request_id = %ev.id, function = %ev.function, %message,
                    "async invocation could not start; will retry");
                self.back_off(&ev).await
            }
            InvokeOutcome::Rejected { message } => {
                let resp = error_payload(&message);
                self.fail(
                    &ev,
                    &cfg,
                    Failure::RetriesExhausted,
                    ev.attempts + 1,
                    resp,
                    Some(&chain),
                )
                .await
            }
        }
    }

    /// Puts an event back after a throttle (no attempt consumed): 1 s doubling to 5 min.
    async fn back_off(&self, ev: &StoredEvent) {
        let mut st = self.lock();
        let Some(h) = st.held.get_mut(&ev.id) else {
            return;
        };
        h.running = false;
        h.throttles = h.throttles.saturating_add(1);
        let factor = 1u32 << (h.throttles - 1).min(16);
        let delay = (self.config.throttle_min_delay * factor).min(self.config.throttle_max_delay);
        st.delayed.push(Reverse((Instant::now() + delay, ev.id)));
    }

    async fn fail(
        &self,
        ev: &StoredEvent,
        cfg: &EventInvokeConfig,
        why: Failure,
        count: u32,
        response: Bytes,
        chain: Option<&ChainContext>,
    ) {
        tracing::warn!(request_id = %ev.id, function = %ev.function, condition = why.condition(),
            attempts = count, "async invocation failed for good");
        let chain = match chain {
            Some(c) => c.clone(),
            None => ev.meta.caller.clone().unwrap_or_else(ChainContext::root),
        };
        if let Some(target) = &cfg.on_failure {
            let record = self.destination_record(ev, why.condition(), count, &response, true);
            self.deliver(target, ev, "on-failure", record, &chain).await;
        }
        if let Some(target) = &cfg.dead_letter {
            match target {
                Target::Function(f) => self.hand_on(f, ev, ev.payload.clone(), "dlq", &chain).await,
                Target::StoredRecord => {
                    let rec = serde_json::json!({
                        "kind": "dead-letter",
                        "function": ev.function,
                        "RequestID": ev.id.to_string(),
                        "ErrorCode": 200,
                        "ErrorMessage": truncate_utf8(&String::from_utf8_lossy(&response), 1024),
                        "condition": why.condition(),
                        "approximateInvokeCount": count,
                        "payload": payload_json(&ev.payload),
                    });
                    self.store_record(ev, "dlq", &rec).await;
                }
            }
        }
        self.finish(ev, true).await;
    }

    /// Sends a destination record.
    async fn deliver(
        &self,
        target: &Target,
        ev: &StoredEvent,
        kind: &str,
        record: serde_json::Value,
        chain: &ChainContext,
    ) {
        match target {
            Target::Function(f) => {
                let mut body = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
                if body.len() > self.config.max_payload_bytes {
                    // A big response (sync limit 6 MB) does not fit an Event
                    // payload: keep the record, replace what is too big.
                    let mut record = record;
                    record["responsePayload"] = serde_json::json!({
                        "errorMessage": "response too large for a destination record"
                    });
                    body = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
                    if body.len() > self.config.max_payload_bytes {
                        record["requestPayload"] = serde_json::Value::Null;
                        body = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
                    }
                }
                self.hand_on(f, ev, body, "destination", chain).await
            }
            Target::StoredRecord => self.store_record(ev, kind, &record).await,
        }
    }

    /// Enqueues a destination / DLQ event for `function`, retrying I/O errors
    /// a few times (capacity is not checked, see `enqueue_inner`).
    async fn hand_on(
        &self,
        function: &str,
        ev: &StoredEvent,
        body: Bytes,
        source: &str,
        chain: &ChainContext,
    ) {
        for attempt in 0..HAND_ON_TRIES {
            let meta = EventMeta::new(source, Some(chain.clone()));
            match self
                .enqueue_inner(function, body.clone(), meta, false)
                .await
            {
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(request_id = %ev.id, destination = %function, error = %e, attempt,
                        "could not queue a {source} event");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }

    /// Writes a record file under `dead-letter/`, retrying I/O errors a few times.
    async fn store_record(&self, ev: &StoredEvent, kind: &str, rec: &serde_json::Value) {
        for attempt in 0..HAND_ON_TRIES {
            if self.store_record_once(ev, kind, rec).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
    }

    fn store_record_once(
        &self,
        ev: &StoredEvent,
        kind: &str,
        rec: &serde_json::Value,
    ) -> std::io::Result<()> {
        use std::io::Write;
        let dir = self.dead_letter_dir();
        let r = (|| {
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("{}-{}-{kind}.json", ev.enqueued_ms, ev.id));
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(rec).unwrap_or_default())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            store::sync_dir(&dir)
        })();
        if let Err(e) = &r {
            tracing::error!(error = %e, "could not store an event record in {}", dir.display());
        }
        r
    }

    fn destination_record(
        &self,
        ev: &StoredEvent,
        condition: &str,
        count: u32,
        response: &Bytes,
        failed: bool,
    ) -> serde_json::Value {
        let mut response_context = serde_json::json!({
            "statusCode": 200,
            "executedVersion": "$LATEST",
        });
        if failed {
            response_context["functionError"] = "Unhandled".into();
        }
        serde_json::json!({
            "version": "1.0",
            "timestamp": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            "requestContext": {
                "requestId": ev.id.to_string(),
                "functionArn": self.function_arn(&ev.function),
                "condition": condition,
                "approximateInvokeCount": count,
            },
            "requestPayload": payload_json(&ev.payload),
            "responseContext": response_context,
            "responsePayload": payload_json(response),
        })
    }

    /// Records the event as finished and frees its place.
    async fn finish(&self, ev: &StoredEvent, failed: bool) {
        let seg = match self
            .writer
            .append(store::encode(&Record::Done { id: ev.id }))
            .await
        {
            Ok(seg) => Some(seg),
            Err(e) => {
                // Not fatal: the event is delivered again after a restart.
                tracing::error!(error = %e, "event queue: could not record completion");
                None
            }
        };
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
        let removable = {
            let mut st = self.lock();
            if let Some(seg) = seg {
                st.note_segment(seg);
            }
            let Some(h) = st.held.remove(&ev.id) else {
                return;
            };
            st.reserved -= 1;
            st.reserved_bytes -= h.ev.payload.len();
            if let Some(n) = st.seg_live.get_mut(&h.seg) {
                *n -= 1;
            }
            // Delete the fully finished prefix of segments (never the one being written).
            let mut dead = Vec::new();
            let floor = st.floors.first_key_value().map_or(u64::MAX, |(f, _)| *f);
            while let Some((&seg, &n)) = st.seg_live.first_key_value() {
                if n > 0 || seg >= st.current_seg || seg >= floor {
                    break;
                }
                st.seg_live.remove(&seg);
                dead.push(seg);
            }
            dead
        };
        if !removable.is_empty() {
            store::remove_segments(&self.dir, &removable);
        }
    }
}

/// How often old segments pinned by long-waiting events are compacted.
const COMPACT_EVERY: Duration = Duration::from_secs(10);
/// Compact a pinned segment only if it holds at most this many live events.
const COMPACT_MAX_EVENTS: usize = 1000;

/// Tries for a destination / DLQ hand-off before it is logged as lost.
const HAND_ON_TRIES: u32 = 5;

/// The payload as JSON if it is JSON, else as a string.
fn payload_json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(b).into_owned()))
}

fn error_payload(message: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({ "errorMessage": message })).unwrap_or_default(),
    )
}

fn truncate_utf8(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    type Behaviour = Box<dyn Fn(&str, &[u8], usize) -> InvokeOutcome + Send + Sync>;

    type Call = (String, Bytes, String, ChainContext, Instant);

    /// Records every call; `behaviour(function, payload, nth call for that payload)`.
    struct Recorder {
        calls: Mutex<Vec<Call>>,
        behaviour: Behaviour,
        seen: Mutex<HashMap<Vec<u8>, usize>>,
    }

    impl Recorder {
        fn new(
            b: impl Fn(&str, &[u8], usize) -> InvokeOutcome + Send + Sync + 'static,
        ) -> Arc<Self> {
            Arc::new(Recorder {
                calls: Mutex::new(Vec::new()),
                behaviour: Box::new(b),
                seen: Mutex::new(HashMap::new()),
            })
        }
        fn ok() -> Arc<Self> {
            Self::new(|_, _, _| InvokeOutcome::Success {
                response: Bytes::from_static(b"{\"ok\":true}"),
            })
        }
        fn calls_to(&self, f: &str) -> Vec<(Bytes, String, ChainContext, Instant)> {
            self.calls
                .lock()
                .expect("lock")
                .iter()
                .filter(|c| c.0 == f)
                .map(|c| (c.1.clone(), c.2.clone(), c.3.clone(), c.4))
                .collect()
        }
    }

    #[async_trait::async_trait]
    impl Invoker for Recorder {
        async fn invoke(
            &self,
            function: &str,
            payload: Bytes,
            request_id: &str,
            chain: &ChainContext,
        ) -> InvokeOutcome {
            let n = {
                let mut seen = self.seen.lock().expect("lock");
                let n = seen.entry(payload.to_vec()).or_default();
                *n += 1;
                *n
            };
            self.calls.lock().expect("lock").push((
                function.to_string(),
                payload.clone(),
                request_id.to_string(),
                chain.clone(),
                Instant::now(),
            ));
            (self.behaviour)(function, &payload, n)
        }
    }

    fn fast() -> QueueConfig {
        QueueConfig {
            retry_base_delay: Duration::from_millis(150),
            throttle_min_delay: Duration::from_millis(5),
            throttle_max_delay: Duration::from_millis(40),
            ..QueueConfig::default()
        }
    }

    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Reopens once the previous instance's tasks have let go of the directory.
    async fn reopen(dir: &Path) -> Arc<EventQueue> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match EventQueue::open(dir, fast()) {
                Ok(q) => return q,
                Err(OpenError::Locked(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    fn json(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).expect("json")
    }

    #[tokio::test]
    async fn delivers_each_event_once_and_empties() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(dir.path(), fast()).expect("open");
        let rec = Recorder::ok();
        q.start_dispatcher(rec.clone());
        let mut ids = Vec::new();
        for i in 0..50 {
            let id = q
                .enqueue(
                    "fn-a",
                    Bytes::from(format!("{{\"n\":{i}}}")),
                    EventMeta::new("invoke", None),
                )
                .await
                .expect("accepted");
            ids.push(id.to_string());
        }
        eventually("all delivered", || q.stats().depth == 0).await;
        let calls = rec.calls_to("fn-a");
        assert_eq!(calls.len(), 50);
        let mut got: Vec<String> = calls.iter().map(|c| c.1.clone()).collect();
        got.sort();
        ids.sort();
        assert_eq!(got, ids, "request id is the event id");
        assert!(
            calls.iter().all(|c| c.2.depth == 1),
            "a new chain for an outside caller"
        );
        assert_eq!(q.stats().completed, 50);
    }

    #[tokio::test]
    async fn function_errors_retry_twice_with_growing_delay_then_on_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(dir.path(), fast()).expect("open");
        let cfg = EventInvokeConfig {
            on_failure: Some(Target::Function("failures".into())),
            ..Default::default()
        };
        q.set_invoke_config("flaky", cfg);
        let rec = Recorder::new(|f, _, _| {
            if f == "flaky" {
                InvokeOutcome::FunctionError {
                    response: Bytes::from_static(
                        b"{\"errorMessage\":\"boom\",\"errorType\":\"Exception\"}",
                    ),
                }
            } else {
                InvokeOutcome::Success {
                    response: Bytes::new(),
                }
            }
        });
        q.start_dispatcher(rec.clone());
        let id = q
            .enqueue(
                "flaky",
                Bytes::from_static(b"{\"order\":7}"),
                EventMeta::new("invoke", None),
            )
            .await
            .expect("accepted");
        eventually("failure destination", || {
            rec.calls_to("failures").len() == 1
        })
        .await;
        let calls = rec.calls_to("flaky");
        assert_eq!(calls.len(), 3, "first attempt + 2 retries");
        let gap1 = calls[1].3 - calls[0].3;
        let gap2 = calls[2].3 - calls[1].3;
        assert!(
            gap1 >= Duration::from_millis(150),
            "first retry after the base delay: {gap1:?}"
        );
        assert!(
            gap2 >= Duration::from_millis(300),
            "second retry after twice the base: {gap2:?}"
        );
        assert!(
            calls.iter().all(|c| c.1 == id.to_string()),
            "same request id on every retry"
        );
        let dest = rec.calls_to("failures");
        let r = json(&dest[0].0);
        assert_eq!(r["version"], "1.0");
        assert_eq!(r["requestContext"]["requestId"], id.to_string());
        assert_eq!(r["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(r["requestContext"]["approximateInvokeCount"], 3);
        assert_eq!(
            r["requestContext"]["functionArn"],
            "arn:aws:lambda:us-east-1:123456789012:function:flaky:$LATEST"
        );
        assert_eq!(r["requestPayload"], serde_json::json!({"order": 7}));
        assert_eq!(r["responseContext"]["functionError"], "Unhandled");
        assert_eq!(r["responseContext"]["statusCode"], 200);
        assert_eq!(r["responsePayload"]["errorMessage"], "boom");
        assert!(r["timestamp"].as_str().expect("ts").ends_with('Z'));
        // The destination call continues the chain.
        assert_eq!(dest[0].2.chain_id, calls[0].2.chain_id);
        assert_eq!(dest[0].2.depth, 2);
        eventually("empty", || q.stats().depth == 0).await;
        assert_eq!(q.stats().failed, 1);
    }

    #[tokio::test]
    async fn zero_retries_and_stored_dead_letter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(dir.path(), fast()).expect("open");
        let mut cfg = EventInvokeConfig::new(Some(0), Some(60)).expect("valid");
        cfg.dead_letter = Some(Target::StoredRecord);
        q.set_invoke_config("bad", cfg);
        let rec = Recorder::new(|_, _, _| InvokeOutcome::FunctionError {
            response: Bytes::from_static(b"{\"errorMessage\":\"no\"}"),
        });
        q.start_dispatcher(rec.clone());
        let id = q
            .enqueue(
                "bad",
                Bytes::from_static(b"{\"k\":1}"),
                EventMeta::default(),
            )
            .await
            .expect("accepted");
        eventually("empty", || q.stats().depth == 0).await;
        assert_eq!(
            rec.calls_to("bad").len(),
            1,
            "MaximumRetryAttempts 0: one attempt"
        );
        let files: Vec<_> = std::fs::read_dir(q.dead_letter_dir())
            .expect("dlq dir")
            .collect();
        assert_eq!(files.len(), 1);
        let path = files
            .into_iter()
            .next()
            .expect("one")
            .expect("entry")
            .path();
        let r = json(&std::fs::read(&path).expect("read"));
        assert_eq!(r["RequestID"], id.to_string());
        assert_eq!(r["payload"], serde_json::json!({"k": 1}));
        assert_eq!(r["function"], "bad");
    }

    #[tokio::test]
    async fn throttles_do_not_consume_attempts_and_success_goes_to_on_success() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(dir.path(), fast()).expect("open");
        let mut cfg = EventInvokeConfig::new(Some(0), None).expect("valid");
        cfg.on_success = Some(Target::Function("done".into()));
        q.set_invoke_config("busy", cfg);
        let rec = Recorder::new(|f, _, n| match (f, n) {
            ("busy", 1..=5) => InvokeOutcome::Throttled,
            ("busy", 6) => InvokeOutcome::ServiceError {
                message: "cold start failed".into(),
            },
            _ => InvokeOutcome::Success {
                response: Bytes::from_static(b"\"fine\""),
            },
        });
        q.start_dispatcher(rec.clone());
        q.enqueue("busy", Bytes::from_static(b"{}"), EventMeta::default())
            .await
            .expect("accepted");
        eventually("success destination", || rec.calls_to("done").len() == 1).await;
        assert_eq!(
            rec.calls_to("busy").len(),
            7,
            "6 throttles/5xx then success, with 0 retries allowed"
        );
        let r = json(&rec.calls_to("done")[0].0);
        assert_eq!(r["requestContext"]["condition"], "Success");
        assert_eq!(r["requestContext"]["approximateInvokeCount"], 1);
        assert_eq!(r["responsePayload"], "fine");
        assert!(r["responseContext"].get("functionError").is_none());
    }

    #[tokio::test]
    async fn too_old_events_end_as_event_age_exceeded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(dir.path(), fast()).expect("open");
        // Below AWS's 60 s minimum only so the test is quick (the fields are public).
        let cfg = EventInvokeConfig {
            maximum_event_age: Duration::from_millis(100),
            on_failure: Some(Target::StoredRecord),
            ..Default::default()
        };
        q.set_invoke_config("slow", cfg);
        let rec = Recorder::new(|_, _, _| InvokeOutcome::Throttled);
        q.start_dispatcher(rec.clone());
        q.enqueue("slow", Bytes::from_static(b"{}"), EventMeta::default())
            .await
            .expect("accepted");
        eventually("empty", || q.stats().depth == 0).await;
        let path = std::fs::read_dir(q.dead_letter_dir())
            .expect("dir")
            .next()
            .expect("one")
            .expect("entry")
            .path();
        let r = json(&std::fs::read(path).expect("read"));
        assert_eq!(r["requestContext"]["condition"], "EventAgeExceeded");
        assert_eq!(
            r["requestContext"]["approximateInvokeCount"], 0,
            "throttles are not attempts"
        );
    }

    #[tokio::test]
    async fn recursion_past_16_is_stopped_before_invoking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(dir.path(), fast()).expect("open");
        let cfg = EventInvokeConfig {
            on_failure: Some(Target::StoredRecord),
            ..Default::default()
        };
        q.set_invoke_config("loop", cfg);
        let rec = Recorder::ok();
        q.start_dispatcher(rec.clone());
        let caller = ChainContext {
            chain_id: "1-00000000-000000000000000000000000".into(),
            depth: 15,
        };
        q.enqueue(
            "loop",
            Bytes::from_static(b"{\"d\":16}"),
            EventMeta::new("invoke", Some(caller.clone())),
        )
        .await
        .expect("accepted");
        let deep = ChainContext {
            depth: 16,
            ..caller
        };
        q.enqueue(
            "loop",
            Bytes::from_static(b"{\"d\":17}"),
            EventMeta::new("invoke", Some(deep)),
        )
        .await
        .expect("accepted");
        eventually("empty", || q.stats().depth == 0).await;
        let calls = rec.calls_to("loop");
        assert_eq!(calls.len(), 1, "depth 16 runs, depth 17 does not");
        assert_eq!(calls[0].2.depth, 16);
        let path = std::fs::read_dir(q.dead_letter_dir())
            .expect("dir")
            .next()
            .expect("one")
            .expect("entry")
            .path();
        let r = json(&std::fs::read(path).expect("read"));
        assert_eq!(
            r["requestContext"]["condition"],
            "RecursiveInvocationDetected"
        );
        assert_eq!(r["requestPayload"]["d"], 17);
    }

    #[tokio::test]
    async fn full_queue_refuses_then_accepts_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(
            dir.path(),
            QueueConfig {
                capacity: 10,
                ..fast()
            },
        )
        .expect("open");
        for _ in 0..10 {
            q.enqueue("f", Bytes::from_static(b"{}"), EventMeta::default())
                .await
                .expect("room");
        }
        let err = q
            .enqueue("f", Bytes::from_static(b"{}"), EventMeta::default())
            .await;
        assert!(matches!(err, Err(EnqueueError::QueueFull)), "{err:?}");
        let q2 = EventQueue::open(
            dir.path().join("bytes"),
            QueueConfig {
                capacity_bytes: 1000,
                ..fast()
            },
        )
        .expect("open");
        q2.enqueue("f", Bytes::from(vec![b'1'; 600]), EventMeta::default())
            .await
            .expect("room");
        assert!(matches!(
            q2.enqueue("f", Bytes::from(vec![b'1'; 600]), EventMeta::default())
                .await,
            Err(EnqueueError::QueueFull)
        ));
        let big = Bytes::from(vec![b' '; 1024 * 1024 + 1]);
        assert!(matches!(
            q.enqueue("f", big, EventMeta::default()).await,
            Err(EnqueueError::PayloadTooLarge { .. })
        ));
        assert_eq!(q.stats().depth, 10);
        assert_eq!(q.stats().by_function.get("f"), Some(&10));
        q.start_dispatcher(Recorder::ok());
        eventually("drained", || q.stats().depth == 0).await;
        q.enqueue("f", Bytes::from_static(b"{}"), EventMeta::default())
            .await
            .expect("room again");
    }

    #[tokio::test]
    async fn oversized_response_still_reaches_the_destination() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(dir.path(), fast()).expect("open");
        q.set_invoke_config(
            "big",
            EventInvokeConfig {
                on_success: Some(Target::Function("dest".into())),
                ..Default::default()
            },
        );
        let rec = Recorder::new(|f, _, _| InvokeOutcome::Success {
            response: if f == "big" {
                Bytes::from(format!("\"{}\"", "x".repeat(2 * 1024 * 1024)))
            } else {
                Bytes::new()
            },
        });
        q.start_dispatcher(rec.clone());
        q.enqueue(
            "big",
            Bytes::from_static(b"{\"a\":1}"),
            EventMeta::default(),
        )
        .await
        .expect("accepted");
        eventually("destination", || rec.calls_to("dest").len() == 1).await;
        let r = json(&rec.calls_to("dest")[0].0);
        assert_eq!(r["requestContext"]["condition"], "Success");
        assert_eq!(r["requestPayload"]["a"], 1);
        assert!(r["responsePayload"]["errorMessage"].is_string());
    }

    #[tokio::test]
    async fn a_slow_function_does_not_hold_every_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(
            dir.path(),
            QueueConfig {
                max_in_flight: 4,
                max_in_flight_per_function: 2,
                ..fast()
            },
        )
        .expect("open");
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        struct Slow(Arc<tokio::sync::Semaphore>, Arc<Recorder>);
        #[async_trait::async_trait]
        impl Invoker for Slow {
            async fn invoke(&self, f: &str, p: Bytes, r: &str, c: &ChainContext) -> InvokeOutcome {
                let out = self.1.invoke(f, p, r, c).await;
                if f == "slow" {
                    let _ = self.0.acquire().await.map(|p| p.forget());
                }
                out
            }
        }
        let rec = Recorder::ok();
        q.start_dispatcher(Arc::new(Slow(gate.clone(), rec.clone())));
        for i in 0..10 {
            q.enqueue("slow", Bytes::from(format!("{i}")), EventMeta::default())
                .await
                .expect("ok");
        }
        eventually("two slow running", || rec.calls_to("slow").len() == 2).await;
        q.enqueue("fast", Bytes::from_static(b"\"f\""), EventMeta::default())
            .await
            .expect("ok");
        eventually("fast ran", || rec.calls_to("fast").len() == 1).await;
        assert_eq!(rec.calls_to("slow").len(), 2, "per-function cap holds");
        assert_eq!(q.stats().waiting, 8);
        gate.add_permits(100);
        eventually("all slow ran", || q.stats().depth == 0).await;
        assert_eq!(rec.calls_to("slow").len(), 10);
    }

    #[tokio::test]
    async fn compaction_frees_segments_pinned_by_a_waiting_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segs = || {
            std::fs::read_dir(dir.path())
                .expect("dir")
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
                .count()
        };
        {
            let q = EventQueue::open(
                dir.path(),
                QueueConfig {
                    segment_bytes: 2048,
                    throttle_min_delay: Duration::from_secs(3600),
                    throttle_max_delay: Duration::from_secs(3600),
                    ..fast()
                },
            )
            .expect("open");
            q.set_invoke_config("stuck", EventInvokeConfig::new(Some(1), None).expect("ok"));
            let rec = Recorder::new(|f, _, _| {
                if f == "stuck" {
                    InvokeOutcome::Throttled
                } else {
                    InvokeOutcome::Success {
                        response: Bytes::new(),
                    }
                }
            });
            q.start_dispatcher(rec.clone());
            q.enqueue(
                "stuck",
                Bytes::from_static(b"\"pin\""),
                EventMeta::default(),
            )
            .await
            .expect("ok");
            eventually("stuck throttled", || rec.calls_to("stuck").len() == 1).await;
            for i in 0..300 {
                q.enqueue(
                    "f",
                    Bytes::from(format!("\"{i:0>150}\"")),
                    EventMeta::default(),
                )
                .await
                .expect("ok");
            }
            eventually("others done", || q.stats().depth == 1).await;
            assert!(segs() > 10, "the waiting event pins {} segments", segs());
            assert_eq!(q.compact().await, 1);
            assert!(segs() <= 3, "{} segments left after compaction", segs());
            q.shutdown();
        }
        let q = reopen(dir.path()).await;
        let st = q.stats();
        assert_eq!(st.depth, 1, "only the waiting event is still held");
        assert_eq!(st.by_function.get("stuck"), Some(&1));
    }

    #[tokio::test]
    async fn second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _q = EventQueue::open(dir.path(), fast()).expect("open");
        assert!(matches!(
            EventQueue::open(dir.path(), fast()),
            Err(OpenError::Locked(_))
        ));
    }

    #[tokio::test]
    async fn destinations_are_delivered_even_when_the_queue_is_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(
            dir.path(),
            QueueConfig {
                capacity: 5,
                ..fast()
            },
        )
        .expect("open");
        q.set_invoke_config(
            "f",
            EventInvokeConfig {
                on_success: Some(Target::Function("dest".into())),
                ..Default::default()
            },
        );
        for _ in 0..5 {
            q.enqueue("f", Bytes::from_static(b"{}"), EventMeta::default())
                .await
                .expect("room");
        }
        let rec = Recorder::ok();
        q.start_dispatcher(rec.clone());
        eventually("all destinations", || rec.calls_to("dest").len() == 5).await;
        eventually("empty", || q.stats().depth == 0).await;
        assert_eq!(rec.calls_to("f").len(), 5);
    }

    #[tokio::test]
    async fn restart_redelivers_unfinished_events_and_keeps_retry_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let q = EventQueue::open(dir.path(), fast()).expect("open");
            for i in 0..100 {
                q.enqueue("f", Bytes::from(format!("{i}")), EventMeta::default())
                    .await
                    .expect("accepted");
            }
            // One event fails once (retry recorded), then the process "stops".
            q.set_invoke_config("g", EventInvokeConfig::new(Some(1), None).expect("valid"));
            q.enqueue("g", Bytes::from_static(b"\"g\""), EventMeta::default())
                .await
                .expect("accepted");
            let rec = Recorder::new(|f, _, _| {
                if f == "g" {
                    InvokeOutcome::FunctionError {
                        response: Bytes::new(),
                    }
                } else {
                    InvokeOutcome::Throttled
                }
            });
            q.start_dispatcher(rec.clone());
            eventually("g attempted", || rec.calls_to("g").len() == 1).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            q.shutdown();
        }
        let q = reopen(dir.path()).await;
        assert_eq!(q.stats().depth, 101);
        q.set_invoke_config("g", EventInvokeConfig::new(Some(1), None).expect("valid"));
        let rec = Recorder::new(|f, _, _| {
            if f == "g" {
                InvokeOutcome::FunctionError {
                    response: Bytes::new(),
                }
            } else {
                InvokeOutcome::Success {
                    response: Bytes::new(),
                }
            }
        });
        q.start_dispatcher(rec.clone());
        eventually("drained", || q.stats().depth == 0).await;
        assert_eq!(rec.calls_to("f").len(), 100);
        assert_eq!(
            rec.calls_to("g").len(),
            1,
            "the retry count survived the restart"
        );
        q.shutdown();
        drop(q);
        let q = reopen(dir.path()).await;
        assert_eq!(
            q.stats().depth,
            0,
            "finished events are not delivered again"
        );
    }

    #[tokio::test]
    async fn delivered_segments_are_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(
            dir.path(),
            QueueConfig {
                segment_bytes: 2048,
                ..fast()
            },
        )
        .expect("open");
        let rec = Recorder::ok();
        q.start_dispatcher(rec.clone());
        for i in 0..300 {
            q.enqueue(
                "f",
                Bytes::from(format!("{{\"pad\":\"{i:0>100}\"}}")),
                EventMeta::default(),
            )
            .await
            .expect("ok");
        }
        eventually("drained", || q.stats().depth == 0).await;
        // One more round so the last completions land in a newer segment.
        for _ in 0..30 {
            q.enqueue("f", Bytes::from(vec![b'1'; 200]), EventMeta::default())
                .await
                .expect("ok");
        }
        eventually("drained", || q.stats().depth == 0).await;
        let segs = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .map(|e| e.file_name().to_string_lossy().starts_with("seg-"))
                    .unwrap_or(false)
            })
            .count();
        assert!(
            segs <= 4,
            "{segs} segment files left after everything was delivered"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_enqueues_share_fsyncs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(dir.path(), fast()).expect("open");
        let n = 4000;
        let done = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..200 {
            let q = Arc::clone(&q);
            let done = Arc::clone(&done);
            tasks.push(tokio::spawn(async move {
                for i in 0..n / 200 {
                    q.enqueue(
                        "f",
                        Bytes::from(format!("{{\"t\":{t},\"i\":{i}}}")),
                        EventMeta::default(),
                    )
                    .await
                    .expect("ok");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let el = start.elapsed();
        assert_eq!(done.load(Ordering::Relaxed), n);
        assert_eq!(q.stats().depth, n);
        eprintln!(
            "{n} durable enqueues in {el:?} ({:.0}/s, debug build)",
            n as f64 / el.as_secs_f64()
        );
        // Debug build, shared machine: a generous floor that one-fsync-per-event would miss.
        assert!(el < Duration::from_secs(8), "{el:?}");
    }
}
