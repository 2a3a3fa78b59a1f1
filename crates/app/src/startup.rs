//! `esb up` in four steps (see STYLE.md, Configuration):
//!
//! 1. [`Plan::parse`]: settings and template, no side effects;
//! 2. [`Plan::build`]: data directory (0700) and its lock, the gateway
//!    listener (its real address, so tests can bind port 0) and TLS;
//! 3. [`Built::spawn`]: services, auth, pool with its backend, gateway
//!    state, instance record;
//! 4. [`Running::serve`]: serve until a shutdown signal, then drain.
//!
//! Nothing here prints: each step returns what the caller shows.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use esb_config::Settings;
use esb_runtimes_core::RuntimeBackend;

use crate::error::{AppError, Context};
use crate::functions::WorkerContext;
use crate::instance::{DataDirLock, Instance};
use crate::services::{BoxCredentials, Services};

/// Step 1: the settings and the loaded template.
#[derive(Debug)]
pub struct Plan {
    /// Resolved settings.
    pub settings: Settings,
    /// The template (its warnings are for the caller to show).
    pub loaded: esb_template::Loaded,
}

impl Plan {
    /// Loads the template the settings name.
    pub fn parse(settings: Settings) -> Result<Self, AppError> {
        let loaded = crate::template::load_template(&settings)?;
        Ok(Self { settings, loaded })
    }

    /// Step 2: owns the data directory (one `esb up` per data directory),
    /// binds the gateway listener (failing with a message naming the port)
    /// and prepares TLS.
    pub async fn build(self) -> Result<Built, AppError> {
        let settings = self.settings;
        let data_dir = crate::files::create_private_dir(&settings.data_dir)?;
        let lock = DataDirLock::acquire(&data_dir)?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .context(|| {
                format!(
                    "cannot listen on {} (port {} is in use or not allowed; pick another with --listen)",
                    settings.listen,
                    settings.listen.port()
                )
            })?;
        let local = listener
            .local_addr()
            .context(|| "cannot read the listener's address".into())?;
        let (tls, ca_cert) = if settings.http {
            (None, None)
        } else if let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) {
            let tls = esb_gateway::TlsConfig::from_pem_files(cert, key)
                .context(|| "cannot load the TLS certificate".into())?;
            let cert = std::fs::canonicalize(cert)
                .context(|| format!("cannot resolve {}", cert.display()))?;
            (Some(tls), Some(cert))
        } else {
            let dir = data_dir.join("tls");
            let tls = esb_gateway::TlsConfig::self_signed(&dir)
                .context(|| "cannot create the self-signed certificate".into())?;
            (Some(tls), Some(dir.join("cert.pem")))
        };
        let scheme = if settings.http { "http" } else { "https" };
        // Workers reach the gateway on loopback even when it listens on all
        // interfaces.
        let worker_host = match local.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        Ok(Built {
            worker_url: format!("{scheme}://{}", SocketAddr::new(worker_host, local.port())),
            public_url: format!("{scheme}://{local}"),
            local_addr: local,
            settings,
            loaded: self.loaded,
            data_dir,
            ca_cert,
            lock,
            listener,
            tls,
        })
    }
}

/// Step 2's result: bound but not serving.
#[derive(Debug)]
pub struct Built {
    /// Resolved settings.
    pub settings: Settings,
    /// The template.
    pub loaded: esb_template::Loaded,
    /// Canonical data directory.
    pub data_dir: PathBuf,
    /// The gateway's real address.
    pub local_addr: SocketAddr,
    /// Base URL for users (`https://127.0.0.1:8443`).
    pub public_url: String,
    /// Base URL workers use (loopback when listening on all interfaces).
    pub worker_url: String,
    /// Certificate to trust (HTTPS).
    pub ca_cert: Option<PathBuf>,
    lock: DataDirLock,
    listener: tokio::net::TcpListener,
    tls: Option<esb_gateway::TlsConfig>,
}

/// Options of step 3.
#[derive(Default)]
pub struct SpawnOptions {
    /// Development mode: unsigned Invoke API calls from loopback accepted.
    pub dev: bool,
    /// The backend that runs workers; `None`: the process backend. (The
    /// docker agent is started by the caller, which owns its lifetime.)
    pub backend: Option<Arc<dyn RuntimeBackend>>,
}

impl Built {
    /// Step 3: data services first (so workers find them), then auth, the
    /// pool with its backend and reaper, the gateway state, and the
    /// instance record.
    pub async fn spawn(self, options: SpawnOptions) -> Result<Running, AppError> {
        let settings = &self.settings;
        let creds = crate::services::credentials(settings, &self.data_dir)?;
        // Every function's own credentials and policies.
        let (iam, iam_warnings) = crate::iam::build(settings, &creds, &self.loaded.app);
        let auth = crate::auth::open_auth(
            settings,
            &self.data_dir,
            options.dev,
            &creds,
            Some(iam.clone()),
        )?;
        // The event queue first: the S3 endpoint's notifications go to it.
        let (events, mut warnings) =
            crate::events::open_queue(&self.loaded.app, settings, &self.data_dir)?;
        warnings.extend(iam_warnings);
        let (s3_hook, s3_warnings) =
            crate::events::s3_hook(&self.loaded.app, settings, events.clone());
        warnings.extend(s3_warnings);
        // Always installed, so a reload can add, change or drop notifications.
        let s3_hook = Arc::new(crate::live::SwapHook::new(s3_hook));
        let service_ops = crate::observability::ServiceOps::new(settings);
        let services = crate::services::start(
            settings,
            &self.data_dir,
            &self.loaded.app,
            &creds,
            Some(s3_hook.clone()),
            Some(iam.clone()),
            &service_ops,
        )
        .await?;
        let service_env = services.worker_env();
        let ctx = WorkerContext {
            lambda_endpoint: &self.worker_url,
            ca_bundle: self.ca_cert.as_deref(),
            service_env: service_env.clone(),
            iam: Some(iam.clone()),
        };
        let assembly = crate::assemble(
            &self.loaded.app,
            settings,
            &self.data_dir,
            &ctx,
            auth.clone(),
        )?;
        let process_options = crate::backend::process_options(settings, &self.data_dir);
        let log_store = process_options.log_sink.clone();
        let process = Arc::new(esb_runtimes_process::ProcessBackend::new(process_options));
        // Docker: the caller started the agent and passes its backend; its
        // workers' output goes to the same log store.
        let backend = match (options.backend, assembly.backend) {
            (Some(backend), _) => {
                backend.set_log_sink(log_store);
                backend
            }
            (None, crate::BackendChoice::Process) => process.clone(),
            (None, crate::BackendChoice::Docker) => {
                return Err(AppError::Refused(
                    "the docker runtime needs the agent's backend".into(),
                ));
            }
        };
        let pool = esb_pool::Pool::new(backend, assembly.pool);
        for (spec, limits) in assembly.functions.functions {
            pool.register(spec, limits);
        }
        warnings.extend(assembly.functions.warnings);
        if let Err(e) = pool.prewarm().await {
            warnings.push(format!("warning: pre-warming failed: {e}"));
        }
        let reaper = pool.spawn_reaper();
        let routes = assembly.gateway;
        warnings.extend(routes.warnings);
        let invoker: Arc<dyn esb_gateway::Invoker> = Arc::new(pool.clone());
        let dispatcher =
            events.start_dispatcher(Arc::new(esb_gateway::QueueInvoker(invoker.clone())));
        let (schedules, scheduler, schedule_warnings) =
            crate::events::start_scheduler(&self.loaded.app, settings, events.clone());
        warnings.extend(schedule_warnings);
        let stream_invoker: Arc<dyn esb_events::Invoker> =
            Arc::new(esb_gateway::QueueInvoker(invoker.clone()));
        let (streams, stream_warnings) = crate::events::start_stream_pollers(
            &self.loaded.app,
            settings,
            &self.data_dir,
            services.dynamodb_database(),
            stream_invoker.clone(),
        );
        warnings.extend(stream_warnings);
        let live = Arc::new(crate::live::LiveResources {
            settings: settings.clone(),
            data_dir: self.data_dir.clone(),
            s3_root: services.s3_embedded().then(|| self.data_dir.join("s3")),
            db: services.dynamodb_database().cloned(),
            queue: events.clone(),
            scheduler: schedules,
            hook: s3_hook,
            stream_invoker,
            streams: std::sync::Mutex::new(streams),
            keys: std::sync::Mutex::new(crate::live::Keys::of(&self.loaded.app)),
        });
        let state = esb_gateway::GatewayState::with_event_queue(
            routes.config.clone(),
            invoker,
            events.clone(),
        )
        .context(|| "invalid gateway configuration".into())?;
        let registry =
            crate::observability::wire_metrics(settings, &pool, &events, &state, &service_ops);
        if settings.console {
            wire_console(
                &self.data_dir,
                &settings.region,
                &routes.config,
                &pool,
                &services,
                &creds,
                &auth,
                registry,
                &state,
            )?;
        }
        crate::observability::wire_logs_api(&self.data_dir, &state);
        // One line per request (method, path, status, ms) at `info`, as
        // `sam local start-api` prints; nothing is installed otherwise.
        if tracing::enabled!(target: "esb_request", tracing::Level::INFO) {
            state.set_request_observer(Arc::new(|method, path, status, took| {
                tracing::info!(
                    target: "esb_request",
                    "{method} {path} {status} {:.1} ms",
                    took.as_secs_f64() * 1000.0
                );
            }));
        }
        let instance = Instance {
            pid: std::process::id(),
            url: self.worker_url.clone(),
            ca_cert: self.ca_cert.clone(),
            s3_url: services.s3_url.clone(),
            dynamodb_url: services.dynamodb_url.clone(),
        };
        instance.write(&self.data_dir)?;
        let reloader = crate::reload::Reloader {
            settings: settings.clone(),
            data_dir: self.data_dir.clone(),
            worker_url: self.worker_url.clone(),
            ca_cert: self.ca_cert.clone(),
            service_env,
            iam,
            pool: pool.clone(),
            routes: Arc::new(std::sync::Mutex::new(crate::reload::route_key(
                &self.loaded.app,
            ))),
            gateway: Some(state.clone()),
            auth: Some(auth.clone()),
            live: Some(live.clone()),
        };
        Ok(Running {
            reloader,
            gateway: routes.config,
            function_count: self.loaded.app.functions.len(),
            warnings,
            credentials: creds,
            auth,
            services,
            public_url: self.public_url,
            data_dir: self.data_dir,
            shutdown_grace: settings.shutdown_grace,
            pool,
            process,
            reaper,
            events,
            dispatcher,
            scheduler,
            live,
            state,
            listener: self.listener,
            tls: self.tls,
            _lock: self.lock,
        })
    }
}

/// Step 3's result: everything started; [`Running::serve`] serves.
pub struct Running {
    /// The gateway configuration being served (for the endpoint listing).
    pub gateway: esb_gateway::GatewayConfig,
    /// Functions in the template.
    pub function_count: usize,
    /// Functions, authorizers or warm-up that could not be set up.
    pub warnings: Vec<String>,
    /// The box's credentials (`generated`: created at this start).
    pub credentials: BoxCredentials,
    /// Keys, users and tokens.
    pub auth: Arc<esb_auth::Auth>,
    /// The data services.
    pub services: Services,
    /// Base URL for users.
    pub public_url: String,
    /// Canonical data directory.
    pub data_dir: PathBuf,
    /// Hot reload of code and template (`Reloader::watch`).
    pub reloader: crate::reload::Reloader,
    shutdown_grace: std::time::Duration,
    pool: esb_pool::Pool,
    process: Arc<esb_runtimes_process::ProcessBackend>,
    reaper: tokio::task::JoinHandle<()>,
    events: Arc<esb_events::EventQueue>,
    dispatcher: tokio::task::JoinHandle<()>,
    scheduler: tokio::task::JoinHandle<()>,
    /// Buckets, tables and event sources a reload changes; owns the
    /// DynamoDB stream pollers (a batch cut short here is delivered again).
    live: Arc<crate::live::LiveResources>,
    state: esb_gateway::GatewayState,
    listener: tokio::net::TcpListener,
    tls: Option<esb_gateway::TlsConfig>,
    _lock: DataDirLock,
}

impl Running {
    /// Step 4: serves until `shutdown` resolves, then drains requests,
    /// stops workers and services, and removes the instance record.
    /// `draining` runs once the signal arrived (to say so).
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()>,
        draining: impl FnOnce(),
    ) -> Result<(), AppError> {
        let served = esb_gateway::serve(self.listener, self.tls, self.state, shutdown).await;
        draining();
        // Stop handing out queued events; running ones finish (within the
        // pool's grace) and are recorded, the rest stays on disk.
        self.scheduler.abort();
        self.live.stop();
        self.events.shutdown();
        self.pool.shutdown(self.shutdown_grace).await;
        self.process.shutdown().await;
        self.reaper.abort();
        self.dispatcher.abort();
        self.services.shutdown().await;
        Instance::remove(&self.data_dir);
        served.context(|| "gateway failed".into())
    }
}

/// Serves the web console on the gateway's listener (`console` setting).
#[allow(clippy::too_many_arguments)]
fn wire_console(
    data_dir: &std::path::Path,
    region: &str,
    gateway: &esb_gateway::GatewayConfig,
    pool: &esb_pool::Pool,
    services: &Services,
    creds: &BoxCredentials,
    auth: &Arc<esb_auth::Auth>,
    metrics: Option<Arc<esb_metrics::Metrics>>,
    state: &esb_gateway::GatewayState,
) -> Result<(), AppError> {
    let routes = gateway
        .routes
        .iter()
        .filter_map(|r| match &r.target {
            esb_gateway::RouteTarget::Function(f) => {
                Some((f.clone(), format!("{} {}", r.method.to_uppercase(), r.path)))
            }
            _ => None,
        })
        .collect();
    let endpoint = |url: &Option<String>| {
        url.as_ref().map(|url| esb_console::Endpoint {
            url: url.clone(),
            access_key_id: creds.access_key_id.clone(),
            secret_access_key: creds.secret_access_key.clone(),
            region: region.to_string(),
        })
    };
    let console = esb_console::Console::new(esb_console::ConsoleConfig {
        auth: auth.clone(),
        logs_dir: data_dir.join("logs"),
        metrics,
        functions: esb_console::pool_functions(pool.clone(), routes),
        s3: endpoint(&services.s3_url),
        dynamodb: endpoint(&services.dynamodb_url),
    })
    .context(|| "cannot start the console".into())?;
    state.set_console_gate(console.clone().gate());
    state.set_console(console.handler());
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
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

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
Transform: AWS::Serverless-2016-10-31
Resources:
  Hello:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.handler
      Runtime: python3.11
      Events:
        Get:
          Type: HttpApi
          Properties:
            Path: /hello
            Method: get
"#;

    /// The four steps in process on port 0: build reports the real
    /// address, spawn records the instance, serve answers until the signal,
    /// and the drain removes the record and frees the data directory.
    #[tokio::test]
    async fn parse_build_spawn_serve_drain_on_port_0() {
        let root = std::env::temp_dir().join(format!("esb-startup-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(
            root.join("src/app.py"),
            "def handler(e, c):\n    return 1\n",
        )
        .unwrap();
        std::fs::write(root.join("template.yaml"), TEMPLATE).unwrap();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let settings = Settings::resolve(&[&esb_config::SettingsLayer {
            template: Some(root.join("template.yaml")),
            data_dir: Some(root.join("data")),
            listen: Some(any),
            s3_listen: Some(any),
            dynamodb_listen: Some(any),
            http: Some(true),
            ..Default::default()
        }])
        .unwrap();
        let built = Plan::parse(settings).unwrap().build().await.unwrap();
        let addr = built.local_addr;
        assert_ne!(addr.port(), 0, "build reports the real port");
        let data_dir = built.data_dir.clone();
        // A second owner of the data directory is refused at build.
        let again = Plan::parse(built.settings.clone()).unwrap().build().await;
        assert!(matches!(again, Err(AppError::AlreadyRunning { .. })));
        let running = built.spawn(SpawnOptions::default()).await.unwrap();
        assert!(matches!(
            running.gateway.auth,
            esb_gateway::GatewayAuth::Enforced(_)
        ));
        let recorded = Instance::read(&data_dir).unwrap();
        assert_eq!(recorded.url, format!("http://{addr}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(running.serve(
            async {
                let _ = stopped.await;
            },
            || {},
        ));
        let health = reqwest::get(format!("http://{addr}/_esb/health"))
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        assert!(Instance::read(&data_dir).is_err(), "the record is removed");
        assert!(
            !DataDirLock::is_held(&data_dir).unwrap(),
            "the lock is released"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
