"""Probe: what a function sees of the data services, with no endpoint code."""

import json
import os

import boto3


def probe(event, context):
    s3 = boto3.client("s3")
    dynamodb = boto3.client("dynamodb")
    bucket = os.environ["BUCKET_NAME"]
    s3.put_object(Bucket=bucket, Key="probe/from-function.txt", Body=b"written by a function")
    body = s3.get_object(Bucket=bucket, Key="probe/from-function.txt")["Body"].read().decode()
    dynamodb.put_item(TableName=os.environ["NOTES_TABLE"], Item={"id": {"S": "probe"}, "by": {"S": "function"}})
    item = dynamodb.get_item(TableName=os.environ["NOTES_TABLE"], Key={"id": {"S": "probe"}})["Item"]
    env = {k: os.environ.get(k) for k in (
        "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_LAMBDA",
        "AWS_REGION", "AWS_ACCESS_KEY_ID",
    )}
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({
            "env": env,
            "object": body,
            "item": item,
            "buckets": sorted(b["Name"] for b in s3.list_buckets()["Buckets"]),
            "tables": sorted(dynamodb.list_tables()["TableNames"]),
        }),
    }
