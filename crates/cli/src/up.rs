//! `esb up`: its flags, the four start-up steps of `esb_app::startup`
//! (parse, build, spawn, drain on a signal) and what it prints.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use esb_app::services::{BoxCredentials, Services};
use esb_config::{PythonBootstrap, RuntimeKind, SettingsLayer};
use esb_gateway::{ApiKind, GatewayConfig, RouteAuth};

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
    /// Gateway address (default 127.0.0.1:8443; `localhost:8443` works).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
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
    /// Sandbox backend: process (default), docker or containerd.
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
    /// Functions' policies: warn (default), enforce or off.
    #[arg(long, value_name = "MODE")]
    pub iam_mode: Option<esb_config::IamMode>,
    /// AWS region functions see.
    #[arg(long)]
    pub region: Option<String>,
    /// Docker or containerd runtime: run workers on these agents (compute nodes,
    /// `http://host:port`; repeat or separate with commas) instead of a
    /// local one; `local` adds a local agent as one more node.
    #[arg(long, value_name = "URL", env = "ESB_AGENT", value_delimiter = ',')]
    pub agent: Vec<String>,
    /// Embedded S3 address (default 127.0.0.1:9000).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub s3_listen: Option<SocketAddr>,
    /// Embedded DynamoDB address (default 127.0.0.1:8001).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
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
    /// Do not reload on code or template changes (hot reload is on by default).
    #[arg(long)]
    pub no_watch: bool,
    /// Set by `--detach` on the background process: secrets are never
    /// printed into its log file.
    #[arg(long, hide = true)]
    pub detached_child: bool,
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
            iam_mode: self.iam_mode,
            region: self.region.clone(),
            s3_listen: self.s3_listen,
            dynamodb_listen: self.dynamodb_listen,
            s3_enabled: self.no_s3.then_some(false),
            dynamodb_enabled: self.no_dynamodb.then_some(false),
            ..Default::default()
        }
    }
}

/// Runs `esb up` until Ctrl-C / SIGTERM.
pub async fn run(args: &UpArgs) -> anyhow::Result<ExitCode> {
    // 1. Parse: settings and template, no side effects yet.
    let settings = args
        .common
        .settings_for(&["local_start_api"], args.layer())?;
    if args.detach {
        return crate::detach::spawn(&settings);
    }
    // s3s logs every refused request (unsigned, wrong secret) at ERROR
    // under s3s::ops, dynoxide every 4xx at WARN; a client's error (a failed
    // condition, a missing key) is not ours to report.
    crate::settings::init_logging(&format!(
        "s3s=warn,s3s::ops=off,dynoxide=error,{}",
        settings.log_level
    ));
    #[cfg(not(feature = "docker"))]
    if settings.runtime.is_container() {
        anyhow::bail!("this esb was built without the docker feature; use --runtime process");
    }
    let plan = esb_app::Plan::parse(settings)?;
    crate::app::print_template_warnings(&plan.loaded);

    // 2. Build: data directory (and its lock), listener, TLS.
    let built = plan.build().await?;

    // Docker: the engine socket belongs to the agent (a child process, or
    // --agent URL); this process only talks gRPC to it. Image functions'
    // missing images are built by the agent before any worker starts.
    #[cfg(feature = "docker")]
    let agent = match built.settings.runtime {
        RuntimeKind::Docker | RuntimeKind::Containerd => {
            Some(crate::docker::start_agent(&built.settings, &built.data_dir, &args.agent).await?)
        }
        _ => None,
    };
    #[cfg(feature = "docker")]
    if let Some(agent) = &agent {
        crate::docker::ensure_base_images(&built.loaded.app, agent).await?;
        // Images reach each node through its own agent.
        for (_, node) in agent.agents() {
            crate::build::ensure_images(&built.loaded.app, node).await?;
        }
    }
    #[cfg(feature = "docker")]
    let backend = agent.as_ref().map(|a| a.backend());
    #[cfg(not(feature = "docker"))]
    let backend = None;

    // 3. Spawn: services, auth, pool, gateway state, instance record.
    let region = built.settings.region.clone();
    let ca_bundle = built.ca_cert.clone();
    let show_api_key = built.settings.api_keys.is_empty();
    let running = built
        .spawn(esb_app::SpawnOptions {
            dev: args.dev,
            backend,
        })
        .await?;
    for w in &running.warnings {
        eprintln!("{w}");
    }
    for created in &running.services.created {
        eprintln!("created {created}");
    }
    let secrets = Secrets {
        // A detached server's output is a file: no secret goes there.
        show: !args.detached_child,
        dev: args.dev,
        data_dir: &running.data_dir,
    };
    secrets.print_api_key(
        &running.credentials,
        show_api_key.then(|| running.auth.credentials().api_key.as_str()),
    );
    print_endpoints(
        &running.gateway,
        &running.public_url,
        running.function_count,
        ca_bundle.as_deref(),
        &region,
    );
    print_services(&running.services, &running.credentials, &region, &secrets);
    println!(
        "esb is up at {} (data dir {}); Ctrl-C to stop",
        running.public_url,
        running.data_dir.display()
    );

    // Hot reload: new invocations go to fresh workers after a code change;
    // a broken template keeps the running app.
    let _watch = if args.no_watch {
        None
    } else {
        match running.reloader.clone().watch(report_reload) {
            Ok(guard) => Some(guard),
            Err(e) => {
                eprintln!("warning: hot reload is off: {e:#}");
                None
            }
        }
    };

    // 4. Drain on a signal.
    let served = running
        .serve(esb_app::shutdown_signal(), || {
            eprintln!("shutting down: draining requests and stopping workers");
        })
        .await;
    #[cfg(feature = "docker")]
    if let Some(agent) = agent {
        agent.shutdown().await;
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Where secrets may be printed.
struct Secrets<'a> {
    show: bool,
    dev: bool,
    data_dir: &'a Path,
}

impl Secrets<'_> {
    fn file(&self) -> String {
        self.data_dir
            .join(esb_auth::CREDENTIALS_FILE)
            .display()
            .to_string()
    }

    /// The API key once: when the credentials were generated just now, or
    /// at every start with `--dev`; never into a detached server's log.
    fn print_api_key(&self, creds: &BoxCredentials, api_key: Option<&str>) {
        if let Some(key) = api_key
            && (creds.generated || self.dev)
        {
            if self.show {
                println!("API key (x-api-key, stored in {}): {key}", self.file());
            } else {
                println!("API key (x-api-key): stored in {} (0600)", self.file());
            }
        }
        if self.dev {
            if self.show {
                println!(
                    "  dev mode: AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={}",
                    creds.access_key_id, creds.secret_access_key
                );
            }
            eprintln!("warning: --dev: unsigned Invoke API calls from loopback are accepted");
        }
    }
}

/// Prints the data endpoints and how to reach them with the `aws` CLI; the
/// secret only when it was generated just now (and not into a log file).
fn print_services(services: &Services, creds: &BoxCredentials, region: &str, secrets: &Secrets) {
    if creds.generated {
        if secrets.show {
            println!(
                "generated credentials (stored in {}, shown only this once):",
                secrets.file()
            );
            println!("  AWS_ACCESS_KEY_ID={}", creds.access_key_id);
            println!("  AWS_SECRET_ACCESS_KEY={}", creds.secret_access_key);
        } else {
            println!("generated credentials: stored in {} (0600)", secrets.file());
        }
    }
    let origin = |embedded: bool| if embedded { "embedded" } else { "external" };
    match &services.s3_url {
        Some(url) => println!("S3:       {url} ({})", origin(services.s3_embedded())),
        None => println!("S3:       disabled"),
    }
    match &services.dynamodb_url {
        Some(url) => println!("DynamoDB: {url} ({})", origin(services.dynamodb_embedded())),
        None => println!("DynamoDB: disabled"),
    }
    if services.s3_url.is_some() || services.dynamodb_url.is_some() {
        println!(
            "  export AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY=<secret from {}> AWS_DEFAULT_REGION={region}",
            creds.access_key_id,
            secrets.file()
        );
    }
    if let Some(url) = &services.s3_url {
        println!("  aws --endpoint-url {url} s3 ls");
    }
    if let Some(url) = &services.dynamodb_url {
        println!("  aws --endpoint-url {url} dynamodb list-tables");
    }
}

/// Prints every endpoint (method, URL, function, auth).
fn print_endpoints(
    config: &GatewayConfig,
    base: &str,
    function_count: usize,
    ca_bundle: Option<&std::path::Path>,
    region: &str,
) {
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
            Some(ApiKind::FunctionUrl) => format!("{} (function URL)", r.api_id),
            _ => format!("{} (HTTP)", r.api_id),
        };
        let prefix = api.and_then(|a| a.base_path.as_deref()).unwrap_or("");
        rows.push([
            r.method.to_uppercase(),
            format!("{base}{prefix}{}", r.path),
            match &r.target {
                esb_gateway::RouteTarget::Function(f) => f.clone(),
                esb_gateway::RouteTarget::Unavailable { status, message } => {
                    format!("({status}: {message})")
                }
            },
            kind,
            auth,
        ]);
    }
    print!("{}", crate::app::table(&rows));
    println!(
        "Lambda Invoke API: {base}/2015-03-31/functions/{{name}}/invocations ({} functions)",
        function_count
    );
    // A line that works as printed: the self-signed certificate is trusted
    // through --ca-bundle, the region is the box's.
    let ca = ca_bundle
        .map(|c| format!(" --ca-bundle {}", c.display()))
        .unwrap_or_default();
    println!(
        "  aws lambda invoke --endpoint-url {base}{ca} --region {region} --function-name NAME out.json"
    );
}

/// A listen address: `IP:PORT`, or `HOST:PORT` resolved now (`localhost`
/// gives its IPv4 loopback first).
fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = value
        .to_socket_addrs()
        .map_err(|e| format!("{value:?} is not HOST:PORT ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{value:?} resolves to no address"))
}

/// Prints one reload's outcome (stderr: stdout is for the endpoint list).
fn report_reload(result: Result<esb_app::reload::Reloaded, esb_app::AppError>) {
    match result {
        Ok(r) => {
            for note in &r.notes {
                eprintln!("reload: {note}");
            }
            if !r.changed.is_empty() {
                eprintln!("reloaded: {}", r.changed.join(", "));
            }
        }
        Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("reload failed; still serving the previous version: {text}");
        }
    }
}

#[cfg(test)]
mod addr_tests {
    #[test]
    fn listen_accepts_ip_and_localhost() {
        assert_eq!(
            super::parse_addr("127.0.0.1:8443").unwrap(),
            "127.0.0.1:8443".parse().unwrap()
        );
        let a = super::parse_addr("localhost:8443").unwrap();
        assert!(a.ip().is_loopback() && a.port() == 8443, "{a}");
        assert!(super::parse_addr("localhost").is_err());
    }
}
