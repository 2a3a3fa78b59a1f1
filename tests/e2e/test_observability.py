"""Observability: `/metrics` scraped by a real Prometheus-compatible server
(Debian's `victoria-metrics`), and who may scrape it.

What a user checks: after some requests, the numbers a Prometheus query
returns for invocations, errors, cold starts, gateway requests by route and
status, and the process gauges are the ones the requests made.
"""

from __future__ import annotations

import datetime
import http.server
import json
import os
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from esb_helpers import HTTP_ONLY, copy_app, free_port, require_tool, start_esb


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("obs")
    copied = copy_app(HTTP_ONLY.parent, workdir)
    s = start_esb(copied, workdir, http=True)
    yield s
    if s.stopped_rc is None:
        rc = s.stop()
        assert rc == 0, f"esb up exited with {rc}\n{s.output()[-4000:]}"


def test_metrics_need_an_api_key(server):
    r = server.get("/metrics")
    assert r.status_code == 403, r.text
    assert "esb_function" not in r.text
    r = server.get("/metrics", headers={"Authorization": "Bearer not-the-key"})
    assert r.status_code == 403
    key = server.credentials()["api_key"]
    r = server.get("/metrics", headers={"x-api-key": key})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "# TYPE esb_function_invocations counter" in r.text


class VictoriaMetrics:
    def __init__(self, binary: str, workdir, target: str, key: str):
        self.port = free_port()
        config = workdir / "scrape.yml"
        config.write_text(
            "scrape_configs:\n"
            "  - job_name: esb\n"
            "    scrape_interval: 1s\n"
            "    metrics_path: /metrics\n"
            f"    bearer_token: {key}\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.log = workdir / "victoria-metrics.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"-httpListenAddr=127.0.0.1:{self.port}",
                    f"-storageDataPath={workdir / 'vm-data'}",
                    f"-promscrape.config={config}",
                    "-search.latencyOffset=0s",
                    "-search.disableCache",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def query(self, promql: str) -> list[dict]:
        r = requests.get(self.url("/api/v1/query"), params={"query": promql}, timeout=10)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def wait_value(self, promql: str, expected: float, timeout: float = 60.0) -> None:
        """Polls the query until it returns `expected` (scrapes every 1 s)."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                v = self.value(promql)
            except requests.RequestException as e:
                v = repr(e)
            seen.append(v)
            if v == expected:
                return
            time.sleep(0.5)
        pytest.fail(
            f"{promql}: wanted {expected}, last values {seen[-5:]}\n"
            f"--- victoria-metrics ---\n{self.log.read_text(errors='replace')[-3000:]}"
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def victoria(server, tmp_path):
    binary = require_tool("victoria-metrics")
    vm = VictoriaMetrics(binary, tmp_path, f"127.0.0.1:{server.port}", server.credentials()["api_key"])
    yield vm
    vm.stop()


def test_victoria_metrics_scrapes_the_counts_requests_made(server, victoria):
    for _ in range(3):
        r = server.get("/string")
        assert r.status_code == 200, r.text
    for _ in range(2):
        assert server.get("/fail").status_code == 500
    assert server.get("/no/such/route").status_code == 404

    # The scrape itself succeeds (the bearer token is the box's API key).
    victoria.wait_value('up{job="esb"}', 1)
    victoria.wait_value('esb_function_invocations_total{function="http-bare-string"}', 3)
    victoria.wait_value('esb_function_errors_total{function="http-bare-string"}', 0)
    victoria.wait_value('esb_function_invocations_total{function="http-fail"}', 2)
    victoria.wait_value('esb_function_errors_total{function="http-fail"}', 2)
    # One worker served the three calls: one cold start, two warm.
    victoria.wait_value('esb_function_cold_starts_total{function="http-bare-string"}', 1)
    victoria.wait_value('esb_function_init_duration_seconds_count{function="http-bare-string"}', 1)
    victoria.wait_value('esb_function_duration_seconds_count{function="http-bare-string"}', 3)
    victoria.wait_value(
        'esb_function_duration_seconds_bucket{function="http-bare-string",le="+Inf"}', 3
    )
    victoria.wait_value('esb_function_workers{function="http-bare-string",state="warm"}', 1)
    victoria.wait_value('esb_function_concurrent_executions{function="http-bare-string"}', 0)
    victoria.wait_value(
        'esb_gateway_requests_total{api="HttpApi",route="GET /string",status="200"}', 3
    )
    victoria.wait_value('esb_gateway_requests_total{route="GET /fail",status="500"}', 2)
    victoria.wait_value('esb_gateway_requests_total{api="_esb",route="none",status="404"}', 1)
    victoria.wait_value('esb_gateway_request_duration_seconds_count{route="GET /string"}', 3)
    rss = victoria.value('process_resident_memory_bytes{job="esb"}')
    assert rss is not None and rss > 1_000_000, rss
    fds = victoria.value('process_open_fds{job="esb"}')
    assert fds is not None and fds > 3, fds

    # More traffic shows up in the next scrapes.
    assert server.get("/string").status_code == 200
    victoria.wait_value('esb_function_invocations_total{function="http-bare-string"}', 4)


def test_invoke_api_counts_as_function_invocations(server):
    key = server.credentials()["api_key"]

    def count():
        text = server.get("/metrics", headers={"x-api-key": key}).text
        for line in text.splitlines():
            if line.startswith('esb_function_invocations_total{function="http-bare-object"}'):
                return int(line.split()[-1])
        raise AssertionError(text)

    before = count()
    resp, payload = server.invoke("http-bare-object", {})
    assert resp["StatusCode"] == 200
    assert count() == before + 1
    text = server.get("/metrics", headers={"x-api-key": key}).text
    assert 'esb_gateway_requests_total{api="_esb",route="invoke",status="200"}' in text


def test_s3_and_dynamodb_operations_are_counted(server):
    """boto3 calls to the embedded S3 and DynamoDB show up in
    `esb_service_operations_total` by operation and status class."""
    key = server.credentials()["api_key"]
    info = json.loads((server.data_dir / "instance.json").read_text())
    creds = json.loads((server.data_dir / "credentials.json").read_text())

    def client(service, url):
        return boto3.client(
            service, endpoint_url=url, region_name="us-east-1",
            aws_access_key_id=creds["aws_access_key_id"],
            aws_secret_access_key=creds["aws_secret_access_key"],
            config=Config(retries={"max_attempts": 0}))

    def count(service, operation, status):
        text = server.get("/metrics", headers={"x-api-key": key}).text
        want = (f'esb_service_operations_total{{service="{service}",'
                f'operation="{operation}",status="{status}"}}')
        for line in text.splitlines():
            if line.startswith(want):
                return int(line.split()[-1])
        return 0

    s3 = client("s3", info["s3_url"])
    before_put = count("s3", "PutObject", "2xx")
    before_missing = count("s3", "GetObject", "4xx")
    s3.create_bucket(Bucket="metrics-bucket")
    s3.put_object(Bucket="metrics-bucket", Key="a/b.txt", Body=b"x")
    s3.put_object(Bucket="metrics-bucket", Key="c.txt", Body=b"y")
    with pytest.raises(ClientError):
        s3.get_object(Bucket="metrics-bucket", Key="missing")
    assert count("s3", "PutObject", "2xx") == before_put + 2
    assert count("s3", "GetObject", "4xx") == before_missing + 1
    assert count("s3", "CreateBucket", "2xx") >= 1

    db = client("dynamodb", info["dynamodb_url"])
    before_list = count("dynamodb", "ListTables", "2xx")
    db.list_tables()
    with pytest.raises(ClientError):
        db.describe_table(TableName="no-such-table")
    assert count("dynamodb", "ListTables", "2xx") == before_list + 1
    assert count("dynamodb", "DescribeTable", "4xx") >= 1


def test_metrics_can_be_turned_off(tmp_path):
    """With `ESB_METRICS=false` there is no `/metrics`: the path is an
    ordinary unrouted request."""
    copied = copy_app(HTTP_ONLY.parent, tmp_path)
    s = start_esb(copied, tmp_path, http=True, env={"ESB_METRICS": "false"})
    try:
        key = s.credentials()["api_key"]
        r = s.get("/metrics", headers={"x-api-key": key})
        assert r.status_code == 404, r.text
    finally:
        assert s.stop() == 0


def test_metrics_public_needs_no_key(tmp_path):
    copied = copy_app(HTTP_ONLY.parent, tmp_path)
    s = start_esb(copied, tmp_path, http=True, env={"ESB_METRICS_PUBLIC": "true"})
    try:
        r = s.get("/metrics")
        assert r.status_code == 200, r.text
        assert "esb_function_invocations_total" in r.text
    finally:
        assert s.stop() == 0


# ------------------------------------------------------------ log forwarding


class Ingest:
    """A stand-in for VictoriaLogs' `/insert/jsonline` that checks the wire
    format VictoriaLogs documents: POST, `_stream_fields`, `_msg_field` and
    `_time_field` query arguments naming fields every line has, one JSON
    object per line with an RFC 3339 `_time`."""

    def __init__(self, port: int):
        self.port = port
        self.lines: list[dict] = []
        self.problems: list[str] = []
        self.lock = threading.Lock()
        self.httpd = None
        self.thread = None

    def start(self):
        ingest = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                problems = []
                if url.path != "/insert/jsonline":
                    problems.append(f"path {url.path}")
                msg_field = query.get("_msg_field", [""])[0]
                time_field = query.get("_time_field", [""])[0]
                stream_fields = query.get("_stream_fields", [""])[0].split(",")
                if not msg_field or not time_field or stream_fields == [""]:
                    problems.append(f"query {url.query}")
                parsed = []
                for raw in body.split(b"\n"):
                    if not raw:
                        continue
                    try:
                        obj = json.loads(raw)
                    except ValueError as e:
                        problems.append(f"not JSON: {raw[:100]!r} {e}")
                        continue
                    for f in [msg_field, time_field, *stream_fields, "level", "type"]:
                        if f not in obj:
                            problems.append(f"line without {f}: {obj}")
                    try:
                        datetime.datetime.fromisoformat(obj.get(time_field, "").replace("Z", "+00:00"))
                    except ValueError:
                        problems.append(f"bad {time_field}: {obj}")
                    parsed.append(obj)
                with ingest.lock:
                    ingest.lines.extend(parsed)
                    ingest.problems.extend(problems)
                self.send_response(400 if problems else 200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def received(self) -> list[dict]:
        with self.lock:
            return list(self.lines)


def wait_for(check, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def reports_for(ingest: Ingest, function: str) -> dict[str, dict]:
    return {
        line["request_id"]: line
        for line in ingest.received()
        if line.get("type") == "REPORT" and line.get("function") == function
    }


def test_logs_are_forwarded_and_an_outage_loses_nothing(tmp_path):
    ingest = Ingest(free_port())
    ingest.start()
    copied = copy_app(HTTP_ONLY.parent, tmp_path)
    s = start_esb(copied, tmp_path, http=True,
                  env={"ESB_VICTORIALOGS_URL": f"http://127.0.0.1:{ingest.port}"})
    try:
        for _ in range(3):
            assert s.get("/string").status_code == 200
        assert s.get("/fail").status_code == 500
        wait_for(lambda: len(reports_for(ingest, "http-bare-string")) == 3, "3 REPORT lines")
        lines = ingest.received()
        starts = [l for l in lines if l["type"] == "START" and l["function"] == "http-bare-string"]
        assert len(starts) == 3 and all(l["request_id"] for l in starts)
        report = next(iter(reports_for(ingest, "http-bare-string").values()))
        assert report["source"] == "function" and report["level"] == "INFO"
        assert float(report["duration_ms"]) >= 0
        wait_for(lambda: any(l["function"] == "http-fail" and l["level"] == "ERROR"
                             and "OrderRejected" in l["_msg"] for l in ingest.received()),
                 "the function's [ERROR] line with level ERROR")
        # ESB's own log lines too.
        wait_for(lambda: any(l["source"] == "esb" and "function failed" in l["_msg"]
                             and l["level"] == "WARN" for l in ingest.received()),
                 "ESB's own warning about the failed function")

        # Outage: the log server is gone; invocations still answer.
        ingest.stop()
        for _ in range(20):
            assert s.get("/string").status_code == 200
        spool = s.data_dir / "logs" / "forward"
        wait_for(lambda: any(p.name != "active.jsonl" for p in spool.glob("*.jsonl")),
                 "sealed segments buffered on disk during the outage")
        assert len(reports_for(ingest, "http-bare-string")) == 3

        # Recovery on the same address: everything buffered arrives, once.
        ingest.start()
        wait_for(lambda: len(reports_for(ingest, "http-bare-string")) == 23,
                 "all 23 REPORT lines after the outage")
        reports = [l for l in ingest.received()
                   if l["type"] == "REPORT" and l["function"] == "http-bare-string"]
        assert len(reports) == 23, "a line was sent twice"
        wait_for(lambda: not any(p.name != "active.jsonl" for p in spool.glob("*.jsonl")),
                 "the spool to drain")
        assert ingest.problems == []
    finally:
        assert s.stop() == 0
        ingest.stop()


# ------------------------------------------------- CloudWatch Logs API reads

OBS_APP = Path(__file__).resolve().parent / "apps" / "observability" / "template.yaml"


@pytest.fixture(scope="module")
def obs_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("obs-logs")
    copied = copy_app(OBS_APP.parent, workdir)
    s = start_esb(copied, workdir, http=True)
    yield s
    if s.stopped_rc is None:
        assert s.stop() == 0


def logs_client(server):
    creds = server.credentials()
    return boto3.client(
        "logs",
        endpoint_url=server.base_url,
        region_name="us-east-1",
        aws_access_key_id=creds["aws_access_key_id"],
        aws_secret_access_key=creds["aws_secret_access_key"],
        config=Config(retries={"max_attempts": 0}),
    )


def aws_logs(server, tmp_path, *args) -> subprocess.CompletedProcess:
    require_tool("aws")
    creds = server.credentials()
    env = dict(os.environ)
    env.update({
        "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_MAX_ATTEMPTS": "1",
    })
    env.pop("AWS_PROFILE", None)
    cmd = ["aws", "logs", *args, "--endpoint-url", server.base_url, "--output", "json"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)


def test_aws_cli_reads_function_logs(obs_server, tmp_path):
    tag = f"t{time.time_ns()}"
    r = obs_server.get(f"/chatty?tag={tag}")
    assert r.status_code == 200 and r.text == tag

    groups = aws_logs(obs_server, tmp_path, "describe-log-groups",
                      "--log-group-name-prefix", "/aws/lambda/")
    assert groups.returncode == 0, groups.stderr
    names = [g["logGroupName"] for g in json.loads(groups.stdout)["logGroups"]]
    assert "/aws/lambda/chatty" in names and "/aws/lambda/writer" in names

    def filtered():
        p = aws_logs(obs_server, tmp_path, "filter-log-events",
                     "--log-group-name", "/aws/lambda/chatty",
                     "--filter-pattern", f'"tag={tag}" ERROR')
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)["events"]

    events = wait_for(filtered, "the [ERROR] line through filter-log-events")
    assert len(events) == 1
    assert events[0]["message"] == f"[ERROR] chatty pretends to fail tag={tag}"
    stream = events[0]["logStreamName"]

    streams = aws_logs(obs_server, tmp_path, "describe-log-streams",
                       "--log-group-name", "/aws/lambda/chatty")
    assert streams.returncode == 0, streams.stderr
    assert stream in [s["logStreamName"] for s in json.loads(streams.stdout)["logStreams"]]

    got = aws_logs(obs_server, tmp_path, "get-log-events", "--log-group-name", "/aws/lambda/chatty",
                   "--log-stream-name", stream, "--start-from-head")
    assert got.returncode == 0, got.stderr
    messages = [e["message"] for e in json.loads(got.stdout)["events"]]
    assert f"chatty says hello tag={tag}" in messages
    assert any(m.startswith("START RequestId:") for m in messages)
    assert any(m.startswith("REPORT RequestId:") for m in messages)

    missing = aws_logs(obs_server, tmp_path, "filter-log-events", "--log-group-name", "/aws/lambda/nope")
    assert missing.returncode != 0
    assert "ResourceNotFoundException" in missing.stderr


def test_aws_cli_v2_logs_tail_follow_prints_new_lines(obs_server, tmp_path):
    """`aws logs tail /aws/lambda/fn --follow` (AWS CLI v2: Debian's
    `awscli` package, installed by `.ci/run`) prints a line a new
    invocation writes."""
    aws2 = "/usr/bin/aws"
    if not os.path.exists(aws2):
        require_tool("aws-cli-v2 (/usr/bin/aws)")
    version = subprocess.run([aws2, "--version"], capture_output=True, text=True).stdout
    assert version.startswith("aws-cli/2."), version
    creds = obs_server.credentials()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_MAX_ATTEMPTS": "1",
    })
    out = tmp_path / "tail.out"
    with open(out, "wb") as sink:
        tail = subprocess.Popen(
            [aws2, "logs", "tail", "/aws/lambda/chatty", "--follow", "--since", "1m",
             "--format", "short", "--endpoint-url", obs_server.base_url],
            stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        tag = f"tail{time.time_ns()}"
        r = obs_server.get(f"/chatty?tag={tag}")
        assert r.status_code == 200
        wait_for(lambda: f"chatty says hello tag={tag}" in out.read_text(errors="replace"),
                 "the new line in `aws logs tail --follow`")
        assert tail.poll() is None, out.read_text(errors="replace")
    finally:
        tail.terminate()
        tail.wait(timeout=10)


def test_follow_by_polling_filter_log_events(obs_server):
    """What `aws logs tail --follow` does (CLI v2): poll FilterLogEvents from
    the last timestamp seen and drop event ids already printed."""
    client = logs_client(obs_server)
    start = int(time.time() * 1000) - 1000
    seen: dict[str, str] = {}

    def poll():
        token = None
        while True:
            kwargs = {"logGroupName": "/aws/lambda/chatty", "startTime": start}
            if token:
                kwargs["nextToken"] = token
            page = client.filter_log_events(**kwargs)
            for e in page["events"]:
                seen.setdefault(e["eventId"], e["message"])
            token = page.get("nextToken")
            if not token:
                return

    tags = [f"f{i}-{time.time_ns()}" for i in range(3)]
    for tag in tags:
        assert obs_server.get(f"/chatty?tag={tag}").status_code == 200
        poll()
    wait_for(lambda: poll() or all(any(f"tag={t}" in m for m in seen.values()) for t in tags),
             "every followed line")
    before = len(seen)
    poll()
    assert len(seen) == before, "event ids are stable between polls"
    hello = [m for m in seen.values() if m.startswith("chatty says hello tag=f")]
    assert sorted(hello) == sorted(f"chatty says hello tag={t}" for t in tags)


def test_function_code_writes_through_the_logs_client(obs_server):
    resp, payload = obs_server.invoke("writer", {"messages": ["written one", "written two"]})
    assert resp["StatusCode"] == 200 and "FunctionError" not in resp, payload
    assert payload == {"written": 2}
    client = logs_client(obs_server)
    out = client.filter_log_events(logGroupName="/aws/lambda/writer", logStreamNames=["custom-stream"])
    assert [e["message"] for e in out["events"]] == ["written one", "written two"]
    # `esb logs` shows them too: they are in the same store.
    stored = (obs_server.data_dir / "logs" / "writer.jsonl").read_text()
    assert "written two" in stored

    # A group of its own, created by the function.
    resp, payload = obs_server.invoke(
        "writer", {"group": "/app/orders", "create": True, "messages": ["order 1"]})
    assert "FunctionError" not in resp, payload
    groups = [g["logGroupName"] for g in client.describe_log_groups()["logGroups"]]
    assert "/app/orders" in groups
    events = client.get_log_events(logGroupName="/app/orders", logStreamName="custom-stream",
                                   startFromHead=True)["events"]
    assert [e["message"] for e in events] == ["order 1"]


def test_unsigned_or_wrongly_signed_calls_are_refused(obs_server):
    r = obs_server.post("/", data=b"{}", headers={
        "X-Amz-Target": "Logs_20140328.DescribeLogGroups",
        "Content-Type": "application/x-amz-json-1.1",
    })
    assert r.status_code == 403
    assert "logGroups" not in r.text
    bad = boto3.client(
        "logs", endpoint_url=obs_server.base_url, region_name="us-east-1",
        aws_access_key_id=obs_server.credentials()["aws_access_key_id"],
        aws_secret_access_key="wrong-secret",
        config=Config(retries={"max_attempts": 0}),
    )
    with pytest.raises(ClientError) as info:
        bad.describe_log_groups()
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
