//! The queue's write-ahead log: segment files of CRC-checked records, written by
//! one thread that commits whole batches with a single `fdatasync`.
//!
//! Hand-written rather than a database crate because the job is narrow (append,
//! replay once at start, delete whole files) and group commit across concurrent
//! callers is the point: one fsync for everything that arrived while the
//! previous one ran. A record is `u32 length | u32 crc32 | body` (little
//! endian). Replay stops reading a segment at the first short or corrupt frame
//! (the torn tail a kill -9 leaves); writing always resumes in a fresh segment,
//! so a torn tail is never followed by good records in the same file.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use bytes::Bytes;
use uuid::Uuid;

use crate::queue::EventMeta;

/// One event as stored.
#[derive(Debug, Clone)]
pub(crate) struct StoredEvent {
    pub id: Uuid,
    pub function: String,
    pub payload: Bytes,
    pub enqueued_ms: u64,
    /// Function-error attempts already made.
    pub attempts: u32,
    pub meta: EventMeta,
}

pub(crate) enum Record {
    Enqueued(StoredEvent),
    /// `attempts` function-error attempts made; next not before `not_before_ms`.
    Retry {
        id: Uuid,
        attempts: u32,
        not_before_ms: u64,
    },
    Done {
        id: Uuid,
    },
}

const KIND_ENQUEUED: u8 = 1;
const KIND_RETRY: u8 = 2;
const KIND_DONE: u8 = 3;
/// Frames larger than this are corrupt (payload limit is far below it).
const MAX_FRAME: usize = 64 * 1024 * 1024;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Encodes a record as a complete frame.
pub(crate) fn encode(rec: &Record) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    match rec {
        Record::Enqueued(ev) => {
            body.push(KIND_ENQUEUED);
            body.extend_from_slice(ev.id.as_bytes());
            body.extend_from_slice(&ev.enqueued_ms.to_le_bytes());
            body.extend_from_slice(&ev.attempts.to_le_bytes());
            put_bytes(&mut body, ev.function.as_bytes());
            let meta = serde_json::to_vec(&ev.meta).unwrap_or_else(|_| b"{}".to_vec());
            put_bytes(&mut body, &meta);
            put_bytes(&mut body, &ev.payload);
        }
        Record::Retry {
            id,
            attempts,
            not_before_ms,
        } => {
            body.push(KIND_RETRY);
            body.extend_from_slice(id.as_bytes());
            body.extend_from_slice(&attempts.to_le_bytes());
            body.extend_from_slice(&not_before_ms.to_le_bytes());
        }
        Record::Done { id } => {
            body.push(KIND_DONE);
            body.extend_from_slice(id.as_bytes());
        }
    }
    frame(&body)
}

/// Wraps a body in a `length | crc32 | body` frame.
pub(crate) fn frame(body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(body.len() + 8);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    frame.extend_from_slice(body);
    frame
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
    fn uuid(&mut self) -> Option<Uuid> {
        self.take(16).and_then(|b| Uuid::from_slice(b).ok())
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn decode_body(body: &[u8]) -> Option<Record> {
    let mut c = Cursor(body);
    let kind = c.take(1)?[0];
    let id = c.uuid()?;
    match kind {
        KIND_ENQUEUED => {
            let enqueued_ms = c.u64()?;
            let attempts = c.u32()?;
            let function = String::from_utf8(c.bytes()?.to_vec()).ok()?;
            let meta = serde_json::from_slice(c.bytes()?).ok()?;
            let payload = Bytes::copy_from_slice(c.bytes()?);
            Some(Record::Enqueued(StoredEvent {
                id,
                function,
                payload,
                enqueued_ms,
                attempts,
                meta,
            }))
        }
        KIND_RETRY => Some(Record::Retry {
            id,
            attempts: c.u32()?,
            not_before_ms: c.u64()?,
        }),
        KIND_DONE => Some(Record::Done { id }),
        _ => None,
    }
}

/// Reads every intact record of one segment file.
fn read_segment(path: &Path) -> io::Result<Vec<Record>> {
    let mut out = Vec::new();
    for body in read_frames(path)? {
        match decode_body(&body) {
            Some(r) => out.push(r),
            None => tracing::warn!(segment = %path.display(), "undecodable record skipped"),
        }
    }
    Ok(out)
}

/// Reads the bodies of every intact frame of one segment file.
pub(crate) fn read_frames(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut out = Vec::new();
    let mut c = Cursor(&data);
    loop {
        let rest = c.0.len();
        if rest == 0 {
            break;
        }
        let (Some(len), Some(crc)) = (c.u32(), c.u32()) else {
            tracing::warn!(segment = %path.display(), "torn record at the end of an event queue segment ignored");
            break;
        };
        let len = len as usize;
        let body = match c.take(len) {
            Some(b) if len <= MAX_FRAME && crc32fast::hash(b) == crc => b,
            _ => {
                tracing::warn!(segment = %path.display(), "torn or corrupt record in an event queue segment: rest of the segment ignored");
                break;
            }
        };
        out.push(body.to_vec());
    }
    Ok(out)
}

pub(crate) fn segment_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("seg-{seg:016}.log"))
}

pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut segs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            segs.push(n);
        }
    }
    segs.sort_unstable();
    Ok(segs)
}

/// What replay found: live events with their segment, and the next segment number.
pub(crate) struct Replayed {
    pub events: Vec<(StoredEvent, u64, u64)>, // event, segment, not_before_ms
    pub next_segment: u64,
    pub segments: Vec<u64>,
}

/// Replays every segment in `dir` in order.
pub(crate) fn replay(dir: &Path) -> io::Result<Replayed> {
    let segments = list_segments(dir)?;
    let mut live: HashMap<Uuid, (StoredEvent, u64, u64)> = HashMap::new();
    let mut order: Vec<Uuid> = Vec::new();
    for &seg in &segments {
        for rec in read_segment(&segment_path(dir, seg))? {
            match rec {
                Record::Enqueued(ev) => {
                    let id = ev.id;
                    if live.insert(id, (ev, seg, 0)).is_none() {
                        order.push(id);
                    }
                }
                Record::Retry {
                    id,
                    attempts,
                    not_before_ms,
                } => {
                    if let Some(e) = live.get_mut(&id) {
                        e.0.attempts = attempts;
                        e.2 = not_before_ms;
                    }
                }
                Record::Done { id } => {
                    live.remove(&id);
                }
            }
        }
    }
    let events = order
        .into_iter()
        .filter_map(|id| live.remove(&id))
        .collect();
    Ok(Replayed {
        events,
        next_segment: segments.last().map_or(1, |s| s + 1),
        segments,
    })
}

/// Takes the directory's `LOCK` file (an advisory `flock`, released when the
/// returned file is dropped or the process dies). `Ok(None)`: another open
/// queue or process holds it.
pub(crate) fn lock_dir(dir: &Path) -> io::Result<Option<File>> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

type Reply = tokio::sync::oneshot::Sender<io::Result<u64>>;

pub(crate) enum WriteReq {
    Append { frame: Vec<u8>, reply: Reply },
}

/// Handle to the writer thread.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<WriteReq>,
}

impl Writer {
    /// Starts the writer thread on a fresh segment `first_segment`.
    pub fn start(dir: PathBuf, first_segment: u64, segment_bytes: u64) -> io::Result<Writer> {
        let file = open_segment(&dir, first_segment)?;
        let (tx, rx) = mpsc::channel::<WriteReq>();
        std::thread::Builder::new()
            .name("esb-events-wal".into())
            .spawn(move || writer_loop(dir, file, first_segment, segment_bytes, rx))?;
        Ok(Writer { tx })
    }

    /// Appends a frame; resolves with its segment once it is on disk.
    pub async fn append(&self, frame: Vec<u8>) -> io::Result<u64> {
        self.append_started(frame)?.await
    }

    /// Hands a frame to the writer now (so frames from one caller keep their
    /// order) and returns a future for its durability.
    pub fn append_started(
        &self,
        frame: Vec<u8>,
    ) -> io::Result<impl std::future::Future<Output = io::Result<u64>> + use<>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(WriteReq::Append { frame, reply })
            .map_err(|_| io::Error::other("event queue writer stopped"))?;
        Ok(async move {
            rx.await
                .map_err(|_| io::Error::other("event queue writer stopped"))?
        })
    }
}

fn open_segment(dir: &Path, seg: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, seg))?;
    sync_dir(dir)?;
    Ok(f)
}

fn writer_loop(
    dir: PathBuf,
    mut file: File,
    mut seg: u64,
    segment_bytes: u64,
    rx: mpsc::Receiver<WriteReq>,
) {
    let mut size = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut replies: Vec<Reply> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(WriteReq::Append { frame, reply }) = next.take() {
            buf.extend_from_slice(&frame);
            replies.push(reply);
            if replies.len() >= 8192 || buf.len() >= 16 << 20 {
                break;
            }
            next = rx.try_recv().ok();
        }
        let mut result = Ok(());
        if size >= segment_bytes {
            // Close the full segment durably, then continue in a new one.
            result = file
                .sync_data()
                .and_then(|_| open_segment(&dir, seg + 1))
                .map(|f| {
                    file = f;
                    seg += 1;
                    size = 0;
                });
        }
        let result = result
            .and_then(|_| file.write_all(&buf))
            .and_then(|_| file.sync_data());
        size += buf.len() as u64;
        buf.clear();
        match result {
            Ok(()) => {
                for r in replies.drain(..) {
                    let _ = r.send(Ok(seg));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "event queue write failed");
                for r in replies.drain(..) {
                    let _ = r.send(Err(io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
    }
    let _ = file.sync_data();
}

/// Removes segment files that hold nothing live.
pub(crate) fn remove_segments(dir: &Path, segs: &[u64]) {
    for &s in segs {
        if let Err(e) = fs::remove_file(segment_path(dir, s)) {
            tracing::warn!(segment = s, error = %e, "could not remove delivered event queue segment");
        }
    }
}

/// Counts live events per segment (for prefix deletion).
pub(crate) type SegmentCounts = BTreeMap<u64, usize>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u8) -> StoredEvent {
        StoredEvent {
            id: Uuid::from_bytes([n; 16]),
            function: format!("f{n}"),
            payload: Bytes::from(vec![n; n as usize]),
            enqueued_ms: 1000 + n as u64,
            attempts: 0,
            meta: EventMeta::default(),
        }
    }

    #[test]
    fn replay_applies_retry_and_done_and_ignores_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut data = Vec::new();
        data.extend(encode(&Record::Enqueued(ev(1))));
        data.extend(encode(&Record::Enqueued(ev(2))));
        data.extend(encode(&Record::Enqueued(ev(3))));
        data.extend(encode(&Record::Retry {
            id: ev(2).id,
            attempts: 1,
            not_before_ms: 77,
        }));
        data.extend(encode(&Record::Done { id: ev(1).id }));
        let torn = encode(&Record::Enqueued(ev(4)));
        data.extend(&torn[..torn.len() - 3]);
        fs::write(segment_path(dir.path(), 5), &data).expect("write");
        let r = replay(dir.path()).expect("replay");
        assert_eq!(r.next_segment, 6);
        let ids: Vec<_> = r.events.iter().map(|e| e.0.function.clone()).collect();
        assert_eq!(ids, vec!["f2", "f3"]);
        assert_eq!(r.events[0].0.attempts, 1);
        assert_eq!(r.events[0].2, 77);
        assert_eq!(r.events[1].0.payload.as_ref(), &[3u8, 3, 3]);
    }

    #[test]
    fn corrupt_crc_stops_the_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = encode(&Record::Enqueued(ev(1)));
        let last = a.len() - 1;
        a[last] ^= 0xff;
        a.extend(encode(&Record::Enqueued(ev(2))));
        fs::write(segment_path(dir.path(), 1), &a).expect("write");
        let r = replay(dir.path()).expect("replay");
        assert!(r.events.is_empty());
    }
}
