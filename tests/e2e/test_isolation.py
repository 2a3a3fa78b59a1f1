"""Worker isolation on the process runtime (issue 11), with its default
settings: each test is one attack a hostile function (or a local process)
tries against its neighbours or the box, and fails.

The attacks that need other workers (environ, signals, events, forged
responses) failed only with the opt-in sandbox before it became the
default; the limits (descendants killed, leftovers ended, memory) hold
since workers got a cgroup of their own. Needs root (the sandbox and
cgroups); a non-root run is the `none` isolation level, where these fail
by design (docs/runtime.md, "Isolation levels")."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import uuid

import pytest

from esb_helpers import (
    _ACTIVE, APPS, missing_dependency, pid_alive, processes_mentioning, run_esb, start_esb,
    wait_until,
)

ISOLATION = APPS / "isolation" / "template.yaml"
# First uid of sandboxed workers (crates/supervisor/src/sandbox.rs).
UID_BASE = 1_900_000_000


def _cgroups_usable() -> bool:
    return os.geteuid() == 0 and (
        os.path.isdir("/sys/fs/cgroup/freezer") or os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    )


@pytest.fixture(autouse=True)
def _needs_root_and_cgroups():
    if not _cgroups_usable():
        missing_dependency("root and cgroups (the v1 freezer or a v2 hierarchy)")


@pytest.fixture
def isolation(esb_up):
    return esb_up(ISOLATION, http=True)


class _Invoke:
    """An invocation running in a thread (it blocks until it ends)."""

    def __init__(self, server, function: str, event: dict):
        self.result = None
        self.error = None

        def run():
            try:
                self.result = server.invoke(function, event, client=server.lambda_client(read_timeout=120))
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait(self, timeout: float = 60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "invocation still running"
        assert self.error is None, self.error
        return self.result


def _victim(server, function: str = "limits") -> int:
    """A warm worker of another function: its host pid, as `/_esb/status`
    shows it to anyone."""
    resp, _ = server.invoke(function, {})
    assert "FunctionError" not in resp
    pids = server.pool_status()[function]["pids"]
    assert pids, server.pool_status()
    return pids[0]


def _runtime_api_of(pid: int) -> str:
    """The worker's AWS_LAMBDA_RUNTIME_API, read by the test (root) from the
    host's /proc: what an attacker got there before the sandbox."""
    env = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
    values = [v.split("=", 1)[1] for v in env.split("\0") if v.startswith("AWS_LAMBDA_RUNTIME_API=")]
    assert values, f"worker {pid} has no AWS_LAMBDA_RUNTIME_API"
    return values[0]


def test_isolation_level_is_logged_once_at_start(isolation):
    wait_until(lambda: "worker isolation:" in isolation.output(), 10, "the isolation line")
    out = isolation.output()
    assert out.count("worker isolation:") == 1, out[-2000:]
    assert "worker isolation: sandbox + cgroup-v" in out, out[-2000:]


def test_worker_cannot_read_another_workers_environ(isolation):
    victim = _victim(isolation)
    resp, found = isolation.invoke("attacker", {"victim_pid": victim})
    assert "FunctionError" not in resp, found
    # Its /proc hides the victim (or the kernel refuses the read).
    assert found["victim_environ"] in ("FileNotFoundError", "PermissionError"), found
    assert set(found.get("functions_seen", [])) <= {"attacker"}, found


def test_worker_cannot_sigstop_another_worker(isolation):
    victim = _victim(isolation)
    resp, found = isolation.invoke("attacker", {"victim_pid": victim})
    assert "FunctionError" not in resp, found
    assert found["sigstop"] in ("ProcessLookupError", "PermissionError"), found
    # The victim still answers at once.
    resp, _ = isolation.invoke("limits")
    assert "FunctionError" not in resp


def test_worker_cannot_take_another_workers_event_nor_answer_it(isolation):
    victim = _victim(isolation, "slow")
    api = _runtime_api_of(victim)
    marker = uuid.uuid4().hex
    # The attacker stops the victim and long-polls its /next; once its
    # request is on the wire, the victim's caller sends a secret.
    attack = _Invoke(isolation, "attacker", {"victim_pid": victim, "steal_from": api, "marker": marker})
    wait_until(lambda: f"steal-waiting {marker}" in isolation.output(), 20, "the attacker's long poll")
    secret = f"secret-{uuid.uuid4().hex}"
    resp, payload = isolation.invoke("slow", {"secret": secret}, client=isolation.lambda_client(read_timeout=60))
    _, found = attack.wait()
    assert secret not in json.dumps(found), found
    assert "FunctionError" not in resp, payload
    assert payload == {"genuine": True, "boot": payload.get("boot"), "secret": secret}, payload


def test_worker_cannot_post_a_forged_response_for_another_workers_request(isolation):
    victim = _victim(isolation, "slow")
    api = _runtime_api_of(victim)
    marker = uuid.uuid4().hex
    secret = f"secret-{uuid.uuid4().hex}"
    call = _Invoke(isolation, "slow", {"seconds": 3, "secret": secret, "marker": marker})
    line = wait_until(
        lambda: next((l for l in isolation.output().splitlines() if f"slow-started {marker}" in l), None),
        20, "the victim's invocation to start")
    request_id = line.split(f"slow-started {marker}", 1)[1].split()[0]
    resp, found = isolation.invoke("attacker", {"forge": {"api": api, "request_id": request_id}})
    assert "FunctionError" not in resp, found
    assert found["forge"].get("status") != 202, found
    resp, payload = call.wait()
    assert "FunctionError" not in resp, payload
    assert payload.get("genuine") is True and payload.get("secret") == secret, payload


def test_local_process_cannot_take_a_workers_event(isolation):
    victim = _victim(isolation, "slow")
    api = _runtime_api_of(victim)
    # The worker's Runtime API lives on the loopback of its own network
    # namespace: no local process (the test here) can long-poll its /next.
    host, port = api.rsplit(":", 1)
    secret = f"secret-{uuid.uuid4().hex}"
    head = b""
    try:
        with socket.create_connection((host, int(port)), timeout=1) as s:
            s.sendall(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
            call = _Invoke(isolation, "slow", {"secret": secret})
            s.settimeout(5)
            try:
                head = s.recv(4096)
            except OSError:
                pass
            call.wait()
    except ConnectionRefusedError:
        call = _Invoke(isolation, "slow", {"secret": secret})
        call.wait()
    assert secret.encode() not in head, head
    resp, payload = call.result
    assert "FunctionError" not in resp, payload
    assert payload.get("secret") == secret, payload


def test_worker_cannot_read_the_box_secrets_nor_other_functions_code(isolation):
    added = run_esb("user", "add", "--data-dir", str(isolation.data_dir), "alice",
                    input=b"pw-0123456789\n")
    assert added.returncode == 0, added.stderr
    targets = [isolation.data_dir / name for name in ("credentials.json", "jwt-signing-key.der", "users.json")]
    targets.append(isolation.template.parent / "other" / "other.py")
    for path in targets:
        assert path.is_file(), path
    resp, found = isolation.invoke("attacker", {"read_files": [str(p) for p in targets],
                                                "data_dir": str(isolation.data_dir)})
    assert "FunctionError" not in resp, found
    for path in targets:
        assert found["files"][str(path)] in ("FileNotFoundError", "PermissionError"), found
    assert found["credentials_visible"] is False, found
    assert set(found["data_dir_entries"]) <= {"runtime"}, found


def test_worker_cannot_write_into_its_own_code(isolation):
    name = f"pwned-{uuid.uuid4().hex}.txt"
    planted = isolation.template.parent / "src" / name
    try:
        resp, found = isolation.invoke("attacker", {"write_code": name})
        assert "FunctionError" not in resp, found
        assert found["code_write"] in ("OSError", "PermissionError"), found
        assert found["task_root_writable"] is False, found
        assert not planted.exists()
    finally:
        planted.unlink(missing_ok=True)


def test_workers_run_as_distinct_unprivileged_uids(isolation):
    _, limits = isolation.invoke("limits")
    _, attacker = isolation.invoke("attacker", {})
    for found in (limits, attacker):
        assert found["uid"] >= UID_BASE, found
    assert limits["uid"] != attacker["uid"]
    # No capability in any set, none to gain.
    assert set(limits["caps"].values()) == {"0000000000000000"}, limits["caps"]
    assert limits["no_new_privs"] == "1", limits


def test_worker_tmp_is_private_and_limited(isolation):
    marker = f"esb-isolation-{uuid.uuid4().hex}"
    try:
        resp, found = isolation.invoke("limits", {"tmp_marker": marker})
        assert "FunctionError" not in resp, found
        # Its own tmpfs of Lambda's 512 MB, not the host's /tmp.
        assert found["tmp_bytes"] <= 512 * 1024 * 1024, found
        assert not os.path.exists(os.path.join("/tmp", marker))
    finally:
        if os.path.exists(os.path.join("/tmp", marker)):
            os.unlink(os.path.join("/tmp", marker))


def test_worker_reaches_nothing_on_the_host(isolation):
    with socket.socket() as host_only:
        host_only.bind(("127.0.0.1", 0))
        host_only.listen()
        port = host_only.getsockname()[1]
        resp, found = isolation.invoke("attacker", {"host_port": port})
    assert "FunctionError" not in resp, found
    assert found["host_port"] in ("ConnectionRefusedError", "TimeoutError", "OSError"), found


def test_setsid_child_does_not_survive_the_timeout(isolation):
    marker = f"esb-isolation-{uuid.uuid4().hex}"
    call = _Invoke(isolation, "spawner", {"marker": marker})
    escaped = wait_until(lambda: processes_mentioning(marker), 20, "the setsid grandchild to start")
    call.thread.join(30)
    assert call.error is None, call.error
    resp, payload = call.result
    assert resp.get("FunctionError") == "Unhandled", payload
    assert payload["errorType"] == "Sandbox.Timedout", payload
    wait_until(lambda: not any(pid_alive(p) for p in escaped), 5,
               f"the setsid grandchild {escaped} to be killed with the timed-out worker")


def test_nothing_survives_kill_9_of_esb_and_restart(esb_up):
    first = esb_up(ISOLATION, http=True)
    marker = f"esb-isolation-{uuid.uuid4().hex}"
    _Invoke(first, "longspawner", {"marker": marker})
    first.wait_busy("longspawner")
    escaped = wait_until(lambda: processes_mentioning(marker), 20, "the setsid grandchild to start")
    workers = first.worker_pids()
    assert workers, "the worker runs under esb"

    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    first.stopped_rc = -9
    if first in _ACTIVE:
        _ACTIVE.remove(first)
    # kill -9 gives ESB no chance to clean up: its processes are orphaned.
    assert any(pid_alive(p) for p in escaped | workers), "the orphans should still run here"

    # Same app, same data dir: the restart finds and ends what is left.
    second = start_esb(first.template, first.data_dir.parent, http=True)
    try:
        wait_until(lambda: not any(pid_alive(p) for p in escaped | workers), 10,
                   "the previous instance's worker and its setsid child to be ended")
        assert "left by a previous ESB" in second.output()
    finally:
        assert second.stop() == 0


def test_allocating_600mb_in_a_128mb_function_is_out_of_memory(isolation):
    _, small = isolation.invoke("memhog", {"mb": 1})
    resp, payload = isolation.invoke("memhog", {"mb": 600})
    assert resp.get("FunctionError") == "Unhandled", payload
    assert payload["errorType"] == "Runtime.OutOfMemory", payload
    # The worker is replaced; the function keeps working.
    resp, after = isolation.invoke("memhog", {"mb": 1})
    assert "FunctionError" not in resp, after
    assert after["boot"] != small["boot"]


def test_worker_runs_with_open_file_limit_in_its_own_cgroup(isolation):
    resp, payload = isolation.invoke("limits")
    assert "FunctionError" not in resp, payload
    assert payload["nofile"] == [1024, 1024], payload
    own = open("/proc/self/cgroup").read()
    assert payload["cgroup"] != own, json.dumps(payload)
