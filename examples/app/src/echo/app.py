import json


def handler(event, context):
    """Returns the whole event it received, so tests can check it field by field."""
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"event": event, "function": context.function_name}),
    }
