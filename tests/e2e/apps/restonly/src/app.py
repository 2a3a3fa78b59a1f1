"""Handlers of the REST-only e2e app: each one returns a response shape the
gateway has to map (API Gateway REST proxy integration, payload v1)."""

import base64
import json

# The 8-byte PNG signature plus bytes that are not valid UTF-8.
PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x80binary"


def echo(event, context):
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"event": event, "function": context.function_name}),
    }


def multi_headers(event, context):
    return {
        "statusCode": 201,
        "headers": {"Content-Type": "text/plain", "X-Single": "one"},
        "multiValueHeaders": {
            "Set-Cookie": ["a=1; Path=/", "b=2; Path=/"],
            "X-Multi": ["x", "y"],
        },
        "body": "created",
    }


def binary(event, context):
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "image/png"},
        "body": base64.b64encode(PNG_BYTES).decode(),
        "isBase64Encoded": True,
    }


def no_status(event, context):
    return {"body": "no status code"}


def malformed(event, context):
    return {"statusCode": 200, "body": "x", "unexpectedKey": 1}
