//! DynamoDB Streams delivery: a durable per-table change log kept by ESB in
//! front of the embedded table, and a poller per event source mapping that
//! invokes its function with batches in order and checkpoints each delivered
//! batch.
//!
//! The log uses the same framed, group-committed segment files as the event
//! queue ([`crate::store`]); each frame body is `{"seq": n, "record": {...}}`.
//! One log per table is one shard: records are delivered in write order, so
//! also in order per partition key.
//!
//! Stream pollers invoke synchronously (as Lambda's event source mappings do),
//! not through the `Event` queue.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::watch;

use crate::chain::ChainContext;
use crate::config::Target;
use crate::dynamodb::{ItemChange, StreamRecordBuilder};
use crate::invoker::{InvokeOutcome, Invoker};
use crate::queue::OpenError;
use crate::store::{self, Writer};

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    seq: u64,
    /// Append time, unix ms (for the 24 h retention).
    #[serde(default)]
    ms: u64,
    record: Value,
}

/// How long records stay in the log (AWS: 24 hours), consumed or not.
pub const STREAM_RETENTION: Duration = Duration::from_secs(24 * 3600);

struct LogState {
    /// Records not yet trimmed, by sequence number: record, segment once
    /// durable, append time (unix ms).
    records: BTreeMap<u64, (Arc<Value>, Option<u64>, u64)>,
    /// Highest sequence number of each segment (for deleting consumed ones).
    seg_max: BTreeMap<u64, u64>,
    /// Checkpoint of each consumer.
    consumers: HashMap<String, u64>,
    current_seg: u64,
}

/// The change log of one table's stream.
pub struct StreamLog {
    dir: PathBuf,
    builder: StreamRecordBuilder,
    writer: Writer,
    /// Serialises sequence assignment with the hand-off to the writer so the
    /// file order is the sequence order.
    order: Mutex<()>,
    state: Mutex<LogState>,
    /// Highest sequence number known durable (all lower ones are too).
    durable: watch::Sender<u64>,
    /// Retention in ms (`STREAM_RETENTION` unless changed for tests).
    retention_ms: std::sync::atomic::AtomicU64,
    _lock: std::fs::File,
}

impl StreamLog {
    /// Opens (creating) the log in `dir` (e.g. `<data dir>/events/streams/<table>`).
    pub fn open(
        dir: impl AsRef<Path>,
        builder: StreamRecordBuilder,
        segment_bytes: u64,
    ) -> Result<Arc<StreamLog>, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        let io = |source| OpenError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let lock = store::lock_dir(&dir)
            .map_err(io)?
            .ok_or_else(|| OpenError::Locked(dir.clone()))?;
        let segments = store::list_segments(&dir).map_err(io)?;
        let mut records = BTreeMap::new();
        let mut seg_max = BTreeMap::new();
        for &seg in &segments {
            for body in store::read_frames(&store::segment_path(&dir, seg)).map_err(io)? {
                if let Ok(e) = serde_json::from_slice::<Entry>(&body) {
                    seg_max.insert(seg, e.seq);
                    records.insert(e.seq, (Arc::new(e.record), Some(seg), e.ms));
                }
            }
        }
        let consumers = read_checkpoints(&dir);
        let last = records.keys().next_back().copied().unwrap_or(0);
        let last = consumers.values().copied().max().unwrap_or(0).max(last);
        builder.resume_after(last);
        let next = segments.last().map_or(1, |s| s + 1);
        let writer = Writer::start(dir.clone(), next, segment_bytes).map_err(io)?;
        let log = Arc::new(StreamLog {
            dir,
            builder,
            writer,
            order: Mutex::new(()),
            state: Mutex::new(LogState {
                records,
                seg_max,
                consumers,
                current_seg: next,
            }),
            durable: watch::Sender::new(last),
            retention_ms: std::sync::atomic::AtomicU64::new(STREAM_RETENTION.as_millis() as u64),
            _lock: lock,
        });
        log.trim();
        Ok(log)
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stream ARN.
    pub fn stream_arn(&self) -> &str {
        self.builder.stream_arn()
    }

    /// Highest durable sequence number.
    pub fn latest(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Records a change; returns its sequence number once it is on disk
    /// (`None` if the change has no image). Call after the table write
    /// succeeded (see docs/events.md: a crash between the two loses the record).
    pub async fn append(&self, change: &ItemChange) -> std::io::Result<Option<u64>> {
        let (seq, ack) = {
            let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
            let Some((seq, record)) = self.builder.record(change) else {
                return Ok(None);
            };
            let ms = crate::queue::now_ms();
            let body = serde_json::to_vec(&Entry {
                seq,
                ms,
                record: record.clone(),
            })
            .map_err(std::io::Error::other)?;
            self.lock()
                .records
                .insert(seq, (Arc::new(record), None, ms));
            (seq, self.writer.append_started(store::frame(&body))?)
        };
        let seg = match ack.await {
            Ok(seg) => seg,
            Err(e) => {
                self.lock().records.remove(&seq);
                return Err(e);
            }
        };
        {
            let mut st = self.lock();
            if let Some(r) = st.records.get_mut(&seq) {
                r.1 = Some(seg);
            }
            let m = st.seg_max.entry(seg).or_default();
            *m = (*m).max(seq);
            st.current_seg = st.current_seg.max(seg);
        }
        self.durable.send_modify(|d| *d = (*d).max(seq));
        if seq % 1024 == 0 {
            self.trim();
        }
        Ok(Some(seq))
    }

    /// Up to `max` durable records after `seq`, in order.
    pub fn read_after(&self, seq: u64, max: usize) -> Vec<(u64, Arc<Value>)> {
        let durable = self.latest();
        if seq >= durable {
            return Vec::new();
        }
        self.lock()
            .records
            .range(seq + 1..=durable)
            .take(max)
            .map(|(s, r)| (*s, Arc::clone(&r.0)))
            .collect()
    }

    /// Waits until a record after `seq` is durable.
    pub async fn wait_after(&self, seq: u64) {
        let mut rx = self.durable.subscribe();
        let _ = rx.wait_for(|d| *d > seq).await;
    }

    fn checkpoint_path(&self, consumer: &str) -> PathBuf {
        self.dir
            .join(format!("checkpoint-{}.json", safe_name(consumer)))
    }

    /// The consumer's checkpoint, if it has one.
    pub fn checkpoint(&self, consumer: &str) -> Option<u64> {
        self.lock().consumers.get(consumer).copied()
    }

    /// Durably stores a consumer's checkpoint, then drops what every consumer has.
    pub fn commit(&self, consumer: &str, seq: u64) -> std::io::Result<()> {
        let path = self.checkpoint_path(consumer);
        write_durably(
            &self.dir,
            &path,
            serde_json::json!({"consumer": consumer, "sequence": seq})
                .to_string()
                .as_bytes(),
        )?;
        self.lock().consumers.insert(consumer.to_string(), seq);
        self.trim();
        Ok(())
    }

    /// Changes the retention (tests; AWS's is fixed at 24 h).
    pub fn set_retention(&self, retention: Duration) {
        self.retention_ms.store(
            retention.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.trim();
    }

    /// Drops records every registered consumer has committed or that are past
    /// the retention, and the segments holding only such records.
    pub fn trim(&self) {
        let retention = self.retention_ms.load(std::sync::atomic::Ordering::Relaxed);
        let cutoff = crate::queue::now_ms().saturating_sub(retention);
        let durable = self.latest();
        let dead = {
            let mut st = self.lock();
            let consumed = st.consumers.values().copied().min().unwrap_or(0);
            let expired = st
                .records
                .iter()
                .take_while(|(s, r)| r.2 < cutoff && **s <= durable)
                .last()
                .map_or(0, |(s, _)| *s);
            let min = consumed.max(expired);
            if min == 0 {
                return;
            }
            st.records = st.records.split_off(&(min + 1));
            let mut dead = Vec::new();
            while let Some((&seg, &max)) = st.seg_max.first_key_value() {
                if max > min || seg >= st.current_seg {
                    break;
                }
                st.seg_max.remove(&seg);
                dead.push(seg);
            }
            dead
        };
        store::remove_segments(&self.dir, &dead);
    }
}

fn read_checkpoints(dir: &Path) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with("checkpoint-")
            || !name.to_string_lossy().ends_with(".json")
        {
            continue;
        }
        if let Ok(v) = std::fs::read(e.path())
            .map_err(|_| ())
            .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|_| ()))
            && let (Some(c), Some(s)) = (v["consumer"].as_str(), v["sequence"].as_u64())
        {
            out.insert(c.to_string(), s);
        }
    }
    out
}

/// One record from a change feed, with its position.
#[derive(Debug, Clone)]
pub struct FeedRecord {
    /// The record's `SequenceNumber` (a cursor: reading after it gives the next records).
    pub sequence: String,
    /// The stream record as AWS sends it.
    pub record: Arc<Value>,
}

/// Reading a change feed failed (a transient error: the poller retries).
#[derive(Debug, thiserror::Error)]
#[error("stream read failed: {0}")]
pub struct FeedError(pub String);

/// A source of stream records for [`StreamPoller`]: ESB's own [`StreamLog`],
/// or the embedded DynamoDB's stream (`DynoxideFeed`, feature `dynoxide`).
#[async_trait::async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// `eventSourceARN`.
    fn stream_arn(&self) -> String;
    /// Up to `max` records after `after` (`None`: from the oldest retained), in order.
    async fn read(&self, after: Option<&str>, max: usize) -> Result<Vec<FeedRecord>, FeedError>;
    /// Returns when records after `after` may be there (may return early).
    async fn wait(&self, after: Option<&str>);
    /// Sequence number of the newest record, `None` if the stream is empty.
    async fn newest(&self) -> Result<Option<String>, FeedError>;
    /// A consumer's durable checkpoint.
    fn load_checkpoint(&self, consumer: &str) -> Option<String>;
    /// Stores a consumer's checkpoint durably.
    fn store_checkpoint(&self, consumer: &str, sequence: &str) -> std::io::Result<()>;
    /// Where records of batches given up are written.
    fn failure_dir(&self) -> PathBuf;
}

#[async_trait::async_trait]
impl ChangeFeed for StreamLog {
    fn stream_arn(&self) -> String {
        self.builder.stream_arn().to_string()
    }
    async fn read(&self, after: Option<&str>, max: usize) -> Result<Vec<FeedRecord>, FeedError> {
        let after = after.and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
        Ok(self
            .read_after(after, max)
            .into_iter()
            .map(|(seq, record)| FeedRecord {
                sequence: crate::dynamodb::format_sequence(seq),
                record,
            })
            .collect())
    }
    async fn wait(&self, after: Option<&str>) {
        let after = after.and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
        self.wait_after(after).await
    }
    async fn newest(&self) -> Result<Option<String>, FeedError> {
        let l = self.latest();
        Ok((l > 0).then(|| crate::dynamodb::format_sequence(l)))
    }
    fn load_checkpoint(&self, consumer: &str) -> Option<String> {
        self.checkpoint(consumer)
            .map(crate::dynamodb::format_sequence)
    }
    fn store_checkpoint(&self, consumer: &str, sequence: &str) -> std::io::Result<()> {
        let seq = sequence
            .parse::<u64>()
            .map_err(|_| std::io::Error::other("not a stream log sequence number"))?;
        self.commit(consumer, seq)
    }
    fn failure_dir(&self) -> PathBuf {
        self.dir.join("failures")
    }
}

/// Checkpoints in a directory, one small JSON file per consumer, written with
/// fsync + rename (for feeds that do not keep their own, such as dynoxide's).
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    /// Uses (creating) `dir`.
    pub fn open(dir: impl AsRef<Path>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.as_ref())?;
        Ok(Self {
            dir: dir.as_ref().to_path_buf(),
        })
    }

    fn path(&self, consumer: &str) -> PathBuf {
        self.dir
            .join(format!("checkpoint-{}.json", safe_name(consumer)))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stored cursor.
    pub fn load(&self, consumer: &str) -> Option<String> {
        let b = std::fs::read(self.path(consumer)).ok()?;
        let v: Value = serde_json::from_slice(&b).ok()?;
        v["sequence"].as_str().map(str::to_string)
    }

    /// Stores the cursor durably.
    pub fn store(&self, consumer: &str, sequence: &str) -> std::io::Result<()> {
        write_durably(
            &self.dir,
            &self.path(consumer),
            serde_json::json!({"consumer": consumer, "sequence": sequence})
                .to_string()
                .as_bytes(),
        )
    }
}

fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write_durably(dir: &Path, path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    store::sync_dir(dir)
}

/// Whether the oldest record of `slice` is past the stream's retention.
fn expired(slice: &[FeedRecord]) -> bool {
    let created = slice
        .first()
        .and_then(|r| r.record["dynamodb"]["ApproximateCreationDateTime"].as_f64());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    created.is_some_and(|c| now - c > STREAM_RETENTION.as_secs_f64())
}

/// Largest batch payload (Lambda's synchronous invocation limit is 6 MB;
/// the `{"Records":[...]}` envelope fits in the margin).
pub const MAX_BATCH_BYTES: usize = 6 * 1024 * 1024 - 1024;

/// `StartingPosition` of an event source mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartingPosition {
    /// From the oldest record still in the log.
    TrimHorizon,
    /// Only records written after the mapping first started.
    Latest,
}

/// A `DynamoDB` event source mapping.
#[derive(Debug, Clone)]
pub struct StreamMapping {
    /// Canonical function name (also the checkpoint's consumer name).
    pub function: String,
    /// `BatchSize` (1..=10000, default 100).
    pub batch_size: usize,
    /// `StartingPosition`.
    pub starting_position: StartingPosition,
    /// `MaximumBatchingWindowInSeconds`: wait up to this long to fill a batch.
    pub batching_window: Duration,
    /// `BisectBatchOnFunctionError`.
    pub bisect_on_error: bool,
    /// `MaximumRetryAttempts`; `None` = -1 (retry until it succeeds).
    pub max_retry_attempts: Option<u32>,
    /// `DestinationConfig.OnFailure` for batches that are given up; `None` logs only.
    pub on_failure: Option<Target>,
    /// Delay before retrying a failed batch (doubles, capped at 1 min).
    pub retry_delay: Duration,
}

impl StreamMapping {
    /// Defaults as AWS: batch 100, no window, no bisect, infinite retries.
    pub fn new(function: &str, starting_position: StartingPosition) -> Self {
        Self {
            function: function.to_string(),
            batch_size: 100,
            starting_position,
            batching_window: Duration::ZERO,
            bisect_on_error: false,
            max_retry_attempts: None,
            on_failure: None,
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// Delivers one table's stream to one function.
pub struct StreamPoller {
    feed: Arc<dyn ChangeFeed>,
    mapping: StreamMapping,
    invoker: Arc<dyn Invoker>,
}

impl StreamPoller {
    /// A poller; call [`StreamPoller::spawn`] to run it.
    pub fn new(
        feed: Arc<dyn ChangeFeed>,
        mapping: StreamMapping,
        invoker: Arc<dyn Invoker>,
    ) -> Self {
        Self {
            feed,
            mapping,
            invoker,
        }
    }

    /// Runs the poller until the task is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run().await })
    }

    async fn read(&self, after: Option<&str>, max: usize) -> Vec<FeedRecord> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.feed.read(after, max).await {
                Ok(r) => return r,
                Err(e) => {
                    tracing::warn!(function = %self.mapping.function, error = %e, "stream read failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn run(self) {
        let consumer = self.mapping.function.clone();
        let mut pos: Option<String> = match self.feed.load_checkpoint(&consumer) {
            Some(p) => Some(p),
            None => {
                let p = match self.mapping.starting_position {
                    StartingPosition::TrimHorizon => None,
                    StartingPosition::Latest => self.feed.newest().await.unwrap_or_else(|e| {
                        tracing::warn!(function = %consumer, error = %e, "stream LATEST position unknown; starting at the oldest record");
                        None
                    }),
                };
                if let Some(p) = &p
                    && let Err(e) = self.feed.store_checkpoint(&consumer, p)
                {
                    tracing::error!(function = %consumer, error = %e, "stream checkpoint not written");
                }
                p
            }
        };
        let batch_size = self.mapping.batch_size.clamp(1, 10_000);
        loop {
            let mut batch = self.read(pos.as_deref(), batch_size).await;
            if batch.is_empty() {
                self.feed.wait(pos.as_deref()).await;
                continue;
            }
            if !self.mapping.batching_window.is_zero() {
                let deadline = tokio::time::Instant::now() + self.mapping.batching_window;
                while batch.len() < batch_size && tokio::time::Instant::now() < deadline {
                    let last = batch.last().map(|r| r.sequence.clone());
                    let _ =
                        tokio::time::timeout_at(deadline, self.feed.wait(last.as_deref())).await;
                    let more = self.read(last.as_deref(), batch_size - batch.len()).await;
                    batch.extend(more);
                }
            }
            // Lambda's 6 MB synchronous payload limit: the rest is read again
            // for the next batch (at least one record always goes).
            let mut bytes = 0usize;
            let keep = batch
                .iter()
                .take_while(|r| {
                    bytes += serde_json::to_vec(r.record.as_ref()).map_or(0, |v| v.len() + 1);
                    bytes <= MAX_BATCH_BYTES
                })
                .count()
                .max(1);
            batch.truncate(keep);
            self.deliver(&batch).await;
            let Some(last) = batch.last().map(|r| r.sequence.clone()) else {
                continue;
            };
            if let Err(e) = self.feed.store_checkpoint(&consumer, &last) {
                tracing::error!(function = %consumer, error = %e, "stream checkpoint not written; batch may be delivered again");
            }
            pos = Some(last);
        }
    }

    /// Delivers `batch` (bisecting on error if configured) until it succeeds
    /// or is given up.
    async fn deliver(&self, batch: &[FeedRecord]) {
        // Slices still to deliver; the next one is at the end.
        let mut todo: Vec<&[FeedRecord]> = vec![batch];
        while let Some(slice) = todo.pop() {
            let mut attempts = 0u32;
            let mut delay = self.mapping.retry_delay;
            loop {
                let records: Vec<&Value> = slice.iter().map(|r| r.record.as_ref()).collect();
                let payload = Bytes::from(
                    serde_json::to_vec(&serde_json::json!({ "Records": records }))
                        .unwrap_or_default(),
                );
                let request_id = uuid::Uuid::new_v4().to_string();
                let outcome = self
                    .invoker
                    .invoke(
                        &self.mapping.function,
                        payload,
                        &request_id,
                        &ChainContext::root(),
                    )
                    .await;
                match outcome {
                    InvokeOutcome::Success { .. } => break,
                    InvokeOutcome::Throttled | InvokeOutcome::ServiceError { .. } => {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(60));
                    }
                    InvokeOutcome::FunctionError { .. } | InvokeOutcome::Rejected { .. } => {
                        if self.mapping.bisect_on_error && slice.len() > 1 {
                            // Splitting does not count as a retry (AWS).
                            let (a, b) = slice.split_at(slice.len() / 2);
                            todo.push(b);
                            todo.push(a);
                            break;
                        }
                        attempts += 1;
                        // With -1 (no limit) AWS retries until the record
                        // expires from the stream (24 hours).
                        if self
                            .mapping
                            .max_retry_attempts
                            .is_some_and(|m| attempts > m)
                            || expired(slice)
                        {
                            self.give_up(slice, attempts);
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(60));
                    }
                }
            }
        }
    }

    fn give_up(&self, slice: &[FeedRecord], attempts: u32) {
        let first = slice.first().map(|r| r.sequence.clone());
        let last = slice.last().map(|r| r.sequence.clone());
        tracing::warn!(function = %self.mapping.function, first_sequence = ?first, last_sequence = ?last,
            attempts, "stream batch given up after MaximumRetryAttempts");
        if let Some(Target::StoredRecord) = &self.mapping.on_failure {
            let rec = serde_json::json!({
                "requestContext": {
                    "requestId": uuid::Uuid::new_v4().to_string(),
                    "functionArn": self.mapping.function,
                    "condition": "RetryAttemptsExhausted",
                    "approximateInvokeCount": attempts,
                },
                "DDBStreamBatchInfo": {
                    "shardId": "shardId-00000000000000000000-00000001",
                    "startSequenceNumber": first,
                    "endSequenceNumber": last,
                    "batchSize": slice.len(),
                    "streamArn": self.feed.stream_arn(),
                },
            });
            let dir = self.feed.failure_dir();
            let path = dir.join(format!(
                "{}-{}.json",
                safe_name(&self.mapping.function),
                first.as_deref().unwrap_or("0")
            ));
            if let Err(e) = std::fs::create_dir_all(&dir)
                .and_then(|_| write_durably(&dir, &path, rec.to_string().as_bytes()))
            {
                tracing::error!(error = %e, "stream failure record not stored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dynamodb::StreamViewType;
    use serde_json::json;

    struct Rec {
        batches: Mutex<Vec<Vec<String>>>,
        /// Fail any batch containing this key value.
        poison: Option<String>,
    }

    #[async_trait::async_trait]
    impl Invoker for Rec {
        async fn invoke(&self, _f: &str, p: Bytes, _r: &str, _c: &ChainContext) -> InvokeOutcome {
            let v: Value = serde_json::from_slice(&p).expect("json");
            let keys: Vec<String> = v["Records"]
                .as_array()
                .expect("records")
                .iter()
                .map(|r| {
                    r["dynamodb"]["Keys"]["pk"]["S"]
                        .as_str()
                        .expect("key")
                        .to_string()
                })
                .collect();
            let bad = self.poison.as_ref().is_some_and(|p| keys.contains(p));
            self.batches.lock().expect("lock").push(keys);
            if bad {
                InvokeOutcome::FunctionError {
                    response: Bytes::new(),
                }
            } else {
                InvokeOutcome::Success {
                    response: Bytes::new(),
                }
            }
        }
    }

    fn builder() -> StreamRecordBuilder {
        StreamRecordBuilder::new(
            "T",
            StreamViewType::NewAndOldImages,
            "123456789012",
            "us-east-1",
            "2026-01-01T00:00:00.000",
        )
    }

    fn put(k: &str) -> ItemChange {
        ItemChange {
            keys: json!({"pk": {"S": k}}),
            old: None,
            new: Some(json!({"pk": {"S": k}, "v": {"N": "1"}})),
        }
    }

    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn flat(rec: &Rec) -> Vec<String> {
        rec.batches
            .lock()
            .expect("lock")
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    #[tokio::test]
    async fn batches_in_order_and_restart_does_not_repeat_committed_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = StreamLog::open(dir.path(), builder(), 1 << 20).expect("open");
        for i in 0..10 {
            log.append(&put(&format!("k{i:02}")))
                .await
                .expect("io")
                .expect("seq");
        }
        let rec = Arc::new(Rec {
            batches: Mutex::new(Vec::new()),
            poison: None,
        });
        let mut m = StreamMapping::new("fn", StartingPosition::TrimHorizon);
        m.batch_size = 4;
        let h = StreamPoller::new(log.clone(), m.clone(), rec.clone()).spawn();
        eventually("10 delivered", || flat(&rec).len() == 10).await;
        let batches = rec.batches.lock().expect("lock").clone();
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let want: Vec<String> = (0..10).map(|i| format!("k{i:02}")).collect();
        assert_eq!(flat(&rec), want);
        eventually("committed", || log.checkpoint("fn") == Some(10)).await;
        h.abort();
        drop(log);

        // Restart: new writes continue the numbering; nothing old comes back.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let log = loop {
            match StreamLog::open(dir.path(), builder(), 1 << 20) {
                Ok(l) => break l,
                Err(OpenError::Locked(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        assert_eq!(log.append(&put("k10")).await.expect("io"), Some(11));
        let rec2 = Arc::new(Rec {
            batches: Mutex::new(Vec::new()),
            poison: None,
        });
        StreamPoller::new(log.clone(), m, rec2.clone()).spawn();
        eventually("new record", || flat(&rec2).len() == 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(flat(&rec2), ["k10"]);
    }

    #[tokio::test]
    async fn batches_are_cut_at_lambdas_payload_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = StreamLog::open(dir.path(), builder(), 64 << 20).expect("open");
        let big = |k: &str, mb: f64| ItemChange {
            keys: json!({"pk": {"S": k}}),
            old: None,
            new: Some(json!({"pk": {"S": k}, "v": {"S": "x".repeat((mb * 1048576.0) as usize)}})),
        };
        for (k, mb) in [
            ("a", 2.5),
            ("b", 2.5),
            ("c", 2.5),
            ("huge", 7.0),
            ("d", 0.001),
        ] {
            log.append(&big(k, mb)).await.expect("io");
        }
        let rec = Arc::new(Rec {
            batches: Mutex::new(Vec::new()),
            poison: None,
        });
        StreamPoller::new(
            log.clone(),
            StreamMapping::new("fn", StartingPosition::TrimHorizon),
            rec.clone(),
        )
        .spawn();
        eventually("all delivered", || flat(&rec).len() == 5).await;
        let batches = rec.batches.lock().expect("lock").clone();
        assert_eq!(
            batches,
            [vec!["a", "b"], vec!["c"], vec!["huge"], vec!["d"]],
            "batches stay under 6 MB; a bigger record goes alone"
        );
    }

    #[tokio::test]
    async fn latest_skips_older_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = StreamLog::open(dir.path(), builder(), 1 << 20).expect("open");
        log.append(&put("old")).await.expect("io");
        let rec = Arc::new(Rec {
            batches: Mutex::new(Vec::new()),
            poison: None,
        });
        StreamPoller::new(
            log.clone(),
            StreamMapping::new("fn", StartingPosition::Latest),
            rec.clone(),
        )
        .spawn();
        eventually("checkpoint", || log.checkpoint("fn").is_some()).await;
        log.append(&put("new")).await.expect("io");
        eventually("new", || flat(&rec).len() == 1).await;
        assert_eq!(flat(&rec), ["new"]);
    }

    #[tokio::test]
    async fn bisect_isolates_the_bad_record_and_gives_it_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = StreamLog::open(dir.path(), builder(), 1 << 20).expect("open");
        for k in ["a", "b", "bad", "d"] {
            log.append(&put(k)).await.expect("io");
        }
        let rec = Arc::new(Rec {
            batches: Mutex::new(Vec::new()),
            poison: Some("bad".into()),
        });
        let mut m = StreamMapping::new("fn", StartingPosition::TrimHorizon);
        m.bisect_on_error = true;
        m.max_retry_attempts = Some(1);
        m.retry_delay = Duration::from_millis(5);
        m.on_failure = Some(Target::StoredRecord);
        StreamPoller::new(log.clone(), m, rec.clone()).spawn();
        eventually("committed", || log.checkpoint("fn") == Some(4)).await;
        let batches = rec.batches.lock().expect("lock").clone();
        // [a b bad d] fails -> [a b] ok, [bad d] fails -> [bad] x2 (1 retry) given up, [d] ok.
        assert_eq!(
            batches,
            vec![
                vec!["a", "b", "bad", "d"],
                vec!["a", "b"],
                vec!["bad", "d"],
                vec!["bad"],
                vec!["bad"],
                vec!["d"],
            ]
            .into_iter()
            .map(|b| b.into_iter().map(String::from).collect::<Vec<_>>())
            .collect::<Vec<_>>()
        );
        let failures: Vec<_> = std::fs::read_dir(dir.path().join("failures"))
            .expect("dir")
            .collect();
        assert_eq!(failures.len(), 1);
    }

    #[tokio::test]
    async fn records_past_retention_are_dropped_without_consumers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = StreamLog::open(dir.path(), builder(), 512).expect("open");
        for i in 0..20 {
            log.append(&put(&format!("k{i}"))).await.expect("io");
        }
        assert_eq!(log.read_after(0, 100).len(), 20);
        tokio::time::sleep(Duration::from_millis(20)).await;
        log.set_retention(Duration::from_millis(10));
        assert!(
            log.read_after(0, 100).is_empty(),
            "expired records are gone"
        );
        let segs = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
            .count();
        assert!(segs <= 2, "{segs} segments left");
        // A new consumer from TRIM_HORIZON only sees what is retained.
        log.set_retention(STREAM_RETENTION);
        log.append(&put("fresh")).await.expect("io");
        let rec = Arc::new(Rec {
            batches: Mutex::new(Vec::new()),
            poison: None,
        });
        StreamPoller::new(
            log.clone(),
            StreamMapping::new("fn", StartingPosition::TrimHorizon),
            rec.clone(),
        )
        .spawn();
        eventually("fresh", || flat(&rec).len() == 1).await;
        assert_eq!(flat(&rec), ["fresh"]);
    }

    #[tokio::test]
    async fn consumed_segments_are_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = StreamLog::open(dir.path(), builder(), 1024).expect("open");
        let rec = Arc::new(Rec {
            batches: Mutex::new(Vec::new()),
            poison: None,
        });
        StreamPoller::new(
            log.clone(),
            StreamMapping::new("fn", StartingPosition::TrimHorizon),
            rec.clone(),
        )
        .spawn();
        for i in 0..100 {
            log.append(&put(&format!("k{i}"))).await.expect("io");
        }
        eventually("all", || log.checkpoint("fn") == Some(100)).await;
        log.append(&put("last")).await.expect("io");
        eventually("last", || log.checkpoint("fn") == Some(101)).await;
        let segs = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
            .count();
        assert!(segs <= 3, "{segs} segments left");
    }
}
