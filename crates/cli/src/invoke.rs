//! `esb invoke`: one invocation, like `sam local invoke`. Standalone it
//! starts the function's worker itself (process runtime) and stops it
//! afterwards; with `--endpoint`, or when a running `esb up` is recorded in
//! the data directory, it calls that instance's Invoke API instead.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use esb_app::invoke::Outcome;
use esb_runtimes_core::LogSink;

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
        let client = esb_app::remote::http_client(args.ca_cert.as_deref(), args.insecure)?;
        let data_dir = args
            .common
            .settings(Default::default())
            .ok()
            .map(|s| s.data_dir);
        let creds = signing_credentials(data_dir.as_deref());
        return remote(&client, endpoint, &args.function, payload, creds).await;
    }
    let settings = args
        .common
        .settings_for(&["local_invoke"], Default::default())?;
    // A running `esb up` on the same data directory serves the call, so its
    // warm workers (and its services) are used.
    if let Ok(instance) = esb_app::Instance::read(&settings.data_dir) {
        let client = esb_app::remote::instance_client(&instance)?;
        let creds = signing_credentials(Some(&settings.data_dir));
        return remote(&client, &instance.url, &args.function, payload, creds).await;
    }
    crate::settings::init_logging(&format!(
        "warn,{}",
        settings.log_level.replace("info", "warn")
    ));
    let plan = esb_app::Plan::parse(settings)?;
    crate::app::print_template_warnings(&plan.loaded);
    let outcome =
        esb_app::invoke::invoke_standalone(&plan, &args.function, payload, Arc::new(PlainStderr))
            .await?;
    Ok(match outcome {
        Outcome::Success(body) => {
            println!("{}", String::from_utf8_lossy(&body));
            ExitCode::SUCCESS
        }
        Outcome::FunctionError(body) => {
            println!("{}", String::from_utf8_lossy(&body));
            ExitCode::FAILURE
        }
    })
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
    let answer = esb_app::remote::invoke_remote(client, endpoint, function, payload, creds).await?;
    if let Some(tail) = &answer.log_tail {
        eprint!("{tail}");
    }
    println!("{}", String::from_utf8_lossy(&answer.body));
    Ok(if answer.function_error {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Credentials to sign Invoke API calls with (the data directory's, else
/// the `AWS_*` variables).
fn signing_credentials(data_dir: Option<&Path>) -> Option<(String, String)> {
    esb_app::remote::signing_credentials(data_dir, &esb_config::ProcessEnv)
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

/// Function output on stderr without decoration (stdout is the response).
struct PlainStderr;

impl LogSink for PlainStderr {
    fn line(&self, _function: &str, _worker: &str, _request: Option<&str>, line: &str) {
        eprintln!("{line}");
    }
}
