//! Response mapping: the function's proxy response (v1 or 2.0) to an HTTP
//! response (the gateway's own answers are `crate::error`).

use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, SET_COOKIE};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value};

/// Response body type of the gateway.
pub type Body = Full<Bytes>;

/// Why a function's answer could not be turned into a response. Logged;
/// the client only sees API Gateway's generic error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MalformedResponse {
    /// Not JSON at all.
    #[error("malformed Lambda proxy response: not JSON")]
    NotJson,
    /// JSON, but not an object where one is required.
    #[error("malformed Lambda proxy response: not a JSON object")]
    NotObject,
    /// REST: a key other than the allowed ones.
    #[error("malformed Lambda proxy response: unexpected key {0:?}")]
    UnexpectedKey(String),
    /// `statusCode` is not a number in 200..=599.
    #[error("malformed Lambda proxy response: invalid statusCode")]
    BadStatus,
    /// HTTP API payload 1.0 without `statusCode`.
    #[error("malformed Lambda proxy response: missing statusCode")]
    MissingStatus,
    /// `headers`, `multiValueHeaders` or `cookies` have the wrong shape.
    #[error("malformed Lambda proxy response: invalid {0}")]
    BadHeaders(&'static str),
    /// A header name or value that cannot go on the wire (CR, LF, NUL...).
    #[error("malformed Lambda proxy response: header {0:?} is not valid on the wire")]
    InvalidHeader(String),
    /// `body` is not a string.
    #[error("malformed Lambda proxy response: body is not a string")]
    BadBody,
    /// `isBase64Encoded` is set but the body is not base64.
    #[error("malformed Lambda proxy response: body is not valid base64")]
    BadBase64,
}

/// A mapped response before gateway headers are added.
#[derive(Debug)]
pub(crate) struct Mapped {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Mapped {
    pub(crate) fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            // Framing and connection handling are the gateway's: a
            // function's `Content-Length`, `Transfer-Encoding` or
            // `Connection` would desynchronise or hijack the client's
            // connection.
            if !is_hop_by_hop(&name) {
                headers.append(name, value);
            }
        }
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        response
    }
}

/// Response headers the gateway never copies from a function.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "content-length"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn parse_status(value: &Value) -> Result<StatusCode, MalformedResponse> {
    let code = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .ok_or(MalformedResponse::BadStatus)?;
    // 1xx are no final answers: a function cannot switch protocols or
    // send interim responses through API Gateway (robustness H9).
    if !(200..=599).contains(&code) {
        return Err(MalformedResponse::BadStatus);
    }
    u16::try_from(code)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(MalformedResponse::BadStatus)
}

/// Header value text: strings as they are, booleans and numbers rendered.
fn header_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), MalformedResponse> {
    let header_name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| MalformedResponse::InvalidHeader(name.to_string()))?;
    let header_value = HeaderValue::from_str(value)
        .map_err(|_| MalformedResponse::InvalidHeader(name.to_string()))?;
    Ok((header_name, header_value))
}

fn decode_body(text: &str, base64: bool) -> Result<Bytes, MalformedResponse> {
    if base64 {
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map(Bytes::from)
            .map_err(|_| MalformedResponse::BadBase64)
    } else {
        Ok(Bytes::copy_from_slice(text.as_bytes()))
    }
}

fn body_text(obj: &Map<String, Value>) -> Result<&str, MalformedResponse> {
    match obj.get("body") {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(MalformedResponse::BadBody),
    }
}

fn is_base64(obj: &Map<String, Value>) -> bool {
    matches!(obj.get("isBase64Encoded"), Some(Value::Bool(true)))
        || matches!(obj.get("base64Encoded"), Some(Value::Bool(true)))
}

/// v1 headers: every `multiValueHeaders` value, then `headers` values not
/// already sent (same name and value).
fn v1_header_pairs(
    obj: &Map<String, Value>,
    strict: bool,
) -> Result<Vec<(String, String)>, MalformedResponse> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    match obj.get("multiValueHeaders") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, values) in map {
                match values {
                    Value::Array(values) => {
                        for v in values {
                            let text = header_text(v)
                                .ok_or(MalformedResponse::BadHeaders("multiValueHeaders"))?;
                            pairs.push((name.clone(), text));
                        }
                    }
                    Value::Null => {}
                    _ => return Err(MalformedResponse::BadHeaders("multiValueHeaders")),
                }
            }
        }
        Some(_) => return Err(MalformedResponse::BadHeaders("multiValueHeaders")),
    }
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let text = match value {
                    Value::String(_) | Value::Bool(_) => header_text(value),
                    Value::Number(_) if !strict => header_text(value),
                    Value::Null => continue,
                    _ => None,
                }
                .ok_or(MalformedResponse::BadHeaders("headers"))?;
                // The same name/value pair in both maps is sent once.
                let duplicate = pairs
                    .iter()
                    .any(|(n, v)| n.eq_ignore_ascii_case(name) && *v == text);
                if !duplicate {
                    pairs.push((name.clone(), text));
                }
            }
        }
        Some(_) => return Err(MalformedResponse::BadHeaders("headers")),
    }
    Ok(pairs)
}

/// Maps a v1 proxy response. `strict` (REST): only the documented keys are
/// allowed and `statusCode` defaults to 200; otherwise (HTTP API payload
/// 1.0) extra keys are ignored and `statusCode` is required.
/// `decode_base64`: whether an `isBase64Encoded` body is decoded (REST: the
/// request's first `Accept` type is binary; HTTP API: always).
pub(crate) fn map_v1(
    payload: &[u8],
    strict: bool,
    decode_base64: bool,
) -> Result<Mapped, MalformedResponse> {
    let value: Value = serde_json::from_slice(payload).map_err(|_| MalformedResponse::NotJson)?;
    let Value::Object(obj) = value else {
        return Err(MalformedResponse::NotObject);
    };
    if strict
        && let Some(key) = obj.keys().find(|k| {
            !matches!(
                k.as_str(),
                "statusCode"
                    | "headers"
                    | "multiValueHeaders"
                    | "body"
                    | "isBase64Encoded"
                    | "base64Encoded"
            )
        })
    {
        return Err(MalformedResponse::UnexpectedKey(key.clone()));
    }
    let status = match obj.get("statusCode") {
        Some(v) => parse_status(v)?,
        None if strict => StatusCode::OK,
        None => return Err(MalformedResponse::MissingStatus),
    };

    let pairs = v1_header_pairs(&obj, strict)?;
    let headers = pairs
        .iter()
        .map(|(n, v)| header_pair(n, v))
        .collect::<Result<Vec<_>, _>>()?;
    let body = decode_body(body_text(&obj)?, is_base64(&obj) && decode_base64)?;
    Ok(Mapped {
        status,
        headers,
        body,
    })
}

/// Maps an HTTP API payload 2.0 response, with the format's inference for
/// answers that are not a structured response.
pub(crate) fn map_v2(payload: &[u8]) -> Result<Mapped, MalformedResponse> {
    let value: Value = serde_json::from_slice(payload).map_err(|_| MalformedResponse::NotJson)?;
    let obj = match value {
        Value::Object(obj) if obj.contains_key("statusCode") => obj,
        Value::String(s) => return Ok(inferred(Bytes::from(s))),
        // Any other JSON: the function's own serialization is the body.
        _ => return Ok(inferred(Bytes::copy_from_slice(payload.trim_ascii()))),
    };
    let status = parse_status(&obj["statusCode"])?;
    let mut headers = Vec::new();
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                if value.is_null() {
                    continue;
                }
                let text = header_text(value).ok_or(MalformedResponse::BadHeaders("headers"))?;
                headers.push(header_pair(name, &text)?);
            }
        }
        Some(_) => return Err(MalformedResponse::BadHeaders("headers")),
    }
    match obj.get("cookies") {
        None | Some(Value::Null) => {}
        Some(Value::Array(cookies)) => {
            for cookie in cookies {
                let Value::String(cookie) = cookie else {
                    return Err(MalformedResponse::BadHeaders("cookies"));
                };
                let value = HeaderValue::from_str(cookie)
                    .map_err(|_| MalformedResponse::InvalidHeader("set-cookie".to_string()))?;
                headers.push((SET_COOKIE, value));
            }
        }
        Some(_) => return Err(MalformedResponse::BadHeaders("cookies")),
    }
    let body = decode_body(body_text(&obj)?, is_base64(&obj))?;
    Ok(Mapped {
        status,
        headers,
        body,
    })
}

fn inferred(body: Bytes) -> Mapped {
    Mapped {
        status: StatusCode::OK,
        headers: vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(m: &'a Mapped, name: &str) -> Vec<&'a str> {
        m.headers
            .iter()
            .filter(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn v1_full_response() {
        let m = map_v1(
            br#"{"statusCode": 201,
                "headers": {"Content-Type": "application/json", "X-Id": "7", "X-Flag": true, "Set-Cookie": "a=1; Path=/"},
                "multiValueHeaders": {"Set-Cookie": ["a=1; Path=/", "b=2; Path=/"]},
                "body": "{\"ok\":true}", "isBase64Encoded": false}"#,
            true,
            false,
        )
        .unwrap();
        assert_eq!(m.status, 201);
        assert_eq!(header(&m, "x-id"), ["7"]);
        assert_eq!(header(&m, "x-flag"), ["true"]);
        assert_eq!(header(&m, "set-cookie"), ["a=1; Path=/", "b=2; Path=/"]);
        assert_eq!(m.body, r#"{"ok":true}"#);
    }

    #[test]
    fn v1_defaults_and_string_status() {
        let m = map_v1(br#"{}"#, true, false).unwrap();
        assert_eq!(m.status, 200);
        assert!(m.body.is_empty());
        let r = m.into_response();
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        let m = map_v1(br#"{"statusCode": "404"}"#, true, false).unwrap();
        assert_eq!(m.status, 404);
    }

    #[test]
    fn v1_malformed_responses() {
        let cases: [(&[u8], MalformedResponse); 10] = [
            (b"not json", MalformedResponse::NotJson),
            (b"[1]", MalformedResponse::NotObject),
            (br#""hi""#, MalformedResponse::NotObject),
            (
                br#"{"statusCode":200,"extra":1}"#,
                MalformedResponse::UnexpectedKey("extra".into()),
            ),
            (br#"{"statusCode":"abc"}"#, MalformedResponse::BadStatus),
            (br#"{"statusCode":700}"#, MalformedResponse::BadStatus),
            (br#"{"statusCode":101}"#, MalformedResponse::BadStatus),
            (
                br#"{"headers":{"a":{"b":1}}}"#,
                MalformedResponse::BadHeaders("headers"),
            ),
            (
                br#"{"multiValueHeaders":{"a":"b"}}"#,
                MalformedResponse::BadHeaders("multiValueHeaders"),
            ),
            (br#"{"body":{"a":1}}"#, MalformedResponse::BadBody),
        ];
        for (payload, want) in cases {
            assert_eq!(
                map_v1(payload, true, false).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        assert!(matches!(
            map_v1(br#"{"headers":{"x":"a\r\nb"}}"#, true, false).unwrap_err(),
            MalformedResponse::InvalidHeader(_)
        ));
    }

    #[test]
    fn v1_base64_decoded_only_when_allowed() {
        let payload = br#"{"statusCode":200,"body":"AAEC/w==","isBase64Encoded":true}"#;
        assert_eq!(
            map_v1(payload, true, true).unwrap().body,
            &[0u8, 1, 2, 255][..]
        );
        assert_eq!(map_v1(payload, true, false).unwrap().body, "AAEC/w==");
        assert_eq!(
            map_v1(br#"{"body":"!!","isBase64Encoded":true}"#, true, true).unwrap_err(),
            MalformedResponse::BadBase64
        );
    }

    #[test]
    fn http_api_payload_v1_requires_status_and_ignores_extra_keys() {
        assert_eq!(
            map_v1(br#"{"body":"x"}"#, false, true).unwrap_err(),
            MalformedResponse::MissingStatus
        );
        let m = map_v1(
            br#"{"statusCode":200,"other":1,"headers":{"n":5}}"#,
            false,
            true,
        )
        .unwrap();
        assert_eq!(header(&m, "n"), ["5"]);
    }

    #[test]
    fn v2_structured_response() {
        let m = map_v2(
            br#"{"statusCode": 200, "headers": {"content-type": "text/plain", "x-a": "1,2"},
                "cookies": ["session=abc; HttpOnly", "theme=dark"], "body": "hello",
                "isBase64Encoded": false, "ignored": true}"#,
        )
        .unwrap();
        assert_eq!(m.status, 200);
        assert_eq!(header(&m, "content-type"), ["text/plain"]);
        assert_eq!(header(&m, "x-a"), ["1,2"]);
        assert_eq!(
            header(&m, "set-cookie"),
            ["session=abc; HttpOnly", "theme=dark"]
        );
        assert_eq!(m.body, "hello");
        let m = map_v2(br#"{"statusCode": 200, "body": "aGk=", "isBase64Encoded": true}"#).unwrap();
        assert_eq!(m.body, "hi");
    }

    #[test]
    fn v2_inference() {
        let m = map_v2(br#""Hello from Lambda!""#).unwrap();
        assert_eq!(m.status, 200);
        assert_eq!(m.body, "Hello from Lambda!");
        assert_eq!(header(&m, "content-type"), ["application/json"]);
        let m = map_v2(br#"{"message": "Hello from Lambda!"}"#).unwrap();
        assert_eq!(m.body, r#"{"message": "Hello from Lambda!"}"#);
        let m = map_v2(b"42").unwrap();
        assert_eq!(m.body, "42");
        assert_eq!(map_v2(b"nope").unwrap_err(), MalformedResponse::NotJson);
        assert_eq!(
            map_v2(br#"{"statusCode": true}"#).unwrap_err(),
            MalformedResponse::BadStatus
        );
    }
}
