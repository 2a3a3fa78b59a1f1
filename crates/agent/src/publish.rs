//! Publishing workers' supervisor ports on the node's own address
//! (`esb agent --advertise IP`): for a compute node on another host, the
//! control host cannot reach the containers' private bridge addresses, so
//! the agent listens on `IP:<ephemeral port>` per worker and forwards every
//! connection to the container's supervisor (`<container ip>:<port>`). The
//! endpoint the agent reports for that worker is then the published one.
//!
//! The supervisor's port has no authentication of its own (on a local
//! bridge only the host reaches it), so a published port accepts
//! connections only from the address that asked for the worker over the
//! authenticated gRPC port (the control host); others are closed at once.
//!
//! A user-space TCP forwarder rather than the engine's port publishing:
//! the engine's published ports are bound by the engine's host network
//! stack, which is not necessarily where the agent's address lives (an
//! agent in its own network namespace, a box whose agent runs in a
//! container), and it needs no firewall rules. The cost is one extra hop
//! through this process on the warm path of remote workers only (measured
//! by `scripts/bench.py --only remote`). Written here (a few lines over
//! `tokio::io::copy_bidirectional`) since no maintained crate does just
//! this.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One published worker.
struct Published {
    /// The address clients use.
    public: SocketAddr,
    /// The container's supervisor address it forwards to.
    target: SocketAddr,
    /// The only peer address it accepts.
    allowed: Arc<RwLock<IpAddr>>,
    task: JoinHandle<()>,
}

/// The published ports of one agent.
pub struct Publisher {
    ip: IpAddr,
    published: Mutex<HashMap<String, Published>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("ip", &self.ip).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Publisher {
    /// Publishes on `ip`.
    pub fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            published: Mutex::new(HashMap::new()),
        }
    }

    /// The published address of `worker_id`, publishing `target` first if
    /// needed (a worker whose container moved to another address is
    /// published again). Only connections from `allowed` are forwarded.
    pub async fn publish(
        &self,
        worker_id: &str,
        target: SocketAddr,
        allowed: IpAddr,
    ) -> std::io::Result<SocketAddr> {
        if let Some(p) = lock(&self.published).get(worker_id)
            && p.target == target
        {
            // Handed out again (adopted by another client): that one now.
            *p.allowed.write().unwrap_or_else(|e| e.into_inner()) = allowed;
            return Ok(p.public);
        }
        let listener = TcpListener::bind(SocketAddr::new(self.ip, 0)).await?;
        let public = listener.local_addr()?;
        let allowed = Arc::new(RwLock::new(allowed));
        let task = tokio::spawn(forward(listener, target, allowed.clone()));
        if let Some(old) = lock(&self.published).insert(
            worker_id.to_string(),
            Published {
                public,
                target,
                allowed,
                task,
            },
        ) {
            old.task.abort();
        }
        Ok(public)
    }

    /// The published address of `worker_id`, if it is published.
    pub fn published(&self, worker_id: &str) -> Option<SocketAddr> {
        lock(&self.published).get(worker_id).map(|p| p.public)
    }

    /// Stops publishing `worker_id` (its container is gone). Open
    /// connections end with the container.
    pub fn unpublish(&self, worker_id: &str) {
        if let Some(p) = lock(&self.published).remove(worker_id) {
            p.task.abort();
        }
    }

    /// Stops publishing every worker not in `keep`.
    pub fn retain(&self, keep: &std::collections::HashSet<String>) {
        lock(&self.published).retain(|id, p| {
            let kept = keep.contains(id);
            if !kept {
                p.task.abort();
            }
            kept
        });
    }

    /// How many workers are published.
    pub fn len(&self) -> usize {
        lock(&self.published).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn forward(listener: TcpListener, target: SocketAddr, allowed: Arc<RwLock<IpAddr>>) {
    loop {
        let Ok((mut inbound, peer)) = listener.accept().await else {
            // Out of descriptors: back off rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let expected = *allowed.read().unwrap_or_else(|e| e.into_inner());
        if peer.ip() != expected {
            tracing::warn!("refused a connection from {peer} to a published worker port");
            continue;
        }
        tokio::spawn(async move {
            let connect = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                TcpStream::connect(target),
            )
            .await;
            if let Ok(Ok(mut outbound)) = connect {
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn published_port_forwards_to_the_worker_until_unpublished() {
        let worker = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = worker.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = worker.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 5];
                    if s.read_exact(&mut buf).await.is_ok() {
                        let _ = s.write_all(&buf).await;
                    }
                });
            }
        });
        let publisher = Publisher::new("127.0.0.1".parse().unwrap());
        let me: IpAddr = "127.0.0.1".parse().unwrap();
        let public = publisher.publish("w1", target, me).await.unwrap();
        assert_ne!(public, target);
        assert_eq!(publisher.publish("w1", target, me).await.unwrap(), public);
        assert_eq!(publisher.published("w1"), Some(public));
        let mut client = TcpStream::connect(public).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");

        // Another peer address is closed at once, nothing forwarded.
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let refused = publisher.publish("w2", target, other).await.unwrap();
        let mut stranger = TcpStream::connect(refused).await.unwrap();
        let _ = stranger.write_all(b"hello").await;
        let mut rest = Vec::new();
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stranger.read_to_end(&mut rest),
        )
        .await
        .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "a stranger got {rest:?}");

        publisher.retain(&std::collections::HashSet::new());
        assert!(publisher.is_empty());
        // The listener is closed: new connections are refused.
        let mut refused = false;
        for _ in 0..50 {
            if TcpStream::connect(public).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(refused, "an unpublished worker's port still accepts");
    }
}
