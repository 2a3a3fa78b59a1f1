//! The instance network containerd does not have: a Linux bridge per
//! network name (`esbc<hash>`, a free /24 from `10.213.0.0/16`, the bridge
//! holding the `.1` gateway address the relays listen on) and, per
//! container, a named network namespace (`/run/netns/esb-<id>`) with a
//! veth pair whose outer end is enslaved to the bridge. No NAT and no
//! route to the outside beyond the gateway: workers only reach the relays,
//! as with the docker runtime.
//!
//! Why `ip` (iproute2) rather than netlink in-process: a named network
//! namespace is an `unshare(CLONE_NEWNET)` plus a bind mount of the
//! thread's nsfs file, and configuring addresses inside it needs a thread
//! that has `setns`-ed into it. Both need unsafe system calls this
//! workspace forbids (or a thread pinned to the namespace); `ip netns` is
//! exactly that, and iproute2 is installed wherever containerd is (its
//! Debian package depends on it through runc). Each container costs two
//! `ip -batch` runs.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::ContainerdError;

/// Prefix of the bridges this engine creates.
pub const BRIDGE_PREFIX: &str = "esbc";

fn fnv(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The bridge of a network name (interface names hold 15 bytes).
pub fn bridge_name(network: &str) -> String {
    format!("{BRIDGE_PREFIX}{:010x}", fnv(network) & 0xff_ffff_ffff)
}

/// The bridge's own MAC address: locally administered, unicast, from the
/// network's name.
pub fn bridge_mac(network: &str) -> String {
    let h = fnv(network).to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        h[3], h[4], h[5], h[6], h[7]
    )
}

/// The host end of a container's veth pair.
pub fn veth_name(id: &str) -> String {
    format!("esbv{:010x}", fnv(id) & 0xff_ffff_ffff)
}

/// The named network namespace of a container.
pub fn netns_name(id: &str) -> String {
    format!("esb-{id}")
}

/// Its path, as the OCI spec names it.
pub fn netns_path(id: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(netns_name(id))
}

async fn ip(args: &[&str], batch: Option<&str>) -> Result<String, ContainerdError> {
    let mut command = tokio::process::Command::new("ip");
    command
        .args(args)
        .stdin(if batch.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| ContainerdError::Network(format!("cannot run ip: {e}")))?;
    if let (Some(text), Some(mut stdin)) = (batch, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| ContainerdError::Network(format!("ip -batch: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| ContainerdError::Network(format!("ip: {e}")))?;
    if !out.status.success() {
        return Err(ContainerdError::Network(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `(address, prefix)` of every IPv4 address on the host.
async fn host_addresses() -> Result<Vec<(Ipv4Addr, u8)>, ContainerdError> {
    let text = ip(&["-4", "-o", "addr", "show"], None).await?;
    Ok(parse_addresses(&text))
}

fn parse_addresses(text: &str) -> Vec<(Ipv4Addr, u8)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word == "inet"
                && let Some((addr, prefix)) = words.next().and_then(|a| a.split_once('/'))
                && let (Ok(addr), Ok(prefix)) = (addr.parse(), prefix.parse())
            {
                out.push((addr, prefix));
            }
        }
    }
    out
}

fn overlaps(a: Ipv4Addr, a_prefix: u8, b: Ipv4Addr, b_prefix: u8) -> bool {
    let prefix = a_prefix.min(b_prefix).min(32);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    u32::from(a) & mask == u32::from(b) & mask
}

/// A /24 in `10.213.0.0/16` no host address or route overlaps.
fn free_subnet(taken: &[(Ipv4Addr, u8)]) -> Option<Ipv4Addr> {
    (0..=255u8)
        .map(|n| Ipv4Addr::new(10, 213, n, 0))
        .find(|net| !taken.iter().any(|&(a, p)| overlaps(*net, 24, a, p)))
}

/// The gateway address of `network`'s bridge; an error when it does not
/// exist.
pub async fn gateway(network: &str) -> Result<Option<IpAddr>, ContainerdError> {
    let text = ip(
        &["-4", "-o", "addr", "show", "dev", &bridge_name(network)],
        None,
    )
    .await?;
    Ok(parse_addresses(&text).first().map(|(a, _)| IpAddr::V4(*a)))
}

/// Creates `network`'s bridge with a free /24 (the caller serializes).
pub async fn create(network: &str) -> Result<(), ContainerdError> {
    let bridge = bridge_name(network);
    if gateway(network).await.is_ok() {
        return Ok(());
    }
    let mut taken = host_addresses().await?;
    let routes = ip(&["-4", "route", "show", "table", "all"], None)
        .await
        .unwrap_or_default();
    for line in routes.lines() {
        if let Some((a, p)) = line
            .split_whitespace()
            .next()
            .and_then(|w| w.split_once('/'))
            && let (Ok(a), Ok(p)) = (a.parse(), p.parse())
        {
            taken.push((a, p));
        }
    }
    let net = free_subnet(&taken)
        .ok_or_else(|| ContainerdError::Network("no free /24 in 10.213.0.0/16".to_string()))?;
    let o = net.octets();
    let gateway = Ipv4Addr::new(o[0], o[1], o[2], 1);
    // An address set explicitly: a bridge without one takes the lowest MAC
    // of its ports, so a new container with a lower one changed the
    // gateway's MAC under every running container, whose ARP entries then
    // pointed nowhere: answers to the pool were lost until they expired
    // (stalls of 100-600 ms at c8, an invocation lost for 13 s). Docker
    // sets its bridges' addresses for the same reason.
    let mac = bridge_mac(network);
    let batch = format!(
        "link add {bridge} type bridge\nlink set {bridge} address {mac}\nlink set {bridge} alias esb-network:{network}\naddr add {gateway}/24 dev {bridge}\nlink set {bridge} up\n"
    );
    if let Err(e) = ip(&["-batch", "-"], Some(&batch)).await {
        let _ = ip(&["link", "del", &bridge], None).await;
        return Err(e);
    }
    Ok(())
}

/// The container ids behind the veth pairs on `network`'s bridge (from
/// the namespace each peer lives in).
pub async fn attached(network: &str) -> Result<Vec<String>, ContainerdError> {
    let text = ip(
        &["-o", "link", "show", "master", &bridge_name(network)],
        None,
    )
    .await?;
    Ok(parse_attached(&text))
}

fn parse_attached(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                if w == "link-netns" {
                    return words.next()?.strip_prefix("esb-").map(str::to_string);
                }
            }
            None
        })
        .collect()
}

/// Interfaces enslaved to `bridge`.
async fn ports(bridge: &str) -> Result<usize, ContainerdError> {
    let text = ip(&["-o", "link", "show", "master", bridge], None).await?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
}

/// Removes `network`'s bridge; refused while containers are attached.
pub async fn remove(network: &str) -> Result<(), ContainerdError> {
    let bridge = bridge_name(network);
    if ports(&bridge).await? > 0 {
        return Err(ContainerdError::Network(format!(
            "network {network} ({bridge}) still has containers attached"
        )));
    }
    ip(&["link", "del", &bridge], None).await?;
    Ok(())
}

/// Removes every bridge of this engine that no container uses.
pub async fn prune() -> Result<(), ContainerdError> {
    let text = ip(&["-o", "link", "show", "type", "bridge"], None).await?;
    for line in text.lines() {
        let Some(name) = line.split(':').nth(1).map(str::trim) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if name.starts_with(BRIDGE_PREFIX) && ports(name).await.unwrap_or(1) == 0 {
            let _ = ip(&["link", "del", name], None).await;
        }
    }
    Ok(())
}

/// The first free host address of the /24 behind `gateway`.
pub fn pick_address(gateway: Ipv4Addr, used: &[IpAddr]) -> Option<Ipv4Addr> {
    let o = gateway.octets();
    (2..=254u8)
        .map(|n| Ipv4Addr::new(o[0], o[1], o[2], n))
        .find(|a| *a != gateway && !used.contains(&IpAddr::V4(*a)))
}

/// Creates the container's namespace and veth pair on `network` with
/// address `addr`; undone on failure. The bridge port is isolated: it
/// forwards to and from the host (the bridge's own address: esb, the
/// relays) but never to another container's port, as docker's
/// `enable_icc=false` networks (a function must not call another
/// function's supervisor directly).
pub async fn attach(
    network: &str,
    id: &str,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<PathBuf, ContainerdError> {
    let bridge = bridge_name(network);
    let ns = netns_name(id);
    let veth = veth_name(id);
    let host = format!(
        "netns add {ns}\nlink add {veth} type veth peer name eth0 netns {ns}\nlink set {veth} master {bridge}\nlink set dev {veth} type bridge_slave isolated on\nlink set {veth} up\n"
    );
    let inside = format!(
        "link set lo up\naddr add {addr}/24 dev eth0\nlink set eth0 up\nroute add default via {gateway}\n"
    );
    let result = async {
        ip(&["-batch", "-"], Some(&host)).await?;
        ip(&["-n", &ns, "-batch", "-"], Some(&inside)).await
    }
    .await;
    if let Err(e) = result {
        detach(id).await;
        return Err(e);
    }
    Ok(netns_path(id))
}

/// Removes the container's namespace (its veth pair goes with it).
pub async fn detach(id: &str) {
    let _ = ip(&["netns", "del", &netns_name(id)], None).await;
    let _ = ip(&["link", "del", &veth_name(id)], None).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_an_interface_name() {
        assert!(bridge_name("esb-0123456789ab").len() <= 15);
        assert!(veth_name(&"x".repeat(80)).len() <= 15);
        assert_ne!(bridge_name("a"), bridge_name("b"));
    }

    #[test]
    fn a_bridge_mac_is_local_unicast_and_stable() {
        let mac = bridge_mac("esb-0123456789ab");
        assert_eq!(mac, bridge_mac("esb-0123456789ab"));
        assert_ne!(mac, bridge_mac("esb-0123456789ac"));
        let bytes: Vec<u8> = mac
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        assert_eq!(bytes.len(), 6);
        assert_eq!(bytes[0], 0x02, "locally administered, unicast");
    }

    #[test]
    fn a_free_subnet_avoids_what_the_host_uses() {
        let text = "2: eth0    inet 10.213.0.5/24 brd 10.213.0.255 scope global eth0\n5: br    inet 10.213.1.1/24 scope global br\n";
        let taken = parse_addresses(text);
        assert_eq!(taken.len(), 2);
        assert_eq!(free_subnet(&taken), Some(Ipv4Addr::new(10, 213, 2, 0)));
        // A /16 covering the whole range leaves nothing.
        assert_eq!(free_subnet(&[(Ipv4Addr::new(10, 213, 9, 9), 16)]), None);
    }

    #[test]
    fn attached_containers_come_from_the_peer_namespace() {
        let text = "2771: esbv25b5628c63@if2: <BROADCAST,UP> mtu 1500 master esbc4532 state UP\\    link/ether c6:f6:16:e2:91:b4 brd ff:ff:ff:ff:ff:ff link-netns esb-esb-2b54-hello-721f1ffd\n";
        assert_eq!(parse_attached(text), vec!["esb-2b54-hello-721f1ffd"]);
    }

    #[test]
    fn addresses_skip_the_gateway_and_used_ones() {
        let gw = Ipv4Addr::new(10, 213, 3, 1);
        let used = [IpAddr::V4(Ipv4Addr::new(10, 213, 3, 2))];
        assert_eq!(pick_address(gw, &used), Some(Ipv4Addr::new(10, 213, 3, 3)));
    }
}
