//! The runtime side from the settings: process backend options (with the
//! function log store) and the pool's limits.

use std::path::Path;
use std::sync::Arc;

use esb_config::{PythonBootstrap, Settings};

/// Process runtime options from the settings; function logs go to the
/// store in `<data_dir>/logs`.
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
        log_sink: log_store(settings, data_dir),
        sandbox: settings.isolation == esb_config::Isolation::Sandbox,
    }
}

/// The log store under `<data_dir>/logs` (echoing to the console, and
/// forwarding to VictoriaLogs when `victorialogs_url` is set), or the
/// console alone when the directory cannot be used.
fn log_store(settings: &Settings, data_dir: &Path) -> Arc<dyn esb_runtimes_core::LogSink> {
    let forward = settings
        .victorialogs_url
        .as_ref()
        .map(|url| esb_services_logs::ForwardConfig {
            url: url.clone(),
            buffer_bytes: settings.logs_buffer_bytes,
        });
    match esb_services_logs::LogStore::open_forwarding(
        &data_dir.join("logs"),
        esb_services_logs::Echo::Stderr,
        forward,
    ) {
        Ok(store) => Arc::new(store),
        Err(e) => {
            tracing::warn!("function logs are not stored: {e}");
            Arc::new(esb_runtimes_core::StderrLogSink)
        }
    }
}

/// Pool limits from the settings.
pub fn pool_config(settings: &Settings) -> esb_pool::PoolConfig {
    esb_pool::PoolConfig {
        max_workers: settings.max_workers,
        idle_timeout: settings.idle_timeout,
        queue_timeout: settings.queue_timeout,
        queue_len: settings.queue_len,
        ..Default::default()
    }
}
