"""Handlers of the worker-lifecycle e2e app. They report the worker's pid so
tests can tell warm reuse from a new worker."""

import os
import time


def pid(event, context):
    return {"pid": os.getpid(), "function": context.function_name}


def sleeper(event, context):
    # Invoke API: {"seconds": N}; HTTP API: GET /sleep?seconds=N.
    seconds = event.get("seconds")
    if seconds is None:
        seconds = (event.get("queryStringParameters") or {}).get("seconds", 0)
    seconds = float(seconds)
    time.sleep(seconds)
    return {"pid": os.getpid(), "slept": seconds}


def crash(event, context):
    if event.get("exit"):
        # Leave without answering the Runtime API, like a segfault would.
        os._exit(1)
    return {"pid": os.getpid()}
