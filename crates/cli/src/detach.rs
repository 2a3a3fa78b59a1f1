//! `esb up --detach` and `esb down`: run `esb up` in the background with its
//! output in `<data_dir>/esb.log` (0600, never a secret in it), and stop it
//! again through the instance file it writes.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use esb_app::Instance;
use esb_app::instance::{DataDirLock, INSTANCE_FILE, LOG_FILE};
use esb_config::Settings;

use crate::settings::DataDirArgs;

/// Starts this same `esb up` command without `--detach` in the background
/// and returns once it is serving (its instance file appears). Refuses,
/// touching nothing, when an `esb up` already owns the data directory.
pub fn spawn(settings: &Settings) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let data_dir = esb_app::files::create_private_dir(&settings.data_dir)?;
    if DataDirLock::is_held(&data_dir)? {
        let pid = Instance::read(&data_dir).ok().map(|i| i.pid);
        return Err(esb_app::AppError::AlreadyRunning { pid, data_dir }.into());
    }
    // Nobody runs here: what is left is stale.
    let _ = std::fs::remove_file(data_dir.join(INSTANCE_FILE));
    let log_path = data_dir.join(LOG_FILE);
    let _ = std::fs::remove_file(&log_path);
    let log = esb_app::files::open_private_log(&log_path)?;
    let creds_path = data_dir.join(esb_auth::CREDENTIALS_FILE);
    let had_credentials = creds_path.exists();
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    args.push("--detached-child".into());
    let exe = std::env::current_exe().context("cannot find the esb executable")?;
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
        if let Ok(instance) = Instance::read(&data_dir)
            && instance.pid == child.id()
        {
            if !had_credentials {
                print_generated(settings, &creds_path);
            }
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

/// Shows the credentials the background server generated on this terminal
/// once (its log file never has them).
fn print_generated(settings: &Settings, path: &Path) {
    let Some(creds) = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<esb_auth::Credentials>(&b).ok())
    else {
        return;
    };
    if settings.api_keys.is_empty() {
        println!(
            "API key (x-api-key, stored in {}): {}",
            path.display(),
            creds.api_key
        );
    }
    if settings.access_key_id.is_none() {
        println!(
            "generated credentials (stored in {}, shown only this once):",
            path.display()
        );
        println!("  AWS_ACCESS_KEY_ID={}", creds.aws_access_key_id);
        println!("  AWS_SECRET_ACCESS_KEY={}", creds.aws_secret_access_key);
    }
}

/// Arguments of `esb down`.
#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub dir: DataDirArgs,
}

/// Sends SIGTERM to the `esb up` recorded in the data directory and waits
/// (up to a minute) until it has drained and exited.
pub fn down(args: &DownArgs) -> anyhow::Result<ExitCode> {
    let settings = args.dir.settings(Default::default())?;
    let instance = Instance::read(&settings.data_dir)?;
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
