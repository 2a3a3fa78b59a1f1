"""DynamoDB Streams triggers, the `dynamodbstreams` API, EventBridge rules and
Scheduler schedules as resources, and S3 multi-delete notifications, driven
by boto3 against the real `esb up` (docs/events.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
from botocore.config import Config

from esb_helpers import APPS, start_esb, wait_until

STREAMS_APP = APPS / "streams"

# Failed stream batches are retried after 1 s on AWS-like settings; shorter here.
ENV = {"ESB_EVENT_RETRY_DELAY_MS": "200", "ESB_STREAM_RETRY_DELAY_MS": "100",
       # The functions report through a host directory (OUT_DIR), which the
       # default worker sandbox hides from them (docs/runtime.md).
       "ESB_ISOLATION": "none"}


def _app(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    out.mkdir()
    app = tmp_path / "app"
    shutil.copytree(STREAMS_APP, app)
    t = app / "template.yaml"
    t.write_text(t.read_text().replace("@OUT_DIR@", str(out)))
    return t, out


def _ran(out: Path, kind: str) -> set[str]:
    d = out / kind
    return {p.name for p in d.iterdir() if not p.name.endswith(".tmp")} if d.exists() else set()


def _client(server, service: str, url_key: str):
    creds = server.credentials()
    inst = json.loads((server.data_dir / "instance.json").read_text())
    return boto3.client(
        service, endpoint_url=inst[url_key], region_name="us-east-1",
        aws_access_key_id=creds["aws_access_key_id"],
        aws_secret_access_key=creds["aws_secret_access_key"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 0}),
    )


def _put(ddb, table: str, pk: str, **attrs):
    item = {"pk": {"S": pk}, **{k: {"N": str(v)} for k, v in attrs.items()}}
    ddb.put_item(TableName=table, Item=item)


def test_upload_writes_an_order_whose_stream_triggers_another_function(esb_up, tmp_path):
    template, out = _app(tmp_path)
    server = esb_up(template, env=ENV)
    s3 = _client(server, "s3", "s3_url")
    s3.put_object(Bucket="esb-streams-uploads", Key="in/a.txt", Body=b"hello")
    wait_until(lambda: _ran(out, "order"), timeout=60, what="stream record delivered")
    [seq] = _ran(out, "order")
    rec = json.loads((out / "order" / seq).read_text())
    assert rec["eventSource"] == "aws:dynamodb" and rec["eventName"] == "INSERT"
    assert rec["awsRegion"] == "us-east-1"
    assert rec["eventSourceARN"].startswith("arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/")
    assert rec["dynamodb"]["Keys"] == {"pk": {"S": "in/a.txt"}}
    assert rec["dynamodb"]["NewImage"] == {"pk": {"S": "in/a.txt"}, "size": {"N": "5"}}
    assert "OldImage" not in rec["dynamodb"]
    assert rec["dynamodb"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"

    # Changes to one key arrive in order, with both images on MODIFY.
    ddb = _client(server, "dynamodb", "dynamodb_url")
    for n in range(1, 6):
        _put(ddb, "orders", "k", n=n)
    ddb.delete_item(TableName="orders", Key={"pk": {"S": "k"}})
    wait_until(lambda: len(_ran(out, "order")) >= 7, timeout=60, what="7 stream records")
    recs = [json.loads((out / "order" / s).read_text()) for s in sorted(_ran(out, "order"))]
    k = [r for r in recs if r["dynamodb"]["Keys"]["pk"]["S"] == "k"]
    assert [r["eventName"] for r in k] == ["INSERT"] + ["MODIFY"] * 4 + ["REMOVE"]
    assert [r["dynamodb"]["NewImage"]["n"]["N"] for r in k[:5]] == ["1", "2", "3", "4", "5"]
    assert k[1]["dynamodb"]["OldImage"]["n"]["N"] == "1"
    assert k[5]["dynamodb"]["OldImage"]["n"]["N"] == "5" and "NewImage" not in k[5]["dynamodb"]
    assert not _ran(out, "order-again"), "no record delivered twice"


def test_stream_checkpoint_survives_a_restart(esb_up, tmp_path):
    template, out = _app(tmp_path)
    server = esb_up(template, env=ENV)
    ddb = _client(server, "dynamodb", "dynamodb_url")
    for i in range(12):
        _put(ddb, "orders", f"before-{i}")
    wait_until(lambda: len(_ran(out, "order")) >= 12, timeout=60, what="12 records before restart")
    assert server.stop() == 0
    again = start_esb(server.template, server.data_dir.parent, env=ENV)
    try:
        ddb = _client(again, "dynamodb", "dynamodb_url")
        for i in range(5):
            _put(ddb, "orders", f"after-{i}")
        # Records arrive in order: once a marker written last has arrived, a
        # repeat of an earlier batch would have arrived before it.
        _put(ddb, "orders", "marker")
        wait_until(lambda: len(_ran(out, "order")) >= 18, timeout=60, what="records after restart")
    finally:
        rc = again.stop()
    assert rc == 0, again.output()[-3000:]
    keys = sorted(json.loads((out / "order" / s).read_text())["dynamodb"]["Keys"]["pk"]["S"]
                  for s in _ran(out, "order"))
    assert keys == sorted([f"before-{i}" for i in range(12)] + [f"after-{i}" for i in range(5)] + ["marker"])
    assert not _ran(out, "order-again"), f"repeated: {_ran(out, 'order-again')}"


def test_kill_9_during_stream_delivery_loses_no_record(esb_up, tmp_path):
    template, out = _app(tmp_path)
    server = esb_up(template, env=ENV)
    ddb = _client(server, "dynamodb", "dynamodb_url")
    for i in range(40):
        _put(ddb, "orders", f"k-{i:02d}")
    wait_until(lambda: len(_ran(out, "order")) >= 1, timeout=60, what="delivery started")
    # kill -9 esb and its workers while batches are being delivered.
    server._kill_everything(server.worker_pids())
    server.stopped_rc = -9
    again = start_esb(server.template, server.data_dir.parent, env=ENV)
    try:
        _put(_client(again, "dynamodb", "dynamodb_url"), "orders", "marker")
        wait_until(lambda: "marker" in {
            json.loads((out / "order" / s).read_text())["dynamodb"]["Keys"]["pk"]["S"]
            for s in _ran(out, "order")}, timeout=60, what="the marker after restart")
    finally:
        rc = again.stop()
    assert rc == 0, again.output()[-3000:]
    keys = {json.loads((out / "order" / s).read_text())["dynamodb"]["Keys"]["pk"]["S"]
            for s in _ran(out, "order")}
    # At least once: every record arrived (a batch cut by the kill may repeat).
    assert keys == {f"k-{i:02d}" for i in range(40)} | {"marker"}


def test_failing_batch_is_bisected_given_up_and_the_stream_goes_on(esb_up, tmp_path):
    template, out = _app(tmp_path)
    server = esb_up(template, env=ENV)
    ddb = _client(server, "dynamodb", "dynamodb_url")
    for pk in ["j1", "j2", "bad", "j3"]:
        _put(ddb, "jobs", pk)
    wait_until(lambda: {"j1", "j2", "j3"} <= _ran(out, "job"), timeout=60,
               what="the good records of the failing batch")
    _put(ddb, "jobs", "j4")
    wait_until(lambda: "j4" in _ran(out, "job"), timeout=60, what="later records still flow")
    assert "bad" not in _ran(out, "job")
    attempts = [json.loads((out / "job-attempt" / a).read_text()) for a in _ran(out, "job-attempt")]
    # The batch alone holding "bad" was tried twice (MaximumRetryAttempts: 1).
    assert sum(1 for a in attempts if a == ["bad"]) == 2, attempts
    assert "stream batch given up" in server.output()
    rec = json.loads((out / "job" / "j1").read_text())
    assert rec["dynamodb"]["StreamViewType"] == "KEYS_ONLY" and "NewImage" not in rec["dynamodb"]


def test_dynamodbstreams_client_reads_the_stream(esb_up, tmp_path):
    template, _ = _app(tmp_path)
    server = esb_up(template, env=ENV)
    ddb = _client(server, "dynamodb", "dynamodb_url")
    _put(ddb, "orders", "x", n=1)
    _put(ddb, "orders", "x", n=2)
    table = ddb.describe_table(TableName="orders")["Table"]
    assert table["StreamSpecification"] == {"StreamEnabled": True,
                                            "StreamViewType": "NEW_AND_OLD_IMAGES"}
    arn = table["LatestStreamArn"]
    streams = _client(server, "dynamodbstreams", "dynamodb_url")
    listed = streams.list_streams(TableName="orders")["Streams"]
    assert [s["StreamArn"] for s in listed] == [arn]
    desc = streams.describe_stream(StreamArn=arn)["StreamDescription"]
    assert desc["StreamStatus"] == "ENABLED" and desc["TableName"] == "orders"
    shard = desc["Shards"][0]["ShardId"]
    it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard,
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    got = streams.get_records(ShardIterator=it, Limit=10)
    names = [(r["eventName"], r["dynamodb"]["NewImage"]["n"]["N"]) for r in got["Records"]]
    assert names == [("INSERT", "1"), ("MODIFY", "2")]
    assert "NextShardIterator" in got
    # The ARN `!GetAtt Orders.StreamArn` gives a function (fixed label) works too.
    templ = "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/1970-01-01T00:00:00.000"
    assert streams.describe_stream(StreamArn=templ)["StreamDescription"]["TableName"] == "orders"


def test_eventbridge_rule_and_scheduler_schedule_fire_a_disabled_rule_does_not(esb_up, tmp_path):
    template, out = _app(tmp_path)
    # 60x clock: rate(1 minute) fires about every second.
    server = esb_up(template, env={**ENV, "ESB_SCHEDULE_TEST_SPEEDUP": "60"})
    wait_until(lambda: len(_ran(out, "tick")) >= 2, timeout=60, what="two runs of the rule")
    for name in _ran(out, "tick"):
        assert json.loads((out / "tick" / name).read_text()) == {"from": "rule"}
    wait_until(lambda: _ran(out, "tack"), timeout=60, what="the Scheduler schedule ran")
    [first, *_] = sorted(_ran(out, "tack"))
    assert json.loads((out / "tack" / first).read_text()) == {"from": "scheduler"}
    # InputPath: only that part of EventBridge's scheduled event.
    wait_until(lambda: _ran(out, "tuck"), timeout=60, what="the InputPath rule ran")
    [first, *_] = sorted(_ran(out, "tuck"))
    assert json.loads((out / "tuck" / first).read_text()) == [
        "arn:aws:events:us-east-1:123456789012:rule/Detailed"]
    assert _ran(out, "tock") == set(), "the DISABLED rule fired"


def test_delete_objects_notifies_once_per_key(esb_up, tmp_path):
    template, out = _app(tmp_path)
    server = esb_up(template, env=ENV)
    s3 = _client(server, "s3", "s3_url")
    keys = ["d/one.txt", "d/two.txt", "d/three.txt"]
    for k in keys:
        s3.put_object(Bucket="esb-streams-uploads", Key=k, Body=b"x")
    resp = s3.delete_objects(Bucket="esb-streams-uploads",
                             Delete={"Objects": [{"Key": k} for k in keys]})
    assert sorted(d["Key"] for d in resp["Deleted"]) == sorted(keys)
    want = {"ObjectRemoved_Delete-" + k.replace("/", "_") for k in keys}
    wait_until(lambda: want <= _ran(out, "s3"), timeout=60, what="three delete notifications")
    rec = json.loads((out / "s3" / "ObjectRemoved_Delete-d_two.txt").read_text())
    assert rec["s3"]["object"]["key"] == "d/two.txt"
    assert rec["s3"]["bucket"]["name"] == "esb-streams-uploads"
    assert not _ran(out, "s3-again")


RELOAD_BASE = """\
AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.11
    CodeUri: src/
    Timeout: 10
    Environment:
      Variables:
        OUT_DIR: "@OUT_DIR@"
Resources:
  Tick:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.tick
"""

RELOAD_ADDED = """\
  Uploads:
    Type: AWS::S3::Bucket
    Properties:
      BucketName: esb-reload-uploads
  Orders:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: reload-orders
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions:
        - {AttributeName: pk, AttributeType: S}
      KeySchema:
        - {AttributeName: pk, KeyType: HASH}
      StreamSpecification:
        StreamViewType: NEW_IMAGE
  OnUpload:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.on_upload
      Environment:
        Variables:
          TABLE: !Ref Orders
      Events:
        Created:
          Type: S3
          Properties:
            Bucket: !Ref Uploads
            Events: s3:ObjectCreated:*
  OnOrder:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.on_order
      Events:
        Changes:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt Orders.StreamArn
            StartingPosition: TRIM_HORIZON
  EveryMinute:
    Type: AWS::Events::Rule
    Properties:
      ScheduleExpression: rate(1 minute)
      Targets:
        - Id: tick
          Arn: !GetAtt Tick.Arn
          Input: '{"from": "reload"}'
"""


def test_template_reload_applies_new_buckets_tables_and_event_sources(esb_up, tmp_path):
    """An edit that adds a bucket with a notification, a table with a stream
    trigger and a schedule takes effect without a restart (docs/events.md);
    removing the schedule again stops it."""
    template, out = _app(tmp_path)
    template.write_text(RELOAD_BASE.replace("@OUT_DIR@", str(out)))
    server = esb_up(template, env={**ENV, "ESB_SCHEDULE_TEST_SPEEDUP": "60"})
    template = server.template  # esb_up serves a copy: edit that one
    s3 = _client(server, "s3", "s3_url")
    assert "esb-reload-uploads" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]

    template.write_text((RELOAD_BASE + RELOAD_ADDED).replace("@OUT_DIR@", str(out)))
    wait_until(lambda: "schedules reloaded: 1" in server.output(), timeout=30,
               what="the reload of the schedules")
    wait_until(lambda: _ran(out, "tick"), timeout=60, what="the new schedule ran")
    s3.put_object(Bucket="esb-reload-uploads", Key="new.txt", Body=b"x")
    wait_until(lambda: _ran(out, "s3"), timeout=60, what="the new notification ran")
    wait_until(lambda: _ran(out, "order"), timeout=60, what="the new table's stream trigger ran")
    [record] = [json.loads((out / "order" / n).read_text()) for n in _ran(out, "order")]
    assert record["dynamodb"]["NewImage"]["pk"] == {"S": "new.txt"}

    # The rule's input changed: the old one stops, the new one runs.
    template.write_text((RELOAD_BASE + RELOAD_ADDED.replace('"reload"', '"second"'))
                        .replace("@OUT_DIR@", str(out)))

    def inputs():
        return [json.loads((out / "tick" / n).read_text())["from"] for n in _ran(out, "tick")]

    wait_until(lambda: "second" in inputs(), timeout=60, what="the changed rule ran")
    before = inputs().count("reload")
    # At 60x, rate(1 minute) fires every second: three more runs of the new
    # rule leave time for the old one to show if it still ran.
    wait_until(lambda: inputs().count("second") >= 4, timeout=60, what="the changed rule ran again")
    assert inputs().count("reload") <= before + 1, f"the old rule still fires: {inputs()}"
