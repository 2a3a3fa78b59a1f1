//! The function's output on its way to ESB's log store: lines queue here
//! and leave on the `GET /logs` stream the pool follows
//! ([`LogBuffer::subscribe`]), not through the container's output pipe.
//!
//! Why not standard error: the engine carries a container's output
//! through its shim and daemon into its own log files, and the agent read
//! it back through the engine API. At c8 that path (three lines per
//! invocation) cost a quarter of the host's CPU in `dockerd` and the shims
//! and put 200-3,000 ms stalls into warm invocations (docs/benchmarks.md,
//! "Session 6"); the lines also never reached ESB's log store. The
//! supervisor's own fatal errors still go to standard error.
//!
//! Lines wait in a bounded queue while nobody follows (a spare container's
//! init output waits for the pool that takes it); past the bound they are
//! dropped and counted, and the stream says how many. One follower at a
//! time: a new `GET /logs` takes the stream over and the older one ends
//! (the pool reconnects after a restart or a broken connection). A
//! function can open its own supervisor's stream from inside the
//! container, taking its own output away from the pool (as it could by
//! not printing); it cannot reach another container's.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use esb_runtimes_core::LogSink;
use http_body_util::channel::Channel;

use crate::wire::push_log_record;

/// Most lines waiting for a follower; more are dropped and counted.
const QUEUE_LINES: usize = 8192;
/// Most bytes waiting for a follower.
const QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// A follower hears at least this often (an empty record), so a
/// connection that died without a word is noticed by its reader.
pub const HEARTBEAT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Queue {
    pending: String,
    lines: usize,
    dropped: u64,
    /// Bumped by every new follower; an older one stops when it sees it.
    follower: u64,
}

/// The queue of output lines and its follower.
#[derive(Default)]
pub struct LogBuffer {
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for LogBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogBuffer").finish_non_exhaustive()
    }
}

impl LogBuffer {
    /// An empty buffer.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one line (dropped and counted past the bound).
    pub fn push(&self, request_id: Option<&str>, line: &str) {
        {
            let mut queue = self.lock();
            if queue.lines >= QUEUE_LINES || queue.pending.len() + line.len() > QUEUE_BYTES {
                queue.dropped += 1;
                return;
            }
            queue.lines += 1;
            push_log_record(&mut queue.pending, request_id, line);
        }
        self.wake.notify_waiters();
    }

    /// What is queued, with a note for dropped lines; `None` when nothing
    /// is, or when follower `id` was replaced (`Err`).
    fn take(&self, id: u64) -> Result<Option<Bytes>, ()> {
        let mut queue = self.lock();
        if queue.follower != id {
            return Err(());
        }
        if queue.dropped > 0 {
            let note = format!(
                "[esb: {} log line(s) dropped: output faster than it could be read]",
                queue.dropped
            );
            queue.dropped = 0;
            push_log_record(&mut queue.pending, None, &note);
        }
        if queue.pending.is_empty() {
            return Ok(None);
        }
        queue.lines = 0;
        Ok(Some(Bytes::from(std::mem::take(&mut queue.pending))))
    }

    /// Writes what is queued to standard error, line by line without the
    /// request ids: when init failed, the container is removed before any
    /// follower comes, and its output (an import error's traceback) must
    /// not go with it; the engine's log path carries it to the agent's
    /// output, as before the stream existed.
    pub fn spill_to_stderr(&self) {
        use std::io::Write;
        let pending = {
            let mut queue = self.lock();
            queue.lines = 0;
            std::mem::take(&mut queue.pending)
        };
        let mut out = String::with_capacity(pending.len());
        for record in pending.lines() {
            if let Some((_, line)) = crate::wire::parse_log_record(record) {
                out.push_str(line);
                out.push('\n');
            }
        }
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
    }

    /// A new follower: the body of a `GET /logs` answer that carries the
    /// queued lines and every later one until another follower takes
    /// over or the reader goes away. Lines taken for a reader that went
    /// away mid-send are lost with its connection.
    pub fn subscribe(self: &Arc<Self>) -> Channel<Bytes, Infallible> {
        let id = {
            let mut queue = self.lock();
            queue.follower += 1;
            queue.follower
        };
        // The older follower wakes up and sees it was replaced.
        self.wake.notify_waiters();
        let (mut tx, body) = Channel::new(2);
        let buffer = self.clone();
        tokio::spawn(async move {
            loop {
                let notified = buffer.wake.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let chunk = match buffer.take(id) {
                    Err(()) => return,
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => {
                        if tokio::time::timeout(HEARTBEAT, notified).await.is_ok() {
                            continue;
                        }
                        Bytes::from_static(b"\n")
                    }
                };
                if tx.send_data(chunk).await.is_err() {
                    return;
                }
            }
        });
        body
    }
}

/// The supervisor's [`LogSink`]: every line into the [`LogBuffer`].
#[derive(Debug, Clone)]
pub struct ContainerLogSink(pub Arc<LogBuffer>);

impl LogSink for ContainerLogSink {
    fn line(&self, _function: &str, _worker_id: &str, request_id: Option<&str>, line: &str) {
        self.0.push(request_id, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse_log_record;
    use http_body_util::BodyExt;

    async fn next_chunk(body: &mut Channel<Bytes, Infallible>) -> Option<String> {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a frame in time")?;
        let data = frame.ok()?.into_data().ok()?;
        Some(String::from_utf8(data.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn lines_queued_before_the_follower_arrive_with_their_request_ids() {
        let buffer = LogBuffer::new();
        let sink = ContainerLogSink(buffer.clone());
        sink.line("f", "w", None, "init line");
        sink.line("f", "w", Some("r1"), "START RequestId: r1");
        let mut body = buffer.subscribe();
        let chunk = next_chunk(&mut body).await.unwrap();
        let records: Vec<_> = chunk.lines().filter_map(parse_log_record).collect();
        assert_eq!(
            records,
            vec![(None, "init line"), (Some("r1"), "START RequestId: r1")]
        );
        sink.line("f", "w", Some("r2"), "later");
        assert_eq!(next_chunk(&mut body).await.unwrap(), "r2\tlater\n");
    }

    #[tokio::test]
    async fn a_new_follower_takes_the_stream_over() {
        let buffer = LogBuffer::new();
        let mut first = buffer.subscribe();
        let mut second = buffer.subscribe();
        // The first stream ends; the second gets what follows.
        assert_eq!(next_chunk(&mut first).await, None);
        buffer.push(None, "x");
        assert_eq!(next_chunk(&mut second).await.unwrap(), "\tx\n");
    }

    #[tokio::test]
    async fn a_flood_without_follower_is_bounded_and_counted() {
        let buffer = LogBuffer::new();
        for i in 0..QUEUE_LINES + 10 {
            buffer.push(None, &format!("line {i}"));
        }
        let mut body = buffer.subscribe();
        let chunk = next_chunk(&mut body).await.unwrap();
        assert_eq!(chunk.lines().count(), QUEUE_LINES + 1);
        assert!(
            chunk.ends_with(
                "\t[esb: 10 log line(s) dropped: output faster than it could be read]\n"
            )
        );
        // Room again once read.
        buffer.push(None, "after");
        assert_eq!(next_chunk(&mut body).await.unwrap(), "\tafter\n");
    }
}
