//! DynamoDB Streams records (the `DynamoDB` event source).
//!
//! [`StreamRecordBuilder`] turns one item change (keys, old and new image in
//! DynamoDB JSON, as the embedded table has them) into the stream record AWS
//! delivers, keeping only what the table's `StreamViewType` shows.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use serde_json::Value;

/// `StreamSpecification.StreamViewType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamViewType {
    /// Only the key attributes.
    KeysOnly,
    /// The item after the change.
    NewImage,
    /// The item before the change.
    OldImage,
    /// Both.
    NewAndOldImages,
}

impl StreamViewType {
    /// Parses the template value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "KEYS_ONLY" => Self::KeysOnly,
            "NEW_IMAGE" => Self::NewImage,
            "OLD_IMAGE" => Self::OldImage,
            "NEW_AND_OLD_IMAGES" => Self::NewAndOldImages,
            _ => return None,
        })
    }

    /// As AWS writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeysOnly => "KEYS_ONLY",
            Self::NewImage => "NEW_IMAGE",
            Self::OldImage => "OLD_IMAGE",
            Self::NewAndOldImages => "NEW_AND_OLD_IMAGES",
        }
    }
}

/// One item change: `Keys`, and the item before / after in DynamoDB JSON
/// (`{"id": {"S": "1"}}`). `old = None` is an insert, `new = None` a remove.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemChange {
    /// Key attributes.
    pub keys: Value,
    /// Item before.
    pub old: Option<Value>,
    /// Item after.
    pub new: Option<Value>,
}

impl ItemChange {
    /// `INSERT`, `MODIFY` or `REMOVE`; `None` when neither image is set.
    pub fn event_name(&self) -> Option<&'static str> {
        match (&self.old, &self.new) {
            (None, Some(_)) => Some("INSERT"),
            (Some(_), Some(_)) => Some("MODIFY"),
            (Some(_), None) => Some("REMOVE"),
            (None, None) => None,
        }
    }
}

/// Builds stream records for one table.
#[derive(Debug)]
pub struct StreamRecordBuilder {
    table: String,
    view: StreamViewType,
    stream_arn: String,
    region: String,
    seq: AtomicU64,
}

impl StreamRecordBuilder {
    /// `stream_label` is the stream's creation time label
    /// (`2026-01-01T00:00:00.000`), part of the stream ARN.
    pub fn new(
        table: &str,
        view: StreamViewType,
        account: &str,
        region: &str,
        stream_label: &str,
    ) -> Self {
        Self {
            table: table.to_string(),
            view,
            stream_arn: format!(
                "arn:aws:dynamodb:{region}:{account}:table/{table}/stream/{stream_label}"
            ),
            region: region.to_string(),
            seq: AtomicU64::new(0),
        }
    }

    /// The stream ARN (`eventSourceARN`).
    pub fn stream_arn(&self) -> &str {
        &self.stream_arn
    }

    /// Table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Continues numbering after `last` (a sequence number read back from the log).
    pub fn resume_after(&self, last: u64) {
        self.seq.fetch_max(last, Ordering::SeqCst);
    }

    /// The record for `change`, with the next sequence number; `None` if the
    /// change has neither image.
    pub fn record(&self, change: &ItemChange) -> Option<(u64, Value)> {
        let name = change.event_name()?;
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let mut ddb = serde_json::json!({
            "ApproximateCreationDateTime": Utc::now().timestamp(),
            "Keys": change.keys,
            "SequenceNumber": format_sequence(seq),
            "StreamViewType": self.view.as_str(),
        });
        let (show_new, show_old) = match self.view {
            StreamViewType::KeysOnly => (false, false),
            StreamViewType::NewImage => (true, false),
            StreamViewType::OldImage => (false, true),
            StreamViewType::NewAndOldImages => (true, true),
        };
        let mut size = json_len(&change.keys);
        if show_new && let Some(n) = &change.new {
            size += json_len(n);
            ddb["NewImage"] = n.clone();
        }
        if show_old && let Some(o) = &change.old {
            size += json_len(o);
            ddb["OldImage"] = o.clone();
        }
        ddb["SizeBytes"] = size.into();
        Some((
            seq,
            serde_json::json!({
                "eventID": uuid::Uuid::new_v4().simple().to_string(),
                "eventName": name,
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": self.region,
                "dynamodb": ddb,
                "eventSourceARN": self.stream_arn,
            }),
        ))
    }
}

/// Stream sequence numbers are decimal strings; zero-padded to 21 digits so
/// they also sort as strings.
pub fn format_sequence(seq: u64) -> String {
    format!("{seq:021}")
}

fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(old: Option<Value>, new: Option<Value>) -> ItemChange {
        ItemChange {
            keys: json!({"pk": {"S": "user#1"}}),
            old,
            new,
        }
    }

    #[test]
    fn event_names_and_view_types() {
        let old = json!({"pk": {"S": "user#1"}, "n": {"N": "1"}});
        let new = json!({"pk": {"S": "user#1"}, "n": {"N": "2"}});
        let b = StreamRecordBuilder::new(
            "Users",
            StreamViewType::NewAndOldImages,
            "123456789012",
            "us-east-1",
            "2026-01-01T00:00:00.000",
        );
        let (s1, ins) = b.record(&change(None, Some(new.clone()))).expect("insert");
        let (s2, md) = b
            .record(&change(Some(old.clone()), Some(new.clone())))
            .expect("modify");
        let (_, rm) = b.record(&change(Some(old.clone()), None)).expect("remove");
        assert_eq!((s1, s2), (1, 2));
        assert_eq!(ins["eventName"], "INSERT");
        assert_eq!(md["eventName"], "MODIFY");
        assert_eq!(rm["eventName"], "REMOVE");
        assert_eq!(ins["eventSource"], "aws:dynamodb");
        assert_eq!(ins["eventVersion"], "1.1");
        assert_eq!(
            ins["eventSourceARN"],
            "arn:aws:dynamodb:us-east-1:123456789012:table/Users/stream/2026-01-01T00:00:00.000"
        );
        assert_eq!(md["dynamodb"]["Keys"], json!({"pk": {"S": "user#1"}}));
        assert_eq!(md["dynamodb"]["NewImage"], new);
        assert_eq!(md["dynamodb"]["OldImage"], old);
        assert!(ins["dynamodb"].get("OldImage").is_none());
        assert!(rm["dynamodb"].get("NewImage").is_none());
        assert_eq!(md["dynamodb"]["SequenceNumber"], "000000000000000000002");
        assert!(md["dynamodb"]["SizeBytes"].as_u64().expect("size") > 40);
        assert_eq!(md["dynamodb"]["StreamViewType"], "NEW_AND_OLD_IMAGES");

        let k = StreamRecordBuilder::new("T", StreamViewType::KeysOnly, "1", "r", "l");
        let (_, r) = k
            .record(&change(Some(old.clone()), Some(new.clone())))
            .expect("modify");
        assert!(r["dynamodb"].get("NewImage").is_none() && r["dynamodb"].get("OldImage").is_none());
        let n = StreamRecordBuilder::new("T", StreamViewType::NewImage, "1", "r", "l");
        let (_, r) = n
            .record(&change(Some(old.clone()), Some(new.clone())))
            .expect("modify");
        assert!(r["dynamodb"].get("NewImage").is_some() && r["dynamodb"].get("OldImage").is_none());
        let o = StreamRecordBuilder::new("T", StreamViewType::OldImage, "1", "r", "l");
        let (_, r) = o.record(&change(Some(old), Some(new))).expect("modify");
        assert!(r["dynamodb"].get("NewImage").is_none() && r["dynamodb"].get("OldImage").is_some());
        assert!(o.record(&change(None, None)).is_none());
        assert_eq!(
            StreamViewType::parse("NEW_IMAGE"),
            Some(StreamViewType::NewImage)
        );
        assert_eq!(StreamViewType::parse("new_image"), None);
    }
}
