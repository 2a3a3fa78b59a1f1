//! Fuzzes the untrusted-input parsers of auth: JWT decoding and
//! verification, and the SigV4 Authorization header / presigned query.
//! Every input must produce Ok or a typed error, never a panic.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;

fn key() -> &'static esb_auth::SigningKey {
    static KEY: OnceLock<esb_auth::SigningKey> = OnceLock::new();
    KEY.get_or_init(|| esb_auth::SigningKey::generate().expect("key generation"))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // JWT: the whole input as a token, with and without "Bearer ".
    let aud = vec!["esb".to_string()];
    let rules = esb_auth::Rules { issuer: "https://esb.local", audiences: &aud, token_use: &["id"] };
    let keys = std::slice::from_ref(key().public());
    let _ = esb_auth::jwt::verify(esb_auth::jwt::strip_bearer(&text), keys, &rules, 1_700_000_000);
    let _ = esb_auth::jwt::decode_unverified(&text);

    // SigV4: split the input into authorization header / date / query / path.
    let mut fields = text.splitn(4, '\n');
    let auth = fields.next().unwrap_or("");
    let date = fields.next().unwrap_or("");
    let query = fields.next().unwrap_or("");
    let path = fields.next().unwrap_or("/");
    let mut headers = http::HeaderMap::new();
    headers.insert("host", http::HeaderValue::from_static("127.0.0.1"));
    if let Ok(v) = http::HeaderValue::from_str(auth) {
        headers.insert(http::header::AUTHORIZATION, v);
    }
    if let Ok(v) = http::HeaderValue::from_str(date) {
        headers.insert("x-amz-date", v);
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let _ = esb_sigv4::verify(
        "POST",
        path,
        query,
        &headers,
        esb_sigv4::Payload::Body(data),
        |_| Some("secret".to_string()),
        now,
    );
});
