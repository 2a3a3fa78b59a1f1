import json
import os

import boto3

lambda_client = boto3.client("lambda")


def handler(event, context):
    """Invokes another function of the same app through the Lambda API."""
    target = os.environ["TARGET_FUNCTION"]
    resp = lambda_client.invoke(FunctionName=target, Payload=json.dumps({"from": context.function_name}))
    payload = json.loads(resp["Payload"].read())
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"target": target, "status": resp["StatusCode"], "response": payload}),
    }
