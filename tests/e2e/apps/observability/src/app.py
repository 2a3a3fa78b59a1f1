"""Handlers of the observability e2e app."""

import time

import boto3


def chatty(event, context):
    tag = (event.get("queryStringParameters") or {}).get("tag", "none")
    print(f"chatty says hello tag={tag}")
    print(f"[ERROR] chatty pretends to fail tag={tag}")
    return {"statusCode": 200, "body": tag}


def writer(event, context):
    """Writes through the `logs` client as function code on AWS would."""
    logs = boto3.client("logs")
    group = event.get("group", "/aws/lambda/writer")
    if event.get("create"):
        logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="custom-stream")
    now = int(time.time() * 1000)
    logs.put_log_events(
        logGroupName=group,
        logStreamName="custom-stream",
        logEvents=[{"timestamp": now + i, "message": m} for i, m in enumerate(event["messages"])],
    )
    return {"written": len(event["messages"])}
