import json


def whoami(event, context):
    rc = event.get("requestContext", {})
    return {"statusCode": 200, "body": json.dumps({
        "authorizer": rc.get("authorizer"),
        "apiKey": rc.get("identity", {}).get("apiKey"),
    })}
