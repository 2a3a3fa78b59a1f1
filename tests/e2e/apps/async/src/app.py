"""Functions of the async e2e app: each leaves a file per invocation under
$OUT_DIR/<kind>/ so the test can count what ran."""

import json
import os
import time
import uuid


def _write(kind, name, body):
    d = os.path.join(os.environ["OUT_DIR"], kind)
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, "." + name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(body, f)
    os.replace(tmp, os.path.join(d, name))


def count(event, context):
    _write("count", context.aws_request_id, event)
    return {"ok": True}


def fail(event, context):
    _write("fail", f"{context.aws_request_id}-{uuid.uuid4()}", {"t": time.time()})
    raise RuntimeError("always fails")


def record(event, context):
    _write("onfail", context.aws_request_id, event)
    return {}


def hop(event, context):
    """Invokes itself (InvocationType Event) through the Invoke API: the chain
    header (_X_AMZN_TRACE_ID, sent on by botocore) travels with each call, so
    ESB refuses the 17th hop."""
    import boto3
    from botocore.config import Config

    n = int(event.get("n", 0))
    _write("hop", f"{n:03d}", {"trace": os.environ.get("_X_AMZN_TRACE_ID")})
    client = boto3.client("lambda", config=Config(retries={"max_attempts": 0}, read_timeout=60))
    try:
        client.invoke(FunctionName="Hop", InvocationType="Event",
                      Payload=json.dumps({"n": n + 1}))
    except Exception as e:  # the refusal ends the chain
        _write("hop-stopped", f"{n:03d}", {"error": str(e)})
    return {"n": n}


def tick(event, context):
    _write("tick", context.aws_request_id, event)


def tock(event, context):
    _write("tock", context.aws_request_id, event)


def on_upload(event, context):
    for r in event["Records"]:
        name = r["eventName"].replace(":", "_") + "-" + r["s3"]["object"]["key"].replace("/", "_")
        _write("upload", name, r)
