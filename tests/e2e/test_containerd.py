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
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from esb_helpers import (
    ESB_BIN, EXAMPLE_APP, free_port, missing_dependency, processes_mentioning, require_tool, wait_until,
)

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

    # The bridge's MAC was set when it was made, so containers joining it
    # later (a lower veth MAC) never change the gateway's MAC under the
    # running ones (their ARP entries would point nowhere).
    bridge = _bridge_name(instance)
    assert Path(f"/sys/class/net/{bridge}/addr_assign_type").read_text().strip() == "3"
    mac = Path(f"/sys/class/net/{bridge}/address").read_text().strip()
    assert mac.startswith("02:"), mac
    for _ in range(3):  # more containers join: the spares, the busy ones
        threads = [threading.Thread(target=server.get, args=("/dev/hello",), kwargs={"timeout": 90})
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert Path(f"/sys/class/net/{bridge}/address").read_text().strip() == mac

    # Containers do not reach each other (isolated bridge ports): from one
    # worker's network namespace another worker's supervisor does not
    # answer, its own does; from the host both do.
    mine = [c for c in tasks(containerd) if container_labels(containerd, c).get("io.esb.instance") == instance]
    assert len(mine) >= 2, mine
    a, b = mine[0], mine[1]

    def endpoint(cid):
        labels = container_labels(containerd, cid)
        return labels["io.esb.containerd.ip"], int(labels["io.esb.port"])

    def reach_from(cid, target):
        code = f"import socket; socket.create_connection({target!r}, timeout=1)"
        return subprocess.run(["ip", "netns", "exec", f"esb-{cid}", sys.executable, "-c", code],
                              capture_output=True, text=True).returncode == 0

    for target in (endpoint(a), endpoint(b)):
        with socket.create_connection(target, timeout=2):
            pass
    assert reach_from(a, endpoint(a))
    assert not reach_from(a, endpoint(b))
    # By ESB's own doing (port isolation), not only by a host firewall that
    # happens to drop bridged traffic (Docker's FORWARD policy does here).
    ports = subprocess.run(["bridge", "-d", "link", "show", "master", bridge],
                           capture_output=True, text=True).stdout
    entries = [e for e in ports.split("\n") if e and not e.startswith(" ")]
    assert len(entries) >= 2, ports
    assert ports.count("isolated on") == len(entries), ports

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


# ------------------------------------------------------ clean stop per signal


def _default_stop_signals() -> None:
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _start_in_own_group(socket: Path, app_dir: Path, data_dir: Path, log_path: Path):
    """`esb up --runtime containerd` leading its own process group."""
    port = free_port()
    env = dict(os.environ, ESB_S3_LISTEN="127.0.0.1:0", ESB_DYNAMODB_LISTEN="127.0.0.1:0",
               ESB_CONTAINERD_ADDRESS=str(socket))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [ESB_BIN, "up", "-t", str(app_dir / "template.yaml"), "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(data_dir), "--http", "--runtime", "containerd"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, preexec_fn=_default_stop_signals,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy():
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
        try:
            return requests.get(url + "/_esb/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(healthy, timeout=120, what="esb up healthy", interval=0.2)
    return proc, url


def _instance_of_running(socket: Path, data_dir: Path) -> str:
    for cid in tasks(socket):
        info = json.loads(ctr(socket, "containers", "info", cid) or "{}")
        spec = json.dumps(info.get("Spec", {}))
        if str(data_dir) in spec:
            return info["Labels"]["io.esb.instance"]
    raise AssertionError("no container of this server found")


def _bridge_name(instance: str) -> str:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        if f"esb-network:esb-{instance}" in line:
            return line.split(":")[1].strip().split("@")[0]
    raise AssertionError(f"no bridge for instance {instance}:\n{links}")


def _bridge_of(instance: str) -> bool:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return any(f"esb-network:esb-{instance}" in line for line in links.splitlines())


@pytest.mark.parametrize("how", [
    "SIGTERM to the group", "SIGINT to the group", "SIGHUP to the group", "SIGQUIT to the group",
    "SIGKILL to esb up",
])
def test_clean_stop_leaves_no_container_namespace_or_bridge(containerd, tmp_path, how):
    app = tmp_path / "app"
    shutil.copytree(EXAMPLE_APP, app)
    data_dir = tmp_path / "data"
    log_path = tmp_path / "esb-up.log"
    proc, url = _start_in_own_group(containerd, app, data_dir, log_path)
    try:
        r = requests.get(url + "/dev/hello", timeout=120)
        assert r.status_code == 200, r.text + log_path.read_text(errors="replace")[-3000:]
        instance = _instance_of_running(containerd, data_dir)
        ids = instance_containers(containerd, instance)
        assert ids and _bridge_of(instance)
        if how.endswith("to the group"):
            os.killpg(proc.pid, getattr(signal, how.split()[0]))
        else:
            proc.send_signal(signal.SIGKILL)  # its agent notices within 0.5 s
        proc.wait(timeout=30)
        wait_until(lambda: not instance_containers(containerd, instance), timeout=30,
                   what=f"no container left after {how}", interval=0.2)
        wait_until(lambda: not _bridge_of(instance), timeout=30, what="bridge removed", interval=0.2)
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not [cid for cid in ids if f"esb-{cid}" in netns]
        # The agent may still be exiting after removing everything.
        wait_until(lambda: not processes_mentioning(str(data_dir)), timeout=30,
                   what="no process of this server left", interval=0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_next_start_adopts_or_removes_what_a_killed_group_left(containerd, tmp_path):
    app = tmp_path / "app"
    shutil.copytree(EXAMPLE_APP, app)
    data_dir = tmp_path / "data"
    log_path = tmp_path / "esb-up.log"
    proc, url = _start_in_own_group(containerd, app, data_dir, log_path)
    try:
        assert requests.get(url + "/dev/hello", timeout=120).status_code == 200
        instance = _instance_of_running(containerd, data_dir)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        left = instance_containers(containerd, instance)
        assert left, "SIGKILL of the whole group leaves the containers"

        proc, url = _start_in_own_group(containerd, app, data_dir, log_path)
        text = log_path.read_text(errors="replace")
        assert "adopted" in text and ("warm worker" in text), text[-2000:]
        assert requests.get(url + "/dev/hello", timeout=120).status_code == 200
        # The worker and at most one ready spare: adopted, not duplicated.
        assert len(tasks(containerd)) <= 2
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        wait_until(lambda: not instance_containers(containerd, instance), timeout=30,
                   what="no container left", interval=0.2)
        wait_until(lambda: not _bridge_of(instance), timeout=30, what="bridge removed", interval=0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
