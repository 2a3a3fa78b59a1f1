import json


def handler(event, context):
    params = event.get("pathParameters") or {}
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"pathParameters": params}),
    }
