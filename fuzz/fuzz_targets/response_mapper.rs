//! Fuzzes the mapping of a function's answer to the HTTP response (payload
//! 1.0 strict and lenient, 2.0 with its inference). The first byte picks
//! the format; the rest is the function's answer. Mapping never panics,
//! and a mapped response has a status in 100–599 and no header value with
//! CR, LF or NUL.
#![no_main]

use esb_gateway::fuzzing::map_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((flags, payload)) = data.split_first() else {
        return;
    };
    let v2 = flags & 1 == 1;
    let strict = flags & 2 == 2;
    let decode = flags & 4 == 4;
    if let Ok(response) = map_response(payload, v2, strict, decode) {
        let status = response.status().as_u16();
        assert!((100..=599).contains(&status), "status {status}");
        for value in response.headers().values() {
            assert!(
                !value.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
                "header value with CR/LF/NUL"
            );
        }
    }
});
