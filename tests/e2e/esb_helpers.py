"""Helpers of the end-to-end suite: start `esb up`, find its processes.

The suite drives the real `esb` binary (env `ESB_BIN`) as a user would:
`esb up` in a child process, real HTTP(S) clients (requests, boto3, the aws
CLI, curl). Every app a server runs is first copied into a fresh temporary
directory, so the test can tell the processes of *this* server apart from any
other ESB running on the machine (worker cwd, command line and environment
mention that unique directory).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config

REPO = Path(__file__).resolve().parents[2]
ESB_BIN = os.environ.get("ESB_BIN", str(REPO / "target" / "debug" / "esb"))
EXAMPLE_APP = REPO / "examples" / "app"
APPS = Path(__file__).resolve().parent / "apps"

HEALTH_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

# Servers alive right now; their output is attached to failing tests.
_ACTIVE: list["EsbServer"] = []


# ---------------------------------------------------------------- dependencies


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def missing_dependency(reason: str) -> None:
    """A test cannot run because something it needs is not installed: skip it,
    saying why; under CI=true fail instead (a CI run must run every test)."""
    if in_ci():
        pytest.fail(f"missing test dependency under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """Path of the program `name` on PATH (see `missing_dependency`)."""
    path = shutil.which(name)
    if path is None:
        missing_dependency(f"{name} is not installed")
    return path


def docker_unavailable(image: str, tools: tuple[str, ...] = ()) -> str | None:
    """Why the Docker-based tests cannot run here (a tool missing, no daemon
    answering, `image` not built), or None. Modules decide, with `in_ci()`,
    whether that fails or skips."""
    for tool in ("docker", *tools):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "the Docker daemon does not answer"
    if info.returncode != 0:
        return "no Docker daemon answers"
    inspect = subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=60)
    if inspect.returncode != 0:
        return f"image {image} missing (run scripts/build-images.sh)"
    return None


def esb_python() -> str:
    """The interpreter `esb up` runs Python functions with (ESB_PYTHON, else
    python3.11, else python3 on PATH), as docs/runtime.md says."""
    return os.environ.get("ESB_PYTHON") or shutil.which("python3.11") or shutil.which("python3") or "python3"


def require_python_module(module: str) -> None:
    """`module` must be importable by the functions' interpreter."""
    try:
        ok = subprocess.run([esb_python(), "-c", f"import {module}"], capture_output=True,
                            timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        missing_dependency(f"{esb_python()} cannot import {module} (pip install -r tests/requirements.txt)")


# ---------------------------------------------------------------- polling


def wait_until(check, timeout: float = 15.0, what: str = "condition", interval: float = 0.05):
    """Polls `check()` until it returns a truthy value, which is returned;
    fails the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    rest = raw.rsplit(")", 1)[1].split()
    return rest[0], int(rest[1])


def pid_alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(root: int) -> set[int]:
    """All live descendants of `root` (children, grandchildren...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if stat is None:
            continue
        children.setdefault(stat[1], []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {p for p in found if pid_alive(p)}


def processes_mentioning(needle: str) -> set[int]:
    """Live processes (not this one) whose cwd, command line or environment
    mentions `needle`."""
    me = os.getpid()
    hits: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        texts = []
        try:
            texts.append(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            pass
        for name in ("cmdline", "environ"):
            try:
                texts.append(Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace"))
            except OSError:
                pass
        if any(needle in t for t in texts) and pid_alive(pid):
            hits.add(pid)
    return hits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_app(src: Path, dest_parent: Path) -> Path:
    """Copy an app directory to a unique place and return its template path."""
    dest = dest_parent / f"app-{src.name}"
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", ".esb", "*.pyc"))
    return dest / "template.yaml"


# ---------------------------------------------------------------- servers


@dataclass
class EsbServer:
    template: Path
    data_dir: Path
    port: int
    http: bool
    log_path: Path
    process: subprocess.Popen
    env: dict
    _session: requests.Session = field(default_factory=requests.Session)
    stopped_rc: int | None = None

    @property
    def base_url(self) -> str:
        scheme = "http" if self.http else "https"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def cert(self) -> Path | None:
        return None if self.http else self.data_dir / "tls" / "cert.pem"

    @property
    def verify(self):
        return True if self.http else str(self.cert)

    @property
    def app_dir(self) -> Path:
        return self.template.parent

    def url(self, path: str) -> str:
        return self.base_url + path

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        kwargs.setdefault("verify", self.verify)
        return self._session.request(method, self.url(path), **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def log_records(self, function: str) -> list[dict]:
        """The function's records in the log store
        (<data_dir>/logs/<function>.jsonl, docs/logs.md), a record still
        being written left out."""
        path = self.data_dir / "logs" / f"{function}.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def credentials(self) -> dict:
        """The box's generated secrets (<data_dir>/credentials.json):
        aws_access_key_id, aws_secret_access_key, api_key."""
        return json.loads((self.data_dir / "credentials.json").read_text())

    def lambda_client(self, **config):
        """boto3 Lambda client signing with the box's credentials (the Invoke
        API refuses unsigned or wrongly signed calls outside --dev)."""
        config.setdefault("retries", {"max_attempts": 0})
        config.setdefault("read_timeout", 30)
        config.setdefault("connect_timeout", 5)
        creds = self.credentials()
        return boto3.client(
            "lambda",
            endpoint_url=self.base_url,
            region_name="us-east-1",
            aws_access_key_id=creds["aws_access_key_id"],
            aws_secret_access_key=creds["aws_secret_access_key"],
            verify=self.verify,
            config=Config(**config),
        )

    def invoke(self, function: str, event=None, **kwargs) -> tuple[dict, object]:
        """Invoke through the Lambda Invoke API; returns (boto3 response, decoded payload)."""
        client = kwargs.pop("client", None) or self.lambda_client()
        resp = client.invoke(FunctionName=function, Payload=json.dumps(event or {}), **kwargs)
        raw = resp["Payload"].read()
        return resp, (json.loads(raw) if raw else None)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def worker_pids(self) -> set[int]:
        return descendants(self.process.pid)

    def pool_status(self) -> dict[str, dict]:
        """The pool's state per function (GET /_esb/status, what `esb ps`
        shows): {name: {"warm", "busy", "starting", "queued", "pids", ...}}."""
        r = requests.get(self.url("/_esb/status"), verify=self.verify, timeout=10)
        assert r.status_code == 200, r.text
        return {f["name"]: f for f in r.json()}

    def wait_busy(self, function: str, busy: int = 1, timeout: float = 20.0) -> dict:
        """Polls until `function` has `busy` workers running an invocation
        (a cold start finished and the invocation was handed over)."""
        return wait_until(
            lambda: (st := self.pool_status().get(function)) and st["busy"] >= busy and st,
            timeout, f"{busy} busy worker(s) of {function}")

    def wait_queued(self, function: str, queued: int = 1, timeout: float = 20.0) -> dict:
        """Polls until `queued` requests wait for a worker of `function`."""
        return wait_until(
            lambda: (st := self.pool_status().get(function)) and st.get("queued", 0) >= queued and st,
            timeout, f"{queued} queued request(s) for {function}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the server, wait for it, check nothing it started is left.

        Returns the exit code. Fails the test if it does not exit in time or
        leaves a process behind (those are killed, by pid, to clean up)."""
        if self.stopped_rc is not None:
            return self.stopped_rc
        before = descendants(self.process.pid)
        self.process.send_signal(sig)
        try:
            rc = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_everything(before)
            self.stopped_rc = -9
            pytest.fail(
                f"esb up did not exit within {timeout}s of {signal.Signals(sig).name}\n"
                f"--- output ---\n{self.output()[-6000:]}"
            )
        self.stopped_rc = rc
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        # Give the kernel a moment to reap children that were signalled at exit.
        deadline = time.monotonic() + 2.0
        while True:
            left = {p for p in before if pid_alive(p)} | processes_mentioning(str(self.app_dir))
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if left:
            details = {p: _cmdline(p) for p in left}
            self._kill_everything(left)
            pytest.fail(f"processes left after esb up exited: {details}")
        return rc

    def _kill_everything(self, pids) -> None:
        for pid in set(pids) | {self.process.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self in _ACTIVE:
            _ACTIVE.remove(self)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def start_esb(
    template: Path,
    workdir: Path,
    *args: str,
    env: dict | None = None,
    http: bool = False,
    wait: bool = True,
) -> EsbServer:
    """Start `esb up` for `template` and wait until /_esb/health answers 200."""
    data_dir = workdir / "data"
    log_path = workdir / "esb-up.log"
    port = free_port()
    full_env = dict(os.environ)
    # Several servers run at once: each gets its own S3 / DynamoDB port
    # (the real ones are in <data_dir>/instance.json).
    full_env.setdefault("ESB_S3_LISTEN", "127.0.0.1:0")
    full_env.setdefault("ESB_DYNAMODB_LISTEN", "127.0.0.1:0")
    full_env.update(env or {})
    cmd = [
        ESB_BIN, "up",
        "-t", str(template),
        "--listen", f"127.0.0.1:{port}",
        "--data-dir", str(data_dir),
    ]
    if http:
        cmd.append("--http")
    cmd.extend(args)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=full_env, cwd=workdir,
        )
    server = EsbServer(template=template, data_dir=data_dir, port=port, http=http,
                       log_path=log_path, process=proc, env=full_env)
    _ACTIVE.append(server)
    if wait:
        wait_healthy(server)
    return server


def wait_healthy(server: EsbServer, timeout: float = HEALTH_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        rc = server.process.poll()
        if rc is not None:
            _ACTIVE.remove(server)
            pytest.fail(
                f"esb up exited with {rc} before it was healthy\n"
                f"cmd: {server.process.args}\n--- output ---\n{server.output()[-6000:]}"
            )
        if server.cert is None or server.cert.exists():
            try:
                r = requests.get(server.url("/_esb/health"), verify=server.verify, timeout=2)
                if r.status_code == 200:
                    return
                last = f"status {r.status_code}: {r.text[:200]}"
            except requests.RequestException as e:
                last = repr(e)
        else:
            last = f"{server.cert} does not exist yet"
        time.sleep(0.2)
    server._kill_everything(descendants(server.process.pid))
    pytest.fail(
        f"esb up not healthy after {timeout}s (last: {last})\n"
        f"cmd: {server.process.args}\n--- output ---\n{server.output()[-6000:]}"
    )


def module_server(tmp_path_factory, template: Path, **kwargs):
    """Generator for module/session fixtures: one server for `template`."""
    workdir = tmp_path_factory.mktemp("esb")
    copied = copy_app(template.parent, workdir)
    server = start_esb(copied, workdir, **kwargs)
    yield server
    if server.stopped_rc is None:
        rc = server.stop()
        assert rc == 0, f"esb up exited with {rc}\n{server.output()[-4000:]}"


# ---------------------------------------------------------------- test apps

REST_ONLY = APPS / "restonly" / "template.yaml"
HTTP_ONLY = APPS / "httponly" / "template.yaml"
WORKERS = APPS / "workers" / "template.yaml"


# ---------------------------------------------------------------- clients


@dataclass
class CurlResult:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)


def curl(server: EsbServer, path: str, *args: str, timeout: float = 30) -> CurlResult:
    """Run curl (HTTP/1.1) against the server; args are extra curl options,
    e.g. ("-H", "X-A: 1", "-H", "X-A: 2") to send a header twice."""
    import tempfile

    curl_bin = require_tool("curl")
    with tempfile.TemporaryDirectory() as tmp:
        head, body = Path(tmp) / "head", Path(tmp) / "body"
        cmd = [curl_bin, "-sS", "--http1.1", "-o", str(body), "-D", str(head)]
        if server.cert is not None:
            cmd += ["--cacert", str(server.cert)]
        cmd += list(args) + [server.url(path)]
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
        assert proc.returncode == 0, f"curl failed ({proc.returncode}): {proc.stderr.decode()}"
        blocks = [b for b in head.read_bytes().decode(errors="replace").split("\r\n\r\n") if b.strip()]
        lines = blocks[-1].split("\r\n")
        status = int(lines[0].split()[1])
        headers = []
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers.append((k.strip(), v.strip()))
        return CurlResult(status, headers, body.read_bytes())


def run_esb(*args: str, cwd: Path | None = None, input: bytes | None = None,
            timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an `esb` subcommand to completion, output captured as text."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [ESB_BIN, *args], cwd=cwd, input=input, capture_output=True, timeout=timeout,
        env=full_env,
    )


def text(b: bytes) -> str:
    return b.decode(errors="replace")
