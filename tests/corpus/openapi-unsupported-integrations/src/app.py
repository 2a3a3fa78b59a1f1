"""Corpus handler (written for ESB): answers with what API Gateway sent it,
so a test can check which function, route and stage served a request."""

import json
import os


def handler(event, context):
    event = event if isinstance(event, dict) else {}
    ctx = event.get("requestContext") or {}
    http = ctx.get("http") or {}
    body = {
        "function": context.function_name,
        "label": os.environ.get("LABEL", ""),
        "method": event.get("httpMethod") or http.get("method"),
        "path": event.get("path") or event.get("rawPath"),
        "route": event.get("resource") or event.get("routeKey"),
        "version": event.get("version", "1.0"),
        "pathParameters": event.get("pathParameters"),
        "stageVariables": event.get("stageVariables"),
        "authorizer": ctx.get("authorizer"),
        "input": event.get("input"),
    }
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
    }
