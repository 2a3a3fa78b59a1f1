//! A CloudWatch Logs subset over the store (JSON 1.1 bodies in and out;
//! the gateway does HTTP and SigV4): `DescribeLogGroups`,
//! `DescribeLogStreams`, `FilterLogEvents`, `GetLogEvents`,
//! `CreateLogGroup`, `CreateLogStream`, `PutLogEvents` (docs/logs.md).
//!
//! Mapping: log group `/aws/lambda/<function>` is the function's file;
//! other groups (created with `CreateLogGroup`) are files named after the
//! group and listed in `cwl-groups.json`. A log stream is a worker id (or
//! the name `CreateLogStream` was given). Event ids are stable across calls
//! (timestamp, stream and a hash of the line with its repeat count), which
//! is what `aws logs tail --follow` deduplicates on.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{LogRecord, file_name, read};

const LAMBDA_PREFIX: &str = "/aws/lambda/";
const GROUPS_FILE: &str = "cwl-groups.json";
/// Most events one answer carries (AWS: 10,000 or 1 MB).
const MAX_EVENTS: usize = 10_000;

/// A CloudWatch Logs error: `__type` and message (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CwlError {
    /// `ResourceNotFoundException`, `InvalidParameterException`, …
    pub kind: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl CwlError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            kind: "InvalidParameterException",
            message: message.into(),
        }
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self {
            kind: "ResourceNotFoundException",
            message: message.into(),
        }
    }
}

/// What the operations need besides the request.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    /// The store's directory.
    pub dir: &'a Path,
    /// Registered functions.
    pub functions: &'a [String],
    /// For ARNs.
    pub region: &'a str,
    /// For ARNs.
    pub account: &'a str,
}

/// Runs operation `op` (the part after `Logs_20140328.`) on `body`.
pub fn handle(scope: &Scope<'_>, op: &str, body: &[u8]) -> Result<Value, CwlError> {
    let req: Req = if body.is_empty() {
        Req::default()
    } else {
        serde_json::from_slice(body).map_err(|e| CwlError {
            kind: "SerializationException",
            message: e.to_string(),
        })?
    };
    match op {
        "DescribeLogGroups" => Ok(describe_groups(scope, &req)),
        "DescribeLogStreams" => describe_streams(scope, &req),
        "FilterLogEvents" => filter_events(scope, &req),
        "GetLogEvents" => get_events(scope, &req),
        "CreateLogGroup" => create_group(scope, &req),
        "CreateLogStream" => {
            group_key(scope, &req)?;
            Ok(json!({}))
        }
        "PutLogEvents" => put_events(scope, &req),
        _ => Err(CwlError {
            kind: "UnknownOperationException",
            message: format!("operation {op} is not supported by ESB"),
        }),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Req {
    log_group_name: Option<String>,
    log_group_identifier: Option<String>,
    log_group_name_prefix: Option<String>,
    log_stream_name: Option<String>,
    log_stream_names: Option<Vec<String>>,
    log_stream_name_prefix: Option<String>,
    start_time: Option<i64>,
    end_time: Option<i64>,
    filter_pattern: Option<String>,
    next_token: Option<String>,
    limit: Option<usize>,
    start_from_head: Option<bool>,
    log_events: Option<Vec<InputEvent>>,
}

#[derive(Debug, Deserialize)]
struct InputEvent {
    timestamp: i64,
    message: String,
}

fn groups(scope: &Scope<'_>) -> Vec<String> {
    let mut out: Vec<String> = scope
        .functions
        .iter()
        .map(|f| format!("{LAMBDA_PREFIX}{f}"))
        .collect();
    out.extend(created_groups(scope.dir));
    out.sort();
    out.dedup();
    out
}

fn created_groups(dir: &Path) -> Vec<String> {
    std::fs::read(dir.join(GROUPS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The store key of the request's group (a function name, or the group
/// name for other groups); the group must exist.
fn group_key(scope: &Scope<'_>, req: &Req) -> Result<String, CwlError> {
    let name = req
        .log_group_name
        .as_deref()
        .or(req.log_group_identifier.as_deref())
        .ok_or_else(|| CwlError::invalid("logGroupName is required"))?;
    // An identifier may be an ARN: `arn:aws:logs:r:a:log-group:NAME[:*]`.
    let name = match name.split_once(":log-group:") {
        Some((_, rest)) => rest.trim_end_matches(":*"),
        None => name,
    };
    if !groups(scope).iter().any(|g| g == name) {
        return Err(CwlError::not_found(
            "The specified log group does not exist.",
        ));
    }
    Ok(match name.strip_prefix(LAMBDA_PREFIX) {
        Some(function) => function.to_string(),
        None => name.to_string(),
    })
}

fn group_arn(scope: &Scope<'_>, name: &str) -> String {
    format!(
        "arn:aws:logs:{}:{}:log-group:{name}",
        scope.region, scope.account
    )
}

fn describe_groups(scope: &Scope<'_>, req: &Req) -> Value {
    let prefix = req.log_group_name_prefix.as_deref().unwrap_or("");
    let groups: Vec<Value> = groups(scope)
        .into_iter()
        .filter(|g| g.starts_with(prefix))
        .map(|g| {
            let key = g.strip_prefix(LAMBDA_PREFIX).unwrap_or(&g);
            let path = scope.dir.join(file_name(key));
            let meta = std::fs::metadata(&path).ok();
            let created = meta
                .as_ref()
                .and_then(|m| m.created().or_else(|_| m.modified()).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64);
            json!({
                "logGroupName": g,
                "creationTime": created,
                "metricFilterCount": 0,
                "arn": format!("{}:*", group_arn(scope, &g)),
                "logGroupArn": group_arn(scope, &g),
                "storedBytes": meta.map_or(0, |m| m.len()),
            })
        })
        .collect();
    json!({ "logGroups": groups })
}

/// One stored record as an event.
struct Event {
    timestamp: i64,
    stream: String,
    message: String,
    id: String,
}

fn millis(ts: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts).map_or(0, |t| t.timestamp_millis())
}

fn events(scope: &Scope<'_>, key: &str) -> Result<Vec<Event>, CwlError> {
    let records = read(scope.dir, Some(key), usize::MAX).map_err(|e| CwlError {
        kind: "ServiceUnavailableException",
        message: e.to_string(),
    })?;
    let mut seen: HashMap<u64, u32> = HashMap::new();
    Ok(records
        .into_iter()
        .map(|r: LogRecord| {
            let timestamp = millis(&r.ts);
            let mut h = DefaultHasher::new();
            (&r.worker, &r.line, timestamp).hash(&mut h);
            let hash = h.finish();
            let n = seen.entry(hash).or_insert(0);
            *n += 1;
            Event {
                timestamp,
                id: format!("{timestamp:020}{hash:016x}{n:04}"),
                stream: r.worker,
                message: r.line,
            }
        })
        .collect())
}

fn describe_streams(scope: &Scope<'_>, req: &Req) -> Result<Value, CwlError> {
    let key = group_key(scope, req)?;
    let prefix = req.log_stream_name_prefix.as_deref().unwrap_or("");
    let mut streams: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for e in events(scope, &key)? {
        if !e.stream.starts_with(prefix) {
            continue;
        }
        let s = streams
            .entry(e.stream)
            .or_insert((e.timestamp, e.timestamp));
        s.0 = s.0.min(e.timestamp);
        s.1 = s.1.max(e.timestamp);
    }
    let mut list: Vec<(String, (i64, i64))> = streams.into_iter().collect();
    if req.log_stream_name_prefix.is_none() {
        // orderBy LastEventTime is what the console and `tail` ask for.
        list.sort_by_key(|(_, (_, last))| *last);
    }
    let group = req
        .log_group_name
        .clone()
        .unwrap_or_else(|| format!("{LAMBDA_PREFIX}{key}"));
    let out: Vec<Value> = list
        .into_iter()
        .map(|(name, (first, last))| {
            json!({
                "logStreamName": name,
                "creationTime": first,
                "firstEventTimestamp": first,
                "lastEventTimestamp": last,
                "lastIngestionTime": last,
                "uploadSequenceToken": "1",
                "arn": format!("{}:log-stream:{name}", group_arn(scope, &group)),
                "storedBytes": 0,
            })
        })
        .collect();
    Ok(json!({ "logStreams": out }))
}

/// CloudWatch's filter pattern for text: every term must occur (`"…"`
/// quotes a phrase; `-term` must not occur; `?term` — any of those).
/// JSON and space-delimited patterns are not supported.
fn matcher(pattern: &str) -> impl Fn(&str) -> bool + use<> {
    let mut all = Vec::new();
    let mut none = Vec::new();
    let mut any = Vec::new();
    let mut rest = pattern.trim();
    while !rest.is_empty() {
        let (sign, body) = match rest.as_bytes()[0] {
            b'-' => ('-', &rest[1..]),
            b'?' => ('?', &rest[1..]),
            _ => ('+', rest),
        };
        let (term, after) = if let Some(quoted) = body.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match body.find(char::is_whitespace) {
                Some(end) => (&body[..end], &body[end..]),
                None => (body, ""),
            }
        };
        if !term.is_empty() {
            match sign {
                '-' => none.push(term.to_string()),
                '?' => any.push(term.to_string()),
                _ => all.push(term.to_string()),
            }
        }
        rest = after.trim_start();
    }
    move |m: &str| {
        all.iter().all(|t| m.contains(t.as_str()))
            && !none.iter().any(|t| m.contains(t.as_str()))
            && (any.is_empty() || any.iter().any(|t| m.contains(t.as_str())))
    }
}

fn token(req: &Req) -> Result<usize, CwlError> {
    match req.next_token.as_deref() {
        None => Ok(0),
        Some(t) => t
            .trim_start_matches(['f', 'b', '/'])
            .parse()
            .map_err(|_| CwlError::invalid("The specified nextToken is invalid.")),
    }
}

fn in_time(req: &Req, ts: i64) -> bool {
    req.start_time.is_none_or(|s| ts >= s) && req.end_time.is_none_or(|e| ts < e)
}

fn filter_events(scope: &Scope<'_>, req: &Req) -> Result<Value, CwlError> {
    let key = group_key(scope, req)?;
    let matches = matcher(req.filter_pattern.as_deref().unwrap_or(""));
    let names = req.log_stream_names.as_deref().unwrap_or(&[]);
    let prefix = req.log_stream_name_prefix.as_deref().unwrap_or("");
    let mut selected: Vec<Event> = events(scope, &key)?
        .into_iter()
        .filter(|e| {
            in_time(req, e.timestamp)
                && (names.is_empty() || names.contains(&e.stream))
                && e.stream.starts_with(prefix)
                && matches(&e.message)
        })
        .collect();
    selected.sort_by_key(|e| e.timestamp);
    let from = token(req)?;
    let limit = req.limit.unwrap_or(MAX_EVENTS).clamp(1, MAX_EVENTS);
    let page: Vec<Value> = selected
        .iter()
        .skip(from)
        .take(limit)
        .map(|e| {
            json!({
                "logStreamName": e.stream,
                "timestamp": e.timestamp,
                "message": e.message,
                "ingestionTime": e.timestamp,
                "eventId": e.id,
            })
        })
        .collect();
    let mut out = json!({ "events": page, "searchedLogStreams": [] });
    if from + limit < selected.len() {
        out["nextToken"] = json!((from + limit).to_string());
    }
    Ok(out)
}

fn get_events(scope: &Scope<'_>, req: &Req) -> Result<Value, CwlError> {
    let key = group_key(scope, req)?;
    let stream = req
        .log_stream_name
        .as_deref()
        .ok_or_else(|| CwlError::invalid("logStreamName is required"))?;
    let selected: Vec<Event> = events(scope, &key)?
        .into_iter()
        .filter(|e| e.stream == stream && in_time(req, e.timestamp))
        .collect();
    let limit = req.limit.unwrap_or(MAX_EVENTS).clamp(1, MAX_EVENTS);
    // Without a token: the first page from the head, else the newest.
    let (from, to) = match req.next_token.as_deref() {
        Some(t) if t.starts_with("b/") => {
            let end = token(req)?.min(selected.len());
            (end.saturating_sub(limit), end)
        }
        Some(_) => {
            let start = token(req)?.min(selected.len());
            (start, (start + limit).min(selected.len()))
        }
        None if req.start_from_head == Some(true) => (0, limit.min(selected.len())),
        None => (selected.len().saturating_sub(limit), selected.len()),
    };
    let page: Vec<Value> = selected[from..to]
        .iter()
        .map(|e| {
            json!({
                "timestamp": e.timestamp,
                "message": e.message,
                "ingestionTime": e.timestamp,
            })
        })
        .collect();
    Ok(json!({
        "events": page,
        "nextForwardToken": format!("f/{to}"),
        "nextBackwardToken": format!("b/{from}"),
    }))
}

fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 512
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-/.#".contains(c))
}

fn create_group(scope: &Scope<'_>, req: &Req) -> Result<Value, CwlError> {
    let name = req
        .log_group_name
        .as_deref()
        .ok_or_else(|| CwlError::invalid("logGroupName is required"))?;
    if !valid_group_name(name) {
        return Err(CwlError::invalid(format!(
            "invalid log group name {name:?}"
        )));
    }
    if groups(scope).iter().any(|g| g == name) {
        return Err(CwlError {
            kind: "ResourceAlreadyExistsException",
            message: "The specified log group already exists".into(),
        });
    }
    let mut created = created_groups(scope.dir);
    if created.len() >= 1000 {
        return Err(CwlError {
            kind: "LimitExceededException",
            message: "too many log groups".into(),
        });
    }
    created.push(name.to_string());
    let bytes = serde_json::to_vec(&created).unwrap_or_default();
    let tmp = scope.dir.join(format!("{GROUPS_FILE}.tmp"));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, scope.dir.join(GROUPS_FILE)))
        .map_err(|e| CwlError {
            kind: "ServiceUnavailableException",
            message: e.to_string(),
        })?;
    Ok(json!({}))
}

/// Appends the events to the group's file (one `write(2)` per line with
/// `O_APPEND`, so they interleave whole with the store's writer thread).
fn put_events(scope: &Scope<'_>, req: &Req) -> Result<Value, CwlError> {
    let key = group_key(scope, req)?;
    let stream = req
        .log_stream_name
        .as_deref()
        .ok_or_else(|| CwlError::invalid("logStreamName is required"))?;
    let events = req.log_events.as_deref().unwrap_or(&[]);
    if events.len() > MAX_EVENTS {
        return Err(CwlError::invalid("too many log events in one batch"));
    }
    let path = scope.dir.join(file_name(&key));
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| CwlError {
            kind: "ServiceUnavailableException",
            message: e.to_string(),
        })?;
    for e in events {
        let ts = chrono::DateTime::from_timestamp_millis(e.timestamp)
            .ok_or_else(|| CwlError::invalid("timestamp out of range"))?
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        let record = LogRecord {
            ts,
            function: key.clone(),
            worker: stream.to_string(),
            request_id: None,
            line: e.message.clone(),
        };
        let mut line = serde_json::to_vec(&record).unwrap_or_default();
        line.push(b'\n');
        file.write_all(&line).map_err(|e| CwlError {
            kind: "ServiceUnavailableException",
            message: e.to_string(),
        })?;
    }
    Ok(json!({ "nextSequenceToken": "1" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_patterns_follow_cloudwatch_text_terms() {
        let m = matcher("ERROR \"order 7\" -ignored");
        assert!(m("[ERROR] order 7 rejected"));
        assert!(!m("[ERROR] order 8 rejected"));
        assert!(!m("[ERROR] order 7 ignored"));
        let any = matcher("?START ?END");
        assert!(any("START RequestId: x"));
        assert!(!any("REPORT RequestId: x"));
        assert!(matcher("")("anything"));
    }

    #[test]
    fn put_then_filter_and_get_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let functions = vec!["hello".to_string()];
        let scope = Scope {
            dir: dir.path(),
            functions: &functions,
            region: "us-east-1",
            account: "123456789012",
        };
        let put = json!({
            "logGroupName": "/aws/lambda/hello",
            "logStreamName": "s1",
            "logEvents": [
                {"timestamp": 1_700_000_000_000i64, "message": "first"},
                {"timestamp": 1_700_000_000_001i64, "message": "second"},
                {"timestamp": 1_700_000_000_002i64, "message": "second"},
            ]
        });
        handle(&scope, "PutLogEvents", put.to_string().as_bytes()).unwrap();
        let out = handle(
            &scope,
            "FilterLogEvents",
            br#"{"logGroupName":"/aws/lambda/hello","filterPattern":"second"}"#,
        )
        .unwrap();
        let events = out["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        assert_ne!(events[0]["eventId"], events[1]["eventId"]);
        let again = handle(
            &scope,
            "FilterLogEvents",
            br#"{"logGroupName":"/aws/lambda/hello","filterPattern":"second"}"#,
        )
        .unwrap();
        assert_eq!(out, again, "event ids are stable");
        let got = handle(
            &scope,
            "GetLogEvents",
            br#"{"logGroupName":"/aws/lambda/hello","logStreamName":"s1","startFromHead":true,"limit":2}"#,
        )
        .unwrap();
        assert_eq!(got["events"][0]["message"], "first");
        assert_eq!(got["nextForwardToken"], "f/2");
        let missing = handle(
            &scope,
            "FilterLogEvents",
            br#"{"logGroupName":"/aws/lambda/nope"}"#,
        )
        .unwrap_err();
        assert_eq!(missing.kind, "ResourceNotFoundException");
        // A created group takes events without escaping the directory.
        handle(
            &scope,
            "CreateLogGroup",
            br#"{"logGroupName":"/../../etc"}"#,
        )
        .unwrap();
        handle(
            &scope,
            "PutLogEvents",
            br#"{"logGroupName":"/../../etc","logStreamName":"x","logEvents":[{"timestamp":1,"message":"m"}]}"#,
        )
        .unwrap();
        assert!(dir.path().join(file_name("/../../etc")).exists());
        let groups = handle(&scope, "DescribeLogGroups", b"{}").unwrap();
        let names: Vec<&str> = groups["logGroups"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|g| g["logGroupName"].as_str())
            .collect();
        assert_eq!(names, vec!["/../../etc", "/aws/lambda/hello"]);
    }
}
