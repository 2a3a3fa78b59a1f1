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
