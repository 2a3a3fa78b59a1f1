//! Fuzzes the API Gateway event builder (REST v1, HTTP API 2.0 and 1.0)
//! with arbitrary request parts: `method \n path \n query \n headers (name:
//! value; …) \n body`. Every event is valid JSON with a string (or null,
//! or for 2.0 absent when the request has none) `body`, and a base64 body
//! decodes.
#![no_main]

#[path = "gateway_common.rs"]
mod common;

use std::sync::OnceLock;

use base64::Engine as _;
use esb_gateway::fuzzing::FuzzRouter;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;

fn router() -> &'static FuzzRouter {
    static ROUTER: OnceLock<FuzzRouter> = OnceLock::new();
    ROUTER.get_or_init(|| FuzzRouter::new(&common::default_config()).expect("routes"))
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(5, |b| *b == b'\n');
    let method = parts.next().unwrap_or(b"GET");
    let path = String::from_utf8_lossy(parts.next().unwrap_or(b"/"));
    let query = String::from_utf8_lossy(parts.next().unwrap_or(b""));
    let header_bytes = parts.next().unwrap_or(b"");
    let body = parts.next().unwrap_or(b"");
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for pair in header_bytes.split(|b| *b == b';') {
        let Some(colon) = pair.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&pair[..colon]),
            HeaderValue::from_bytes(&pair[colon + 1..]),
        ) {
            headers.append(name, value);
        }
    }
    let http2 = data.len() % 2 == 0;
    let Some(event) = router().event(
        &method, &path, &query, &headers, body, "127.0.0.1", "localhost", http2,
    ) else {
        return;
    };
    let event = event.expect("an event always serializes");
    let value: serde_json::Value =
        serde_json::from_slice(&event).expect("the event is valid JSON");
    // Payload 2.0 leaves `body` out when there is none.
    let body_field = value.get("body").cloned().unwrap_or(serde_json::Value::Null);
    assert!(body_field.is_string() || body_field.is_null());
    if body_field.is_null() {
        assert!(body.is_empty(), "a body never goes missing");
    }
    if value.get("isBase64Encoded") == Some(&serde_json::Value::Bool(true)) {
        let text = body_field.as_str().unwrap_or("");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("a base64 body decodes");
        assert_eq!(decoded, body, "the body round-trips");
    }
});
