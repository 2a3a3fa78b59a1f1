//! The janitor: every interval, removes containers of this instance that
//! are stopped, unknown to this agent, unresponsive, or idle longer than
//! the idle timeout (workers a crashed gateway never gave back).

use std::sync::Arc;
use std::time::Duration;

use crate::{DockerBackend, Inner, LABEL_WORKER, lock};

impl DockerBackend {
    /// Runs [`DockerBackend::sweep`] every `interval` until the backend is
    /// dropped.
    pub fn spawn_janitor(
        &self,
        idle_timeout: Duration,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                inner.sweep(idle_timeout).await;
            }
        })
    }

    /// One janitor pass.
    pub async fn sweep(&self, idle_timeout: Duration) {
        self.inner.sweep(idle_timeout).await;
    }
}

impl Inner {
    async fn sweep(&self, idle_timeout: Duration) {
        let containers = match self
            .engine
            .list_containers(&self.options.instance_label())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("janitor: cannot list containers: {e}");
                return;
            }
        };
        for container in containers {
            let worker_id = container
                .labels
                .get(LABEL_WORKER)
                .cloned()
                .unwrap_or_default();
            let known = lock(&self.workers)
                .get(&worker_id)
                .map(|e| (e.info.endpoint, e.info.endpoint.port() != 0));
            let reason = match known {
                None => Some("unknown worker"),
                // Still starting (created, maybe not yet running): its
                // start call owns it, and removes it if the start fails.
                Some((_, false)) => None,
                Some(_) if !container.running => Some("stopped"),
                Some((endpoint, true)) => {
                    match self.client.status(endpoint, Duration::from_secs(2)).await {
                        Err(_) => Some("supervisor does not answer"),
                        Ok(s) if !s.alive => Some("runtime exited"),
                        Ok(s) if !s.busy && Duration::from_millis(s.idle_ms) >= idle_timeout => {
                            Some("idle")
                        }
                        Ok(_) => None,
                    }
                }
            };
            if let Some(reason) = reason {
                tracing::info!(worker = %worker_id, container = %container.id, "janitor: removing container ({reason})");
                if known.is_some() {
                    self.destroy(&worker_id).await;
                } else {
                    self.remove_container(&container.id).await;
                }
            }
        }
    }
}
