//! CORS from an API's `Cors` / `CorsConfiguration`.
//!
//! REST (SAM `Cors`): SAM adds a mock `OPTIONS` method answering with the
//! configured header values; ESB answers `OPTIONS` the same way and, like
//! `sam local start-api`, adds `Access-Control-Allow-Origin` to function
//! responses that set none. HTTP API: the gateway answers preflight itself
//! and sets the CORS headers of every response whose `Origin` is allowed,
//! overriding the function's.

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

use crate::config::{ApiKind, CorsConfig};
use crate::response::Body;

const ALL_METHODS: &str = "DELETE,GET,HEAD,OPTIONS,PATCH,POST,PUT";

/// Whether a request is a CORS preflight for `kind`: REST answers every
/// `OPTIONS` (SAM's mock method); HTTP API only real preflights.
pub(crate) fn is_preflight(kind: ApiKind, method: &Method, headers: &HeaderMap) -> bool {
    *method == Method::OPTIONS
        && (kind == ApiKind::Rest
            || (headers.contains_key(ORIGIN)
                && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)))
}

fn value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

fn joined(items: &[String]) -> String {
    items.join(",")
}

/// Whether `origin` is allowed by `patterns` (`*`, exact, or
/// `scheme://*.domain`).
pub(crate) fn origin_allowed(origin: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| {
        if p == "*" || p.eq_ignore_ascii_case(origin) {
            return true;
        }
        match p.split_once("://*.") {
            Some((scheme, domain)) => origin
                .strip_prefix(scheme)
                .and_then(|rest| rest.strip_prefix("://"))
                .is_some_and(|host| {
                    host.len() > domain.len()
                        && host
                            .to_ascii_lowercase()
                            .ends_with(&format!(".{}", domain.to_ascii_lowercase()))
                }),
            None => false,
        }
    })
}

/// The `Access-Control-Allow-Origin` value for an HTTP API request, or
/// `None` when the origin is not allowed.
fn http_allow_origin(cors: &CorsConfig, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(ORIGIN)?.to_str().ok()?;
    if !origin_allowed(origin, &cors.allow_origins) {
        return None;
    }
    // `*` cannot be combined with credentials; echo the origin then.
    if cors.allow_origins.iter().any(|o| o == "*") && !cors.allow_credentials {
        Some(HeaderValue::from_static("*"))
    } else {
        value(origin)
    }
}

/// The gateway's answer to a preflight.
pub(crate) fn preflight(kind: ApiKind, cors: &CorsConfig, request: &HeaderMap) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    match kind {
        ApiKind::Rest => {
            *response.status_mut() = StatusCode::OK;
            let out = response.headers_mut();
            if let Some(v) =
                value(&joined(&cors.allow_origins)).filter(|_| !cors.allow_origins.is_empty())
            {
                out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, v);
            }
            let methods = if cors.allow_methods.is_empty() {
                ALL_METHODS.to_string()
            } else {
                joined(&cors.allow_methods)
            };
            if let Some(v) = value(&methods) {
                out.insert(ACCESS_CONTROL_ALLOW_METHODS, v);
            }
            if !cors.allow_headers.is_empty()
                && let Some(v) = value(&joined(&cors.allow_headers))
            {
                out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
            add_common(out, cors);
        }
        ApiKind::Http | ApiKind::FunctionUrl => {
            *response.status_mut() = StatusCode::NO_CONTENT;
            let Some(origin) = http_allow_origin(cors, request) else {
                return response;
            };
            let out = response.headers_mut();
            out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            out.insert(VARY, HeaderValue::from_static("Origin"));
            let methods =
                if cors.allow_methods.is_empty() || cors.allow_methods.iter().any(|m| m == "*") {
                    ALL_METHODS.to_string()
                } else {
                    joined(&cors.allow_methods)
                };
            if let Some(v) = value(&methods) {
                out.insert(ACCESS_CONTROL_ALLOW_METHODS, v);
            }
            // `*` allows whatever the browser asks for.
            let allow_headers = if cors.allow_headers.iter().any(|h| h == "*") {
                request.get(ACCESS_CONTROL_REQUEST_HEADERS).cloned()
            } else if cors.allow_headers.is_empty() {
                None
            } else {
                value(&joined(&cors.allow_headers))
            };
            if let Some(v) = allow_headers {
                out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
            add_common(out, cors);
        }
    }
    response
}

fn add_common(out: &mut HeaderMap, cors: &CorsConfig) {
    if let Some(max_age) = cors.max_age {
        out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(max_age));
    }
    if cors.allow_credentials {
        out.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// Adds CORS headers to a function's response.
pub(crate) fn apply(kind: ApiKind, cors: &CorsConfig, request: &HeaderMap, out: &mut HeaderMap) {
    match kind {
        ApiKind::Rest => {
            if !out.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN)
                && !cors.allow_origins.is_empty()
                && let Some(v) = value(&joined(&cors.allow_origins))
            {
                out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, v);
                if cors.allow_credentials {
                    out.insert(
                        ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    );
                }
            }
        }
        ApiKind::Http | ApiKind::FunctionUrl => {
            let Some(origin) = http_allow_origin(cors, request) else {
                return;
            };
            out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            out.append(VARY, HeaderValue::from_static("Origin"));
            if !cors.expose_headers.is_empty()
                && let Some(v) = value(&joined(&cors.expose_headers))
            {
                out.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v);
            }
            if cors.allow_credentials {
                out.insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            } else {
                out.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> CorsConfig {
        CorsConfig {
            allow_origins: vec![
                "https://app.example.com".into(),
                "https://*.test.dev".into(),
            ],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["content-type".into(), "x-api-key".into()],
            expose_headers: vec!["x-id".into()],
            max_age: Some(600),
            allow_credentials: true,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn origin_patterns() {
        let p = cors().allow_origins;
        assert!(origin_allowed("https://app.example.com", &p));
        assert!(origin_allowed("https://a.test.dev", &p));
        assert!(!origin_allowed("https://test.dev", &p));
        assert!(!origin_allowed("http://a.test.dev", &p));
        assert!(!origin_allowed("https://evil.com", &p));
        assert!(origin_allowed("https://x", &["*".to_string()]));
    }

    #[test]
    fn http_preflight_allowed_and_refused() {
        let req = headers(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
        ]);
        assert!(is_preflight(ApiKind::Http, &Method::OPTIONS, &req));
        let r = preflight(ApiKind::Http, &cors(), &req);
        assert_eq!(r.status(), 204);
        let h = r.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET,POST");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "content-type,x-api-key");
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");

        let bad = headers(&[
            ("origin", "https://evil.com"),
            ("access-control-request-method", "POST"),
        ]);
        let r = preflight(ApiKind::Http, &cors(), &bad);
        assert_eq!(r.status(), 204);
        assert!(!r.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(!is_preflight(
            ApiKind::Http,
            &Method::OPTIONS,
            &headers(&[])
        ));
    }

    #[test]
    fn http_response_headers_override_function() {
        let req = headers(&[("origin", "https://a.test.dev")]);
        let mut out = headers(&[("access-control-allow-origin", "https://other")]);
        apply(ApiKind::Http, &cors(), &req, &mut out);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.test.dev");
        assert_eq!(out[ACCESS_CONTROL_EXPOSE_HEADERS], "x-id");
        let mut wildcard = cors();
        wildcard.allow_origins = vec!["*".into()];
        wildcard.allow_credentials = false;
        let mut out = HeaderMap::new();
        apply(ApiKind::Http, &wildcard, &req, &mut out);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }

    #[test]
    fn rest_uses_configured_values() {
        let mut c = cors();
        c.allow_origins = vec!["*".into()];
        let r = preflight(ApiKind::Rest, &c, &HeaderMap::new());
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_METHODS], "GET,POST");
        let mut out = headers(&[("access-control-allow-origin", "https://mine")]);
        apply(ApiKind::Rest, &c, &HeaderMap::new(), &mut out);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_ORIGIN], "https://mine");
        let mut out = HeaderMap::new();
        apply(ApiKind::Rest, &c, &HeaderMap::new(), &mut out);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
