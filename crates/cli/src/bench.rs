//! `esb bench-direct` (hidden): invokes a function's warm worker through the
//! pool in-process, with no HTTP in front, so the benchmark can subtract it
//! from the gateway's latency to get the gateway's own overhead.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::settings::CommonArgs;

/// Arguments of `esb bench-direct`.
#[derive(Debug, clap::Args)]
pub struct BenchDirectArgs {
    /// Function name.
    pub function: String,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Invocations to time (after 200 warm-up calls).
    #[arg(short = 'n', long, default_value_t = 5000)]
    pub count: usize,
}

/// Prints `{"p50_ms":..,"p99_ms":..,"per_second":..}`.
pub async fn run(args: &BenchDirectArgs) -> anyhow::Result<ExitCode> {
    let settings = args.common.settings(Default::default())?;
    let plan = esb_app::Plan::parse(settings)?;
    crate::app::print_template_warnings(&plan.loaded);
    let settings = &plan.settings;
    let data_dir = esb_app::files::create_private_dir(&settings.data_dir)?;
    let mut options = esb_app::backend::process_options(settings, &data_dir);
    options.log_sink = Arc::new(esb_runtimes_core::NullLogSink);
    let backend = Arc::new(esb_runtimes_process::ProcessBackend::new(options));
    let pool = esb_pool::Pool::new(backend.clone(), esb_app::backend::pool_config(settings));
    let ctx = esb_app::functions::WorkerContext {
        lambda_endpoint: "http://127.0.0.1:1",
        ..Default::default()
    };
    let set = esb_app::functions::function_specs(&plan.loaded.app, settings, &data_dir, &ctx)?;
    for (spec, limits) in set.functions {
        pool.register(spec, limits);
    }
    let Some(spec) = pool.function(&args.function) else {
        anyhow::bail!("function {:?} is not in the template", args.function);
    };
    let mut samples = Vec::with_capacity(args.count);
    for i in 0..(args.count + 200) {
        let invocation = esb_runtimes_core::Invocation {
            request_id: format!("bench-{i}"),
            payload: bytes::Bytes::from_static(b"{}"),
            invoked_function_arn: spec.arn(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
            timeout: None,
        };
        let start = Instant::now();
        pool.invoke(&args.function, invocation).await?;
        if i >= 200 {
            samples.push(start.elapsed());
        }
    }
    pool.shutdown(Duration::from_secs(5)).await;
    backend.shutdown().await;
    let total: Duration = samples.iter().sum();
    samples.sort();
    let pick = |q: f64| {
        let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(idx).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "p50_ms": pick(0.50),
            "p99_ms": pick(0.99),
            "per_second": samples.len() as f64 / total.as_secs_f64().max(1e-9),
        })
    );
    Ok(ExitCode::SUCCESS)
}
