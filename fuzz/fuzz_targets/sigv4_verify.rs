//! Fuzzes the SigV4 verifier with both option sets (S3's and every other
//! service's): the input is split into method, path, query, headers and
//! body; a few inputs are also re-signed so the canonical-request code past
//! the signature check is reached. Every input must give Ok or a typed
//! error, never a panic.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret-fuzz-secret";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.splitn(5, '\n');
    let method = fields.next().unwrap_or("GET");
    let path = fields.next().unwrap_or("/");
    let query = fields.next().unwrap_or("");
    let header_block = fields.next().unwrap_or("");
    let body = fields.next().unwrap_or("").as_bytes();
    let mut headers = http::HeaderMap::new();
    headers.insert("host", http::HeaderValue::from_static("127.0.0.1:9000"));
    for line in header_block.split('\t') {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(n, v);
        }
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let lookup = |_: &str| Some(SECRET.to_string());
    for opts in [
        esb_sigv4::Options::default(),
        esb_sigv4::Options {
            normalize_path: false,
            allow_unsigned_payload: true,
            ..esb_sigv4::Options::default()
        },
    ] {
        let _ = esb_sigv4::verify_with(
            method,
            path,
            query,
            &headers,
            esb_sigv4::Payload::Body(body),
            lookup,
            now,
            opts,
        );
    }
    // Sign what we were given, then verify: must verify or fail cleanly.
    let mut signed = headers.clone();
    let params = esb_sigv4::SigningParams {
        access_key_id: "AKIAFUZZFUZZFUZZFUZZ",
        secret_access_key: SECRET,
        region: "us-east-1",
        service: "s3",
        time: now,
    };
    if esb_sigv4::sign(
        method,
        path,
        query,
        &mut signed,
        esb_sigv4::Payload::Body(body),
        &params,
    )
    .is_ok()
    {
        let _ = esb_sigv4::verify(
            method,
            path,
            query,
            &signed,
            esb_sigv4::Payload::Body(body),
            lookup,
            now,
        );
    }
});
