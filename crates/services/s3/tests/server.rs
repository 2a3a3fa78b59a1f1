//! The S3 endpoint on a real listener: what a client sees before s3s
//! (limits, auth) and what start-up does with the data directory.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::PathBuf;

use esb_services_s3::{S3Config, S3Error, S3Server, ensure_buckets};

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("esb-s3-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn start(root: PathBuf, max_body: u64) -> Result<S3Server, S3Error> {
    let mut config = S3Config::new(root, "AKIATEST".into(), "secret-secret-secret".into());
    config.max_body_bytes = max_body;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    S3Server::start(config, listener).await
}

#[tokio::test]
async fn unsigned_requests_are_refused() {
    let dir = temp_dir();
    let server = start(dir.join("s3"), 1024).await.unwrap();
    server.ensure_buckets(&["data".into()]).unwrap();
    let url = format!("http://{}/data/key.txt", server.local_addr());
    let resp = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let put = reqwest::Client::new()
        .put(&url)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 403);
    assert!(!dir.join("s3/data/key.txt").exists());
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bodies_over_the_limit_get_entity_too_large() {
    let dir = temp_dir();
    let server = start(dir.join("s3"), 1024).await.unwrap();
    let url = format!("http://{}/data/big.bin", server.local_addr());
    let resp = reqwest::Client::new()
        .put(&url)
        .body(vec![0u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("EntityTooLarge"));
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn buckets_are_created_once_and_kept() {
    let dir = temp_dir();
    let server = start(dir.join("s3"), 1024).await.unwrap();
    let names = vec!["esb-data-dev".to_string(), "logs.example".to_string()];
    assert_eq!(server.ensure_buckets(&names).unwrap(), names);
    std::fs::write(dir.join("s3/esb-data-dev/kept.txt"), "kept").unwrap();
    assert!(server.ensure_buckets(&names).unwrap().is_empty());
    assert!(dir.join("s3/esb-data-dev/kept.txt").exists());
    let err = server.ensure_buckets(&["Bad_Name".into()]).unwrap_err();
    assert!(err.to_string().contains("Bad_Name"), "{err}");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn corrupt_metadata_fails_start_naming_the_file() {
    let dir = temp_dir();
    let root = dir.join("s3");
    std::fs::create_dir_all(&root).unwrap();
    let bad = root.join(".bucket-YQ.object-Yg.metadata.json");
    std::fs::write(&bad, "{truncated").unwrap();
    let err = start(root, 1024).await.unwrap_err();
    assert!(
        err.to_string().contains(&bad.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), "{truncated");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_file_where_a_bucket_should_be_fails_start() {
    let dir = temp_dir();
    let root = dir.join("s3");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("stray"), "x").unwrap();
    let err = start(root.clone(), 1024).await.unwrap_err();
    assert!(err.to_string().contains("stray"), "{err}");
    let err = ensure_buckets(&root, &["stray".into()]).unwrap_err();
    assert!(err.to_string().contains("stray"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
