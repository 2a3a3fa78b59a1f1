//! The runtime process: spawning it from a [`LaunchPlan`] with a clean
//! environment in its own process group, reaping it, killing its group, and
//! reading its peak memory.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use esb_runtimes_core::launch::LaunchPlan;
use tokio::net::unix::pipe;
use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::containment;
use crate::rendezvous::Shared;

/// A started runtime process and its output pipes.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) stdout: Option<pipe::Receiver>,
    pub(crate) stderr: Option<pipe::Receiver>,
}

/// Starts `plan.program` with exactly `env`, stdin closed and stdout/stderr
/// piped, leading a new process group.
pub(crate) fn spawn(
    plan: &LaunchPlan,
    env: Vec<(String, String)>,
    worker_id: &str,
    memory_mb: u64,
    sandbox: Option<crate::sandbox::Hook>,
) -> std::io::Result<Spawned> {
    let contained = containment::prepare(worker_id, memory_mb);
    let mut command = tokio::process::Command::new(&plan.program);
    command
        .args(&plan.args)
        .env_clear()
        .envs(env)
        .current_dir(&plan.working_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let join_cgroup = contained.hook();
    add_pre_exec(&mut command, move || {
        join_cgroup()?;
        match &sandbox {
            Some(enter) => enter(),
            None => Ok(()),
        }
    });
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            contained.discard();
            let message = format!("{}: {error}", plan.program.display());
            return Err(std::io::Error::new(error.kind(), message));
        }
    };
    let pid = child.id().unwrap_or(0);
    contained.register(pid);
    let stdout = child
        .stdout
        .take()
        .and_then(|s| s.into_owned_fd().ok())
        .and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok());
    let stderr = child
        .stderr
        .take()
        .and_then(|s| s.into_owned_fd().ok())
        .and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok());
    Ok(Spawned {
        child,
        pid,
        stdout,
        stderr,
    })
}

/// Waits for the runtime's exit in a task: marks the worker dead, kills
/// what is left of its process group and publishes the exit status.
pub(crate) fn spawn_reaper(
    mut child: Child,
    pid: u32,
    shared: Arc<Shared>,
    alive: Arc<AtomicBool>,
    exit_tx: watch::Sender<Option<ExitStatus>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let status = child.wait().await;
        alive.store(false, Ordering::SeqCst);
        shared.mark_dead();
        // Descendants in the group go with the leader.
        kill_process_group(pid);
        let status = status.unwrap_or_else(|_| ExitStatus::from_raw(0x7f00));
        let _ = exit_tx.send(Some(status));
    })
}

/// Go-style text for an exit status (`exit status 1`, `signal: killed`),
/// as Lambda prints it.
pub fn describe_exit(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(libc::SIGKILL) => "signal: killed".to_string(),
        Some(libc::SIGSEGV) => "signal: segmentation fault".to_string(),
        Some(libc::SIGABRT) => "signal: aborted".to_string(),
        Some(libc::SIGTERM) => "signal: terminated".to_string(),
        Some(libc::SIGINT) => "signal: interrupt".to_string(),
        Some(libc::SIGBUS) => "signal: bus error".to_string(),
        Some(signal) => format!("signal: {signal}"),
        None => "exited without providing a reason".to_string(),
    }
}

#[allow(unsafe_code)]
fn add_pre_exec(
    command: &mut tokio::process::Command,
    hook: impl Fn() -> std::io::Result<()> + Send + Sync + 'static,
) {
    // SAFETY: the hook only makes async-signal-safe calls (open, write,
    // close, setrlimit; the sandbox's namespace, mount and credential
    // calls) on memory allocated before fork; see
    // `containment::Prepared::hook` and `sandbox::Prepared::hook`.
    unsafe {
        command.pre_exec(hook);
    }
}

/// Kills the runtime's process group and everything it started (its
/// cgroup, or its descendants where there are no cgroups).
#[allow(unsafe_code)]
pub(crate) fn kill_process_group(pgid: u32) {
    containment::kill_tree(pgid);
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions. The negative id
    // names the process group the runtime leads (spawned with
    // process_group(0)), so only the runtime and its descendants are hit.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// The runtime's `/proc/<pid>/status`, opened once and re-read from the
/// start for each REPORT line (`pread`: no open/close per invocation, and
/// it keeps naming that process even if the pid is reused).
pub(crate) struct ProcStatus {
    pid: u32,
    file: Option<std::fs::File>,
    /// In the sandbox: the worker's cgroup peak-memory file, opened at the
    /// first REPORT that finds the group (set once, never reset).
    cgroup: std::sync::OnceLock<std::fs::File>,
}

impl ProcStatus {
    pub(crate) fn open(pid: u32) -> Self {
        Self {
            pid,
            file: std::fs::File::open(format!("/proc/{pid}/status")).ok(),
            cgroup: std::sync::OnceLock::new(),
        }
    }

    /// Peak resident set size (`VmHWM`) in MB, rounded up; in the sandbox
    /// the peak of the worker's cgroup.
    pub(crate) fn peak_rss_mb(&self) -> Option<u64> {
        if crate::sandbox::enabled()
            && let Some(mb) = self.cgroup_peak_mb()
        {
            return Some(mb);
        }
        let file = self.file.as_ref()?;
        let mut buf = [0u8; 4096];
        let len = read_whole(file, &mut buf);
        parse_vm_hwm_mb(&buf[..len])
    }

    fn cgroup_peak_mb(&self) -> Option<u64> {
        let file = match self.cgroup.get() {
            Some(file) => file,
            None => {
                let file = containment::open_peak(self.pid)?;
                self.cgroup.get_or_init(|| file)
            }
        };
        let mut buf = [0u8; 32];
        let len = read_whole(file, &mut buf);
        let bytes: u64 = std::str::from_utf8(&buf[..len]).ok()?.trim().parse().ok()?;
        Some(bytes.div_ceil(1024 * 1024))
    }
}

/// Reads a `/proc` or cgroup file from its start into `buf` with `pread`;
/// returns the length read.
fn read_whole(file: &std::fs::File, buf: &mut [u8]) -> usize {
    use std::os::unix::fs::FileExt;
    let mut len = 0;
    while len < buf.len() {
        // Such a file is generated whole on the first read: a short read
        // is the end (no second call to learn that).
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) if len + n < buf.len() => {
                len += n;
                break;
            }
            Ok(n) => len += n,
        }
    }
    len
}

fn parse_vm_hwm_mb(status: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(status).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb.div_ceil(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_descriptions_match_lambda() {
        assert_eq!(
            describe_exit(&ExitStatus::from_raw(1 << 8)),
            "exit status 1"
        );
        assert_eq!(
            describe_exit(&ExitStatus::from_raw(libc::SIGKILL)),
            "signal: killed"
        );
    }

    #[test]
    fn peak_rss_of_self_is_positive() {
        let status = ProcStatus::open(std::process::id());
        assert!(status.peak_rss_mb().is_some_and(|mb| mb > 0));
        assert_eq!(status.peak_rss_mb(), status.peak_rss_mb());
    }
}
