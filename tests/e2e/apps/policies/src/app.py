"""One handler for every function of the policies app: the event names a
call to make with boto3 (the function's own credentials, from its
environment); the answer says what AWS's SDK saw."""

import os

import boto3
from botocore.exceptions import ClientError

TABLE = "iam-items"
BUCKET = "iam-files"


def _call(op, event):
    if op == "ddb_get":
        item = boto3.client("dynamodb").get_item(TableName=TABLE, Key={"id": {"S": event["id"]}})
        return item.get("Item")
    if op == "ddb_put":
        boto3.client("dynamodb").put_item(TableName=TABLE, Item={"id": {"S": event["id"]}})
        return "put"
    if op == "ddb_delete":
        boto3.client("dynamodb").delete_item(TableName=TABLE, Key={"id": {"S": event["id"]}})
        return "deleted"
    if op == "s3_get":
        return boto3.client("s3").get_object(Bucket=BUCKET, Key=event["key"])["Body"].read().decode()
    if op == "s3_put":
        boto3.client("s3").put_object(Bucket=BUCKET, Key=event["key"], Body=event["body"].encode())
        return "put"
    if op == "invoke":
        resp = boto3.client("lambda").invoke(FunctionName=event["function"], Payload=b'{"op": "hello"}')
        return resp["Payload"].read().decode()
    if op == "env":
        return {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    if op == "hello":
        return "hello from " + os.environ["AWS_LAMBDA_FUNCTION_NAME"]
    raise ValueError(f"unknown op {op!r}")


def handler(event, context):
    try:
        return {"ok": True, "result": _call(event.get("op"), event)}
    except ClientError as e:
        return {
            "ok": False,
            "code": e.response["Error"]["Code"],
            "message": e.response["Error"].get("Message", ""),
            "status": e.response["ResponseMetadata"]["HTTPStatusCode"],
        }
