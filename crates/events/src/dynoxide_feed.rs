//! A [`ChangeFeed`] over the embedded DynamoDB's own stream (dynoxide), for
//! [`StreamPoller`](crate::stream::StreamPoller). Feature `dynoxide`.
//!
//! dynoxide writes a table's stream records in the same SQLite transaction as
//! the item, so nothing is lost between a write and its record, and every
//! write path (PutItem, UpdateItem, DeleteItem, batches, transactions,
//! PartiQL, TTL) is covered without ESB seeing the request. This adapter only
//! reads: `ListStreams` → `DescribeStream` → `GetShardIterator` →
//! `GetRecords`, on a blocking thread (dynoxide is synchronous). Checkpoints
//! live in a [`CheckpointStore`]. It reads the newest shard of the table's
//! newest stream; dynoxide keeps one shard per stream.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::stream::{ChangeFeed, CheckpointStore, FeedError, FeedRecord};

/// Cursor prefix for a position that is a dynoxide shard iterator rather
/// than a sequence number (only `LATEST` on first start needs one).
const ITERATOR_CURSOR: &str = "iterator:";

/// Reads one table's dynoxide stream.
pub struct DynoxideFeed {
    db: dynoxide::Database,
    table: String,
    checkpoints: CheckpointStore,
    poll: Duration,
    last_arn: Mutex<String>,
    /// (region, account) written into `awsRegion` and `eventSourceARN`
    /// instead of dynoxide's local placeholders.
    identity: Option<(String, String)>,
    /// The stream ARN and shard found last (saves two lookups per poll).
    located: Mutex<Option<(String, String)>>,
}

fn err(e: impl std::fmt::Display) -> FeedError {
    FeedError(e.to_string())
}

/// Calls a dynoxide operation with a JSON request and returns the JSON answer.
fn call<Req, Resp>(
    f: impl FnOnce(Req) -> dynoxide::errors::Result<Resp>,
    req: Value,
) -> Result<Value, FeedError>
where
    Req: serde::de::DeserializeOwned,
    Resp: serde::Serialize,
{
    let req: Req = serde_json::from_value(req).map_err(err)?;
    let resp = f(req).map_err(|e| err(format!("{e:?}")))?;
    serde_json::to_value(resp).map_err(err)
}

impl DynoxideFeed {
    /// A feed for `table` in `db`; checkpoints in `checkpoints`
    /// (e.g. `<data dir>/events/streams/<table>`).
    pub fn new(db: dynoxide::Database, table: &str, checkpoints: CheckpointStore) -> Arc<Self> {
        Arc::new(Self {
            db,
            table: table.to_string(),
            checkpoints,
            poll: Duration::from_millis(20),
            last_arn: Mutex::new(String::new()),
            identity: None,
            located: Mutex::new(None),
        })
    }

    /// Like [`DynoxideFeed::new`], but records name `region` and `account`
    /// (`awsRegion`, `eventSourceARN`) as AWS's do, instead of dynoxide's
    /// local `dynoxide` / `000000000000`.
    pub fn with_identity(
        db: dynoxide::Database,
        table: &str,
        checkpoints: CheckpointStore,
        region: &str,
        account: &str,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            table: table.to_string(),
            checkpoints,
            poll: Duration::from_millis(20),
            last_arn: Mutex::new(String::new()),
            identity: Some((region.to_string(), account.to_string())),
            located: Mutex::new(None),
        })
    }

    /// The ARN as records show it (region and account rewritten).
    fn public_arn(&self, arn: &str) -> String {
        match &self.identity {
            Some((region, account)) => arn.replacen(
                &format!(
                    ":{}:{}:",
                    dynoxide::streams::LOCAL_REGION,
                    dynoxide::streams::LOCAL_ACCOUNT
                ),
                &format!(":{region}:{account}:"),
                1,
            ),
            None => arn.to_string(),
        }
    }

    /// Blocking: the stream ARN and its newest shard id.
    fn locate(db: &dynoxide::Database, table: &str) -> Result<(String, String), FeedError> {
        let streams = call(|r| db.list_streams(r), json!({ "TableName": table }))?;
        let arn = streams["Streams"]
            .as_array()
            .and_then(|s| s.last())
            .and_then(|s| s["StreamArn"].as_str())
            .ok_or_else(|| err(format!("table {table} has no stream (StreamSpecification)")))?
            .to_string();
        let desc = call(|r| db.describe_stream(r), json!({ "StreamArn": arn }))?;
        let shard = desc["StreamDescription"]["Shards"]
            .as_array()
            .and_then(|s| s.last())
            .and_then(|s| s["ShardId"].as_str())
            .ok_or_else(|| err(format!("stream {arn} has no shard")))?
            .to_string();
        Ok((arn, shard))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dynoxide::Database, &str) -> Result<T, FeedError> + Send + 'static,
    ) -> Result<T, FeedError> {
        let db = self.db.clone();
        let table = self.table.clone();
        tokio::task::spawn_blocking(move || f(&db, &table))
            .await
            .map_err(err)?
    }
}

#[async_trait::async_trait]
impl ChangeFeed for DynoxideFeed {
    fn stream_arn(&self) -> String {
        self.last_arn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn read(&self, after: Option<&str>, max: usize) -> Result<Vec<FeedRecord>, FeedError> {
        let after = after.map(str::to_string);
        let limit = max.clamp(1, 1000);
        let cached = self
            .located
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let result = self
            .blocking(move |db, table| {
                let (arn, shard) = match cached {
                    Some(l) => l,
                    None => Self::locate(db, table)?,
                };
                let iterator = match after.as_deref() {
                    Some(a) if a.starts_with(ITERATOR_CURSOR) => a[ITERATOR_CURSOR.len()..].to_string(),
                    _ => {
                        let req = match after.as_deref() {
                            Some(seq) => json!({"StreamArn": arn, "ShardId": shard,
                                "ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": seq}),
                            None => json!({"StreamArn": arn, "ShardId": shard,
                                "ShardIteratorType": "TRIM_HORIZON"}),
                        };
                        let it = call(|r| db.get_shard_iterator(r), req)?;
                        it["ShardIterator"]
                            .as_str()
                            .ok_or_else(|| err("no shard iterator"))?
                            .to_string()
                    }
                };
                let got = call(
                    |r| db.get_records(r),
                    json!({"ShardIterator": iterator, "Limit": limit}),
                )?;
                let records = got["Records"].as_array().cloned().unwrap_or_default();
                Ok((arn, shard, records))
            })
            .await;
        let (arn, shard, records) = match result {
            Ok(r) => r,
            Err(e) => {
                // The stream may have been replaced (table re-created):
                // look it up again next time.
                *self.located.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return Err(e);
            }
        };
        *self.located.lock().unwrap_or_else(|e| e.into_inner()) = Some((arn.clone(), shard));
        let arn = self.public_arn(&arn);
        *self.last_arn.lock().unwrap_or_else(|e| e.into_inner()) = arn.clone();
        let mut out = Vec::with_capacity(records.len());
        for mut r in records {
            let Some(seq) = r["dynamodb"]["SequenceNumber"].as_str().map(str::to_string) else {
                continue;
            };
            r["eventSourceARN"] = Value::String(arn.clone());
            if let Some((region, _)) = &self.identity {
                r["awsRegion"] = Value::String(region.clone());
            }
            out.push(FeedRecord {
                sequence: seq,
                record: Arc::new(r),
            });
        }
        Ok(out)
    }

    async fn wait(&self, _after: Option<&str>) {
        // dynoxide has no change notification: poll.
        tokio::time::sleep(self.poll).await;
    }

    async fn newest(&self) -> Result<Option<String>, FeedError> {
        self.blocking(|db, table| {
            let (arn, shard) = Self::locate(db, table)?;
            let it = call(
                |r| db.get_shard_iterator(r),
                json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": "LATEST"}),
            )?;
            Ok(it["ShardIterator"]
                .as_str()
                .map(|i| format!("{ITERATOR_CURSOR}{i}")))
        })
        .await
    }

    fn load_checkpoint(&self, consumer: &str) -> Option<String> {
        self.checkpoints.load(consumer)
    }

    fn store_checkpoint(&self, consumer: &str, sequence: &str) -> std::io::Result<()> {
        self.checkpoints.store(consumer, sequence)
    }

    fn failure_dir(&self) -> PathBuf {
        self.checkpoints.dir().join("failures")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ChainContext;
    use crate::invoker::{InvokeOutcome, Invoker};
    use crate::stream::{StartingPosition, StreamMapping, StreamPoller};
    use bytes::Bytes;

    struct Rec(Mutex<Vec<Value>>);

    #[async_trait::async_trait]
    impl Invoker for Rec {
        async fn invoke(&self, _f: &str, p: Bytes, _r: &str, _c: &ChainContext) -> InvokeOutcome {
            let v: Value = serde_json::from_slice(&p).expect("json");
            for r in v["Records"].as_array().expect("records") {
                self.0.lock().expect("lock").push(r.clone());
            }
            InvokeOutcome::Success {
                response: Bytes::new(),
            }
        }
    }

    fn db_with_stream() -> dynoxide::Database {
        let db = dynoxide::Database::memory().expect("db");
        let req = serde_json::from_value(json!({
            "TableName": "Orders",
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
            "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        }))
        .expect("request");
        db.create_table(req).expect("create table");
        db
    }

    fn put(db: &dynoxide::Database, pk: &str, n: u32) {
        let req = serde_json::from_value(json!({
            "TableName": "Orders",
            "Item": {"pk": {"S": pk}, "n": {"N": n.to_string()}},
        }))
        .expect("request");
        db.put_item(req).expect("put");
    }

    async fn wait_len(rec: &Rec, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rec.0.lock().expect("lock").len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} records"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn delivers_dynoxide_stream_in_order_and_resumes_from_the_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = db_with_stream();
        put(&db, "a", 1);
        put(&db, "a", 2);
        let del = serde_json::from_value(json!({"TableName": "Orders", "Key": {"pk": {"S": "a"}}}))
            .expect("request");
        db.delete_item(del).expect("delete");
        let feed = DynoxideFeed::with_identity(
            db.clone(),
            "Orders",
            CheckpointStore::open(dir.path()).expect("cp"),
            "eu-west-1",
            "111122223333",
        );
        let rec = Arc::new(Rec(Mutex::new(Vec::new())));
        let h = StreamPoller::new(
            feed.clone(),
            StreamMapping::new("fn", StartingPosition::TrimHorizon),
            rec.clone(),
        )
        .spawn();
        wait_len(&rec, 3).await;
        let got = rec.0.lock().expect("lock").clone();
        let names: Vec<_> = got
            .iter()
            .map(|r| r["eventName"].as_str().expect("name").to_string())
            .collect();
        assert_eq!(names, ["INSERT", "MODIFY", "REMOVE"]);
        assert_eq!(got[1]["dynamodb"]["OldImage"]["n"]["N"], "1");
        assert_eq!(got[1]["dynamodb"]["NewImage"]["n"]["N"], "2");
        assert_eq!(got[0]["eventSource"], "aws:dynamodb");
        assert!(
            got[0]["eventSourceARN"]
                .as_str()
                .expect("arn")
                .starts_with("arn:aws:dynamodb:eu-west-1:111122223333:table/Orders/stream/")
        );
        assert_eq!(got[0]["awsRegion"], "eu-west-1");
        let last_seq = got[2]["dynamodb"]["SequenceNumber"]
            .as_str()
            .expect("seq")
            .to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while feed.load_checkpoint("fn").as_deref() != Some(last_seq.as_str()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "checkpoint not stored"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        h.abort();
        // "Restart": a new poller on the same checkpoints only gets new records.
        put(&db, "b", 1);
        let rec2 = Arc::new(Rec(Mutex::new(Vec::new())));
        let feed2 = DynoxideFeed::new(
            db.clone(),
            "Orders",
            CheckpointStore::open(dir.path()).expect("cp"),
        );
        StreamPoller::new(
            feed2,
            StreamMapping::new("fn", StartingPosition::TrimHorizon),
            rec2.clone(),
        )
        .spawn();
        wait_len(&rec2, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got2 = rec2.0.lock().expect("lock").clone();
        assert_eq!(got2.len(), 1);
        assert_eq!(got2[0]["dynamodb"]["Keys"]["pk"]["S"], "b");
    }

    #[tokio::test]
    async fn latest_starts_after_existing_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = db_with_stream();
        put(&db, "old", 1);
        let feed = DynoxideFeed::new(
            db.clone(),
            "Orders",
            CheckpointStore::open(dir.path()).expect("cp"),
        );
        let rec = Arc::new(Rec(Mutex::new(Vec::new())));
        StreamPoller::new(
            feed.clone(),
            StreamMapping::new("fn", StartingPosition::Latest),
            rec.clone(),
        )
        .spawn();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while feed.load_checkpoint("fn").is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no LATEST checkpoint"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        put(&db, "new", 1);
        wait_len(&rec, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = rec.0.lock().expect("lock").clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["dynamodb"]["Keys"]["pk"]["S"], "new");
    }
}
