//! Forwarding to VictoriaLogs through its JSON-lines ingestion API
//! (`POST {url}/insert/jsonline?_stream_fields=source,function&_msg_field=_msg&_time_field=_time`,
//! one JSON object a line; docs/logs.md).
//!
//! Nothing here runs on the request path. The store's writer thread (which
//! already files every line) appends each record, converted, to a spool in
//! `<logs>/forward/`: `active.jsonl` is sealed into a numbered segment
//! after a second or 256 KiB, and a forwarder thread posts sealed segments
//! oldest first, one request each, deleting a segment only once the server
//! answered 2xx. While the server is away segments pile up on disk; past
//! `buffer_bytes` the oldest are deleted and counted as dropped. A restart
//! picks up the segments left over (and seals a half-written `active`).
//!
//! The HTTP client is `reqwest`'s blocking one, on its own thread, so the
//! store works outside a tokio runtime too (`esb invoke`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::LogRecord;

/// Where and how much to buffer.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// VictoriaLogs base URL (`http://host:9428`).
    pub url: String,
    /// Bytes of sealed segments kept while the server is away.
    pub buffer_bytes: u64,
}

/// Seal the active segment past this size…
const SEGMENT_BYTES: u64 = 256 * 1024;
/// …or this long after its first line.
const SEAL_AFTER: Duration = Duration::from_secs(1);
const ACTIVE: &str = "active.jsonl";

/// Counters of the forwarder, shared with the store.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Lines the server accepted.
    pub sent: AtomicU64,
    /// Lines deleted unsent because the buffer was full.
    pub dropped: AtomicU64,
    /// Failed posts (the segment is kept and retried).
    pub failures: AtomicU64,
}

/// The record as VictoriaLogs receives it.
#[derive(Serialize)]
struct Outgoing<'a> {
    _time: &'a str,
    _msg: &'a str,
    source: &'static str,
    function: &'a str,
    worker: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    level: &'a str,
    /// `START`, `END`, `REPORT`, `TIMEOUT` or `log`.
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    billed_duration_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_size_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_memory_used_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    init_duration_ms: Option<f64>,
}

/// One line in VictoriaLogs' JSON-lines form (with its newline);
/// `source` is `function` or `esb`.
pub fn to_jsonline(r: &LogRecord, source: &'static str) -> Vec<u8> {
    let line = r.line.as_str();
    let (kind, level) = classify(line);
    let mut out = Outgoing {
        _time: &r.ts,
        _msg: line,
        source,
        function: &r.function,
        worker: &r.worker,
        request_id: r.request_id.as_deref(),
        level,
        kind,
        duration_ms: None,
        billed_duration_ms: None,
        memory_size_mb: None,
        max_memory_used_mb: None,
        init_duration_ms: None,
    };
    if kind == "REPORT" {
        for part in line.split('\t').skip(1) {
            let Some((key, value)) = part.split_once(": ") else {
                continue;
            };
            let number = value.split_whitespace().next().and_then(|v| v.parse().ok());
            match key.trim() {
                "Duration" => out.duration_ms = number,
                "Billed Duration" => out.billed_duration_ms = number,
                "Memory Size" => out.memory_size_mb = number,
                "Max Memory Used" => out.max_memory_used_mb = number,
                "Init Duration" => out.init_duration_ms = number,
                _ => {}
            }
        }
    }
    let mut bytes = serde_json::to_vec(&out).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The platform line type and the level (`[ERROR] …` as the Lambda
/// runtimes print it; `INFO` otherwise).
fn classify(line: &str) -> (&'static str, &'static str) {
    let kind = if line.starts_with("START RequestId:") {
        "START"
    } else if line.starts_with("END RequestId:") {
        "END"
    } else if line.starts_with("REPORT RequestId:") {
        "REPORT"
    } else if line.contains("Task timed out after") {
        return ("TIMEOUT", "ERROR");
    } else {
        "log"
    };
    for level in [
        "TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL", "FATAL",
    ] {
        if let Some(rest) = line.strip_prefix('[')
            && let Some(rest) = rest.strip_prefix(level)
            && rest.starts_with(']')
        {
            return (
                kind,
                match level {
                    "WARNING" => "WARN",
                    "CRITICAL" | "FATAL" => "ERROR",
                    l => l,
                },
            );
        }
    }
    (kind, "INFO")
}

/// The writer thread's side: the active segment and sealing.
pub(crate) struct Spool {
    dir: PathBuf,
    cap: u64,
    active: Option<File>,
    active_bytes: u64,
    active_lines: u64,
    first_write: Option<Instant>,
    next_seq: u64,
    stats: Arc<ForwardStats>,
}

impl Spool {
    /// Opens `dir`, sealing a leftover active segment.
    pub(crate) fn open(dir: &Path, cap: u64, stats: Arc<ForwardStats>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let next_seq = segments(dir)
            .last()
            .and_then(|(seq, _)| seq.checked_add(1))
            .unwrap_or(1);
        let mut spool = Self {
            dir: dir.to_path_buf(),
            cap,
            active: None,
            active_bytes: 0,
            active_lines: 0,
            first_write: None,
            next_seq,
            stats,
        };
        let leftover = dir.join(ACTIVE);
        if let Ok(meta) = std::fs::metadata(&leftover) {
            // A kill can leave half a line: keep whole lines only.
            let mut bytes = std::fs::read(&leftover)?;
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            bytes.truncate(keep);
            std::fs::write(&leftover, &bytes)?;
            spool.active_bytes = meta.len().min(keep as u64);
            spool.active_lines = bytes.iter().filter(|b| **b == b'\n').count() as u64;
            spool.seal();
        }
        Ok(spool)
    }

    /// Appends one record (one `write(2)`).
    pub(crate) fn append(&mut self, record: &LogRecord, source: &'static str) {
        if self.active.is_none() {
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(ACTIVE))
            {
                Ok(f) => self.active = Some(f),
                Err(e) => {
                    eprintln!("esb: log forwarding spool: {e}");
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        let line = to_jsonline(record, source);
        if let Some(f) = self.active.as_mut()
            && f.write_all(&line).is_ok()
        {
            self.active_bytes += line.len() as u64;
            self.active_lines += 1;
            self.first_write.get_or_insert_with(Instant::now);
        }
        if self.active_bytes >= SEGMENT_BYTES {
            self.seal();
        }
    }

    /// Seals the active segment when it is old enough.
    pub(crate) fn tick(&mut self) {
        if self.first_write.is_some_and(|t| t.elapsed() >= SEAL_AFTER) {
            self.seal();
        }
    }

    fn seal(&mut self) {
        self.active = None;
        self.first_write = None;
        if self.active_lines == 0 {
            let _ = std::fs::remove_file(self.dir.join(ACTIVE));
            self.active_bytes = 0;
            return;
        }
        let to = self.dir.join(format!("{:020}.jsonl", self.next_seq));
        if let Err(e) = std::fs::rename(self.dir.join(ACTIVE), &to) {
            eprintln!("esb: log forwarding spool: {e}");
        }
        self.next_seq += 1;
        self.active_bytes = 0;
        self.active_lines = 0;
        self.enforce_cap();
    }

    /// Deletes the oldest segments past the cap, counting their lines.
    fn enforce_cap(&mut self) {
        let segs = segments(&self.dir);
        let mut total: u64 = segs.iter().map(|(_, p)| file_len(p)).sum();
        for (_, path) in segs {
            if total <= self.cap {
                break;
            }
            let len = file_len(&path);
            let lines = std::fs::read(&path)
                .map(|b| b.iter().filter(|c| **c == b'\n').count() as u64)
                .unwrap_or(0);
            if std::fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
                self.stats.dropped.fetch_add(lines, Ordering::Relaxed);
                eprintln!(
                    "esb: log forwarding buffer full: {lines} lines dropped ({})",
                    path.display()
                );
            }
        }
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Sealed segments, oldest first.
fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let seq = name.to_str()?.strip_suffix(".jsonl")?.parse().ok()?;
            Some((seq, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Starts the thread that posts sealed segments to `config.url`.
pub(crate) fn start(
    dir: PathBuf,
    config: &ForwardConfig,
    stats: Arc<ForwardStats>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let url = format!(
        "{}/insert/jsonline?_stream_fields=source,function&_msg_field=_msg&_time_field=_time",
        config.url.trim_end_matches('/')
    );
    std::thread::Builder::new()
        .name("esb-logs-forward".into())
        .spawn(move || forward_loop(&dir, &url, &stats, &stop))?;
    Ok(())
}

fn forward_loop(dir: &Path, url: &str, stats: &ForwardStats, stop: &AtomicBool) {
    let client = match reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("esb: log forwarding disabled: {e}");
            return;
        }
    };
    let mut backoff = Duration::from_millis(250);
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        let segs = segments(dir);
        if segs.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        for (_, path) in segs {
            let mut body = Vec::new();
            match File::open(&path).and_then(|mut f| f.read_to_end(&mut body)) {
                Ok(_) => {}
                // Deleted by the cap meanwhile.
                Err(_) => continue,
            }
            let lines = body.iter().filter(|b| **b == b'\n').count() as u64;
            let sent = client
                .post(url)
                .header("content-type", "application/stream+json")
                .body(body)
                .send();
            match sent {
                Ok(r) if r.status().is_success() => {
                    let _ = std::fs::remove_file(&path);
                    stats.sent.fetch_add(lines, Ordering::Relaxed);
                    if failing {
                        eprintln!("esb: log forwarding to {url} works again");
                        failing = false;
                    }
                    backoff = Duration::from_millis(250);
                }
                other => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        let why = match other {
                            Ok(r) => format!("status {}", r.status()),
                            Err(e) => e.to_string(),
                        };
                        eprintln!("esb: log forwarding to {url} failed ({why}); buffering on disk");
                        failing = true;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: &str) -> LogRecord {
        LogRecord {
            ts: "2026-11-30T08:00:00.000Z".into(),
            function: "hello".into(),
            worker: "hello-1".into(),
            request_id: Some("req-1".into()),
            line: line.into(),
        }
    }

    fn parse(bytes: &[u8]) -> serde_json::Value {
        assert_eq!(bytes.last(), Some(&b'\n'));
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn report_lines_carry_their_numbers_as_fields() {
        let v = parse(&to_jsonline(
            &record(
                "REPORT RequestId: req-1\tDuration: 13.87 ms\tBilled Duration: 14 ms\tMemory Size: 128 MB\tMax Memory Used: 17 MB\tInit Duration: 385.43 ms\t",
            ),
            "function",
        ));
        assert_eq!(v["type"], "REPORT");
        assert_eq!(v["duration_ms"], 13.87);
        assert_eq!(v["billed_duration_ms"], 14.0);
        assert_eq!(v["memory_size_mb"], 128.0);
        assert_eq!(v["max_memory_used_mb"], 17.0);
        assert_eq!(v["init_duration_ms"], 385.43);
        assert_eq!(v["_time"], "2026-11-30T08:00:00.000Z");
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["source"], "function");
    }

    #[test]
    fn levels_and_platform_lines_are_recognised() {
        let v = parse(&to_jsonline(
            &record("[ERROR] OrderRejected: no"),
            "function",
        ));
        assert_eq!(
            (v["level"].as_str(), v["type"].as_str()),
            (Some("ERROR"), Some("log"))
        );
        let v = parse(&to_jsonline(&record("[WARNING]\tcareful"), "function"));
        assert_eq!(v["level"], "WARN");
        let v = parse(&to_jsonline(
            &record("START RequestId: req-1 Version: $LATEST"),
            "function",
        ));
        assert_eq!(
            (v["level"].as_str(), v["type"].as_str()),
            (Some("INFO"), Some("START"))
        );
        let v = parse(&to_jsonline(
            &record("2026 req-1 Task timed out after 1.00 seconds"),
            "function",
        ));
        assert_eq!(
            (v["level"].as_str(), v["type"].as_str()),
            (Some("ERROR"), Some("TIMEOUT"))
        );
        // A hostile line cannot break the framing.
        let v = parse(&to_jsonline(&record("a\nb\"}{"), "esb"));
        assert_eq!(v["_msg"], "a\nb\"}{");
        assert_eq!(v["source"], "esb");
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_segments_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(ForwardStats::default());
        let mut spool = Spool::open(dir.path(), 4 * SEGMENT_BYTES, stats.clone()).unwrap();
        let big = "x".repeat(1000);
        for _ in 0..2000 {
            spool.append(&record(&big), "function");
        }
        spool.seal();
        let segs = segments(dir.path());
        let total: u64 = segs.iter().map(|(_, p)| file_len(p)).sum();
        assert!(total <= 4 * SEGMENT_BYTES, "{total}");
        let dropped = stats.dropped.load(Ordering::Relaxed);
        let kept: u64 = segs
            .iter()
            .map(|(_, p)| {
                std::fs::read(p)
                    .unwrap()
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count() as u64
            })
            .sum();
        assert!(dropped > 0);
        assert_eq!(dropped + kept, 2000);
        // The newest lines are the ones kept: sequence numbers go on.
        assert!(segs.first().unwrap().0 > 1);
    }

    #[test]
    fn a_half_written_active_segment_is_sealed_whole_on_restart() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(ForwardStats::default());
        let mut bytes = to_jsonline(&record("one"), "function");
        bytes.extend_from_slice(b"{\"_msg\":\"half");
        std::fs::write(dir.path().join(ACTIVE), &bytes).unwrap();
        let _spool = Spool::open(dir.path(), 1 << 20, stats).unwrap();
        let segs = segments(dir.path());
        assert_eq!(segs.len(), 1);
        let text = std::fs::read_to_string(&segs[0].1).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.ends_with('\n'));
        assert!(!dir.path().join(ACTIVE).exists());
    }
}
