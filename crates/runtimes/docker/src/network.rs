//! The instance network: one bridge network per ESB instance
//! (`esb-<instance>`), created on demand, removed on shutdown, and networks
//! of dead instances pruned when an agent starts.

use std::collections::HashMap;
use std::net::IpAddr;

use esb_runtimes_core::RuntimeError;

use crate::{Inner, LABEL_INSTANCE, backend_error};

#[derive(Debug, Clone)]
pub(crate) struct NetworkInfo {
    pub(crate) name: String,
    pub(crate) gateway: IpAddr,
}

impl Inner {
    /// The instance network, created when missing. Looked up on every cold
    /// start (not cached): a network removed from outside (`docker network
    /// prune`, another tool) is recreated instead of failing every start.
    ///
    /// Lookup-then-create runs under one lock: Engine 20.10 (API 1.41)
    /// creates a second network of the same name when asked, and the
    /// concurrent cold starts of a scale-up each made one; every later
    /// lookup by name was then refused as ambiguous and all starts failed.
    pub(crate) async fn network(&self) -> Result<NetworkInfo, RuntimeError> {
        let name = self.options.network_name();
        let gateway = match self.engine.network_gateway(&name).await {
            Ok(gateway) => gateway,
            Err(_) => {
                let _one_at_a_time = self.network_lock.lock().await;
                match self.engine.network_gateway(&name).await {
                    // Another start created it while this one waited.
                    Ok(gateway) => gateway,
                    Err(_) => {
                        let labels = HashMap::from([(
                            LABEL_INSTANCE.to_string(),
                            self.options.instance.clone(),
                        )]);
                        if let Err(e) = self.engine.create_network(&name, labels).await {
                            // Another process (an agent of the same
                            // instance) may have created it meanwhile.
                            tracing::debug!("create network {name}: {e}");
                        }
                        self.engine
                            .network_gateway(&name)
                            .await
                            .map_err(backend_error)?
                    }
                }
            }
        };
        let gateway =
            gateway.ok_or_else(|| backend_error(format!("network {name} has no gateway")))?;
        Ok(NetworkInfo { name, gateway })
    }

    /// Gives the network's address pool back: the engine has only a few
    /// dozen, and leaked per-instance networks make later starts fail
    /// ("could not find an available, non-overlapping IPv4 address pool").
    /// The engine refuses while containers are still attached, so a
    /// network adopted workers use survives.
    pub(crate) async fn remove_network(&self) {
        let name = self.options.network_name();
        if let Err(e) = self.engine.remove_network(&name).await {
            tracing::debug!("remove network {name}: {e}");
        }
        self.relays.stop_all();
    }

    /// Networks of ESB instances that no container uses any more (an `esb
    /// up` that was killed never removed its own) are given back.
    pub(crate) async fn prune_networks(&self) {
        if let Err(e) = self.engine.prune_networks(LABEL_INSTANCE).await {
            tracing::debug!("prune unused esb networks: {e}");
        }
    }
}
