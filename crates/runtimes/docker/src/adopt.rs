//! Adopt & Sync: when an agent starts, the containers labelled with its
//! instance are either kept (running, and their supervisor answers as the
//! worker the label names) for adoption, or removed. Adopted workers are
//! handed out by [`DockerBackend::ensure_worker`] to a caller asking for
//! the same function and code hash; those with another code hash are
//! removed on that first request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use esb_runtimes_core::{FunctionSpec, RuntimeError};

use crate::{
    ContainerInfo, DockerBackend, DockerError, Entry, LABEL_CODE_HASH, LABEL_FUNCTION, LABEL_PORT,
    LABEL_WORKER, lock,
};

/// How long a supervisor may take to answer a status request.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// What Adopt & Sync found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Running workers kept for adoption.
    pub adopted: Vec<String>,
    /// Containers removed (stopped, unresponsive).
    pub removed: Vec<String>,
}

impl DockerBackend {
    /// Adopt & Sync: lists the containers labelled with this instance;
    /// running ones whose supervisor answers are kept for adoption (handed
    /// out by [`DockerBackend::ensure_worker`] when the code hash matches),
    /// all others are removed. Also prunes networks no instance uses.
    pub async fn adopt_and_sync(&self) -> Result<SyncReport, DockerError> {
        let inner = &self.inner;
        let mut report = SyncReport::default();
        inner.prune_networks().await;
        let containers = inner
            .engine
            .list_containers(&inner.options.instance_label())
            .await?;
        for container in containers {
            let labels = &container.labels;
            let worker_id = labels.get(LABEL_WORKER).cloned().unwrap_or_default();
            if lock(&inner.workers).contains_key(&worker_id) {
                continue;
            }
            let endpoint = container.ip.and_then(|ip| {
                let port = labels.get(LABEL_PORT)?.parse().ok()?;
                Some(SocketAddr::new(ip, port))
            });
            let healthy = match (container.running, endpoint) {
                (true, Some(addr)) => inner
                    .client
                    .status(addr, STATUS_TIMEOUT)
                    .await
                    .is_ok_and(|s| s.alive && s.worker_id == worker_id),
                _ => false,
            };
            match (healthy, endpoint) {
                (true, Some(endpoint)) => {
                    let info = ContainerInfo {
                        worker_id: worker_id.clone(),
                        container_id: container.id.clone(),
                        function: labels.get(LABEL_FUNCTION).cloned().unwrap_or_default(),
                        code_hash: labels.get(LABEL_CODE_HASH).cloned().unwrap_or_default(),
                        endpoint,
                        adopted: true,
                        init_duration: None,
                    };
                    lock(&inner.workers).insert(
                        worker_id.clone(),
                        Entry {
                            info,
                            alive: Arc::new(AtomicBool::new(true)),
                            claimed: false,
                        },
                    );
                    report.adopted.push(worker_id);
                }
                _ => {
                    inner.remove_container(&container.id).await;
                    report.removed.push(worker_id);
                }
            }
        }
        Ok(report)
    }

    /// A ready worker for `spec`: an adopted one with the same code hash
    /// (not in `exclude`, the ids the caller already holds), else a new
    /// container. Adopted workers of `spec`'s function with another code
    /// hash are removed.
    pub async fn ensure_worker(
        &self,
        spec: &FunctionSpec,
        exclude: &[String],
    ) -> Result<ContainerInfo, RuntimeError> {
        let result = self.take_or_start(spec, exclude).await;
        if result.is_ok() && self.inner.options.ready_spare {
            self.refill_spare(spec);
        }
        result
    }

    /// Starts a ready spare for `spec` in the background unless one exists
    /// or is starting.
    fn refill_spare(&self, spec: &FunctionSpec) {
        let inner = &self.inner;
        if inner.closing.load(Ordering::SeqCst) {
            return;
        }
        let key = (spec.name.clone(), spec.code_hash.clone());
        let have_one = lock(&inner.workers).values().any(|e| {
            !e.claimed
                && e.info.function == spec.name
                && e.info.code_hash == spec.code_hash
                && e.alive.load(Ordering::SeqCst)
        });
        if have_one || !lock(&inner.spares_starting).insert(key.clone()) {
            return;
        }
        let inner = inner.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            match inner.start_container_for(&spec, false).await {
                Ok(info) => {
                    tracing::debug!(function = %spec.name, worker = %info.worker_id, "ready spare started");
                    if inner.closing.load(Ordering::SeqCst) {
                        inner.destroy(&info.worker_id).await;
                    }
                }
                Err(e) => tracing::debug!(function = %spec.name, "ready spare: {e}"),
            }
            lock(&inner.spares_starting).remove(&key);
        });
    }

    async fn take_or_start(
        &self,
        spec: &FunctionSpec,
        exclude: &[String],
    ) -> Result<ContainerInfo, RuntimeError> {
        let inner = &self.inner;
        if inner.closing.load(Ordering::SeqCst) {
            return Err(RuntimeError::Backend(
                "the agent is stopping: no new worker starts".to_string(),
            ));
        }
        // Callers already holding adopted workers claim them.
        let mut stale = Vec::new();
        let candidate = {
            let mut workers = lock(&inner.workers);
            for id in exclude {
                if let Some(entry) = workers.get_mut(id) {
                    entry.claimed = true;
                }
            }
            let mut found = None;
            for entry in workers.values_mut() {
                if entry.claimed || entry.info.function != spec.name {
                    continue;
                }
                if entry.info.code_hash != spec.code_hash {
                    stale.push(entry.info.worker_id.clone());
                } else if found.is_none() && entry.alive.load(Ordering::SeqCst) {
                    entry.claimed = true;
                    found = Some(entry.info.clone());
                }
            }
            found
        };
        for id in stale {
            inner.destroy(&id).await;
        }
        if let Some(info) = candidate {
            let ok = inner
                .client
                .status(info.endpoint, STATUS_TIMEOUT)
                .await
                .is_ok_and(|s| s.alive && !s.busy);
            if ok {
                tracing::info!(function = %spec.name, worker = %info.worker_id, "adopted warm worker");
                return Ok(info);
            }
            inner.destroy(&info.worker_id).await;
        }
        inner.start_container(spec).await
    }
}
