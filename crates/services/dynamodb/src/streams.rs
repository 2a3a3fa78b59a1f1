//! DynamoDB Streams in AWS's shapes for SDK users.
//!
//! dynoxide answers `DynamoDBStreams_20120810.*` (`ListStreams`,
//! `DescribeStream`, `GetShardIterator`, `GetRecords`) itself, on the same
//! endpoint, and shows `LatestStreamArn` / `StreamSpecification` in
//! `DescribeTable`. Two things in its answers are not what clients expect:
//! ARNs name region `dynoxide` and account `000000000000`, and the shard id
//! `shardId-00000001-<table>` is shorter than the 28 characters botocore
//! requires (its parameter validation refuses it). This module rewrites
//! answers to the box's region and account and a 37-character shard id, and
//! rewrites requests back before dynoxide sees them. dynoxide keeps one
//! shard per stream, so the request's `StreamArn` names the table the shard
//! id belongs to.
//!
//! Only the streams operations and the table-describing ones are touched;
//! item operations pass through unchanged.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// dynoxide's placeholders in ARNs (`arn:aws:dynamodb:dynoxide:000000000000:`).
const LOCAL: &str = "arn:aws:dynamodb:dynoxide:000000000000:";
/// dynoxide's shard id prefix (`shardId-00000001-<table>`).
const LOCAL_SHARD: &str = "shardId-00000001-";
/// The shard id clients see (AWS's form: `shardId-<20 digits>-<8 hex>`).
pub(crate) const PUBLIC_SHARD: &str = "shardId-00000001000000000000-00000001";

/// The region and account ARNs show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamIdentity {
    /// e.g. `us-east-1`.
    pub region: String,
    /// 12-digit account id.
    pub account_id: String,
}

impl StreamIdentity {
    fn public_prefix(&self) -> String {
        format!("arn:aws:dynamodb:{}:{}:", self.region, self.account_id)
    }
}

/// Which operations are rewritten: (request, response).
fn scope(target: &str) -> (bool, bool) {
    if target.starts_with("DynamoDBStreams_20120810.") {
        return (true, true);
    }
    let op = target.strip_prefix("DynamoDB_20120810.").unwrap_or("");
    let describes = matches!(
        op,
        "DescribeTable" | "CreateTable" | "UpdateTable" | "DeleteTable"
    );
    (false, describes)
}

/// The `X-Amz-Target` of a request.
pub(crate) fn target(headers: &http::HeaderMap) -> String {
    headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Visits every string of a JSON value.
fn strings(v: &mut Value, f: &mut impl FnMut(Option<&str>, &mut String)) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                if let Value::String(s) = x {
                    f(Some(k), s);
                } else {
                    strings(x, f);
                }
            }
        }
        Value::Array(items) => {
            for x in items {
                if let Value::String(s) = x {
                    f(None, s);
                } else {
                    strings(x, f);
                }
            }
        }
        _ => {}
    }
}

/// The table a stream or table ARN names.
fn table_of(arn: &str) -> Option<&str> {
    let rest = arn.split_once(":table/")?.1;
    rest.split('/').next().filter(|t| !t.is_empty())
}

/// [`response`] on a whole answer; the `x-amz-crc32` checksum header
/// (which botocore checks) is recomputed when the body changed.
pub(crate) async fn answer(
    id: Option<&StreamIdentity>,
    target: &str,
    resp: http::Response<Full<Bytes>>,
) -> http::Response<Full<Bytes>> {
    if id.is_none() || !scope(target).1 {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(collected) = body.collect().await;
    let before = collected.to_bytes();
    let after = response(id, target, before.clone());
    if after != before && parts.headers.contains_key("x-amz-crc32") {
        let crc = crc32fast::hash(&after).to_string();
        if let Ok(v) = http::HeaderValue::from_str(&crc) {
            parts.headers.insert("x-amz-crc32", v);
        }
    }
    http::Response::from_parts(parts, Full::new(after))
}

/// A request as dynoxide expects it (ARNs with its placeholders, its shard
/// id). Unchanged when out of scope or not JSON.
pub(crate) fn request(id: Option<&StreamIdentity>, target: &str, body: Bytes) -> Bytes {
    let Some(id) = id else { return body };
    if !scope(target).0 {
        return body;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    let public = id.public_prefix();
    let table = v
        .get("StreamArn")
        .and_then(Value::as_str)
        .and_then(table_of)
        .map(str::to_string);
    strings(&mut v, &mut |key, s| {
        if s.starts_with(&public) {
            *s = format!("{LOCAL}{}", &s[public.len()..]);
        } else if s == PUBLIC_SHARD
            && matches!(key, Some("ShardId" | "ExclusiveStartShardId"))
            && let Some(t) = &table
        {
            *s = format!("{LOCAL_SHARD}{t}");
        }
    });
    serde_json::to_vec(&v).map(Bytes::from).unwrap_or(body)
}

/// An answer as AWS gives it (the box's region and account, AWS-shaped
/// shard ids). Unchanged when out of scope or not JSON.
pub(crate) fn response(id: Option<&StreamIdentity>, target: &str, body: Bytes) -> Bytes {
    let Some(id) = id else { return body };
    if !scope(target).1 {
        return body;
    }
    let needle_arn = LOCAL.as_bytes();
    let has = |n: &[u8]| body.windows(n.len()).any(|w| w == n);
    if !has(needle_arn) && !has(LOCAL_SHARD.as_bytes()) && !has(b"\"dynoxide\"") {
        return body;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    let public = id.public_prefix();
    strings(&mut v, &mut |key, s| {
        if s.contains(LOCAL) {
            *s = s.replace(LOCAL, &public);
        } else if s.starts_with(LOCAL_SHARD) && key.is_some_and(|k| k.ends_with("ShardId")) {
            *s = PUBLIC_SHARD.to_string();
        } else if key == Some("awsRegion") && s == "dynoxide" {
            s.clone_from(&id.region);
        }
    });
    serde_json::to_vec(&v).map(Bytes::from).unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id() -> StreamIdentity {
        StreamIdentity {
            region: "eu-west-1".into(),
            account_id: "111122223333".into(),
        }
    }

    #[test]
    fn answers_name_the_box_and_requests_go_back_to_dynoxide() {
        let answer = json!({"StreamDescription": {
            "StreamArn": "arn:aws:dynamodb:dynoxide:000000000000:table/t/stream/1.2",
            "Shards": [{"ShardId": "shardId-00000001-t", "ParentShardId": null}],
            "TableName": "t"}});
        let out = response(
            Some(&id()),
            "DynamoDBStreams_20120810.DescribeStream",
            Bytes::from(answer.to_string()),
        );
        let v: Value = serde_json::from_slice(&out).expect("json");
        let arn = v["StreamDescription"]["StreamArn"].as_str().expect("arn");
        assert_eq!(
            arn,
            "arn:aws:dynamodb:eu-west-1:111122223333:table/t/stream/1.2"
        );
        let shard = v["StreamDescription"]["Shards"][0]["ShardId"]
            .as_str()
            .expect("shard");
        assert_eq!(shard, PUBLIC_SHARD);
        assert!(shard.len() >= 28);

        let req = json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": "LATEST"});
        let back = request(
            Some(&id()),
            "DynamoDBStreams_20120810.GetShardIterator",
            Bytes::from(req.to_string()),
        );
        let v: Value = serde_json::from_slice(&back).expect("json");
        assert_eq!(
            v["StreamArn"],
            "arn:aws:dynamodb:dynoxide:000000000000:table/t/stream/1.2"
        );
        assert_eq!(v["ShardId"], "shardId-00000001-t");
    }

    #[test]
    fn records_get_the_region_and_item_calls_are_untouched() {
        let answer = json!({"Records": [{"awsRegion": "dynoxide", "dynamodb": {
            "Keys": {"pk": {"S": "dynoxide"}}}}]});
        let out = response(
            Some(&id()),
            "DynamoDBStreams_20120810.GetRecords",
            Bytes::from(answer.to_string()),
        );
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["Records"][0]["awsRegion"], "eu-west-1");
        assert_eq!(v["Records"][0]["dynamodb"]["Keys"]["pk"]["S"], "dynoxide");
        let item = Bytes::from_static(
            br#"{"Item":{"a":{"S":"arn:aws:dynamodb:dynoxide:000000000000:x"}}}"#,
        );
        assert_eq!(
            response(Some(&id()), "DynamoDB_20120810.GetItem", item.clone()),
            item
        );
        assert_eq!(
            response(None, "DynamoDBStreams_20120810.GetRecords", item.clone()),
            item
        );
    }
}
