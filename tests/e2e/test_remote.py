"""Remote compute nodes: `esb agent` on a second "host", reached by `esb
up --runtime docker --agent URL` only over the network.

Each node is a network namespace (`ip netns`) joined to the root namespace
by a veth pair on a private /30 (root side .1, node side .2, loopback up).
The agent runs inside it (`ip netns exec`), listens on the node's address
and publishes every worker's supervisor port there (`--advertise`), so the
gateway's invocations cross the veth. The control host's gateway, S3 and
DynamoDB listen on an address of the root namespace that is not tied to
any node's link (on the loopback device), the one the nodes route to.

The Docker daemon is shared (one machine): the "remote" workers are
containers of the root namespace's engine, which the node's agent reaches
through the engine socket (a file) and, for readiness checks and the
published ports, through the veth (a DOCKER-USER rule accepts forwarding
from the node's link). Everything is removed in teardown, even on failure.

Needs root (namespaces, veth, iptables), a Docker daemon with
esb/python3.11, curl. Outside CI a missing piece skips the module, saying
why; under CI=true it fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from esb_helpers import (
    _ACTIVE, ESB_BIN, EXAMPLE_APP, EsbServer, copy_app, docker_unavailable, free_port, in_ci, wait_healthy,
)

IMAGE = "esb/python3.11:latest"


def _run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: exit {out.returncode}: {out.stderr}")
    return out


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, iptables)"
    return docker_unavailable(IMAGE, ("ip", "iptables", "curl"))


_REASON = _missing()
if _REASON is not None:
    if in_ci():
        raise RuntimeError(f"remote-node tests cannot run under CI: {_REASON}")
    print(f"skipping remote-node tests: {_REASON}")
    pytestmark = pytest.mark.skip(reason=_REASON)


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------ the network

_SEQ = [0]


def _subnet_octet() -> int:
    _SEQ[0] += 1
    return 16 + (os.getpid() * 7 + _SEQ[0]) % 200


@dataclass
class Node:
    """A network namespace joined to the root namespace by a veth pair."""
    name: str
    veth: str
    host_ip: str
    ip: str

    def exec(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def link(self, up: bool) -> None:
        _run("ip", "link", "set", self.veth, "up" if up else "down")


class Network:
    """The control host's address plus any number of nodes; `close` undoes
    everything it made."""

    def __init__(self) -> None:
        octet = _subnet_octet()
        self.control_ip = f"10.214.{octet}.1"
        self.nodes: list[Node] = []
        self._undo: list[list[str]] = []
        # On the loopback device: an address of this host that no node's
        # link carries (the kernel has no dummy devices here).
        _run("ip", "addr", "add", f"{self.control_ip}/32", "dev", "lo")
        self._undo.append(["ip", "addr", "del", f"{self.control_ip}/32", "dev", "lo"])

    def add_node(self) -> Node:
        index = len(self.nodes)
        tag = f"{os.getpid() % 100000}{'ab'[index % 2]}{index}"
        octet = _subnet_octet()
        node = Node(name=f"esbn{tag}", veth=f"vr{tag}", host_ip=f"10.213.{octet}.1",
                    ip=f"10.213.{octet}.2")
        peer = f"vn{tag}"
        _run("ip", "netns", "add", node.name)
        self._undo.append(["ip", "netns", "del", node.name])
        _run("ip", "link", "add", node.veth, "type", "veth", "peer", "name", peer)
        self._undo.append(["ip", "link", "del", node.veth])
        _run("ip", "link", "set", peer, "netns", node.name)
        _run("ip", "addr", "add", f"{node.host_ip}/30", "dev", node.veth)
        _run("ip", "link", "set", node.veth, "up")
        _run(*node.exec("ip", "addr", "add", f"{node.ip}/30", "dev", peer))
        _run(*node.exec("ip", "link", "set", peer, "up"))
        _run(*node.exec("ip", "link", "set", "lo", "up"))
        _run(*node.exec("ip", "route", "add", "default", "via", node.host_ip))
        # Docker's FORWARD policy drops what does not come from its own
        # bridges: accept what the node sends to the containers.
        _run("iptables", "-I", "DOCKER-USER", "-i", node.veth, "-j", "ACCEPT")
        self._undo.append(["iptables", "-D", "DOCKER-USER", "-i", node.veth, "-j", "ACCEPT"])
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for cmd in reversed(self._undo):
            subprocess.run(cmd, capture_output=True, timeout=30)
        self._undo.clear()


# ------------------------------------------------------------ agents


class Agent:
    """`esb agent` inside a node's namespace."""

    def __init__(self, node: Node, workdir: Path, token_file: Path, instance: str) -> None:
        self.node = node
        self.port = 7443
        self.instance = instance
        self.token_file = token_file
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.logs: list[Path] = []
        # Worker ids seen on this node (see `_busy_on`).
        self.worker_ids: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://{self.node.ip}:{self.port}"

    @property
    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def start(self) -> "Agent":
        log_path = self.workdir / f"agent-{self.instance}-{len(self.logs)}.log"
        self.logs.append(log_path)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.node.exec(ESB_BIN, "agent", "--listen", f"{self.node.ip}:{self.port}",
                               "--instance", self.instance, "--token-file", str(self.token_file),
                               "--advertise", self.node.ip,
                               "--cache-dir", str(self.workdir / f"cache-{self.instance}")),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        wait_for(lambda: "listening on" in log_path.read_text(errors="replace")
                 or self.proc.poll() is not None, 30, "agent listening")
        assert self.proc.poll() is None, log_path.read_text(errors="replace")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def containers(self, function: str | None = None) -> list[str]:
        label = f"label=io.esb.instance={self.instance}"
        args = ["docker", "ps", "-q", "--no-trunc", "--filter", label]
        if function:
            args += ["--filter", f"label=io.esb.function={function}"]
        return _run(*args).stdout.split()

    def remove_everything(self) -> None:
        self.kill(signal.SIGTERM)
        ids = _run("docker", "ps", "-aq", "--filter", f"label=io.esb.instance={self.instance}",
                   check=False).stdout.split()
        if ids:
            _run("docker", "rm", "-f", *ids, check=False)
        _run("docker", "network", "rm", f"esb-{self.instance}", check=False)


@pytest.fixture
def cluster(tmp_path):
    """(network, make_agent): nodes and agents made through it are removed
    after the test, whatever happened."""
    net = Network()
    agents: list[Agent] = []
    token_file = tmp_path / "agent.token"

    def make_agent(tag: str) -> Agent:
        node = net.add_node()
        agent = Agent(node, tmp_path, token_file, f"r{os.getpid() % 100000}{tag}")
        agents.append(agent)
        return agent.start()

    try:
        yield net, make_agent, token_file
    finally:
        for server in list(_ACTIVE):
            if server.template.is_relative_to(tmp_path):
                server._kill_everything(set())
        for agent in agents:
            agent.remove_everything()
        net.close()


class RemoteServer(EsbServer):
    """`esb up` whose gateway listens on the control host's address."""
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def start_up(tmp_path: Path, net: Network, agents: list, token_file: Path,
             env: dict | None = None, wait: bool = True, app: Path = EXAMPLE_APP,
             edit=None) -> RemoteServer:
    workdir = tmp_path / f"up-{time.monotonic_ns()}"
    workdir.mkdir()
    template = copy_app(app, workdir)
    if app == EXAMPLE_APP:
        add_sleepy_function(template)
    if edit:
        edit(template)
    port = free_port()
    full_env = dict(os.environ)
    full_env.update({
        "ESB_S3_LISTEN": f"{net.control_ip}:0",
        "ESB_DYNAMODB_LISTEN": f"{net.control_ip}:0",
        "ESB_AGENT_TOKEN_FILE": str(token_file),
    })
    full_env.update(env or {})
    urls = [a if isinstance(a, str) else a.url for a in agents]
    cmd = [ESB_BIN, "up", "-t", str(template), "--listen", f"{net.control_ip}:{port}",
           "--data-dir", str(workdir / "data"), "--http", "--runtime", "docker",
           "--agent", ",".join(urls)]
    log_path = workdir / "esb-up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=full_env, cwd=workdir)
    server = RemoteServer(template=template, data_dir=workdir / "data", port=port, http=True,
                          log_path=log_path, process=proc, env=full_env)
    server.host = net.control_ip
    _ACTIVE.append(server)
    if wait:
        wait_healthy(server)
    return server


SLEEPY = """
  SleepyFunction:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: sleepy
      CodeUri: src/sleepy/
      Timeout: 60
      Events:
        Sleepy:
          Type: Api
          Properties:
            RestApiId: !Ref RestApi
            Path: /sleepy
            Method: get
"""

SLEEPY_CODE = '''import json, socket, time


def handler(event, context):
    seconds = float((event.get("queryStringParameters") or {}).get("s", "0"))
    time.sleep(seconds)
    return {"statusCode": 200, "body": json.dumps({"slept": seconds, "host": socket.gethostname()})}
'''


def add_sleepy_function(template: Path) -> None:
    """The example app plus one function that sleeps as long as asked (an
    invocation that is still running when its node goes away)."""
    text = template.read_text()
    assert "\nResources:\n" in text
    template.write_text(text.replace("\nResources:\n", "\nResources:\n" + SLEEPY, 1))
    code = template.parent / "src" / "sleepy"
    code.mkdir(parents=True)
    (code / "app.py").write_text(SLEEPY_CODE)


def outbound_peers(pid: int, own_ip: str) -> list[str]:
    """Peers of the TCP connections process `pid` opened (those accepted
    on its own listeners at `own_ip`, such as functions calling S3, are
    left out)."""
    out = _run("ss", "-Htnp", check=False).stdout
    return [line.split()[4] for line in out.splitlines()
            if f"pid={pid}," in line and not line.split()[3].startswith(own_ip + ":")]


# ------------------------------------------------------------ the tests


def _grpc_health(url: str, *headers: str) -> str:
    """A raw gRPC Health call with curl (HTTP/2): the response headers and
    trailers. The agent answers a refused call before reading its body;
    curl then sometimes reports the stream's reset as a framing error
    (exit 92), so that is tried again."""
    for _ in range(5):
        out = subprocess.run(
            ["curl", "-sS", "-m", "20", "-D", "-", "-o", "/dev/null", "--http2-prior-knowledge",
             "-X", "POST", "-H", "content-type: application/grpc", "-H", "te: trailers", *headers,
             "--data-binary", "@-", f"{url}/esb.agent.v1.Agent/Health"],
            input=b"\0\0\0\0\0", capture_output=True, timeout=30,
        )
        if out.returncode != 92:
            break
    assert out.returncode == 0, f"curl exit {out.returncode}: {out.stderr.decode(errors='replace')}"
    return out.stdout.decode(errors="replace").lower()


def test_remote_agent_refuses_clients_without_its_token(cluster, tmp_path):
    net, make_agent, token_file = cluster
    agent = make_agent("t")
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    # Over the veth: no token, a wrong one: UNAUTHENTICATED (16); the right one: OK.
    assert "grpc-status: 16" in _grpc_health(agent.url)
    assert "grpc-status: 16" in _grpc_health(agent.url, "-H", "authorization: Bearer " + "x" * 64)
    assert "grpc-status: 0" in _grpc_health(agent.url, "-H", f"authorization: Bearer {token}")

    # esb up holding a wrong token is refused and says why.
    wrong = tmp_path / "wrong.token"
    wrong.write_text("y" * 64)
    wrong.chmod(0o600)
    refused = start_up(tmp_path, net, [agent], wrong, wait=False)
    rc = refused.process.wait(timeout=60)
    _ACTIVE.remove(refused)
    refused.stopped_rc = rc
    assert rc != 0
    assert "agent token" in refused.output(), refused.output()[-2000:]
    assert not agent.containers(), "a refused client started workers"


def test_example_app_runs_on_a_remote_node(cluster, tmp_path):
    net, make_agent, token_file = cluster
    agent = make_agent("a")
    server = start_up(tmp_path, net, [agent], token_file)

    r = server.get("/dev/hello", timeout=60)
    assert r.status_code == 200, r.text + server.output()[-3000:]
    assert r.json()["message"] == "Hello from ESB"
    key = f"k-{os.getpid()}"
    r = server.post(f"/store/{key}", data="stored from a remote node",
                    headers={"Content-Type": "text/plain"}, timeout=60)
    assert r.status_code == 201, r.text + server.output()[-3000:]
    r = server.get(f"/store/{key}", timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "stored from a remote node"
    assert r.json()["item"]["size"] == {"N": str(len("stored from a remote node"))}
    r = server.get("/chain", timeout=60)
    assert r.status_code == 200, r.text + server.output()[-3000:]
    body = r.json()
    assert body["target"] == "hello" and body["status"] == 200
    assert json.loads(body["response"]["body"])["message"] == "Hello from ESB"

    # The functions ran in the node's containers, and their output came
    # back to esb up's log store (streamed from each container).
    functions = set()
    for cid in agent.containers():
        labels = json.loads(_run("docker", "inspect", "--format", "{{json .Config.Labels}}",
                                 cid).stdout or "{}")
        functions.add(labels.get("io.esb.function"))
    assert {"hello", "storage", "chain"} <= functions, functions
    hello_workers = {json.loads(_run("docker", "inspect", "--format", "{{json .Config.Labels}}",
                                     cid).stdout or "{}").get("io.esb.worker")
                     for cid in agent.containers("hello")}
    wait_for(lambda: any(_logged_line(server, "hello", "hello called", hello_workers)), 10,
             "the node's function output in esb up's log store")
    assert "hello called" not in agent.log
    # esb up had the node's agent check the base image (images reach a
    # node through its agent).
    assert "esb/python3.11:latest already exists" in agent.log

    # esb up talks to the node only: the agent's port and the workers'
    # ports published on the node's address, never a container address.
    peers = outbound_peers(server.process.pid, net.control_ip)
    to_node = [p for p in peers if p.startswith(agent.node.ip + ":")]
    assert any(p != f"{agent.node.ip}:{agent.port}" for p in to_node), peers
    assert not [p for p in peers if p.startswith("172.")], peers

    # A published worker port serves only the control host that asked for
    # the worker: another address on the node's network is cut off.
    published = next(p for p in to_node if p != f"{agent.node.ip}:{agent.port}")
    url = f"http://{published}/"
    ok = _run("curl", "-sS", "-m", "10", "-o", "/dev/null", url, check=False)
    assert ok.returncode == 0, ok.stderr
    stranger = _run(*agent.node.exec("curl", "-sS", "-m", "10", "-o", "/dev/null", url), check=False)
    assert stranger.returncode != 0, "a stranger reached a published worker port"
    assert server.stop() == 0


def _get_async(server, path: str, results: dict, key: str, timeout: float = 120) -> threading.Thread:
    def run():
        start = time.monotonic()
        try:
            r = server.get(path, timeout=timeout)
            results[key] = (r.status_code, r.text, time.monotonic() - start)
        except requests.RequestException as e:
            results[key] = (None, repr(e), time.monotonic() - start)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _logged_line(server: RemoteServer, function: str, text: str, workers: set) -> list[dict]:
    """Records of `function` containing `text` printed by one of `workers`."""
    return [r for r in server.log_records(function) if text in r.get("line", "") and r.get("worker") in workers]


def _starts(server: RemoteServer, function: str) -> list[str]:
    """The worker of each invocation of `function` so far, from esb up's
    log store (every node's function output is streamed there)."""
    return [r["worker"] for r in server.log_records(function) if r.get("line", "").startswith("START RequestId:")]


def _busy_on(server: RemoteServer, agent: Agent, function: str) -> int:
    """Invocations of `function` started on `agent`'s node: START records
    whose worker is (or was, when last looked at) one of its containers."""
    agent.worker_ids |= set(_run("docker", "ps", "-a", "--filter", f"label=io.esb.instance={agent.instance}",
                                 "--format", '{{.Label "io.esb.worker"}}').stdout.split())
    return sum(1 for w in _starts(server, function) if w in agent.worker_ids)


def test_losing_and_regaining_a_node(cluster, tmp_path):
    net, make_agent, token_file = cluster
    a = make_agent("a")
    b = make_agent("b")
    server = start_up(tmp_path, net, [a, b], token_file)

    # Two long invocations at once: one worker on each node.
    results: dict = {}
    threads = [_get_async(server, "/dev/sleepy?s=25", results, f"s{i}") for i in range(2)]
    wait_for(lambda: _busy_on(server, a, "sleepy") >= 1 and _busy_on(server, b, "sleepy") >= 1, 90,
             "a sleepy invocation running on each node")
    before_a = set(a.containers("sleepy"))

    # Node A's link goes down: its in-flight request fails cleanly and
    # soon (not after the function's 60 s), B's finishes.
    a.node.link(False)
    lost_at = time.monotonic()
    wait_for(lambda: len(results) >= 1, 30, "the request on the lost node to end")
    first = next(iter(results.values()))
    assert first[0] == 502, first
    assert first[2] < 40, first
    assert time.monotonic() - lost_at < 20
    wait_for(lambda: "compute node " + a.url + " lost" in server.output(), 10, "loss logged")
    assert "was lost during the invocation" in server.output()

    # New requests go to the node that remains.
    started_on_b = _busy_on(server, b, "hello")
    for _ in range(3):
        r = server.get("/dev/hello", timeout=60)
        assert r.status_code == 200, r.text + server.output()[-3000:]
    # Function output reaches the log store asynchronously: poll.
    wait_for(lambda: _busy_on(server, b, "hello") >= started_on_b + 3, 10,
             "the three new invocations on node B in the log store")
    for t in threads:
        t.join(timeout=60)
    assert sorted(v[0] for v in results.values()) == [200, 502], results

    # A comes back (same agent): the worker dropped while it was away is
    # removed through its agent.
    a.node.link(True)
    wait_for(lambda: "compute node " + a.url + " regained (same agent)" in server.output(), 30,
             "node regained")
    wait_for(lambda: not before_a <= set(a.containers("sleepy")), 30,
             "the dropped worker's container removed")

    # A's agent dies (kill -9) during an invocation: it fails at once
    # (its published port closes), and a restarted agent is used again
    # after its Adopt & Sync.
    results.clear()
    for _ in range(6):
        # Until one lands on A (placement is by load, ties round-robin).
        n = _busy_on(server, a, "sleepy")
        t = _get_async(server, "/dev/sleepy?s=20", results, f"k{time.monotonic_ns()}")
        try:
            wait_for(lambda: _busy_on(server, a, "sleepy") > n, 8, "sleepy on A")
            break
        except AssertionError:
            continue
    a.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: any(v[0] == 502 for v in results.values()), 20, "502 from the killed node")
    assert time.monotonic() - killed_at < 15
    a.start()
    assert "adopted" in a.log
    wait_for(lambda: "compute node " + a.url + " regained (restarted agent)" in server.output(),
             30, "node regained after restart")
    for _ in range(4):
        r = server.get("/dev/hello", timeout=60)
        assert r.status_code == 200, r.text + server.output()[-3000:]
    assert server.stop() == 0


def test_the_local_engine_is_a_node_when_listed(cluster, tmp_path):
    """`--agent local,URL`: a local agent child and the remote node share
    the work (two invocations at once land one on each)."""
    net, make_agent, token_file = cluster
    node = make_agent("l")
    server = start_up(tmp_path, net, ["local", node.url], token_file)
    results: dict = {}
    threads = [_get_async(server, "/dev/sleepy?s=4", results, f"s{i}") for i in range(2)]
    for t in threads:
        t.join(timeout=120)
    assert sorted(v[0] for v in results.values()) == [200, 200], results
    # The node's agent ran one, the local agent the other; both
    # invocations' output is in esb up's log store.
    wait_for(lambda: len(_starts(server, "sleepy")) == 2, 10, "two sleepy invocations logged")
    assert _busy_on(server, node, "sleepy") == 1, (_starts(server, "sleepy"), node.worker_ids)
    local = [c for c in _run("docker", "ps", "-q", "--filter", "label=io.esb.function=sleepy").stdout.split()
             if c not in node.containers()]
    assert local, "no sleepy container of the local agent"
    assert server.stop() == 0


IMAGE_APP = Path(__file__).parent / "apps" / "docker-image"


def test_image_function_is_built_through_the_node(cluster, tmp_path):
    """A `PackageType: Image` function: esb up has the node's agent build
    its image (no registry), and the worker runs it on the node."""
    net, make_agent, token_file = cluster
    node = make_agent("i")
    tag = f"remote{os.getpid()}"
    image = f"imagefn:{tag}"

    def unique_tag(template: Path) -> None:
        template.write_text(template.read_text().replace("DockerTag: e2e", f"DockerTag: {tag}"))

    _run("docker", "rmi", "-f", image, check=False)
    try:
        server = start_up(tmp_path, net, [node], token_file, app=IMAGE_APP, edit=unique_tag)
        assert _run("docker", "image", "inspect", image, check=False).returncode == 0
        assert "COPY app.py" in server.output(), server.output()[-3000:]
        r = server.get("/image", timeout=60)
        assert r.status_code == 200, r.text + server.output()[-3000:]
        assert r.json()["message"] == "hello from an image"
        images = {json.loads(_run("docker", "inspect", c).stdout)[0]["Config"]["Image"]
                  for c in node.containers("imagefn")}
        assert image in images, images
        assert server.stop() == 0
    finally:
        node.remove_everything()
        _run("docker", "rmi", "-f", image, check=False)
