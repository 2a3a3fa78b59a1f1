//! The invocation rendezvous between [`crate::Supervisor::invoke`] and the
//! Runtime API server: `invoke` posts a [`Delivery`] (straight to a parked
//! `/next`, or queued for the next one) and parks on a oneshot; `/response`
//! or `/error` completes that oneshot. One short `parking_lot` section on
//! each side, never held across an `.await`.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::oneshot;

/// What `/next` hands to the runtime, prepared by `invoke` outside locks.
pub(crate) struct Delivery {
    pub(crate) request_id: HeaderValue,
    pub(crate) deadline_ms: HeaderValue,
    pub(crate) arn: HeaderValue,
    pub(crate) trace_id: HeaderValue,
    pub(crate) client_context: Option<HeaderValue>,
    pub(crate) cognito_identity: Option<HeaderValue>,
    pub(crate) payload: Bytes,
}

/// How the runtime finished an invocation.
pub(crate) enum Completion {
    Response(Bytes),
    Error(Bytes),
    TooLarge(usize),
}

/// The end of the init phase, as the runtime signals it.
pub(crate) enum InitSignal {
    Ready,
    Error(Bytes),
}

/// The invocation in progress.
pub(crate) struct Current {
    pub(crate) request_id: Arc<str>,
    pub(crate) delivered: bool,
    pub(crate) done: oneshot::Sender<Completion>,
}

pub(crate) struct State {
    /// Present until the first `/next` or `/runtime/init/error`.
    pub(crate) init: Option<oneshot::Sender<InitSignal>>,
    pub(crate) next_waiter: Option<oneshot::Sender<Delivery>>,
    pub(crate) queued: Option<Delivery>,
    pub(crate) current: Option<Current>,
    pub(crate) dead: bool,
}

/// Why a delivery could not be posted.
pub(crate) struct Dead;

pub(crate) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(init: oneshot::Sender<InitSignal>) -> Self {
        Self {
            state: Mutex::new(State {
                init: Some(init),
                next_waiter: None,
                queued: None,
                current: None,
                dead: false,
            }),
        }
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    pub(crate) fn is_current(&self, request_id: &str) -> bool {
        self.lock_state()
            .current
            .as_ref()
            .is_some_and(|c| c.delivered && &*c.request_id == request_id)
    }

    /// Takes the invocation `request_id` if the runtime may answer it now.
    pub(crate) fn take_current(&self, request_id: &str) -> Option<oneshot::Sender<Completion>> {
        let mut state = self.lock_state();
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.delivered && &*c.request_id == request_id)
        {
            state.current.take().map(|c| c.done)
        } else {
            None
        }
    }

    /// Makes `delivery` the current invocation: handed to a parked `/next`
    /// at once, or queued for the runtime's next poll.
    pub(crate) fn post(
        &self,
        request_id: Arc<str>,
        delivery: Delivery,
        done: oneshot::Sender<Completion>,
    ) -> Result<(), Dead> {
        let mut state = self.lock_state();
        if state.dead {
            return Err(Dead);
        }
        let mut current = Current {
            request_id,
            delivered: false,
            done,
        };
        // No parked /next (or its connection went away): the runtime's
        // next poll takes the delivery.
        match state.next_waiter.take() {
            Some(waiter) => match waiter.send(delivery) {
                Ok(()) => current.delivered = true,
                Err(delivery) => state.queued = Some(delivery),
            },
            None => state.queued = Some(delivery),
        }
        state.current = Some(current);
        Ok(())
    }

    /// Whatever happened, invocation `request_id` is over for the API.
    pub(crate) fn end(&self, request_id: &Arc<str>) {
        let mut state = self.lock_state();
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.request_id == *request_id)
        {
            state.current = None;
            state.queued = None;
        }
    }

    /// The runtime is gone: release a parked `/next` and forget work.
    pub(crate) fn mark_dead(&self) {
        let mut state = self.lock_state();
        state.dead = true;
        state.next_waiter = None;
        state.queued = None;
    }
}
