//! Per-function log store: every line a worker prints (and the platform's
//! START/END/REPORT lines) lands in `<data_dir>/logs/<function>.jsonl`, one
//! JSON record per line, and is echoed to the console. `esb logs` reads and
//! follows those files.
//!
//! Owns the on-disk format ([`LogRecord`]), the writer thread and reading
//! back. Must not block the request path: workers hand lines to a bounded
//! channel with `try_send`; when the writer falls behind, lines are counted
//! as dropped and a marker record says how many, instead of stalling
//! invocations.
//!
//! With a VictoriaLogs URL the writer thread also spools every record for
//! the forwarder (`forward.rs`), which posts them in batches from its own
//! thread; ESB's own log lines ([`LogStore::esb_line`]) are forwarded
//! without being filed.
#![forbid(unsafe_code)]

pub mod cloudwatch;
pub mod forward;
mod queue;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};

use queue::{Rx, Tx};

use esb_runtimes_core::LogSink;
pub use forward::{ForwardConfig, ForwardStats};
use serde::{Deserialize, Serialize};

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;
/// How long the writer waits for more lines after the queue ran empty
/// before it blocks (at most this much later on disk; see `Writer::run`).
const COALESCE: std::time::Duration = std::time::Duration::from_millis(2);
/// A function's log file is rotated to `<function>.jsonl.1` past this size.
const ROTATE_BYTES: u64 = 16 * 1024 * 1024;

/// One stored log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// RFC 3339 time the line was captured (UTC, milliseconds).
    pub ts: String,
    /// Function name.
    pub function: String,
    /// Worker id (log stream).
    pub worker: String,
    /// Request id of the invocation running when the line was printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The line, without its newline.
    pub line: String,
}

/// Errors of the log store.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log directory or a log file could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Whether captured lines are also printed to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// `[function] line` on stderr (what `esb up` shows).
    Stderr,
    /// Files only.
    Off,
}

/// The log store: a [`LogSink`] that files lines per function.
pub struct LogStore {
    tx: Tx<Item>,
    dropped: Arc<AtomicU64>,
    dir: PathBuf,
    echo: Echo,
    forwarding: Option<Arc<ForwardStats>>,
    stop: Arc<AtomicBool>,
}

/// Where [`EsbLogWriter`] sends ESB's own lines, once a forwarding store
/// is open.
static ESB_SINK: std::sync::OnceLock<Tx<Item>> = std::sync::OnceLock::new();

/// A `tracing` writer: standard error, plus forwarding of each line as one
/// of ESB's own (`source=esb`) when a forwarding store is open. Never
/// blocks on the forwarder (a full queue drops the line from forwarding).
#[derive(Debug, Default, Clone, Copy)]
pub struct EsbLogWriter;

/// Makes an [`EsbLogWriter`] (for `tracing_subscriber::fmt().with_writer`).
pub fn esb_log_writer() -> EsbLogWriter {
    EsbLogWriter
}

impl Write for EsbLogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().lock().write_all(buf)?;
        if let Some(tx) = ESB_SINK.get() {
            for line in String::from_utf8_lossy(buf).lines() {
                let (level, message) = split_level(&strip_ansi(line));
                if message.is_empty() {
                    continue;
                }
                let _ = tx.try_send(Item::Esb(LogRecord {
                    ts: now(),
                    function: "esb".into(),
                    worker: "esb".into(),
                    request_id: None,
                    line: format!("[{level}] {message}"),
                }));
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `2026-…Z  INFO message` as `tracing`'s formatter prints it.
fn split_level(line: &str) -> (&'static str, String) {
    let mut parts = line.split_whitespace();
    let _time = parts.next();
    let level = match parts.next() {
        Some("TRACE") => "TRACE",
        Some("DEBUG") => "DEBUG",
        Some("WARN") => "WARN",
        Some("ERROR") => "ERROR",
        Some("INFO") => "INFO",
        _ => return ("INFO", line.trim().to_string()),
    };
    (level, parts.collect::<Vec<_>>().join(" "))
}

/// Removes terminal colour sequences (`ESC [ … letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// What the writer thread receives.
enum Item {
    /// A function's line: filed, and forwarded when forwarding is on.
    Function(LogRecord),
    /// One of ESB's own lines: forwarded only.
    Esb(LogRecord),
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("dir", &self.dir).finish()
    }
}

impl LogStore {
    /// Opens (creating) `dir` and starts the writer thread.
    pub fn open(dir: &Path, echo: Echo) -> Result<Self, LogError> {
        Self::open_forwarding(dir, echo, None)
    }

    /// [`LogStore::open`], also forwarding to VictoriaLogs when `forward`
    /// is set (spool in `<dir>/forward/`).
    pub fn open_forwarding(
        dir: &Path,
        echo: Echo,
        forward: Option<ForwardConfig>,
    ) -> Result<Self, LogError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LogError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (tx, rx) = queue::bounded(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut forwarding = None;
        let mut spool = None;
        if let Some(config) = forward {
            let spool_dir = dir.join("forward");
            let stats = Arc::new(ForwardStats::default());
            spool = Some(
                forward::Spool::open(&spool_dir, config.buffer_bytes, stats.clone())
                    .map_err(io(&spool_dir))?,
            );
            forward::start(spool_dir.clone(), &config, stats.clone(), stop.clone())
                .map_err(io(&spool_dir))?;
            forwarding = Some(stats);
            // ESB's own log lines (`esb_log_writer`) go to the first
            // forwarding store.
            let _ = ESB_SINK.set(tx.clone());
        }
        let writer = Writer {
            dir: dir.to_path_buf(),
            files: HashMap::new(),
            dropped: dropped.clone(),
            spool,
            echo: (echo == Echo::Stderr).then(Vec::new),
        };
        std::thread::Builder::new()
            .name("esb-logs".into())
            .spawn(move || writer.run(rx))
            .map_err(io(dir))?;
        Ok(Self {
            tx,
            dropped,
            dir: dir.to_path_buf(),
            echo,
            forwarding,
            stop,
        })
    }

    /// The forwarder's counters, when forwarding is on.
    pub fn forward_stats(&self) -> Option<&Arc<ForwardStats>> {
        self.forwarding.as_ref()
    }

    /// One of ESB's own log lines (`level`: `INFO`, `WARN`, `ERROR`…),
    /// forwarded with `source=esb` when forwarding is on; never blocks.
    pub fn esb_line(&self, level: &str, line: &str) {
        if self.forwarding.is_none() {
            return;
        }
        let record = LogRecord {
            ts: now(),
            function: "esb".into(),
            worker: "esb".into(),
            request_id: None,
            line: format!("[{level}] {line}"),
        };
        if self.tx.try_send(Item::Esb(record)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped so far because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl LogSink for LogStore {
    fn line(&self, function: &str, worker_id: &str, request_id: Option<&str>, line: &str) {
        let record = LogRecord {
            ts: now(),
            function: function.to_string(),
            worker: worker_id.to_string(),
            request_id: request_id.map(str::to_string),
            line: line.to_string(),
        };
        match self.tx.try_send(Item::Function(record)) {
            // The writer echoes it to stderr with the lines around it.
            Ok(()) => {}
            Err(_) => {
                if self.echo == Echo::Stderr {
                    let mut text = Vec::new();
                    echo_line(&mut text, function, line);
                    let _ = std::io::stderr().lock().write_all(&text);
                }
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `[function] line` and a newline, as `esb up` shows function output.
fn echo_line(out: &mut Vec<u8>, function: &str, line: &str) {
    out.push(b'[');
    out.extend_from_slice(function.as_bytes());
    out.extend_from_slice(b"] ");
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
}

/// The capture time of a line, RFC 3339 in UTC with milliseconds. Each
/// thread keeps the text of its last millisecond: at thousands of lines a
/// second most lines share one, and formatting it was about 2.5 % of
/// esb's CPU at c8 (docs/benchmarks.md, "Session 6").
fn now() -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> = const {
            std::cell::RefCell::new((i64::MIN, String::new()))
        };
    }
    let time = chrono::Utc::now();
    let millis = time.timestamp_millis();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != millis {
            last.1 = format_ts(time);
            last.0 = millis;
        }
        last.1.clone()
    })
}

fn format_ts(time: chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// File name for a function's log (function names are `[A-Za-z0-9-_]`, but
/// anything else is replaced so a name can never leave the directory).
pub fn file_name(function: &str) -> String {
    let safe: String = function
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.jsonl")
}

struct Writer {
    dir: PathBuf,
    files: HashMap<String, (File, u64)>,
    dropped: Arc<AtomicU64>,
    spool: Option<forward::Spool>,
    /// With [`Echo::Stderr`]: echo lines not yet written to stderr. They
    /// go out in one `write(2)` when the queue runs empty (off the
    /// invocation's path; before, each line cost the invocation a
    /// `write(2)`: docs/benchmarks.md).
    echo: Option<Vec<u8>>,
}

impl Writer {
    fn flush_echo(&mut self) {
        if let Some(buf) = self.echo.as_mut()
            && !buf.is_empty()
        {
            let _ = std::io::stderr().lock().write_all(buf);
            buf.clear();
            if buf.capacity() > 1 << 20 {
                buf.shrink_to(64 * 1024);
            }
        }
    }

    fn run(mut self, rx: Rx<Item>) {
        let mut reported = 0;
        // hotpath: after a line, the writer naps for [`COALESCE`] once the
        // queue is empty instead of blocking at once, so under load the
        // next lines queue up and are taken in one go: the sender (an
        // invocation's START/END/REPORT) then never has to wake this thread
        // with a futex call, and this thread is not switched in per line
        // (docs/benchmarks.md). With nothing new after the nap it blocks.
        let mut coalescing = false;
        loop {
            if coalescing {
                coalescing = false;
                match rx.try_recv() {
                    Ok(item) => {
                        coalescing = true;
                        self.take(item, &mut reported);
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {
                        self.flush_echo();
                        std::thread::sleep(COALESCE);
                        continue;
                    }
                }
            }
            // With a spool, wake up now and then to seal the active segment.
            let item = match &self.spool {
                Some(_) => match rx.recv_timeout(std::time::Duration::from_millis(250)) {
                    Ok(item) => Some(item),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(item) => Some(item),
                    Err(_) => break,
                },
            };
            let Some(item) = item else {
                if let Some(spool) = self.spool.as_mut() {
                    spool.tick();
                }
                continue;
            };
            coalescing = true;
            self.take(item, &mut reported);
        }
        self.flush_echo();
    }

    /// Files one queued item; `reported`: dropped lines already marked.
    fn take(&mut self, item: Item, reported: &mut u64) {
        let record = match item {
            Item::Function(record) => record,
            Item::Esb(record) => {
                if let Some(spool) = self.spool.as_mut() {
                    spool.append(&record, "esb");
                    spool.tick();
                }
                return;
            }
        };
        if let Some(buf) = self.echo.as_mut() {
            echo_line(buf, &record.function, &record.line);
            if buf.len() > 64 * 1024 {
                self.flush_echo();
            }
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > *reported {
            let marker = LogRecord {
                ts: now(),
                function: record.function.clone(),
                worker: "esb".into(),
                request_id: None,
                line: format!(
                    "[esb] {} log lines dropped (writer fell behind or disk full)",
                    dropped - *reported
                ),
            };
            self.write(&marker);
            *reported = dropped;
        }
        self.write(&record);
        if let Some(spool) = self.spool.as_mut() {
            spool.append(&record, "function");
            spool.tick();
        }
    }

    fn write(&mut self, record: &LogRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let name = file_name(&record.function);
        if !self.files.contains_key(&name) {
            let path = self.dir.join(&name);
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    self.files.insert(name.clone(), (f, len));
                }
                Err(e) => {
                    eprintln!("esb: cannot write log file {}: {e}", path.display());
                    return;
                }
            }
        }
        let Some((file, len)) = self.files.get_mut(&name) else {
            return;
        };
        if file.write_all(&line).is_ok() {
            *len += line.len() as u64;
        } else {
            // A full disk (robustness S2): the line is dropped and counted
            // (the next marker says how many), a partly written line cut
            // off so the file keeps whole lines, and the file reopened
            // next time; invocations never wait on this.
            let _ = file.set_len(*len);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.files.remove(&name);
            return;
        }
        if *len > ROTATE_BYTES {
            let path = self.dir.join(&name);
            let _ = std::fs::rename(&path, self.dir.join(format!("{name}.1")));
            self.files.remove(&name);
        }
    }
}

/// Reads the stored records of `function` (all functions when `None`),
/// oldest first, at most the last `limit`.
pub fn read(dir: &Path, function: Option<&str>, limit: usize) -> Result<Vec<LogRecord>, LogError> {
    let mut records = Vec::new();
    for path in files(dir, function)? {
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(LogError::Io { path, source }),
        };
        for line in BufReader::new(f).lines().map_while(Result::ok) {
            if let Ok(r) = serde_json::from_str::<LogRecord>(&line) {
                records.push(r);
            }
        }
    }
    records.sort_by(|a, b| a.ts.cmp(&b.ts));
    let skip = records.len().saturating_sub(limit);
    Ok(records.split_off(skip))
}

fn files(dir: &Path, function: Option<&str>) -> Result<Vec<PathBuf>, LogError> {
    if let Some(f) = function {
        return Ok(vec![dir.join(file_name(f))]);
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LogError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    out.sort();
    Ok(out)
}

/// Follows the files of `function` (or all), calling `emit` for each new
/// record until `emit` returns false. Polls every `interval`.
pub fn follow(
    dir: &Path,
    function: Option<&str>,
    interval: std::time::Duration,
    mut emit: impl FnMut(&LogRecord) -> bool,
) -> Result<(), LogError> {
    let mut offsets: HashMap<PathBuf, u64> = HashMap::new();
    // Start at the current end: `follow` shows what comes next.
    for path in files(dir, function)? {
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        offsets.insert(path, len);
    }
    loop {
        for path in files(dir, function)? {
            let offset = offsets.entry(path.clone()).or_insert(0);
            let Ok(mut f) = File::open(&path) else {
                continue;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < *offset {
                *offset = 0; // rotated
            }
            if len == *offset {
                continue;
            }
            if f.seek(SeekFrom::Start(*offset)).is_err() {
                continue;
            }
            let mut reader = BufReader::new(f);
            let mut line = String::new();
            while let Ok(n) = reader.read_line(&mut line) {
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                *offset += n as u64;
                if let Ok(r) = serde_json::from_str::<LogRecord>(line.trim_end())
                    && !emit(&r)
                {
                    return Ok(());
                }
                line.clear();
            }
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_times_keep_their_format_and_follow_the_clock() {
        let first = now();
        let parsed = chrono::DateTime::parse_from_rfc3339(&first).unwrap();
        assert_eq!(format_ts(parsed.with_timezone(&chrono::Utc)), first);
        assert_eq!(first.len(), "2026-11-22T05:01:02.345Z".len());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let later = loop {
            let t = now();
            if t != first {
                break t;
            }
            assert!(std::time::Instant::now() < deadline, "time stood still");
        };
        assert!(later > first, "{later} after {first}");
    }

    fn wait_for(dir: &Path, function: &str, n: usize) -> Vec<LogRecord> {
        for _ in 0..200 {
            let r = read(dir, Some(function), 1000).unwrap();
            if r.len() >= n {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        read(dir, Some(function), 1000).unwrap()
    }

    #[test]
    fn lines_are_filed_per_function_with_request_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), Echo::Off).unwrap();
        store.line("hello", "w1", Some("req-1"), "START RequestId: req-1");
        store.line("hello", "w1", Some("req-1"), "hi there");
        store.line("other", "w2", None, "init line");
        let hello = wait_for(dir.path(), "hello", 2);
        assert_eq!(hello.len(), 2);
        assert_eq!(hello[1].line, "hi there");
        assert_eq!(hello[1].request_id.as_deref(), Some("req-1"));
        let other = wait_for(dir.path(), "other", 1);
        assert_eq!(other[0].request_id, None);
        assert_eq!(read(dir.path(), None, 10).unwrap().len(), 3);
        // `limit` keeps the newest.
        let last = read(dir.path(), Some("hello"), 1).unwrap();
        assert_eq!(last[0].line, "hi there");
    }

    #[test]
    fn s2_a_full_disk_drops_and_counts_lines_and_other_functions_go_on() {
        let dir = tempfile::tempdir().unwrap();
        // Every write to this function's file fails with ENOSPC.
        std::os::unix::fs::symlink("/dev/full", dir.path().join(file_name("full"))).unwrap();
        let store = LogStore::open(dir.path(), Echo::Off).unwrap();
        for i in 0..3 {
            store.line("full", "w1", None, &format!("line {i}"));
        }
        store.line("fine", "w2", None, "still written");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // The other function's line is written (after, possibly, the
        // marker that counts the dropped ones).
        while !read(dir.path(), Some("fine"), 1000)
            .unwrap()
            .iter()
            .any(|r| r.line == "still written")
        {
            assert!(std::time::Instant::now() < deadline, "the other line");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        while store.dropped() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "dropped {}",
                store.dropped()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn function_names_cannot_escape_the_directory() {
        assert_eq!(file_name("../../etc/passwd"), "______etc_passwd.jsonl");
        assert_eq!(file_name("my-fn_1"), "my-fn_1.jsonl");
    }

    #[test]
    fn follow_sees_new_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), Echo::Off).unwrap();
        store.line("f", "w", None, "old");
        wait_for(dir.path(), "f", 1);
        let path = dir.path().to_path_buf();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            follow(
                &path,
                Some("f"),
                std::time::Duration::from_millis(10),
                |r| {
                    seen.push(r.line.clone());
                    seen.len() < 2
                },
            )
            .unwrap();
            seen
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        store.line("f", "w", None, "new 1");
        store.line("f", "w", None, "new 2");
        let seen = handle.join().unwrap();
        assert_eq!(seen, vec!["new 1".to_string(), "new 2".to_string()]);
    }
}
