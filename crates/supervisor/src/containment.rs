//! Containment of a worker's whole process tree: one cgroup per worker so
//! that a timeout, a crash or a shutdown ends every descendant (a `setsid`
//! child included), with the function's memory limit, a pids limit and an
//! open-files limit.
//!
//! Levels, detected once per ESB process ([`init`]) and logged once:
//! - `cgroup-v1`: a directory per worker in the `memory`, `pids` and
//!   `freezer` hierarchies (below ESB's own cgroup in each), frozen, emptied
//!   with SIGKILL, thawed and removed;
//! - `cgroup-v2`: the same in the unified hierarchy (`cgroup.kill` when the
//!   kernel has it, else freeze + kill);
//! - `process-group`: no usable cgroups (no privileges): the runtime's
//!   process group and every descendant found under its pid at kill time.
//!
//! Cgroups are named `esb-<instance>/<owner pid>-<worker id>`, `<instance>`
//! a hash of the data directory; on start, [`init`] ends what is left in
//! cgroups of the same instance whose owning ESB process is gone (so after
//! `kill -9` of ESB nothing it started outlives the restart).
//!
//! Hand-written rather than a crate: the few files written here are the
//! whole protocol, and the child joins its cgroup from a pre-exec hook,
//! which must stay async-signal-safe (no allocation), which the cgroup
//! crates do not promise.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Largest number of tasks in one worker's cgroup.
pub const PIDS_MAX: u32 = 1024;
/// `RLIMIT_NOFILE` of a runtime process.
pub const NOFILE_MAX: u64 = 1024;

/// How workers are contained on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// cgroup v1 `memory` + `pids` + `freezer` per worker.
    CgroupV1,
    /// cgroup v2 per worker.
    CgroupV2,
    /// Process group plus descendants at kill time; no limits but
    /// `RLIMIT_NOFILE`.
    ProcessGroup,
}

impl Level {
    /// Name used in the start-up line and the docs.
    pub fn name(self) -> &'static str {
        match self {
            Level::CgroupV1 => "cgroup-v1",
            Level::CgroupV2 => "cgroup-v2",
            Level::ProcessGroup => "process-group",
        }
    }
}

/// The containment chosen for this ESB process.
struct Containment {
    level: Level,
    /// Per hierarchy: the `esb-<instance>` directory workers go under.
    /// v1: memory, pids, freezer (those mounted); v2: one.
    bases: Vec<(Controller, PathBuf)>,
    /// Live cgroups by runtime pid.
    groups: Mutex<HashMap<u32, Arc<Cgroup>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Memory,
    Pids,
    Freezer,
    Unified,
}

static CONTAINMENT: OnceLock<Containment> = OnceLock::new();

/// Detects the containment level and ends what a dead ESB of the same data
/// directory left in its cgroups (once per process; the level is logged by
/// [`crate::sandbox::configure`] with the sandbox's).
/// `instance_dir` identifies the instance (the data directory or a path
/// inside it). Later calls return the level chosen first.
pub fn init(instance_dir: &Path) -> Level {
    CONTAINMENT.get_or_init(|| build(instance_dir)).level
}

fn build(instance_dir: &Path) -> Containment {
    let instance = instance_name(instance_dir);
    let (level, bases) = detect(&instance);
    let containment = Containment {
        level,
        bases,
        groups: Mutex::new(HashMap::new()),
    };
    let ended = containment.end_leftovers();
    if ended > 0 {
        tracing::warn!("ended {ended} process(es) left by a previous ESB of this data directory");
    }
    containment
}

/// What a containment level enforces, for the start-up line.
pub fn describe(level: Level) -> &'static str {
    match level {
        Level::CgroupV1 => {
            "per-worker cgroup (v1 memory, pids, freezer): MemorySize, 1024 pids and 1024 open files enforced; timeouts end every descendant"
        }
        Level::CgroupV2 => {
            "per-worker cgroup (v2): MemorySize, 1024 pids and 1024 open files enforced; timeouts end every descendant"
        }
        Level::ProcessGroup => {
            "no usable cgroups: process group and descendants at kill time; no memory or pids limit, 1024 open files"
        }
    }
}

fn containment() -> &'static Containment {
    // Not initialised by a backend (unit tests, embedders): a per-process
    // instance; cgroups of live ESB processes are never touched.
    CONTAINMENT.get_or_init(|| build(&std::env::temp_dir().join("esb-unscoped")))
}

/// The level in force (initialising with a per-process instance if no
/// backend called [`init`]).
pub fn level() -> Level {
    containment().level
}

fn instance_name(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    // FNV-1a: stable across builds and processes (std's hasher is not).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in dir.as_os_str().as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("esb-{hash:016x}")
}

fn detect(instance: &str) -> (Level, Vec<(Controller, PathBuf)>) {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let is_v2 = std::fs::metadata("/sys/fs/cgroup/cgroup.controllers").is_ok();
    if is_v2 {
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/");
        let parent = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
        // Controllers must be enabled for children; a cgroup with
        // processes cannot enable them (no internal processes), so this
        // only works when ESB's cgroup is delegated to it properly.
        let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids");
        let base = parent.join(instance);
        if std::fs::create_dir_all(&base).is_ok()
            && std::fs::write(base.join("cgroup.subtree_control"), "+memory +pids").is_ok()
        {
            return (Level::CgroupV2, vec![(Controller::Unified, base)]);
        }
        return (Level::ProcessGroup, Vec::new());
    }
    let mut bases = Vec::new();
    for (controller, name) in [
        (Controller::Memory, "memory"),
        (Controller::Pids, "pids"),
        (Controller::Freezer, "freezer"),
    ] {
        let rel = own
            .lines()
            .find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let _id = parts.next()?;
                let controllers = parts.next()?;
                let path = parts.next()?;
                controllers
                    .split(',')
                    .any(|c| c == name)
                    .then(|| path.to_string())
            })
            .unwrap_or_else(|| "/".to_string());
        let base = Path::new("/sys/fs/cgroup")
            .join(name)
            .join(rel.trim_start_matches('/'))
            .join(instance);
        if std::fs::create_dir_all(&base).is_err() {
            continue;
        }
        bases.push((controller, base));
    }
    let has = |c| bases.iter().any(|(b, _)| *b == c);
    // The freezer is what makes the kill complete; without it, no cgroups.
    if has(Controller::Freezer) {
        (Level::CgroupV1, bases)
    } else {
        for (_, base) in &bases {
            let _ = std::fs::remove_dir(base);
        }
        (Level::ProcessGroup, Vec::new())
    }
}

impl Containment {
    /// Ends the processes in cgroups whose owning ESB is gone; returns how
    /// many were killed.
    fn end_leftovers(&self) -> usize {
        let mut names = std::collections::BTreeSet::new();
        for (_, base) in &self.bases {
            let Ok(entries) = std::fs::read_dir(base) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    names.insert(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        let mut ended = 0;
        for name in names {
            let owner = name
                .split('-')
                .next()
                .and_then(|p| p.parse::<i32>().ok())
                .unwrap_or(0);
            if owner > 0 && owner != process_id() && process_alive(owner) {
                continue;
            }
            let group = self.group_named(&name, "");
            ended += group.kill_all();
            group.remove();
        }
        ended
    }

    fn group_named(&self, name: &str, worker_id: &str) -> Cgroup {
        Cgroup {
            worker_id: worker_id.to_string(),
            dirs: self
                .bases
                .iter()
                .map(|(c, base)| (*c, base.join(name)))
                .collect(),
            v2: self.level == Level::CgroupV2,
        }
    }
}

fn process_id() -> i32 {
    i32::try_from(std::process::id()).unwrap_or(0)
}

fn process_alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; its `State:` says so.
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .unwrap_or(false)
}

/// One worker's cgroup (one directory per hierarchy).
#[derive(Debug)]
pub(crate) struct Cgroup {
    dirs: Vec<(Controller, PathBuf)>,
    v2: bool,
    /// The worker it belongs to (empty for leftovers).
    worker_id: String,
}

impl Cgroup {
    fn dir(&self, controller: Controller) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller || (self.v2 && *c == Controller::Unified))
            .map(|(_, p)| p.as_path())
    }

    fn write(&self, controller: Controller, file: &str, value: &str) -> std::io::Result<()> {
        match self.dir(controller) {
            Some(dir) => std::fs::write(dir.join(file), value),
            None => Ok(()),
        }
    }

    fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for (_, dir) in &self.dirs {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Freezes the group, SIGKILLs every member, thaws it; returns how many
    /// were signalled. Nothing can fork its way out while frozen.
    pub(crate) fn kill_all(&self) -> usize {
        if self.v2 {
            if let Some(dir) = self.dir(Controller::Unified)
                && std::fs::write(dir.join("cgroup.kill"), "1").is_ok()
            {
                return self.pids().len();
            }
            let _ = self.write(Controller::Unified, "cgroup.freeze", "1");
        } else {
            let _ = self.write(Controller::Freezer, "freezer.state", "FROZEN");
        }
        let pids = self.pids();
        for pid in &pids {
            if *pid > 1 {
                // SAFETY: kill(2) has no memory-safety preconditions; the
                // pid is a member of this worker's cgroup.
                unsafe {
                    libc::kill(*pid, libc::SIGKILL);
                }
            }
        }
        if self.v2 {
            let _ = self.write(Controller::Unified, "cgroup.freeze", "0");
        } else {
            let _ = self.write(Controller::Freezer, "freezer.state", "THAWED");
        }
        pids.len()
    }

    /// True when the kernel's OOM killer has killed a member.
    pub(crate) fn oom_killed(&self) -> bool {
        let (dir, file) = if self.v2 {
            (self.dir(Controller::Unified), "memory.events")
        } else {
            (self.dir(Controller::Memory), "memory.oom_control")
        };
        let Some(dir) = dir else {
            return false;
        };
        std::fs::read_to_string(dir.join(file))
            .map(|text| {
                text.lines().any(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
            })
            .unwrap_or(false)
    }

    /// Removes the directories once empty (killed tasks take a moment to
    /// leave); what cannot go yet is retried in a background thread and by
    /// [`tidy`].
    pub(crate) fn remove(&self) {
        let mut left: Vec<PathBuf> = self.dirs.iter().map(|(_, d)| d.clone()).collect();
        left.retain(|d| d.exists() && std::fs::remove_dir(d).is_err());
        if left.is_empty() {
            return;
        }
        PENDING.lock().extend(left.iter().cloned());
        let _ = std::thread::Builder::new()
            .name("esb-cgroup-rm".into())
            .spawn(move || retry_removal(left, Duration::from_secs(5)));
    }
}

/// Cgroup directories whose removal is still being retried.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn retry_removal(mut left: Vec<PathBuf>, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let before = left.clone();
        left.retain(|d| d.exists() && std::fs::remove_dir(d).is_err());
        PENDING
            .lock()
            .retain(|p| !before.contains(p) || left.contains(p));
        if left.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the pre-exec hook of one runtime needs, prepared before fork (no
/// allocation after it).
pub(crate) struct Prepared {
    cgroup: Option<Cgroup>,
    procs: Vec<CString>,
}

/// Creates the worker's cgroup with its limits (memory in MB); the
/// returned value is moved into the pre-exec hook via [`Prepared::hook`].
pub(crate) fn prepare(worker_id: &str, memory_mb: u64) -> Prepared {
    let containment = containment();
    if containment.level == Level::ProcessGroup {
        return Prepared {
            cgroup: None,
            procs: Vec::new(),
        };
    }
    let name: String = format!("{}-{}", process_id(), worker_id)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let group = containment.group_named(&name, worker_id);
    let mut created = true;
    for (_, dir) in &group.dirs {
        created &= std::fs::create_dir_all(dir).is_ok();
    }
    if !created {
        tracing::warn!("worker cgroup {name} could not be created; process group only");
        group.remove();
        return Prepared {
            cgroup: None,
            procs: Vec::new(),
        };
    }
    let bytes = (memory_mb.max(1) * 1024 * 1024).to_string();
    if group.v2 {
        let _ = group.write(Controller::Unified, "memory.max", &bytes);
        let _ = group.write(Controller::Unified, "memory.swap.max", "0");
        let _ = group.write(Controller::Unified, "pids.max", &PIDS_MAX.to_string());
    } else {
        let _ = group.write(Controller::Memory, "memory.limit_in_bytes", &bytes);
        // Exceeding the limit must end in the OOM killer, not in swap.
        let _ = group.write(Controller::Memory, "memory.memsw.limit_in_bytes", &bytes);
        let _ = group.write(Controller::Memory, "memory.swappiness", "0");
        let _ = group.write(Controller::Pids, "pids.max", &PIDS_MAX.to_string());
    }
    let procs = group
        .dirs
        .iter()
        .filter_map(|(_, d)| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok())
        .collect();
    Prepared {
        cgroup: Some(group),
        procs,
    }
}

impl Prepared {
    /// The pre-exec hook: join the cgroup (writing `0` to `cgroup.procs`
    /// moves the writer) and lower `RLIMIT_NOFILE`. Async-signal-safe:
    /// open/write/close/setrlimit only, on memory prepared before fork.
    pub(crate) fn hook(&self) -> impl Fn() -> std::io::Result<()> + Send + Sync + 'static {
        let procs = self.procs.clone();
        move || {
            for path in &procs {
                // SAFETY: `path` is a valid NUL-terminated string owned by
                // the closure; open/write/close are async-signal-safe and
                // touch no memory of the parent.
                unsafe {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            let limit = libc::rlimit {
                rlim_cur: NOFILE_MAX,
                rlim_max: NOFILE_MAX,
            };
            // SAFETY: setrlimit is async-signal-safe and reads only `limit`.
            // Lowering a limit never fails for lack of privilege.
            unsafe {
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
            Ok(())
        }
    }

    /// Registers the cgroup under the runtime's pid once spawned.
    pub(crate) fn register(self, pid: u32) {
        if let Some(group) = self.cgroup {
            // A previous entry under this pid is stale (its runtime is gone,
            // the pid reused): end and remove it.
            let stale = containment().groups.lock().insert(pid, Arc::new(group));
            if let Some(stale) = stale {
                stale.kill_all();
                stale.remove();
            }
        }
    }

    /// Removes the cgroup when the spawn failed.
    pub(crate) fn discard(self) {
        if let Some(group) = self.cgroup {
            group.remove();
        }
    }
}

/// Kills everything the runtime `pid` started: its cgroup when it has one,
/// else every descendant found under it. The runtime itself is killed by
/// the caller (process group).
pub(crate) fn kill_tree(pid: u32) {
    let group = containment().groups.lock().get(&pid).cloned();
    match group {
        Some(group) => {
            group.kill_all();
        }
        None => kill_descendants(pid),
    }
}

/// True when the runtime `pid`'s cgroup saw an OOM kill.
pub(crate) fn oom_killed(pid: u32) -> bool {
    let group = containment().groups.lock().get(&pid).cloned();
    group.is_some_and(|g| g.oom_killed())
}

/// At backend shutdown, with the backend's (stopped) workers: ends what is
/// left in their cgroups, removes them, and removes the instance directory
/// when nothing else is in it.
pub fn tidy(worker_ids: &[String]) {
    let Some(containment) = CONTAINMENT.get() else {
        return;
    };
    let groups: Vec<Arc<Cgroup>> = {
        let mut map = containment.groups.lock();
        let pids: Vec<u32> = map
            .iter()
            .filter(|(_, g)| worker_ids.contains(&g.worker_id))
            .map(|(pid, _)| *pid)
            .collect();
        pids.iter().filter_map(|pid| map.remove(pid)).collect()
    };
    for group in &groups {
        group.kill_all();
    }
    // Theirs, and those of workers released earlier still being removed
    // (removal fails while a killed member is still exiting).
    let mut left: Vec<PathBuf> = groups
        .iter()
        .flat_map(|g| g.dirs.iter().map(|(_, d)| d.clone()))
        .collect();
    left.extend(PENDING.lock().iter().cloned());
    retry_removal(left, Duration::from_secs(1));
    // v1 only: a v2 base carries the controllers enabled for its children.
    if containment.level == Level::CgroupV1 {
        for (_, base) in &containment.bases {
            // Fails (harmlessly) while other workers of the instance exist.
            let _ = std::fs::remove_dir(base);
        }
    }
}

/// The file giving the peak memory of the runtime `pid`'s cgroup in bytes
/// (`memory.peak`, v1 `memory.max_usage_in_bytes`), opened once per worker
/// and re-read with `pread` at every REPORT (no path building, `open` or
/// `close` per invocation: docs/benchmarks.md). The open file keeps naming
/// that cgroup; once the group is removed, reads fail.
pub(crate) fn open_peak(pid: u32) -> Option<std::fs::File> {
    let group = containment().groups.lock().get(&pid).cloned()?;
    let (dir, file) = if group.v2 {
        (group.dir(Controller::Unified)?, "memory.peak")
    } else {
        (group.dir(Controller::Memory)?, "memory.max_usage_in_bytes")
    };
    std::fs::File::open(dir.join(file)).ok()
}

/// Ends what is left in the runtime `pid`'s cgroup and removes it.
pub(crate) fn release(pid: u32, worker_id: &str) {
    let group = {
        let mut groups = containment().groups.lock();
        match groups.get(&pid) {
            Some(g) if g.worker_id == worker_id => groups.remove(&pid),
            _ => None,
        }
    };
    if let Some(group) = group {
        group.kill_all();
        group.remove();
    }
}

/// Without cgroups: SIGKILL every process whose parent chain leads to
/// `pid` (`setsid` children included while the runtime is alive).
fn kill_descendants(pid: u32) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut parent_of = HashMap::new();
    for entry in entries.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may contain spaces and ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
        {
            parent_of.insert(child, ppid);
        }
    }
    for (&candidate, _) in parent_of.iter() {
        let mut cursor = candidate;
        let mut hops = 0;
        while let Some(&parent) = parent_of.get(&cursor) {
            if parent == pid {
                if let Ok(target) = i32::try_from(candidate) {
                    // SAFETY: kill(2) has no memory-safety preconditions;
                    // `target` descends from the runtime.
                    unsafe {
                        libc::kill(target, libc::SIGKILL);
                    }
                }
                break;
            }
            cursor = parent;
            hops += 1;
            if parent <= 1 || hops > 4096 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_stable_and_distinct() {
        assert_eq!(
            instance_name(Path::new("/nonexistent/a")),
            instance_name(Path::new("/nonexistent/a"))
        );
        assert_ne!(
            instance_name(Path::new("/nonexistent/a")),
            instance_name(Path::new("/nonexistent/b"))
        );
    }
}
