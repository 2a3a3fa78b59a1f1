//! The DynamoDB endpoint on a real listener: signature checks in front of
//! dynoxide, tables from specs, persistence, start-up on a damaged file.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::PathBuf;
use std::time::SystemTime;

use esb_services_dynamodb::{DynamoConfig, DynamoError, DynamoServer, KeySpec, TableSpec};
use serde_json::{Value, json};

const AKID: &str = "AKIATESTTESTTEST";
const SECRET: &str = "secret-secret-secret-secret";

fn temp_db() -> PathBuf {
    std::env::temp_dir()
        .join(format!("esb-ddb-test-{}", uuid::Uuid::new_v4()))
        .join("dynamodb.sqlite3")
}

async fn start(path: PathBuf) -> Result<DynamoServer, DynamoError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    DynamoServer::start(
        DynamoConfig::new(path, AKID.into(), SECRET.into()),
        listener,
    )
    .await
}

/// Sends one signed DynamoDB call; returns (status, JSON body).
async fn call(
    server: &DynamoServer,
    op: &str,
    body: Value,
    akid: &str,
    secret: &str,
) -> (u16, Value) {
    let addr = server.local_addr();
    let body = body.to_string();
    let mut headers = http::HeaderMap::new();
    headers.insert("host", addr.to_string().parse().unwrap());
    headers.insert(
        "content-type",
        "application/x-amz-json-1.0".parse().unwrap(),
    );
    headers.insert(
        "x-amz-target",
        format!("DynamoDB_20120810.{op}").parse().unwrap(),
    );
    esb_sigv4::sign(
        "POST",
        "/",
        "",
        &mut headers,
        esb_sigv4::Payload::Body(body.as_bytes()),
        &esb_sigv4::SigningParams {
            access_key_id: akid,
            secret_access_key: secret,
            region: "us-east-1",
            service: "dynamodb",
            time: SystemTime::now(),
        },
    )
    .unwrap();
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/"))
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let json = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, json)
}

fn notes() -> TableSpec {
    TableSpec {
        name: "notes".into(),
        key_schema: vec![KeySpec {
            attribute_name: "id".into(),
            key_type: "HASH".into(),
        }],
        attribute_definitions: vec![("id".into(), "S".into())],
        global_secondary_indexes: vec![],
        local_secondary_indexes: vec![],
        stream_view_type: None,
        ttl_attribute: Some("expires".into()),
    }
}

#[tokio::test]
async fn signed_requests_pass_and_data_survives_a_restart() {
    let path = temp_db();
    let server = start(path.clone()).await.unwrap();
    assert_eq!(server.ensure_tables(&[notes()]).unwrap(), vec!["notes"]);
    let (status, body) = call(
        &server,
        "PutItem",
        json!({"TableName": "notes", "Item": {"id": {"S": "a"}, "text": {"S": "kept"}}}),
        AKID,
        SECRET,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await;

    let server = start(path.clone()).await.unwrap();
    assert!(server.ensure_tables(&[notes()]).unwrap().is_empty());
    let (status, body) = call(
        &server,
        "GetItem",
        json!({"TableName": "notes", "Key": {"id": {"S": "a"}}}),
        AKID,
        SECRET,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Item"]["text"]["S"], "kept");
    let (_, ttl) = call(
        &server,
        "DescribeTimeToLive",
        json!({"TableName": "notes"}),
        AKID,
        SECRET,
    )
    .await;
    assert_eq!(
        ttl["TimeToLiveDescription"]["AttributeName"], "expires",
        "{ttl}"
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn wrong_secret_and_unknown_key_are_refused() {
    let path = temp_db();
    let server = start(path.clone()).await.unwrap();
    let (status, body) = call(&server, "ListTables", json!({}), AKID, "wrong-secret").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["__type"],
        "com.amazon.coral.service#InvalidSignatureException"
    );
    let (status, body) = call(&server, "ListTables", json!({}), "AKIAOTHER", SECRET).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["__type"],
        "com.amazon.coral.service#UnrecognizedClientException"
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn oversized_items_get_the_aws_validation_error() {
    let path = temp_db();
    let server = start(path.clone()).await.unwrap();
    server.ensure_tables(&[notes()]).unwrap();
    let big = "x".repeat(400 * 1024 + 1);
    let (status, body) = call(
        &server,
        "PutItem",
        json!({"TableName": "notes", "Item": {"id": {"S": "big"}, "blob": {"S": big}}}),
        AKID,
        SECRET,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["__type"]
            .as_str()
            .unwrap()
            .ends_with("ValidationException"),
        "{body}"
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn a_damaged_database_fails_start_naming_the_file_and_is_kept() {
    let path = temp_db();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"not a database at all".repeat(200)).unwrap();
    let err = start(path.clone()).await.unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(std::fs::read(&path).unwrap().starts_with(b"not a database"));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// S5: an item over 400 KB (attribute names count) is refused with
/// `ValidationException` and nothing is written; exactly 400 KB is stored.
#[tokio::test]
async fn s5_item_over_400kb_rejected() {
    let path = temp_db();
    let server = start(path.clone()).await.unwrap();
    server.ensure_tables(&[notes()]).unwrap();
    // Item size = lengths of names + values: "id" + "k1" + "blob" + value.
    let limit = 400 * 1024;
    let fixed = "id".len() + "k1".len() + "blob".len();
    let over = "x".repeat(limit - fixed + 1);
    let (status, body) = call(
        &server,
        "PutItem",
        json!({"TableName": "notes", "Item": {"id": {"S": "k1"}, "blob": {"S": over}}}),
        AKID,
        SECRET,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["__type"]
            .as_str()
            .unwrap_or_default()
            .ends_with("ValidationException"),
        "{body}"
    );
    let (_, got) = call(
        &server,
        "GetItem",
        json!({"TableName": "notes", "Key": {"id": {"S": "k1"}}}),
        AKID,
        SECRET,
    )
    .await;
    assert!(got.get("Item").is_none(), "nothing written: {got}");
    let exact = "x".repeat(limit - fixed);
    let (status, body) = call(
        &server,
        "PutItem",
        json!({"TableName": "notes", "Item": {"id": {"S": "k1"}, "blob": {"S": exact}}}),
        AKID,
        SECRET,
    )
    .await;
    assert_eq!(status, 200, "exactly 400 KB is accepted: {body}");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// S6: malformed or deeply nested JSON gets a 400, the server keeps
/// serving.
#[tokio::test]
async fn s6_deeply_nested_json_400() {
    let path = temp_db();
    let server = start(path.clone()).await.unwrap();
    server.ensure_tables(&[notes()]).unwrap();
    let addr = server.local_addr();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let nested_item = {
        let mut v = json!({"S": "leaf"});
        for _ in 0..200 {
            v = json!({"M": {"a": v}});
        }
        json!({"TableName": "notes", "Item": {"id": {"S": "deep"}, "n": v}})
    };
    let mut bodies = vec![
        deep,
        "{\"TableName\": ".to_string(),
        "\u{0}\u{ff}".to_string(),
    ];
    bodies.push(nested_item.to_string());
    for body in bodies {
        let mut headers = http::HeaderMap::new();
        headers.insert("host", addr.to_string().parse().unwrap());
        headers.insert(
            "content-type",
            "application/x-amz-json-1.0".parse().unwrap(),
        );
        headers.insert("x-amz-target", "DynamoDB_20120810.PutItem".parse().unwrap());
        esb_sigv4::sign(
            "POST",
            "/",
            "",
            &mut headers,
            esb_sigv4::Payload::Body(body.as_bytes()),
            &esb_sigv4::SigningParams {
                access_key_id: AKID,
                secret_access_key: SECRET,
                region: "us-east-1",
                service: "dynamodb",
                time: SystemTime::now(),
            },
        )
        .unwrap();
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/"))
            .headers(headers)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            400,
            "body starting {:?}",
            &body[..body.len().min(40)]
        );
    }
    let (status, _) = call(&server, "ListTables", json!({}), AKID, SECRET).await;
    assert_eq!(status, 200, "still serving");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

async fn start_with_limits(
    path: PathBuf,
    limits: esb_services_s3::listener::Limits,
) -> DynamoServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = DynamoConfig::new(path, AKID.into(), SECRET.into());
    config.limits = limits;
    DynamoServer::start(config, listener).await.unwrap()
}

/// H10: half-sent requests past the connection limit do not lock a good
/// client out, and each is closed at the header timeout.
#[tokio::test]
async fn h10_dynamodb_slowloris_does_not_lock_out() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let path = temp_db();
    let limits = esb_services_s3::listener::Limits {
        header_timeout: std::time::Duration::from_millis(500),
        body_timeout: std::time::Duration::from_millis(500),
        idle_timeout: std::time::Duration::from_secs(2),
        max_connections: 20,
        ..Default::default()
    };
    let server = start_with_limits(path.clone(), limits).await;
    let addr = server.local_addr();
    let mut held = Vec::new();
    for _ in 0..30 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        held.push(s);
    }
    let t = std::time::Instant::now();
    let (status, _) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        call(&server, "ListTables", json!({}), AKID, SECRET),
    )
    .await
    .expect("a good client is served while slow connections are held");
    assert_eq!(status, 200);
    assert!(
        t.elapsed() < std::time::Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    // Every slow connection is closed by now or soon (evicted or timed out).
    for mut s in held {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("closed within the header timeout")
            .unwrap_or(0);
        assert_eq!(n, 0, "no response to a half-sent request");
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
