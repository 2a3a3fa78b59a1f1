//! The `sandbox` isolation level of process-runtime workers (opt-in):
//! each worker in its own network namespace holding only ESB-owned sockets
//! (its Runtime API on `127.0.0.1:9001` and relays to the S3, DynamoDB and
//! Invoke API endpoints it was given), started through bubblewrap in new
//! PID, mount, IPC and UTS namespaces with a read-only view of `/usr`,
//! `/etc`, its code and its runtime files only, a private size-limited
//! `/tmp`, and run as `nobody` with no capabilities and `no_new_privs`
//! (`setpriv`).
//!
//! The network namespace is made by a short-lived dedicated OS thread
//! (namespaces are per thread, never a tokio worker): it unshares its
//! network namespace, brings `lo` up, binds the listeners and opens the
//! namespace; the runtime joins it with `setns` before `exec`, and ESB
//! serves the listeners from its own namespace.
//!
//! Must not: decide when workers start or stop; run anything as root
//! inside the sandbox.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::net::TcpListener as StdListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use esb_runtimes_core::launch::LaunchPlan;

/// Runtime API address inside a sandbox (as on AWS).
pub const RUNTIME_API_PORT: u16 = 9001;
/// Size of a sandbox's private `/tmp` (Lambda's default ephemeral storage).
pub const TMP_BYTES: u64 = 512 * 1024 * 1024;
/// The unprivileged user workers run as.
const NOBODY: u32 = 65534;

static ENABLED: OnceLock<bool> = OnceLock::new();

/// Turns the sandbox on for this process when `wanted` and the machine
/// allows it (root, `bwrap` and `setpriv` on `PATH`); returns whether it
/// is on. Decided once; later calls return the first answer.
pub fn configure(wanted: bool) -> bool {
    *ENABLED.get_or_init(|| {
        if !wanted {
            return false;
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let missing: Vec<&str> = ["bwrap", "setpriv"]
            .into_iter()
            .filter(|tool| which(tool).is_none())
            .collect();
        if !root || !missing.is_empty() {
            tracing::warn!(
                "isolation = \"sandbox\" is not available (needs root and bwrap + setpriv; missing: {}); workers run without namespaces",
                if root {
                    missing.join(", ")
                } else {
                    "root".to_string()
                }
            );
            return false;
        }
        tracing::info!(
            "worker sandbox: on (own network, PID, mount, IPC and UTS namespaces; uid {NOBODY}, no capabilities, no_new_privs)"
        );
        true
    })
}

/// True when workers are sandboxed.
pub fn enabled() -> bool {
    ENABLED.get().copied().unwrap_or(false)
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// A worker's network namespace and the listeners bound inside it.
pub(crate) struct NetNs {
    pub(crate) fd: OwnedFd,
    /// The Runtime API listener (`127.0.0.1:9001` inside).
    pub(crate) runtime_api: StdListener,
    /// (port, listener) per relay: connections go to `127.0.0.1:port` on
    /// the host.
    pub(crate) relays: Vec<(u16, StdListener)>,
}

/// Creates a network namespace with `lo` up, the Runtime API listener and
/// one relay listener per port in `relay_ports`.
pub(crate) fn new_netns(relay_ports: Vec<u16>) -> std::io::Result<NetNs> {
    std::thread::Builder::new()
        .name("esb-netns".into())
        .spawn(move || -> std::io::Result<NetNs> {
            // SAFETY: unshare only changes this short-lived thread's
            // network namespace; it exits right after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            loopback_up()?;
            let runtime_api = StdListener::bind(("127.0.0.1", RUNTIME_API_PORT))?;
            runtime_api.set_nonblocking(true)?;
            let mut relays = Vec::new();
            for port in relay_ports {
                if port == RUNTIME_API_PORT {
                    continue;
                }
                let listener = StdListener::bind(("127.0.0.1", port))?;
                listener.set_nonblocking(true)?;
                relays.push((port, listener));
            }
            let fd = std::fs::File::open("/proc/thread-self/ns/net")?;
            Ok(NetNs {
                fd: fd.into(),
                runtime_api,
                relays,
            })
        })?
        .join()
        .map_err(|_| std::io::Error::other("network namespace thread panicked"))?
}

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain socket for the interface ioctls; the ifreq is zeroed
    // and names "lo"; the fd is owned and closed by OwnedFd.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sock = OwnedFd::from_raw_fd(sock);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Serves each relay listener: every connection is piped to the same port
/// on the host loopback. Returns the tasks.
pub(crate) fn spawn_relays(
    relays: Vec<(u16, StdListener)>,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for (port, listener) in relays {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((mut inside, _)) = listener.accept().await else {
                    // Out of fds or similar: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut host) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    {
                        let _ = inside.set_nodelay(true);
                        let _ = host.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inside, &mut host).await;
                    }
                });
            }
        }));
    }
    Ok(tasks)
}

/// Ports on the host loopback the function's endpoints point at
/// (`AWS_ENDPOINT_URL*=http(s)://127.0.0.1:<port>`), to be relayed.
pub(crate) fn relay_ports(env: &[(String, String)]) -> Vec<u16> {
    let mut ports: Vec<u16> = env
        .iter()
        .filter(|(k, _)| k.starts_with("AWS_ENDPOINT_URL"))
        .filter_map(|(_, v)| {
            let rest = v
                .strip_prefix("http://")
                .or_else(|| v.strip_prefix("https://"))?;
            let authority = rest.split('/').next()?;
            let (host, port) = authority.rsplit_once(':')?;
            matches!(host, "127.0.0.1" | "localhost")
                .then(|| port.parse().ok())
                .flatten()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The plan wrapped in bubblewrap + setpriv: what the runtime sees.
pub(crate) fn wrap(plan: &LaunchPlan, env: &[(String, String)]) -> LaunchPlan {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&[
        "--die-with-parent",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "localhost",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--ro-bind",
        "/etc",
        "/etc",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--size",
    ]);
    args.push(TMP_BYTES.to_string().into());
    args.extend(["--tmpfs", "/tmp"].map(OsString::from));
    // bwrap makes missing parents 0700: make them traversable for nobody.
    let mut made: Vec<PathBuf> = Vec::new();
    for path in visible_paths(plan, env) {
        let mut ancestors: Vec<&Path> = path
            .ancestors()
            .skip(1)
            .filter(|a| a.components().count() > 1 && *a != Path::new("/tmp"))
            .collect();
        ancestors.reverse();
        for ancestor in ancestors {
            if made.iter().any(|m| m == ancestor) {
                continue;
            }
            made.push(ancestor.to_path_buf());
            args.extend(["--perms", "0755", "--dir"].map(OsString::from));
            args.push(ancestor.as_os_str().to_os_string());
        }
        made.push(path.clone());
        args.extend([
            OsString::from("--ro-bind-try"),
            path.clone().into_os_string(),
            path.into_os_string(),
        ]);
    }
    args.push("--chdir".into());
    args.push(plan.working_dir.clone().into_os_string());
    args.push("--".into());
    args.push("setpriv".into());
    for a in [
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_string(),
        "--inh-caps=-all".to_string(),
        "--bounding-set=-all".to_string(),
        "--no-new-privs".to_string(),
        "--".to_string(),
    ] {
        args.push(a.into());
    }
    args.push(plan.program.clone().into_os_string());
    args.extend(plan.args.iter().map(OsString::from));
    let mut wrapped = plan.clone();
    wrapped.program = which("bwrap").unwrap_or_else(|| PathBuf::from("bwrap"));
    wrapped.args = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    wrapped
}

/// Host paths the runtime needs besides `/usr` and `/etc`: its code (task
/// root), the runtime files and interpreter named by the plan and by
/// `PYTHONPATH`, `LAMBDA_TASK_ROOT` and `AWS_CA_BUNDLE`. Nothing else of
/// the host (the data directory included) is visible.
fn visible_paths(plan: &LaunchPlan, env: &[(String, String)]) -> Vec<PathBuf> {
    let mut paths = vec![plan.working_dir.clone()];
    let mut consider = |p: &Path| {
        if p.is_absolute() && !p.starts_with("/usr") && !p.starts_with("/etc") {
            paths.push(p.to_path_buf());
        }
    };
    let program = if plan.program.is_absolute() {
        Some(plan.program.clone())
    } else {
        which(&plan.program.to_string_lossy())
    };
    if let Some(program) = program {
        // An interpreter outside /usr (a venv, pyenv): its installation
        // (`<root>/bin/<program>`), else the program itself. Programs in
        // the task root are already visible.
        for candidate in [std::fs::canonicalize(&program).ok(), Some(program)]
            .into_iter()
            .flatten()
        {
            if candidate.starts_with(&plan.working_dir) {
                continue;
            }
            let installation = candidate
                .parent()
                .filter(|bin| bin.file_name().is_some_and(|n| n == "bin"))
                .and_then(Path::parent)
                .filter(|root| root.components().count() > 2);
            consider(installation.unwrap_or(&candidate));
        }
    }
    for arg in &plan.args {
        let p = Path::new(arg);
        if p.is_absolute() && p.exists() {
            consider(p);
        }
    }
    for (key, value) in env {
        match key.as_str() {
            "PYTHONPATH" => value.split(':').for_each(|p| consider(Path::new(p))),
            "LAMBDA_TASK_ROOT" | "AWS_CA_BUNDLE" => consider(Path::new(value)),
            _ => {}
        }
    }
    paths.sort();
    paths.dedup();
    // Parents first so a child bind is not hidden by its parent's.
    paths.sort_by_key(|p| p.components().count());
    paths
}

/// Pre-exec part: join the worker's network namespace.
/// Async-signal-safe (setns only).
pub(crate) fn join_netns(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: setns is async-signal-safe; `fd` is the namespace file kept
    // open by the parent until after spawn.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_ports_come_from_loopback_endpoints() {
        let env = vec![
            (
                "AWS_ENDPOINT_URL_S3".to_string(),
                "http://127.0.0.1:4566".to_string(),
            ),
            (
                "AWS_ENDPOINT_URL_LAMBDA".to_string(),
                "https://127.0.0.1:8443/".to_string(),
            ),
            (
                "AWS_ENDPOINT_URL_DYNAMODB".to_string(),
                "http://example.com:8000".to_string(),
            ),
            ("OTHER".to_string(), "http://127.0.0.1:1".to_string()),
        ];
        assert_eq!(relay_ports(&env), vec![4566, 8443]);
    }
}
