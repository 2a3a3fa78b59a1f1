"""The box image (deploy/box): built locally and offline from the esb
executable under test, run as the two services of deploy/box/compose.yaml
(docker-compose, Debian's package) with the example app — `esb up` with the
data directory on a bind-mounted volume, the engine socket given only to
the agent service — and called with requests as a user would.

Needs a Docker daemon with esb/python3.11 and docker-compose. Outside CI a
missing piece skips the module, saying why; under CI=true it fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from esb_helpers import ESB_BIN, EXAMPLE_APP, REPO, docker_unavailable, free_port, in_ci

BOX = REPO / "deploy" / "box"
IMAGE = "esb/python3.11:latest"


def _run(*args: str, check: bool = True, timeout: float = 300, env=None, cwd=None):
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def _missing() -> str | None:
    return docker_unavailable(IMAGE, ("docker-compose", "ldd", "tar"))


_REASON = _missing()
if _REASON is not None:
    if in_ci():
        raise RuntimeError(f"box image tests cannot run under CI: {_REASON}")
    print(f"skipping box image tests: {_REASON}")
    pytestmark = pytest.mark.skip(reason=_REASON)


def test_compose_file_gives_the_engine_socket_to_the_agent_only():
    compose = yaml.safe_load((BOX / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"esb", "agent"}
    sockets = {name: [v for v in s.get("volumes", []) if "docker.sock" in v]
               for name, s in services.items()}
    assert sockets["esb"] == [], sockets
    assert sockets["agent"] == ["/var/run/docker.sock:/var/run/docker.sock"]
    assert services["esb"]["command"][0] == "up"
    assert services["agent"]["command"][0] == "agent"
    assert "--stage-supervisor" in services["agent"]["command"]


@pytest.fixture
def box(tmp_path):
    """Builds the image, starts the compose project with the example app;
    removes the project, its workers, network and image afterwards."""
    tag = f"esb/box:e2e-{os.getpid()}"
    project = f"esbbox{os.getpid()}"
    instance = f"box{os.getpid()}"
    built = _run(str(BOX / "build.sh"), env=dict(os.environ, ESB_BIN=ESB_BIN, TAG=tag))
    assert f"built {tag}" in built.stdout, built.stdout + built.stderr
    app = tmp_path / "app"
    shutil.copytree(EXAMPLE_APP, app, ignore=shutil.ignore_patterns("__pycache__", ".esb"))
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    env = dict(os.environ, ESB_APP=str(app), ESB_BOX_DATA=str(data), ESB_BOX_IMAGE=tag,
               ESB_LISTEN=f"127.0.0.1:{port}", ESB_AGENT_PORT=str(free_port()),
               ESB_BOX_INSTANCE=instance)
    compose = ["docker-compose", "-p", project, "-f", str(BOX / "compose.yaml")]
    try:
        _run(*compose, "up", "-d", env=env)
        yield {"url": f"https://127.0.0.1:{port}", "data": data, "compose": compose, "env": env,
               "instance": instance, "project": project}
    finally:
        logs = _run(*compose, "logs", "--no-color", check=False, env=env)
        print(logs.stdout[-6000:])
        _run(*compose, "down", "--timeout", "20", check=False, env=env)
        ids = _run("docker", "ps", "-aq", "--filter", f"label=io.esb.instance={instance}",
                   check=False).stdout.split()
        if ids:
            _run("docker", "rm", "-f", *ids, check=False)
        _run("docker", "network", "rm", f"esb-{instance}", check=False)
        _run("docker", "rmi", tag, check=False)


def _wait_healthy(box, timeout: float = 120):
    cert = box["data"] / "tls" / "cert.pem"
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if cert.exists():
            try:
                r = requests.get(box["url"] + "/_esb/health", verify=str(cert), timeout=2)
                if r.status_code == 200:
                    return str(cert)
                last = f"status {r.status_code}"
            except requests.RequestException as e:
                last = repr(e)
        time.sleep(0.3)
    logs = _run(*box["compose"], "logs", "--no-color", check=False, env=box["env"]).stdout
    raise AssertionError(f"the box is not healthy after {timeout}s ({last})\n{logs[-4000:]}")


def _container(box, service: str) -> dict:
    cid = _run(*box["compose"], "ps", "-q", service, env=box["env"]).stdout.strip()
    assert cid, f"no {service} container"
    return json.loads(_run("docker", "inspect", cid).stdout)[0]


def test_box_serves_the_example_app(box):
    cert = _wait_healthy(box)
    r = requests.get(box["url"] + "/dev/hello", verify=cert, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["message"] == "Hello from ESB"
    key = f"k-{os.getpid()}"
    r = requests.post(box["url"] + f"/store/{key}", data="stored from the box",
                      headers={"Content-Type": "text/plain"}, verify=cert, timeout=60)
    assert r.status_code == 201, r.text
    r = requests.get(box["url"] + f"/store/{key}", verify=cert, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "stored from the box"

    # The data directory is the volume: secrets, S3 objects, the agent's token.
    assert (box["data"] / "credentials.json").exists()
    assert (box["data"] / "agent.token").stat().st_mode & 0o777 == 0o600
    assert any((box["data"] / "s3").rglob("*")), "no S3 data in the volume"

    # Only the agent service has the engine socket; the image has no shell.
    esb = _container(box, "esb")
    agent = _container(box, "agent")
    assert not [m for m in esb["Mounts"] if "docker.sock" in m["Source"]], esb["Mounts"]
    assert [m for m in agent["Mounts"] if m["Source"] == "/var/run/docker.sock"], agent["Mounts"]
    assert _run("docker", "exec", esb["Id"], "/bin/sh", "-c", "true", check=False).returncode != 0

    # The function ran in a worker container of the box's agent.
    workers = _run("docker", "ps", "-q", "--filter", f"label=io.esb.instance={box['instance']}",
                   "--filter", "label=io.esb.function=hello").stdout.split()
    assert workers, "no hello worker of the box's agent"
