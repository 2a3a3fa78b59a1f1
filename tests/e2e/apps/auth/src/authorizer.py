"""TOKEN authorizer: allows /gate/allowed*, denies everything else. Counts
its own invocations so the tests can see cache hits."""

CALLS = 0


def handler(event, context):
    global CALLS
    CALLS += 1
    token = event.get("authorizationToken", "")
    if token == "reject":
        raise Exception("Unauthorized")
    arn = event["methodArn"]
    base = arn.split("/")[0] + "/*/GET/gate/"
    return {
        "principalId": "user-" + token,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": base + "allowed*"},
                {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": base + "denied*"},
            ],
        },
        "context": {"calls": CALLS, "tier": "gold"},
    }
