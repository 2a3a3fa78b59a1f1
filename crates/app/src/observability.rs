//! Wires observability into a started box: the `/metrics` registry reads
//! the pool's per-function counters and the `Event` queue at scrape time
//! (docs/observability.md).

use std::sync::Arc;
use std::time::Duration;

use esb_config::Settings;
use esb_metrics::{AsyncSample, Metrics, ServiceCounters};

/// Per-operation counters of the embedded S3 and DynamoDB, made before the
/// services start (they count from the first request) and registered with
/// `/metrics` by [`wire_metrics`]. Empty when metrics are off.
#[derive(Debug, Clone, Default)]
pub struct ServiceOps {
    /// `service="s3"`.
    pub s3: Option<Arc<ServiceCounters>>,
    /// `service="dynamodb"`.
    pub dynamodb: Option<Arc<ServiceCounters>>,
}

impl ServiceOps {
    /// Counters for both services when `settings.metrics` is on.
    pub fn new(settings: &Settings) -> Self {
        if !settings.metrics {
            return Self::default();
        }
        Self {
            s3: Some(Arc::new(ServiceCounters::new("s3"))),
            dynamodb: Some(Arc::new(ServiceCounters::new("dynamodb"))),
        }
    }
}

/// Serves the CloudWatch Logs API over the store in `<data_dir>/logs`.
pub fn wire_logs_api(data_dir: &std::path::Path, state: &esb_gateway::GatewayState) {
    state.enable_cloudwatch_logs(data_dir.join("logs"));
}

/// Enables `/metrics` on `state` when `settings.metrics` is on.
pub fn wire_metrics(
    settings: &Settings,
    pool: &esb_pool::Pool,
    events: &Arc<esb_events::EventQueue>,
    state: &esb_gateway::GatewayState,
    ops: &ServiceOps,
) -> Option<Arc<Metrics>> {
    if !settings.metrics {
        return None;
    }
    let registry = Arc::new(Metrics::new());
    for counters in [&ops.s3, &ops.dynamodb].into_iter().flatten() {
        registry.add_service(counters.clone());
    }
    let pool = pool.clone();
    registry.set_functions(move || pool.metrics_samples());
    let events = events.clone();
    registry.set_async_queue(move || {
        let stats = events.stats();
        AsyncSample {
            depth: stats.by_function.into_iter().collect(),
            oldest_age: stats.oldest_age_ms.map(Duration::from_millis),
        }
    });
    state.enable_metrics(registry.clone(), settings.metrics_public);
    Some(registry)
}
