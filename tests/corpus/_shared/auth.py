"""Corpus Lambda authorizers (written for ESB).

Token `allow` -> Allow, `deny` -> explicit Deny (403), anything else ->
"Unauthorized" (401), as a user's authorizer typically behaves."""


def _policy(effect, resource):
    return {
        "principalId": "user-1",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
        "context": {"tier": "gold"},
    }


def _decide(value, resource):
    value = (value or "").removeprefix("Bearer ").strip()
    if value == "allow":
        return _policy("Allow", resource)
    if value == "deny":
        return _policy("Deny", resource)
    raise Exception("Unauthorized")


def token(event, context):
    """REST TOKEN authorizer."""
    return _decide(event.get("authorizationToken"), event.get("methodArn", "*"))


def request(event, context):
    """REST REQUEST (payload 1.0) authorizer: header `x-token` or query `token`."""
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    query = event.get("queryStringParameters") or {}
    return _decide(headers.get("x-token") or query.get("token"), event.get("methodArn", "*"))


def simple(event, context):
    """HTTP API REQUEST authorizer, payload 2.0 with simple responses."""
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    ok = headers.get("authorization", "").removeprefix("Bearer ").strip() == "allow"
    return {"isAuthorized": ok, "context": {"tier": "gold"}}
