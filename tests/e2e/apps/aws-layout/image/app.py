import json
import os

import boto3


def handler(event, context):
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({
            "bootstrap": os.environ.get("LAYOUT_BOOTSTRAP", ""),
            "handler": os.environ.get("_HANDLER", ""),
            "task_root": os.environ.get("LAMBDA_TASK_ROOT", ""),
            "runtime_api": bool(os.environ.get("AWS_LAMBDA_RUNTIME_API")),
            "boto3": boto3.__version__,
        }),
    }
