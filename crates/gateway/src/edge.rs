//! The checks every request passes first, whatever it is for (own
//! endpoint, Invoke API, route), and the removal of hop-by-hop headers
//! before anything reads them (robustness H1, H4, H7, H8, H14):
//!
//! | case | answer |
//! |---|---|
//! | `CONNECT`, `TRACE`, `*` or absolute-form target (H14) | no route |
//! | `Transfer-Encoding` other than one plain `chunked`, with `Content-Length`, two `Content-Length` (H8, H7) | 400, connection closed |
//! | two `Host`, `Authorization` or `x-api-key` (H7) | 400, connection closed |
//! | more than `max_headers` headers (H1) | 431, connection closed |
//! | request line over `max_head_bytes` (H1) | 414, connection closed |
//! | request line plus headers over `max_head_bytes` (H1) | 431, connection closed |
//! | query not UTF-8 after percent-decoding (H4) | 400, connection closed |
//!
//! Sizes count as HTTP/1.1 would send them (`name: value\r\n`), also for
//! HTTP/2. Heads past twice the limit never get here: hyper (HTTP/1.1
//! read buffer) and h2 (`SETTINGS_MAX_HEADER_LIST_SIZE`) answer 431
//! themselves. Raw framing facts hyper hides (a repeated identical
//! `Content-Length`, `Content-Length` next to `Transfer-Encoding`) come
//! from `esb_net::HeadFacts`.

use http::header::{
    CONNECTION, CONTENT_LENGTH, HeaderName, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, Version};

use crate::config::GatewaySettings;
use crate::error::Rejection;
use crate::limits::has_duplicate_identity;
use crate::query;
use crate::response::Body;

/// Why a request is refused before anything else looks at it.
pub(crate) fn check(parts: &Parts, settings: &GatewaySettings) -> Result<(), Rejection> {
    // H14: no route for proxy-style or diagnostic requests.
    let absolute_form = parts.version < Version::HTTP_2
        && (parts.uri.scheme().is_some() || parts.uri.authority().is_some());
    if parts.method == Method::CONNECT
        || parts.method == Method::TRACE
        || absolute_form
        || !parts.uri.path().starts_with('/')
    {
        return Err(Rejection::NoRoute);
    }
    let headers = &parts.headers;
    if ambiguous_framing(parts) {
        tracing::info!("ambiguous request framing (Transfer-Encoding / Content-Length)");
        return Err(Rejection::BadRequest);
    }
    if has_duplicate_identity(headers) {
        tracing::info!("duplicate Host, Authorization or x-api-key header");
        return Err(Rejection::BadRequest);
    }
    if headers.len() > settings.max_headers {
        tracing::info!(count = headers.len(), "too many request headers");
        return Err(Rejection::HeadersTooLarge);
    }
    let target = parts.uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    // `METHOD target HTTP/1.1\r\n`
    let line = parts.method.as_str().len() + 1 + target + 11;
    if line > settings.max_head_bytes {
        tracing::info!(bytes = line, "request line too long");
        return Err(Rejection::UriTooLong);
    }
    let head = headers.iter().fold(line + 2, |sum, (name, value)| {
        sum + name.as_str().len() + value.len() + 4
    });
    if head > settings.max_head_bytes {
        tracing::info!(bytes = head, "request head too large");
        return Err(Rejection::HeadersTooLarge);
    }
    if let Some(q) = parts.uri.query()
        && !query::is_utf8(q)
    {
        tracing::info!("query string is not UTF-8 after percent-decoding");
        return Err(Rejection::BadRequest);
    }
    Ok(())
}

/// H8: `Transfer-Encoding` must be one plain `chunked` and alone; at most
/// one `Content-Length`.
fn ambiguous_framing(parts: &Parts) -> bool {
    let headers = &parts.headers;
    let mut te = headers.get_all(TRANSFER_ENCODING).iter();
    let te_present = match te.next() {
        None => false,
        Some(first) => {
            if te.next().is_some()
                || !first
                    .as_bytes()
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"chunked")
            {
                return true;
            }
            true
        }
    };
    let mut cl = headers.get_all(CONTENT_LENGTH).iter();
    let cl_present = cl.next().is_some();
    if cl.next().is_some() || (te_present && cl_present) {
        return true;
    }
    parts
        .extensions
        .get::<esb_net::HeadFacts>()
        .is_some_and(|f| {
            f.content_length_lines > 1
                || f.transfer_encoding_lines > 1
                || (f.content_length_lines > 0 && f.transfer_encoding_lines > 0)
        })
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and the
/// names it lists, `Keep-Alive`, `TE`, `Trailer`, `Upgrade`,
/// `Transfer-Encoding` and every `Proxy-*`, so no function, authorizer or
/// signature check ever sees them.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [CONNECTION, TE, TRAILER, UPGRADE, TRANSFER_ENCODING] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        headers.remove(PROXY_AUTHORIZATION);
        headers.remove(PROXY_AUTHENTICATE);
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
}

/// Marks an answer to a refused request: over HTTP/1.1 the connection is
/// closed after it, so nothing pipelined behind it runs.
pub(crate) fn close(mut response: Response<Body>, version: Version) -> Response<Body> {
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::request::Builder) -> Parts {
        req.body(()).unwrap().into_parts().0
    }

    fn get(uri: &str) -> http::request::Builder {
        http::Request::get(uri)
    }

    #[test]
    fn framing_and_duplicates() {
        let s = GatewaySettings::default();
        let ok = parts(get("/a").header("transfer-encoding", "Chunked"));
        assert_eq!(check(&ok, &s), Ok(()));
        for req in [
            get("/a").header("transfer-encoding", "gzip, chunked"),
            get("/a").header("transfer-encoding", "chunked, chunked"),
            get("/a")
                .header("transfer-encoding", "chunked")
                .header("transfer-encoding", "chunked"),
            get("/a")
                .header("transfer-encoding", "chunked")
                .header("content-length", "3"),
            get("/a")
                .header("content-length", "3")
                .header("content-length", "3"),
            get("/a").header("host", "a").header("host", "b"),
            get("/a").header("x-api-key", "a").header("x-api-key", "a"),
        ] {
            let p = parts(req);
            assert_eq!(check(&p, &s), Err(Rejection::BadRequest), "{:?}", p.headers);
        }
        let mut p = parts(get("/a").header("transfer-encoding", "chunked"));
        p.extensions.insert(esb_net::HeadFacts {
            content_length_lines: 1,
            transfer_encoding_lines: 1,
        });
        assert_eq!(check(&p, &s), Err(Rejection::BadRequest));
    }

    #[test]
    fn sizes_and_forms() {
        let s = GatewaySettings::default();
        let long = format!("/{}", "a".repeat(11 * 1024));
        assert_eq!(check(&parts(get(&long)), &s), Err(Rejection::UriTooLong));
        let big = "b".repeat(11 * 1024);
        assert_eq!(
            check(&parts(get("/a").header("x-big", big.as_str())), &s),
            Err(Rejection::HeadersTooLarge)
        );
        let mut many = get("/a");
        for i in 0..101 {
            many = many.header(format!("x-h{i}"), "1");
        }
        assert_eq!(check(&parts(many), &s), Err(Rejection::HeadersTooLarge));
        assert_eq!(
            check(&parts(get("/a?x=%FF")), &s),
            Err(Rejection::BadRequest)
        );
        assert_eq!(check(&parts(get("/a?x=%C3%A9+b")), &s), Ok(()));
        for req in [
            http::Request::builder().method("TRACE").uri("/a"),
            get("http://example.com/a"),
            http::Request::builder().method("OPTIONS").uri("*"),
        ] {
            assert_eq!(check(&parts(req), &s), Err(Rejection::NoRoute));
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut p = parts(
            get("/a")
                .header("connection", "keep-alive, X-Secret")
                .header("x-secret", "1")
                .header("keep-alive", "timeout=5")
                .header("te", "trailers")
                .header("trailer", "x")
                .header("upgrade", "websocket")
                .header("proxy-authorization", "Basic x")
                .header("proxy-foo", "1")
                .header("x-kept", "1"),
        );
        strip_hop_by_hop(&mut p.headers);
        let names: Vec<&str> = p.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }
}
