"""Handlers of the isolation e2e app: they do what a hostile function would
(leave processes behind, allocate past MemorySize) and report limits."""

import os
import resource
import subprocess
import sys
import time
import uuid

# Identifies this runtime process (pids repeat inside a PID namespace).
BOOT = uuid.uuid4().hex


def spawner(event, context):
    # A detached grandchild in its own session (setsid escapes the process
    # group), named by the test's marker so the test can find it; then
    # outlive the function's timeout.
    marker = event["marker"]
    subprocess.Popen(
        ["setsid", sys.executable, "-c", "import time; time.sleep(600)", marker],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(float(event.get("seconds", 600)))
    return {"pid": os.getpid()}


def memhog(event, context):
    mb = int(event.get("mb", 0))
    # bytes * n writes every page, so the memory is really used.
    block = b"x" * (mb * 1024 * 1024)
    return {"boot": BOOT, "allocated_mb": len(block) // (1024 * 1024)}


def limits(event, context):
    marker = event.get("tmp_marker")
    if marker:
        with open(os.path.join("/tmp", marker), "w") as f:
            f.write("worker")
    tmp = os.statvfs("/tmp")
    status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines()
                  if ":\t" in line)
    return {
        "caps": {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
        "no_new_privs": status.get("NoNewPrivs", "").strip(),
        "tmp_bytes": tmp.f_blocks * tmp.f_frsize,
        "boot": BOOT,
        "uid": os.getuid(),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "cgroup": open("/proc/self/cgroup").read(),
    }


def slow(event, context):
    """A victim: says which request it runs, then answers after a while."""
    print(f"slow-started {event.get('marker')} {context.aws_request_id}", flush=True)
    time.sleep(float(event.get("seconds", 0)))
    return {"genuine": True, "boot": BOOT, "secret": event.get("secret")}


def _runtime_api(address: str, method: str, path: str, body: bytes | None = None,
                 sent=None) -> dict:
    """One Runtime API request to `address`; `sent()` runs once it is on
    the wire. Returns the status, request id and body, or the error."""
    import http.client

    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, f"/2018-06-01/runtime/{path}", body=body)
        if sent:
            sent()
        resp = conn.getresponse()
        return {"status": resp.status,
                "request_id": resp.getheader("Lambda-Runtime-Aws-Request-Id"),
                "body": resp.read().decode(errors="replace")}
    except OSError as e:
        if sent:
            sent()
        return {"error": type(e).__name__}
    finally:
        conn.close()


def attacker(event, context):
    """What a hostile function tries against its neighbours."""
    import signal
    import socket

    found = {}
    # 1. Other workers' environments (their Runtime API address).
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = open(f"/proc/{entry}/environ", "rb").read().decode(errors="replace")
            except OSError:
                continue
            for var in env.split("\0"):
                if var.startswith("AWS_LAMBDA_FUNCTION_NAME="):
                    found.setdefault("functions_seen", []).append(var.split("=", 1)[1])
    victim = event.get("victim_pid")
    # 1b. The victim's environment by its pid (from /_esb/status).
    if victim:
        try:
            env = open(f"/proc/{victim}/environ", "rb").read().decode(errors="replace")
            found["victim_environ"] = [v for v in env.split("\0")
                                       if v.startswith("AWS_LAMBDA_RUNTIME_API=")] or "read"
        except OSError as e:
            found["victim_environ"] = type(e).__name__
    # 2. SIGSTOP a victim by its host pid.
    if victim and not event.get("steal_from"):
        try:
            os.kill(int(victim), signal.SIGSTOP)
            found["sigstop"] = "sent"
        except OSError as e:
            found["sigstop"] = type(e).__name__
    # 3. Reach a listener on the host loopback (another worker's Runtime API
    # in the unsandboxed model).
    port = event.get("host_port")
    if port:
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=2):
                found["host_port"] = "connected"
        except OSError as e:
            found["host_port"] = type(e).__name__
    # 3b. Take the victim's next event from its Runtime API (stopped, it
    # cannot ask for it first), answer it with a forged response.
    api = event.get("steal_from")
    if api:
        if victim:
            try:
                os.kill(int(victim), signal.SIGSTOP)
            except OSError:
                pass
        marker = event.get("marker")
        try:
            stolen = _runtime_api(api, "GET", "invocation/next",
                                  sent=lambda: print(f"steal-waiting {marker}", flush=True))
            found["steal"] = stolen
            if stolen.get("request_id"):
                found["forged"] = _runtime_api(
                    api, "POST", f"invocation/{stolen['request_id']}/response", b'{"forged": true}')
        finally:
            if victim:
                try:
                    os.kill(int(victim), signal.SIGCONT)
                except OSError:
                    pass
    # 3c. A forged response for a request id seen elsewhere.
    forge = event.get("forge")
    if forge:
        found["forge"] = _runtime_api(
            forge["api"], "POST", f"invocation/{forge['request_id']}/response", b'{"forged": true}')
    # 3d. Read files: the box's secrets, another function's code.
    files = {}
    for path in event.get("read_files", []):
        try:
            with open(path, "rb") as f:
                f.read()
            files[path] = "read"
        except OSError as e:
            files[path] = type(e).__name__
    found["files"] = files
    # 3e. Change its own code.
    name = event.get("write_code")
    if name:
        try:
            with open(os.path.join(os.environ["LAMBDA_TASK_ROOT"], name), "w") as f:
                f.write("pwned")
            found["code_write"] = "written"
        except OSError as e:
            found["code_write"] = type(e).__name__
    # 4. Files of the box: the data dir.
    data_dir = event.get("data_dir")
    if data_dir:
        # Only ESB's own runtime files (<data dir>/runtime) may show up.
        found["data_dir_entries"] = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []
        found["credentials_visible"] = os.path.exists(os.path.join(data_dir, "credentials.json"))
    found["uid"] = os.getuid()
    found["task_root_writable"] = os.access(os.environ["LAMBDA_TASK_ROOT"], os.W_OK)
    return found
