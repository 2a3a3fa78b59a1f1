"""Corpus handler using a module from a layer (written for ESB)."""

import json

from common import VERSION, shout


def handler(event, context):
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"layer": VERSION, "message": shout("hello"), "function": context.function_name}),
    }
