//! The S3 API operation a request names, for the `/metrics` operation
//! counters (docs/observability.md). Read from the method, the path (or
//! the virtual-hosted bucket) and the sub-resource query parameters, as S3
//! routes requests; s3s routes again for real. The names come from a fixed
//! set, so a client cannot grow the label set.

use crate::LocalHosts;

/// Told about each answered request: S3 operation name and HTTP status.
#[derive(Clone)]
pub struct OperationObserver(pub std::sync::Arc<ObserverFn>);

/// The callback inside an [`OperationObserver`].
pub type ObserverFn = dyn Fn(&'static str, u16) + Send + Sync;

impl std::fmt::Debug for OperationObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperationObserver")
    }
}

/// The S3 operation of `parts` (`"Other"` when none matches).
pub(crate) fn operation(
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    hosts: &LocalHosts,
) -> &'static str {
    use http::Method;
    let query = uri.query().unwrap_or("");
    let has = |name: &str| query.split('&').any(|p| p.split('=').next() == Some(name));
    let path = uri.path().strip_prefix('/').unwrap_or("");
    let virtual_bucket = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| hosts.bucket_of(h))
        .is_some();
    let (bucket, key) = if virtual_bucket {
        (true, !path.is_empty())
    } else {
        match path.split_once('/') {
            Some((_, k)) => (true, !k.is_empty()),
            None => (!path.is_empty(), false),
        }
    };
    let copy = headers.contains_key("x-amz-copy-source");
    match (method, bucket, key) {
        (&Method::GET, false, _) => "ListBuckets",
        (&Method::GET, true, false) if has("uploads") => "ListMultipartUploads",
        (&Method::GET, true, false) if has("location") => "GetBucketLocation",
        (&Method::GET, true, false) if has("versioning") => "GetBucketVersioning",
        (&Method::GET, true, false) if has("list-type") => "ListObjectsV2",
        (&Method::GET, true, false) => "ListObjects",
        (&Method::PUT, true, false) => "CreateBucket",
        (&Method::DELETE, true, false) => "DeleteBucket",
        (&Method::HEAD, true, false) => "HeadBucket",
        (&Method::POST, true, false) if has("delete") => "DeleteObjects",
        (&Method::GET, true, true) if has("uploadId") => "ListParts",
        (&Method::GET, true, true) if has("tagging") => "GetObjectTagging",
        (&Method::GET, true, true) => "GetObject",
        (&Method::HEAD, true, true) => "HeadObject",
        (&Method::PUT, true, true) if has("uploadId") && copy => "UploadPartCopy",
        (&Method::PUT, true, true) if has("uploadId") => "UploadPart",
        (&Method::PUT, true, true) if has("tagging") => "PutObjectTagging",
        (&Method::PUT, true, true) if copy => "CopyObject",
        (&Method::PUT, true, true) => "PutObject",
        (&Method::DELETE, true, true) if has("uploadId") => "AbortMultipartUpload",
        (&Method::DELETE, true, true) => "DeleteObject",
        (&Method::POST, true, true) if has("uploads") => "CreateMultipartUpload",
        (&Method::POST, true, true) if has("uploadId") => "CompleteMultipartUpload",
        _ => "Other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: &str, uri: &str, host: &str, headers: &[(&str, &str)]) -> &'static str {
        let mut b = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        operation(
            &parts.method,
            &parts.uri,
            &parts.headers,
            &LocalHosts::default(),
        )
    }

    #[test]
    fn path_style_requests_name_their_operation() {
        let h = "127.0.0.1:9000";
        assert_eq!(op("GET", "/", h, &[]), "ListBuckets");
        assert_eq!(op("PUT", "/b", h, &[]), "CreateBucket");
        assert_eq!(
            op("GET", "/b?list-type=2&prefix=a", h, &[]),
            "ListObjectsV2"
        );
        assert_eq!(op("GET", "/b", h, &[]), "ListObjects");
        assert_eq!(op("POST", "/b?delete", h, &[]), "DeleteObjects");
        assert_eq!(op("PUT", "/b/k/x", h, &[]), "PutObject");
        assert_eq!(
            op("PUT", "/b/k", h, &[("x-amz-copy-source", "/b/o")]),
            "CopyObject"
        );
        assert_eq!(op("GET", "/b/k", h, &[]), "GetObject");
        assert_eq!(op("HEAD", "/b/k", h, &[]), "HeadObject");
        assert_eq!(op("DELETE", "/b/k", h, &[]), "DeleteObject");
        assert_eq!(op("POST", "/b/k?uploads", h, &[]), "CreateMultipartUpload");
        assert_eq!(
            op("PUT", "/b/k?partNumber=1&uploadId=u", h, &[]),
            "UploadPart"
        );
        assert_eq!(
            op("POST", "/b/k?uploadId=u", h, &[]),
            "CompleteMultipartUpload"
        );
        assert_eq!(op("PATCH", "/b/k", h, &[]), "Other");
    }

    #[test]
    fn virtual_hosted_requests_take_the_bucket_from_the_host() {
        assert_eq!(op("GET", "/k", "b.localhost:9000", &[]), "GetObject");
        assert_eq!(op("GET", "/", "b.localhost:9000", &[]), "ListObjects");
    }
}
