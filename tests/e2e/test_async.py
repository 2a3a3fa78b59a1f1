"""Asynchronous (`InvocationType=Event`) invocations through the durable
event queue, driven by boto3 as a user would: a burst is never dropped, a
failing function is retried and lands in its on-failure destination, a
kill -9 loses no accepted invocation, and a self-invoking loop is stopped at
the 17th hop. (docs/events.md)"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from botocore.exceptions import ClientError

from esb_helpers import APPS, run_esb, start_esb, wait_until

ASYNC_APP = APPS / "async"

# The first retry waits 60 s on AWS; the test setting shortens it.
ENV = {"ESB_EVENT_RETRY_DELAY_MS": "200",
       # The functions report through a host directory (OUT_DIR), which the
       # default worker sandbox hides from them (docs/runtime.md).
       "ESB_ISOLATION": "none"}


def _app(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the async app whose functions write under a fresh OUT_DIR."""
    out = tmp_path / "out"
    out.mkdir()
    app = tmp_path / "app"
    shutil.copytree(ASYNC_APP, app)
    t = app / "template.yaml"
    t.write_text(t.read_text().replace("@OUT_DIR@", str(out)))
    return t, out


def _ran(out: Path, kind: str) -> set[str]:
    d = out / kind
    return {p.name for p in d.iterdir() if not p.name.startswith(".")} if d.exists() else set()


def _fire(server, n: int, threads: int = 16) -> tuple[list[str], list[int]]:
    """n Event invocations of Count in parallel: (accepted request ids, other statuses)."""
    client = server.lambda_client(max_pool_connections=threads)

    def one(i):
        try:
            r = client.invoke(FunctionName="Count", InvocationType="Event",
                              Payload=json.dumps({"i": i}))
            return r["StatusCode"], r["ResponseMetadata"]["RequestId"]
        except ClientError as e:
            return e.response["ResponseMetadata"]["HTTPStatusCode"], None
        except Exception:  # connection refused / reset once esb is killed
            return -1, None

    with ThreadPoolExecutor(threads) as ex:
        results = list(ex.map(one, range(n)))
    return [rid for s, rid in results if s == 202], [s for s, _ in results if s != 202]


def _queue(server) -> dict:
    r = requests.get(server.url("/_esb/status/events"), verify=server.verify, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_burst_of_400_event_invocations_all_run(esb_up, tmp_path):
    template, out = _app(tmp_path)
    server = esb_up(template, env=ENV)
    accepted, others = _fire(server, 400)
    assert others == [], f"not accepted: {others}"
    assert len(set(accepted)) == 400
    wait_until(lambda: _ran(out, "count") >= set(accepted), timeout=180,
               what="all 400 Event invocations ran")
    assert _ran(out, "count") == set(accepted), "ran exactly once each"
    stats = wait_until(lambda: (s := _queue(server))["depth"] == 0 and s, timeout=30,
                       what="queue drained")
    assert stats["completed"] >= 400 and stats["failed"] == 0, stats
    ps = run_esb("ps", "--data-dir", str(server.data_dir))
    assert ps.returncode == 0, ps.stderr
    assert b"event queue: 0 held" in ps.stdout, ps.stdout


def test_failing_event_is_retried_then_sent_to_on_failure_destination(esb_up, tmp_path):
    template, out = _app(tmp_path)
    server = esb_up(template, env=ENV)
    r = server.lambda_client().invoke(FunctionName="Failer", InvocationType="Event",
                                      Payload=json.dumps({"order": 42}))
    assert r["StatusCode"] == 202
    rid = r["ResponseMetadata"]["RequestId"]
    wait_until(lambda: _ran(out, "onfail"), timeout=60, what="on-failure destination invoked")
    # MaximumRetryAttempts: 1 -> two attempts, both with the event's request id.
    attempts = _ran(out, "fail")
    assert len(attempts) == 2 and all(a.startswith(rid) for a in attempts), attempts
    [name] = _ran(out, "onfail")
    record = json.loads((out / "onfail" / name).read_text())
    assert record["requestContext"]["requestId"] == rid
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 2
    assert record["requestPayload"] == {"order": 42}
    assert record["responsePayload"]["errorMessage"] == "always fails"


def test_kill_9_during_a_burst_loses_no_accepted_invocation(esb_up, tmp_path):
    template, out = _app(tmp_path)
    server = esb_up(template, env=ENV)
    client = server.lambda_client(max_pool_connections=8)
    accepted: list[str] = []

    def one(i):
        try:
            r = client.invoke(FunctionName="Count", InvocationType="Event",
                              Payload=json.dumps({"i": i}))
            if r["StatusCode"] == 202:
                accepted.append(r["ResponseMetadata"]["RequestId"])
        except Exception:
            pass

    with ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(one, i) for i in range(600)]
        wait_until(lambda: len(accepted) >= 100, timeout=60, what="100 accepted")
        # kill -9 esb and its workers mid-burst.
        server._kill_everything(server.worker_pids())
        server.stopped_rc = -9
        for f in futures:
            f.result()
    accepted_ids = set(accepted)
    assert len(accepted_ids) >= 100
    again = start_esb(template, server.data_dir.parent, env=ENV)
    try:
        wait_until(lambda: _ran(out, "count") >= accepted_ids, timeout=180,
                   what=f"all {len(accepted_ids)} accepted invocations ran after restart")
    finally:
        rc = again.stop()
    assert rc == 0, again.output()[-3000:]


def test_self_invoking_loop_is_stopped_at_the_17th_hop(esb_up, tmp_path):
    template, out = _app(tmp_path)
    server = esb_up(template, env=ENV)
    r = server.lambda_client().invoke(FunctionName="Hop", InvocationType="Event",
                                      Payload=json.dumps({"n": 0}))
    assert r["StatusCode"] == 202
    wait_until(lambda: _ran(out, "hop-stopped"), timeout=120, what="the loop was stopped")
    hops = sorted(_ran(out, "hop"))
    assert hops == [f"{n:03d}" for n in range(16)], hops
    stopped = json.loads((out / "hop-stopped" / "015").read_text())
    assert "RecursiveInvocationException" in stopped["error"], stopped
    assert "recursive invocation loop stopped" in server.output()


def test_schedules_send_the_eventbridge_payload_and_trigger_fires_one(esb_up, tmp_path):
    template, out = _app(tmp_path)
    # 60x clock: rate(1 minute) fires about every second.
    server = esb_up(template, env={**ENV, "ESB_SCHEDULE_TEST_SPEEDUP": "60"})
    wait_until(lambda: len(_ran(out, "tick")) >= 2, timeout=60, what="two scheduled runs")
    ev = json.loads((out / "tick" / sorted(_ran(out, "tick"))[0]).read_text())
    assert ev["detail-type"] == "Scheduled Event"
    assert ev["source"] == "aws.events"
    assert ev["detail"] == {}
    assert ev["resources"] == ["arn:aws:events:us-east-1:123456789012:rule/EveryMinute"]
    # The disabled ScheduleV2 never fires on its own, but can be triggered.
    assert _ran(out, "tock") == set()
    r = run_esb("events", "trigger", "Tock", "Nightly", "-t", str(server.template),
                "--data-dir", str(server.data_dir))
    assert r.returncode == 0, r.stderr
    wait_until(lambda: _ran(out, "tock"), timeout=30, what="the triggered schedule ran")
    [name] = _ran(out, "tock")
    assert json.loads((out / "tock" / name).read_text()) == {"job": "nightly"}
    assert name.encode() in r.stdout, "trigger prints the request id"
    bad = run_esb("events", "trigger", "Tock", "Nope", "-t", str(server.template),
                  "--data-dir", str(server.data_dir))
    assert bad.returncode != 0 and b"Nightly" in bad.stderr, bad.stderr


def _s3(server):
    import boto3
    from botocore.config import Config

    creds = server.credentials()
    inst = json.loads((server.data_dir / "instance.json").read_text())
    return boto3.client(
        "s3", endpoint_url=inst["s3_url"], region_name="us-east-1",
        aws_access_key_id=creds["aws_access_key_id"],
        aws_secret_access_key=creds["aws_secret_access_key"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 0}),
    )


def test_s3_upload_and_delete_notify_the_function(esb_up, tmp_path):
    template, out = _app(tmp_path)
    server = esb_up(template, env=ENV)
    s3 = _s3(server)
    s3.put_object(Bucket="esb-async-uploads", Key="in/report 1.txt", Body=b"hello")
    s3.put_object(Bucket="esb-async-uploads", Key="in/skip.bin", Body=b"x")  # filtered out
    wait_until(lambda: _ran(out, "upload"), timeout=30, what="S3 notification delivered")
    [name] = _ran(out, "upload")
    rec = json.loads((out / "upload" / name).read_text())
    assert rec["eventSource"] == "aws:s3" and rec["eventName"] == "ObjectCreated:Put"
    assert rec["s3"]["bucket"]["name"] == "esb-async-uploads"
    assert rec["s3"]["object"]["key"] == "in/report+1.txt"
    assert rec["s3"]["object"]["size"] == 5
    s3.delete_object(Bucket="esb-async-uploads", Key="in/skip.bin")
    wait_until(lambda: any(n.startswith("ObjectRemoved_Delete") for n in _ran(out, "upload")),
               timeout=30, what="delete notification delivered")
    assert len(_ran(out, "upload")) == 2, _ran(out, "upload")
