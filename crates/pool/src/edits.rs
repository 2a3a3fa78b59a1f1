//! Code edits in progress (hot reload): a worker that starts while an
//! editor is still writing the function's files may import a half-written
//! module and fail its init. The reloader holds an [`EditGuard`] from the
//! first file event of a burst until the new specs are registered; a cold
//! start that failed its init meanwhile waits for the guard to go and, if
//! the function's code was registered again, is retried once on the new
//! code instead of failing the request. Code that is really broken fails
//! as before (its spec does not change, or the retry fails too).

use std::time::Duration;

use tokio::sync::watch;

/// Longest wait for an edit in progress to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// How many edits are in progress.
pub(crate) struct Edits {
    pending: watch::Sender<usize>,
}

impl Default for Edits {
    fn default() -> Self {
        Self {
            pending: watch::channel(0).0,
        }
    }
}

impl Edits {
    pub(crate) fn begin(&self) -> EditGuard {
        self.pending.send_modify(|n| *n += 1);
        EditGuard {
            pending: self.pending.clone(),
        }
    }

    /// Waits (bounded) until no edit is in progress.
    pub(crate) async fn settled(&self) {
        let mut rx = self.pending.subscribe();
        let _ = tokio::time::timeout(SETTLE_LIMIT, rx.wait_for(|n| *n == 0)).await;
    }
}

/// Held while the reloader reads and registers changed code; dropping it
/// lets waiting cold starts retry.
pub struct EditGuard {
    pending: watch::Sender<usize>,
}

impl Drop for EditGuard {
    fn drop(&mut self) {
        self.pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settled_waits_for_every_guard() {
        let edits = std::sync::Arc::new(Edits::default());
        edits.settled().await; // none in progress: at once
        let a = edits.begin();
        let b = edits.begin();
        let waiter = {
            let edits = edits.clone();
            tokio::spawn(async move { edits.settled().await })
        };
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one edit is still in progress");
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("settled once both guards are gone")
            .expect("task");
    }
}
