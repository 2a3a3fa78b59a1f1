"""The containerd runtime (`esb up --runtime containerd`): the docker
runtime with the agent's engine set to containerd, driven through
containerd's gRPC API in namespace `esb`.

The module starts its own containerd (root, state and socket under a
temporary directory; `ESB_CONTAINERD_ADDRESS` points `esb up`'s agent at
it), so it never meets the system's containerd or Docker's. The base image
is imported from the local Docker engine on first use (the image `esb
images build` made), so Docker and `esb/python3.11:latest` are needed too.
Needs root. Outside CI a missing piece skips the module, saying why; under
CI=true it fails."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from esb_helpers import EXAMPLE_APP, missing_dependency, require_tool, wait_until

IMAGE = "esb/python3.11:latest"
NAMESPACE = "esb"


@pytest.fixture(scope="module")
def containerd(tmp_path_factory):
    """A private containerd daemon: yields its socket path."""
    for tool in ("containerd", "ctr", "ip", "docker"):
        require_tool(tool)
    if os.geteuid() != 0:
        missing_dependency("the containerd runtime needs root (network namespaces, runc)")
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        missing_dependency(f"image {IMAGE} missing (esb images build python3.11)")
    # Short path: a unix socket path holds at most 107 bytes.
    base = Path(f"/tmp/esb-ctrd-e2e-{os.getpid()}")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    socket = base / "c.sock"
    (base / "config.toml").write_text(
        "version = 2\n"
        f'root = "{base}/root"\n'
        f'state = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
        f'[ttrpc]\n  address = "{socket}.ttrpc"\n'
    )
    log = open(base / "containerd.log", "wb")
    daemon = subprocess.Popen(["containerd", "--config", str(base / "config.toml")],
                              stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_until(lambda: socket.exists(), timeout=30, what="containerd's socket")
        yield socket
    finally:
        # Anything a failed test left: tasks, containers, their namespaces.
        for cid in ctr(socket, "containers", "ls", "-q").split():
            ctr(socket, "task", "kill", "-s", "SIGKILL", cid)
            ctr(socket, "task", "rm", "-f", cid)
            ctr(socket, "containers", "rm", cid)
            subprocess.run(["ip", "netns", "del", f"esb-{cid}"], capture_output=True)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        subprocess.run(["umount", "-R", str(base / "state")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def ctr(socket: Path, *args: str) -> str:
    out = subprocess.run(["ctr", "--address", str(socket), "-n", NAMESPACE, *args],
                         capture_output=True, text=True, timeout=60)
    return out.stdout


def tasks(socket: Path) -> dict[str, int]:
    """Running tasks: container id → pid."""
    out = {}
    for line in ctr(socket, "task", "ls").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "RUNNING":
            out[parts[0]] = int(parts[1])
    return out


def container_labels(socket: Path, cid: str) -> dict:
    info = ctr(socket, "containers", "info", cid)
    return json.loads(info).get("Labels", {}) if info.strip() else {}


def instance_containers(socket: Path, instance: str) -> list[str]:
    return [c for c in ctr(socket, "containers", "ls", "-q").split()
            if container_labels(socket, c).get("io.esb.instance") == instance]


def test_example_app_s3_dynamodb_and_chained_routes_on_containerd(esb_up, containerd):
    env = {"ESB_CONTAINERD_ADDRESS": str(containerd)}
    server = esb_up(EXAMPLE_APP / "template.yaml", "--runtime", "containerd", env=env)

    # The first request imports the base image from Docker into namespace esb.
    r = server.get("/dev/hello", timeout=180)
    assert r.status_code == 200, r.text + server.output()[-3000:]
    assert r.json()["message"] == "Hello from ESB"
    assert IMAGE in ctr(containerd, "images", "ls", "-q")

    key = f"k-{os.getpid()}"
    r = server.post(f"/store/{key}", data="stored from containerd",
                    headers={"Content-Type": "text/plain"}, timeout=90)
    assert r.status_code == 201, r.text + server.output()[-3000:]
    r = server.get(f"/store/{key}", timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "stored from containerd"
    assert body["item"]["size"] == {"N": str(len("stored from containerd"))}

    r = server.get("/chain", timeout=90)
    assert r.status_code == 200, r.text + server.output()[-3000:]
    body = r.json()
    assert body["target"] == "hello" and body["status"] == 200
    assert json.loads(body["response"]["body"])["message"] == "Hello from ESB"

    # Every function ran in a containerd container of this server, hardened.
    running = tasks(containerd)
    labels = {cid: container_labels(containerd, cid) for cid in running}
    functions = {l.get("io.esb.function") for l in labels.values()}
    assert {"hello", "storage", "chain"} <= functions, labels
    instance = next(iter(labels.values()))["io.esb.instance"]
    for cid, pid in running.items():
        assert labels[cid]["io.esb.worker"] and labels[cid]["io.esb.code-hash"]
        status = Path(f"/proc/{pid}/status").read_text()
        assert "NoNewPrivs:\t1" in status
        assert "CapEff:\t0000000000000000" in status
        uid = next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1]
        assert uid == "993"  # the image's unprivileged user
        root = next(l for l in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                    if l.split()[4] == "/")
        assert "ro" in root.split()[5].split(",")

    # Stopping esb up removes every container, namespace and bridge.
    assert server.stop() == 0
    wait_until(lambda: not instance_containers(containerd, instance), timeout=30,
               what="containers removed on stop")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"esb-esb-{instance}" not in netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not [l for l in links.splitlines() if "esb-network:esb-" + instance in l]


def test_task_killed_from_outside_is_replaced(esb_up, containerd):
    env = {"ESB_CONTAINERD_ADDRESS": str(containerd)}
    server = esb_up(EXAMPLE_APP / "template.yaml", "--runtime", "containerd", env=env)
    r = server.get("/dev/hello", timeout=180)
    assert r.status_code == 200, r.text + server.output()[-3000:]
    hello = [cid for cid in tasks(containerd)
             if container_labels(containerd, cid).get("io.esb.function") == "hello"]
    assert hello
    for cid in hello:
        ctr(containerd, "task", "kill", "-s", "SIGKILL", cid)
    # The exit event marks the worker dead; the next request gets a new one.
    wait_until(lambda: not set(hello) & set(tasks(containerd)), timeout=20,
               what="the killed tasks to stop")
    r = server.get("/dev/hello", timeout=90)
    assert r.status_code == 200, r.text + server.output()[-3000:]
    now = {cid for cid in tasks(containerd)
           if container_labels(containerd, cid).get("io.esb.function") == "hello"}
    assert now and not now & set(hello)
    assert server.stop() == 0
