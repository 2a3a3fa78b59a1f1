"""Robustness contract, HTTP edge (shared/reference/robustness.md H1-H14),
with the clients a user has: curl (HTTP/1.1 and HTTP/2), requests, Python's
ssl module, plain sockets for a client that sends nothing. The raw cases a
real client never sends (bad framing, slowloris, ...) are in
crates/gateway/tests/robustness.rs; docs/robustness.md maps each ID.

One server (the REST-only app over HTTPS) with short listener timeouts set
through the environment, as a user would configure them."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
import warnings

import pytest
import requests

from esb_helpers import REST_ONLY, module_server, require_tool

SHORT = {
    "ESB_HEADER_TIMEOUT": "1s",
    "ESB_BODY_TIMEOUT": "1s",
    "ESB_KEEPALIVE_TIMEOUT": "2s",
    "ESB_WRITE_TIMEOUT": "2s",
    "ESB_HANDSHAKE_TIMEOUT": "1s",
}


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    yield from module_server(tmp_path_factory, REST_ONLY, env=SHORT)


def curl_status(server, path: str, *args: str, http2: bool = False) -> tuple[int, str, str]:
    """(returncode, status code, stderr) of one curl call."""
    curl = require_tool("curl")
    cmd = [curl, "-sS", "--http2" if http2 else "--http1.1", "--cacert", str(server.cert),
           "-o", "/dev/null", "-w", "%{http_code}", *args, server.url(path)]
    p = subprocess.run(cmd, capture_output=True, timeout=30)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes `sock` within `seconds` (reads until EOF)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            return False
        except (ConnectionResetError, ssl.SSLError, OSError):
            return True
    return False


def test_issue13_http2_post_to_unrouted_path_curl(edge):
    for i in range(50):
        rc, status, err = curl_status(edge, "/nope", "-X", "POST", "-d", "{}", http2=True)
        assert rc == 0, f"try {i}: curl {rc}: {err}"
        assert status == "403", f"try {i}: {status}"


def test_h10_gateway_silent_tls_connection_closed(edge):
    with socket.create_connection(("127.0.0.1", edge.port)) as s:
        assert closed_within(s, 6), "a TCP connection that never starts TLS is still open"


def test_h10_gateway_idle_keepalive_closed(edge):
    ctx = ssl.create_default_context(cafile=str(edge.cert))
    with socket.create_connection(("127.0.0.1", edge.port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET /_esb/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            first = s.recv(65536)
            assert first.startswith(b"HTTP/1.1 200"), first
            assert closed_within(s, 8), "idle keep-alive connection still open"


def test_h10_gateway_slowloris_closed(edge):
    ctx = ssl.create_default_context(cafile=str(edge.cert))
    with socket.create_connection(("127.0.0.1", edge.port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET /test/echo/x HTTP/1.1\r\nHost: localhost\r\n")
            assert closed_within(s, 6), "half-sent head still open"
    # Good traffic is served meanwhile and after.
    assert requests.get(edge.url("/_esb/health"), verify=edge.verify, timeout=5).status_code == 200


def test_h13_tls_below_1_2_refused(edge):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # on purpose: an old client
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError) as e:
        pytest.fail(f"this Python/OpenSSL cannot offer TLS 1.1: {e}")
    with socket.create_connection(("127.0.0.1", edge.port)) as raw:
        with pytest.raises(ssl.SSLError) as info:
            ctx.wrap_socket(raw, server_hostname="localhost")
    assert "no protocols available" not in str(info.value), "the client never offered TLS 1.1"


def test_h2_body_over_limit_413_requests(edge):
    # requests sends the whole body before reading: it must still see 413.
    r = requests.post(edge.url("/test/echo/x"), data=b"x" * (11 * 1024 * 1024),
                      verify=edge.verify, timeout=30)
    assert r.status_code == 413
    assert r.json() == {"message": "Request Too Long"}


def test_h1_header_and_uri_too_large_curl(edge):
    _, status, _ = curl_status(edge, "/test/echo/x", "-H", "X-Big: " + "a" * 11 * 1024)
    assert status == "431"
    _, status, _ = curl_status(edge, "/test/echo/" + "a" * 11 * 1024)
    assert status == "414"
    _, status, _ = curl_status(edge, "/test/echo/x", "-H", "X-Big: " + "a" * 11 * 1024, http2=True)
    assert status == "431"


def test_h4_invalid_utf8_query_400_curl(edge):
    _, status, _ = curl_status(edge, "/test/echo/x?a=%FF")
    assert status == "400"


def test_h5_encoded_dot_segments_400_curl(edge):
    _, status, _ = curl_status(edge, "/test/echo/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "--path-as-is")
    assert status == "400"
    _, status, _ = curl_status(edge, "/test/echo/a/../../etc/passwd", "--path-as-is")
    assert status == "400"


def test_h7_duplicate_api_key_on_login_path_400_curl(edge):
    _, status, _ = curl_status(edge, "/user/auth/ver1.0", "-X", "POST", "-d", "{}",
                               "-H", "x-api-key: a", "-H", "x-api-key: b")
    assert status == "400"


def test_h8_content_length_with_chunked_400_curl(edge):
    _, status, _ = curl_status(edge, "/test/echo/x", "-X", "POST", "-d", "{}",
                               "-H", "Transfer-Encoding: chunked", "-H", "Content-Length: 2")
    assert status == "400"


def test_h14_trace_has_no_route_curl(edge):
    _, status, _ = curl_status(edge, "/test/echo/x", "-X", "TRACE")
    assert status == "403"
