import json
import os

import boto3

s3 = boto3.client("s3")
dynamodb = boto3.client("dynamodb")


def handler(event, context):
    key = event["pathParameters"]["key"]
    bucket = os.environ["BUCKET_NAME"]
    table = os.environ["TABLE_NAME"]
    method = event["requestContext"]["http"]["method"]
    if method == "POST":
        body = event.get("body") or ""
        s3.put_object(Bucket=bucket, Key=key, Body=body.encode())
        dynamodb.put_item(TableName=table, Item={"pk": {"S": key}, "size": {"N": str(len(body))}})
        return {"statusCode": 201, "body": json.dumps({"stored": key})}
    obj = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    item = dynamodb.get_item(TableName=table, Key={"pk": {"S": key}}).get("Item")
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"key": key, "object": obj, "item": item}),
    }
