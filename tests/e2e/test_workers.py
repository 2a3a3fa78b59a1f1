"""Worker lifecycle through the public surface: warm reuse, reserved
concurrency and the bounded queue, crashes, init errors, idle reaping and the
two Python bootstraps (app: tests/e2e/apps/workers)."""

import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from esb_helpers import WORKERS, pid_alive, require_python_module, wait_until


class Background:
    """Run a call in a thread; keep its result or exception and its duration."""

    def __init__(self, fn, *args, **kwargs):
        self.result = None
        self.error = None
        self.elapsed = None

        def run():
            start = time.monotonic()
            try:
                self.result = fn(*args, **kwargs)
            except Exception as e:
                self.error = e
            finally:
                self.elapsed = time.monotonic() - start

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout=30):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "call still running"
        return self


# ------------------------------------------------------------ warm reuse


def test_warm_worker_is_reused(workers):
    _, first = workers.invoke("pid")
    _, second = workers.invoke("pid")
    _, third = workers.invoke("pid")
    assert first["pid"] == second["pid"] == third["pid"]
    assert first["function"] == "pid"
    # The worker is a process started by this esb up, still alive while warm.
    assert first["pid"] in workers.worker_pids()


def test_http_route_and_invoke_api_share_the_warm_worker(workers):
    _, via_invoke = workers.invoke("sleeper", {"seconds": 0})
    r = workers.get("/sleep?seconds=0")
    assert r.status_code == 200, r.text
    assert r.json()["pid"] == via_invoke["pid"]


# ------------------------------------------------------------ concurrency


def test_reserved_concurrency_exhausted_gives_429_after_queue_timeout(workers):
    holder = Background(workers.invoke, "sleeper", {"seconds": 3})
    workers.wait_busy("sleeper")  # cold start done, the only slot is held
    waiter = Background(workers.invoke, "sleeper", {"seconds": 0})
    waiter.join()
    holder.join()

    assert holder.error is None, holder.error
    resp, payload = holder.result
    assert "FunctionError" not in resp, payload
    assert payload["slept"] == 3

    assert isinstance(waiter.error, ClientError), f"second invocation was not throttled: {waiter.result}"
    err = waiter.error.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert err["Error"]["Code"] == "TooManyRequestsException"
    assert err.get("Reason") == "ReservedFunctionConcurrentInvocationLimitExceeded", err
    # ESB_QUEUE_TIMEOUT=1s: it waited about a second, not until the slot freed.
    assert 0.8 <= waiter.elapsed < 2.5, f"throttled after {waiter.elapsed:.2f}s"


def test_reserved_concurrency_exhausted_gives_429_on_http_route(workers):
    holder = Background(workers.invoke, "sleeper", {"seconds": 3})
    workers.wait_busy("sleeper")
    start = time.monotonic()
    r = workers.get("/sleep?seconds=0")
    elapsed = time.monotonic() - start
    holder.join()
    assert holder.error is None, holder.error
    assert r.status_code == 429, r.text
    assert r.json() == {"message": "Too Many Requests"}
    assert elapsed < 2.5


def test_longer_queue_timeout_waits_for_the_slot(esb_up):
    server = esb_up(WORKERS, env={"ESB_QUEUE_TIMEOUT": "10s"})
    holder = Background(server.invoke, "sleeper", {"seconds": 2})
    server.wait_busy("sleeper")
    waiter = Background(server.invoke, "sleeper", {"seconds": 0})
    waiter.join()
    holder.join()
    assert holder.error is None, holder.error
    assert waiter.error is None, f"second invocation failed instead of waiting: {waiter.error!r}"
    resp, payload = waiter.result
    assert resp["StatusCode"] == 200
    assert "FunctionError" not in resp, payload
    assert waiter.elapsed >= 1.0, f"did not wait for the slot ({waiter.elapsed:.2f}s)"
    # Reserved concurrency 1: one worker served both, one after the other.
    assert payload["pid"] == holder.result[1]["pid"]


def test_max_workers_caps_workers_over_all_functions(esb_up):
    server = esb_up(WORKERS, env={"ESB_MAX_WORKERS": "1", "ESB_QUEUE_TIMEOUT": "1s"})
    _, first = server.invoke("pid")
    # Another function needs the only slot: the idle worker of `pid` makes room.
    resp, other = server.invoke("crash")
    assert "FunctionError" not in resp, other
    assert not pid_alive(first["pid"]), "two workers alive with ESB_MAX_WORKERS=1"
    assert len(server.worker_pids()) <= 1, server.worker_pids()

    holder = Background(server.invoke, "sleeper", {"seconds": 3})
    server.wait_busy("sleeper")
    waiter = Background(server.invoke, "pid")
    waiter.join()
    holder.join()
    assert holder.error is None, holder.error
    assert isinstance(waiter.error, ClientError), f"not throttled: {waiter.result}"
    err = waiter.error.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert err.get("Reason") == "ConcurrentInvocationLimitExceeded", err


# ------------------------------------------------------------ crash, init errors


def test_crashed_worker_is_replaced(workers):
    _, before = workers.invoke("crash")
    resp, payload = workers.invoke("crash", {"exit": True})
    assert resp["StatusCode"] == 200
    assert resp["FunctionError"] == "Unhandled"
    assert payload["errorType"] == "Runtime.ExitError", payload
    assert not pid_alive(before["pid"])

    resp, after = workers.invoke("crash")
    assert "FunctionError" not in resp, after
    assert after["pid"] != before["pid"]


def test_missing_module_is_import_module_error(workers):
    resp, payload = workers.invoke("nomodule")
    assert resp["FunctionError"] == "Unhandled"
    assert payload["errorType"] == "Runtime.ImportModuleError", payload
    assert "missing_module" in payload["errorMessage"]


def test_missing_handler_is_handler_not_found(workers):
    resp, payload = workers.invoke("nohandler")
    assert resp["FunctionError"] == "Unhandled"
    assert payload["errorType"] == "Runtime.HandlerNotFound", payload
    assert "does_not_exist" in payload["errorMessage"]


def test_syntax_error_is_user_code_syntax_error(workers):
    resp, payload = workers.invoke("syntaxerror")
    assert resp["FunctionError"] == "Unhandled"
    # The name awslambdaric (and AWS) use for a handler module that does not parse.
    assert payload["errorType"] == "Runtime.UserCodeSyntaxError", payload
    assert "broken" in payload["errorMessage"]


def test_init_error_does_not_stick(workers):
    # An init failure is reported again on the next call (no hang, no stale
    # worker), and other functions are unaffected.
    for _ in range(2):
        resp, payload = workers.invoke("nohandler")
        assert payload["errorType"] == "Runtime.HandlerNotFound"
    resp, payload = workers.invoke("pid")
    assert "FunctionError" not in resp


# ------------------------------------------------------------ idle reaping


def test_idle_worker_is_stopped_after_idle_timeout(esb_up):
    server = esb_up(WORKERS, env={"ESB_IDLE_TIMEOUT": "1s"})
    _, first = server.invoke("pid")
    wait_until(lambda: not pid_alive(first["pid"]), 15, "the idle worker to stop (1s idle timeout)")
    resp, second = server.invoke("pid")
    assert "FunctionError" not in resp
    assert second["pid"] != first["pid"]


# ------------------------------------------------------------ bootstraps


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.parametrize("bootstrap", ["builtin", "awslambdaric", "auto"])
def test_python_bootstrap(esb_up, bootstrap):
    if bootstrap in ("awslambdaric", "auto"):
        require_python_module("awslambdaric")
    server = esb_up(WORKERS, env={"ESB_PYTHON_BOOTSTRAP": bootstrap})
    resp, payload = server.invoke("pid")
    assert "FunctionError" not in resp, payload
    cmdline = _cmdline(payload["pid"])
    if bootstrap in ("awslambdaric", "auto"):
        # auto picks awslambdaric when it is installed (tests/requirements.txt).
        assert "awslambdaric" in cmdline, cmdline
    else:
        assert "awslambdaric" not in cmdline, cmdline

    # Error shapes are the same whichever runtime client runs the code.
    resp, payload = server.invoke("nohandler")
    assert payload["errorType"] == "Runtime.HandlerNotFound", payload
    resp, payload = server.invoke("nomodule")
    assert payload["errorType"] == "Runtime.ImportModuleError", payload
    resp, payload = server.invoke("syntaxerror")
    assert payload["errorType"] == "Runtime.UserCodeSyntaxError", payload
    resp, payload = server.invoke("crash", {"exit": True})
    assert payload["errorType"] == "Runtime.ExitError", payload
    resp, payload = server.invoke("sleeper", {"seconds": 0})
    assert "FunctionError" not in resp, payload
