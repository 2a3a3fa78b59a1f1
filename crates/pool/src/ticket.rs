//! Tickets: every slot of a function (a worker reserved for a caller, or
//! the right to start one) is held by a [`Ticket`] whose `Drop` gives it
//! back; [`InFlight`] finishes an invocation whose caller went away.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use esb_runtimes_core::{Invocation, InvokeResult, Worker, WorkerError};

use crate::registry::{FnState, Inner, WorkerSlot};

/// One slot of a function: either a worker reserved for the holder, or the
/// right to start one. Dropping it gives the slot back (the worker goes to
/// the oldest waiter or the idle set; an unused start right goes to a
/// waiter or the pool), so no slot leaks whatever future is dropped.
///
/// Must never be dropped while its function's lock is held (its `Drop`
/// takes that lock); paths that could only do so clear `kind` first.
pub(crate) struct Ticket {
    pub(crate) inner: Arc<Inner>,
    pub(crate) f: Arc<FnState>,
    pub(crate) kind: Option<TicketKind>,
}

pub(crate) enum TicketKind {
    /// A busy worker; `warm` when it ran an invocation before.
    Worker { slot: WorkerSlot, warm: bool },
    /// Counted in `starting`; the holder may start a worker.
    Start,
}

impl Ticket {
    pub(crate) fn start(inner: Arc<Inner>, f: Arc<FnState>) -> Self {
        Self {
            inner,
            f,
            kind: Some(TicketKind::Start),
        }
    }

    pub(crate) fn worker(&self) -> Option<Arc<dyn Worker>> {
        match &self.kind {
            Some(TicketKind::Worker { slot, .. }) => Some(slot.worker.clone()),
            _ => None,
        }
    }

    pub(crate) fn is_start(&self) -> bool {
        matches!(self.kind, Some(TicketKind::Start))
    }

    pub(crate) fn is_warm(&self) -> bool {
        matches!(self.kind, Some(TicketKind::Worker { warm: true, .. }))
    }

    /// Drops the worker (dead or untrustworthy) instead of reusing it.
    pub(crate) fn discard(mut self) {
        match self.kind.take() {
            Some(TicketKind::Worker { slot, .. }) => self.inner.discard(&self.f, slot),
            other => self.kind = other,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        match self.kind.take() {
            Some(TicketKind::Worker { slot, .. }) => self.inner.release(&self.f, slot),
            Some(TicketKind::Start) => {
                let mut st = self.f.lock();
                st.starting = st.starting.saturating_sub(1);
                self.inner.free_slot(&self.f, st);
            }
            None => {}
        }
    }
}

/// Puts a worker back after an invocation, or drops it when it died.
pub(crate) fn settle(ticket: Ticket, worker_alive: bool) {
    if worker_alive {
        // `release` also checks `is_alive`.
        drop(ticket);
    } else {
        ticket.discard();
    }
}

pub(crate) type InvokeFuture =
    Pin<Box<dyn Future<Output = Result<InvokeResult, WorkerError>> + Send>>;

/// A running invocation and the ticket of its worker. If the caller's
/// future is dropped mid-invocation, the invocation is finished in a task
/// and the worker is settled then, instead of being cut off half-way (which
/// would leave it in an unknown state).
pub(crate) struct InFlight {
    pub(crate) fut: Option<InvokeFuture>,
    pub(crate) ticket: Option<Ticket>,
}

impl InFlight {
    pub(crate) fn new(ticket: Ticket, worker: Arc<dyn Worker>, invocation: Invocation) -> Self {
        Self {
            fut: Some(Box::pin(async move { worker.invoke(invocation).await })),
            ticket: Some(ticket),
        }
    }

    pub(crate) fn take_ticket(&mut self) -> Option<Ticket> {
        self.ticket.take()
    }
}

impl Future for InFlight {
    type Output = Result<InvokeResult, WorkerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(Err(WorkerError::Busy(
                "invocation polled after completion".to_string(),
            )));
        };
        match fut.as_mut().poll(cx) {
            Poll::Ready(result) => {
                this.fut = None;
                Poll::Ready(result)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let (Some(fut), Some(ticket)) = (self.fut.take(), self.ticket.take()) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let result = fut.await;
                    let alive = matches!(&result, Ok(res) if res.worker_alive);
                    settle(ticket, alive);
                });
            }
            // No runtime to finish it on: the worker's state is unknown.
            Err(_) => {
                drop(fut);
                ticket.discard();
            }
        }
    }
}
