//! Request limits: the one bounded body reader (declared and streamed
//! size), the payload limits, and the ambiguous-header check (robustness
//! H2, H3, H7).
//!
//! A body over its limit is answered with 413 at once, without reading
//! the rest: the listener (`esb-net`) keeps the unread body until the
//! answer is out, then closes the HTTP/1.1 connection with a short
//! lingering read (so a client that sends everything before reading still
//! sees the 413) or resets just the HTTP/2 stream with `NO_ERROR`.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use http_body_util::BodyExt;

/// Lambda's limit for `Event` payloads.
pub const MAX_ASYNC_PAYLOAD: usize = 1024 * 1024;
/// Largest body the login endpoint reads.
pub(crate) const LOGIN_BODY_LIMIT: usize = 64 * 1024;

/// Why a body could not be had.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Over the limit; `declared` is the `Content-Length` when that was
    /// already too large.
    TooLarge { declared: Option<u64> },
    /// The connection failed while reading.
    Read(String),
}

/// Reads a body of at most `limit` bytes. A `Content-Length` over the limit
/// is refused before reading; a body that grows past it while streaming is
/// refused at `limit + 1` (memory flat; the rest is never read).
pub(crate) async fn read_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    let declared = content_length(headers);
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge { declared });
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total: usize = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.into().to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(BodyError::TooLarge { declared: None });
        }
        chunks.push(data);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut all = Vec::with_capacity(total);
            for c in &chunks {
                all.extend_from_slice(c);
            }
            Bytes::from(all)
        }
    })
}

/// The declared `Content-Length`, if any and valid.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Two Host, Authorization or x-api-key headers make the request ambiguous
/// (robustness H7).
pub(crate) fn has_duplicate_identity(headers: &HeaderMap) -> bool {
    [HOST.as_str(), AUTHORIZATION.as_str(), "x-api-key"]
        .iter()
        .any(|name| headers.get_all(*name).iter().nth(1).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn declared_and_streamed_limits() {
        let mut headers = HeaderMap::new();
        let ok = read_body(&headers, Full::new(Bytes::from_static(b"abc")), 3).await;
        assert_eq!(ok.unwrap(), "abc");
        let over = read_body(&headers, Full::new(Bytes::from_static(b"abcd")), 3).await;
        assert!(matches!(over, Err(BodyError::TooLarge { declared: None })));
        headers.insert(CONTENT_LENGTH, http::HeaderValue::from_static("10"));
        let declared = read_body(&headers, Full::new(Bytes::from_static(b"ab")), 3).await;
        assert!(matches!(
            declared,
            Err(BodyError::TooLarge { declared: Some(10) })
        ));
    }

    #[test]
    fn duplicate_identity_headers() {
        let mut headers = HeaderMap::new();
        headers.append("x-api-key", http::HeaderValue::from_static("a"));
        assert!(!has_duplicate_identity(&headers));
        headers.append("x-api-key", http::HeaderValue::from_static("b"));
        assert!(has_duplicate_identity(&headers));
    }
}
