"""Routing of the example app and the errors API Gateway itself returns
(reference: apigateway-events.md §1, §4, §8)."""

import json
import time

import pytest


# ------------------------------------------------------------ example routes


@pytest.mark.parametrize("path", ["/hello", "/dev/hello"])
def test_rest_hello_at_template_path_and_under_stage(example, path):
    r = example.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"message": "Hello from ESB", "stage": "dev"}


def test_rest_response_carries_request_id(example):
    r = example.get("/dev/hello")
    assert r.headers.get("x-amzn-RequestId"), dict(r.headers)


@pytest.mark.parametrize("path", ["/items/42", "/dev/items/42"])
def test_rest_path_parameter(example, path):
    r = example.get(path)
    assert r.status_code == 200, r.text
    assert r.json() == {"pathParameters": {"id": "42"}}


def test_http_api_two_path_parameters(example):
    r = example.get("/items/7/parts/wheel")
    assert r.status_code == 200, r.text
    assert r.json() == {"pathParameters": {"id": "7", "part": "wheel"}}


def test_http_api_response_carries_request_id(example):
    r = example.get("/items/7/parts/wheel")
    assert r.headers.get("apigw-requestid"), dict(r.headers)


def test_rest_function_error_is_502(example):
    r = example.get("/fail")
    assert r.status_code == 502
    assert r.json() == {"message": "Internal server error"}


def test_rest_function_timeout_is_504(example):
    start = time.monotonic()
    r = example.get("/slow")
    elapsed = time.monotonic() - start
    assert r.status_code == 504, r.text
    assert r.json() == {"message": "Endpoint request timed out"}
    # Timeout: 1 in the template; the function sleeps 5 s.
    assert elapsed < 4, f"answered after {elapsed:.1f}s, the function's timeout is 1s"


def test_chained_invocation_through_esb(example):
    r = example.get("/chain")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["target"] == "hello"
    assert body["status"] == 200
    hello = body["response"]
    assert hello["statusCode"] == 200
    assert json.loads(hello["body"]) == {"message": "Hello from ESB", "stage": "dev"}


# ------------------------------------------------------------ CORS


def test_rest_cors_preflight(example):
    r = example.request("OPTIONS", "/dev/hello", headers={
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "GET",
    })
    assert r.status_code in (200, 204), r.text
    assert r.headers.get("Access-Control-Allow-Origin") == "*"
    methods = {m.strip() for m in r.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert {"GET", "POST", "OPTIONS"} <= methods, r.headers


def test_http_api_cors_preflight(example):
    r = example.request("OPTIONS", "/chain", headers={
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "POST",
    })
    assert r.status_code in (200, 204), r.text
    assert r.headers.get("Access-Control-Allow-Origin") == "*"
    methods = {m.strip().upper() for m in r.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert "POST" in methods or "*" in methods, r.headers


def test_http_api_cors_headers_on_actual_response(example):
    r = example.get("/items/7/parts/wheel", headers={"Origin": "https://app.example.com"})
    assert r.status_code == 200
    assert r.headers.get("Access-Control-Allow-Origin") == "*"


# ------------------------------------------------------------ no route


@pytest.mark.parametrize("method,path", [
    ("GET", "/nope"),
    ("GET", "/test/nope"),
    ("POST", "/multi"),         # the path exists, the method does not
    ("DELETE", "/test/multi"),
])
def test_rest_only_app_unknown_route_is_403(rest_only, method, path):
    r = rest_only.request(method, path)
    assert r.status_code == 403, r.text
    assert r.json() == {"message": "Missing Authentication Token"}
    assert r.headers.get("x-amzn-ErrorType") == "MissingAuthenticationTokenException"


@pytest.mark.parametrize("method,path", [
    ("GET", "/nope"),
    ("POST", "/string"),        # the path exists, the method does not
    ("GET", "/prod/string"),    # no such stage
])
def test_http_only_app_unknown_route_is_404(http_only, method, path):
    r = http_only.request(method, path)
    assert r.status_code == 404, r.text
    assert r.json() == {"message": "Not Found"}


@pytest.mark.parametrize("path", ["/echo/x", "/test/echo/x"])
def test_rest_stage_is_the_same_with_or_without_prefix(rest_only, path):
    r = rest_only.get(path)
    assert r.status_code == 200, r.text
    event = r.json()["event"]
    assert event["requestContext"]["stage"] == "test"
    assert event["path"] == "/echo/x"
    assert event["resource"] == "/echo/{proxy+}"


def test_http_api_function_error_is_500(http_only):
    r = http_only.get("/fail")
    assert r.status_code == 500, r.text
    assert r.json() == {"message": "Internal Server Error"}


def test_http_api_function_timeout_is_503(http_only):
    start = time.monotonic()
    r = http_only.get("/slow")
    elapsed = time.monotonic() - start
    assert r.status_code == 503, r.text
    assert r.json() == {"message": "Service Unavailable"}
    assert elapsed < 4, f"answered after {elapsed:.1f}s, the function's timeout is 1s"

