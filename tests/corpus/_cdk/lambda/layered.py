"""Handler that needs the layer (written for ESB)."""

import json

from greeting import GREETING


def handler(event, context):
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"greeting": GREETING, "function": context.function_name}),
    }
