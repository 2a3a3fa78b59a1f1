//! Capture of the runtime's stdout/stderr: split into lines, tagged with
//! the running invocation's request id, forwarded to the [`LogSink`] and
//! kept for the invocation's log tail.
//!
//! The pipes are read by one task each, and drained synchronously
//! (`try_read`) by the invocation before it reports, under the same mutex,
//! so a line printed just before `/response` is never lost or attributed
//! to the next invocation.

use std::io::ErrorKind;
use std::sync::Arc;

use esb_runtimes_core::LogSink;
use parking_lot::{Mutex, MutexGuard};
use tokio::net::unix::pipe::Receiver;

/// Bytes of log kept for `X-Amz-Log-Type: Tail`.
pub(crate) const TAIL_BYTES: usize = 4096;
/// A partial line longer than this is emitted as a line of its own, so a
/// runtime writing without newlines cannot grow memory without bound.
const MAX_LINE: usize = 256 * 1024;
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
    closed: [bool; 2],
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
                closed,
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
                    if !rest.is_empty() {
                        self.emit(state, &rest);
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
        while let Some(pos) = data.iter().position(|b| *b == b'\n') {
            let (head, rest) = data.split_at(pos);
            data = &rest[1..];
            if state.partial[index].is_empty() {
                self.emit(state, head);
            } else {
                let mut line = std::mem::take(&mut state.partial[index]);
                line.extend_from_slice(head);
                self.emit(state, &line);
            }
        }
        if !data.is_empty() {
            state.partial[index].extend_from_slice(data);
            if state.partial[index].len() > MAX_LINE {
                let line = std::mem::take(&mut state.partial[index]);
                self.emit(state, &line);
            }
        }
    }

    fn emit(&self, state: &mut CaptureState, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        self.push(state, &text);
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

    #[test]
    fn tail_keeps_last_bytes_on_char_boundary() {
        let text = "ééé";
        let cut = tail_start(text, 3);
        assert_eq!(&text[cut..], "é");
        assert_eq!(tail_start("abc", 10), 0);
    }
}
