"""The docker runtime: functions in containers, the agent, Adopt & Sync,
the janitor, limits and isolation.

Needs a Docker daemon, the base image (scripts/build-images.sh) and the
static supervisor (scripts/build-supervisor.sh). Outside CI the module is
skipped, saying why, when one is missing; under CI=true they must exist
(.ci/run provides them)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from esb_helpers import ESB_BIN, EXAMPLE_APP, REPO, free_port, require_tool

DOCKER_APP = Path(__file__).parent / "apps" / "docker"
IMAGE = "esb/python3.11:latest"
SUPERVISOR = Path(ESB_BIN).parent / "esb-supervisor"


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
    if not SUPERVISOR.is_file():
        return f"{SUPERVISOR} missing (run scripts/build-supervisor.sh)"
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
    out = _docker("inspect", "--format", "{{json .Config.Labels}}", container_id).stdout
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

    assert server.stop() == 0
    wait_for(lambda: not containers(instance, all_=True), what="containers removed on shutdown")


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


# ------------------------------------------------------- agent restarts


def start_agent(workdir: Path, port: int, instance: str) -> subprocess.Popen:
    log = open(workdir / f"agent-{port}-{time.monotonic_ns()}.log", "wb")
    proc = subprocess.Popen(
        [ESB_BIN, "agent", "--listen", f"127.0.0.1:{port}", "--instance", instance,
         "--supervisor", str(SUPERVISOR)],
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
