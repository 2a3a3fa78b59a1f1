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
