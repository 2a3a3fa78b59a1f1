//! The writer thread's queue: std's unbounded channel (linked blocks of
//! slots, allocated as lines arrive) with its bound kept by a counter.
//!
//! `sync_channel(n)` preallocates and initialises all `n` slots up front:
//! with 16 Ki slots of a log record that was 2.2 MB of resident memory in
//! every `esb` from the first second, whether or not a line was ever
//! logged. This queue holds memory in proportion to its backlog and still
//! refuses a line once `bound` are waiting, so a writer that falls behind
//! never stalls an invocation nor grows memory without limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::Duration;

/// Creates a queue that holds at most `bound` items.
pub(crate) fn bounded<T>(bound: usize) -> (Tx<T>, Rx<T>) {
    let (tx, rx) = mpsc::channel();
    let pending = Arc::new(AtomicUsize::new(0));
    (
        Tx {
            tx,
            pending: pending.clone(),
            bound,
        },
        Rx { rx, pending },
    )
}

/// The sending side (cloneable).
pub(crate) struct Tx<T> {
    tx: Sender<T>,
    pending: Arc<AtomicUsize>,
    bound: usize,
}

impl<T> Clone for Tx<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            pending: self.pending.clone(),
            bound: self.bound,
        }
    }
}

impl<T> Tx<T> {
    /// Queues `item` unless `bound` items are waiting or the receiver is
    /// gone; never blocks.
    pub(crate) fn try_send(&self, item: T) -> Result<(), T> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.bound {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(item);
        }
        self.tx.send(item).map_err(|error| {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            error.0
        })
    }
}

/// The receiving side.
pub(crate) struct Rx<T> {
    rx: Receiver<T>,
    pending: Arc<AtomicUsize>,
}

impl<T> Rx<T> {
    fn taken(&self, item: T) -> T {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        item
    }

    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv().map(|item| self.taken(item))
    }

    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.rx.recv_timeout(timeout).map(|item| self.taken(item))
    }

    pub(crate) fn recv(&self) -> Result<T, mpsc::RecvError> {
        self.rx.recv().map(|item| self.taken(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_bound_and_accepts_again_once_drained() {
        let (tx, rx) = bounded(3);
        for n in 0..3 {
            assert!(tx.try_send(n).is_ok());
        }
        assert_eq!(tx.try_send(3), Err(3));
        assert_eq!(tx.clone().try_send(4), Err(4));
        assert_eq!(rx.try_recv(), Ok(0));
        assert!(tx.try_send(5).is_ok());
        assert_eq!(tx.try_send(6), Err(6));
        let rest: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(rest, [1, 2, 5]);
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Timeout)
        );
    }

    #[test]
    fn a_gone_receiver_refuses_without_counting() {
        let (tx, rx) = bounded(1);
        drop(rx);
        assert_eq!(tx.try_send(1), Err(1));
        assert_eq!(tx.pending.load(Ordering::Relaxed), 0);
    }
}
