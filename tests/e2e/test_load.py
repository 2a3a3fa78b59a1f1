"""Load and fault tests of the robustness contract (docs/robustness.md,
section `worker`), bounded in time and count, on loopback only:

- H11/L: 10,000 connections held open against the gateway while
  `/_esb/health` keeps answering and esb's RSS stays in its budget;
- W1/C2: `kill -9` of a worker under load: the in-flight request gets a
  clean error, the requests after it succeed;
- W13: a function whose init keeps failing fails fast after three failed
  starts, and `esb ps` shows the open breaker;
- L6: `kill -9` of esb under `Event` load, then a restart: no accepted
  event is lost.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from esb_helpers import WORKERS, run_esb, start_esb, wait_until
from test_async import ENV as ASYNC_ENV
from test_async import _app as async_app
from test_async import _ran

# Connections held by the H11 test, and esb's resident memory budget with
# them open (debug build; measured 103 MiB, see docs/robustness.md).
HELD_CONNECTIONS = 10_000
RSS_BUDGET_MIB = 256


def _raise_fd_limit(need: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE (inherited by `esb up`
    started afterwards) to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_h11_10000_connections_held_health_answers_rss_in_budget(esb_up):
    limit = _raise_fd_limit(2 * HELD_CONNECTIONS + 1000)
    # Both ends live on this machine: the test holds one fd per connection,
    # esb another.
    assert limit >= HELD_CONNECTIONS + 1000, (
        f"RLIMIT_NOFILE hard limit {limit} is too low to hold {HELD_CONNECTIONS} connections")
    # The connections are silent: the header timeout (H10, 10 s by
    # default) would close them while the rest are still being opened on a
    # loaded machine, so it is lifted for this test; the connection limit
    # keeps its default (10,000: the health client evicts the oldest).
    server = esb_up(WORKERS, http=True, env={"ESB_HEADER_TIMEOUT": "10m"})
    pid = server.process.pid
    rss_before = _rss_mib(pid)
    held: list[socket.socket] = []
    try:
        started = time.monotonic()
        for _ in range(HELD_CONNECTIONS):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(("127.0.0.1", server.port))
            held.append(s)
        connected = time.monotonic() - started
        # esb holds them (one fd each) and answers a new client.
        wait_until(lambda: _open_fds(pid) >= HELD_CONNECTIONS, timeout=30,
                   what=f"esb holding {HELD_CONNECTIONS} connections")
        r = requests.get(server.url("/_esb/health"), timeout=10)
        assert r.status_code == 200, r.text
        # A held connection is served when it speaks.
        probe = held[len(held) // 2]
        probe.sendall(b"GET /_esb/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := probe.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        rss = _rss_mib(pid)
        assert rss < RSS_BUDGET_MIB, f"esb RSS {rss:.0f} MiB with {HELD_CONNECTIONS} connections"
        print(f"H11: RSS {rss_before:.0f} MiB idle, {rss:.0f} MiB with "
              f"{HELD_CONNECTIONS} connections (opened in {connected:.1f} s); "
              f"{_open_fds(pid)} fds")
    finally:
        for s in held:
            s.close()
    # Once they are gone esb still serves and its fds come back down.
    wait_until(lambda: _open_fds(pid) < 1000, timeout=30, what="connections closed")
    assert requests.get(server.url("/_esb/health"), timeout=10).status_code == 200


def _worker_pid(server, function: str) -> int:
    st = wait_until(lambda: (s := server.pool_status().get(function)) and s["pids"] and s,
                    timeout=30, what=f"a worker of {function}")
    return st["pids"][0]


def test_w1_kill_9_of_a_worker_under_load(esb_up):
    server = esb_up(WORKERS, http=True)
    stop = threading.Event()
    statuses: list[int] = []

    def load():
        # Steady Invoke API load on another function meanwhile.
        client = server.lambda_client()
        while not stop.is_set():
            resp, payload = server.invoke("pid", client=client)
            statuses.append(resp["StatusCode"] if "FunctionError" not in resp else -1)

    ex = ThreadPoolExecutor(5)
    loaders = [ex.submit(load) for _ in range(4)]
    try:
        # One request in flight on the sleeper (HTTP API), its worker killed.
        in_flight = ex.submit(server.get, "/sleep?seconds=20", timeout=60)
        victim = _worker_pid(server, "sleeper")
        server.wait_busy("sleeper")
        os.kill(victim, signal.SIGKILL)
        r = in_flight.result(timeout=30)
        # An HTTP API answers a failed function with 500, as on AWS (a REST
        # API with 502 "Internal server error").
        assert r.status_code == 500, r.text
        assert r.json() == {"message": "Internal Server Error"}
        # Kill a worker of the loaded function too.
        os.kill(_worker_pid(server, "pid"), signal.SIGKILL)
        # The requests after it succeed on new workers.
        for _ in range(3):
            r = server.get("/sleep?seconds=0")
            assert r.status_code == 200, r.text
            assert r.json()["pid"] != victim
        # Let the load run on after the kills.
        count = len(statuses)
        wait_until(lambda: len(statuses) >= count + 20, timeout=60, what="load after the kill")
    finally:
        stop.set()
        for f in loaders:
            f.result(timeout=60)
        ex.shutdown()
    # Every load request got an answer; at most the ones in flight on the
    # killed worker (one per loader) are function errors.
    assert statuses and statuses.count(200) >= len(statuses) - 4, statuses
    assert set(statuses) <= {200, -1}, statuses
    assert "Runtime.ExitError" in server.output()


def test_w13_init_failures_open_the_breaker_and_esb_ps_shows_it(esb_up):
    server = esb_up(WORKERS, http=True)
    for _ in range(3):
        resp, payload = server.invoke("nomodule")
        assert payload["errorType"] == "Runtime.ImportModuleError", payload
        assert "in a row" not in payload["errorMessage"]
    resp, payload = server.invoke("nomodule")
    assert resp["FunctionError"] == "Unhandled"
    assert payload["errorType"] == "Runtime.ImportModuleError", payload
    assert "missing_module" in payload["errorMessage"]
    assert "init failed 3 times in a row" in payload["errorMessage"], payload
    st = server.pool_status()["nomodule"]
    assert st["breaker"] == "open" and st["init_failures"] == 3, st
    assert st["starting"] == 0 and not st["pids"], st
    ps = run_esb("ps", "--data-dir", str(server.data_dir))
    assert ps.returncode == 0, ps.stderr
    line = next(l for l in ps.stdout.decode().splitlines() if l.startswith("nomodule"))
    assert "open (retry in" in line and "3 failed starts" in line, line
    # Other functions are not affected.
    resp, payload = server.invoke("pid")
    assert "FunctionError" not in resp, payload
    assert server.pool_status()["pid"]["breaker"] == "ok"


def test_l6_kill_9_of_esb_under_event_load_loses_no_accepted_event(esb_up, tmp_path):
    template, out = async_app(tmp_path)
    server = esb_up(template, env=ASYNC_ENV)
    client = server.lambda_client(max_pool_connections=8)
    accepted: list[str] = []
    lock = threading.Lock()

    def one(i):
        try:
            r = client.invoke(FunctionName="Count", InvocationType="Event",
                              Payload=json.dumps({"i": i}))
            if r["StatusCode"] == 202:
                with lock:
                    accepted.append(r["ResponseMetadata"]["RequestId"])
        except Exception:  # refused or reset once esb is killed: not accepted
            pass

    with ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(one, i) for i in range(400)]
        # Kill while events are being run, not only queued.
        wait_until(lambda: len(accepted) >= 50 and _ran(out, "count"), timeout=60,
                   what="events accepted and running")
        server._kill_everything(server.worker_pids())
        server.stopped_rc = -9
        for f in futures:
            f.result()
    accepted_ids = set(accepted)
    assert len(accepted_ids) >= 50
    again = start_esb(template, server.data_dir.parent, env=ASYNC_ENV)
    try:
        wait_until(lambda: _ran(out, "count") >= accepted_ids, timeout=180,
                   what=f"all {len(accepted_ids)} accepted events ran after the restart")
    finally:
        rc = again.stop()
    assert rc == 0, again.output()[-3000:]
