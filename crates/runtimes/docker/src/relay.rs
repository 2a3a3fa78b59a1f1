//! Host-side relays: the data services and the gateway listen on the
//! host's loopback; containers reach them through the instance network's
//! gateway address (named `s3-storage`, `database`, `esb-gateway` inside the
//! containers). Each relay listens on `<network gateway>:<port>` and
//! forwards to `127.0.0.1:<port>`, so only the ports functions need are
//! exposed to workers, never the agent's own port.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Default)]
pub(crate) struct Relays {
    started: Mutex<HashMap<(IpAddr, u16), JoinHandle<()>>>,
}

impl Relays {
    /// Starts the relay for `port` on `ip` once.
    pub(crate) fn ensure(&self, ip: IpAddr, port: u16) {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        if started.contains_key(&(ip, port)) {
            return;
        }
        let task = tokio::spawn(async move {
            let listener = match TcpListener::bind(SocketAddr::new(ip, port)).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("cannot relay {ip}:{port} to workers: {e}");
                    return;
                }
            };
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        started.insert((ip, port), task);
    }

    /// Stops every relay listener (open connections finish on their own).
    pub(crate) fn stop_all(&self) {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        for (_, task) in started.drain() {
            task.abort();
        }
    }

    /// How many relays listen.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.started.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
