//! `esb agent` and the agent the other commands use: `esb up --runtime
//! docker`, `esb build` and `esb images build` never open the engine socket;
//! each starts a local `esb agent` child (or uses `--agent URL`) and talks
//! to it through [`esb_agent_client::AgentBackend`]. Only the hidden `esb
//! agent` subcommand links the engine API (`esb-agent`).

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use esb_agent_client::AgentToken;
use esb_agent_client::auth::{TOKEN_FILE, TOKEN_FILE_ENV};
use esb_config::{PythonBootstrap, Settings};
use esb_runtimes_core::RuntimeBackend;
use tokio::io::AsyncBufReadExt;

/// Runs `esb agent`.
pub async fn run_agent(args: &esb_agent::AgentArgs) -> anyhow::Result<ExitCode> {
    crate::settings::init_logging("info");
    esb_agent::run(args).await?;
    Ok(ExitCode::SUCCESS)
}

/// The agent `esb up` uses, kept until shutdown.
pub struct AgentHandle {
    child: Option<tokio::process::Child>,
    backend: esb_agent_client::AgentBackend,
}

impl AgentHandle {
    /// The backend for the pool.
    pub fn backend(&self) -> Arc<dyn RuntimeBackend> {
        Arc::new(self.backend.clone())
    }

    /// The agent client (image builds).
    pub fn agent(&self) -> &esb_agent_client::AgentBackend {
        &self.backend
    }

    /// Stops the local agent (workers were already destroyed by the pool);
    /// an agent given by `--agent` keeps running.
    pub async fn shutdown(mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Some(pid) = child.id() {
                // SIGTERM lets it finish in-flight calls.
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
}

/// A stable instance id for a data directory: containers and the network
/// carry it, so a restarted agent finds its own workers.
pub fn instance_id(data_dir: &Path) -> String {
    // FNV-1a: stable across builds, no dependency needed.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in data_dir.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")[..12].to_string()
}

fn bootstrap_name(mode: PythonBootstrap) -> &'static str {
    match mode {
        PythonBootstrap::Auto => "auto",
        PythonBootstrap::Builtin => "builtin",
        PythonBootstrap::Awslambdaric => "awslambdaric",
    }
}

/// Connects to `agent_url`, or starts a local `esb agent` child bound to a
/// loopback port and connects to it.
pub async fn start_agent(
    settings: &Settings,
    data_dir: &Path,
    agent_url: Option<&str>,
) -> anyhow::Result<AgentHandle> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--instance".into(),
        instance_id(data_dir).into(),
        "--idle-timeout".into(),
        format!("{}ms", settings.idle_timeout.as_millis()).into(),
        "--python-bootstrap".into(),
        bootstrap_name(settings.python_bootstrap).into(),
        "--cache-dir".into(),
        data_dir.join("runtime").into(),
    ];
    if agent_url.is_some() {
        args.clear();
        return connect_or_spawn(agent_url, args, remote_token(Some(data_dir))?).await;
    }
    // The local agent's token lives in the data directory (0600).
    let token = AgentToken::load_or_create(&data_dir.join(TOKEN_FILE))?;
    connect_or_spawn(agent_url, args, token).await
}

/// The token of an agent given by URL: `ESB_AGENT_TOKEN_FILE`, else
/// `<data-dir>/agent.token`, else the file a standalone `esb agent` on
/// this host creates (`<cache-dir>/agent.token`).
fn remote_token(data_dir: Option<&Path>) -> anyhow::Result<AgentToken> {
    if let Some(file) = std::env::var_os(TOKEN_FILE_ENV) {
        return Ok(AgentToken::load(Path::new(&file))?);
    }
    let candidates = data_dir
        .map(|d| d.join(TOKEN_FILE))
        .into_iter()
        .chain(std::iter::once(
            esb_runtimes_core::launch::default_cache_dir().join(TOKEN_FILE),
        ));
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(AgentToken::load(&candidate)?);
        }
    }
    anyhow::bail!(
        "the agent's port needs its token: copy the agent's token file (its --token-file, default <cache-dir>/agent.token) to <data-dir>/{TOKEN_FILE} or name it in {TOKEN_FILE_ENV}"
    )
}

/// The base image runtime (`esb images build RUNTIME`) each zip function
/// of `app` runs on: `python3.13` on its own image (Debian trixie), other
/// `python3.x` on the Python 3.11 image (bookworm), `nodejs18.x` /
/// `nodejs20.x` on Debian's Node.js, `provided*` on the minimal root.
pub fn base_runtimes(app: &esb_template::AppModel) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for f in &app.functions {
        if matches!(f.code, esb_template::FunctionCode::Image { .. }) {
            continue;
        }
        let Some(runtime) = f.runtime.as_deref() else {
            continue;
        };
        // Keep in step with esb_runtimes_docker::base_image::base_name_for_function
        // (this crate must not link the docker crate).
        let base = match runtime {
            "python3.13" => "python3.13",
            r if r.starts_with("python3") => "python3.11",
            "nodejs18.x" => "nodejs18.x",
            "nodejs20.x" => "nodejs20.x",
            r if r == "provided" || r.starts_with("provided.") => "provided",
            _ => continue,
        };
        if !out.contains(&base) {
            out.push(base);
        }
    }
    out
}

/// `esb up --runtime docker`: has the agent build the base images the
/// app's functions need and that are missing (or predate the SDK pins),
/// before any worker starts. A local agent shows the build's progress on
/// standard error as it goes; this prints what it is doing and how long it
/// took.
pub async fn ensure_base_images(
    app: &esb_template::AppModel,
    handle: &AgentHandle,
) -> anyhow::Result<()> {
    let agent = handle.agent();
    for runtime in base_runtimes(app) {
        let started = std::time::Instant::now();
        let call = agent.build_base_image(runtime, false);
        tokio::pin!(call);
        // Say something only when it is really building (an existing image
        // answers at once).
        let mut announced = false;
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(2),
            Duration::from_secs(30),
        );
        let result = loop {
            tokio::select! {
                result = &mut call => break result,
                _ = tick.tick() => {
                    if announced {
                        eprintln!(
                            "  ... still building the {runtime} base image ({}s)",
                            started.elapsed().as_secs()
                        );
                    } else {
                        announced = true;
                        eprintln!(
                            "building the {runtime} base image on first use (debootstrap of a minimal Debian: a few minutes)"
                        );
                    }
                }
            }
        };
        let (built, output) = result.with_context(|| {
            format!("cannot build the {runtime} base image (try `esb images build {runtime}`)")
        })?;
        if built {
            // A local agent child shares our standard error and printed
            // the output live; a remote one's output only arrives now.
            if handle.child.is_none() {
                for line in &output {
                    eprintln!("  {line}");
                }
            }
            eprintln!(
                "built the {runtime} base image in {}",
                format_elapsed(started.elapsed())
            );
        }
    }
    Ok(())
}

/// `3m12s`, `41.2s`.
pub fn format_elapsed(elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", elapsed.as_secs_f64())
    }
}

/// The agent for a build command (`esb build`, `esb images build`):
/// `agent_url`, or a local builds-only `esb agent` child (no supervisor
/// binary needed, no workers).
pub async fn start_build_agent(agent_url: Option<&str>) -> anyhow::Result<AgentHandle> {
    // A builds-only child lives for one command: a fresh token.
    let token = match agent_url {
        Some(_) => remote_token(None)?,
        None => AgentToken::generate(),
    };
    connect_or_spawn(
        agent_url,
        vec!["--instance".into(), "build".into(), "--builds-only".into()],
        token,
    )
    .await
}

async fn connect_or_spawn(
    agent_url: Option<&str>,
    agent_args: Vec<std::ffi::OsString>,
    token: AgentToken,
) -> anyhow::Result<AgentHandle> {
    if let Some(url) = agent_url {
        let backend = esb_agent_client::AgentBackend::connect_with_token(
            url,
            Duration::from_secs(10),
            Some(token),
        )
        .await?;
        let health = backend.health().await?;
        eprintln!(
            "using agent {url} (instance {}, {} workers)",
            health.instance, health.workers
        );
        return Ok(AgentHandle {
            child: None,
            backend,
        });
    }
    let exe = std::env::current_exe().context("cannot find the esb executable")?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("agent")
        .args(["--listen", "127.0.0.1:0"])
        .args(["--parent-pid", &std::process::id().to_string()])
        .args(agent_args)
        // In the environment, not on the command line (`ps` shows that).
        .env(esb_agent::CHILD_TOKEN_ENV, token.expose())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command.spawn().context("cannot start esb agent")?;
    let stdout = child
        .stdout
        .take()
        .context("esb agent has no standard output")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("esb agent listening on ") {
                return Some(addr.trim().to_string());
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    let Some(addr) = addr else {
        let status = child.wait().await.ok();
        anyhow::bail!(
            "the docker runtime's agent did not start ({}); is a Docker daemon running (see docs/docker.md)?",
            status.map_or("no status".to_string(), |s| s.to_string())
        );
    };
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let backend = esb_agent_client::AgentBackend::connect_with_token(
        &format!("http://{addr}"),
        Duration::from_secs(10),
        Some(token),
    )
    .await?;
    Ok(AgentHandle {
        child: Some(child),
        backend,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_functions_need_their_pythons_base_image() {
        let dir = std::env::temp_dir().join(format!("esb-base-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("template.yaml");
        std::fs::write(
            &path,
            r#"
Transform: AWS::Serverless-2016-10-31
Resources:
  A:
    Type: AWS::Serverless::Function
    Properties: {Runtime: python3.12, Handler: app.handler, CodeUri: .}
  B:
    Type: AWS::Serverless::Function
    Properties: {Runtime: python3.13, Handler: app.handler, CodeUri: .}
  C:
    Type: AWS::Serverless::Function
    Properties: {Runtime: provided.al2023, Handler: bootstrap, CodeUri: .}
  D:
    Type: AWS::Serverless::Function
    Properties: {Runtime: nodejs20.x, Handler: app.handler, CodeUri: .}
"#,
        )
        .unwrap();
        let app = esb_template::load(&path, &esb_template::ResolveOptions::default())
            .unwrap()
            .app;
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            base_runtimes(&app),
            vec!["python3.11", "python3.13", "provided", "nodejs20.x"]
        );
    }

    #[test]
    fn elapsed_reads_like_a_person_would_write_it() {
        assert_eq!(format_elapsed(Duration::from_millis(41_230)), "41.2s");
        assert_eq!(format_elapsed(Duration::from_secs(192)), "3m12s");
    }

    #[test]
    fn instance_id_is_stable_and_short() {
        let a = instance_id(Path::new("/srv/a"));
        assert_eq!(a, instance_id(Path::new("/srv/a")));
        assert_ne!(a, instance_id(Path::new("/srv/b")));
        assert_eq!(a.len(), 12);
    }
}
