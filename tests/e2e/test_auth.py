"""Auth end to end (issue 7): the original system's login flow, JWT attacks
A1-A6 on protected routes, API keys (A7-A8), a Python Lambda authorizer with
caching, and SigV4 on the Invoke API."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import requests

from esb_helpers import APPS, curl, module_server, run_esb

AUTH_APP = APPS / "auth" / "template.yaml"
PASSWORD = "a long test password"


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory):
    yield from module_server(tmp_path_factory, AUTH_APP)


@pytest.fixture(scope="module")
def user(auth_app):
    proc = run_esb("user", "add", "--data-dir", str(auth_app.data_dir), "testuser",
                   input=(PASSWORD + "\n").encode())
    assert proc.returncode == 0, proc.stderr
    return "testuser"


def login(server, username, password, api_key=None, **extra):
    key = api_key if api_key is not None else server.credentials()["api_key"]
    headers = {"x-api-key": key} if key else {}
    body = {"AuthParameters": {"USERNAME": username, "PASSWORD": password}, **extra}
    return server.post("/user/auth/ver1.0", json=body, headers=headers)


@pytest.fixture(scope="module")
def tokens(auth_app, user):
    r = login(auth_app, user, PASSWORD)
    assert r.status_code == 200, r.text
    return r.json()["AuthenticationResult"]


def b64(obj) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parts(token):
    h, p, s = token.split(".")
    pad = lambda x: x + "=" * (-len(x) % 4)
    return json.loads(base64.urlsafe_b64decode(pad(h))), json.loads(base64.urlsafe_b64decode(pad(p))), s


# ------------------------------------------------------------------ login flow


def test_original_login_flow_then_protected_route(auth_app, tokens):
    assert tokens["TokenType"] == "Bearer"
    assert tokens["ExpiresIn"] == 3600
    assert tokens["RefreshToken"]
    r = auth_app.get("/test/protected", headers={"Authorization": f"Bearer {tokens['IdToken']}"})
    assert r.status_code == 200, r.text
    claims = r.json()["authorizer"]["claims"]
    assert claims["cognito:username"] == "testuser"
    assert claims["token_use"] == "id"
    assert all(isinstance(v, str) for v in claims.values())
    # Raw token without "Bearer " works too (Cognito authorizers take it as is).
    assert auth_app.get("/test/protected", headers={"Authorization": tokens["IdToken"]}).status_code == 200


def test_refresh_token_flow(auth_app, tokens):
    r = auth_app.post("/user/auth/ver1.0", headers={"x-api-key": auth_app.credentials()["api_key"]},
                      json={"AuthFlow": "REFRESH_TOKEN_AUTH",
                            "AuthParameters": {"REFRESH_TOKEN": tokens["RefreshToken"]}})
    assert r.status_code == 200, r.text
    fresh = r.json()["AuthenticationResult"]["IdToken"]
    assert auth_app.get("/test/protected", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200


def test_login_needs_api_key(auth_app, user):
    assert login(auth_app, user, PASSWORD, api_key="").status_code == 403
    r = login(auth_app, user, PASSWORD, api_key="wrong-key-0000000000")
    assert r.status_code == 403
    assert r.json() == {"message": "Forbidden"}


def test_jwks_and_openid_configuration(auth_app, tokens):
    jwks = auth_app.get("/.well-known/jwks.json").json()
    header, _, _ = parts(tokens["IdToken"])
    assert header["alg"] == "RS256"
    assert [k["kid"] for k in jwks["keys"]] == [header["kid"]]
    assert all("d" not in k for k in jwks["keys"])
    oidc = auth_app.get("/.well-known/openid-configuration").json()
    assert oidc["issuer"] == "https://esb.local"
    assert oidc["jwks_uri"] == f"{auth_app.base_url}/.well-known/jwks.json"


def test_openid_configuration_names_the_port_over_http2(auth_app):
    """HTTP/2 has no Host header (only :authority): the JWKS URL must still
    name the gateway's port, not `localhost`."""
    h2 = "--http2" if auth_app.cert is not None else "--http2-prior-knowledge"
    r = curl(auth_app, "/.well-known/openid-configuration", h2)
    assert r.status == 200, r.body
    assert r.json()["jwks_uri"] == f"{auth_app.base_url}/.well-known/jwks.json"


def test_http_api_jwt_authorizer(auth_app, tokens):
    r = auth_app.get("/jwt", headers={"Authorization": f"Bearer {tokens['IdToken']}"})
    assert r.status_code == 200, r.text
    jwt = r.json()["authorizer"]["jwt"]
    assert jwt["claims"]["cognito:username"] == "testuser"
    assert auth_app.get("/jwt").status_code == 401


# ------------------------------------------------------------------ attacks


def forged(tokens, header=None, claims=None, sig=None):
    h, c, s = parts(tokens["IdToken"])
    h.update(header or {})
    c.update(claims or {})
    return f"{b64(h)}.{b64(c)}.{s if sig is None else sig}"


@pytest.mark.parametrize("case", [
    "a1_alg_none", "a1_no_signature", "a2_hs256", "a3_expired", "a3_not_yet_valid", "a3_no_exp",
    "a4_wrong_issuer", "a4_tampered_claims", "a5_unknown_kid", "a5_jku", "a6_garbage",
    "a6_bad_base64", "a6_oversized", "a6_odd_claims", "access_token_as_id_token",
])
def test_jwt_attacks_get_401_never_500(auth_app, tokens, case):
    now = int(time.time())
    token = {
        "a1_alg_none": lambda: forged(tokens, {"alg": "none"}, sig=""),
        "a1_no_signature": lambda: forged(tokens, sig=""),
        "a2_hs256": lambda: forged(tokens, {"alg": "HS256"}),
        "a3_expired": lambda: forged(tokens, claims={"exp": now - 3600}),
        "a3_not_yet_valid": lambda: forged(tokens, claims={"nbf": now + 3600}),
        "a3_no_exp": lambda: forged(tokens, claims={"exp": None}),
        "a4_wrong_issuer": lambda: forged(tokens, claims={"iss": "https://evil.example"}),
        "a4_tampered_claims": lambda: forged(tokens, claims={"cognito:username": "admin"}),
        "a5_unknown_kid": lambda: forged(tokens, {"kid": "../../etc/passwd"}),
        "a5_jku": lambda: forged(tokens, {"jku": "https://evil.example/jwks.json"}),
        "a6_garbage": lambda: "not-a-token",
        "a6_bad_base64": lambda: "e30!.e30!.e30!",
        "a6_oversized": lambda: "a" * 9000 + ".b.c",
        "a6_odd_claims": lambda: f"{b64({'alg': 'RS256'})}.{b64([1, 2, 3])}.AAAA",
        "access_token_as_id_token": lambda: tokens["AccessToken"],
    }[case]()
    r = auth_app.get("/test/protected", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, r.text
    assert r.json() == {"message": "Unauthorized"}
    assert token not in r.text


def test_missing_token_is_401(auth_app):
    assert auth_app.get("/test/protected").status_code == 401


def test_a7_api_key_route(auth_app):
    key = auth_app.credentials()["api_key"]
    assert auth_app.get("/test/keyed").status_code == 403
    r = auth_app.get("/test/keyed", headers={"x-api-key": key})
    assert r.status_code == 200
    assert r.json()["apiKey"] == key
    assert auth_app.get("/test/open").status_code == 200


# ------------------------------------------------------------------ Lambda authorizer


def test_lambda_authorizer_allows_one_path_denies_another_and_caches(auth_app):
    h = {"Authorization": "alice"}
    r1 = auth_app.get("/test/gate/allowed", headers=h)
    assert r1.status_code == 200, r1.text
    a1 = r1.json()["authorizer"]
    assert a1["principalId"] == "user-alice"
    assert a1["tier"] == "gold"
    # A cache hit: the authorizer is not called again, so its counter
    # (delivered in the context) does not move.
    r2 = auth_app.get("/test/gate/allowed/again", headers=h)
    assert r2.status_code == 200
    assert r2.json()["authorizer"]["calls"] == a1["calls"]
    denied = auth_app.get("/test/gate/denied", headers=h)
    assert denied.status_code == 403
    assert "explicit deny" in denied.json()["Message"]
    # Another token is another cache entry: the authorizer runs again.
    r3 = auth_app.get("/test/gate/allowed", headers={"Authorization": "bob"})
    assert int(r3.json()["authorizer"]["calls"]) > int(a1["calls"])
    assert auth_app.get("/test/gate/allowed", headers={"Authorization": "reject"}).status_code == 401
    assert auth_app.get("/test/gate/allowed").status_code == 401


# ------------------------------------------------------------------ Invoke API


def test_invoke_api_requires_box_signature(auth_app):
    # Unsigned, even from loopback (no --dev).
    r = auth_app.post("/2015-03-31/functions/whoami/invocations", data=b"{}")
    assert r.status_code == 403
    # Signed with the box's credentials (boto3).
    resp, _ = auth_app.invoke("whoami", {})
    assert resp["StatusCode"] == 200
    # Signed with other credentials.
    import boto3
    from botocore.exceptions import ClientError
    bad = boto3.client("lambda", endpoint_url=auth_app.base_url, region_name="us-east-1",
                       aws_access_key_id="AKIAOTHER0000000000", aws_secret_access_key="x" * 40,
                       verify=auth_app.verify)
    with pytest.raises(ClientError) as info:
        bad.invoke(FunctionName="whoami", Payload=b"{}")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_dev_mode_allows_unsigned_loopback(esb_up):
    server = esb_up(AUTH_APP, "--dev")
    r = server.post("/2015-03-31/functions/whoami/invocations", data=b"{}")
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------ secrets


def test_secrets_files_are_private_and_never_logged(auth_app, tokens):
    for name in ("credentials.json", "jwt-signing-key.der", "users.json"):
        mode = (auth_app.data_dir / name).stat().st_mode & 0o777
        assert mode == 0o600, name
    # A9: brute force from this source is slowed down with Retry-After.
    statuses = [login(auth_app, "testuser", f"wrong-{i}").status_code for i in range(8)]
    assert 429 in statuses
    r = login(auth_app, "testuser", "wrong-again")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    log = auth_app.output()
    creds = auth_app.credentials()
    for secret in (tokens["IdToken"], tokens["RefreshToken"], PASSWORD, "wrong-again"):
        assert secret not in log
    # Generated secrets are printed once, at first start; never in request logs.
    assert log.count(creds["api_key"]) == 1
    assert log.count(creds["aws_secret_access_key"]) == 1


def test_configured_api_keys_and_login_path(esb_up):
    """API keys and the login path come from configuration: the configured
    keys are accepted, the generated one is not; a placeholder is refused."""
    custom = "team-key-7f3a9c2e41b8d605"
    server = esb_up(AUTH_APP, env={"ESB_API_KEYS": custom, "ESB_LOGIN_PATH": "/auth/login"})
    assert server.get("/test/keyed", headers={"x-api-key": custom}).status_code == 200
    generated = server.credentials()["api_key"]
    assert server.get("/test/keyed", headers={"x-api-key": generated}).status_code == 403
    # The login endpoint moved (unknown user: same answer as a wrong password).
    body = {"AuthParameters": {"USERNAME": "nobody", "PASSWORD": "x"}}
    r = server.post("/auth/login", json=body, headers={"x-api-key": custom})
    assert r.status_code == 400 and "NotAuthorized" in r.text, r.text
    # The configured key is never printed.
    assert custom not in server.output()


def test_placeholder_api_key_is_refused(tmp_path):
    proc = run_esb("up", "-t", str(AUTH_APP), "--http", "--listen", "127.0.0.1:0",
                   "--data-dir", str(tmp_path / "d"), timeout=60,
                   env={"ESB_API_KEYS": "changeme", "ESB_S3_LISTEN": "127.0.0.1:0",
                        "ESB_DYNAMODB_LISTEN": "127.0.0.1:0"})
    assert proc.returncode != 0
    assert "api" in (proc.stderr + proc.stdout).decode().lower()


# ------------------------------------------------------------------ issue 11: refresh-token attack


@pytest.fixture(scope="module")
def revocation_app(tmp_path_factory):
    """Its own instance: the brute-force tests above lock this source out."""
    yield from module_server(tmp_path_factory, AUTH_APP)


def test_refresh_token_is_no_bearer_token_and_dies_with_its_user(revocation_app):
    server = revocation_app
    added = run_esb("user", "add", "--data-dir", str(server.data_dir), "mallory",
                    input=(PASSWORD + "\n").encode())
    assert added.returncode == 0, added.stderr
    r = login(server, "mallory", PASSWORD)
    assert r.status_code == 200, r.text
    result = r.json()["AuthenticationResult"]
    refresh, id_token = result["RefreshToken"], result["IdToken"]
    # The refresh token is refused as a bearer token by the JWT authorizer
    # (no token_use rule) and by the Cognito authorizer.
    for path in ("/jwt", "/test/protected"):
        assert server.get(path, headers={"Authorization": f"Bearer {refresh}"}).status_code == 401, path
        assert server.get(path, headers={"Authorization": f"Bearer {id_token}"}).status_code == 200, path

    def refresh_status():
        return server.post("/user/auth/ver1.0", headers={"x-api-key": server.credentials()["api_key"]},
                           json={"AuthFlow": "REFRESH_TOKEN_AUTH",
                                 "AuthParameters": {"REFRESH_TOKEN": refresh}}).status_code

    assert refresh_status() == 200
    removed = run_esb("user", "remove", "--data-dir", str(server.data_dir), "mallory")
    assert removed.returncode == 0, removed.stderr
    # Removal revokes the refresh token and the tokens already issued.
    assert refresh_status() == 400
    assert server.get("/jwt", headers={"Authorization": f"Bearer {id_token}"}).status_code == 401
    mode = server.data_dir.stat().st_mode & 0o777
    assert mode & 0o077 == 0, f"data dir is {oct(mode)}"
