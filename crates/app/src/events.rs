//! The durable `Event` queue of a running box: opened under
//! `<data dir>/events/queue`, with each function's asynchronous settings
//! (`EventInvokeConfig`, `DeadLetterQueue`) read from the template model.
//!
//! Destinations and dead-letter queues that name a function of the template
//! invoke it; any other target (SQS, SNS, EventBridge, an unknown function)
//! is kept as a stored record under `<data dir>/events/queue/dead-letter`
//! and warned about once at start.
//!
//! Tuning/test settings read from the environment (documented in
//! `docs/events.md`): `ESB_EVENT_RETRY_DELAY_MS` (first retry back-off,
//! default 60000 as on AWS), `ESB_EVENT_QUEUE_CAPACITY` (events held before
//! the Invoke API answers 429, default 100000).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use esb_config::Settings;
use esb_events::{EventInvokeConfig, EventQueue, QueueConfig, Target};
use serde_json::Value;

use crate::error::{AppError, Context};

/// Opens the queue and sets every function's asynchronous settings.
/// Returns the queue and the warnings to show.
pub fn open_queue(
    app: &esb_template::AppModel,
    settings: &Settings,
    data_dir: &Path,
) -> Result<(Arc<EventQueue>, Vec<String>), AppError> {
    let mut config = QueueConfig {
        account_id: settings.account_id.clone(),
        region: settings.region.clone(),
        ..QueueConfig::default()
    };
    if let Some(ms) = env_number("ESB_EVENT_RETRY_DELAY_MS") {
        config.retry_base_delay = Duration::from_millis(ms);
        config.throttle_min_delay = config.throttle_min_delay.min(config.retry_base_delay);
    }
    if let Some(n) = env_number("ESB_EVENT_QUEUE_CAPACITY") {
        config.capacity = usize::try_from(n.max(1)).unwrap_or(usize::MAX);
    }
    let dir = data_dir.join("events").join("queue");
    let queue = EventQueue::open(&dir, config)
        .context(|| format!("cannot open the event queue in {}", dir.display()))?;
    let mut warnings = Vec::new();
    for f in &app.functions {
        let (config, mut w) = invoke_config(app, f);
        warnings.append(&mut w);
        if let Some(c) = config {
            queue.set_invoke_config(&f.name, c);
        }
    }
    Ok((queue, warnings))
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The function's `EventInvokeConfig` + `DeadLetterQueue`, or `None` when it
/// has neither (the queue's defaults apply).
fn invoke_config(
    app: &esb_template::AppModel,
    f: &esb_template::Function,
) -> (Option<EventInvokeConfig>, Vec<String>) {
    let mut warnings = Vec::new();
    if f.event_invoke_config.is_none() && f.dead_letter_queue.is_none() {
        return (None, warnings);
    }
    let eic = f.event_invoke_config.clone().unwrap_or(Value::Null);
    let retries = eic
        .get("MaximumRetryAttempts")
        .and_then(number)
        .and_then(|n| u32::try_from(n).ok());
    let age = eic.get("MaximumEventAgeInSeconds").and_then(number);
    let mut config = match EventInvokeConfig::new(retries, age) {
        Ok(c) => c,
        Err(e) => {
            warnings.push(format!(
                "warning: function {}: EventInvokeConfig: {e}; AWS's defaults used",
                f.name
            ));
            EventInvokeConfig::default()
        }
    };
    let dest = eic.get("DestinationConfig");
    for (key, slot) in [
        ("OnSuccess", &mut config.on_success),
        ("OnFailure", &mut config.on_failure),
    ] {
        if let Some(d) = dest.and_then(|d| d.get(key)) {
            let arn = d.get("Destination").and_then(Value::as_str).unwrap_or("");
            let kind = d.get("Type").and_then(Value::as_str);
            *slot = Some(target(
                app,
                f,
                &format!("{key} destination"),
                arn,
                kind,
                &mut warnings,
            ));
        }
    }
    if let Some(dlq) = &f.dead_letter_queue {
        let arn = dlq.get("TargetArn").and_then(Value::as_str).unwrap_or("");
        let kind = dlq.get("Type").and_then(Value::as_str);
        config.dead_letter = Some(target(app, f, "DeadLetterQueue", arn, kind, &mut warnings));
    }
    (Some(config), warnings)
}

fn number(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// A destination ARN (or name) as a queue target: a function of the
/// template, else a stored record with a warning.
fn target(
    app: &esb_template::AppModel,
    f: &esb_template::Function,
    what: &str,
    arn: &str,
    kind: Option<&str>,
    warnings: &mut Vec<String>,
) -> Target {
    let lambda = arn.contains(":lambda:") || kind.is_some_and(|k| k.eq_ignore_ascii_case("Lambda"));
    if lambda || !arn.starts_with("arn:") {
        let name = arn.rsplit(":function:").next().unwrap_or(arn);
        let name = name.split(':').next().unwrap_or(name);
        if let Some(found) = app
            .functions
            .iter()
            .find(|g| g.name == name || g.logical_id == name || g.aliases.iter().any(|a| a == name))
        {
            return Target::Function(found.name.clone());
        }
    }
    warnings.push(format!(
        "warning: function {}: {what} {arn:?} is not a function of this template; ESB does not run it and stores the record in the data dir instead",
        f.name
    ));
    Target::StoredRecord
}
