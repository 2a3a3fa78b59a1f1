"""Handlers of the HTTP-API-only e2e app: response shapes of payload format
2.0, including the ones API Gateway infers from a bare return value."""

import base64
import json
import time

BINARY_BYTES = b"\x00\x01\x02\xff\xfe\xfdnot utf-8 \x80\x81"


def echo(event, context):
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"event": event, "function": context.function_name}),
    }


def bare_string(event, context):
    return "Hello from Lambda!"


def bare_object(event, context):
    return {"message": "Hello from Lambda!", "n": 3}


def cookies(event, context):
    return {
        "statusCode": 200,
        "headers": {"content-type": "text/plain", "x-a": "1,2"},
        "cookies": ["session=abc; HttpOnly", "theme=dark"],
        "body": "with cookies",
    }


def binary(event, context):
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/octet-stream"},
        "body": base64.b64encode(BINARY_BYTES).decode(),
        "isBase64Encoded": True,
    }


class OrderRejected(Exception):
    pass


def fail(event, context):
    raise OrderRejected("order 7 rejected")


def slow(event, context):
    time.sleep(5)
    return "woke up"
