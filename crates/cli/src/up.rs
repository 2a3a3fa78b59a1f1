//! `esb up`: parse (no I/O beyond the template), build (bind, report the
//! real address), spawn (pool, reaper, gateway), drain on a signal.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use esb_config::{PythonBootstrap, RuntimeKind, Settings, SettingsLayer};
use esb_gateway::{
    ApiConfig, ApiKind, GatewayAuth, GatewayConfig, PayloadVersion, RouteAuth, RouteConfig,
    RouteTarget,
};
use serde::{Deserialize, Serialize};

use crate::settings::CommonArgs;

/// Arguments of `esb up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Run in the background (output in <data dir>/esb.log); stop with
    /// `esb down`.
    #[arg(long)]
    pub detach: bool,
    /// Gateway address (default 127.0.0.1:8443).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long)]
    pub http: bool,
    /// TLS certificate (PEM); default: self-signed, generated in the data dir.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Sandbox backend: process (default) or docker.
    #[arg(long, value_name = "RUNTIME")]
    pub runtime: Option<RuntimeKind>,
    /// Most workers alive at once over all functions.
    #[arg(long, value_name = "N")]
    pub max_workers: Option<usize>,
    /// Stop workers idle this long (e.g. 5m, 30s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// How long a request waits for a busy function before 429.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub queue_timeout: Option<Duration>,
    /// Python runtime client: auto, builtin or awslambdaric.
    #[arg(long, value_name = "MODE")]
    pub python_bootstrap: Option<PythonBootstrap>,
    /// AWS region functions see.
    #[arg(long)]
    pub region: Option<String>,
    /// Docker runtime: use this agent (`http://host:port`) instead of
    /// starting a local one.
    #[arg(long, value_name = "URL", env = "ESB_AGENT")]
    pub agent: Option<String>,
    /// Embedded S3 address (default 127.0.0.1:9000).
    #[arg(long, value_name = "ADDR")]
    pub s3_listen: Option<SocketAddr>,
    /// Embedded DynamoDB address (default 127.0.0.1:8001).
    #[arg(long, value_name = "ADDR")]
    pub dynamodb_listen: Option<SocketAddr>,
    /// Do not start the embedded S3 endpoint.
    #[arg(long)]
    pub no_s3: bool,
    /// Do not start the embedded DynamoDB endpoint.
    #[arg(long)]
    pub no_dynamodb: bool,
    /// Development mode: unsigned Invoke API calls from loopback are
    /// accepted, and the API key is printed at every start.
    #[arg(long)]
    pub dev: bool,
}

impl UpArgs {
    fn layer(&self) -> SettingsLayer {
        SettingsLayer {
            listen: self.listen,
            http: self.http.then_some(true),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            runtime: self.runtime,
            max_workers: self.max_workers,
            idle_timeout: self.idle_timeout,
            queue_timeout: self.queue_timeout,
            python_bootstrap: self.python_bootstrap,
            region: self.region.clone(),
            s3_listen: self.s3_listen,
            dynamodb_listen: self.dynamodb_listen,
            s3_enabled: self.no_s3.then_some(false),
            dynamodb_enabled: self.no_dynamodb.then_some(false),
            ..Default::default()
        }
    }
}

/// What a running `esb up` records in its data directory so `esb ps` and
/// `esb invoke` can find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    /// Process id of `esb up`.
    pub pid: u32,
    /// Base URL of the gateway (`https://127.0.0.1:8443`).
    pub url: String,
    /// Certificate to trust for it (HTTPS).
    pub ca_cert: Option<PathBuf>,
    /// S3 endpoint (embedded or external), if any.
    #[serde(default)]
    pub s3_url: Option<String>,
    /// DynamoDB endpoint (embedded or external), if any.
    #[serde(default)]
    pub dynamodb_url: Option<String>,
}

const INSTANCE_FILE: &str = "instance.json";

impl Instance {
    /// Reads the instance file of a running `esb up`.
    pub fn read(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(INSTANCE_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no running esb up found ({} is missing; start one with `esb up --data-dir {}`)",
                path.display(),
                data_dir.display()
            )
        })?;
        let instance: Instance = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid instance file", path.display()))?;
        if !Path::new(&format!("/proc/{}", instance.pid)).exists() {
            anyhow::bail!(
                "esb up (pid {}) recorded in {} is no longer running",
                instance.pid,
                path.display()
            );
        }
        Ok(instance)
    }

    /// An HTTP client that trusts this instance's certificate.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        crate::invoke::http_client(self.ca_cert.as_deref(), false)
    }

    fn write(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = data_dir.join(INSTANCE_FILE);
        let tmp = data_dir.join(format!(".{INSTANCE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// Runs `esb up` until Ctrl-C / SIGTERM.
pub async fn run(args: &UpArgs) -> anyhow::Result<ExitCode> {
    // 1. Parse: settings and template, no side effects yet.
    let settings = args.common.settings(args.layer())?;
    if args.detach {
        return crate::detach::spawn(&settings.data_dir);
    }
    // s3s logs every refused request (unsigned, wrong secret) at ERROR
    // under s3s::ops, dynoxide every 4xx at WARN; a client's error (a failed
    // condition, a missing key) is not ours to report.
    crate::settings::init_logging(&format!(
        "s3s=warn,s3s::ops=off,dynoxide=error,{}",
        settings.log_level
    ));
    #[cfg(not(feature = "docker"))]
    if settings.runtime == RuntimeKind::Docker {
        anyhow::bail!("this esb was built without the docker feature; use --runtime process");
    }
    let loaded = crate::app::load_template(&settings)?;

    // 2. Build: data directory, listener (fails naming the port), TLS.
    std::fs::create_dir_all(&settings.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            settings.data_dir.display()
        )
    })?;
    let data_dir = std::fs::canonicalize(&settings.data_dir)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (port {} is in use or not allowed; pick another with --listen)",
                settings.listen,
                settings.listen.port()
            )
        })?;
    let local = listener.local_addr()?;
    let (tls, ca_cert) = if settings.http {
        (None, None)
    } else if let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) {
        let tls = esb_gateway::TlsConfig::from_pem_files(cert, key)?;
        (Some(tls), Some(std::fs::canonicalize(cert)?))
    } else {
        let dir = data_dir.join("tls");
        let tls = esb_gateway::TlsConfig::self_signed(&dir)?;
        (Some(tls), Some(dir.join("cert.pem")))
    };
    let scheme = if settings.http { "http" } else { "https" };
    // Workers reach the gateway on loopback even when it listens on all
    // interfaces.
    let worker_host = match local.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let worker_url = format!("{scheme}://{}", SocketAddr::new(worker_host, local.port()));
    let public_url = format!("{scheme}://{local}");

    // 3. Spawn: data services (S3, DynamoDB) first, so workers find them;
    // then the pool with the process runtime, reaper, gateway.
    let creds = crate::services::credentials(&settings, &data_dir)?;
    let auth = open_auth(&settings, &data_dir, args.dev, &creds)?;
    let services = crate::services::start(&settings, &data_dir, &loaded.app, &creds).await?;
    let specs = crate::app::function_specs(
        &loaded.app,
        &settings,
        &worker_url,
        ca_cert.as_deref(),
        &services.worker_env(&creds),
    )?;
    let backend = Arc::new(esb_runtimes_process::ProcessBackend::new(process_options(
        &settings, &data_dir,
    )));
    // Docker: the engine socket belongs to the agent (a child process, or
    // --agent URL); this process only talks gRPC to it.
    #[cfg(feature = "docker")]
    let agent = match settings.runtime {
        RuntimeKind::Docker => {
            Some(crate::docker::start_agent(&settings, &data_dir, args.agent.as_deref()).await?)
        }
        _ => None,
    };
    // Image functions' missing images are built by the agent (it holds the
    // engine socket), before any worker starts.
    #[cfg(feature = "docker")]
    if let Some(agent) = &agent {
        crate::build::ensure_images(&loaded.app, agent.agent()).await?;
    }
    #[cfg(feature = "docker")]
    let pool_backend: Arc<dyn esb_runtimes_core::RuntimeBackend> = match &agent {
        Some(agent) => agent.backend(),
        None => backend.clone(),
    };
    #[cfg(not(feature = "docker"))]
    let pool_backend = backend.clone();
    let pool = esb_pool::Pool::new(pool_backend.clone(), pool_config(&settings));
    for (spec, limits) in specs {
        pool.register(spec, limits);
    }
    if let Err(e) = pool.prewarm().await {
        tracing::warn!("pre-warming failed: {e}");
    }
    let reaper = pool.spawn_reaper();
    let mut gateway_config = gateway_config(&loaded.app, &settings);
    gateway_config.auth = GatewayAuth::Enforced(auth.clone());
    print_endpoints(&gateway_config, &public_url, &loaded.app);
    services.print(&creds, &settings.region, &data_dir);
    let state = esb_gateway::GatewayState::new(gateway_config, pool.clone())?;
    let instance = Instance {
        pid: std::process::id(),
        url: worker_url.clone(),
        ca_cert: ca_cert.clone(),
        s3_url: services.s3_url.clone(),
        dynamodb_url: services.dynamodb_url.clone(),
    };
    instance.write(&data_dir)?;
    println!(
        "esb is up at {public_url} (data dir {}); Ctrl-C to stop",
        data_dir.display()
    );

    // 4. Drain on a signal.
    let served = esb_gateway::serve(listener, tls, state, shutdown_signal()).await;
    eprintln!("shutting down: draining requests and stopping workers");
    pool.shutdown(settings.shutdown_grace).await;
    pool_backend.shutdown().await;
    #[cfg(feature = "docker")]
    if let Some(agent) = agent {
        agent.shutdown().await;
    }
    reaper.abort();
    services.shutdown().await;
    let _ = std::fs::remove_file(data_dir.join(INSTANCE_FILE));
    served.context("gateway failed")?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

/// Process runtime options from the settings.
pub fn process_options(
    settings: &Settings,
    data_dir: &Path,
) -> esb_runtimes_process::ProcessOptions {
    esb_runtimes_process::ProcessOptions {
        python: settings.python.clone(),
        python_bootstrap: match settings.python_bootstrap {
            PythonBootstrap::Auto => esb_runtimes_process::PythonBootstrap::Auto,
            PythonBootstrap::Builtin => esb_runtimes_process::PythonBootstrap::Builtin,
            PythonBootstrap::Awslambdaric => esb_runtimes_process::PythonBootstrap::Awslambdaric,
        },
        cache_dir: data_dir.join("runtime"),
        log_sink: log_store(data_dir),
    }
}

/// The log store under `<data_dir>/logs` (echoing to the console), or the
/// console alone when the directory cannot be used.
fn log_store(data_dir: &Path) -> Arc<dyn esb_runtimes_core::LogSink> {
    match esb_services_logs::LogStore::open(&data_dir.join("logs"), esb_services_logs::Echo::Stderr)
    {
        Ok(store) => Arc::new(store),
        Err(e) => {
            tracing::warn!("function logs are not stored: {e}");
            Arc::new(esb_runtimes_core::StderrLogSink)
        }
    }
}

/// Pool settings from the settings.
pub fn pool_config(settings: &Settings) -> esb_pool::PoolConfig {
    esb_pool::PoolConfig {
        max_workers: settings.max_workers,
        idle_timeout: settings.idle_timeout,
        queue_timeout: settings.queue_timeout,
        queue_len: settings.queue_len,
    }
}

/// The gateway's view of the template: APIs and routes.
pub fn gateway_config(app: &esb_template::AppModel, settings: &Settings) -> GatewayConfig {
    let apis = app
        .apis
        .iter()
        .map(|a| {
            let kind = match a.kind {
                esb_template::ApiKind::Rest => ApiKind::Rest,
                esb_template::ApiKind::Http => ApiKind::Http,
            };
            let mut api = ApiConfig::new(a.logical_id.clone(), kind);
            api.stage_name = Some(a.stage_name.clone());
            api.binary_media_types = a.binary_media_types.clone();
            api.stage_variables = a.stage_variables.clone();
            api.authorizers = a
                .auth
                .authorizers
                .iter()
                .filter_map(|z| authorizer_config(app, z))
                .collect();
            api.cors = a.cors.as_ref().map(|c| esb_gateway::CorsConfig {
                allow_origins: c.allow_origins.clone(),
                allow_methods: c.allow_methods.clone(),
                allow_headers: c.allow_headers.clone(),
                expose_headers: c.expose_headers.clone(),
                max_age: c.max_age,
                allow_credentials: c.allow_credentials,
            });
            api
        })
        .collect();
    let routes = app
        .routes
        .iter()
        .map(|r| {
            let payload_version = match (r.api_kind, r.payload_format_version.as_deref()) {
                (esb_template::ApiKind::Rest, _) | (_, Some("1.0")) => PayloadVersion::V1,
                _ => PayloadVersion::V2,
            };
            // AWS_IAM stays a named authorizer; the gateway checks SigV4.
            let auth = if !r.auth.authorizer.is_empty() && r.auth.authorizer != "NONE" {
                RouteAuth::Authorizer(r.auth.authorizer.clone())
            } else if r.auth.api_key_required {
                RouteAuth::ApiKey
            } else {
                RouteAuth::None
            };
            RouteConfig {
                api_id: r.api.clone(),
                method: r.method.clone(),
                path: r.path.clone(),
                target: RouteTarget::Function(r.function_name.clone()),
                payload_version,
                auth,
                api_key_required: r.auth.api_key_required,
                scopes: r.auth.authorization_scopes.clone(),
            }
        })
        .collect();
    GatewayConfig {
        apis,
        routes,
        settings: esb_gateway::GatewaySettings {
            account_id: settings.account_id.clone(),
            region: settings.region.clone(),
            drain_timeout: settings.shutdown_grace,
            login_path: settings.login_path.clone(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Opens the auth state (API key, JWT key, user pool) in the data directory
/// with the box's credentials, and prints the API key once: when the
/// credentials were generated just now, or at every start with `--dev`.
fn open_auth(
    settings: &Settings,
    data_dir: &Path,
    dev: bool,
    creds: &crate::services::BoxCredentials,
) -> anyhow::Result<Arc<esb_auth::Auth>> {
    let mut config = esb_auth::AuthConfig::new(data_dir);
    config.dev = dev;
    config.api_keys = settings.api_keys.clone();
    config.issuer = settings.jwt_issuer.clone();
    config.aws_credentials = Some((creds.access_key_id.clone(), creds.secret_access_key.clone()));
    let auth = esb_auth::Auth::open(&config).context("cannot set up authentication")?;
    if settings.api_keys.is_empty() && (creds.generated || dev) {
        println!(
            "API key (x-api-key, stored in {}): {}",
            data_dir.join(esb_auth::CREDENTIALS_FILE).display(),
            auth.credentials().api_key
        );
    }
    if dev {
        println!(
            "  dev mode: AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={}",
            creds.access_key_id, creds.secret_access_key
        );
        eprintln!("warning: --dev: unsigned Invoke API calls from loopback are accepted");
    }
    Ok(Arc::new(auth))
}

/// A template authorizer in the gateway's terms; `None` (with a warning)
/// when it cannot be served.
fn authorizer_config(
    app: &esb_template::AppModel,
    a: &esb_template::Authorizer,
) -> Option<esb_gateway::AuthorizerConfig> {
    use esb_gateway::AuthorizerKind as K;
    use esb_template::AuthorizerKind as T;
    let function = || {
        let id = a.function.as_deref()?;
        app.functions
            .iter()
            .find(|f| f.logical_id == id)
            .map(|f| f.name.clone())
    };
    let kind = match a.kind {
        T::CognitoUserPool => K::Cognito,
        T::Jwt => K::Jwt {
            issuer: a.jwt_issuer.clone(),
            audience: a.jwt_audience.clone(),
        },
        T::LambdaToken | T::LambdaRequest => {
            let Some(function) = function() else {
                eprintln!(
                    "warning: authorizer {}: its function is not in the template; routes using it answer 500",
                    a.name
                );
                return None;
            };
            K::Lambda {
                function,
                token: a.kind == T::LambdaToken,
                payload_v2: a.payload_format_version.as_deref() == Some("2.0"),
                simple_responses: a.enable_simple_responses,
            }
        }
    };
    Some(esb_gateway::AuthorizerConfig {
        name: a.name.clone(),
        kind,
        identity_sources: a.identity_sources.clone(),
        ttl: Duration::from_secs(a.ttl_seconds.min(3600).into()),
    })
}

/// Prints every endpoint (method, URL, function, auth).
fn print_endpoints(config: &GatewayConfig, base: &str, app: &esb_template::AppModel) {
    let mut rows = vec![[
        "METHOD".to_string(),
        "URL".into(),
        "FUNCTION".into(),
        "API".into(),
        "AUTH".into(),
    ]];
    for r in &config.routes {
        let api = config.apis.iter().find(|a| a.id == r.api_id);
        let stage = api.and_then(|a| a.stage_name.clone()).unwrap_or_default();
        let auth = match &r.auth {
            RouteAuth::None => "NONE".to_string(),
            RouteAuth::ApiKey => "API key".to_string(),
            RouteAuth::Authorizer(a) => a.clone(),
        };
        let kind = match api.map(|a| a.kind) {
            Some(ApiKind::Rest) => format!("{} (REST, stage {stage})", r.api_id),
            _ => format!("{} (HTTP)", r.api_id),
        };
        rows.push([
            r.method.to_uppercase(),
            format!("{base}{}", r.path),
            match &r.target {
                RouteTarget::Function(f) => f.clone(),
                RouteTarget::Unavailable { message, .. } => format!("({message})"),
            },
            kind,
            auth,
        ]);
    }
    print!("{}", crate::app::table(&rows));
    println!(
        "Lambda Invoke API: {base}/2015-03-31/functions/{{name}}/invocations ({} functions)",
        app.functions.len()
    );
    println!("  aws lambda invoke --endpoint-url {base} --function-name NAME out.json");
}
