//! The console's JSON API (`/_esb/console/api/...`): login, then
//! functions, invocations, logs, metrics, users, S3 and DynamoDB. Every
//! call but login needs a valid bearer token from the user pool.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::services::{self, StorageError, Upstream};
use crate::{Console, json, text};

/// Records read for the Invocations and Logs pages.
const RECENT: usize = 5000;
/// Lines the Logs page shows at most.
const LOG_LINES: usize = 500;
/// Items a scan returns at most.
const SCAN_LIMIT: u64 = 100;

pub(crate) async fn handle(
    console: &Console,
    req: Request<Bytes>,
    peer: SocketAddr,
    route: &str,
) -> Response<Bytes> {
    if route == "login" {
        return if req.method() == Method::POST {
            login(console, req.body(), peer).await
        } else {
            text(StatusCode::METHOD_NOT_ALLOWED, "use POST")
        };
    }
    if let Err(r) = authorize(console, req.headers()) {
        return r;
    }
    let q = query_map(req.uri().query().unwrap_or(""));
    let arg = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let cfg = console.config();
    match (req.method().clone(), route) {
        (Method::GET, "functions") => json(
            StatusCode::OK,
            &serde_json::to_value((cfg.functions)()).unwrap_or_default(),
        ),
        (Method::GET, "invocations") => invocations(console).await,
        (Method::GET, "logs") => logs(console, arg("q").to_string()).await,
        (Method::GET, "metrics") => match &cfg.metrics {
            Some(m) => text(StatusCode::OK, &m.render()),
            None => text(StatusCode::NOT_FOUND, "metrics are off"),
        },
        (Method::GET, "users") => users(console),
        (Method::GET, "s3/buckets") => s3(console, Method::GET, "/", "/", "", Bytes::new()).await,
        (Method::GET, "s3/objects") => {
            let bucket = arg("bucket");
            if let Err(e) = services::check_bucket(bucket) {
                return refused(e);
            }
            let query = services::query(&[
                ("list-type", "2"),
                ("prefix", arg("prefix")),
                ("delimiter", "/"),
                ("max-keys", "1000"),
            ]);
            let path = format!("/{bucket}");
            s3(console, Method::GET, &path, &path, &query, Bytes::new()).await
        }
        (m @ (Method::GET | Method::PUT | Method::DELETE), "s3/object") => {
            let (bucket, key) = (arg("bucket"), arg("key"));
            if let Err(e) = services::check_bucket(bucket).and(services::check_key(key)) {
                return refused(e);
            }
            let (raw, wire) = services::object_path(bucket, key);
            let body = if m == Method::PUT {
                req.body().clone()
            } else {
                Bytes::new()
            };
            let get = m == Method::GET;
            let mut r = s3(console, m, &raw, &wire, "", body).await;
            if get && r.status().is_success() {
                // Always a download, never rendered in the console's origin.
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                r.headers_mut()
                    .insert(CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
            }
            r
        }
        (Method::GET, "dynamodb/tables") => dynamodb(console, "ListTables", json!({})).await,
        (
            Method::POST,
            op @ ("dynamodb/scan" | "dynamodb/describe" | "dynamodb/put" | "dynamodb/delete"),
        ) => {
            let Ok(body) = serde_json::from_slice::<Value>(req.body()) else {
                return text(StatusCode::BAD_REQUEST, "body must be JSON");
            };
            let Some(table) = body.get("table").and_then(Value::as_str) else {
                return text(StatusCode::BAD_REQUEST, "table is required");
            };
            let (target, call) = match op {
                "dynamodb/scan" => ("Scan", json!({"TableName": table, "Limit": SCAN_LIMIT})),
                "dynamodb/describe" => ("DescribeTable", json!({"TableName": table})),
                "dynamodb/put" => match body.get("item") {
                    Some(item @ Value::Object(_)) => {
                        ("PutItem", json!({"TableName": table, "Item": item}))
                    }
                    _ => return text(StatusCode::BAD_REQUEST, "item must be an object"),
                },
                _ => match body.get("key") {
                    Some(key @ Value::Object(_)) => {
                        ("DeleteItem", json!({"TableName": table, "Key": key}))
                    }
                    _ => return text(StatusCode::BAD_REQUEST, "key must be an object"),
                },
            };
            dynamodb(console, target, call).await
        }
        _ => text(StatusCode::NOT_FOUND, "no such console call"),
    }
}

/// `POST api/login` `{"username", "password"}` -> `{"token", "expires_in"}`.
async fn login(console: &Console, body: &Bytes, peer: SocketAddr) -> Response<Bytes> {
    let Ok(form) = serde_json::from_slice::<Value>(body) else {
        return text(StatusCode::BAD_REQUEST, "body must be JSON");
    };
    let field = |k: &str| form.get(k).and_then(Value::as_str).unwrap_or("");
    let cognito = json!({
        "AuthFlow": "USER_PASSWORD_AUTH",
        "AuthParameters": {"USERNAME": field("username"), "PASSWORD": field("password")},
    })
    .to_string();
    let auth = &console.config().auth;
    let out = auth
        .login_async(cognito.as_bytes(), peer.ip(), now_unix(), Instant::now())
        .await;
    if out.status != 200 {
        tracing::info!(source = %peer.ip(), status = out.status, "console login refused");
        let status = if out.status == 429 {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::UNAUTHORIZED
        };
        let mut r = json(status, &json!({"error": "login refused"}));
        if let Some(secs) = out.retry_after {
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return r;
    }
    let parsed: Value = serde_json::from_str(&out.body).unwrap_or_default();
    let result = &parsed["AuthenticationResult"];
    match result["AccessToken"].as_str() {
        Some(token) => json(
            StatusCode::OK,
            &json!({"token": token, "expires_in": result["ExpiresIn"]}),
        ),
        None => text(StatusCode::INTERNAL_SERVER_ERROR, "no token issued"),
    }
}

/// A bearer token the user pool issued and still honours.
#[allow(clippy::result_large_err)]
pub(crate) fn authorize(console: &Console, headers: &HeaderMap) -> Result<(), Response<Bytes>> {
    let unauthorized = || {
        let mut r = json(StatusCode::UNAUTHORIZED, &json!({"error": "log in first"}));
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        r
    };
    let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(unauthorized());
    };
    let Some(token) = value.strip_prefix("Bearer ") else {
        return Err(unauthorized());
    };
    let auth = &console.config().auth;
    let rules = esb_auth::Rules {
        issuer: auth.issuer(),
        audiences: &[],
        token_use: &[],
    };
    auth.verify_token(token, &rules, now_unix())
        .map(|_| ())
        .map_err(|_| unauthorized())
}

/// START/END/REPORT of recent invocations, newest first.
async fn invocations(console: &Console) -> Response<Bytes> {
    let dir = console.config().logs_dir.clone();
    let records = tokio::task::spawn_blocking(move || esb_services_logs::read(&dir, None, RECENT))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    #[derive(Default, serde::Serialize)]
    struct Inv {
        request_id: String,
        function: String,
        start: String,
        duration_ms: Option<f64>,
        status: &'static str,
    }
    let mut order: Vec<String> = Vec::new();
    let mut by_id: BTreeMap<String, Inv> = BTreeMap::new();
    for r in &records {
        let line = r.line.trim_start();
        let id = match r.request_id.as_deref() {
            Some(id) => id.to_string(),
            None => match line.split_whitespace().nth(2) {
                Some(id) if line.starts_with("START RequestId:") => id.to_string(),
                _ => continue,
            },
        };
        let inv = by_id.entry(id.clone()).or_insert_with(|| {
            order.push(id.clone());
            Inv {
                request_id: id.clone(),
                function: r.function.clone(),
                start: r.ts.clone(),
                status: "running",
                ..Default::default()
            }
        });
        if line.starts_with("REPORT RequestId:") {
            inv.duration_ms = line
                .split("Duration: ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse().ok());
            if inv.status == "running" {
                inv.status = if line.contains("Status: error") || line.contains("Status: timeout") {
                    "error"
                } else {
                    "ok"
                };
            }
        } else if line.contains("Task timed out") || line.contains("[ERROR]") {
            inv.status = "error";
        }
    }
    let list: Vec<Inv> = order
        .iter()
        .rev()
        .take(200)
        .filter_map(|id| by_id.remove(id))
        .collect();
    json(
        StatusCode::OK,
        &serde_json::to_value(list).unwrap_or_default(),
    )
}

/// The last lines containing `q` (case-insensitive), oldest first.
async fn logs(console: &Console, q: String) -> Response<Bytes> {
    let dir = console.config().logs_dir.clone();
    let records = tokio::task::spawn_blocking(move || esb_services_logs::read(&dir, None, RECENT))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let needle = q.to_lowercase();
    let mut hits: Vec<_> = records
        .into_iter()
        .rev()
        .filter(|r| needle.is_empty() || r.line.to_lowercase().contains(&needle))
        .take(LOG_LINES)
        .collect();
    hits.reverse();
    json(
        StatusCode::OK,
        &serde_json::to_value(hits).unwrap_or_default(),
    )
}

/// User names and groups (never the password hashes).
fn users(console: &Console) -> Response<Bytes> {
    let auth = &console.config().auth;
    match esb_auth::UserStore::load(auth.data_dir()) {
        Ok(store) => {
            let list: Vec<Value> = store
                .users()
                .iter()
                .map(|u| json!({"username": u.username, "groups": u.groups}))
                .collect();
            json(StatusCode::OK, &Value::Array(list))
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn s3(
    console: &Console,
    method: Method,
    raw: &str,
    wire: &str,
    query: &str,
    body: Bytes,
) -> Response<Bytes> {
    let Some(ep) = &console.config().s3 else {
        return refused(StorageError::Off("S3"));
    };
    let r = services::send(
        console.client(),
        ep,
        "s3",
        method,
        raw,
        wire,
        query,
        HeaderMap::new(),
        body,
    )
    .await;
    upstream(r)
}

async fn dynamodb(console: &Console, op: &str, body: Value) -> Response<Bytes> {
    let Some(ep) = &console.config().dynamodb else {
        return refused(StorageError::Off("DynamoDB"));
    };
    upstream(services::dynamodb(console.client(), ep, op, &body).await)
}

fn upstream(r: Result<Upstream, StorageError>) -> Response<Bytes> {
    match r {
        Ok(u) => {
            let mut r = Response::new(u.body);
            *r.status_mut() = u.status;
            if let Some(ct) = u.content_type {
                r.headers_mut().insert(CONTENT_TYPE, ct);
            }
            r
        }
        Err(e) => refused(e),
    }
}

fn refused(e: StorageError) -> Response<Bytes> {
    let status = match e {
        StorageError::Bucket | StorageError::Key => StatusCode::BAD_REQUEST,
        StorageError::Off(_) => StatusCode::NOT_FOUND,
        StorageError::Sign | StorageError::Unreachable(_) => StatusCode::BAD_GATEWAY,
    };
    json(status, &json!({"error": e.to_string()}))
}

fn query_map(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
