//! Per-function asynchronous invocation settings (`EventInvokeConfig`,
//! `DeadLetterQueue`) and the queue's own settings.

use std::time::Duration;

/// Where a destination or dead-letter record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Another function (canonical pool name): the record is enqueued to it as an
    /// `Event` invocation, so it is as durable as any other event.
    Function(String),
    /// A JSON file per record under `<queue dir>/dead-letter/`.
    /// Used for DLQs and destinations ESB does not run (SQS, SNS, EventBridge):
    /// the app assembly warns about those once and maps them here.
    StoredRecord,
}

impl Target {
    /// Maps a destination or `DeadLetterQueue` target from the template.
    ///
    /// A Lambda function ARN (`arn:aws:lambda:<r>:<a>:function:<name>[:<qualifier>]`)
    /// or a bare function name becomes [`Target::Function`]; anything else
    /// (SQS, SNS, EventBridge, S3) becomes [`Target::StoredRecord`] with the
    /// warning text to log once at start-up.
    pub fn from_arn(arn: &str) -> (Target, Option<String>) {
        let parts: Vec<&str> = arn.split(':').collect();
        if !arn.starts_with("arn:") {
            return (Target::Function(arn.to_string()), None);
        }
        if parts.len() >= 7
            && parts[2] == "lambda"
            && parts[5] == "function"
            && !parts[6].is_empty()
        {
            return (Target::Function(parts[6].to_string()), None);
        }
        let service = match parts.get(2).copied().unwrap_or("") {
            "sqs" => "SQS queue",
            "sns" => "SNS topic",
            "events" => "EventBridge bus",
            "s3" => "S3 bucket",
            _ => "target",
        };
        (
            Target::StoredRecord,
            Some(format!(
                "{service} destination {arn} is not run by ESB; its records are stored as files in the event queue's dead-letter directory"
            )),
        )
    }
}

/// Invalid `EventInvokeConfig` values (the template layer reports them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `MaximumRetryAttempts` outside 0..=2.
    #[error("MaximumRetryAttempts must be between 0 and 2, got {0}")]
    RetryAttempts(u32),
    /// `MaximumEventAgeInSeconds` outside 60..=21600.
    #[error("MaximumEventAgeInSeconds must be between 60 and 21600, got {0}")]
    EventAge(u64),
}

/// A function's asynchronous invocation settings, as
/// `AWS::Lambda::EventInvokeConfig` / SAM `EventInvokeConfig` plus
/// `DeadLetterQueue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInvokeConfig {
    /// Retries after a function error: 0..=2, default 2.
    pub maximum_retry_attempts: u32,
    /// Oldest age of an event still tried: 60..=21600 s, default 21600.
    pub maximum_event_age: Duration,
    /// `DestinationConfig.OnSuccess`.
    pub on_success: Option<Target>,
    /// `DestinationConfig.OnFailure`.
    pub on_failure: Option<Target>,
    /// `DeadLetterQueue` (`DeadLetterConfig.TargetArn`): the original event.
    pub dead_letter: Option<Target>,
}

impl Default for EventInvokeConfig {
    fn default() -> Self {
        Self {
            maximum_retry_attempts: 2,
            maximum_event_age: Duration::from_secs(21_600),
            on_success: None,
            on_failure: None,
            dead_letter: None,
        }
    }
}

impl EventInvokeConfig {
    /// Builds a config from template values, checking AWS's ranges.
    pub fn new(
        maximum_retry_attempts: Option<u32>,
        maximum_event_age_seconds: Option<u64>,
    ) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        if let Some(n) = maximum_retry_attempts {
            if n > 2 {
                return Err(ConfigError::RetryAttempts(n));
            }
            c.maximum_retry_attempts = n;
        }
        if let Some(s) = maximum_event_age_seconds {
            if !(60..=21_600).contains(&s) {
                return Err(ConfigError::EventAge(s));
            }
            c.maximum_event_age = Duration::from_secs(s);
        }
        Ok(c)
    }
}

/// Settings of the queue itself.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Most events held (queued, waiting for a retry or running). Past it
    /// `enqueue` answers `QueueFull` (the Invoke API's 429).
    pub capacity: usize,
    /// Most payload bytes held (payloads stay in memory until finished); past
    /// it `enqueue` answers `QueueFull` too.
    pub capacity_bytes: usize,
    /// Largest accepted payload (AWS: 1 MiB for `Event`).
    pub max_payload_bytes: usize,
    /// Delay before the first retry after a function error; the second waits
    /// twice as long. AWS: about 1 minute (so 1 min, then 2 min).
    pub retry_base_delay: Duration,
    /// First back-off after a throttle or service error (AWS: 1 s) ...
    pub throttle_min_delay: Duration,
    /// ... doubling up to this (AWS: 5 min).
    pub throttle_max_delay: Duration,
    /// Invocations the dispatcher runs at once, over all functions.
    pub max_in_flight: usize,
    /// ... and per function (a slow function cannot hold every slot).
    pub max_in_flight_per_function: usize,
    /// A log segment is closed past this size; fully delivered segments are deleted.
    pub segment_bytes: u64,
    /// AWS account id and region for ARNs in destination records.
    pub account_id: String,
    /// See `account_id`.
    pub region: String,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            capacity_bytes: 512 * 1024 * 1024,
            max_payload_bytes: 1024 * 1024,
            retry_base_delay: Duration::from_secs(60),
            throttle_min_delay: Duration::from_secs(1),
            throttle_max_delay: Duration::from_secs(300),
            max_in_flight: 64,
            max_in_flight_per_function: 16,
            segment_bytes: 64 * 1024 * 1024,
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_arns() {
        assert_eq!(
            Target::from_arn("arn:aws:lambda:us-east-1:123456789012:function:on-fail"),
            (Target::Function("on-fail".into()), None)
        );
        assert_eq!(
            Target::from_arn("arn:aws:lambda:us-east-1:123456789012:function:f:prod").0,
            Target::Function("f".into())
        );
        assert_eq!(
            Target::from_arn("my-fn").0,
            Target::Function("my-fn".into())
        );
        let (t, w) = Target::from_arn("arn:aws:sqs:us-east-1:123456789012:dlq");
        assert_eq!(t, Target::StoredRecord);
        assert!(
            w.expect("warning")
                .starts_with("SQS queue destination arn:aws:sqs")
        );
        let (t, w) = Target::from_arn("arn:aws:sns:us-east-1:123456789012:topic");
        assert_eq!(t, Target::StoredRecord);
        assert!(w.expect("warning").contains("SNS topic"));
        assert!(
            Target::from_arn("arn:aws:events:us-east-1:1:event-bus/default")
                .1
                .is_some()
        );
    }

    #[test]
    fn ranges_are_aws_ranges() {
        assert!(EventInvokeConfig::new(Some(0), Some(60)).is_ok());
        assert!(EventInvokeConfig::new(Some(2), Some(21_600)).is_ok());
        assert_eq!(
            EventInvokeConfig::new(Some(3), None),
            Err(ConfigError::RetryAttempts(3))
        );
        assert_eq!(
            EventInvokeConfig::new(None, Some(59)),
            Err(ConfigError::EventAge(59))
        );
        assert_eq!(
            EventInvokeConfig::new(None, Some(21_601)),
            Err(ConfigError::EventAge(21_601))
        );
        let d = EventInvokeConfig::default();
        assert_eq!(d.maximum_retry_attempts, 2);
        assert_eq!(d.maximum_event_age, Duration::from_secs(21_600));
    }
}
