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
    if q.get("read"):
        files = {}
        for path in q["read"].split(","):
            try:
                with open(path, "rb") as f:
                    f.read(1)
                files[path] = "read"
            except OSError as e:
                files[path] = type(e).__name__
        result["files"] = files
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
        result["pids"] = pids
        try:
            with open("/proc/1/cmdline", "rb") as f:
                result["pid1"] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError as e:
            result["pid1"] = type(e).__name__
        result["access_key_id"] = os.environ.get("AWS_ACCESS_KEY_ID", "")
        result["runtime_api"] = os.environ.get("AWS_LAMBDA_RUNTIME_API", "")
    if q.get("say"):
        # Output for the log checks: `flood` lines, then the marker.
        for i in range(int(q.get("flood", "0"))):
            print(f"flood {i}")
        print(q["say"], flush=True)
    if q.get("peer"):
        host, peer_port = q["peer"].rsplit(":", 1)
        result["peer_reachable"] = _connect(host, peer_port)
    if port:
        result["agent_via_host"] = _connect("esb-host", port)
        result["agent_via_loopback"] = _connect("127.0.0.1", port)
    return {"statusCode": 200, "body": json.dumps(result)}
