"""The docker runtime: functions in containers, the agent, Adopt & Sync,
the janitor, limits and isolation.

Needs a Docker daemon and the base image (scripts/build-images.sh; `esb up
--runtime docker` also builds it on first use). The in-container
supervisor is the esb binary itself. Outside CI the module is skipped,
saying why, when one is missing; under CI=true they must exist (.ci/run
provides them)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from esb_helpers import (
    ESB_BIN, EXAMPLE_APP, REPO, descendants, free_port, pid_alive, processes_mentioning, require_tool,
)

DOCKER_APP = Path(__file__).parent / "apps" / "docker"
IMAGE = "esb/python3.11:latest"
# boto3/botocore pinned in the image (crates/runtimes/docker/src/base_image.rs,
# SDK_VERSIONS; AWS publishes no fixed list, see docs/docker.md).
BOTO3_PIN = "1.40.4"


def _docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def _missing() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client installed"
    try:
        if _docker("info", timeout=20).returncode != 0:
            return "no Docker daemon answers"
    except subprocess.TimeoutExpired:
        return "the Docker daemon does not answer"
    if _docker("image", "inspect", IMAGE).returncode != 0:
        return f"image {IMAGE} missing (run scripts/build-images.sh)"
    return None


_REASON = _missing()
if _REASON is not None:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"docker tests cannot run under CI: {_REASON}")
    print(f"skipping docker tests: {_REASON}")
    pytestmark = pytest.mark.skip(reason=_REASON)


def containers(instance_label: str | None = None, all_: bool = False) -> list[dict]:
    args = ["ps", "--no-trunc", "--format", "{{json .}}"]
    if all_:
        args.append("-a")
    args += ["--filter", "label=io.esb.instance" + (f"={instance_label}" if instance_label else "")]
    out = _docker(*args).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def labels_of(container_id: str) -> dict:
    """The container's labels; `{}` once it is gone (a timed-out worker is
    removed while a test lists containers)."""
    out = _docker("inspect", "--format", "{{json .Config.Labels}}", container_id).stdout.strip()
    return json.loads(out or "{}")


def instance_of(server) -> str:
    """The instance id `esb up` derived from its data directory."""
    for c in containers():
        labels = labels_of(c["ID"])
        found = json.loads(_docker("inspect", c["ID"]).stdout or "[]")
        if labels.get("io.esb.function") and found:
            for bind in found[0]["HostConfig"]["Binds"] or []:
                if str(server.app_dir) in bind:
                    return labels["io.esb.instance"]
    raise AssertionError("no container of this server found")


def wait_for(predicate, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def probe(server, **query) -> dict:
    r = server.get("/probe", params=query, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------ example app


def test_example_app_runs_in_containers(esb_up):
    server = esb_up(EXAMPLE_APP / "template.yaml", "--runtime", "docker", http=True)
    r = server.get("/dev/hello", timeout=60)
    assert r.status_code == 200, server.output()[-3000:]
    assert "Hello" in r.json()["message"]

    r = server.get("/dev/fail", timeout=60)
    assert r.status_code == 502
    assert "PaymentDeclined" in server.output()

    start = time.monotonic()
    r = server.get("/dev/slow", timeout=60)
    assert r.status_code == 504
    assert time.monotonic() - start < 10

    instance = instance_of(server)
    running = containers(instance)
    functions = {labels_of(c["ID"]).get("io.esb.function") for c in running}
    assert "hello" in functions
    for c in running:
        found = json.loads(_docker("inspect", c["ID"]).stdout or "[]")
        if not found:
            continue  # removed meanwhile (the timed-out worker)
        labels = found[0]["Config"]["Labels"]
        assert labels["io.esb.worker"] and labels["io.esb.code-hash"]
        host = found[0]["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["Memory"] == 128 * 1024 * 1024
        assert host["PidsLimit"] > 0
        assert "/tmp" in host["Tmpfs"]
        # Each worker competes for CPU like a host process, not inside the
        # one /docker cgroup every container shares (cgroupfs driver).
        if _docker("info", "--format", "{{.CgroupDriver}}").stdout.strip() == "cgroupfs":
            assert host["CgroupParent"] == "/", host["CgroupParent"]

    assert server.stop() == 0
    wait_for(lambda: not containers(instance, all_=True), what="containers removed on shutdown")


def test_example_app_aws_sdk_routes_in_containers(esb_up):
    """What AWS's Python runtime ships is there: the example app's S3 +
    DynamoDB route and its chained invocation (boto3 inside the container,
    through the relays, over TLS with the box's CA) work unchanged."""
    versions = _docker("run", "--rm", "--entrypoint", "python3", IMAGE, "-c",
                       "import boto3, botocore, awslambdaric; print(boto3.__version__, botocore.__version__)")
    assert versions.stdout.split() == [BOTO3_PIN, BOTO3_PIN], versions.stdout + versions.stderr

    server = esb_up(EXAMPLE_APP / "template.yaml", "--runtime", "docker")
    key = f"k-{os.getpid()}"
    r = server.post(f"/store/{key}", data="stored from a container",
                    headers={"Content-Type": "text/plain"}, timeout=60)
    assert r.status_code == 201, r.text + server.output()[-3000:]
    r = server.get(f"/store/{key}", timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "stored from a container"
    assert body["item"]["size"] == {"N": str(len("stored from a container"))}

    r = server.get("/chain", timeout=60)
    assert r.status_code == 200, r.text + server.output()[-3000:]
    body = r.json()
    assert body["target"] == "hello" and body["status"] == 200
    assert json.loads(body["response"]["body"])["message"] == "Hello from ESB"
    assert "ImportModuleError" not in server.output()

    # Both functions ran in containers of this server.
    instance = instance_of(server)
    functions = {labels_of(c["ID"]).get("io.esb.function") for c in containers(instance)}
    assert {"storage", "chain", "hello"} <= functions
    assert server.stop() == 0


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    return inodes


def _engine_client_inodes() -> set[str]:
    """Inodes of the client ends of connections to the engine socket."""
    out = subprocess.run(["ss", "-xn"], capture_output=True, text=True).stdout
    peers = set()
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 8 and cols[4].endswith("docker.sock"):
            peers.add(cols[7])
    return peers


def test_gateway_process_never_opens_the_engine_socket(esb_up):
    require_tool("ss")  # iproute2, to list socket peers
    server = esb_up(DOCKER_APP / "template.yaml", "--runtime", "docker", http=True)
    probe(server)
    engine = _engine_client_inodes()
    assert not (_socket_inodes(server.process.pid) & engine), "esb up holds an engine connection"
    agents = [p for p in server.worker_pids() if "agent" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
    assert agents, "esb up should run a local agent"
    assert any(_socket_inodes(p) & engine for p in agents), "the agent holds the engine connection"


# ---------------------------------------------------- limits and isolation


def test_function_output_reaches_esb_logs_without_the_engine(esb_up):
    """A container's function output is streamed from its supervisor into
    esb's log store (`esb logs`, with its request and worker), not through
    the engine's log files; a burst of output neither blocks the
    invocation nor loses a line."""
    server = esb_up(DOCKER_APP / "template.yaml", "--runtime", "docker", http=True)
    r = server.get("/probe", params={"say": "marker-one"}, timeout=60)
    assert r.status_code == 200, r.text
    wait_for(lambda: any(rec["line"] == "marker-one" for rec in server.log_records("probe")),
             what="the function's line in the log store")
    records = server.log_records("probe")
    marker = next(rec for rec in records if rec["line"] == "marker-one")
    start = next(rec for rec in records if rec["line"].startswith("START RequestId:"))
    assert marker["request_id"] and marker["request_id"] == start["request_id"]
    worker = marker["worker"]
    running = [c["ID"] for c in containers(instance_of(server))
               if labels_of(c["ID"]).get("io.esb.worker") == worker]
    assert running, f"no container for worker {worker}"
    engine_log = _docker("logs", running[0])
    assert "marker-one" not in engine_log.stdout + engine_log.stderr
    assert "START RequestId" not in engine_log.stdout + engine_log.stderr

    shown = subprocess.run([ESB_BIN, "logs", "probe", "--data-dir", str(server.data_dir)],
                           capture_output=True, text=True, timeout=30)
    assert "marker-one" in shown.stdout, shown.stdout + shown.stderr

    # 5,000 lines at once (under the supervisor's 8,192-line queue): all
    # of them arrive, in order.
    r = server.get("/probe", params={"say": "marker-after-flood", "flood": "5000"}, timeout=60)
    assert r.status_code == 200, r.text
    wait_for(lambda: any(rec["line"] == "marker-after-flood" for rec in server.log_records("probe")),
             what="the line after 5,000 lines of output")
    flood = [rec["line"] for rec in server.log_records("probe") if rec["line"].startswith("flood ")]
    assert flood == [f"flood {i}" for i in range(5000)], flood[:3]
    r = server.get("/probe", timeout=60)
    assert r.status_code == 200, r.text


def test_a_worker_cannot_reach_another_workers_supervisor(esb_up):
    """Containers of one instance share a network, but not with each
    other: a function cannot call another function's supervisor (invoke
    it past every check, or read its output stream); the host side still
    reaches both."""
    import socket
    server = esb_up(DOCKER_APP / "template.yaml", "--runtime", "docker", http=True)
    r = server.get("/hog", params={"mb": "1"}, timeout=60)
    assert r.status_code == 200, r.text
    hog = [c["ID"] for c in containers(instance_of(server))
           if labels_of(c["ID"]).get("io.esb.function") == "hog"]
    assert hog
    info = json.loads(_docker("inspect", hog[0]).stdout)[0]
    ip = next(iter(info["NetworkSettings"]["Networks"].values()))["IPAddress"]
    port = int(info["Config"]["Labels"]["io.esb.port"])
    # From the host: the hog's supervisor answers.
    with socket.create_connection((ip, port), timeout=2):
        pass
    body = probe(server, peer=f"{ip}:{port}")
    assert body["peer_reachable"] is False, body
    r = server.get("/hog", params={"mb": "1"}, timeout=60)
    assert r.status_code == 200, r.text


BROKEN_TEMPLATE = """AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Resources:
  Broken:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: broken
      Runtime: python3.11
      Handler: app.handler
      CodeUri: src/
      Events:
        Get:
          Type: HttpApi
          Properties:
            Path: /broken
            Method: get
"""


def test_init_failure_output_is_not_lost_with_its_container(esb_up, tmp_path):
    """A function that prints and then fails at import: the request gets
    the init error, and what it printed (before any log stream could be
    followed, from a container removed right after) still reaches esb
    up's output through the agent."""
    app = tmp_path / "broken"
    (app / "src").mkdir(parents=True)
    (app / "template.yaml").write_text(BROKEN_TEMPLATE)
    (app / "src" / "app.py").write_text(
        'print("broken-marker: importing", flush=True)\n'
        'import no_such_module_esb  # noqa\n'
        'def handler(event, context):\n    return {}\n')
    server = esb_up(app / "template.yaml", "--runtime", "docker", http=True)
    r = server.get("/broken", timeout=60)
    # An HTTP API answers a failed function with 500 Internal Server Error.
    assert r.status_code == 500, r.text
    wait_for(lambda: "broken-marker: importing" in server.output(),
             what="the failed init's output in esb up's output")
    assert "no_such_module_esb" in server.output()


def test_memory_limit_gives_out_of_memory_and_a_new_worker(esb_up):
    server = esb_up(DOCKER_APP / "template.yaml", "--runtime", "docker", http=True)
    r = server.get("/hog", params={"mb": "1"}, timeout=60)
    assert r.status_code == 200
    r = server.get("/hog", params={"mb": "400"}, timeout=60)
    assert r.status_code == 500  # HTTP API's answer to a function error
    wait_for(lambda: "Runtime.OutOfMemory" in server.output(), what="OOM error in the log")
    r = server.get("/hog", params={"mb": "1"}, timeout=60)
    assert r.status_code == 200, "the worker is replaced after the OOM kill"


def test_docker_kill_is_noticed_and_replaced(esb_up):
    server = esb_up(DOCKER_APP / "template.yaml", "--runtime", "docker", http=True)
    first = probe(server)["hostname"]
    assert _docker("kill", first).returncode == 0
    second = probe(server)["hostname"]
    assert second != first


def test_worker_is_isolated_from_agent_and_engine(esb_up, tmp_path):
    agent_port = free_port()
    agent = start_agent(tmp_path, agent_port, "isolation-test")
    try:
        server = esb_up(DOCKER_APP / "template.yaml", "--runtime", "docker",
                        "--agent", f"http://127.0.0.1:{agent_port}", http=True)
        result = probe(server, port=str(agent_port))
        assert result["docker_sock"] is False
        assert result["agent_via_host"] is False
        assert result["agent_via_loopback"] is False
        assert result["uid"] != 0
        assert result["root_writable"] is False
        assert result["tmp_writable"] is True
        assert server.stop() == 0
    finally:
        stop_agent(agent)


def test_docker_worker_sees_no_other_process_nor_the_box_secrets(esb_up):
    """Issue 11's attacks on the docker runtime: a worker sees only its own
    container's processes (no other worker's pid to read the environ of,
    stop, or take the Runtime API from), none of the data dir's secrets nor
    other functions' code, and signs with its own key, not the box's."""
    server = esb_up(DOCKER_APP / "template.yaml", "--runtime", "docker", http=True)
    box = json.loads((server.data_dir / "credentials.json").read_text())
    targets = [server.data_dir / n for n in ("credentials.json", "jwt-signing-key.der")]
    targets.append(server.template.parent / "src" / "hog" / "app.py")
    for path in targets:
        assert path.is_file(), path
    found = probe(server, read=",".join(str(p) for p in targets))
    for path in targets:
        assert found["files"][str(path)] == "FileNotFoundError", found
    # Its own PID namespace: pid 1 is the in-container supervisor and only
    # a handful of its own processes exist.
    assert "container-supervisor" in found["pid1"] or "esb-supervisor" in found["pid1"], found
    assert len(found["pids"]) < 10, found["pids"]
    # The Runtime API is on the container's own loopback.
    assert found["runtime_api"].startswith("127.0.0.1:"), found
    assert found["access_key_id"].startswith("ASIA"), found
    assert found["access_key_id"] != box["aws_access_key_id"], found


# ------------------------------------------------------- agent restarts


def start_agent(workdir: Path, port: int, instance: str, token_file: Path | None = None) -> subprocess.Popen:
    log = open(workdir / f"agent-{port}-{time.monotonic_ns()}.log", "wb")
    # No ready spare: these tests count the containers the pool asked for.
    extra = ["--no-ready-spare"] + (["--token-file", str(token_file)] if token_file else [])
    proc = subprocess.Popen(
        [ESB_BIN, "agent", "--listen", f"127.0.0.1:{port}", "--instance", instance, *extra],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    proc.log_path = log.name  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "listening on" in Path(log.name).read_text(errors="replace"):
            return proc
        assert proc.poll() is None, Path(log.name).read_text(errors="replace")
        time.sleep(0.1)
    raise AssertionError("agent did not start")


def stop_agent(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_agent_restart_adopts_warm_workers(esb_up, tmp_path):
    port = free_port()
    instance = f"adopt-{os.getpid()}"
    agent = start_agent(tmp_path, port, instance)
    try:
        server = esb_up(DOCKER_APP / "template.yaml", "--runtime", "docker",
                        "--agent", f"http://127.0.0.1:{port}", http=True)
        first = probe(server)["hostname"]
        stop_agent(agent)
        agent = start_agent(tmp_path, port, instance)
        assert "adopted 1 warm worker" in Path(agent.log_path).read_text()
        # The warm worker answers, without a cold start: same container.
        assert probe(server)["hostname"] == first
        assert [c["ID"][:12] for c in containers(instance)] == [first]
        assert server.stop() == 0
        wait_for(lambda: not containers(instance, all_=True), what="containers removed")
    finally:
        stop_agent(agent)


def test_c3_kill_9_of_the_agent_under_load_fails_cleanly_and_recovers(esb_up, tmp_path):
    """Robustness C3 under load: four clients keep calling a route while the
    agent is killed with SIGKILL. Every request gets an HTTP answer (200, or
    a clean 5xx while the agent is gone: never a hang or a cut connection);
    a new agent adopts or replaces the workers and requests succeed again."""
    port = free_port()
    instance = f"c3-{os.getpid()}"
    agent = start_agent(tmp_path, port, instance)
    stop = threading.Event()
    results: list = []
    threads: list[threading.Thread] = []
    try:
        server = esb_up(DOCKER_APP / "template.yaml", "--runtime", "docker",
                        "--agent", f"http://127.0.0.1:{port}", http=True)
        probe(server)

        def load():
            while not stop.is_set():
                try:
                    results.append(server.get("/probe", timeout=30).status_code)
                except requests.RequestException as e:
                    results.append(repr(e))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(results) >= 20, timeout=60, what="load running")
        agent.kill()
        agent.wait()
        killed_at = len(results)
        wait_for(lambda: len(results) >= killed_at + 8, timeout=60,
                 what="answers while the agent is gone")
        agent = start_agent(tmp_path, port, instance)
        wait_for(lambda: results[-10:] == [200] * 10, timeout=90,
                 what="ten answers in a row after the agent's restart")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        stop_agent(agent)
        # A standalone agent leaves its workers for the next start of its
        # instance to adopt; this instance has none, so the test sweeps.
        leftover = [c["ID"] for c in containers(instance, all_=True)]
        if leftover:
            _docker("rm", "-f", *leftover)
    unanswered = [r for r in results if not isinstance(r, int)]
    assert not unanswered, unanswered[:5]
    assert set(results) <= {200, 500, 502, 503}, sorted(set(results))


def test_restarted_agent_removes_stale_and_unknown_containers(tmp_path):
    instance = f"janitor-{os.getpid()}"
    # A stopped container and a running one that is no ESB worker, both
    # carrying the instance label: Adopt & Sync removes them.
    for name, cmd in (("stopped", ["true"]), ("stranger", ["sleep", "300"])):
        created = _docker("run", "-d", "--name", f"esb-{instance}-{name}",
                          "--label", f"io.esb.instance={instance}",
                          "--label", "io.esb.worker=nobody", IMAGE, *cmd)
        assert created.returncode == 0, created.stderr
    wait_for(lambda: len(containers(instance, all_=True)) == 2, what="test containers")
    agent = start_agent(tmp_path, free_port(), instance)
    try:
        assert "removed 2 stale container" in Path(agent.log_path).read_text()
        assert containers(instance, all_=True) == []
    finally:
        stop_agent(agent)


# ------------------------------------------------------------ image functions

IMAGE_APP = Path(__file__).parent / "apps" / "docker-image"
IMAGE_TAG = "imagefn:e2e"


def test_image_function_built_by_esb_build_serves_route_and_invoke(esb_up, tmp_path):
    _docker("rmi", "-f", IMAGE_TAG)
    app = tmp_path / "app"
    shutil.copytree(IMAGE_APP, app)
    built = subprocess.run(
        [ESB_BIN, "build", "-t", str(app / "template.yaml")],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert f"built {IMAGE_TAG}" in built.stdout
    assert "COPY app.py" in built.stdout  # the engine's build output is shown
    assert _docker("image", "inspect", IMAGE_TAG).returncode == 0

    server = esb_up(app / "template.yaml", "--runtime", "docker", http=True)
    r = server.get("/image", timeout=60)
    assert r.status_code == 200, server.output()[-3000:]
    body = r.json()
    assert body["message"] == "hello from an image"
    assert body["function"] == "imagefn"
    assert body["handler"] == "app.handler"
    assert body["task_root"] == "/var/task"

    resp, payload = server.invoke("imagefn", {"input": 42})
    assert resp["StatusCode"] == 200
    assert "FunctionError" not in resp, payload
    assert json.loads(payload["body"])["input"] == 42

    # The worker runs the built image, under the supervisor.
    instance = instance_of_function(server, "imagefn")
    images = {json.loads(_docker("inspect", c["ID"]).stdout)[0]["Config"]["Image"]
              for c in containers(instance)}
    assert IMAGE_TAG in images
    assert server.stop() == 0


def instance_of_function(server, function: str) -> str:
    for c in containers():
        labels = labels_of(c["ID"])
        if labels.get("io.esb.function") == function:
            return labels["io.esb.instance"]
    raise AssertionError(f"no container of {function} found\n{server.output()[-2000:]}")


def test_up_builds_a_missing_image_through_the_agent(esb_up):
    _docker("rmi", "-f", IMAGE_TAG)
    server = esb_up(IMAGE_APP / "template.yaml", "--runtime", "docker", http=True)
    assert f"built {IMAGE_TAG} for function imagefn" in server.output()
    r = server.get("/image", timeout=60)
    assert r.status_code == 200, server.output()[-3000:]
    assert r.json()["message"] == "hello from an image"
    assert server.stop() == 0


def test_process_runtime_reports_image_function_clearly(esb_up):
    server = esb_up(IMAGE_APP / "template.yaml", http=True)
    out = server.output()
    assert "function imagefn is a container image" in out
    assert "--runtime docker" in out
    r = server.get("/image", timeout=30)
    assert r.status_code == 500  # not served: no worker can start it
    assert server.stop() == 0


# ------------------------------------------------------------ clean stop


def _default_stop_signals() -> None:
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _start_up_in_own_group(app_dir: Path, data_dir: Path, log_path: Path):
    """`esb up --runtime docker` as the leader of its own process group (as
    systemd, a terminal or `docker stop` of a box image see it)."""
    port = free_port()
    env = dict(os.environ, ESB_S3_LISTEN="127.0.0.1:0", ESB_DYNAMODB_LISTEN="127.0.0.1:0")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [ESB_BIN, "up", "-t", str(app_dir / "template.yaml"), "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(data_dir), "--http", "--runtime", "docker"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
            # Default dispositions whatever the test runner inherited
            # (`nohup` leaves SIGHUP ignored, and children inherit that).
            preexec_fn=_default_stop_signals,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy():
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
        try:
            return requests.get(url + "/_esb/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(healthy, timeout=60, what="esb up healthy")
    return proc, url


def _agent_pids(pid: int) -> list[int]:
    return [p for p in descendants(pid)
            if b"agent" in Path(f"/proc/{p}/cmdline").read_bytes()]


def _networks(name: str) -> list[str]:
    out = _docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    return [n for n in out if n == name]


def _instance_by_data_dir(data_dir: Path) -> str:
    for c in containers():
        found = json.loads(_docker("inspect", c["ID"]).stdout or "[]")
        for bind in (found[0]["HostConfig"]["Binds"] or []) if found else []:
            if str(data_dir) in bind:
                return found[0]["Config"]["Labels"]["io.esb.instance"]
    raise AssertionError("no container of this server found")


def _gone(pid: int) -> bool:
    return not pid_alive(pid)


@pytest.mark.parametrize("how", [
    "SIGTERM to the group", "SIGINT to the group", "SIGHUP to the group", "SIGQUIT to the group",
    "SIGTERM to the agent, then to esb up", "SIGTERM to esb up, then to the agent",
    "SIGKILL to esb up",
])
def test_clean_stop_leaves_no_container_network_or_process(tmp_path, how):
    app = tmp_path / "app"
    shutil.copytree(DOCKER_APP, app)
    data_dir = tmp_path / "data"
    log_path = tmp_path / "esb-up.log"
    proc, url = _start_up_in_own_group(app, data_dir, log_path)
    try:
        r = requests.get(url + "/probe", timeout=60)
        assert r.status_code == 200, r.text
        instance = _instance_by_data_dir(data_dir)
        network = f"esb-{instance}"
        assert containers(instance) and _networks(network)
        agents = _agent_pids(proc.pid)
        assert len(agents) == 1, agents
        agent = agents[0]

        if how.endswith("to the group"):
            os.killpg(proc.pid, getattr(signal, how.split()[0]))
        elif how.startswith("SIGTERM to the agent"):
            os.kill(agent, signal.SIGTERM)
            wait_for(lambda: _gone(agent), timeout=30, what="agent exit")
            proc.send_signal(signal.SIGTERM)
        elif how.startswith("SIGTERM to esb up"):
            proc.send_signal(signal.SIGTERM)
            os.kill(agent, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGKILL)

        proc.wait(timeout=30)
        wait_for(lambda: _gone(agent), timeout=30, what="agent exit")
        wait_for(lambda: not containers(instance, all_=True), timeout=30,
                 what=f"no container left after {how}")
        wait_for(lambda: not _networks(network), timeout=30, what=f"network {network} removed")
        assert not processes_mentioning(str(data_dir)), processes_mentioning(str(data_dir))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_next_start_removes_what_a_killed_group_left(tmp_path):
    """SIGKILL to the whole group leaves the container and the network
    (nothing can run then): the next `esb up` with the same data directory
    adopts or removes every one at start, and its own stop removes them."""
    app = tmp_path / "app"
    shutil.copytree(DOCKER_APP, app)
    data_dir = tmp_path / "data"
    log_path = tmp_path / "esb-up.log"
    proc, url = _start_up_in_own_group(app, data_dir, log_path)
    try:
        first = requests.get(url + "/probe", timeout=60).json()["hostname"]
        instance = _instance_by_data_dir(data_dir)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert first in [c["ID"][:12] for c in containers(instance)], "SIGKILL leaves it"

        proc, url = _start_up_in_own_group(app, data_dir, log_path)
        text = log_path.read_text(errors="replace")
        assert "adopted 1 warm worker" in text or "removed 1 stale container" in text, text[-2000:]
        assert requests.get(url + "/probe", timeout=60).status_code == 200
        # The worker and at most one ready spare: adopted, not duplicated.
        assert len(containers(instance)) <= 2
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        wait_for(lambda: not containers(instance, all_=True), timeout=30, what="no container left")
        wait_for(lambda: not _networks(f"esb-{instance}"), timeout=30, what="network removed")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ------------------------------------------------------ agent port


def _grpc_health(port: int, *headers: str, message: bytes = b"\0\0\0\0\0") -> str:
    """A raw gRPC call of Health with curl (HTTP/2): the response headers
    and trailers. A refused call is sent without a message: the agent
    answers it from the headers alone and resets the stream, which curl
    reports as an error (exit 92) when it was still sending a body."""
    out = subprocess.run(
        ["curl", "-sS", "-D", "-", "-o", "/dev/null", "--http2-prior-knowledge", "-X", "POST",
         "-H", "content-type: application/grpc", "-H", "te: trailers", *headers,
         "--data-binary", "@-", f"http://127.0.0.1:{port}/esb.agent.v1.Agent/Health"],
        input=message, capture_output=True, timeout=20,
    )
    assert out.returncode == 0, f"curl exit {out.returncode}: {out.stderr.decode(errors='replace')}"
    return out.stdout.decode(errors="replace").lower()


def test_agent_port_refuses_calls_without_its_token(esb_up, tmp_path):
    require_tool("curl")
    port = free_port()
    token_file = tmp_path / "agent.token"
    agent = start_agent(tmp_path, port, f"auth-{os.getpid()}", token_file=token_file)
    try:
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        # No token, a wrong one: UNAUTHENTICATED (16); the right one: OK.
        assert "grpc-status: 16" in _grpc_health(port, message=b"")
        assert "grpc-status: 16" in _grpc_health(
            port, "-H", "authorization: Bearer " + "x" * 64, message=b"")
        assert "grpc-status: 0" in _grpc_health(port, "-H", f"authorization: Bearer {token}")

        # esb up with a wrong token cannot use the agent, and says why.
        wrong = tmp_path / "wrong.token"
        wrong.write_text("y" * 64)
        wrong.chmod(0o600)
        refused = esb_up(DOCKER_APP / "template.yaml", "--runtime", "docker",
                         "--agent", f"http://127.0.0.1:{port}", http=True,
                         env={"ESB_AGENT_TOKEN_FILE": str(wrong)}, wait=False)
        refused.stopped_rc = refused.process.wait(timeout=60)
        assert refused.stopped_rc != 0
        assert "agent token" in refused.output(), refused.output()[-2000:]

        # With the agent's token file it works.
        server = esb_up(DOCKER_APP / "template.yaml", "--runtime", "docker",
                        "--agent", f"http://127.0.0.1:{port}", http=True,
                        env={"ESB_AGENT_TOKEN_FILE": str(token_file)})
        assert probe(server)["hostname"]
        assert server.stop() == 0
    finally:
        stop_agent(agent)


# ------------------------------------------------- AWS base-image layout

LAYOUT_APP = Path(__file__).parent / "apps" / "aws-layout"


def test_image_with_aws_base_image_layout_runs_unchanged(esb_up):
    """An image laid out like AWS's base images (ENTRYPOINT
    /lambda-entrypoint.sh + CMD handler, /var/runtime/bootstrap,
    LAMBDA_TASK_ROOT) runs as it is: the supervisor starts ENTRYPOINT + CMD
    under its Runtime API. `esb up` builds the missing image first."""
    _docker("rmi", "-f", "awslayout:e2e")
    server = esb_up(LAYOUT_APP / "template.yaml", "--runtime", "docker", http=True)
    assert "built awslayout:e2e for function awslayout" in server.output()
    r = server.get("/layout", timeout=60)
    assert r.status_code == 200, r.text + server.output()[-3000:]
    body = r.json()
    assert body == {
        "bootstrap": "/var/runtime/bootstrap",
        "handler": "app.handler",
        "task_root": "/var/task",
        "runtime_api": True,
        "boto3": BOTO3_PIN,
    }
    assert server.stop() == 0


# ------------------------------------------------- Node.js and provided images

RUNTIMES_APP = Path(__file__).parent / "apps" / "docker-runtimes"


def _ensure_base_image(name: str, image: str) -> None:
    """The first-use path, ahead of `esb up` (whose health wait is shorter
    than a debootstrap): `esb images build NAME` when the image is missing."""
    if _docker("image", "inspect", image).returncode == 0:
        return
    r = subprocess.run([ESB_BIN, "images", "build", name], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert _docker("image", "inspect", image).returncode == 0, f"{image} not built"


def test_node_and_provided_functions_run_on_their_own_base_images(esb_up):
    """A `nodejs20.x` function runs on Debian's Node.js 20 (esb/nodejs20)
    and a `provided.al2023` function with a bash bootstrap on the minimal
    root (esb/provided), both in containers behind the in-container
    supervisor, with Lambda's environment."""
    _ensure_base_image("nodejs20.x", "esb/nodejs20:latest")
    _ensure_base_image("provided", "esb/provided:latest")
    server = esb_up(RUNTIMES_APP / "template.yaml", "--runtime", "docker", http=True)

    r = server.get("/node", params={"who": "docker"}, timeout=60)
    assert r.status_code == 200, r.text + server.output()[-3000:]
    body = r.json()
    assert body["node"].startswith("v20."), body
    assert body["execEnv"] == "AWS_Lambda_nodejs20.x"
    assert body["taskRoot"] == "/var/task" and body["cwd"] == "/var/task"
    assert body["uid"] == 993
    assert "container-supervisor" in (body["pid1"] or ""), body
    assert body["query"] == {"who": "docker"}

    r = server.get("/shell", timeout=60)
    assert r.status_code == 200, r.text + server.output()[-3000:]
    assert r.text.startswith("provided bash 5."), r.text
    assert "handler bootstrap" in r.text and r.text.endswith("in /var/task"), r.text
    # A second event reaches the same bootstrap loop.
    assert server.get("/shell", timeout=60).status_code == 200

    instance = instance_of(server)
    images = {labels_of(c["ID"]).get("io.esb.function"): c["Image"] for c in containers(instance)}
    assert images.get("node-fn") == "esb/nodejs20:latest", images
    assert images.get("shell-fn") == "esb/provided:latest", images
    assert server.stop() == 0

    # The provided image is the bare root: a shell and CA certificates, no
    # language runtime.
    probe_root = _docker("run", "--rm", "--entrypoint", "/bin/sh", "esb/provided:latest", "-c",
                         "command -v python3 node || echo none; test -s /etc/ssl/certs/ca-certificates.crt && echo ca")
    assert probe_root.stdout.split() == ["none", "ca"], probe_root.stdout + probe_root.stderr
