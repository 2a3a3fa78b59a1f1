//! `esb up --detach` and `esb down`: run `esb up` in the background with its
//! output in `<data_dir>/esb.log`, and stop it again through the instance
//! file it writes.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::up::Instance;

/// Starts this same `esb up` command without `--detach` in the background
/// and returns once it is serving (its instance file appears).
pub fn spawn(data_dir: &Path) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let log_path = data_dir.join("esb.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot write {}", log_path.display()))?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    let exe = std::env::current_exe().context("cannot find the esb executable")?;
    let _ = std::fs::remove_file(data_dir.join("instance.json"));
    let mut child = std::process::Command::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in this terminal does not reach it.
        .process_group(0)
        .spawn()
        .context("cannot start esb up in the background")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(instance) = Instance::read(data_dir) {
            println!(
                "esb is up at {} (pid {}, log {}); stop it with `esb down --data-dir {}`",
                instance.url,
                instance.pid,
                log_path.display(),
                data_dir.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            eprint!("{log}");
            anyhow::bail!("esb up exited ({status}) before it was ready; log above");
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "esb up did not become ready in 120 s; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Arguments of `esb down`.
#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// Data directory of the running `esb up` (default: .esb).
    #[arg(long = "data-dir", value_name = "DIR", default_value = ".esb")]
    pub data_dir: PathBuf,
}

/// Sends SIGTERM to the `esb up` recorded in the data directory and waits
/// (up to a minute) until it has drained and exited.
pub fn down(args: &DownArgs) -> anyhow::Result<ExitCode> {
    let instance = Instance::read(&args.data_dir)?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &instance.pid.to_string()])
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        anyhow::bail!("could not signal esb up (pid {})", instance.pid);
    }
    let proc_dir = PathBuf::from(format!("/proc/{}", instance.pid));
    let deadline = Instant::now() + Duration::from_secs(60);
    while proc_dir.exists() && !is_zombie(&proc_dir) {
        if Instant::now() > deadline {
            anyhow::bail!("esb up (pid {}) is still running after 60 s", instance.pid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("esb up (pid {}) stopped", instance.pid);
    Ok(ExitCode::SUCCESS)
}

fn is_zombie(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}
