//! Capture of the runtime's stdout/stderr: split into lines, tagged with
//! the running invocation's request id, forwarded to the [`LogSink`] and
//! kept for the invocation's log tail.
//!
//! The pipes are read by one task each, and drained synchronously
//! (`try_read`) by the invocation before it reports, under the same mutex,
//! so a line printed just before `/response` is never lost or attributed
//! to the next invocation.
//!
//! Bounds (contract W4): a line longer than [`MAX_LINE`] keeps its first
//! 256 KiB and ends with ` …[truncated N bytes]`, never split into pieces;
//! memory per pipe stays at one such line. An invocation (and the init
//! phase) may send at most [`LOG_BUDGET`] bytes of output to the sink (the
//! log store and the console echo); past it lines are dropped and counted,
//! and one note says how many before the END line. The pipes are always
//! drained, so a runtime that logs without end never blocks on a full
//! pipe.

use std::io::ErrorKind;
use std::sync::Arc;

use esb_runtimes_core::LogSink;
use parking_lot::{Mutex, MutexGuard};
use tokio::net::unix::pipe::Receiver;

/// Bytes of log kept for `X-Amz-Log-Type: Tail`.
pub(crate) const TAIL_BYTES: usize = 4096;
/// Longest line kept (the contract's 256 KiB); the rest of a longer line
/// is dropped and the line ends with a `…[truncated N bytes]` marker.
pub(crate) const MAX_LINE: usize = 256 * 1024;
/// Bytes of runtime output per invocation (or init phase) passed on to the
/// sink; more is dropped and counted in one note.
pub(crate) const LOG_BUDGET: usize = 4 * 1024 * 1024;
/// The tail buffer is cut back to [`TAIL_BYTES`] when it grows past this.
const TAIL_SLACK: usize = 64 * 1024;

pub(crate) struct LogCapture {
    function: String,
    worker_id: String,
    sink: Arc<dyn LogSink>,
    pipes: [Option<Receiver>; 2],
    state: Mutex<CaptureState>,
}

struct CaptureState {
    partial: [Vec<u8>; 2],
    /// Bytes of the current partial line dropped past [`MAX_LINE`].
    cut: [usize; 2],
    closed: [bool; 2],
    /// Runtime output bytes passed on in this invocation (or init).
    used: usize,
    /// Lines and bytes dropped over [`LOG_BUDGET`] in this invocation.
    dropped_lines: usize,
    dropped_bytes: usize,
    request_id: Option<Arc<str>>,
    tail: String,
}

impl LogCapture {
    pub(crate) fn new(
        function: String,
        worker_id: String,
        sink: Arc<dyn LogSink>,
        stdout: Option<Receiver>,
        stderr: Option<Receiver>,
    ) -> Self {
        let closed = [stdout.is_none(), stderr.is_none()];
        Self {
            function,
            worker_id,
            sink,
            pipes: [stdout, stderr],
            state: Mutex::new(CaptureState {
                partial: [Vec::new(), Vec::new()],
                cut: [0, 0],
                closed,
                used: 0,
                dropped_lines: 0,
                dropped_bytes: 0,
                request_id: None,
                tail: String::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CaptureState> {
        // parking_lot does not poison: a panic in a sink does not take log
        // capture down with it.
        self.state.lock()
    }

    /// Reads pipe `index` until it would block; returns false at EOF.
    pub(crate) async fn pump(self: Arc<Self>, index: usize) {
        let Some(pipe) = self.pipes[index].as_ref() else {
            return;
        };
        loop {
            if pipe.readable().await.is_err() {
                break;
            }
            let mut state = self.lock();
            if !self.drain_pipe(&mut state, index) {
                break;
            }
        }
    }

    /// Drains both pipes without blocking.
    pub(crate) fn drain(&self) {
        let mut state = self.lock();
        for index in 0..2 {
            self.drain_pipe(&mut state, index);
        }
    }

    fn drain_pipe(&self, state: &mut CaptureState, index: usize) -> bool {
        if state.closed[index] {
            return false;
        }
        let Some(pipe) = self.pipes[index].as_ref() else {
            return false;
        };
        let mut buf = [0u8; 16 * 1024];
        loop {
            match pipe.try_read(&mut buf) {
                Ok(0) => {
                    state.closed[index] = true;
                    let rest = std::mem::take(&mut state.partial[index]);
                    let cut = std::mem::take(&mut state.cut[index]);
                    if !rest.is_empty() || cut > 0 {
                        self.emit(state, &rest, cut);
                    }
                    return false;
                }
                Ok(n) => self.feed(state, index, &buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    state.closed[index] = true;
                    return false;
                }
            }
        }
    }

    fn feed(&self, state: &mut CaptureState, index: usize, mut data: &[u8]) {
        loop {
            let newline = data.iter().position(|b| *b == b'\n');
            let chunk = newline.map_or(data, |pos| &data[..pos]);
            if let Some(pos) = newline
                && state.partial[index].is_empty()
                && state.cut[index] == 0
                && chunk.len() <= MAX_LINE
            {
                // A whole line in one read: no copy.
                self.emit(state, chunk, 0);
                data = &data[pos + 1..];
                continue;
            }
            let room = MAX_LINE.saturating_sub(state.partial[index].len());
            let keep = room.min(chunk.len());
            state.partial[index].extend_from_slice(&chunk[..keep]);
            state.cut[index] += chunk.len() - keep;
            let Some(pos) = newline else {
                return;
            };
            let line = std::mem::take(&mut state.partial[index]);
            let cut = std::mem::take(&mut state.cut[index]);
            self.emit(state, &line, cut);
            data = &data[pos + 1..];
        }
    }

    /// One line of runtime output; `cut` bytes of it were dropped.
    fn emit(&self, state: &mut CaptureState, line: &[u8], cut: usize) {
        let mut line = line;
        let mut cut = cut;
        if cut > 0 {
            // Do not leave half a UTF-8 character before the marker.
            if let Err(e) = std::str::from_utf8(line)
                && e.error_len().is_none()
            {
                cut += line.len() - e.valid_up_to();
                line = &line[..e.valid_up_to()];
            }
        } else {
            line = line.strip_suffix(b"\r").unwrap_or(line);
        }
        let size = line.len() + cut + 1;
        if state.used + size > LOG_BUDGET {
            state.dropped_lines += 1;
            state.dropped_bytes += size;
            return;
        }
        state.used += size;
        let text = String::from_utf8_lossy(line);
        if cut > 0 {
            self.push(state, &format!("{text} …[truncated {cut} bytes]"));
        } else {
            self.push(state, &text);
        }
    }

    /// The note about lines dropped over the budget, once, then a fresh
    /// budget.
    fn settle_budget(&self, state: &mut CaptureState) {
        if state.dropped_lines > 0 {
            let note = format!(
                "ESB: {} log lines ({} bytes) dropped: over the log budget of {LOG_BUDGET} bytes per invocation",
                state.dropped_lines, state.dropped_bytes
            );
            self.push(state, &note);
        }
        state.used = 0;
        state.dropped_lines = 0;
        state.dropped_bytes = 0;
    }

    fn push(&self, state: &mut CaptureState, line: &str) {
        self.sink.line(
            &self.function,
            &self.worker_id,
            state.request_id.as_deref(),
            line,
        );
        if state.request_id.is_some() {
            state.tail.push_str(line);
            state.tail.push('\n');
            if state.tail.len() > TAIL_SLACK {
                let cut = tail_start(&state.tail, TAIL_BYTES);
                state.tail.drain(..cut);
            }
        }
    }

    /// A platform line (START, END, REPORT, timeouts) in order with the
    /// runtime's output.
    pub(crate) fn platform_line(&self, line: &str) {
        let mut state = self.lock();
        self.push(&mut state, line);
    }

    /// Starts attributing output to `request_id` and writes its START line.
    pub(crate) fn begin(&self, request_id: Arc<str>, start_line: &str) {
        let mut state = self.lock();
        // Output of the init phase (or between invocations) over budget.
        self.settle_budget(&mut state);
        state.tail.clear();
        state.request_id = Some(request_id);
        self.push(&mut state, start_line);
    }

    /// Drains the pipes, writes the closing lines and returns the last
    /// 4 KB of the invocation's log.
    pub(crate) fn finish(&self, closing: &[&str]) -> String {
        let mut state = self.lock();
        for index in 0..2 {
            self.drain_pipe(&mut state, index);
        }
        self.settle_budget(&mut state);
        for line in closing {
            self.push(&mut state, line);
        }
        state.request_id = None;
        let mut tail = std::mem::take(&mut state.tail);
        let cut = tail_start(&tail, TAIL_BYTES);
        tail.drain(..cut);
        tail
    }
}

/// Byte index where the last `max` bytes of `text` start, moved forward to
/// a character boundary.
fn tail_start(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return 0;
    }
    let mut cut = text.len() - max;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl LogSink for Lines {
        fn line(&self, _: &str, _: &str, _: Option<&str>, line: &str) {
            self.0.lock().push(line.to_string());
        }
    }

    fn capture() -> (Arc<Lines>, LogCapture) {
        let lines = Arc::new(Lines::default());
        let capture = LogCapture::new("f".into(), "w".into(), lines.clone(), None, None);
        (lines, capture)
    }

    fn feed(capture: &LogCapture, data: &[u8]) {
        let mut state = capture.lock();
        // In pieces, as pipe reads come.
        for piece in data.chunks(16 * 1024) {
            capture.feed(&mut state, 0, piece);
        }
    }

    #[test]
    fn w4_long_line_is_cut_once_with_a_marker() {
        let (lines, capture) = capture();
        let mut data = vec![b'x'; MAX_LINE + 1000];
        data.extend_from_slice(b"\nnext\n");
        feed(&capture, &data);
        let lines = lines.0.lock();
        assert_eq!(lines.len(), 2, "one cut line, not pieces");
        assert!(lines[0].ends_with(" …[truncated 1000 bytes]"));
        assert_eq!(lines[0].len(), MAX_LINE + " …[truncated 1000 bytes]".len());
        assert_eq!(lines[1], "next");
    }

    #[test]
    fn w4_cut_never_splits_a_character() {
        let (lines, capture) = capture();
        let mut data = vec![b'x'; MAX_LINE - 1];
        data.extend_from_slice("éé\n".as_bytes());
        feed(&capture, &data);
        let line = &lines.0.lock()[0];
        assert!(
            line.ends_with("x …[truncated 4 bytes]"),
            "{}",
            &line[line.len() - 40..]
        );
    }

    #[test]
    fn w4_budget_drops_lines_and_says_how_many() {
        let (lines, capture) = capture();
        capture.begin(Arc::from("req"), "START");
        let line = vec![b'y'; 1023];
        let mut data = Vec::new();
        for _ in 0..(LOG_BUDGET / 1024 + 100) {
            data.extend_from_slice(&line);
            data.push(b'\n');
        }
        feed(&capture, &data);
        let tail = capture.finish(&["END"]);
        let lines = lines.0.lock();
        assert_eq!(lines.len(), 1 + LOG_BUDGET / 1024 + 1 + 1);
        let note = &lines[lines.len() - 2];
        assert_eq!(
            note,
            &format!(
                "ESB: 100 log lines (102400 bytes) dropped: over the log budget of {LOG_BUDGET} bytes per invocation"
            )
        );
        assert!(tail.ends_with("per invocation\nEND\n"));
        drop(lines);
        // A new invocation has a new budget.
        capture.begin(Arc::from("req2"), "START");
        feed(&capture, b"again\n");
        assert_eq!(capture.finish(&[]), "START\nagain\n");
    }

    #[test]
    fn tail_keeps_last_bytes_on_char_boundary() {
        let text = "ééé";
        let cut = tail_start(text, 3);
        assert_eq!(&text[cut..], "é");
        assert_eq!(tail_start("abc", 10), 0);
    }
}
