//! Per-function credentials on the DynamoDB endpoint: a function's key is
//! accepted and its policies decide per table (enforce:
//! `AccessDeniedException`, 400, AWS's message); the box's key may do
//! everything.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use esb_iam::{ArnContext, FunctionPermissions, Iam, Mode, PolicySource};
use esb_services_dynamodb::{DynamoConfig, DynamoServer, KeySpec, TableSpec};
use serde_json::{Value, json};

const AKID: &str = "AKIATESTTESTTEST";
const SECRET: &str = "secret-secret-secret-secret";

fn table(name: &str) -> TableSpec {
    TableSpec {
        name: name.into(),
        key_schema: vec![KeySpec {
            attribute_name: "id".into(),
            key_type: "HASH".into(),
        }],
        attribute_definitions: vec![("id".into(), "S".into())],
        global_secondary_indexes: vec![],
        local_secondary_indexes: vec![],
        stream_view_type: None,
        ttl_attribute: None,
    }
}

async fn start(mode: Mode) -> (DynamoServer, Arc<Iam>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("esb-ddb-iam-{}", uuid::Uuid::new_v4()));
    let iam = Arc::new(Iam::new(
        mode,
        ArnContext::new("us-east-1", "123456789012"),
        SECRET,
    ));
    iam.load(&[FunctionPermissions {
        function: "Reader".into(),
        role_name: "ReaderRole".into(),
        policies: vec![PolicySource::Template {
            name: "DynamoDBReadPolicy".into(),
            parameters: BTreeMap::from([("TableName".into(), "orders".into())]),
        }],
        external_role: None,
    }]);
    let mut config = DynamoConfig::new(dir.join("db.sqlite3"), AKID.into(), SECRET.into());
    config.iam = Some(iam.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = DynamoServer::start(config, listener).await.unwrap();
    server
        .ensure_tables(&[table("orders"), table("secrets")])
        .unwrap();
    (server, iam, dir)
}

async fn call(
    server: &DynamoServer,
    op: &str,
    body: Value,
    (akid, secret): (&str, &str),
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
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

fn item(id: &str) -> Value {
    json!({"TableName": "orders", "Item": {"id": {"S": id}}})
}

#[tokio::test]
async fn enforce_lets_a_reader_read_and_refuses_its_writes() {
    let (server, iam, dir) = start(Mode::Enforce).await;
    let boxed = (AKID, SECRET);
    assert_eq!(call(&server, "PutItem", item("a"), boxed).await.0, 200);
    let creds = iam.credentials("Reader");
    let reader = (
        creds.access_key_id.as_str(),
        creds.secret_access_key.as_str(),
    );
    let (status, body) = call(
        &server,
        "GetItem",
        json!({"TableName": "orders", "Key": {"id": {"S": "a"}}}),
        reader,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Item"]["id"]["S"], "a");
    let (status, body) = call(&server, "PutItem", item("b"), reader).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["__type"],
        "com.amazon.coral.service#AccessDeniedException"
    );
    assert_eq!(
        body["message"],
        "User: arn:aws:sts::123456789012:assumed-role/ReaderRole/Reader is not authorized to perform: \
         dynamodb:PutItem on resource: arn:aws:dynamodb:us-east-1:123456789012:table/orders because \
         no identity-based policy allows the dynamodb:PutItem action"
    );
    // Nothing was written.
    let (_, got) = call(
        &server,
        "GetItem",
        json!({"TableName": "orders", "Key": {"id": {"S": "b"}}}),
        boxed,
    )
    .await;
    assert!(got.get("Item").is_none(), "{got}");
    // Another table is not readable; a batch naming it is refused whole.
    let (status, _) = call(&server, "Scan", json!({"TableName": "secrets"}), reader).await;
    assert_eq!(status, 400);
    let (status, _) = call(
        &server,
        "BatchGetItem",
        json!({"RequestItems": {
            "orders": {"Keys": [{"id": {"S": "a"}}]},
            "secrets": {"Keys": [{"id": {"S": "a"}}]}
        }}),
        reader,
    )
    .await;
    assert_eq!(status, 400);
    // A key nobody issued is not recognised.
    let (status, body) = call(
        &server,
        "GetItem",
        json!({"TableName": "orders"}),
        ("ASIAXXXXXXXXXXXXXXXX", "x"),
    )
    .await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (
            400,
            Some("com.amazon.coral.service#UnrecognizedClientException")
        )
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn warn_allows_what_aws_would_refuse() {
    let (server, iam, dir) = start(Mode::Warn).await;
    let creds = iam.credentials("Reader");
    let reader = (
        creds.access_key_id.as_str(),
        creds.secret_access_key.as_str(),
    );
    let (status, body) = call(&server, "PutItem", item("w"), reader).await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
