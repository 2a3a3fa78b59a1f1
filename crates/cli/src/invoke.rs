//! `esb invoke`: one invocation, like `sam local invoke`. Standalone it
//! starts the function's worker itself (process runtime) and stops it
//! afterwards; with `--endpoint`, or when a running `esb up` is recorded in
//! the data directory, it calls that instance's Invoke API instead.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use esb_runtimes_core::{InvocationOutcome, LogSink};

use crate::settings::CommonArgs;

/// Arguments of `esb invoke`.
#[derive(Debug, clap::Args)]
pub struct InvokeArgs {
    /// Function name (FunctionName or logical id).
    pub function: String,
    /// Event file, or `-` for standard input (default: `{}`).
    #[arg(short = 'e', long = "event", value_name = "FILE")]
    pub event: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Invoke API of a running ESB (e.g. https://127.0.0.1:8443) instead
    /// of running the function here.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Certificate to trust for `--endpoint` (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Do not verify the endpoint's certificate.
    #[arg(long)]
    pub insecure: bool,
}

/// Runs `esb invoke`. Exit code 0 on success, 1 when the function failed.
pub async fn run(args: &InvokeArgs) -> anyhow::Result<ExitCode> {
    let payload = read_event(args.event.as_deref())?;
    if let Some(endpoint) = &args.endpoint {
        let client = http_client(args.ca_cert.as_deref(), args.insecure)?;
        let data_dir = args
            .common
            .settings(Default::default())
            .ok()
            .map(|s| s.data_dir);
        let creds = signing_credentials(data_dir.as_deref());
        return remote(&client, endpoint, &args.function, payload, creds).await;
    }
    let settings = args.common.settings(Default::default())?;
    // A running `esb up` on the same data directory serves the call, so its
    // warm workers (and its services) are used.
    if let Ok(instance) = crate::up::Instance::read(&settings.data_dir) {
        let client = instance.client()?;
        let creds = signing_credentials(Some(&settings.data_dir));
        return remote(&client, &instance.url, &args.function, payload, creds).await;
    }
    crate::settings::init_logging(&format!(
        "warn,{}",
        settings.log_level.replace("info", "warn")
    ));
    let loaded = crate::app::load_template(&settings)?;
    let specs = crate::app::function_specs(
        &loaded.app,
        &settings,
        "http://127.0.0.1:1",
        None,
        &Default::default(),
    )?;
    let Some((spec, _)) = specs.into_iter().find(|(s, _)| {
        s.name == args.function
            || loaded
                .app
                .functions
                .iter()
                .any(|f| f.logical_id == args.function && f.name == s.name)
    }) else {
        let names: Vec<&str> = loaded
            .app
            .functions
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        anyhow::bail!(
            "function {:?} is not in {} (functions: {})",
            args.function,
            settings.template.display(),
            names.join(", ")
        );
    };
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create {}", settings.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&settings.data_dir)?;
    let mut options = crate::up::process_options(&settings, &data_dir);
    options.log_sink = Arc::new(PlainStderr);
    let backend = esb_runtimes_process::ProcessBackend::new(options);
    let spec = Arc::new(spec);
    let invocation = esb_runtimes_core::Invocation {
        request_id: uuid::Uuid::new_v4().to_string(),
        payload,
        invoked_function_arn: spec.arn(),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
        timeout: None,
    };
    let worker = match esb_runtimes_core::RuntimeBackend::start_worker(&backend, spec).await {
        Ok(w) => w,
        Err(esb_runtimes_core::RuntimeError::Init { payload, .. }) => {
            println!("{}", String::from_utf8_lossy(&payload));
            backend.shutdown().await;
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            backend.shutdown().await;
            return Err(e.into());
        }
    };
    let result = worker.invoke(invocation).await;
    worker.stop().await;
    backend.shutdown().await;
    let result = result?;
    match result.outcome {
        InvocationOutcome::Success(body) => {
            println!("{}", String::from_utf8_lossy(&body));
            Ok(ExitCode::SUCCESS)
        }
        InvocationOutcome::Error { payload, .. } => {
            println!("{}", String::from_utf8_lossy(&payload));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Calls a running ESB's Invoke API and prints the result; logs (tail) go
/// to stderr.
async fn remote(
    client: &reqwest::Client,
    endpoint: &str,
    function: &str,
    payload: Bytes,
    creds: Option<(String, String)>,
) -> anyhow::Result<ExitCode> {
    let url = format!(
        "{}/2015-03-31/functions/{}/invocations",
        endpoint.trim_end_matches('/'),
        function
    );
    let mut request = client
        .post(&url)
        .header("X-Amz-Log-Type", "Tail")
        .body(payload.clone())
        .build()?;
    // The Invoke API wants a SigV4 signature with the box's credentials.
    if let Some((akid, secret)) = creds {
        let mut headers = http::HeaderMap::new();
        let host = request.url().authority().to_string();
        headers.insert(http::header::HOST, host.parse()?);
        headers.insert("x-amz-log-type", http::HeaderValue::from_static("Tail"));
        let params = esb_sigv4::SigningParams {
            access_key_id: &akid,
            secret_access_key: &secret,
            region: "us-east-1",
            service: "lambda",
            time: std::time::SystemTime::now(),
        };
        esb_sigv4::sign(
            "POST",
            request.url().path(),
            request.url().query().unwrap_or(""),
            &mut headers,
            esb_sigv4::Payload::Body(&payload),
            &params,
        )?;
        headers.remove(http::header::HOST);
        request.headers_mut().extend(headers);
    }
    let resp = client
        .execute(request)
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let status = resp.status();
    let function_error = resp.headers().contains_key("x-amz-function-error");
    if let Some(tail) = resp.headers().get("x-amz-log-result")
        && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(tail.as_bytes())
    {
        eprint!("{}", String::from_utf8_lossy(&decoded));
    }
    let body = resp.bytes().await?;
    if !status.is_success() {
        anyhow::bail!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    println!("{}", String::from_utf8_lossy(&body));
    Ok(if function_error {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Credentials to sign Invoke API calls with: the box's own from the data
/// directory's credentials.json, else `AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY`.
fn signing_credentials(data_dir: Option<&Path>) -> Option<(String, String)> {
    let from_file = data_dir
        .and_then(|d| std::fs::read(d.join(esb_auth::CREDENTIALS_FILE)).ok())
        .and_then(|text| serde_json::from_slice::<esb_auth::Credentials>(&text).ok());
    if let Some(c) = from_file {
        return Some((c.aws_access_key_id, c.aws_secret_access_key));
    }
    match (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Ok(a), Ok(s)) => Some((a, s)),
        _ => None,
    }
}

fn read_event(event: Option<&str>) -> anyhow::Result<Bytes> {
    let bytes = match event {
        None => b"{}".to_vec(),
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the event from standard input")?;
            buf
        }
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read event file {path}"))?
        }
    };
    serde_json::from_slice::<serde_json::Value>(&bytes).with_context(|| {
        format!(
            "the event ({}) is not valid JSON",
            event.map_or("stdin", |e| if e == "-" { "stdin" } else { e })
        )
    })?;
    Ok(Bytes::from(bytes))
}

/// An HTTP client that trusts `ca_cert` (or nothing special).
pub fn http_client(ca_cert: Option<&Path>, insecure: bool) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    if insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder.build()?)
}

/// Function output on stderr without decoration (stdout is the response).
struct PlainStderr;

impl LogSink for PlainStderr {
    fn line(&self, _function: &str, _worker: &str, _request: Option<&str>, line: &str) {
        eprintln!("{line}");
    }
}
