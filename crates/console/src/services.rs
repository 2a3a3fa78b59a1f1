//! The storage pages' backend: SigV4-signed requests to the box's S3 and
//! DynamoDB endpoints with the box's credentials (why: see the crate doc).
//!
//! Confinement: a bucket name must be a valid S3 bucket name and an
//! object key may not contain empty, `.` or `..` segments or control
//! characters, so the path built from them always names one object of
//! that bucket (no dot-segment a server could fold into another bucket).
//! Keys are percent-encoded for the wire; the signer encodes the raw path
//! once, which is S3's canonical URI for such keys.

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

/// Everything but RFC 3986's unreserved characters.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// As [`STRICT`], keeping `/` (object keys in a path).
const KEY: &AsciiSet = &STRICT.remove(b'/');

/// A storage endpoint and the credentials to sign for it.
#[derive(Clone)]
pub struct Endpoint {
    /// Base URL (`http://127.0.0.1:9000`).
    pub url: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Signing region.
    pub region: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// An answer of an endpoint, passed on to the page.
pub(crate) struct Upstream {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// Why a storage request was not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StorageError {
    #[error("invalid bucket name")]
    Bucket,
    #[error("invalid object key")]
    Key,
    #[error("{0} is not configured")]
    Off(&'static str),
    #[error("signing failed")]
    Sign,
    #[error("endpoint unreachable: {0}")]
    Unreachable(String),
}

/// A valid S3 bucket name (3-63 of `a-z 0-9 . -`, no leading dot/dash).
pub(crate) fn check_bucket(b: &str) -> Result<(), StorageError> {
    let ok = (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && !b.starts_with(['.', '-'])
        && !b.contains("..");
    if ok {
        Ok(())
    } else {
        Err(StorageError::Bucket)
    }
}

/// A key that names one object of its bucket (see the module doc).
pub(crate) fn check_key(k: &str) -> Result<(), StorageError> {
    let trimmed = k.strip_suffix('/').unwrap_or(k);
    let ok = !k.is_empty()
        && k.len() <= 1024
        && !k.chars().any(char::is_control)
        && trimmed
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if ok { Ok(()) } else { Err(StorageError::Key) }
}

/// A query string, names and values strictly encoded, in order.
pub(crate) fn query(pairs: &[(&str, &str)]) -> String {
    let mut sorted: Vec<_> = pairs.to_vec();
    sorted.sort();
    sorted
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, STRICT),
                utf8_percent_encode(v, STRICT)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The wire path of `key` in `bucket` (both checked).
pub(crate) fn object_path(bucket: &str, key: &str) -> (String, String) {
    let raw = format!("/{bucket}/{key}");
    let wire = format!("/{bucket}/{}", utf8_percent_encode(key, KEY));
    (raw, wire)
}

/// Sends one signed request. `raw_path` is the unencoded path the
/// signature covers, `wire_path` what is sent.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send(
    client: &reqwest::Client,
    ep: &Endpoint,
    service: &str,
    method: Method,
    raw_path: &str,
    wire_path: &str,
    query: &str,
    mut headers: HeaderMap,
    body: Bytes,
) -> Result<Upstream, StorageError> {
    let base = ep.url.trim_end_matches('/');
    let url = if query.is_empty() {
        format!("{base}{wire_path}")
    } else {
        format!("{base}{wire_path}?{query}")
    };
    let parsed = reqwest::Url::parse(&url).map_err(|e| StorageError::Unreachable(e.to_string()))?;
    let host = match (parsed.host_str(), parsed.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => return Err(StorageError::Unreachable("no host".into())),
    };
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(&host).map_err(|_| StorageError::Sign)?,
    );
    let sha = hex::encode(Sha256::digest(&body));
    headers.insert(
        "x-amz-content-sha256",
        HeaderValue::from_str(&sha).map_err(|_| StorageError::Sign)?,
    );
    esb_sigv4::sign(
        method.as_str(),
        raw_path,
        query,
        &mut headers,
        esb_sigv4::Payload::Sha256(&sha),
        &esb_sigv4::SigningParams {
            access_key_id: &ep.access_key_id,
            secret_access_key: &ep.secret_access_key,
            region: &ep.region,
            service,
            time: SystemTime::now(),
        },
    )
    .map_err(|_| StorageError::Sign)?;
    let resp = client
        .request(method, parsed)
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| StorageError::Unreachable(e.to_string()))?;
    let status = resp.status();
    let content_type = resp.headers().get(http::header::CONTENT_TYPE).cloned();
    let body = resp
        .bytes()
        .await
        .map_err(|e| StorageError::Unreachable(e.to_string()))?;
    Ok(Upstream {
        status,
        content_type,
        body,
    })
}

/// One DynamoDB JSON call (`op` is one of the few the console makes).
pub(crate) async fn dynamodb(
    client: &reqwest::Client,
    ep: &Endpoint,
    op: &str,
    body: &serde_json::Value,
) -> Result<Upstream, StorageError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    headers.insert(
        "x-amz-target",
        HeaderValue::from_str(&format!("DynamoDB_20120810.{op}"))
            .map_err(|_| StorageError::Sign)?,
    );
    send(
        client,
        ep,
        "dynamodb",
        Method::POST,
        "/",
        "/",
        "",
        headers,
        Bytes::from(body.to_string()),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_leave_their_bucket() {
        for bad in [
            "",
            "..",
            "a/../b",
            "./a",
            "a//b",
            "/a",
            "a\nb",
            "../other/x",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "dir/file.txt", "dir/", "we ird/<script>.txt", "a..b"] {
            assert!(check_key(good).is_ok(), "{good:?} refused");
        }
        for bad in ["A", "ab", "-abc", "a/b", "a..b", "x".repeat(64).as_str()] {
            assert!(check_bucket(bad).is_err(), "{bad:?} accepted");
        }
        check_bucket("my-bucket.1").unwrap();
        let (_, wire) = object_path("b", "d/we ird?#.txt");
        assert_eq!(wire, "/b/d/we%20ird%3F%23.txt");
    }
}
