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

/// The agents `esb up` uses (its compute nodes), kept until shutdown.
pub struct AgentHandle {
    child: Option<tokio::process::Child>,
    /// Every node's agent, first the one builds go to first.
    agents: Vec<(String, esb_agent_client::AgentBackend)>,
    /// Given `--agent URL`s: the nodes, monitored (lost, regained).
    nodes: Option<Arc<esb_agent_client::NodeSet>>,
    /// The local agent's engine is containerd (`esb up --runtime containerd`).
    engine_containerd: bool,
}

impl AgentHandle {
    /// The backend for the pool: the one agent, or the node set.
    pub fn backend(&self) -> Arc<dyn RuntimeBackend> {
        match &self.nodes {
            Some(nodes) => nodes.clone(),
            None => Arc::new(self.agents[0].1.clone()),
        }
    }

    /// The first agent's client (image builds of the build commands).
    pub fn agent(&self) -> &esb_agent_client::AgentBackend {
        &self.agents[0].1
    }

    /// Every node's agent client with its URL (`esb up` has each build the
    /// images its workers need: images reach a node through its agent).
    pub fn agents(&self) -> &[(String, esb_agent_client::AgentBackend)] {
        &self.agents
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

/// The word in `--agent` that makes the local engine one of the nodes.
pub const LOCAL_NODE: &str = "local";

/// Connects to the agents in `agent_urls` (`--agent URL[,URL...]`; the
/// word `local` adds a local `esb agent` child as one more node), or, when
/// none is given, starts a local `esb agent` child bound to a loopback
/// port and connects to it. Several nodes, or any remote one, are
/// monitored as an [`esb_agent_client::NodeSet`].
pub async fn start_agent(
    settings: &Settings,
    data_dir: &Path,
    agent_urls: &[String],
) -> anyhow::Result<AgentHandle> {
    let remote: Vec<&str> = agent_urls
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty() && *u != LOCAL_NODE)
        .collect();
    let with_local = remote.is_empty() || agent_urls.iter().any(|u| u.trim() == LOCAL_NODE);
    let mut handle = AgentHandle {
        child: None,
        agents: Vec::new(),
        nodes: None,
        engine_containerd: false,
    };
    if with_local {
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
        if settings.runtime == esb_config::RuntimeKind::Containerd {
            // The same agent with containerd as its engine (docs/containerd.md);
            // `ESB_CONTAINERD_ADDRESS` reaches it through the environment.
            args.extend(["--engine".into(), "containerd".into()]);
        }
        // The local agent's token lives in the data directory (0600).
        let token = AgentToken::load_or_create(&data_dir.join(TOKEN_FILE))?;
        let local = connect_or_spawn(None, args, token).await?;
        handle.child = local.child;
        handle.engine_containerd = local.engine_containerd;
        handle.agents.extend(local.agents);
    }
    if !remote.is_empty() {
        let token = remote_token(Some(data_dir))?;
        for url in &remote {
            let agent = connect_or_spawn(Some(url), Vec::new(), token.clone()).await?;
            handle.agents.extend(agent.agents);
        }
        let nodes = handle
            .agents
            .iter()
            .map(|(url, agent)| esb_agent_client::Node::new(url.clone(), agent.clone()))
            .collect();
        handle.nodes = Some(Arc::new(esb_agent_client::NodeSet::new(nodes)));
        if remote.iter().any(|url| !is_loopback_url(url)) {
            warn_unreachable_endpoints(settings);
        }
    }
    Ok(handle)
}

/// Whether an agent URL names this host's loopback (`http://127.0.0.1:7443`,
/// `http://localhost:7443`): its workers can use loopback endpoints.
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Workers on another host reach the gateway, S3 and DynamoDB at the
/// addresses they listen on: loopback ones only work for a local node.
fn warn_unreachable_endpoints(settings: &Settings) {
    let loopback: Vec<String> = [
        ("--listen", Some(settings.listen)),
        (
            "--s3-listen",
            (settings.s3_enabled && settings.s3_endpoint.is_none()).then_some(settings.s3_listen),
        ),
        (
            "--dynamodb-listen",
            (settings.dynamodb_enabled && settings.dynamodb_endpoint.is_none())
                .then_some(settings.dynamodb_listen),
        ),
    ]
    .into_iter()
    .filter_map(|(flag, addr)| {
        addr.filter(|a| a.ip().is_loopback() || a.ip().is_unspecified())
            .map(|a| format!("{flag} {a}"))
    })
    .collect();
    if !loopback.is_empty() {
        eprintln!(
            "warning: workers on a remote node cannot reach loopback endpoints ({}): give esb up an address of this host the nodes reach (see docs/docker.md, \"Remote compute nodes\")",
            loopback.join(", ")
        );
    }
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
    for (index, (url, agent)) in handle.agents.iter().enumerate() {
        // A local agent child shares our standard error and prints the
        // output live; a remote one's output only arrives at the end.
        let local = index == 0 && handle.child.is_some();
        let on = if local {
            String::new()
        } else {
            format!(" on {url}")
        };
        let containerd = local && handle.engine_containerd;
        ensure_base_images_on(app, agent, local, containerd, &on).await?;
    }
    Ok(())
}

async fn ensure_base_images_on(
    app: &esb_template::AppModel,
    agent: &esb_agent_client::AgentBackend,
    local: bool,
    containerd: bool,
    on: &str,
) -> anyhow::Result<()> {
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
                            "  ... still building the {runtime} base image{on} ({}s)",
                            started.elapsed().as_secs()
                        );
                    } else {
                        announced = true;
                        eprintln!(
                            "building the {runtime} base image{on} on first use (debootstrap of a minimal Debian: a few minutes)"
                        );
                    }
                }
            }
        };
        let (built, output) = match result {
            Ok(answer) => answer,
            // containerd without a Docker engine cannot build: the image
            // may already be in its namespace (the first start says if not).
            Err(e) if containerd => {
                eprintln!(
                    "warning: cannot build the {runtime} base image through this agent ({e}); using what the containerd namespace has"
                );
                continue;
            }
            Err(e) => {
                return Err(anyhow::Error::from(e).context(format!(
                    "cannot build the {runtime} base image{on} (try `esb images build {runtime}`)"
                )));
            }
        };
        if built {
            if !local {
                for line in &output {
                    eprintln!("  {line}");
                }
            }
            eprintln!(
                "built the {runtime} base image{on} in {}",
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
            agents: vec![(url.to_string(), backend)],
            nodes: None,
            engine_containerd: false,
        });
    }
    let engine_containerd = agent_args.iter().any(|a| a == "containerd");
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
            "the container runtime's agent did not start ({}); is a Docker daemon (or, for --runtime containerd, containerd) running (see docs/docker.md, docs/containerd.md)?",
            status.map_or("no status".to_string(), |s| s.to_string())
        );
    };
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = format!("http://{addr}");
    let backend = esb_agent_client::AgentBackend::connect_with_token(
        &url,
        Duration::from_secs(10),
        Some(token),
    )
    .await?;
    Ok(AgentHandle {
        child: Some(child),
        agents: vec![(url, backend)],
        nodes: None,
        engine_containerd,
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
    fn loopback_agent_urls_are_told_apart() {
        assert!(is_loopback_url("http://127.0.0.1:7443"));
        assert!(is_loopback_url("http://localhost:7443/"));
        assert!(is_loopback_url("http://[::1]:7443"));
        assert!(!is_loopback_url("http://10.0.0.2:7443"));
        assert!(!is_loopback_url("http://node-1:7443"));
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
