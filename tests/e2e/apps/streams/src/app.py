"""Functions of the streams e2e app: each leaves a file per record under
$OUT_DIR/<kind>/ so the test can see what ran (and what ran twice)."""

import json
import os


def _write(kind, name, body):
    d = os.path.join(os.environ["OUT_DIR"], kind)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, name)
    if os.path.exists(path):  # delivered again: keep both
        kind_dup = os.path.join(os.environ["OUT_DIR"], kind + "-again")
        os.makedirs(kind_dup, exist_ok=True)
        path = os.path.join(kind_dup, name + "-" + str(len(os.listdir(kind_dup))))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(body, f)
    os.replace(tmp, path)


def on_upload(event, context):
    import boto3

    table = boto3.resource("dynamodb").Table(os.environ["TABLE"])
    for r in event["Records"]:
        key = r["s3"]["object"]["key"]
        _write("s3", r["eventName"].replace(":", "_") + "-" + key.replace("/", "_"), r)
        if r["eventName"].startswith("ObjectCreated"):
            table.put_item(Item={"pk": key, "size": r["s3"]["object"]["size"]})


def on_order(event, context):
    for r in event["Records"]:
        _write("order", r["dynamodb"]["SequenceNumber"], r)
    _write("order-batch", context.aws_request_id, [r["dynamodb"]["SequenceNumber"] for r in event["Records"]])


def on_job(event, context):
    keys = [r["dynamodb"]["Keys"]["pk"]["S"] for r in event["Records"]]
    _write("job-attempt", context.aws_request_id, keys)
    if "bad" in keys:
        raise RuntimeError("bad job in batch")
    for r in event["Records"]:
        _write("job", r["dynamodb"]["Keys"]["pk"]["S"], r)


def tick(event, context):
    _write("tick", context.aws_request_id, event)


def tock(event, context):
    _write("tock", context.aws_request_id, event)


def tack(event, context):
    _write("tack", context.aws_request_id, event)


def tuck(event, context):
    _write("tuck", context.aws_request_id, event)
