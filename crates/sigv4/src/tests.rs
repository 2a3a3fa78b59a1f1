//! Known-answer tests: the public aws-sig-v4-test-suite (credentials
//! AKIDEXAMPLE, service "service", 2015-08-30T12:36:00Z) and vectors
//! recorded from botocore 1.43's own signer (boto3 is what workers and the
//! e2e tests use).

use super::*;

const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const BOTO_SECRET: &str = "esb/secret+KEY";

fn at(amz_date: &str) -> SystemTime {
    parse_amz_date(amz_date).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn suite_lookup(akid: &str) -> Option<String> {
    (akid == "AKIDEXAMPLE").then(|| SUITE_SECRET.to_string())
}

fn boto_lookup(akid: &str) -> Option<String> {
    (akid == "AKIDESB").then(|| BOTO_SECRET.to_string())
}

fn suite_auth(signed: &str, sig: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={sig}"
    )
}

fn suite_case(
    method: &str,
    path: &str,
    query: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    signed: &str,
    sig: &str,
) -> Result<Verified, SigV4Error> {
    let auth = suite_auth(signed, sig);
    let mut pairs = vec![
        ("host", "example.amazonaws.com"),
        ("x-amz-date", "20150830T123600Z"),
        ("authorization", auth.as_str()),
    ];
    pairs.extend_from_slice(extra);
    verify(
        method,
        path,
        query,
        &headers(&pairs),
        Payload::Body(body),
        suite_lookup,
        at("20150830T123600Z"),
    )
}

#[test]
fn suite_get_vanilla() {
    let v = suite_case(
        "GET",
        "/",
        "",
        &[],
        b"",
        "host;x-amz-date",
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    )
    .unwrap();
    assert_eq!(v.access_key_id, "AKIDEXAMPLE");
    assert_eq!(v.region, "us-east-1");
    assert_eq!(v.service, "service");
    assert!(!v.presigned);
}

#[test]
fn suite_get_relative_relative_normalises_to_vanilla() {
    suite_case(
        "GET",
        "/example1/example2/../..",
        "",
        &[],
        b"",
        "host;x-amz-date",
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    )
    .unwrap();
}

#[test]
fn suite_get_vanilla_query_order_key_case() {
    suite_case(
        "GET",
        "/",
        "Param2=value2&Param1=value1",
        &[],
        b"",
        "host;x-amz-date",
        "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
    )
    .unwrap();
}

#[test]
fn suite_get_vanilla_query_unreserved() {
    let u = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    suite_case(
        "GET",
        "/",
        &format!("{u}={u}"),
        &[],
        b"",
        "host;x-amz-date",
        "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197",
    )
    .unwrap();
}

#[test]
fn suite_post_vanilla() {
    suite_case(
        "POST",
        "/",
        "",
        &[],
        b"",
        "host;x-amz-date",
        "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
    )
    .unwrap();
}

#[test]
fn suite_post_x_www_form_urlencoded() {
    suite_case(
        "POST",
        "/",
        "",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"Param1=value1",
        "content-type;host;x-amz-date",
        "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
    )
    .unwrap();
}

#[test]
fn suite_get_header_value_trim() {
    suite_case(
        "GET",
        "/",
        "",
        &[("my-header1", " value1"), ("my-header2", " \"a   b   c\"")],
        b"",
        "host;my-header1;my-header2;x-amz-date",
        "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
    )
    .unwrap();
}

#[test]
fn one_changed_bit_fails() {
    let err = suite_case(
        "GET",
        "/",
        "",
        &[],
        b"",
        "host;x-amz-date",
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf30",
    )
    .unwrap_err();
    assert_eq!(err, SigV4Error::SignatureDoesNotMatch);
    // Same signature, different body: POST vanilla signed an empty body.
    let err = suite_case(
        "POST",
        "/",
        "",
        &[],
        b"x",
        "host;x-amz-date",
        "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
    )
    .unwrap_err();
    assert_eq!(err, SigV4Error::SignatureDoesNotMatch);
}

#[test]
fn botocore_lambda_invoke_with_arn_in_path() {
    let h = headers(&[
        ("host", "127.0.0.1:9001"),
        ("x-amz-invocation-type", "RequestResponse"),
        ("x-amz-date", "20261122T044745Z"),
        (
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDESB/20261122/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date;x-amz-invocation-type, Signature=5827fb1e4282c6a5714b18cda959fa3e3bb41b51fc698d318a548cd04b23d780",
        ),
        ("content-length", "8"),
    ]);
    let path = "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Ahello/invocations";
    let v = verify(
        "POST",
        path,
        "",
        &h,
        Payload::Body(br#"{"a": 1}"#),
        boto_lookup,
        at("20261122T044745Z"),
    )
    .unwrap();
    v.require_service("lambda").unwrap();
    assert_eq!(v.require_service("dynamodb"), Err(SigV4Error::WrongService));
    // The precomputed-hash form gives the same answer.
    let sha = hex::encode(Sha256::digest(br#"{"a": 1}"#));
    verify(
        "POST",
        path,
        "",
        &h,
        Payload::Sha256(&sha),
        boto_lookup,
        at("20261122T044745Z"),
    )
    .unwrap();
}

#[test]
fn botocore_dynamodb_post() {
    let h = headers(&[
        ("host", "127.0.0.1:8001"),
        ("x-amz-target", "DynamoDB_20120810.GetItem"),
        ("content-type", "application/x-amz-json-1.0"),
        ("x-amz-date", "20261122T044745Z"),
        (
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDESB/20261122/us-east-1/dynamodb/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=5d2246f9cada431ff4d250a0613ee0097aff35f775028aa58c3b5b8128a545b1",
        ),
    ]);
    let now = at("20261122T044745Z");
    let v = verify(
        "POST",
        "/",
        "",
        &h,
        Payload::Body(br#"{"TableName": "t"}"#),
        boto_lookup,
        now,
    )
    .unwrap();
    assert_eq!(v.service, "dynamodb");
    // A tampered body or target is refused.
    assert_eq!(
        verify(
            "POST",
            "/",
            "",
            &h,
            Payload::Body(br#"{"TableName": "u"}"#),
            boto_lookup,
            now
        ),
        Err(SigV4Error::SignatureDoesNotMatch)
    );
    let mut h2 = h.clone();
    h2.insert(
        "x-amz-target",
        "DynamoDB_20120810.DeleteTable".parse().unwrap(),
    );
    assert_eq!(
        verify(
            "POST",
            "/",
            "",
            &h2,
            Payload::Body(br#"{"TableName": "t"}"#),
            boto_lookup,
            now
        ),
        Err(SigV4Error::SignatureDoesNotMatch)
    );
    // Wrong secret for the same key id.
    assert_eq!(
        verify(
            "POST",
            "/",
            "",
            &h,
            Payload::Body(br#"{"TableName": "t"}"#),
            |_| Some("other".into()),
            now
        ),
        Err(SigV4Error::SignatureDoesNotMatch)
    );
    assert_eq!(
        verify(
            "POST",
            "/",
            "",
            &h,
            Payload::Body(br#"{"TableName": "t"}"#),
            |_| None,
            now
        ),
        Err(SigV4Error::UnknownAccessKey)
    );
}

#[test]
fn botocore_double_slashes_path() {
    let h = headers(&[
        ("host", "example.amazonaws.com"),
        ("x-amz-date", "20261122T044745Z"),
        (
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDESB/20261122/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=bb822945a4b33dd6c80ee198055cb5693308d09c2dd20d936b743d4d71f76dc8",
        ),
    ]);
    verify(
        "GET",
        "//example//",
        "",
        &h,
        Payload::Body(b""),
        boto_lookup,
        at("20261122T044745Z"),
    )
    .unwrap();
}

const PRESIGNED_QUERY: &str = "Qualifier=%24LATEST&b=x%20y&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDESB%2F20261122%2Fus-east-1%2Flambda%2Faws4_request&X-Amz-Date=20261122T044745Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=27f872c08fef42317e92f9a3feb09920915ca44953ac84ad122a6b3e727f747b";

#[test]
fn botocore_presigned_query() {
    let h = headers(&[("host", "127.0.0.1:9001")]);
    let path = "/2015-03-31/functions/hello/invocations";
    let v = verify(
        "GET",
        path,
        PRESIGNED_QUERY,
        &h,
        Payload::Body(b""),
        boto_lookup,
        at("20261122T044745Z"),
    )
    .unwrap();
    assert!(v.presigned);
    assert_eq!(v.service, "lambda");
    // 299 s later it still works; 301 s later it has expired.
    let later = at("20261122T044745Z");
    verify(
        "GET",
        path,
        PRESIGNED_QUERY,
        &h,
        Payload::Body(b""),
        boto_lookup,
        later + Duration::from_secs(299),
    )
    .unwrap();
    assert_eq!(
        verify(
            "GET",
            path,
            PRESIGNED_QUERY,
            &h,
            Payload::Body(b""),
            boto_lookup,
            later + Duration::from_secs(301)
        ),
        Err(SigV4Error::Expired)
    );
    // Another qualifier breaks it.
    let tampered = PRESIGNED_QUERY.replace("%24LATEST", "1");
    assert_eq!(
        verify(
            "GET",
            path,
            &tampered,
            &h,
            Payload::Body(b""),
            boto_lookup,
            later
        ),
        Err(SigV4Error::SignatureDoesNotMatch)
    );
}

#[test]
fn clock_skew_window_is_15_minutes() {
    let t = at("20150830T123600Z");
    let run = |now| {
        let auth = suite_auth(
            "host;x-amz-date",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        );
        let h = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth),
        ]);
        verify("GET", "/", "", &h, Payload::Body(b""), suite_lookup, now)
    };
    run(t + Duration::from_secs(14 * 60)).unwrap();
    run(t - Duration::from_secs(14 * 60)).unwrap();
    assert_eq!(
        run(t + Duration::from_secs(16 * 60)),
        Err(SigV4Error::RequestTimeTooSkewed)
    );
    assert_eq!(
        run(t - Duration::from_secs(16 * 60)),
        Err(SigV4Error::RequestTimeTooSkewed)
    );
}

#[test]
fn unsigned_and_malformed_requests_get_typed_errors() {
    let now = at("20150830T123600Z");
    let v = |pairs: &[(&str, &str)]| {
        verify(
            "GET",
            "/",
            "",
            &headers(pairs),
            Payload::Body(b""),
            suite_lookup,
            now,
        )
    };
    assert_eq!(v(&[("host", "h")]), Err(SigV4Error::Missing));
    assert_eq!(
        v(&[("host", "h"), ("authorization", "Bearer abc")]),
        Err(SigV4Error::UnsupportedAlgorithm)
    );
    assert!(matches!(
        v(&[("host", "h"), ("authorization", "AWS4-HMAC-SHA256 garbage")]),
        Err(SigV4Error::Malformed(_))
    ));
    // Host not signed.
    let auth = suite_auth("x-amz-date", &"0".repeat(64));
    assert!(matches!(
        v(&[
            ("host", "h"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth)
        ]),
        Err(SigV4Error::Malformed(_))
    ));
    // A signed header that is absent.
    let auth = suite_auth("host;x-amz-date;x-extra", &"0".repeat(64));
    assert!(matches!(
        v(&[
            ("host", "h"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth)
        ]),
        Err(SigV4Error::Malformed(_))
    ));
    // Two authorization headers.
    let auth = suite_auth("host;x-amz-date", &"0".repeat(64));
    assert!(matches!(
        v(&[
            ("host", "h"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth),
            ("authorization", &auth)
        ]),
        Err(SigV4Error::Malformed(_))
    ));
    // Bad date.
    assert!(matches!(
        v(&[
            ("host", "h"),
            ("x-amz-date", "2015-08-30"),
            ("authorization", &auth)
        ]),
        Err(SigV4Error::Malformed(_))
    ));
}

#[test]
fn header_form_refuses_unsigned_payload_outside_s3() {
    let now = at("20150830T123600Z");
    let mut h = headers(&[
        ("host", "example.amazonaws.com"),
        ("x-amz-content-sha256", UNSIGNED_PAYLOAD),
    ]);
    let params = SigningParams {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: SUITE_SECRET,
        region: "us-east-1",
        service: "lambda",
        time: now,
    };
    sign("POST", "/", "", &mut h, Payload::Body(b"x"), &params).unwrap();
    assert_eq!(
        verify("POST", "/", "", &h, Payload::Body(b"x"), suite_lookup, now),
        Err(SigV4Error::PayloadHashMismatch)
    );
}

#[test]
fn sign_then_verify_round_trips_and_matches_the_suite() {
    let t = at("20150830T123600Z");
    let mut h = headers(&[("host", "example.amazonaws.com")]);
    let params = SigningParams {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: SUITE_SECRET,
        region: "us-east-1",
        service: "service",
        time: t,
    };
    sign("GET", "/", "", &mut h, Payload::Body(b""), &params).unwrap();
    assert_eq!(
        h["authorization"],
        suite_auth(
            "host;x-amz-date",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        )
    );
    verify("GET", "/", "", &h, Payload::Body(b""), suite_lookup, t).unwrap();
}

#[test]
fn amz_date_round_trips() {
    for s in [
        "20150830T123600Z",
        "20000229T000000Z",
        "19700101T000000Z",
        "20991231T235959Z",
    ] {
        assert_eq!(format_amz_date(at(s)), s);
    }
    assert_eq!(
        at("19700102T000001Z"),
        UNIX_EPOCH + Duration::from_secs(86_401)
    );
}
