//! The write hook: after s3s answered a PutObject, CopyObject,
//! CompleteMultipartUpload or DeleteObject with success (the object is on
//! disk), the endpoint reports it to a [`WriteHook`] and waits for it before
//! the response goes out, so an acknowledged write has its notification
//! queued. The hook (the app's S3 → Lambda notifier) decides what to do;
//! this crate knows nothing of functions.
//!
//! Recognised at the HTTP level (method, path, query) because s3s-fs offers
//! no callback. `DeleteObjects` (POST `?delete`, keys in the body) is
//! reported by the key map instead ([`crate::keymap::MappedFs::with_hook`]):
//! one `Delete` per key removed, before the response goes out.

use std::sync::Arc;

use percent_encoding::percent_decode_str;

/// What a successful request did to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// PutObject.
    Put,
    /// CopyObject (PUT with `x-amz-copy-source`).
    Copy,
    /// CompleteMultipartUpload.
    CompleteMultipartUpload,
    /// DeleteObject.
    Delete,
}

/// One object write, reported after it succeeded.
#[derive(Debug, Clone)]
pub struct ObjectWrite {
    /// Bucket name.
    pub bucket: String,
    /// Object key (decoded).
    pub key: String,
    /// What happened.
    pub kind: WriteKind,
    /// Body size of a PutObject, when declared.
    pub size: Option<u64>,
    /// The response's ETag, unquoted.
    pub etag: Option<String>,
    /// The request's `X-Amzn-Trace-Id` (the caller's invocation chain).
    pub trace: Option<String>,
    /// The response's request id.
    pub request_id: String,
}

/// Told about every successful object write.
#[async_trait::async_trait]
pub trait WriteHook: Send + Sync + 'static {
    /// Whether writes to `bucket` are of interest (others are not reported).
    fn watches(&self, bucket: &str) -> bool;
    /// The write is durable; returns once the hook has recorded it.
    async fn written(&self, write: ObjectWrite);
}

/// An optional hook in [`crate::S3Config`].
#[derive(Clone, Default)]
pub struct HookSlot(pub Option<Arc<dyn WriteHook>>);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "HookSlot(set)"
        } else {
            "HookSlot(none)"
        })
    }
}

/// What a request will do if it succeeds: (bucket, key, kind, declared size).
pub(crate) fn classify(
    parts: &http::request::Parts,
    hosts: &crate::LocalHosts,
) -> Option<(String, String, WriteKind, Option<u64>)> {
    let query = parts.uri.query().unwrap_or("");
    let has = |name: &str| query.split('&').any(|p| p.split('=').next() == Some(name));
    let path = parts.uri.path();
    let virtual_bucket = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| hosts.bucket_of(h));
    let (bucket, raw_key): (String, &str) = match virtual_bucket {
        Some(b) => (b, path.strip_prefix('/').unwrap_or(path)),
        None => {
            let (b, k) = path.strip_prefix('/')?.split_once('/')?;
            (b.to_string(), k)
        }
    };
    let key = percent_decode_str(raw_key).decode_utf8().ok()?.into_owned();
    if key.is_empty() {
        return None;
    }
    let size = parts
        .headers
        .get("x-amz-decoded-content-length")
        .or_else(|| parts.headers.get(http::header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let kind = match parts.method {
        http::Method::PUT if query.is_empty() || has("x-id") => {
            if parts.headers.contains_key("x-amz-copy-source") {
                WriteKind::Copy
            } else {
                WriteKind::Put
            }
        }
        http::Method::POST if has("uploadId") => WriteKind::CompleteMultipartUpload,
        http::Method::DELETE if !has("uploadId") && !has("tagging") => WriteKind::Delete,
        _ => return None,
    };
    let size = (kind == WriteKind::Put).then_some(size).flatten();
    Some((bucket, key, kind, size))
}
