"""Response mapping: what the client gets for each shape a function returns
(apigateway-events.md §2.4, §2.5 for REST; §3.3 for HTTP API payload 2.0)."""

import base64
import json

from esb_helpers import curl

# Must match tests/e2e/apps/*/src/app.py.
REST_PNG = b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x80binary"
HTTP_BINARY = b"\x00\x01\x02\xff\xfe\xfdnot utf-8 \x80\x81"


def split_values(values: list[str]) -> list[str]:
    """Header values as a list whether sent as repeated lines or comma-joined."""
    return [v.strip() for line in values for v in line.split(",")]


# ------------------------------------------------------------ REST (v1)


def test_rest_headers_and_multi_value_headers(rest_only):
    r = curl(rest_only, "/multi")
    assert r.status == 201
    assert r.body == b"created"
    assert r.header("Content-Type") == "text/plain"
    assert r.header("X-Single") == "one"
    assert sorted(r.header_all("Set-Cookie")) == ["a=1; Path=/", "b=2; Path=/"]
    assert split_values(r.header_all("X-Multi")) == ["x", "y"]


def test_rest_base64_body_decoded_for_binary_accept(rest_only):
    r = rest_only.get("/binary", headers={"Accept": "image/png"})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "image/png"
    assert r.content == REST_PNG


def test_rest_base64_body_stays_text_without_binary_accept(rest_only):
    # REST decodes isBase64Encoded bodies only when the first Accept type is
    # a binary media type of the API (apigateway-events.md §2.5).
    r = rest_only.get("/binary", headers={"Accept": "application/json"})
    assert r.status_code == 200
    assert r.content == base64.b64encode(REST_PNG)


def test_rest_missing_status_code_defaults_to_200(rest_only):
    r = rest_only.get("/nostatus")
    assert r.status_code == 200
    assert r.text == "no status code"


def test_rest_malformed_proxy_response_is_502(rest_only):
    r = rest_only.get("/malformed")
    assert r.status_code == 502
    assert r.json() == {"message": "Internal server error"}


def test_rest_request_id_header_matches_event(rest_only):
    r = rest_only.get("/test/echo/rid")
    assert r.status_code == 200
    assert r.headers["x-amzn-RequestId"] == r.json()["event"]["requestContext"]["requestId"]


# ------------------------------------------------------------ HTTP API (2.0)


def test_http_bare_string_is_inferred_as_body(http_only):
    r = http_only.get("/string")
    assert r.status_code == 200
    assert r.text == "Hello from Lambda!"
    assert r.headers["Content-Type"].startswith("application/json")


def test_http_bare_object_is_inferred_as_json_body(http_only):
    r = http_only.get("/object")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"message": "Hello from Lambda!", "n": 3}


def test_http_cookies_become_set_cookie_headers(http_only):
    r = curl(http_only, "/cookies")
    assert r.status == 200
    assert r.body == b"with cookies"
    assert sorted(r.header_all("Set-Cookie")) == ["session=abc; HttpOnly", "theme=dark"]
    assert r.header("Content-Type") == "text/plain"
    assert split_values(r.header_all("x-a")) == ["1", "2"]


def test_http_base64_body_is_decoded(http_only):
    r = http_only.get("/binary")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.content == HTTP_BINARY


def test_http_request_id_header_matches_event(http_only):
    r = http_only.get("/echo/rid")
    assert r.status_code == 200
    event = r.json()["event"]
    assert r.headers["apigw-requestid"] == event["requestContext"]["requestId"]
    assert event["requestContext"]["stage"] == "$default"
    assert event["version"] == "2.0"


def test_http_json_roundtrip_with_requests_client(http_only):
    payload = {"a": [1, 2, 3], "b": "ü"}
    r = http_only.post("/echo/json", json=payload)
    assert r.status_code == 200
    event = r.json()["event"]
    assert json.loads(event["body"]) == payload
    assert event["isBase64Encoded"] is False
