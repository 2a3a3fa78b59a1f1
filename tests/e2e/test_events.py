"""The events functions receive, field by field, against
/work/shared/reference/apigateway-events.md: payload 2.0 from the HTTP API
(example app `GET /echo/{proxy+}`) and v1 from the REST API (`/dev/echo/...`,
stage `dev`). The echo function returns {"event": event, "function": name}."""

import base64
import re
import time

import pytest

from esb_helpers import curl

UA = "esb-e2e-tests/1.0"
TIME_FORMAT = re.compile(r"^\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000$")
# PNG signature plus bytes that are not UTF-8.
BINARY = b"\x89PNG\r\n\x1a\n\x00\x01\xff\xfe\x80\x81end"


def lookup(mapping: dict, name: str):
    """Case-insensitive header lookup (v1 keeps the client's casing)."""
    hits = [v for k, v in (mapping or {}).items() if k.lower() == name.lower()]
    assert len(hits) == 1, f"{name!r}: {len(hits)} entries in {mapping}"
    return hits[0]


def now_ms() -> int:
    return int(time.time() * 1000)


def echoed(resp) -> dict:
    assert resp.status == 200, resp.body[:500]
    return resp.json()["event"]


COMMON_ARGS = ("-A", UA, "-H", "X-Custom: one", "-H", "X-Custom: two",
               "-b", "session=abc123; theme=dark")


# ================================================================ payload 2.0


@pytest.fixture(scope="module")
def v2_get(example):
    before = now_ms()
    resp = curl(example, "/echo/a/b?x=1&x=2&y=z", *COMMON_ARGS)
    return resp, echoed(resp), before


def test_v2_version_and_route_key(v2_get):
    resp, event, _ = v2_get
    assert resp.json()["function"] == "echo"
    assert event["version"] == "2.0"
    assert event["routeKey"] == "ANY /echo/{proxy+}"


def test_v2_raw_path_and_query(v2_get):
    _, event, _ = v2_get
    assert event["rawPath"] == "/echo/a/b"
    assert event["rawQueryString"] == "x=1&x=2&y=z"
    assert event["queryStringParameters"] == {"x": "1,2", "y": "z"}


def test_v2_headers_lower_case_and_joined(v2_get):
    _, event, _ = v2_get
    headers = event["headers"]
    assert all(k == k.lower() for k in headers), list(headers)
    assert headers["x-custom"] == "one,two"
    assert headers["user-agent"] == UA
    assert "cookie" not in headers, "payload 2.0 moves the Cookie header to `cookies`"


def test_v2_cookies(v2_get):
    _, event, _ = v2_get
    assert event["cookies"] == ["session=abc123", "theme=dark"]


def test_v2_path_parameters(v2_get):
    _, event, _ = v2_get
    assert event["pathParameters"] == {"proxy": "a/b"}


def test_v2_no_body_on_get(v2_get):
    _, event, _ = v2_get
    assert "body" not in event, "payload 2.0 omits an empty body"
    assert event["isBase64Encoded"] is False


def test_v2_request_context(v2_get):
    resp, event, before = v2_get
    ctx = event["requestContext"]
    assert ctx["requestId"], ctx
    assert ctx["requestId"] == resp.header("apigw-requestid")
    assert ctx["routeKey"] == "ANY /echo/{proxy+}"
    assert ctx["stage"] == "$default"
    assert ctx["http"] == {
        "method": "GET",
        "path": "/echo/a/b",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": UA,
    }
    assert isinstance(ctx["timeEpoch"], int)
    assert before - 1000 <= ctx["timeEpoch"] <= now_ms() + 1000
    assert TIME_FORMAT.match(ctx["time"]), ctx["time"]
    assert ctx["accountId"] and ctx["apiId"] and ctx["domainName"]


def test_v2_no_query_string(example):
    event = echoed(curl(example, "/echo/plain"))
    assert event["rawQueryString"] == ""
    assert "queryStringParameters" not in event
    assert "cookies" not in event


def test_v2_json_body(example):
    resp = curl(example, "/echo/orders/7", "-X", "POST",
                "-H", "Content-Type: application/json", "--data-binary", '{"qty": 3}')
    event = echoed(resp)
    assert event["body"] == '{"qty": 3}'
    assert event["isBase64Encoded"] is False
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["routeKey"] == "ANY /echo/{proxy+}"
    assert event["headers"]["content-type"] == "application/json"


def test_v2_binary_body_is_base64(example):
    r = example.post("/echo/upload", data=BINARY,
                     headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    event = r.json()["event"]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == BINARY


def test_v2_unicode_path_segments(example):
    r = example.get("/echo/caf%C3%A9/%E6%97%A5%E6%9C%AC")
    assert r.status_code == 200, r.text
    event = r.json()["event"]
    assert event["pathParameters"] == {"proxy": "café/日本"}
    assert event["rawPath"] == "/echo/caf%C3%A9/%E6%97%A5%E6%9C%AC"


# ================================================================ REST v1


@pytest.fixture(scope="module")
def v1_get(example):
    before = now_ms()
    resp = curl(example, "/dev/echo/a/b?x=1&x=2&y=z", *COMMON_ARGS)
    return resp, echoed(resp), before


def test_v1_has_no_version_and_names_resource(v1_get):
    resp, event, _ = v1_get
    assert resp.json()["function"] == "echo"
    assert "version" not in event
    assert event["resource"] == "/echo/{proxy+}"
    assert event["path"] == "/echo/a/b"
    assert event["httpMethod"] == "GET"


def test_v1_query_parameters(v1_get):
    _, event, _ = v1_get
    assert event["queryStringParameters"] == {"x": "2", "y": "z"}
    assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"], "y": ["z"]}


def test_v1_headers_and_multi_value_headers(v1_get):
    _, event, _ = v1_get
    assert lookup(event["headers"], "X-Custom") == "two"
    assert lookup(event["multiValueHeaders"], "X-Custom") == ["one", "two"]
    assert lookup(event["headers"], "User-Agent") == UA
    assert lookup(event["multiValueHeaders"], "User-Agent") == [UA]
    # v1 has no `cookies` field: the Cookie header is passed through.
    assert lookup(event["headers"], "Cookie") == "session=abc123; theme=dark"
    assert "cookies" not in event


def test_v1_header_names_keep_client_case(v1_get):
    _, event, _ = v1_get
    assert "X-Custom" in event["headers"], list(event["headers"])
    assert "X-Custom" in event["multiValueHeaders"], list(event["multiValueHeaders"])


def test_v1_path_parameters_and_stage_variables(v1_get):
    _, event, _ = v1_get
    assert event["pathParameters"] == {"proxy": "a/b"}
    assert event["stageVariables"] is None


def test_v1_no_body_on_get(v1_get):
    _, event, _ = v1_get
    assert event["body"] is None
    assert event["isBase64Encoded"] is False


def test_v1_request_context(v1_get):
    resp, event, before = v1_get
    ctx = event["requestContext"]
    assert ctx["requestId"], ctx
    assert ctx["requestId"] == resp.header("x-amzn-RequestId")
    assert ctx["stage"] == "dev"
    assert ctx["path"] == "/dev/echo/a/b"
    assert ctx["resourcePath"] == "/echo/{proxy+}"
    assert ctx["httpMethod"] == "GET"
    assert ctx["protocol"] == "HTTP/1.1"
    assert ctx["identity"]["sourceIp"] == "127.0.0.1"
    assert ctx["identity"]["userAgent"] == UA
    assert isinstance(ctx["requestTimeEpoch"], int)
    assert before - 1000 <= ctx["requestTimeEpoch"] <= now_ms() + 1000
    assert TIME_FORMAT.match(ctx["requestTime"]), ctx["requestTime"]
    assert ctx["accountId"] and ctx["apiId"]


def test_v1_no_query_string_is_null(example):
    event = echoed(curl(example, "/dev/echo/plain"))
    assert event["queryStringParameters"] is None
    assert event["multiValueQueryStringParameters"] is None


def test_v1_text_body(example):
    event = echoed(curl(example, "/dev/echo/notes", "-X", "PUT",
                        "-H", "Content-Type: text/plain", "--data-binary", "héllo wörld"))
    assert event["httpMethod"] == "PUT"
    assert event["body"] == "héllo wörld"
    assert event["isBase64Encoded"] is False


def test_v1_binary_media_type_body_is_base64(example):
    r = example.post("/dev/echo/upload", data=BINARY, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    event = r.json()["event"]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == BINARY


def test_v1_unicode_path_segments(example):
    r = example.get("/dev/echo/caf%C3%A9/%E6%97%A5%E6%9C%AC")
    assert r.status_code == 200, r.text
    event = r.json()["event"]
    assert event["pathParameters"] == {"proxy": "café/日本"}


def test_v1_path_parameter_is_decoded(example):
    r = example.get("/dev/items/a%20b")
    assert r.status_code == 200, r.text
    assert r.json() == {"pathParameters": {"id": "a b"}}
