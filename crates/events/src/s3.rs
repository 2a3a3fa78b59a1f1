//! S3 event notifications: the `S3` event source on functions and a bucket's
//! `NotificationConfiguration` (`LambdaConfigurations`).
//!
//! The embedded S3 service calls [`S3Notifier::notify`] after a write is
//! durable; every matching rule gets one record, enqueued on the durable queue
//! (S3 invokes Lambda asynchronously on AWS too).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::chain::ChainContext;
use crate::queue::{EnqueueError, EventId, EventMeta, EventQueue};

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3EventName {
    /// PutObject.
    Put,
    /// Browser POST upload.
    Post,
    /// CopyObject.
    Copy,
    /// CompleteMultipartUpload.
    CompleteMultipartUpload,
    /// DeleteObject / DeleteObjects.
    Delete,
    /// Delete on a versioned bucket.
    DeleteMarkerCreated,
}

impl S3EventName {
    /// As in the record's `eventName` (`ObjectCreated:Put`).
    pub fn as_str(self) -> &'static str {
        match self {
            S3EventName::Put => "ObjectCreated:Put",
            S3EventName::Post => "ObjectCreated:Post",
            S3EventName::Copy => "ObjectCreated:Copy",
            S3EventName::CompleteMultipartUpload => "ObjectCreated:CompleteMultipartUpload",
            S3EventName::Delete => "ObjectRemoved:Delete",
            S3EventName::DeleteMarkerCreated => "ObjectRemoved:DeleteMarkerCreated",
        }
    }

    fn is_created(self) -> bool {
        self.as_str().starts_with("ObjectCreated:")
    }
}

/// A notification rule that is not valid on AWS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3RuleError {
    /// An event type S3 does not have (or ESB does not emit).
    #[error(
        "unsupported S3 event type {0:?} (ESB emits s3:ObjectCreated:* and s3:ObjectRemoved:*)"
    )]
    EventType(String),
    /// A filter rule name other than prefix / suffix.
    #[error("unsupported S3 filter rule name {0:?} (prefix or suffix)")]
    FilterName(String),
}

const KNOWN_EVENTS: &[&str] = &[
    "s3:ObjectCreated:*",
    "s3:ObjectCreated:Put",
    "s3:ObjectCreated:Post",
    "s3:ObjectCreated:Copy",
    "s3:ObjectCreated:CompleteMultipartUpload",
    "s3:ObjectRemoved:*",
    "s3:ObjectRemoved:Delete",
    "s3:ObjectRemoved:DeleteMarkerCreated",
];

/// One Lambda notification rule on a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3NotificationRule {
    /// `Id` / configuration id (`s3.configurationId` in the record).
    pub id: String,
    /// Bucket name.
    pub bucket: String,
    /// Canonical function name.
    pub function: String,
    /// Event types (`s3:ObjectCreated:*`, `s3:ObjectRemoved:Delete`, …).
    pub events: Vec<String>,
    /// `Filter.S3Key.Rules` prefix (case-sensitive, on the raw key).
    pub prefix: Option<String>,
    /// ... and suffix.
    pub suffix: Option<String>,
}

impl S3NotificationRule {
    /// Builds a rule, checking event types and filter names
    /// (`filters` are `(Name, Value)` pairs of `Filter.S3Key.Rules`).
    pub fn new(
        id: &str,
        bucket: &str,
        function: &str,
        events: &[&str],
        filters: &[(&str, &str)],
    ) -> Result<Self, S3RuleError> {
        for e in events {
            if !KNOWN_EVENTS.contains(e) {
                return Err(S3RuleError::EventType(e.to_string()));
            }
        }
        let mut rule = S3NotificationRule {
            id: id.to_string(),
            bucket: bucket.to_string(),
            function: function.to_string(),
            events: events.iter().map(|e| e.to_string()).collect(),
            prefix: None,
            suffix: None,
        };
        for (name, value) in filters {
            match name.to_ascii_lowercase().as_str() {
                "prefix" => rule.prefix = Some(value.to_string()),
                "suffix" => rule.suffix = Some(value.to_string()),
                _ => return Err(S3RuleError::FilterName(name.to_string())),
            }
        }
        Ok(rule)
    }

    /// Does a change of `key` in `bucket` by `event` fire this rule?
    pub fn matches(&self, bucket: &str, event: S3EventName, key: &str) -> bool {
        if bucket != self.bucket {
            return false;
        }
        let name = event.as_str();
        let group = if event.is_created() {
            "s3:ObjectCreated:*"
        } else {
            "s3:ObjectRemoved:*"
        };
        let event_ok = self
            .events
            .iter()
            .any(|e| e == group || e.strip_prefix("s3:") == Some(name));
        event_ok
            && self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
            && self.suffix.as_deref().is_none_or(|s| key.ends_with(s))
    }
}

/// A change to one object, as the S3 service reports it.
#[derive(Debug, Clone)]
pub struct ObjectChange {
    /// Bucket.
    pub bucket: String,
    /// Raw (decoded) object key.
    pub key: String,
    /// What happened.
    pub event: S3EventName,
    /// Object size (created events).
    pub size: Option<u64>,
    /// ETag without quotes (created events).
    pub etag: Option<String>,
    /// Version id if the bucket is versioned.
    pub version_id: Option<String>,
    /// The S3 request id.
    pub request_id: String,
    /// Caller's address.
    pub source_ip: String,
    /// Caller's access key / principal.
    pub principal: String,
    /// When the write completed.
    pub time: DateTime<Utc>,
}

/// Encodes a key as S3 does in event records: form-style, space as `+`,
/// `/` kept.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Monotonic `sequencer` values (hex, growing per write; S3 only promises
/// ordering per key, this is ordered for all).
#[derive(Debug)]
pub struct Sequencer(AtomicU64);

impl Default for Sequencer {
    fn default() -> Self {
        let start = Utc::now().timestamp_nanos_opt().unwrap_or(0).max(0) as u64;
        Sequencer(AtomicU64::new(start))
    }
}

impl Sequencer {
    /// The next value, 16 upper-case hex digits.
    pub fn next(&self) -> String {
        format!("{:016X}", self.0.fetch_add(1, Ordering::Relaxed))
    }
}

/// Builds the `{"Records": [...]}` event for one change and rule.
pub fn s3_event(
    change: &ObjectChange,
    configuration_id: &str,
    sequencer: &str,
    region: &str,
) -> serde_json::Value {
    let mut object = serde_json::json!({
        "key": encode_key(&change.key),
        "sequencer": sequencer,
    });
    if let Some(size) = change.size {
        object["size"] = size.into();
    }
    if let Some(etag) = &change.etag {
        object["eTag"] = etag.trim_matches('"').into();
    }
    if let Some(v) = &change.version_id {
        object["versionId"] = v.clone().into();
    }
    serde_json::json!({ "Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": change.time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "eventName": change.event.as_str(),
        "userIdentity": { "principalId": change.principal },
        "requestParameters": { "sourceIPAddress": change.source_ip },
        "responseElements": {
            "x-amz-request-id": change.request_id,
            "x-amz-id-2": change.request_id,
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": configuration_id,
            "bucket": {
                "name": change.bucket,
                "ownerIdentity": { "principalId": change.principal },
                "arn": format!("arn:aws:s3:::{}", change.bucket),
            },
            "object": object,
        },
    }]})
}

/// Routes object changes to the functions whose rules match.
pub struct S3Notifier {
    queue: Arc<EventQueue>,
    rules: Vec<S3NotificationRule>,
    region: String,
    sequencer: Sequencer,
}

impl S3Notifier {
    /// A notifier for these rules.
    pub fn new(queue: Arc<EventQueue>, rules: Vec<S3NotificationRule>, region: &str) -> Self {
        Self {
            queue,
            rules,
            region: region.to_string(),
            sequencer: Sequencer::default(),
        }
    }

    /// True if some rule watches `bucket` (lets the S3 service skip the work).
    pub fn watches(&self, bucket: &str) -> bool {
        self.rules.iter().any(|r| r.bucket == bucket)
    }

    /// Call after the change is durable. Enqueues one event per matching
    /// rule; `caller` is the chain of the request that made the change (its
    /// `X-Amzn-Trace-Id`), so a function writing to its own trigger bucket is
    /// stopped after 16 rounds. Returns the outcome per matching rule.
    pub async fn notify(
        &self,
        change: &ObjectChange,
        caller: Option<ChainContext>,
    ) -> Vec<(String, Result<EventId, EnqueueError>)> {
        let mut out = Vec::new();
        let sequencer = self.sequencer.next();
        for rule in self
            .rules
            .iter()
            .filter(|r| r.matches(&change.bucket, change.event, &change.key))
        {
            let ev = s3_event(change, &rule.id, &sequencer, &self.region);
            let payload = Bytes::from(serde_json::to_vec(&ev).unwrap_or_default());
            let r = self
                .queue
                .enqueue(
                    &rule.function,
                    payload,
                    EventMeta::new("s3", caller.clone()),
                )
                .await;
            if let Err(e) = &r {
                tracing::error!(bucket = %change.bucket, key = %change.key, function = %rule.function,
                    error = %e, "S3 notification not queued");
            }
            out.push((rule.function.clone(), r));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, event: S3EventName) -> ObjectChange {
        ObjectChange {
            bucket: "uploads".into(),
            key: key.into(),
            event,
            size: Some(1024),
            etag: Some("\"d41d8cd98f00b204e9800998ecf8427e\"".into()),
            version_id: None,
            request_id: "REQ1".into(),
            source_ip: "127.0.0.1".into(),
            principal: "AKIDEXAMPLE".into(),
            time: DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
                .expect("time")
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn filters() {
        let r = S3NotificationRule::new(
            "img",
            "uploads",
            "thumb",
            &["s3:ObjectCreated:*"],
            &[("prefix", "images/"), ("Suffix", ".jpg")],
        )
        .expect("valid");
        assert!(r.matches("uploads", S3EventName::Put, "images/a.jpg"));
        assert!(r.matches(
            "uploads",
            S3EventName::CompleteMultipartUpload,
            "images/b.jpg"
        ));
        assert!(!r.matches("uploads", S3EventName::Delete, "images/a.jpg"));
        assert!(!r.matches("uploads", S3EventName::Put, "docs/a.jpg"));
        assert!(!r.matches("uploads", S3EventName::Put, "images/a.png"));
        assert!(!r.matches("other", S3EventName::Put, "images/a.jpg"));
        let d = S3NotificationRule::new("d", "uploads", "f", &["s3:ObjectRemoved:*"], &[])
            .expect("valid");
        assert!(d.matches("uploads", S3EventName::Delete, "x"));
        assert!(d.matches("uploads", S3EventName::DeleteMarkerCreated, "x"));
        assert!(!d.matches("uploads", S3EventName::Put, "x"));
        let put = S3NotificationRule::new("p", "uploads", "f", &["s3:ObjectCreated:Put"], &[])
            .expect("valid");
        assert!(put.matches("uploads", S3EventName::Put, "x"));
        assert!(!put.matches("uploads", S3EventName::Copy, "x"));
        assert!(S3NotificationRule::new("x", "b", "f", &["s3:ObjectRestore:*"], &[]).is_err());
        assert!(
            S3NotificationRule::new("x", "b", "f", &["s3:ObjectCreated:*"], &[("middle", "a")])
                .is_err()
        );
    }

    #[test]
    fn record_shape() {
        assert_eq!(encode_key("my dir/a b+c:d.txt"), "my+dir/a+b%2Bc%3Ad.txt");
        assert_eq!(encode_key("日"), "%E6%97%A5");
        let v = s3_event(
            &change("my dir/photo 1.jpg", S3EventName::Put),
            "cfg-1",
            "0055AED6DCD90281E5",
            "us-east-1",
        );
        let r = &v["Records"][0];
        assert_eq!(r["eventVersion"], "2.1");
        assert_eq!(r["eventSource"], "aws:s3");
        assert_eq!(r["eventName"], "ObjectCreated:Put");
        assert_eq!(r["eventTime"], "2026-01-02T03:04:05.678Z");
        assert_eq!(r["s3"]["configurationId"], "cfg-1");
        assert_eq!(r["s3"]["bucket"]["name"], "uploads");
        assert_eq!(r["s3"]["bucket"]["arn"], "arn:aws:s3:::uploads");
        assert_eq!(r["s3"]["object"]["key"], "my+dir/photo+1.jpg");
        assert_eq!(r["s3"]["object"]["size"], 1024);
        assert_eq!(
            r["s3"]["object"]["eTag"],
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(r["s3"]["object"]["sequencer"], "0055AED6DCD90281E5");
        let mut del = change("k", S3EventName::Delete);
        del.size = None;
        del.etag = None;
        let v = s3_event(&del, "c", "01", "us-east-1");
        let o = &v["Records"][0]["s3"]["object"];
        assert_eq!(v["Records"][0]["eventName"], "ObjectRemoved:Delete");
        assert!(o.get("size").is_none() && o.get("eTag").is_none());
        let s = Sequencer::default();
        let (a, b) = (s.next(), s.next());
        assert!(b > a && a.len() == 16);
    }

    #[tokio::test]
    async fn notifier_enqueues_one_event_per_matching_rule() {
        use crate::config::QueueConfig;
        let dir = tempfile::tempdir().expect("tempdir");
        let q = EventQueue::open(dir.path(), QueueConfig::default()).expect("open");
        let rules = vec![
            S3NotificationRule::new("a", "uploads", "fa", &["s3:ObjectCreated:*"], &[])
                .expect("ok"),
            S3NotificationRule::new(
                "b",
                "uploads",
                "fb",
                &["s3:ObjectCreated:*"],
                &[("suffix", ".csv")],
            )
            .expect("ok"),
            S3NotificationRule::new("c", "uploads", "fc", &["s3:ObjectRemoved:*"], &[])
                .expect("ok"),
        ];
        let n = S3Notifier::new(q.clone(), rules, "us-east-1");
        assert!(n.watches("uploads") && !n.watches("other"));
        let out = n.notify(&change("data.csv", S3EventName::Put), None).await;
        let fns: Vec<_> = out.iter().map(|o| o.0.as_str()).collect();
        assert_eq!(fns, ["fa", "fb"]);
        assert!(out.iter().all(|o| o.1.is_ok()));
        assert_eq!(q.stats().by_function.get("fa"), Some(&1));
        assert_eq!(q.stats().by_function.get("fc"), None);
    }
}
