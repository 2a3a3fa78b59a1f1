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
    return {
        "boot": BOOT,
        "uid": os.getuid(),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "cgroup": open("/proc/self/cgroup").read(),
    }


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
    # 2. SIGSTOP a victim by its host pid.
    victim = event.get("victim_pid")
    if victim:
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
    # 4. Files of the box: the data dir.
    data_dir = event.get("data_dir")
    if data_dir:
        # Only ESB's own runtime files (<data dir>/runtime) may show up.
        found["data_dir_entries"] = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []
        found["credentials_visible"] = os.path.exists(os.path.join(data_dir, "credentials.json"))
    found["uid"] = os.getuid()
    found["task_root_writable"] = os.access(os.environ["LAMBDA_TASK_ROOT"], os.W_OK)
    return found
