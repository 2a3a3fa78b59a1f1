//! Engine events and container output: marks workers dead when their
//! container stops and publishes [`ContainerEvent`]s (and the runtime
//! trait's [`WorkerEvent`]s); forwards each container's output to the log
//! sink.

use std::sync::atomic::Ordering;
use std::time::Duration;

use esb_runtimes_core::WorkerEvent;
use futures_util::StreamExt;

use crate::{ContainerEvent, ContainerEventKind, Inner, LABEL_FUNCTION, LABEL_WORKER, lock};

/// Follows the engine's container events for this instance until the
/// backend is dropped.
pub(crate) async fn follow_events(weak: std::sync::Weak<Inner>) {
    let Some(inner) = weak.upgrade() else {
        return;
    };
    let mut stream = inner.engine.events(&inner.options.instance_label());
    drop(inner);
    while let Some(event) = stream.next().await {
        let Ok(event) = event else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let worker_id = event
            .attributes
            .get(LABEL_WORKER)
            .cloned()
            .unwrap_or_default();
        let function = event
            .attributes
            .get(LABEL_FUNCTION)
            .cloned()
            .unwrap_or_default();
        let kind = match event.action.as_str() {
            "oom" => ContainerEventKind::OomKilled,
            _ => ContainerEventKind::Exited,
        };
        if kind == ContainerEventKind::Exited {
            if let Some(entry) = lock(&inner.workers).get(&worker_id) {
                entry.alive.store(false, Ordering::SeqCst);
            }
            let _ = inner.worker_events.send(WorkerEvent::Exited {
                worker_id: worker_id.clone(),
                function: function.clone(),
            });
        }
        let _ = inner.events.send(ContainerEvent {
            worker_id,
            function,
            kind,
        });
    }
}

impl Inner {
    /// Forwards the container's output to the log sink, line by line.
    pub(crate) fn follow_logs(&self, container_id: &str, function: &str, worker_id: &str) {
        let mut logs = self.engine.logs(container_id);
        let sink = self.options.log_sink.clone();
        let function = function.to_string();
        let worker_id = worker_id.to_string();
        tokio::spawn(async move {
            let mut partial = String::new();
            while let Some(chunk) = logs.next().await {
                partial.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(pos) = partial.find('\n') {
                    let line: String = partial.drain(..=pos).collect();
                    sink.line(&function, &worker_id, None, line.trim_end_matches('\n'));
                }
            }
        });
    }
}
