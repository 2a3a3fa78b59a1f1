//! The container of one worker: its image, launch plan (from the one
//! planner in `esb_runtimes_core::launch`), mounts, environment, labels and
//! hardening (read-only root, all capabilities dropped, no new privileges,
//! memory and pid limits, a size-limited `/tmp`, the instance network), and
//! starting it until its runtime is ready.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bollard::models::{ContainerCreateBody, HostConfig};
use esb_container_supervisor::wire::{ContainerConfig, Forward, FunctionConfig, LaunchConfig};
use esb_runtimes_core::launch::{self, LaunchTarget, PlannedLaunch, PythonRuntime};
use esb_runtimes_core::{FunctionSpec, RuntimeError};

use crate::engine::ImageFacts;
use crate::network::NetworkInfo;
use crate::{
    ContainerInfo, DockerOptions, Entry, Inner, LABEL_CODE_HASH, LABEL_FUNCTION, LABEL_INSTANCE,
    LABEL_PORT, LABEL_WORKER, backend_error, lock,
};

/// Where ESB's built-in runtime files are mounted.
const RUNTIME_FILES: &str = "/esb/runtime";
/// Where the gateway's CA certificate is mounted.
const CA_PATH: &str = "/esb/ca.pem";
/// The user of ESB's base images (uid/gid 993:990, like AWS's
/// `sbx_user1051`).
const ESB_IMAGE_USER: &str = "993:990";

/// The image a function runs in.
pub(crate) fn image_for(
    options: &DockerOptions,
    spec: &FunctionSpec,
) -> Result<String, RuntimeError> {
    if let Some(image) = &spec.image {
        return Ok(image.clone());
    }
    if let Some(image) = options.images.get(&spec.runtime) {
        return Ok(image.clone());
    }
    if let Some((repo, tag)) = crate::base_image::base_name_for_function(&spec.runtime)
        .and_then(crate::base_image::image_for_runtime)
    {
        return Ok(format!("{repo}:{tag}"));
    }
    Err(RuntimeError::UnsupportedRuntime {
        function: spec.name.clone(),
        runtime: spec.runtime.clone(),
        backend: "docker",
    })
}

/// The sandbox as the planner needs to see it: container paths, the
/// image's `python3` and whether it has awslambdaric.
pub(crate) fn launch_target(options: &DockerOptions, facts: &ImageFacts) -> LaunchTarget {
    LaunchTarget {
        backend: "docker",
        python: Some(PythonRuntime {
            program: PathBuf::from("python3"),
            has_awslambdaric: facts.awslambdaric,
        }),
        python_bootstrap: options.python_bootstrap,
        runtime_files: PathBuf::from(RUNTIME_FILES),
        task_root: PathBuf::from(esb_container_supervisor::TASK_ROOT),
        image: Some(facts.config.clone()),
    }
}

/// How a zip `nodejsNN.x` function starts in a container: the image's
/// `node` (Debian's, of the function's major version) running ESB's
/// built-in bootstrap (mounted with the runtime files), or AWS's
/// `aws-lambda-ric` when the function's `node_modules` has it, as the
/// process runtime chooses. The core planner knows only the host's Node.js
/// binaries, so the container's plan is made here.
pub(crate) fn plan_node(
    options: &DockerOptions,
    spec: &FunctionSpec,
) -> Result<PlannedLaunch, RuntimeError> {
    let task_root = Path::new(esb_container_supervisor::TASK_ROOT);
    let handler = spec.handler.clone().unwrap_or_default();
    let ric = match options.node_bootstrap {
        launch::NodeBootstrap::Builtin => None,
        launch::NodeBootstrap::Auto => launch::find_node_ric(&spec.code_dir),
        launch::NodeBootstrap::AwsLambdaRic => {
            Some(launch::find_node_ric(&spec.code_dir).ok_or_else(|| {
                RuntimeError::Backend(format!(
                    "function {}: aws-lambda-ric is not installed in {}/node_modules (npm install aws-lambda-ric)",
                    spec.name,
                    spec.code_dir.display()
                ))
            })?)
        }
    };
    let (script, description) = match ric
        .as_deref()
        .and_then(|p| p.strip_prefix(&spec.code_dir).ok())
    {
        Some(relative) => (task_root.join(relative), "node + aws-lambda-ric"),
        None => (
            Path::new(RUNTIME_FILES)
                .join("node-bootstrap")
                .join("esb_bootstrap.mjs"),
            "node + esb built-in bootstrap",
        ),
    };
    let mut env = Vec::new();
    // The AWS SDK for JavaScript does not read AWS_CA_BUNDLE; Node trusts
    // extra certificates from NODE_EXTRA_CA_CERTS (the CA is mounted).
    if spec.environment.contains_key("AWS_CA_BUNDLE")
        && !spec.environment.contains_key("NODE_EXTRA_CA_CERTS")
    {
        env.push(("NODE_EXTRA_CA_CERTS".to_string(), CA_PATH.to_string()));
    }
    Ok(PlannedLaunch {
        plan: esb_runtimes_core::launch::LaunchPlan {
            program: PathBuf::from("node"),
            args: vec![script.to_string_lossy().into_owned(), handler],
            env,
            working_dir: task_root.to_path_buf(),
            execution_env: Some(format!("AWS_Lambda_{}", spec.runtime)),
            description: description.to_string(),
        },
        handler: spec.handler.clone(),
    })
}

/// The supervisor's form of a plan.
fn launch_config(planned: &PlannedLaunch) -> LaunchConfig {
    let plan = &planned.plan;
    LaunchConfig {
        program: plan.program.to_string_lossy().into_owned(),
        args: plan.args.clone(),
        env: plan.env.clone(),
        working_dir: plan.working_dir.to_string_lossy().into_owned(),
        execution_env: plan.execution_env.clone(),
    }
}

/// The per-worker parts of a container's create request.
pub(crate) struct ContainerParts<'a> {
    pub(crate) image: &'a str,
    pub(crate) facts: &'a ImageFacts,
    pub(crate) network: &'a NetworkInfo,
    pub(crate) worker_id: &'a str,
    /// The supervisor's configuration (JSON), passed in its variable.
    pub(crate) config_json: &'a str,
    pub(crate) binds: Vec<String>,
    pub(crate) extra_hosts: Vec<String>,
    /// `HostConfig.CgroupParent` ([`crate::Engine::worker_cgroup_parent`]).
    pub(crate) cgroup_parent: Option<String>,
}

/// The create request of a worker's container: everything that makes it
/// safe to run untrusted code.
pub(crate) fn container_body(
    options: &DockerOptions,
    spec: &FunctionSpec,
    parts: ContainerParts<'_>,
) -> ContainerCreateBody {
    let ContainerParts {
        image,
        facts,
        network,
        worker_id,
        config_json,
        binds,
        extra_hosts,
        cgroup_parent,
    } = parts;
    let labels = HashMap::from([
        (LABEL_INSTANCE.to_string(), options.instance.clone()),
        (LABEL_FUNCTION.to_string(), spec.name.clone()),
        (LABEL_WORKER.to_string(), worker_id.to_string()),
        (LABEL_CODE_HASH.to_string(), spec.code_hash.clone()),
        (LABEL_PORT.to_string(), options.supervisor_port.to_string()),
    ]);
    let memory = i64::from(spec.memory_mb.max(16)) * 1024 * 1024;
    let host_config = HostConfig {
        binds: Some(binds),
        memory: Some(memory),
        memory_swap: Some(memory),
        pids_limit: Some(options.pids_limit),
        cpu_shares: Some(options.cpu_shares),
        security_opt: Some(vec!["no-new-privileges".to_string()]),
        cap_drop: Some(vec!["ALL".to_string()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_string(),
            format!(
                "rw,exec,nosuid,nodev,size={}m,mode=1777",
                options.tmp_size_mb
            ),
        )])),
        network_mode: Some(network.name.clone()),
        extra_hosts: Some(extra_hosts),
        cgroup_parent,
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(options.supervisor.entrypoint()),
        cmd: Some(Vec::new()),
        env: Some(vec![format!(
            "{}={config_json}",
            esb_container_supervisor::CONFIG_ENV
        )]),
        labels: Some(labels),
        // ESB's images have an unprivileged user; other images keep
        // theirs (AWS base images run as root and expect it).
        user: facts.esb_image.then(|| ESB_IMAGE_USER.to_string()),
        working_dir: Some(
            facts
                .config
                .working_dir
                .clone()
                .unwrap_or_else(|| esb_container_supervisor::TASK_ROOT.to_string()),
        ),
        host_config: Some(host_config),
        ..Default::default()
    }
}

pub(crate) fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    cleaned.chars().take(40).collect()
}

/// Which service a `AWS_ENDPOINT_URL_*` variable names, as the original
/// system's logical host name.
fn service_alias(variable: &str) -> &'static str {
    match variable {
        "AWS_ENDPOINT_URL_S3" => "s3-storage",
        "AWS_ENDPOINT_URL_DYNAMODB" => "database",
        "AWS_ENDPOINT_URL_LAMBDA" => "esb-gateway",
        _ => "esb-host",
    }
}

/// Loopback endpoints in the function's environment: (variable, port).
pub(crate) fn loopback_endpoints(env: &BTreeMap<String, String>) -> Vec<(&'static str, u16)> {
    let mut out = Vec::new();
    for (k, v) in env {
        if !k.starts_with("AWS_ENDPOINT_URL") {
            continue;
        }
        let Some(rest) = v.split_once("://").map(|(_, r)| r) else {
            continue;
        };
        let authority = rest.split('/').next().unwrap_or("");
        let Some((host, port)) = authority.rsplit_once(':') else {
            continue;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !matches!(host, "127.0.0.1" | "localhost" | "::1") {
            continue;
        }
        if let Ok(port) = port.parse() {
            out.push((service_alias(k), port));
        }
    }
    // One relay per port: several services can share a listener (the
    // Invoke API and CloudWatch Logs both live on the gateway's port).
    out.sort_by_key(|&(alias, port)| (port, alias));
    out.dedup_by_key(|&mut (_, port)| port);
    out
}

/// A worker between its registration and the end of its start. When the
/// start is abandoned midway (the caller's future dropped: a cancelled
/// `EnsureWorker` call, a client gone), dropping this removes the worker's
/// entry and container: the janitor leaves starting workers to their
/// start, so nothing else would.
struct Starting {
    inner: Arc<Inner>,
    worker_id: String,
    done: bool,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let id = std::mem::take(&mut self.worker_id);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let inner = self.inner.clone();
                runtime.spawn(async move { inner.destroy(&id).await });
            }
            // No runtime left (shutting down): forget the entry; the
            // container is an unknown one for the next janitor or Sync.
            Err(_) => {
                lock(&self.inner.workers).remove(&id);
            }
        }
    }
}

impl Inner {
    /// The engine's answer, asked once.
    async fn cgroup_parent(&self) -> Option<String> {
        self.cgroup_parent
            .get_or_init(|| self.engine.worker_cgroup_parent())
            .await
            .clone()
    }

    async fn image_facts(&self, image: &str) -> Result<ImageFacts, RuntimeError> {
        if let Some(facts) = lock(&self.images).get(image) {
            return Ok(facts.clone());
        }
        let facts = self.engine.image_facts(image).await.map_err(|e| {
            backend_error(format!(
                "image {image} is not available ({e}); build it with `esb images build` or `esb build`"
            ))
        })?;
        lock(&self.images).insert(image.to_string(), facts.clone());
        Ok(facts)
    }

    /// Creates and starts a new container for `spec` and waits until its
    /// runtime finished init.
    pub(crate) async fn start_container(
        self: &Arc<Self>,
        spec: &FunctionSpec,
    ) -> Result<ContainerInfo, RuntimeError> {
        self.start_container_for(spec, true).await
    }

    /// Starts a container; `claimed: false` makes it a ready spare that the
    /// next [`crate::DockerBackend::ensure_worker`] of the same function
    /// and code hash hands out at once.
    pub(crate) async fn start_container_for(
        self: &Arc<Self>,
        spec: &FunctionSpec,
        claimed: bool,
    ) -> Result<ContainerInfo, RuntimeError> {
        let image = image_for(&self.options, spec)?;
        let facts = self.image_facts(&image).await?;
        let planned = if spec.image.is_none() && launch::node_major(&spec.runtime).is_some() {
            plan_node(&self.options, spec)?
        } else {
            launch::plan_for_target(spec, &launch_target(&self.options, &facts))?
        };
        let network = self.network().await?;
        let cache_dir = self.options.cache_dir.clone();
        tokio::task::spawn_blocking(move || {
            launch::write_python_files(&cache_dir)?;
            launch::write_node_files(&cache_dir).map(|_| ())
        })
        .await
        .map_err(backend_error)?
        .map_err(|source| RuntimeError::Spawn {
            function: spec.name.clone(),
            source,
        })?;

        let mut environment = spec.environment.clone();
        let mut binds = self.options.supervisor.binds();
        binds.push(format!(
            "{}:{RUNTIME_FILES}:ro",
            self.options.cache_dir.display()
        ));
        if spec.image.is_none() {
            binds.push(format!(
                "{}:{}:ro",
                spec.code_dir.display(),
                esb_container_supervisor::TASK_ROOT
            ));
        }
        if let Some(ca) = environment.get("AWS_CA_BUNDLE").cloned()
            && Path::new(&ca).is_file()
        {
            binds.push(format!("{ca}:{CA_PATH}:ro"));
            environment.insert("AWS_CA_BUNDLE".to_string(), CA_PATH.to_string());
        }
        let mut forwards = Vec::new();
        let extra_hosts = ["s3-storage", "database", "esb-gateway", "esb-host"]
            .iter()
            .map(|alias| format!("{alias}:{}", network.gateway))
            .collect();
        for (_alias, port) in loopback_endpoints(&environment) {
            self.relays.ensure(network.gateway, port);
            // The gateway address rather than the alias: the supervisor
            // then needs no name resolution (no NSS modules in the image).
            forwards.push(Forward {
                local_port: port,
                host: network.gateway.to_string(),
                port,
            });
        }

        let worker_id = uuid::Uuid::new_v4().simple().to_string();
        let mut function = FunctionConfig::from_spec(spec);
        function.environment = environment;
        function.handler = planned.handler.clone();
        let config = ContainerConfig {
            worker_id: worker_id.clone(),
            function,
            launch: launch_config(&planned),
            port: self.options.supervisor_port,
            forwards,
        };
        let config_json = serde_json::to_string(&config).map_err(backend_error)?;
        let body = container_body(
            &self.options,
            spec,
            ContainerParts {
                image: &image,
                facts: &facts,
                network: &network,
                worker_id: &worker_id,
                config_json: &config_json,
                binds,
                extra_hosts,
                cgroup_parent: self.cgroup_parent().await,
            },
        );
        let name = format!(
            "esb-{}-{}-{}",
            sanitize(&self.options.instance),
            sanitize(&spec.name).to_ascii_lowercase(),
            &worker_id[..8]
        );
        // Registered before the engine creates the container: the janitor
        // removes containers whose worker it does not know, and a sweep
        // between the create and this entry took a starting worker's
        // container (and snapshot) away under it. Port 0 marks "still
        // starting" for the janitor; the id is the name until the engine
        // answers.
        lock(&self.workers).insert(
            worker_id.clone(),
            Entry {
                info: ContainerInfo {
                    worker_id: worker_id.clone(),
                    container_id: name.clone(),
                    function: spec.name.clone(),
                    code_hash: spec.code_hash.clone(),
                    endpoint: SocketAddr::from(([0, 0, 0, 0], 0)),
                    adopted: false,
                    init_duration: None,
                },
                alive: Arc::new(AtomicBool::new(true)),
                // A spare is held (claimed) while it starts, released
                // below once ready.
                claimed: true,
            },
        );
        let mut starting = Starting {
            inner: self.clone(),
            worker_id: worker_id.clone(),
            done: false,
        };
        let container_id = match self.engine.create_container(&name, body).await {
            Ok(id) => id,
            Err(e) => {
                lock(&self.workers).remove(&worker_id);
                starting.done = true;
                return Err(backend_error(e));
            }
        };
        if let Some(entry) = lock(&self.workers).get_mut(&worker_id) {
            entry.info.container_id = container_id.clone();
        }
        let started = self.finish_start(spec, &worker_id, &container_id).await;
        starting.done = true;
        match started {
            Ok(info) => {
                if !claimed && let Some(entry) = lock(&self.workers).get_mut(&worker_id) {
                    entry.claimed = false;
                }
                Ok(info)
            }
            Err(e) => {
                self.destroy(&worker_id).await;
                Err(e)
            }
        }
    }

    async fn finish_start(
        self: &Arc<Self>,
        spec: &FunctionSpec,
        worker_id: &str,
        container_id: &str,
    ) -> Result<ContainerInfo, RuntimeError> {
        let ip = self
            .engine
            .start_container(container_id)
            .await
            .map_err(backend_error)?
            .ok_or_else(|| backend_error("container has no IP address"))?;
        let endpoint = SocketAddr::new(ip, self.options.supervisor_port);
        self.follow_logs(container_id, &spec.name, worker_id);
        let limit = self.options.start_timeout.max(spec.timeout);
        let init = match self.client.wait_ready(endpoint, limit).await {
            Ok(init) => init,
            Err(Ok(payload)) => {
                return Err(RuntimeError::Init {
                    function: spec.name.clone(),
                    payload,
                });
            }
            Err(Err(e)) => return Err(backend_error(e)),
        };
        let mut workers = lock(&self.workers);
        let entry = workers
            .get_mut(worker_id)
            .ok_or_else(|| backend_error("worker was removed while starting"))?;
        entry.info.endpoint = endpoint;
        entry.info.init_duration = init;
        Ok(entry.info.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_sharing_a_port_get_one_relay() {
        let env = BTreeMap::from([
            (
                "AWS_ENDPOINT_URL_LAMBDA".to_string(),
                "http://127.0.0.1:8443".to_string(),
            ),
            (
                "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS".to_string(),
                "http://127.0.0.1:8443".to_string(),
            ),
            (
                "AWS_ENDPOINT_URL_S3".to_string(),
                "http://127.0.0.1:9000".to_string(),
            ),
        ]);
        let ports: Vec<u16> = loopback_endpoints(&env).iter().map(|&(_, p)| p).collect();
        assert_eq!(ports, vec![8443, 9000]);
    }

    #[test]
    fn loopback_endpoints_map_to_service_aliases() {
        let env = BTreeMap::from([
            (
                "AWS_ENDPOINT_URL_S3".to_string(),
                "http://127.0.0.1:9000".to_string(),
            ),
            (
                "AWS_ENDPOINT_URL_DYNAMODB".to_string(),
                "http://localhost:8001/".to_string(),
            ),
            (
                "AWS_ENDPOINT_URL_LAMBDA".to_string(),
                "https://127.0.0.1:8443".to_string(),
            ),
            (
                "AWS_ENDPOINT_URL_SQS".to_string(),
                "https://sqs.example.com:443".to_string(),
            ),
            ("OTHER".to_string(), "http://127.0.0.1:1".to_string()),
        ]);
        assert_eq!(
            loopback_endpoints(&env),
            vec![
                ("database", 8001),
                ("esb-gateway", 8443),
                ("s3-storage", 9000)
            ]
        );
    }

    fn spec(runtime: &str, code_dir: PathBuf) -> FunctionSpec {
        FunctionSpec {
            name: "f".to_string(),
            runtime: runtime.to_string(),
            handler: Some("index.handler".to_string()),
            code_dir,
            image: None,
            memory_mb: 128,
            timeout: std::time::Duration::from_secs(3),
            environment: BTreeMap::from([(
                "AWS_CA_BUNDLE".to_string(),
                "/host/ca.pem".to_string(),
            )]),
            region: "us-east-1".to_string(),
            account_id: "000000000000".to_string(),
            code_hash: "h".to_string(),
        }
    }

    #[test]
    fn each_runtime_runs_on_its_base_image() {
        let options =
            DockerOptions::new("t", crate::SupervisorMount::static_executable("/bin/true"));
        let image = |runtime: &str| image_for(&options, &spec(runtime, PathBuf::from("/x")));
        assert_eq!(image("python3.11").unwrap(), "esb/python3.11:latest");
        assert_eq!(image("python3.12").unwrap(), "esb/python3.11:latest");
        assert_eq!(image("python3.13").unwrap(), "esb/python3.13:latest");
        assert_eq!(image("nodejs18.x").unwrap(), "esb/nodejs18:latest");
        assert_eq!(image("nodejs20.x").unwrap(), "esb/nodejs20:latest");
        assert_eq!(image("provided").unwrap(), "esb/provided:latest");
        assert_eq!(image("provided.al2023").unwrap(), crate::PROVIDED_IMAGE);
        assert!(matches!(
            image("nodejs22.x"),
            Err(RuntimeError::UnsupportedRuntime { .. })
        ));
        assert!(image("java21").is_err());
    }

    #[test]
    fn node_functions_run_the_images_node_with_the_mounted_bootstrap() {
        let dir = std::env::temp_dir().join(format!("esb-node-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut options =
            DockerOptions::new("t", crate::SupervisorMount::static_executable("/bin/true"));
        options.node_bootstrap = launch::NodeBootstrap::Auto;
        let planned = plan_node(&options, &spec("nodejs20.x", dir.clone())).unwrap();
        assert_eq!(planned.plan.program, PathBuf::from("node"));
        assert_eq!(
            planned.plan.args,
            vec![
                "/esb/runtime/node-bootstrap/esb_bootstrap.mjs".to_string(),
                "index.handler".to_string()
            ]
        );
        assert_eq!(planned.plan.working_dir, PathBuf::from("/var/task"));
        assert_eq!(
            planned.plan.env,
            vec![("NODE_EXTRA_CA_CERTS".to_string(), CA_PATH.to_string())]
        );
        assert_eq!(
            planned.plan.execution_env.as_deref(),
            Some("AWS_Lambda_nodejs20.x")
        );

        // aws-lambda-ric in the function's node_modules runs from /var/task.
        let ric = dir.join("node_modules").join("aws-lambda-ric");
        std::fs::create_dir_all(ric.join("bin")).unwrap();
        std::fs::write(
            ric.join("package.json"),
            r#"{"bin": {"aws-lambda-ric": "bin/index.mjs"}}"#,
        )
        .unwrap();
        std::fs::write(ric.join("bin").join("index.mjs"), "").unwrap();
        let planned = plan_node(&options, &spec("nodejs20.x", dir.clone())).unwrap();
        assert_eq!(
            planned.plan.args[0],
            "/var/task/node_modules/aws-lambda-ric/bin/index.mjs"
        );
        options.node_bootstrap = launch::NodeBootstrap::Builtin;
        let planned = plan_node(&options, &spec("nodejs20.x", dir.clone())).unwrap();
        assert!(planned.plan.args[0].starts_with("/esb/runtime/"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn container_names_are_sanitized() {
        assert_eq!(sanitize("Hello World/fn"), "Hello-World-fn");
        assert_eq!(sanitize(&"x".repeat(100)).len(), 40);
    }
}
