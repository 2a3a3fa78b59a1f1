"""Reports what a worker can reach: used to check container isolation."""
import json
import os
import socket


def _connect(host, port):
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def _writable(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        os.remove(path)
        return True
    except OSError:
        return False


def handler(event, context):
    q = event.get("queryStringParameters") or {}
    port = q.get("port")
    result = {
        "uid": os.getuid(),
        "docker_sock": os.path.exists("/var/run/docker.sock") or os.path.exists("/run/docker.sock"),
        "root_writable": _writable("/etc/esb-probe"),
        "tmp_writable": _writable("/tmp/esb-probe"),
        "hostname": socket.gethostname(),
    }
    if port:
        result["agent_via_host"] = _connect("esb-host", port)
        result["agent_via_loopback"] = _connect("127.0.0.1", port)
    return {"statusCode": 200, "body": json.dumps(result)}
