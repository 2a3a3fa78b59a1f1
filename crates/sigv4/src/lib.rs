//! AWS Signature Version 4 verification of incoming requests.
//!
//! Owns: the canonical request, string to sign and signing key exactly as
//! the AWS documentation defines them (header form `Authorization:
//! AWS4-HMAC-SHA256 ...` and presigned query form `X-Amz-Signature=...`),
//! the clock-skew window (±15 minutes), presigned expiry, and a
//! constant-time comparison of the signature. It also has a [`sign`]
//! helper, so clients and tests inside ESB produce what it verifies.
//!
//! Must not: do I/O, know where secrets live (the caller passes a lookup
//! closure), or decide what a caller may do once authenticated (the caller
//! checks [`Verified::service`], region and access key id).
//!
//! # Use
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use esb_sigv4::{verify, sign, Payload, SigningParams};
//!
//! let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
//! let body = br#"{"TableName":"t"}"#;
//! let mut headers = http::HeaderMap::new();
//! headers.insert("host", "127.0.0.1:8001".parse().unwrap());
//! headers.insert("x-amz-target", "DynamoDB_20120810.GetItem".parse().unwrap());
//! // What a client (boto3, the AWS SDKs) does:
//! let params = SigningParams {
//!     access_key_id: "AKIDEXAMPLE", secret_access_key: "secret",
//!     region: "us-east-1", service: "dynamodb", time: now,
//! };
//! sign("POST", "/", "", &mut headers, Payload::Body(body), &params).unwrap();
//! // What a server does:
//! let verified = verify("POST", "/", "", &headers, Payload::Body(body),
//!     |akid| (akid == "AKIDEXAMPLE").then(|| "secret".to_string()), now).unwrap();
//! assert_eq!(verified.access_key_id, "AKIDEXAMPLE");
//! verified.require_service("dynamodb").unwrap();
//! ```
//!
//! * `method`: the HTTP method as received (`"POST"`).
//! * `path`: the request path exactly as on the wire, still percent-encoded,
//!   without the query (`"/2015-03-31/functions/my-fn/invocations"`).
//!   For every service except S3 the path is normalised and encoded a
//!   second time, as the SDKs do ([`verify`]); S3 callers use
//!   [`verify_with`] and [`Options::s3`].
//! * `query`: the raw query string without `?` (`""` when none).
//! * `headers`: all request headers. Behind HTTP/2 the caller must insert
//!   `host` from the `:authority` first.
//! * `payload`: [`Payload::Body`] (the hash is computed here) or
//!   [`Payload::Sha256`] (hex SHA-256 the caller computed).
//! * `lookup_secret`: access key id → secret access key, `None` if unknown.
//! * `now`: the server's clock.
#![forbid(unsafe_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The only algorithm SigV4 defines (SigV4A is not supported).
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far the request's time may be from ours, either way.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// Longest lifetime of a presigned URL AWS allows (7 days).
pub const MAX_PRESIGN_EXPIRES: u64 = 604_800;
/// Payload hash of presigned URLs and S3 requests that do not sign the body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Why a request was not accepted. Map by variant, never by message; the
/// messages are safe to show a client (they never contain secrets or the
/// expected signature).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// Neither an `Authorization` header nor `X-Amz-Signature` in the query.
    #[error("request is not signed")]
    Missing,
    /// The signature material is present but malformed.
    #[error("malformed signature: {0}")]
    Malformed(&'static str),
    /// An algorithm other than `AWS4-HMAC-SHA256`.
    #[error("unsupported signature algorithm")]
    UnsupportedAlgorithm,
    /// The request time is more than [`MAX_SKEW`] away from ours.
    #[error("request time too skewed")]
    RequestTimeTooSkewed,
    /// A presigned URL past its `X-Amz-Expires`.
    #[error("signature expired")]
    Expired,
    /// `lookup_secret` knows no such access key id.
    #[error("unknown access key id")]
    UnknownAccessKey,
    /// The body's SHA-256 differs from the signed `x-amz-content-sha256`.
    #[error("payload hash does not match the body")]
    PayloadHashMismatch,
    /// The signature is wrong.
    #[error("signature does not match")]
    SignatureDoesNotMatch,
    /// Signed for another service than the caller serves.
    #[error("signature is for another service")]
    WrongService,
}

/// What a verified request proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The access key id that signed the request.
    pub access_key_id: String,
    /// Region of the credential scope (`us-east-1`).
    pub region: String,
    /// Service of the credential scope (`lambda`, `dynamodb`, `s3`).
    pub service: String,
    /// Lower-case names of the headers covered by the signature.
    pub signed_headers: Vec<String>,
    /// Whether the signature came from the query string (presigned URL).
    pub presigned: bool,
}

impl Verified {
    /// Fails with [`SigV4Error::WrongService`] unless the credential scope
    /// names `service`.
    pub fn require_service(&self, service: &str) -> Result<(), SigV4Error> {
        if self.service == service {
            Ok(())
        } else {
            Err(SigV4Error::WrongService)
        }
    }
}

/// The request body, or its hash.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// The whole body; its SHA-256 is computed here.
    Body(&'a [u8]),
    /// Lower-case hex SHA-256 of the body, computed by the caller.
    Sha256(&'a str),
}

impl Payload<'_> {
    fn hash_hex(&self) -> String {
        match self {
            Payload::Body(b) => hex::encode(Sha256::digest(b)),
            Payload::Sha256(h) => h.to_ascii_lowercase(),
        }
    }
}

/// Knobs that differ between services.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Normalise the path (dot segments, empty segments) and URI-encode it
    /// once more, as the SDKs do for every service but S3.
    pub normalize_path: bool,
    /// Accept `x-amz-content-sha256: UNSIGNED-PAYLOAD` in the header form
    /// (S3 only; elsewhere the body must be covered by the signature).
    pub allow_unsigned_payload: bool,
    /// The allowed clock skew.
    pub max_skew: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            normalize_path: true,
            allow_unsigned_payload: false,
            max_skew: MAX_SKEW,
        }
    }
}

impl Options {
    /// S3's rules: the path is signed as sent, unsigned payloads allowed.
    pub fn s3() -> Self {
        Self {
            normalize_path: false,
            allow_unsigned_payload: true,
            max_skew: MAX_SKEW,
        }
    }
}

/// Verifies a SigV4-signed request with the default [`Options`] (every
/// service but S3: DynamoDB, Lambda, STS...). See the crate docs for the
/// arguments.
pub fn verify<F>(
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    payload: Payload<'_>,
    lookup_secret: F,
    now: SystemTime,
) -> Result<Verified, SigV4Error>
where
    F: Fn(&str) -> Option<String>,
{
    verify_with(
        method,
        path,
        query,
        headers,
        payload,
        lookup_secret,
        now,
        Options::default(),
    )
}

/// [`verify`] with explicit [`Options`].
#[allow(clippy::too_many_arguments)]
pub fn verify_with<F>(
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    payload: Payload<'_>,
    lookup_secret: F,
    now: SystemTime,
    opts: Options,
) -> Result<Verified, SigV4Error>
where
    F: Fn(&str) -> Option<String>,
{
    let pairs = parse_query(query)?;
    let auth_headers: Vec<_> = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .collect();
    let presigned = pairs.iter().any(|(k, _)| k == "X-Amz-Signature");
    if auth_headers.len() > 1 {
        return Err(SigV4Error::Malformed("more than one authorization header"));
    }
    let parsed = match (auth_headers.first(), presigned) {
        (Some(_), true) => {
            return Err(SigV4Error::Malformed(
                "both an authorization header and a query signature",
            ));
        }
        (Some(value), false) => {
            let value = value
                .to_str()
                .map_err(|_| SigV4Error::Malformed("authorization header is not ascii"))?;
            parse_authorization(value, headers)?
        }
        (None, true) => parse_presigned(&pairs)?,
        (None, false) => return Err(SigV4Error::Missing),
    };

    // Time window first: cheap, and it needs no secret.
    let request_time = parse_amz_date(&parsed.amz_date)?;
    if parsed.scope.date != parsed.amz_date[..8] {
        return Err(SigV4Error::Malformed(
            "credential date differs from request date",
        ));
    }
    let skew = match now.duration_since(request_time) {
        Ok(past) => past,
        Err(e) => e.duration(),
    };
    match parsed.expires {
        None if skew > opts.max_skew => return Err(SigV4Error::RequestTimeTooSkewed),
        None => {}
        Some(expires) => {
            if request_time > now + opts.max_skew {
                return Err(SigV4Error::RequestTimeTooSkewed);
            }
            if now > request_time + Duration::from_secs(expires) {
                return Err(SigV4Error::Expired);
            }
        }
    }

    // Every signed header must be present, and host must be signed: the
    // signature would otherwise be replayable against another endpoint.
    if !parsed.signed_headers.iter().any(|h| h == "host") {
        return Err(SigV4Error::Malformed("host is not a signed header"));
    }
    let payload_hash = if parsed.expires.is_some() {
        // botocore's query signer hashes the body like the header form; S3
        // presigned URLs sign the constant UNSIGNED-PAYLOAD instead.
        match header_str(headers, "x-amz-content-sha256")? {
            Some(h) => h.to_string(),
            None if opts.allow_unsigned_payload => UNSIGNED_PAYLOAD.to_string(),
            None => payload.hash_hex(),
        }
    } else {
        let actual = payload.hash_hex();
        match header_str(headers, "x-amz-content-sha256")? {
            None => actual,
            Some(claimed) if claimed == UNSIGNED_PAYLOAD || claimed.starts_with("STREAMING-") => {
                if !opts.allow_unsigned_payload {
                    return Err(SigV4Error::PayloadHashMismatch);
                }
                claimed.to_string()
            }
            Some(claimed) => {
                if !claimed.eq_ignore_ascii_case(&actual) {
                    return Err(SigV4Error::PayloadHashMismatch);
                }
                claimed.to_string()
            }
        }
    };

    let canonical_headers = canonical_headers(headers, &parsed.signed_headers)?;
    let canonical_query = canonical_query(&pairs, parsed.expires.is_some());
    let canonical_uri = canonical_uri(path, opts.normalize_path)?;
    let creq = canonical_request(
        method,
        &canonical_uri,
        &canonical_query,
        &canonical_headers,
        &parsed.signed_headers.join(";"),
        &payload_hash,
    );
    let secret = lookup_secret(&parsed.scope.access_key_id).ok_or(SigV4Error::UnknownAccessKey)?;
    let expected = signature(&secret, &parsed.amz_date, &parsed.scope, &creq);
    let given = parsed.signature.to_ascii_lowercase();
    if expected.as_bytes().ct_eq(given.as_bytes()).into() {
        Ok(Verified {
            access_key_id: parsed.scope.access_key_id,
            region: parsed.scope.region,
            service: parsed.scope.service,
            signed_headers: parsed.signed_headers,
            presigned: parsed.expires.is_some(),
        })
    } else {
        Err(SigV4Error::SignatureDoesNotMatch)
    }
}

/// Credentials and scope for [`sign`].
#[derive(Debug, Clone, Copy)]
pub struct SigningParams<'a> {
    /// Access key id.
    pub access_key_id: &'a str,
    /// Secret access key.
    pub secret_access_key: &'a str,
    /// Region of the scope.
    pub region: &'a str,
    /// Service of the scope.
    pub service: &'a str,
    /// Signing time.
    pub time: SystemTime,
}

/// Signs a request in place the way the AWS SDKs do for non-S3 services:
/// adds `x-amz-date` and `authorization`, signing every header present
/// (which must include `host`).
pub fn sign(
    method: &str,
    path: &str,
    query: &str,
    headers: &mut HeaderMap,
    payload: Payload<'_>,
    params: &SigningParams<'_>,
) -> Result<(), SigV4Error> {
    let amz_date = format_amz_date(params.time);
    headers.insert(
        "x-amz-date",
        http::HeaderValue::from_str(&amz_date).map_err(|_| SigV4Error::Malformed("date"))?,
    );
    headers.remove(http::header::AUTHORIZATION);
    let mut names: Vec<String> = headers.keys().map(|k| k.as_str().to_string()).collect();
    names.sort();
    names.dedup();
    let scope = Scope {
        access_key_id: params.access_key_id.to_string(),
        date: amz_date[..8].to_string(),
        region: params.region.to_string(),
        service: params.service.to_string(),
    };
    let pairs = parse_query(query)?;
    let creq = canonical_request(
        method,
        &canonical_uri(path, true)?,
        &canonical_query(&pairs, false),
        &canonical_headers(headers, &names)?,
        &names.join(";"),
        &payload.hash_hex(),
    );
    let sig = signature(params.secret_access_key, &amz_date, &scope, &creq);
    let value = format!(
        "{ALGORITHM} Credential={}/{}, SignedHeaders={}, Signature={sig}",
        params.access_key_id,
        scope.string(),
        names.join(";")
    );
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&value).map_err(|_| SigV4Error::Malformed("credential"))?,
    );
    Ok(())
}

struct Scope {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
}

impl Scope {
    /// `date/region/service/aws4_request`, without the access key id.
    fn string(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }

    fn parse(credential: &str) -> Result<Self, SigV4Error> {
        // The access key id itself never contains '/', so split from the
        // right: AKID/date/region/service/aws4_request.
        let mut parts = credential.rsplitn(5, '/');
        let terminator = parts.next();
        let service = parts.next();
        let region = parts.next();
        let date = parts.next();
        let akid = parts.next();
        match (akid, date, region, service, terminator) {
            (Some(a), Some(d), Some(r), Some(s), Some("aws4_request"))
                if !a.is_empty()
                    && d.len() == 8
                    && d.bytes().all(|b| b.is_ascii_digit())
                    && !r.is_empty()
                    && !s.is_empty() =>
            {
                Ok(Scope {
                    access_key_id: a.to_string(),
                    date: d.to_string(),
                    region: r.to_string(),
                    service: s.to_string(),
                })
            }
            _ => Err(SigV4Error::Malformed("credential scope")),
        }
    }
}

struct Parsed {
    scope: Scope,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
    /// `Some` for presigned URLs.
    expires: Option<u64>,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, SigV4Error> {
    let mut all = headers.get_all(name).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(SigV4Error::Malformed("repeated signing header"));
    }
    first
        .to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| SigV4Error::Malformed("header is not ascii"))
}

fn parse_signed_headers(list: &str) -> Result<Vec<String>, SigV4Error> {
    let names: Vec<String> = list.split(';').map(str::to_string).collect();
    let valid = names.iter().all(|n| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
    });
    // The list must be sorted and free of repeats, as the spec requires;
    // this also makes the canonical form unique.
    let sorted = names.windows(2).all(|w| w[0] < w[1]);
    if names.len() > 100 || !valid || !sorted {
        return Err(SigV4Error::Malformed("signed headers"));
    }
    Ok(names)
}

fn parse_authorization(value: &str, headers: &HeaderMap) -> Result<Parsed, SigV4Error> {
    let value = value.trim();
    let (algorithm, rest) = value
        .split_once(' ')
        .ok_or(SigV4Error::Malformed("authorization header"))?;
    if algorithm != ALGORITHM {
        return Err(SigV4Error::UnsupportedAlgorithm);
    }
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SigV4Error::Malformed("authorization header"))?;
        let slot = match k {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => return Err(SigV4Error::Malformed("authorization header")),
        };
        if slot.replace(v).is_some() {
            return Err(SigV4Error::Malformed("authorization header"));
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(SigV4Error::Malformed("authorization header"));
    };
    check_signature_hex(signature)?;
    let amz_date = header_str(headers, "x-amz-date")?
        .ok_or(SigV4Error::Malformed("missing x-amz-date"))?
        .to_string();
    Ok(Parsed {
        scope: Scope::parse(credential)?,
        signed_headers: parse_signed_headers(signed)?,
        signature: signature.to_string(),
        amz_date,
        expires: None,
    })
}

fn parse_presigned(pairs: &[(String, String)]) -> Result<Parsed, SigV4Error> {
    let get = |name: &str| -> Result<&str, SigV4Error> {
        let mut it = pairs.iter().filter(|(k, _)| k == name);
        match (it.next(), it.next()) {
            (Some((_, v)), None) => Ok(v.as_str()),
            _ => Err(SigV4Error::Malformed("presigned query parameters")),
        }
    };
    if get("X-Amz-Algorithm")? != ALGORITHM {
        return Err(SigV4Error::UnsupportedAlgorithm);
    }
    let signature = get("X-Amz-Signature")?;
    check_signature_hex(signature)?;
    let expires: u64 = get("X-Amz-Expires")?
        .parse()
        .map_err(|_| SigV4Error::Malformed("x-amz-expires"))?;
    if expires > MAX_PRESIGN_EXPIRES {
        return Err(SigV4Error::Malformed("x-amz-expires"));
    }
    Ok(Parsed {
        scope: Scope::parse(get("X-Amz-Credential")?)?,
        signed_headers: parse_signed_headers(get("X-Amz-SignedHeaders")?)?,
        signature: signature.to_string(),
        amz_date: get("X-Amz-Date")?.to_string(),
        expires: Some(expires),
    })
}

fn check_signature_hex(sig: &str) -> Result<(), SigV4Error> {
    if sig.len() == 64 && sig.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(SigV4Error::Malformed("signature"))
    }
}

/// Splits a raw query string into percent-decoded pairs, in order.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, SigV4Error> {
    if query.len() > 16 * 1024 {
        return Err(SigV4Error::Malformed("query too long"));
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(s: &str) -> Result<String, SigV4Error> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| SigV4Error::Malformed("query is not utf-8"))
}

/// AWS's URI encoding: everything but `A-Za-z0-9-_.~` as `%XX` (upper case).
const AWS_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, AWS_ENCODE).to_string()
}

fn canonical_query(pairs: &[(String, String)], presigned: bool) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| !(presigned && k == "X-Amz-Signature"))
        .map(|(k, v)| (encode(k), encode(v)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn canonical_uri(path: &str, normalize: bool) -> Result<String, SigV4Error> {
    if path.is_empty() {
        return Ok("/".to_string());
    }
    if !path.starts_with('/') {
        return Err(SigV4Error::Malformed("path"));
    }
    if !normalize {
        return Ok(path.to_string());
    }
    // RFC 3986 dot-segment removal as botocore does it (empty segments are
    // dropped too), then every segment encoded once more: the wire path is
    // already encoded, so `%` becomes `%25`, exactly like the SDKs' signers.
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut uri = String::from("/");
    uri.push_str(
        &out.iter()
            .map(|s| encode_path_segment(s))
            .collect::<Vec<_>>()
            .join("/"),
    );
    if path.ends_with('/') && !out.is_empty() {
        uri.push('/');
    }
    Ok(uri)
}

fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn canonical_headers(headers: &HeaderMap, signed: &[String]) -> Result<String, SigV4Error> {
    let mut out = String::new();
    for name in signed {
        let values: Vec<_> = headers.get_all(name.as_str()).iter().collect();
        if values.is_empty() {
            return Err(SigV4Error::Malformed("a signed header is missing"));
        }
        let mut joined = Vec::with_capacity(values.len());
        for v in values {
            let v = std::str::from_utf8(v.as_bytes())
                .map_err(|_| SigV4Error::Malformed("header is not utf-8"))?;
            // Trim and collapse runs of spaces, as the spec requires.
            joined.push(v.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&joined.join(","));
        out.push('\n');
    }
    Ok(out)
}

fn canonical_request(
    method: &str,
    uri: &str,
    query: &str,
    headers: &str,
    signed: &str,
    payload_hash: &str,
) -> String {
    format!("{method}\n{uri}\n{query}\n{headers}\n{signed}\n{payload_hash}")
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn signature(secret: &str, amz_date: &str, scope: &Scope, creq: &str) -> String {
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{}\n{}",
        scope.string(),
        hex::encode(Sha256::digest(creq.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), scope.date.as_bytes());
    let k_region = hmac(&k_date, scope.region.as_bytes());
    let k_service = hmac(&k_region, scope.service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    hex::encode(hmac(&k_signing, string_to_sign.as_bytes()))
}

/// Parses `YYYYMMDDTHHMMSSZ`.
fn parse_amz_date(s: &str) -> Result<SystemTime, SigV4Error> {
    let b = s.as_bytes();
    let ok = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[9..15].iter().all(u8::is_ascii_digit);
    if !ok {
        return Err(SigV4Error::Malformed("x-amz-date"));
    }
    let num = |r: std::ops::Range<usize>| -> i64 {
        b[r].iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
    };
    let (y, mo, d) = (num(0..4), num(4..6), num(6..8));
    let (h, mi, se) = (num(9..11), num(11..13), num(13..15));
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(SigV4Error::Malformed("x-amz-date"));
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se;
    let secs = u64::try_from(secs).map_err(|_| SigV4Error::Malformed("x-amz-date"))?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y%m%dT%H%M%SZ")
        .to_string()
}

#[cfg(test)]
mod tests;
