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
use esb_events::s3::{ObjectChange, S3EventName, S3NotificationRule, S3Notifier};
use esb_events::schedule::{Clock, Schedule, ScheduleKind, Scheduler, SystemClock};
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
    let (configs, warnings) = invoke_configs(app);
    for (name, config) in configs {
        if let Some(c) = config {
            queue.set_invoke_config(&name, c);
        }
    }
    Ok((queue, warnings))
}

/// Every function's asynchronous settings (`None`: the queue's defaults)
/// and the warnings about targets ESB does not run.
pub fn invoke_configs(
    app: &esb_template::AppModel,
) -> (Vec<(String, Option<EventInvokeConfig>)>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut out = Vec::new();
    for f in &app.functions {
        let (config, mut w) = invoke_config(app, f);
        warnings.append(&mut w);
        out.push((f.name.clone(), config));
    }
    (out, warnings)
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

/// The template's `Schedule` / `ScheduleV2` events as queue schedules
/// (named after their event; function by canonical name), with a warning
/// per schedule that cannot run.
pub fn schedules(app: &esb_template::AppModel) -> (Vec<Schedule>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for s in &app.schedules {
        let Some(f) = app.function(&s.function) else {
            continue;
        };
        let kind = if s.kind == "ScheduleV2" {
            ScheduleKind::Scheduler
        } else {
            ScheduleKind::Rule
        };
        match Schedule::new(
            &s.event,
            &f.name,
            &s.expression,
            s.timezone.as_deref(),
            kind,
        ) {
            Ok(mut sched) => {
                sched.enabled = s.enabled;
                sched.input = s.input.clone();
                sched.input_path = s.input_path.clone();
                out.push(sched);
            }
            Err(e) => warnings.push(format!(
                "warning: function {}: schedule {} ({}) is not run: {e}",
                f.name, s.event, s.expression
            )),
        }
    }
    (out, warnings)
}

/// Starts the scheduler over `queue` with the template's schedules (the
/// scheduler is returned for reloads).
/// `ESB_SCHEDULE_TEST_SPEEDUP=N` runs its clock N times faster than real
/// time (a test setting: `rate(1 minute)` fires every second at 60).
pub fn start_scheduler(
    app: &esb_template::AppModel,
    settings: &Settings,
    queue: Arc<EventQueue>,
) -> (Arc<Scheduler>, tokio::task::JoinHandle<()>, Vec<String>) {
    let clock: Arc<dyn Clock> = match env_number("ESB_SCHEDULE_TEST_SPEEDUP") {
        Some(n) if n > 1 => Arc::new(FastClock::new(n)),
        _ => Arc::new(SystemClock),
    };
    let scheduler = Scheduler::new(queue, clock, &settings.account_id, &settings.region);
    let (list, warnings) = schedules(app);
    for s in list {
        scheduler.add(s);
    }
    let task = scheduler.spawn();
    (scheduler, task, warnings)
}

/// A clock that runs `factor` times faster than the wall clock, from now.
struct FastClock {
    factor: u32,
    start_wall: chrono::DateTime<chrono::Utc>,
    start: std::time::Instant,
}

impl FastClock {
    fn new(factor: u64) -> Self {
        Self {
            factor: u32::try_from(factor).unwrap_or(u32::MAX),
            start_wall: chrono::Utc::now(),
            start: std::time::Instant::now(),
        }
    }
}

#[async_trait::async_trait]
impl Clock for FastClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        let scaled = self.start.elapsed().saturating_mul(self.factor);
        self.start_wall + chrono::Duration::from_std(scaled).unwrap_or(chrono::Duration::zero())
    }

    async fn sleep_until(&self, t: chrono::DateTime<chrono::Utc>) {
        let left = (t - self.now()).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep(left / self.factor.max(1)).await;
    }
}

/// `esb events trigger FUNCTION SCHEDULE`: the function's canonical name and
/// the payload one occurrence of its schedule sends now (EventBridge's
/// scheduled event, or the schedule's `Input`).
pub fn trigger_payload(
    app: &esb_template::AppModel,
    settings: &Settings,
    function: &str,
    schedule: &str,
) -> Result<(String, bytes::Bytes), AppError> {
    let canonical = app
        .functions
        .iter()
        .find(|f| f.name == function || f.logical_id == function)
        .map(|f| f.name.clone())
        .ok_or_else(|| AppError::Refused(format!("no function {function:?} in the template")))?;
    let (list, _) = schedules(app);
    let names: Vec<&str> = list
        .iter()
        .filter(|s| s.function == canonical)
        .map(|s| s.name.as_str())
        .collect();
    let s = list
        .iter()
        .find(|s| s.function == canonical && s.name == schedule)
        .ok_or_else(|| {
            AppError::Refused(format!(
                "function {canonical} has no schedule {schedule:?} (its schedules: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ))
        })?;
    let payload = s.payload(chrono::Utc::now(), &settings.account_id, &settings.region);
    Ok((canonical, payload))
}

/// The S3 endpoint's write hook: the template's bucket notifications (bucket
/// `NotificationConfiguration` and functions' `S3` events) as queue events.
/// `None` when no bucket notifies a function.
pub fn s3_hook(
    app: &esb_template::AppModel,
    settings: &Settings,
    queue: Arc<EventQueue>,
) -> (Option<Arc<dyn esb_services_s3::WriteHook>>, Vec<String>) {
    let mut rules = Vec::new();
    let mut warnings = Vec::new();
    for b in &app.buckets {
        for (i, n) in b.notifications.iter().enumerate() {
            let Some(f) = n.function.as_deref().and_then(|id| app.function(id)) else {
                warnings.push(format!(
                    "warning: bucket {}: notification to {:?} is not a function of this template; not run",
                    b.name, n.function_arn
                ));
                continue;
            };
            let events: Vec<&str> = n.events.iter().map(String::as_str).collect();
            let mut filters = Vec::new();
            if let Some(p) = &n.prefix {
                filters.push(("prefix", p.as_str()));
            }
            if let Some(s) = &n.suffix {
                filters.push(("suffix", s.as_str()));
            }
            let id = format!("{}-{}-{i}", b.logical_id, f.logical_id);
            match S3NotificationRule::new(&id, &b.name, &f.name, &events, &filters) {
                Ok(r) => rules.push(r),
                Err(e) => warnings.push(format!(
                    "warning: bucket {}: notification to {} is not run: {e}",
                    b.name, f.name
                )),
            }
        }
    }
    if rules.is_empty() {
        return (None, warnings);
    }
    let notifier = S3Notifier::new(queue, rules, &settings.region);
    (Some(Arc::new(S3Hook { notifier })), warnings)
}

struct S3Hook {
    notifier: S3Notifier,
}

#[async_trait::async_trait]
impl esb_services_s3::WriteHook for S3Hook {
    fn watches(&self, bucket: &str) -> bool {
        self.notifier.watches(bucket)
    }

    async fn written(&self, w: esb_services_s3::ObjectWrite) {
        use esb_services_s3::WriteKind;
        let event = match w.kind {
            WriteKind::Put => S3EventName::Put,
            WriteKind::Copy => S3EventName::Copy,
            WriteKind::CompleteMultipartUpload => S3EventName::CompleteMultipartUpload,
            WriteKind::Delete => S3EventName::Delete,
        };
        let change = ObjectChange {
            bucket: w.bucket,
            key: w.key,
            event,
            size: w.size,
            etag: w.etag,
            version_id: None,
            request_id: w.request_id,
            source_ip: "127.0.0.1".into(),
            principal: "ESB".into(),
            time: chrono::Utc::now(),
        };
        let caller = w
            .trace
            .as_deref()
            .and_then(esb_events::ChainContext::from_header_value);
        // Failures are logged by the notifier; the write itself stands.
        let _ = self.notifier.notify(&change, caller).await;
    }
}

/// The table a stream ARN (`…:table/<name>/stream/<label>`) or table ARN
/// names; a plain name is taken as it is.
fn table_of_stream(arn: &str) -> Option<&str> {
    let rest = match arn.split_once(":table/") {
        Some((_, rest)) => rest,
        None if !arn.starts_with("arn:") && !arn.is_empty() => arn,
        None => return None,
    };
    let name = rest.split('/').next().unwrap_or(rest);
    (!name.is_empty()).then_some(name)
}

fn signed(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

fn flag(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// One function's `DynamoDB` event as a stream mapping: (table name,
/// mapping), or `None` with the warning saying why it does not run.
pub fn stream_mapping(
    app: &esb_template::AppModel,
    f: &esb_template::Function,
    ev: &esb_template::Event,
    warnings: &mut Vec<String>,
) -> Option<(String, esb_events::stream::StreamMapping)> {
    use esb_events::stream::{StartingPosition, StreamMapping};
    let p = &ev.properties;
    let what = format!("function {}: DynamoDB event {}", f.name, ev.name);
    if flag(p.get("Enabled")) == Some(false) {
        warnings.push(format!(
            "note: {what} has Enabled: false; its stream is not read"
        ));
        return None;
    }
    let stream = p.get("Stream").and_then(Value::as_str).unwrap_or("");
    let Some(table) = table_of_stream(stream)
        .and_then(|t| app.tables.iter().find(|x| x.name == t || x.logical_id == t))
    else {
        warnings.push(format!(
            "warning: {what}: stream {stream:?} is not the stream of a table of this template; not run"
        ));
        return None;
    };
    if table.stream_view_type.is_none() {
        warnings.push(format!(
            "warning: {what}: table {} has no StreamSpecification; not run",
            table.name
        ));
        return None;
    }
    let start = match p.get("StartingPosition").and_then(Value::as_str) {
        Some(s) if s.eq_ignore_ascii_case("TRIM_HORIZON") => StartingPosition::TrimHorizon,
        Some(s) if s.eq_ignore_ascii_case("LATEST") => StartingPosition::Latest,
        other => {
            warnings.push(format!(
                "warning: {what}: StartingPosition {other:?} is not TRIM_HORIZON or LATEST; LATEST used"
            ));
            StartingPosition::Latest
        }
    };
    let mut m = StreamMapping::new(&f.name, start);
    if let Some(n) = p.get("BatchSize").and_then(number) {
        if (1..=10_000).contains(&n) {
            m.batch_size = usize::try_from(n).unwrap_or(100);
        } else {
            warnings.push(format!(
                "warning: {what}: BatchSize {n} is outside 1-10000; 100 used"
            ));
        }
    }
    if let Some(n) = p.get("MaximumBatchingWindowInSeconds").and_then(number) {
        m.batching_window = Duration::from_secs(n.min(300));
    }
    m.bisect_on_error = flag(p.get("BisectBatchOnFunctionError")).unwrap_or(false);
    match p.get("MaximumRetryAttempts").and_then(signed) {
        None | Some(-1) => m.max_retry_attempts = None,
        Some(n) if (0..=10_000).contains(&n) => m.max_retry_attempts = u32::try_from(n).ok(),
        Some(n) => warnings.push(format!(
            "warning: {what}: MaximumRetryAttempts {n} is outside -1-10000; -1 (until the record expires) used"
        )),
    }
    if let Some(dest) = p
        .pointer("/DestinationConfig/OnFailure/Destination")
        .and_then(Value::as_str)
    {
        m.on_failure = Some(Target::StoredRecord);
        warnings.push(format!(
            "warning: {what}: OnFailure destination {dest} is not run by ESB; batches given up are stored as files in <data dir>/events/streams/{}/{}/failures",
            table.name, ev.name
        ));
    }
    if let Some(ms) = env_number("ESB_STREAM_RETRY_DELAY_MS") {
        m.retry_delay = Duration::from_millis(ms.max(1));
    }
    for key in [
        "FilterCriteria",
        "ParallelizationFactor",
        "TumblingWindowInSeconds",
        "FunctionResponseTypes",
        "MaximumRecordAgeInSeconds",
    ] {
        if p.get(key).is_some() {
            warnings.push(format!("warning: {what}: {key} is not applied by ESB"));
        }
    }
    Some((table.name.clone(), m))
}

/// Starts one poller per `DynamoDB` event over the embedded table's own
/// stream (dynoxide writes each change's stream record in the same
/// transaction as the item). Checkpoints live in
/// `<data dir>/events/streams/<table>/<event>/`. Returns the pollers (abort
/// them at shutdown) and the warnings to show.
pub fn start_stream_pollers(
    app: &esb_template::AppModel,
    settings: &Settings,
    data_dir: &Path,
    db: Option<&dynoxide::Database>,
    invoker: Arc<dyn esb_events::Invoker>,
) -> (Vec<tokio::task::JoinHandle<()>>, Vec<String>) {
    use esb_events::dynoxide_feed::DynoxideFeed;
    use esb_events::stream::{CheckpointStore, StreamPoller};
    let mut handles = Vec::new();
    let mut warnings = Vec::new();
    for f in &app.functions {
        for ev in f.events.iter().filter(|e| e.kind == "DynamoDB") {
            let Some((table, mapping)) = stream_mapping(app, f, ev, &mut warnings) else {
                continue;
            };
            let Some(db) = db else {
                warnings.push(format!(
                    "warning: function {}: DynamoDB event {} is not run: streams need the embedded DynamoDB",
                    f.name, ev.name
                ));
                continue;
            };
            let dir = data_dir
                .join("events")
                .join("streams")
                .join(&table)
                .join(&ev.name);
            let checkpoints = match CheckpointStore::open(&dir) {
                Ok(c) => c,
                Err(e) => {
                    warnings.push(format!(
                        "warning: function {}: DynamoDB event {} is not run: cannot use {}: {e}",
                        f.name,
                        ev.name,
                        dir.display()
                    ));
                    continue;
                }
            };
            let feed = DynoxideFeed::with_identity(
                db.clone(),
                &table,
                checkpoints,
                &settings.region,
                &settings.account_id,
            );
            handles.push(StreamPoller::new(feed, mapping, invoker.clone()).spawn());
        }
    }
    (handles, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use esb_events::stream::StartingPosition;

    const TEMPLATE: &str = r#"
Transform: AWS::Serverless-2016-10-31
Resources:
  Orders:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: orders
      AttributeDefinitions: [{AttributeName: pk, AttributeType: S}]
      KeySchema: [{AttributeName: pk, KeyType: HASH}]
      StreamSpecification: {StreamViewType: NEW_IMAGE}
  Plain:
    Type: AWS::DynamoDB::Table
    Properties:
      AttributeDefinitions: [{AttributeName: pk, AttributeType: S}]
      KeySchema: [{AttributeName: pk, KeyType: HASH}]
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.handler
      Runtime: python3.11
      Events:
        Full:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt Orders.StreamArn
            StartingPosition: TRIM_HORIZON
            BatchSize: 7
            MaximumBatchingWindowInSeconds: 2
            BisectBatchOnFunctionError: true
            MaximumRetryAttempts: 3
            ParallelizationFactor: 2
            DestinationConfig:
              OnFailure: {Destination: arn:aws:sqs:us-east-1:123456789012:dlq}
        Defaults:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt Orders.StreamArn
            StartingPosition: LATEST
            MaximumRetryAttempts: -1
        Off:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt Orders.StreamArn
            StartingPosition: LATEST
            Enabled: false
        NoStream:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt Plain.StreamArn
            StartingPosition: LATEST
"#;

    fn mappings() -> (
        Vec<(String, esb_events::stream::StreamMapping)>,
        Vec<String>,
    ) {
        let loaded = esb_template::parse_str(
            TEMPLATE,
            "template.yaml",
            Path::new("/tmp"),
            &esb_template::ResolveOptions::default(),
        )
        .expect("template");
        let app = loaded.app;
        let f = app.function("Fn").expect("function");
        let mut warnings = Vec::new();
        let out = f
            .events
            .iter()
            .filter_map(|e| stream_mapping(&app, f, e, &mut warnings))
            .collect();
        (out, warnings)
    }

    #[test]
    fn dynamodb_events_become_stream_mappings_with_aws_settings() {
        let (m, warnings) = mappings();
        assert_eq!(m.len(), 2, "{warnings:?}");
        let (table, full) = &m[0];
        assert_eq!(table, "orders");
        assert_eq!(full.function, "Fn");
        assert_eq!(full.starting_position, StartingPosition::TrimHorizon);
        assert_eq!(full.batch_size, 7);
        assert_eq!(full.batching_window, Duration::from_secs(2));
        assert!(full.bisect_on_error);
        assert_eq!(full.max_retry_attempts, Some(3));
        assert_eq!(full.on_failure, Some(Target::StoredRecord));
        let (_, defaults) = &m[1];
        assert_eq!(defaults.starting_position, StartingPosition::Latest);
        assert_eq!(defaults.batch_size, 100);
        assert_eq!(defaults.max_retry_attempts, None);
        let all = warnings.join("\n");
        for needle in [
            "ParallelizationFactor is not applied",
            "OnFailure destination arn:aws:sqs",
            "Enabled: false",
            "has no StreamSpecification",
        ] {
            assert!(all.contains(needle), "{needle:?} missing in {all}");
        }
    }

    #[test]
    fn stream_arns_name_their_table() {
        assert_eq!(
            table_of_stream("arn:aws:dynamodb:us-east-1:1:table/orders/stream/2024"),
            Some("orders")
        );
        assert_eq!(table_of_stream("orders"), Some("orders"));
        assert_eq!(
            table_of_stream("arn:aws:kinesis:us-east-1:1:stream/x"),
            None
        );
    }
}
