import json
import os


def handler(event, context):
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({
            "message": os.environ.get("GREETING", ""),
            "function": context.function_name,
            "handler": os.environ.get("_HANDLER", ""),
            "task_root": os.environ.get("LAMBDA_TASK_ROOT", ""),
            "input": event.get("input"),
        }),
    }
