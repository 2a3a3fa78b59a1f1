//! One invocation without a server (`esb invoke` standalone): the
//! function's worker is started on the process backend, invoked once and
//! stopped. The embedded S3 and DynamoDB run on the data directory for the
//! call (on ephemeral loopback ports, so a server on the configured ports
//! is no obstacle), so the function's SDK calls never go to a cloud
//! endpoint.

use std::sync::Arc;

use bytes::Bytes;
use esb_runtimes_core::{InvocationOutcome, LogSink, RuntimeBackend, RuntimeError};

use crate::error::{AppError, Context};
use crate::functions::{WorkerContext, function_specs};
use crate::startup::Plan;

/// What the function answered.
#[derive(Debug)]
pub enum Outcome {
    /// Its response.
    Success(Bytes),
    /// Its error document (init or invocation error).
    FunctionError(Bytes),
}

/// Runs `function` (canonical name or logical id) of the plan once with
/// `payload`; function output goes to `log_sink`.
pub async fn invoke_standalone(
    plan: &Plan,
    function: &str,
    payload: Bytes,
    log_sink: Arc<dyn LogSink>,
) -> Result<Outcome, AppError> {
    let settings = &plan.settings;
    let app = &plan.loaded.app;
    let data_dir = crate::files::create_private_dir(&settings.data_dir)?;
    if let Some(f) = app.functions.iter().find(|f| {
        f.name == function || f.logical_id == function || f.aliases.iter().any(|a| a == function)
    }) {
        if let Some(problem) = crate::checks::function_problem(&settings.template, f) {
            return Err(AppError::Refused(problem));
        }
        // No interpreter of the function's version on this machine.
        if settings.runtime == esb_config::RuntimeKind::Process
            && let Some(problem) = crate::checks::host_problem(
                &settings.template,
                f,
                &crate::checks::launch_options(settings),
            )
        {
            return Err(AppError::Refused(problem));
        }
    }
    let creds = crate::services::credentials(settings, &data_dir)?;
    let (iam, _warnings) = crate::iam::build(settings, &creds, app);
    let mut local = settings.clone();
    local.s3_listen.set_port(0);
    local.dynamodb_listen.set_port(0);
    // One call: no event queue, so no S3 notifications.
    let services = crate::services::start(
        &local,
        &data_dir,
        app,
        &creds,
        None,
        Some(iam.clone()),
        &crate::observability::ServiceOps::default(),
    )
    .await?;
    let ctx = WorkerContext {
        lambda_endpoint: "http://127.0.0.1:1",
        ca_bundle: None,
        service_env: services.worker_env(),
        iam: Some(iam),
    };
    let result = run_once(plan, function, payload, log_sink, &data_dir, &ctx).await;
    services.shutdown().await;
    result
}

async fn run_once(
    plan: &Plan,
    function: &str,
    payload: Bytes,
    log_sink: Arc<dyn LogSink>,
    data_dir: &std::path::Path,
    ctx: &WorkerContext<'_>,
) -> Result<Outcome, AppError> {
    let settings = &plan.settings;
    let app = &plan.loaded.app;
    let set = function_specs(app, settings, data_dir, ctx)?;
    let Some(spec) = set.find(app, function).cloned() else {
        let names: Vec<&str> = app.functions.iter().map(|f| f.name.as_str()).collect();
        return Err(AppError::Refused(format!(
            "function {function:?} is not in {} (functions: {})",
            settings.template.display(),
            names.join(", ")
        )));
    };
    let mut options = crate::backend::process_options(settings, data_dir);
    options.log_sink = log_sink;
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
    let worker = match backend.start_worker(spec).await {
        Ok(w) => w,
        Err(RuntimeError::Init { payload, .. }) => {
            backend.shutdown().await;
            return Ok(Outcome::FunctionError(payload));
        }
        Err(e) => {
            backend.shutdown().await;
            return Err(e).context(|| format!("cannot start function {function}"));
        }
    };
    let result = worker.invoke(invocation).await;
    worker.stop().await;
    backend.shutdown().await;
    let result = result.context(|| format!("invocation of {function} failed"))?;
    Ok(match result.outcome {
        InvocationOutcome::Success(body) => Outcome::Success(body),
        InvocationOutcome::Error { payload, .. } => Outcome::FunctionError(payload),
    })
}
