//! Schedules: `Schedule` / `ScheduleV2` events, `AWS::Events::Rule` and
//! `AWS::Scheduler::Schedule`.
//!
//! `rate(...)` is parsed here (it is a few lines); `cron(...)` goes to croner
//! set up for AWS's six fields (minutes hours day-of-month month day-of-week
//! year, Quartz weekday numbers 1 = SUN); `at(...)` one-time schedules
//! (Scheduler) are parsed with chrono. Time zones come from chrono-tz.
//!
//! The [`Scheduler`] task enqueues each occurrence on the durable queue in
//! EventBridge's "Scheduled Event" shape (or the configured `Input`). Time
//! comes from a [`Clock`] so tests drive it without waiting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::queue::{EnqueueError, EventId, EventMeta, EventQueue};

/// A schedule expression that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Not `rate(...)`, `cron(...)` or `at(...)`.
    #[error("schedule expression must be rate(...), cron(...) or at(...): {0:?}")]
    Syntax(String),
    /// A bad `rate(...)`.
    #[error("invalid rate expression {expr:?}: {reason}")]
    Rate {
        /// The expression.
        expr: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A bad `cron(...)`.
    #[error("invalid cron expression {expr:?}: {reason}")]
    Cron {
        /// The expression.
        expr: String,
        /// What is wrong.
        reason: String,
    },
    /// A bad `at(...)`.
    #[error("invalid at expression {0:?}: expected at(yyyy-mm-ddThh:mm:ss)")]
    At(String),
    /// Unknown IANA zone name.
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
}

/// A parsed schedule expression.
#[derive(Debug, Clone)]
pub enum ScheduleExpression {
    /// `rate(N unit)`: every N minutes/hours/days from when the scheduler started.
    Rate(Duration),
    /// `cron(...)`: AWS's six-field cron.
    Cron(Box<Cron>),
    /// `at(...)`: once, at a wall-clock time in the schedule's zone.
    At(NaiveDateTime),
}

impl ScheduleExpression {
    /// Parses `rate(...)`, `cron(...)` or `at(...)`.
    pub fn parse(expr: &str) -> Result<Self, ScheduleError> {
        let e = expr.trim();
        if let Some(inner) = e.strip_prefix("rate(").and_then(|s| s.strip_suffix(')')) {
            return parse_rate(e, inner).map(ScheduleExpression::Rate);
        }
        if let Some(inner) = e.strip_prefix("cron(").and_then(|s| s.strip_suffix(')')) {
            return parse_cron(e, inner).map(|c| ScheduleExpression::Cron(Box::new(c)));
        }
        if let Some(inner) = e.strip_prefix("at(").and_then(|s| s.strip_suffix(')')) {
            return NaiveDateTime::parse_from_str(inner.trim(), "%Y-%m-%dT%H:%M:%S")
                .map(ScheduleExpression::At)
                .map_err(|_| ScheduleError::At(e.to_string()));
        }
        Err(ScheduleError::Syntax(e.to_string()))
    }

    /// The first occurrence strictly after `after`. `start` anchors `rate`
    /// schedules; `tz` is the zone cron and at expressions are read in.
    pub fn next_after(
        &self,
        after: DateTime<Utc>,
        start: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        match self {
            ScheduleExpression::Rate(every) => {
                let every = chrono::Duration::from_std(*every).ok()?;
                if after < start {
                    return Some(start + every);
                }
                let periods = (after - start).num_milliseconds() / every.num_milliseconds().max(1);
                Some(start + every * (periods as i32 + 1))
            }
            ScheduleExpression::Cron(cron) => cron
                .find_next_occurrence(&after.with_timezone(&tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            ScheduleExpression::At(at) => {
                let t = tz.from_local_datetime(at).earliest()?.with_timezone(&Utc);
                (t > after).then_some(t)
            }
        }
    }
}

fn parse_rate(expr: &str, inner: &str) -> Result<Duration, ScheduleError> {
    let err = |reason| ScheduleError::Rate {
        expr: expr.to_string(),
        reason,
    };
    let mut parts = inner.split_whitespace();
    let (Some(n), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(err("expected rate(value unit)"));
    };
    let n: u64 = n
        .parse()
        .map_err(|_| err("value must be a positive whole number"))?;
    if n == 0 {
        return Err(err("value must be a positive whole number"));
    }
    let (secs, singular) = match unit {
        "minute" => (60, true),
        "minutes" => (60, false),
        "hour" => (3600, true),
        "hours" => (3600, false),
        "day" => (86_400, true),
        "days" => (86_400, false),
        _ => return Err(err("unit must be minute(s), hour(s) or day(s)")),
    };
    // AWS: a value of 1 takes the singular unit, anything larger the plural.
    if (n == 1) != singular {
        return Err(err(
            "use the singular unit for 1 (rate(1 minute)) and the plural otherwise (rate(5 minutes))",
        ));
    }
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| err("value too large"))
}

fn parse_cron(expr: &str, inner: &str) -> Result<Cron, ScheduleError> {
    let err = |reason: String| ScheduleError::Cron {
        expr: expr.to_string(),
        reason,
    };
    let fields: Vec<&str> = inner.split_whitespace().collect();
    if fields.len() != 6 {
        return Err(err(format!(
            "AWS cron has six fields (minutes hours day-of-month month day-of-week year), got {}",
            fields.len()
        )));
    }
    // AWS: one of day-of-month / day-of-week must be '?'.
    if (fields[2] == "?") == (fields[4] == "?") {
        return Err(err(
            "exactly one of day-of-month and day-of-week must be '?'".into(),
        ));
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Required)
        .alternative_weekdays(true)
        .sloppy_ranges(true)
        .build();
    parser
        .parse(&format!("0 {}", fields.join(" ")))
        .map_err(|e| err(e.to_string()))
}

/// Which AWS service a schedule imitates (decides the resource ARN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    /// `Schedule` events and `AWS::Events::Rule` (EventBridge rules).
    Rule,
    /// `ScheduleV2` events and `AWS::Scheduler::Schedule` (EventBridge Scheduler).
    Scheduler,
}

/// One schedule targeting one function.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Rule / schedule name (the resource ARN ends with it).
    pub name: String,
    /// Canonical function name.
    pub function: String,
    /// When it fires.
    pub expression: ScheduleExpression,
    /// Zone for cron/at (`ScheduleExpressionTimezone`); UTC when unset.
    pub timezone: Tz,
    /// `Enabled: false` / `State: DISABLED` schedules never fire on their own
    /// (they can still be triggered by hand).
    pub enabled: bool,
    /// `Input`: sent as-is instead of the scheduled event.
    pub input: Option<String>,
    /// A rule target's `InputPath` (`$`, `$.detail`, `$.a.b`): only that
    /// part of the scheduled event is sent. Ignored when `input` is set.
    pub input_path: Option<String>,
    /// Rule or Scheduler.
    pub kind: ScheduleKind,
}

impl Schedule {
    /// Builds a schedule from template values.
    pub fn new(
        name: &str,
        function: &str,
        expression: &str,
        timezone: Option<&str>,
        kind: ScheduleKind,
    ) -> Result<Schedule, ScheduleError> {
        let timezone = match timezone {
            None => Tz::UTC,
            Some(z) => z
                .parse::<Tz>()
                .map_err(|_| ScheduleError::TimeZone(z.to_string()))?,
        };
        Ok(Schedule {
            name: name.to_string(),
            function: function.to_string(),
            expression: ScheduleExpression::parse(expression)?,
            timezone,
            enabled: true,
            input: None,
            input_path: None,
            kind,
        })
    }

    /// The resource ARN put in `resources`.
    pub fn arn(&self, account: &str, region: &str) -> String {
        match self.kind {
            ScheduleKind::Rule => format!("arn:aws:events:{region}:{account}:rule/{}", self.name),
            ScheduleKind::Scheduler => {
                format!(
                    "arn:aws:scheduler:{region}:{account}:schedule/default/{}",
                    self.name
                )
            }
        }
    }

    /// The payload for an occurrence at `time`: `Input` if set, else
    /// EventBridge's scheduled event.
    pub fn payload(&self, time: DateTime<Utc>, account: &str, region: &str) -> Bytes {
        if let Some(input) = &self.input {
            return Bytes::from(input.clone());
        }
        let ev = serde_json::json!({
            "version": "0",
            "id": uuid::Uuid::new_v4().to_string(),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": account,
            "time": time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "region": region,
            "resources": [self.arn(account, region)],
            "detail": {},
        });
        let ev = match self.input_path.as_deref() {
            Some(path) => select(&ev, path)
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            None => ev,
        };
        Bytes::from(serde_json::to_vec(&ev).unwrap_or_default())
    }
}

/// The part of `v` a simple JSONPath names (`$`, `$.a.b`, `$.a[0]`), as
/// EventBridge's `InputPath`; `None` when it names nothing.
fn select<'v>(v: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    let rest = path.trim().strip_prefix('$')?;
    let mut cur = v;
    for part in rest.split('.').filter(|p| !p.is_empty()) {
        let (name, index) = match part.split_once('[') {
            Some((n, i)) => (n, i.strip_suffix(']')?.parse::<usize>().ok()),
            None => (part, None),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

/// Wall-clock time source for the scheduler.
#[async_trait::async_trait]
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
    /// Returns once `now() >= t`.
    async fn sleep_until(&self, t: DateTime<Utc>);
}

/// The real clock. Sleeps in slices of at most a minute so a wall-clock jump
/// (NTP, suspend) is noticed.
pub struct SystemClock;

#[async_trait::async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    async fn sleep_until(&self, t: DateTime<Utc>) {
        loop {
            let left = t - Utc::now();
            let Ok(left) = left.to_std() else { return };
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(Duration::from_secs(60))).await;
        }
    }
}

/// A clock tests move by hand.
pub struct ManualClock {
    now: tokio::sync::watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: tokio::sync::watch::Sender::new(start),
        })
    }
    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::zero());
        self.now.send_modify(|t| *t += by);
    }
}

#[async_trait::async_trait]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }
    async fn sleep_until(&self, t: DateTime<Utc>) {
        let mut rx = self.now.subscribe();
        loop {
            if *rx.borrow_and_update() >= t {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Fires schedules into the durable queue.
pub struct Scheduler {
    queue: Arc<EventQueue>,
    clock: Arc<dyn Clock>,
    account: String,
    region: String,
    schedules: Mutex<Vec<Schedule>>,
    /// Bumped by [`Scheduler::replace`]: the running loop recomputes every
    /// next fire time when it changes.
    generation: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
}

impl Scheduler {
    /// A scheduler with no schedules yet.
    pub fn new(
        queue: Arc<EventQueue>,
        clock: Arc<dyn Clock>,
        account: &str,
        region: &str,
    ) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            queue,
            clock,
            account: account.to_string(),
            region: region.to_string(),
            schedules: Mutex::new(Vec::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// Adds a schedule (takes effect at once in a running scheduler).
    pub fn add(&self, s: Schedule) {
        if !s.enabled {
            tracing::info!(schedule = %s.name, function = %s.function, "schedule is disabled (Enabled: false)");
        }
        self.schedules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s);
        self.changed.notify_one();
    }

    /// Replaces every schedule (a template reload): takes effect at once in a
    /// running scheduler. Rates keep their phase (they count from the
    /// scheduler's start); an occurrence due while the set is swapped fires
    /// at most once.
    pub fn replace(&self, list: Vec<Schedule>) {
        for s in list.iter().filter(|s| !s.enabled) {
            tracing::info!(schedule = %s.name, function = %s.function, "schedule is disabled (Enabled: false)");
        }
        {
            // Swapped and counted under the lock, so the loop never pairs
            // the new list with the old fire times.
            let mut schedules = self.schedules.lock().unwrap_or_else(|e| e.into_inner());
            *schedules = list;
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.changed.notify_one();
    }

    /// The schedules now in effect (names and functions).
    pub fn names(&self) -> Vec<(String, String)> {
        self.schedules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| (s.function.clone(), s.name.clone()))
            .collect()
    }

    /// `esb events trigger FUNCTION SCHEDULE`: enqueues one occurrence now,
    /// enabled or not. `None` if no such schedule targets that function.
    pub async fn trigger(
        &self,
        function: &str,
        schedule: &str,
    ) -> Option<Result<EventId, EnqueueError>> {
        let s = self
            .schedules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| s.function == function && s.name == schedule)
            .cloned()?;
        let payload = s.payload(self.clock.now(), &self.account, &self.region);
        Some(
            self.queue
                .enqueue(&s.function, payload, EventMeta::new("schedule", None))
                .await,
        )
    }

    /// Starts the scheduler task. Occurrences missed while ESB was stopped, or
    /// skipped by a clock jump, are not caught up (one fire per wake-up).
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move { me.run().await })
    }

    async fn run(self: Arc<Self>) {
        let start = self.clock.now();
        // (index in `schedules`, next fire time)
        let mut next: Vec<Option<DateTime<Utc>>> = Vec::new();
        let mut seen_generation = 0;
        loop {
            let (schedules, generation) = {
                let list = self.schedules.lock().unwrap_or_else(|e| e.into_inner());
                (
                    list.clone(),
                    self.generation.load(std::sync::atomic::Ordering::SeqCst),
                )
            };
            if generation != seen_generation {
                seen_generation = generation;
                next.clear();
            }
            let now = self.clock.now();
            while next.len() < schedules.len() {
                let s = &schedules[next.len()];
                next.push(if s.enabled {
                    s.expression.next_after(now, start, s.timezone)
                } else {
                    None
                });
            }
            for (i, s) in schedules.iter().enumerate() {
                let Some(due) = next[i] else { continue };
                if due > now {
                    continue;
                }
                let payload = s.payload(due, &self.account, &self.region);
                self.fire(s, payload);
                next[i] = s.expression.next_after(now.max(due), start, s.timezone);
            }
            let earliest = next.iter().flatten().min().copied();
            let changed = self.changed.notified();
            match earliest {
                Some(t) => {
                    tokio::select! {
                        _ = self.clock.sleep_until(t) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Enqueues; a full queue is retried every second for up to ten minutes.
    fn fire(&self, s: &Schedule, payload: Bytes) {
        let queue = Arc::clone(&self.queue);
        let function = s.function.clone();
        let name = s.name.clone();
        tokio::spawn(async move {
            for _ in 0..600 {
                match queue
                    .enqueue(&function, payload.clone(), EventMeta::new("schedule", None))
                    .await
                {
                    Ok(id) => {
                        tracing::debug!(schedule = %name, %function, request_id = %id, "scheduled event queued");
                        return;
                    }
                    Err(EnqueueError::QueueFull) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        tracing::error!(schedule = %name, %function, error = %e, "scheduled event not queued");
                        return;
                    }
                }
            }
            tracing::error!(schedule = %name, %function, "scheduled event dropped: event queue full for ten minutes");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ChainContext;
    use crate::config::QueueConfig;
    use crate::invoker::{InvokeOutcome, Invoker};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    fn next(expr: &str, after: &str, tz: Tz) -> String {
        let e = ScheduleExpression::parse(expr).expect("parses");
        let t = utc(after);
        e.next_after(t, t, tz).expect("has a next").to_rfc3339()
    }

    #[test]
    fn rate_rules() {
        assert!(
            matches!(ScheduleExpression::parse("rate(1 minute)"), Ok(ScheduleExpression::Rate(d)) if d == Duration::from_secs(60))
        );
        assert!(
            matches!(ScheduleExpression::parse("rate(5 minutes)"), Ok(ScheduleExpression::Rate(d)) if d == Duration::from_secs(300))
        );
        assert!(
            matches!(ScheduleExpression::parse("rate(2 hours)"), Ok(ScheduleExpression::Rate(d)) if d == Duration::from_secs(7200))
        );
        assert!(
            matches!(ScheduleExpression::parse("rate(1 day)"), Ok(ScheduleExpression::Rate(d)) if d == Duration::from_secs(86400))
        );
        for bad in [
            "rate(1 minutes)",
            "rate(5 minute)",
            "rate(0 minutes)",
            "rate(-1 minutes)",
            "rate(1 week)",
            "rate(1.5 hours)",
            "rate(minute)",
            "rate()",
            "rate(1 minute",
        ] {
            assert!(
                ScheduleExpression::parse(bad).is_err(),
                "{bad} must be refused"
            );
        }
        assert_eq!(
            next("rate(5 minutes)", "2026-01-01T00:00:00Z", Tz::UTC),
            "2026-01-01T00:05:00+00:00"
        );
    }

    #[test]
    fn aws_cron() {
        // Weekdays at 12:00 UTC: Quartz numbers 2-6 = MON-FRI. 2026-01-03 is a Saturday.
        assert_eq!(
            next("cron(0 12 ? * 2-6 *)", "2026-01-03T00:00:00Z", Tz::UTC),
            "2026-01-05T12:00:00+00:00"
        );
        assert_eq!(
            next("cron(0 12 ? * MON-FRI *)", "2026-01-03T00:00:00Z", Tz::UTC),
            "2026-01-05T12:00:00+00:00"
        );
        assert_eq!(
            next("cron(0/5 * * * ? *)", "2026-01-01T00:01:00Z", Tz::UTC),
            "2026-01-01T00:05:00+00:00"
        );
        assert_eq!(
            next("cron(0 12 L * ? *)", "2026-02-01T00:00:00Z", Tz::UTC),
            "2026-02-28T12:00:00+00:00"
        );
        // Second Monday (Quartz 2#2) of March 2026 = 9th.
        assert_eq!(
            next("cron(0 8 ? 3 2#2 *)", "2026-01-01T00:00:00Z", Tz::UTC),
            "2026-03-09T08:00:00+00:00"
        );
        // Nearest weekday to the 15th: 2026-02-15 is a Sunday -> Monday 16th.
        assert_eq!(
            next("cron(0 9 15W 2 ? *)", "2026-01-01T00:00:00Z", Tz::UTC),
            "2026-02-16T09:00:00+00:00"
        );
        // Last weekday of January 2026 (31st is a Saturday).
        assert_eq!(
            next("cron(0 12 LW * ? *)", "2026-01-01T00:00:00Z", Tz::UTC),
            "2026-01-30T12:00:00+00:00"
        );
        // Year field.
        assert_eq!(
            next("cron(15 10 ? * 6L 2027)", "2026-01-01T00:00:00Z", Tz::UTC),
            "2027-01-29T10:15:00+00:00"
        );
        for bad in [
            "cron(0 12 * * * *)",
            "cron(0 12 ? * ? *)",
            "cron(0 12 * *)",
            "cron(61 * * * ? *)",
            "cron(0 12 ? * 2-6)",
            "cron(0 12 L-2 * ? *)",
        ] {
            assert!(
                ScheduleExpression::parse(bad).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn input_path_selects_part_of_the_scheduled_event() {
        let mut s =
            Schedule::new("r", "f", "rate(1 minute)", None, ScheduleKind::Rule).expect("schedule");
        let at = utc("2026-06-01T00:00:00Z");
        let value = |s: &Schedule| -> serde_json::Value {
            serde_json::from_slice(&s.payload(at, "123456789012", "us-east-1")).expect("json")
        };
        s.input_path = Some("$.detail".into());
        assert_eq!(value(&s), serde_json::json!({}));
        s.input_path = Some("$.resources[0]".into());
        assert_eq!(value(&s), "arn:aws:events:us-east-1:123456789012:rule/r");
        s.input_path = Some("$".into());
        assert_eq!(value(&s)["source"], "aws.events");
        s.input_path = Some("$.nothing".into());
        assert_eq!(value(&s), serde_json::Value::Null);
        s.input = Some(r#"{"k":1}"#.into());
        assert_eq!(value(&s), serde_json::json!({"k": 1}));
    }

    #[test]
    fn time_zones_and_at() {
        let tz: Tz = "Asia/Tokyo".parse().expect("zone");
        // 09:00 in Tokyo is 00:00 UTC.
        assert_eq!(
            next("cron(0 9 * * ? *)", "2026-06-01T01:00:00Z", tz),
            "2026-06-02T00:00:00+00:00"
        );
        let ny: Tz = "America/New_York".parse().expect("zone");
        // Summer (EDT, UTC-4) vs winter (EST, UTC-5).
        assert_eq!(
            next("cron(0 9 * * ? *)", "2026-07-01T00:00:00Z", ny),
            "2026-07-01T13:00:00+00:00"
        );
        assert_eq!(
            next("cron(0 9 * * ? *)", "2026-12-01T00:00:00Z", ny),
            "2026-12-01T14:00:00+00:00"
        );
        assert_eq!(
            next("at(2026-05-01T10:00:00)", "2026-01-01T00:00:00Z", tz),
            "2026-05-01T01:00:00+00:00"
        );
        let e = ScheduleExpression::parse("at(2026-05-01T10:00:00)").expect("at");
        assert!(
            e.next_after(
                utc("2026-06-01T00:00:00Z"),
                utc("2026-06-01T00:00:00Z"),
                Tz::UTC
            )
            .is_none()
        );
        assert!(
            Schedule::new(
                "r",
                "f",
                "rate(1 day)",
                Some("Mars/Olympus"),
                ScheduleKind::Scheduler
            )
            .is_err()
        );
    }

    struct Rec(Mutex<Vec<(String, Bytes)>>);

    #[async_trait::async_trait]
    impl Invoker for Rec {
        async fn invoke(&self, f: &str, p: Bytes, _r: &str, _c: &ChainContext) -> InvokeOutcome {
            self.0.lock().expect("lock").push((f.to_string(), p));
            InvokeOutcome::Success {
                response: Bytes::new(),
            }
        }
    }

    async fn wait_for(rec: &Rec, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rec.0.lock().expect("lock").len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} invocations"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn scheduler_fires_on_the_test_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(dir.path(), QueueConfig::default()).expect("open");
        let rec = Arc::new(Rec(Mutex::new(Vec::new())));
        q.start_dispatcher(rec.clone());
        let clock = ManualClock::new(utc("2026-03-01T10:00:00Z"));
        let sched = Scheduler::new(Arc::clone(&q), clock.clone(), "123456789012", "eu-west-1");
        sched.add(
            Schedule::new(
                "every-minute",
                "tick",
                "rate(1 minute)",
                None,
                ScheduleKind::Rule,
            )
            .expect("ok"),
        );
        let mut with_input = Schedule::new(
            "hourly",
            "hour",
            "cron(0 * * * ? *)",
            None,
            ScheduleKind::Scheduler,
        )
        .expect("ok");
        with_input.input = Some("{\"job\":\"report\"}".into());
        sched.add(with_input);
        let mut off =
            Schedule::new("off", "never", "rate(1 minute)", None, ScheduleKind::Rule).expect("ok");
        off.enabled = false;
        sched.add(off);
        sched.spawn();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            rec.0.lock().expect("lock").is_empty(),
            "nothing before the first minute"
        );
        clock.advance(Duration::from_secs(60));
        wait_for(&rec, 1).await;
        let (f, p) = rec.0.lock().expect("lock")[0].clone();
        assert_eq!(f, "tick");
        let ev: serde_json::Value = serde_json::from_slice(&p).expect("json");
        assert_eq!(ev["version"], "0");
        assert_eq!(ev["detail-type"], "Scheduled Event");
        assert_eq!(ev["source"], "aws.events");
        assert_eq!(ev["account"], "123456789012");
        assert_eq!(ev["region"], "eu-west-1");
        assert_eq!(ev["time"], "2026-03-01T10:01:00Z");
        assert_eq!(
            ev["resources"],
            serde_json::json!(["arn:aws:events:eu-west-1:123456789012:rule/every-minute"])
        );
        assert_eq!(ev["detail"], serde_json::json!({}));
        assert_eq!(ev["id"].as_str().map(str::len), Some(36));
        // 59 more minutes: 59 ticks and the hourly job with its Input.
        for n in 2..=60 {
            clock.advance(Duration::from_secs(60));
            let ticks = || {
                rec.0
                    .lock()
                    .expect("lock")
                    .iter()
                    .filter(|c| c.0 == "tick")
                    .count()
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while ticks() < n {
                assert!(tokio::time::Instant::now() < deadline, "tick {n} missing");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        wait_for(&rec, 61).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let calls = rec.0.lock().expect("lock").clone();
        assert_eq!(calls.iter().filter(|c| c.0 == "tick").count(), 60);
        let hourly: Vec<_> = calls.iter().filter(|c| c.0 == "hour").collect();
        assert_eq!(hourly.len(), 1);
        assert_eq!(hourly[0].1.as_ref(), b"{\"job\":\"report\"}");
        assert!(
            calls.iter().all(|c| c.0 != "never"),
            "disabled schedule fired"
        );
        // A disabled schedule can still be fired by hand.
        sched
            .trigger("never", "off")
            .await
            .expect("known")
            .expect("queued");
        wait_for(&rec, 62).await;
        assert!(sched.trigger("never", "nope").await.is_none());
    }

    #[tokio::test]
    async fn replaced_schedules_take_effect_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(dir.path(), QueueConfig::default()).expect("open");
        let rec = Arc::new(Rec(Mutex::new(Vec::new())));
        q.start_dispatcher(rec.clone());
        let clock = ManualClock::new(utc("2026-03-01T10:00:00Z"));
        let sched = Scheduler::new(Arc::clone(&q), clock.clone(), "123456789012", "eu-west-1");
        let every = |name: &str, function: &str| {
            Schedule::new(name, function, "rate(1 minute)", None, ScheduleKind::Rule).expect("ok")
        };
        sched.add(every("old", "before"));
        sched.spawn();
        // The loop reads the manual clock when it wakes: let it settle
        // before each advance (as the test above does).
        tokio::time::sleep(Duration::from_millis(50)).await;
        clock.advance(Duration::from_secs(60));
        wait_for(&rec, 1).await;
        // A reload: the old schedule goes, a new one comes.
        sched.replace(vec![every("new", "after")]);
        assert_eq!(
            sched.names(),
            vec![("after".to_string(), "new".to_string())]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        clock.advance(Duration::from_secs(60));
        wait_for(&rec, 2).await;
        clock.advance(Duration::from_secs(60));
        wait_for(&rec, 3).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let calls: Vec<String> = rec
            .0
            .lock()
            .expect("lock")
            .iter()
            .map(|c| c.0.clone())
            .collect();
        assert_eq!(calls, ["before", "after", "after"], "{calls:?}");
        assert!(
            sched.trigger("before", "old").await.is_none(),
            "old one gone"
        );
    }
}
