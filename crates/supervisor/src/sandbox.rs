//! The `sandbox` isolation level of process-runtime workers (the default
//! when ESB runs as root): what one worker can see of the machine and of
//! the other workers.
//!
//! Each worker gets, set up in the child between `fork` and `exec` (no
//! helper program, so it costs well under a millisecond):
//! - its own network namespace, taken from a small pool made ahead of need
//!   by a background thread, holding only ESB-owned sockets: its Runtime
//!   API on `127.0.0.1:9001` and relays to the S3, DynamoDB and Invoke API
//!   endpoints it was given (bound by ESB from a short-lived thread that
//!   joins the namespace; ESB serves them from its own namespace). No other
//!   worker or host process can reach that loopback, so no one else can
//!   take its events or post its responses;
//! - its own mount and IPC namespaces with a new root (a tmpfs pivoted
//!   into): `/usr` and `/etc` read-only, its code and runtime files
//!   read-only at their host paths, a minimal `/dev`, a private `/tmp`
//!   limited to [`TMP_BYTES`], and a `/proc` mounted with
//!   `hidepid=invisible` — nothing of the data directory or of other
//!   functions' code;
//! - its own unprivileged uid and gid (one per live worker, from
//!   [`UID_BASE`], claimed host-wide with a lock file so two ESB processes
//!   never share one), so the kernel refuses it other workers'
//!   `/proc/<pid>/environ` and signals; no supplementary groups, an empty
//!   capability bounding set and no capabilities, `no_new_privs`.
//!
//! Hand-written rather than bubblewrap: exec'ing `bwrap` + `setpriv` cost
//! ~10 ms per cold start; the same system calls made in the child cost
//! ~0.5 ms. The child part ([`Prepared::hook`]) runs after `fork`, so it
//! only makes async-signal-safe system calls on memory prepared before.
//!
//! Must not: decide when workers start or stop; run anything as root
//! inside the sandbox.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::net::TcpListener as StdListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use esb_runtimes_core::launch::LaunchPlan;
use parking_lot::{Condvar, Mutex};

use crate::containment;

/// Runtime API address inside a sandbox (as on AWS).
pub const RUNTIME_API_PORT: u16 = 9001;
/// Size of a sandbox's private `/tmp` (Lambda's default ephemeral storage).
pub const TMP_BYTES: u64 = 512 * 1024 * 1024;
/// First uid (and gid) of sandboxed workers; worker `n` of the host runs
/// as `UID_BASE + n`, `n < UID_COUNT`.
pub const UID_BASE: u32 = 1_900_000_000;
/// How many worker uids there are.
pub const UID_COUNT: u32 = 65_536;
/// Where the sandbox keeps its mount point and uid locks.
const STATE_DIR: &str = "/run/esb-sandbox";
/// Network namespaces kept ready.
const POOL_SIZE: usize = 4;

static ENABLED: OnceLock<bool> = OnceLock::new();

/// Decides the isolation level of this process once (later calls return
/// the first answer): sets up worker containment for `instance_dir` (see
/// [`containment::init`]) and turns the sandbox on when `wanted` and ESB
/// runs as root; logs the level in one line. Returns whether the sandbox
/// is on.
pub fn configure(wanted: bool, instance_dir: &Path) -> bool {
    *ENABLED.get_or_init(|| {
        let level = containment::init(instance_dir);
        let contained = containment::describe(level);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !wanted {
            let line = format!(
                "worker isolation: none + {} ({contained}; isolation = \"none\": workers run as ESB's user{} and share its network and files)",
                level.name(),
                if root { " (root)" } else { "" }
            );
            if root {
                tracing::warn!("{line}");
            } else {
                tracing::info!("{line}");
            }
            return false;
        }
        let ready = if root {
            prepare_state().and_then(|()| {
                probe().map_err(|e| std::io::Error::new(e.kind(), format!("trial start: {e}")))
            })
        } else {
            Err(std::io::Error::other("ESB does not run as root"))
        };
        if let Err(why) = ready {
            tracing::warn!(
                "worker isolation: none + {} ({contained}; the sandbox is not available: {why}; workers run as ESB's user and share its network and files)",
                level.name()
            );
            return false;
        }
        start_pool();
        tracing::info!(
            "worker isolation: sandbox + {} ({contained}; own network, mount and IPC namespaces, read-only code, private /tmp, one uid per worker from {UID_BASE}, no capabilities, no_new_privs)",
            level.name()
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

fn prepare_state() -> std::io::Result<()> {
    let root = Path::new(STATE_DIR);
    std::fs::create_dir_all(root.join("root"))?;
    std::fs::create_dir_all(root.join("uids"))?;
    std::fs::create_dir_all(root.join("probe"))?;
    Ok(())
}

/// Runs `true` in a sandbox once, so that a machine where a step is not
/// allowed (a container without `CAP_SYS_ADMIN`, no `/proc` mounts) falls
/// back to `none` at start instead of failing every cold start.
fn probe() -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let program = which("true").ok_or_else(|| std::io::Error::other("no `true` on PATH"))?;
    let plan = LaunchPlan {
        program,
        args: Vec::new(),
        env: Vec::new(),
        working_dir: Path::new(STATE_DIR).join("probe"),
        execution_env: None,
        description: "sandbox probe".to_string(),
    };
    let prepared = prepare(&plan, &[])?;
    let hook = prepared.hook();
    let mut command = std::process::Command::new(&plan.program);
    command
        .current_dir(&plan.working_dir)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the hook makes async-signal-safe system calls only, on
    // memory allocated before fork (see `ChildPlan::enter`).
    unsafe {
        command.pre_exec(hook);
    }
    let status = command
        .status()
        .map_err(|e| std::io::Error::new(e.kind(), format!("sandbox set-up: {e}")))?;
    drop(prepared);
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "a sandboxed `true` ended with {status}"
        )))
    }
}

// ------------------------------------------------------ network namespaces

/// Network namespaces made ahead of need.
struct Pool {
    ready: Mutex<Vec<OwnedFd>>,
    wanted: Condvar,
}

static POOL: OnceLock<Arc<Pool>> = OnceLock::new();

fn start_pool() {
    let pool = POOL.get_or_init(|| {
        Arc::new(Pool {
            ready: Mutex::new(Vec::new()),
            wanted: Condvar::new(),
        })
    });
    let pool = pool.clone();
    // The thread moves itself into each namespace it makes: it never runs
    // anything else.
    let started = std::thread::Builder::new()
        .name("esb-netns-pool".into())
        .spawn(move || {
            loop {
                {
                    let mut ready = pool.ready.lock();
                    while ready.len() >= POOL_SIZE {
                        pool.wanted.wait(&mut ready);
                    }
                }
                match make_netns() {
                    Ok(fd) => pool.ready.lock().push(fd),
                    Err(error) => {
                        tracing::warn!(
                            "network namespace pool stopped: {error}; namespaces are made at each cold start"
                        );
                        return;
                    }
                }
            }
        });
    if let Err(error) = started {
        tracing::warn!("network namespace pool not started: {error}");
    }
}

/// A new network namespace with `lo` up, made by (and entered by) the
/// calling thread.
fn make_netns() -> std::io::Result<OwnedFd> {
    // SAFETY: unshare only changes the calling thread's network namespace;
    // callers are dedicated threads.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    loopback_up()?;
    Ok(std::fs::File::open("/proc/thread-self/ns/net")?.into())
}

/// A ready namespace from the pool, else a new one (made in a short-lived
/// thread).
fn take_netns() -> std::io::Result<OwnedFd> {
    if let Some(pool) = POOL.get() {
        let fd = pool.ready.lock().pop();
        pool.wanted.notify_one();
        if let Some(fd) = fd {
            return Ok(fd);
        }
    }
    in_thread(make_netns)
}

fn in_thread<T: Send + 'static>(
    job: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    std::thread::Builder::new()
        .name("esb-netns".into())
        .spawn(job)?
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

type Listeners = (StdListener, Vec<(u16, StdListener)>);

/// Binds the Runtime API and one relay listener per port inside `netns`.
fn bind_inside(netns: RawFd, relay_ports: Vec<u16>) -> std::io::Result<Listeners> {
    in_thread(move || {
        // SAFETY: setns only changes this short-lived thread's namespace;
        // `netns` stays open in the caller until the thread is joined.
        if unsafe { libc::setns(netns, libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
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
        Ok((runtime_api, relays))
    })
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

// ---------------------------------------------------------------- uids

/// A worker uid held for the worker's life (the lock goes with the fd).
#[derive(Debug)]
pub(crate) struct UidLease {
    uid: u32,
    _lock: std::fs::File,
}

static NEXT_SLOT: AtomicU32 = AtomicU32::new(u32::MAX);

fn lease_uid() -> std::io::Result<UidLease> {
    use std::os::unix::fs::OpenOptionsExt;
    // Start where another ESB process is unlikely to be.
    let _ = NEXT_SLOT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(97) % UID_COUNT,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..UID_COUNT {
        let slot = NEXT_SLOT.fetch_add(1, Ordering::SeqCst) % UID_COUNT;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(Path::new(STATE_DIR).join("uids").join(slot.to_string()))?;
        // SAFETY: flock on an fd we own; no memory involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(UidLease {
                uid: UID_BASE + slot,
                _lock: file,
            });
        }
    }
    Err(std::io::Error::other("every sandbox worker uid is in use"))
}

// -------------------------------------------------------- the worker's view

/// One step of building the worker's root, on paths under the mount point.
#[derive(Debug)]
enum Op {
    /// `mkdir` (0755; an existing directory is fine).
    Mkdir(CString),
    /// An empty file to bind a file onto.
    Touch(CString),
    /// Recursive bind, then the top remounted read-only, nosuid, nodev.
    BindRo(CString, CString),
    /// Bind of a device node (stays writable: `/dev/null`).
    BindDev(CString, CString),
    /// A tmpfs with these options (nosuid, nodev).
    Tmpfs(CString, CString),
    /// A `/proc` that shows only the worker's own processes.
    Proc(CString),
    /// `symlink(target, link)`.
    Symlink(CString, CString),
}

/// Everything the child needs, allocated before `fork`.
#[derive(Debug)]
struct ChildPlan {
    netns: RawFd,
    mount_point: CString,
    ops: Vec<Op>,
    working_dir: CString,
    uid: u32,
}

/// One worker's sandbox before its runtime is spawned.
pub(crate) struct Prepared {
    /// The Runtime API listener (`127.0.0.1:9001` inside).
    pub(crate) runtime_api: Option<StdListener>,
    /// (port, listener) per relay: connections go to `127.0.0.1:port` on
    /// the host.
    pub(crate) relays: Vec<(u16, StdListener)>,
    netns: OwnedFd,
    lease: UidLease,
    child: Arc<ChildPlan>,
}

/// A running worker's sandbox: its uid stays claimed and its relays
/// served until this is dropped (after the worker's processes are killed).
#[derive(Debug)]
pub(crate) struct Attached {
    _lease: UidLease,
    relays: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.relays.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// The pre-exec part of a sandbox, called in the child.
pub(crate) type Hook = Box<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// Takes a network namespace, binds the Runtime API and relays in it,
/// claims a uid and plans the worker's root. Blocking (run it off the
/// async threads).
pub(crate) fn prepare(plan: &LaunchPlan, env: &[(String, String)]) -> std::io::Result<Prepared> {
    let netns = take_netns()?;
    let (runtime_api, relays) = bind_inside(netns.as_raw_fd(), relay_ports(env))?;
    let lease = lease_uid()?;
    let child = Arc::new(ChildPlan {
        netns: netns.as_raw_fd(),
        mount_point: cstring(&Path::new(STATE_DIR).join("root"))?,
        ops: root_ops(plan, env)?,
        working_dir: cstring(&plan.working_dir)?,
        uid: lease.uid,
    });
    Ok(Prepared {
        runtime_api: Some(runtime_api),
        relays,
        netns,
        lease,
        child,
    })
}

impl Prepared {
    /// The child part, for `pre_exec`.
    pub(crate) fn hook(&self) -> Hook {
        let child = self.child.clone();
        Box::new(move || child.enter())
    }

    /// After the spawn: keeps the uid claimed with the relays served; the
    /// namespace fd is closed (the worker holds the namespace).
    pub(crate) fn attach(self, relays: Vec<tokio::task::JoinHandle<()>>) -> Attached {
        drop(self.netns);
        Attached {
            _lease: self.lease,
            relays,
        }
    }
}

fn cstring(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other(format!("{}: NUL in path", path.display())))
}

/// The steps that build the worker's root under the mount point.
fn root_ops(plan: &LaunchPlan, env: &[(String, String)]) -> std::io::Result<Vec<Op>> {
    let base = Path::new(STATE_DIR).join("root");
    let at = |p: &str| cstring(&base.join(p.trim_start_matches('/')));
    let mut ops = Vec::new();
    for dir in ["usr", "etc"] {
        ops.push(Op::Mkdir(at(dir)?));
        ops.push(Op::BindRo(cstring(&Path::new("/").join(dir))?, at(dir)?));
    }
    // Merged-/usr links as on the host, or the directories themselves.
    for name in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = Path::new("/").join(name);
        match std::fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                ops.push(Op::Symlink(
                    cstring(&std::fs::read_link(&host)?)?,
                    at(name)?,
                ));
            }
            Ok(meta) if meta.is_dir() => {
                ops.push(Op::Mkdir(at(name)?));
                ops.push(Op::BindRo(cstring(&host)?, at(name)?));
            }
            _ => {}
        }
    }
    ops.push(Op::Mkdir(at("proc")?));
    ops.push(Op::Proc(at("proc")?));
    ops.push(Op::Mkdir(at("dev")?));
    ops.push(Op::Tmpfs(at("dev")?, CString::new("mode=0755,size=64k")?));
    for dev in ["null", "zero", "full", "random", "urandom"] {
        let host = Path::new("/dev").join(dev);
        if host.exists() {
            let node = at(&format!("dev/{dev}"))?;
            ops.push(Op::Touch(node.clone()));
            ops.push(Op::BindDev(cstring(&host)?, node));
        }
    }
    for (target, link) in [
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
    ] {
        ops.push(Op::Symlink(CString::new(target)?, at(link)?));
    }
    ops.push(Op::Mkdir(at("tmp")?));
    ops.push(Op::Tmpfs(
        at("tmp")?,
        CString::new(format!("mode=1777,size={TMP_BYTES}"))?,
    ));
    // The function's code and runtime files at their host paths, their
    // missing parents made traversable.
    let mut made: Vec<PathBuf> = Vec::new();
    for path in visible_paths(plan, env) {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        for ancestor in path
            .ancestors()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            if ancestor.parent().is_none() || made.iter().any(|m| m == ancestor) {
                continue;
            }
            made.push(ancestor.to_path_buf());
            ops.push(Op::Mkdir(cstring(&inside(&base, ancestor))?));
        }
        let target = cstring(&inside(&base, &path))?;
        ops.push(if meta.is_dir() {
            Op::Mkdir(target.clone())
        } else {
            Op::Touch(target.clone())
        });
        ops.push(Op::BindRo(cstring(&path)?, target));
        made.push(path);
    }
    Ok(ops)
}

fn inside(base: &Path, host: &Path) -> PathBuf {
    base.join(host.strip_prefix("/").unwrap_or(host))
}

/// Host paths the runtime needs besides `/usr`, `/etc` and the `/bin`,
/// `/lib*` links: its code (task
/// root), the runtime files and interpreter named by the plan and by
/// `PYTHONPATH`, `NODE_PATH` (layers, `esb build` output),
/// `LAMBDA_TASK_ROOT` and `AWS_CA_BUNDLE`. Nothing else of
/// the host (the data directory included) is visible. A path inside
/// another is left out (the outer bind shows it).
fn visible_paths(plan: &LaunchPlan, env: &[(String, String)]) -> Vec<PathBuf> {
    // Already in the new root (`/usr`, `/etc` and the `/bin`, `/lib*`
    // links or directories).
    let in_root = |p: &Path| {
        [
            "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
        ]
        .iter()
        .any(|dir| p.starts_with(dir))
    };
    let mut paths = Vec::new();
    let mut consider = |p: &Path| {
        if p.is_absolute() && p.components().count() > 1 && !in_root(p) {
            paths.push(p.to_path_buf());
        }
    };
    consider(&plan.working_dir);
    let program = if plan.program.is_absolute() {
        Some(plan.program.clone())
    } else {
        which(&plan.program.to_string_lossy())
    };
    if let Some(program) = program {
        // An interpreter outside /usr (a venv, pyenv): its installation
        // (`<root>/bin/<program>`), else the program itself.
        for candidate in [std::fs::canonicalize(&program).ok(), Some(program)]
            .into_iter()
            .flatten()
        {
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
            "PYTHONPATH" | "NODE_PATH" => value.split(':').for_each(|p| consider(Path::new(p))),
            "LAMBDA_TASK_ROOT" | "AWS_CA_BUNDLE" => consider(Path::new(value)),
            _ => {}
        }
    }
    // Shortest first; drop what an earlier path already shows.
    paths.sort_by_key(|p| p.components().count());
    let mut kept: Vec<PathBuf> = Vec::new();
    for path in paths {
        if !kept.iter().any(|k| path.starts_with(k)) {
            kept.push(path);
        }
    }
    kept
}

/// `__user_cap_header_struct` / `__user_cap_data_struct` of capset(2).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

fn check(result: libc::c_int) -> std::io::Result<()> {
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl ChildPlan {
    /// In the child, after fork and before exec: enter the network
    /// namespace, build and pivot into the new root, become the worker's
    /// uid without capabilities. Async-signal-safe system calls only, on
    /// memory allocated before fork; `io::Error::last_os_error` does not
    /// allocate.
    fn enter(&self) -> std::io::Result<()> {
        // SAFETY: every call below is a plain system call on
        // NUL-terminated strings and structs owned by `self` or the stack;
        // the process is the single-threaded child about to exec.
        unsafe {
            check(libc::setns(self.netns, libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC))?;
            check(libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"tmpfs".as_ptr(),
                self.mount_point.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0755,size=1m".as_ptr().cast(),
            ))?;
            for op in &self.ops {
                Self::run(op)?;
            }
            check(libc::chdir(self.mount_point.as_ptr()))?;
            check(
                libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            )?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(self.working_dir.as_ptr()))?;
            // The output pipes were made by root (mode 0600): give them to
            // the worker so `/dev/stdout` opens.
            for fd in [1, 2] {
                let mut st: libc::stat = std::mem::zeroed();
                if libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO {
                    libc::fchown(fd, self.uid, self.uid);
                }
            }
            for cap in 0..64 {
                // EINVAL past the last capability the kernel knows.
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(self.uid, self.uid, self.uid))?;
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
            let mut header = CapHeader {
                version: CAP_VERSION_3,
                pid: 0,
            };
            let data = [CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            }; 2];
            check(libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int)?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }

    /// # Safety
    /// Called in the child only (see [`ChildPlan::enter`]).
    unsafe fn run(op: &Op) -> std::io::Result<()> {
        // SAFETY: see `enter`.
        unsafe {
            match op {
                Op::Mkdir(path) => {
                    if libc::mkdir(path.as_ptr(), 0o755) != 0
                        && *libc::__errno_location() != libc::EEXIST
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Op::Touch(path) => {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o644,
                    );
                    check(fd)?;
                    libc::close(fd);
                }
                Op::BindRo(src, dst) => {
                    check(libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                    check(libc::mount(
                        std::ptr::null(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND
                            | libc::MS_REMOUNT
                            | libc::MS_RDONLY
                            | libc::MS_NOSUID
                            | libc::MS_NODEV,
                        std::ptr::null(),
                    ))?;
                }
                Op::BindDev(src, dst) => check(libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?,
                Op::Tmpfs(dst, options) => check(libc::mount(
                    c"tmpfs".as_ptr(),
                    dst.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    options.as_ptr().cast(),
                ))?,
                Op::Proc(dst) => {
                    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                    let proc = c"proc".as_ptr();
                    if libc::mount(
                        proc,
                        dst.as_ptr(),
                        proc,
                        flags,
                        c"hidepid=invisible".as_ptr().cast(),
                    ) != 0
                    {
                        check(libc::mount(
                            proc,
                            dst.as_ptr(),
                            proc,
                            flags,
                            c"hidepid=2".as_ptr().cast(),
                        ))?;
                    }
                }
                Op::Symlink(target, link) => check(libc::symlink(target.as_ptr(), link.as_ptr()))?,
            }
        }
        Ok(())
    }
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

    #[test]
    fn paths_under_usr_are_already_in_the_root() {
        let plan = LaunchPlan {
            program: PathBuf::from("/usr/bin/python3"),
            args: vec![],
            env: vec![],
            working_dir: PathBuf::from("/usr/src/app"),
            execution_env: None,
            description: String::new(),
        };
        let env = vec![(
            "PYTHONPATH".to_string(),
            "/lib/python3/dist-packages".to_string(),
        )];
        assert!(visible_paths(&plan, &env).is_empty());
    }

    #[test]
    fn nested_paths_are_shown_by_their_outer_bind() {
        let plan = LaunchPlan {
            program: PathBuf::from("/usr/bin/python3"),
            args: vec![],
            env: vec![],
            working_dir: PathBuf::from("/srv/app/fn"),
            execution_env: None,
            description: String::new(),
        };
        let env = vec![
            (
                "PYTHONPATH".to_string(),
                "/srv/app/fn/lib:/opt/rt".to_string(),
            ),
            ("LAMBDA_TASK_ROOT".to_string(), "/srv/app/fn".to_string()),
        ];
        assert_eq!(
            visible_paths(&plan, &env),
            vec![PathBuf::from("/opt/rt"), PathBuf::from("/srv/app/fn")]
        );
    }
}
