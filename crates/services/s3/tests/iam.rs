//! Per-function credentials on the S3 endpoint: a function's key is
//! accepted, its policies decide (enforce: `AccessDenied` 403 with AWS's
//! message), the box's key may do everything, an unknown key is refused.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::sync::Arc;

use esb_iam::{ArnContext, FunctionPermissions, Iam, Mode, PolicySource};
use esb_services_s3::{S3Config, S3Server};

const AKID: &str = "AKIATEST";
const SECRET: &str = "secret-secret-secret";

async fn start(mode: Mode) -> (S3Server, Arc<Iam>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("esb-s3-iam-{}", uuid::Uuid::new_v4()));
    let iam = Arc::new(Iam::new(
        mode,
        ArnContext::new("us-east-1", "123456789012"),
        SECRET,
    ));
    let warnings = iam.load(&[FunctionPermissions {
        function: "Reader".into(),
        role_name: "ReaderRole".into(),
        policies: vec![PolicySource::Template {
            name: "S3ReadPolicy".into(),
            parameters: BTreeMap::from([("BucketName".into(), "photos".into())]),
        }],
        external_role: None,
    }]);
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut config = S3Config::new(dir.join("s3"), AKID.into(), SECRET.into());
    config.iam = Some(iam.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = S3Server::start(config, listener).await.unwrap();
    server
        .ensure_buckets(&["photos".into(), "other".into()])
        .unwrap();
    (server, iam, dir)
}

async fn signed(
    server: &S3Server,
    (akid, secret): (&str, &str),
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    use sha2::Digest as _;
    let addr = server.local_addr();
    let mut headers = http::HeaderMap::new();
    headers.insert("host", addr.to_string().parse().unwrap());
    headers.insert(
        "x-amz-content-sha256",
        hex::encode(sha2::Sha256::digest(body)).parse().unwrap(),
    );
    esb_sigv4::sign(
        method,
        path,
        "",
        &mut headers,
        esb_sigv4::Payload::Body(body),
        &esb_sigv4::SigningParams {
            access_key_id: akid,
            secret_access_key: secret,
            region: "us-east-1",
            service: "s3",
            time: std::time::SystemTime::now(),
        },
    )
    .unwrap();
    let resp = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("http://{addr}{path}"))
        .headers(headers)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn enforce_lets_a_reader_read_and_refuses_its_writes() {
    let (server, iam, dir) = start(Mode::Enforce).await;
    let boxed = (AKID, SECRET);
    assert_eq!(
        signed(&server, boxed, "PUT", "/photos/a.txt", b"hi")
            .await
            .0,
        200
    );
    let creds = iam.credentials("Reader");
    let reader = (
        creds.access_key_id.as_str(),
        creds.secret_access_key.as_str(),
    );
    let (status, body) = signed(&server, reader, "GET", "/photos/a.txt", b"").await;
    assert_eq!((status, body.as_str()), (200, "hi"));
    let (status, body) = signed(&server, reader, "PUT", "/photos/b.txt", b"no").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    assert!(
        body.contains(
            "User: arn:aws:sts::123456789012:assumed-role/ReaderRole/Reader is not authorized to perform: s3:PutObject on resource: arn:aws:s3:::photos/b.txt"
        ),
        "{body}"
    );
    assert_eq!(
        signed(&server, boxed, "GET", "/photos/b.txt", b"").await.0,
        404,
        "nothing was written"
    );
    // Another bucket: not even readable.
    assert_eq!(signed(&server, boxed, "PUT", "/other/x", b"x").await.0, 200);
    assert_eq!(signed(&server, reader, "GET", "/other/x", b"").await.0, 403);
    // A key nobody issued.
    let (status, _) = signed(
        &server,
        ("ASIAUNKNOWN", "nope"),
        "GET",
        "/photos/a.txt",
        b"",
    )
    .await;
    assert_eq!(status, 403);
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
    assert_eq!(
        signed(&server, reader, "PUT", "/photos/b.txt", b"ok")
            .await
            .0,
        200
    );
    let (status, body) = signed(&server, reader, "GET", "/photos/b.txt", b"").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
