"""The other subcommands: validate, generate, invoke (standalone and against
a running server) and ps."""

import json
import re
import threading
import time
from pathlib import Path

import pytest

from esb_helpers import EXAMPLE_APP, WORKERS, copy_app, processes_mentioning, run_esb, text

FUNCTIONS = ["hello", "echo", "items", "storage", "chain", "slow", "fail"]
ROUTE_PATHS = ["/hello", "/echo/{proxy+}", "/items/{id}", "/items/{id}/parts/{part}",
               "/store/{key}", "/chain", "/slow", "/fail"]


@pytest.fixture
def example_copy(tmp_path) -> Path:
    return copy_app(EXAMPLE_APP, tmp_path)


# ------------------------------------------------------------ validate


def test_validate_example_lists_functions_and_routes(example_template):
    proc = run_esb("validate", "-t", str(example_template))
    out = text(proc.stdout)
    assert proc.returncode == 0, text(proc.stderr)
    for name in FUNCTIONS:
        assert re.search(rf"\b{name}\b", out), f"function {name} missing:\n{out}"
    for path in ROUTE_PATHS:
        assert path in out, f"route {path} missing:\n{out}"


def test_validate_json(example_template):
    proc = run_esb("validate", "-t", str(example_template), "--json")
    assert proc.returncode == 0, text(proc.stderr)
    data = json.loads(proc.stdout)
    data = data.get("app", data)  # the model may be wrapped next to warnings
    assert len(data["functions"]) == 7, data["functions"]
    functions = json.dumps(data["functions"])
    for name in FUNCTIONS:
        assert f'"{name}"' in functions, f"function {name} missing from {functions}"
    routes = json.dumps(data["routes"])
    for path in ROUTE_PATHS:
        assert f'"{path}"' in routes, f"route {path} missing from {routes}"
    # hello, echo x2, items x2, storage x2, chain, slow, fail.
    assert len(data["routes"]) >= 10, data["routes"]


HEADER = """AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Resources:
  GoodFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Runtime: python3.11
      CodeUri: src/
"""

NO_HANDLER = HEADER + """  NoHandlerFunction:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.11
      CodeUri: src/
"""

BAD_PATH = HEADER + """  BadPathFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Runtime: python3.11
      CodeUri: src/
      Events:
        Get:
          Type: Api
          Properties:
            Path: /a/{b
            Method: get
"""


@pytest.mark.parametrize("source,resource", [
    (NO_HANDLER, "NoHandlerFunction"),
    (BAD_PATH, "BadPathFunction"),
], ids=["no-handler", "bad-path"])
def test_validate_invalid_template_has_located_error(tmp_path, source, resource):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("def handler(event, context):\n    return {}\n")
    template = tmp_path / "template.yaml"
    template.write_text(source)
    proc = run_esb("validate", "-t", str(template), cwd=tmp_path)
    err = text(proc.stderr)
    assert proc.returncode == 1, (proc.returncode, err, text(proc.stdout))
    assert resource in err, err
    m = re.search(r"template\.yaml:(\d+):(\d+)", err)
    assert m, f"no template.yaml:LINE:COL in:\n{err}"
    line = int(m.group(1))
    lines = source.splitlines()
    first = next(i for i, l in enumerate(lines, 1) if l.strip() == f"{resource}:")
    assert first <= line <= len(lines), f"line {line} is outside {resource} (lines {first}-{len(lines)})"


# ------------------------------------------------------------ generate


def test_generate_functions_and_routing(example_template, tmp_path):
    out_dir = tmp_path / "config"
    proc = run_esb("generate", "-t", str(example_template), "-o", str(out_dir), cwd=tmp_path)
    assert proc.returncode == 0, text(proc.stderr)
    functions = (out_dir / "functions.yml").read_text()
    routing = (out_dir / "routing.yml").read_text()
    for name in FUNCTIONS:
        assert re.search(rf"\b{name}\b", functions), f"{name} missing from functions.yml:\n{functions}"
    for path in ROUTE_PATHS:
        assert path in routing, f"{path} missing from routing.yml:\n{routing}"
    for name in FUNCTIONS:  # every function of the example has a route
        assert re.search(rf"\b{name}\b", routing), f"{name} missing from routing.yml:\n{routing}"


# ------------------------------------------------------------ invoke


def test_invoke_standalone_with_event_file(example_copy, tmp_path):
    event = tmp_path / "event.json"
    event.write_text('{"from": "file"}')
    proc = run_esb("invoke", "hello", "-t", str(example_copy), "-e", str(event), cwd=tmp_path)
    assert proc.returncode == 0, text(proc.stderr)
    payload = json.loads(proc.stdout)  # stdout holds only the payload
    assert payload["statusCode"] == 200
    assert json.loads(payload["body"]) == {"message": "Hello from ESB", "stage": "dev"}
    assert "hello called" in text(proc.stderr), "function output should go to stderr"
    # The one-off worker is gone once esb invoke has exited.
    assert not processes_mentioning(str(example_copy.parent)), "a worker outlived esb invoke"


def test_invoke_standalone_event_from_stdin(example_copy, tmp_path):
    proc = run_esb("invoke", "echo", "-t", str(example_copy), "-e", "-",
                   input=b'{"k": "v", "n": [1, 2]}', cwd=tmp_path)
    assert proc.returncode == 0, text(proc.stderr)
    payload = json.loads(proc.stdout)
    assert json.loads(payload["body"]) == {"event": {"k": "v", "n": [1, 2]}, "function": "echo"}


def test_invoke_standalone_function_error_exits_1(example_copy, tmp_path):
    proc = run_esb("invoke", "fail", "-t", str(example_copy), "-e", "-", input=b"{}", cwd=tmp_path)
    assert proc.returncode == 1, (text(proc.stdout), text(proc.stderr))
    assert "PaymentDeclined" in text(proc.stdout) + text(proc.stderr)


def test_invoke_standalone_unknown_function(example_copy, tmp_path):
    proc = run_esb("invoke", "no-such-function", "-t", str(example_copy), "-e", "-",
                   input=b"{}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "no-such-function" in text(proc.stderr)


def test_invoke_against_running_server_function_error_exits_1(example, tmp_path):
    # --data-dir: esb invoke signs with the box's credentials.json there.
    proc = run_esb("invoke", "fail", "--endpoint", example.base_url, "--ca-cert", str(example.cert),
                   "--data-dir", str(example.data_dir), "-e", "-", input=b"{}", cwd=tmp_path)
    err = text(proc.stderr)
    assert proc.returncode == 1, (text(proc.stdout), err)
    assert "PaymentDeclined" in text(proc.stdout) + err


@pytest.mark.parametrize("trust", ["ca-cert", "insecure"])
def test_invoke_against_running_server(example, tmp_path, trust):
    flags = ["--ca-cert", str(example.cert)] if trust == "ca-cert" else ["--insecure"]
    proc = run_esb("invoke", "hello", "--endpoint", example.base_url, *flags,
                   "--data-dir", str(example.data_dir), "-e", "-", input=b"{}", cwd=tmp_path)
    err = text(proc.stderr)
    assert proc.returncode == 0, err
    payload = json.loads(proc.stdout)
    assert json.loads(payload["body"])["message"] == "Hello from ESB"


# ------------------------------------------------------------ ps


def ps_table(server) -> dict[str, dict[str, str]]:
    """Run `esb ps` and return {function: {column: value}}."""
    proc = run_esb("ps", "--data-dir", str(server.data_dir))
    out = text(proc.stdout)
    assert proc.returncode == 0, text(proc.stderr)
    lines = [l for l in out.splitlines() if l.strip()]
    header_idx = next((i for i, l in enumerate(lines) if "warm" in l.lower()), None)
    assert header_idx is not None, f"no header with a WARM column:\n{out}"
    columns = [c.lower() for c in lines[header_idx].split()]
    rows = {}
    for line in lines[header_idx + 1:]:
        cells = line.split()
        # Trailing columns (e.g. a list of pids) may be empty for idle functions.
        if len(cells) >= 2:
            rows[cells[0]] = dict(zip(columns, cells))
    assert rows, f"no rows parsed from:\n{out}"
    return rows


def column(row: dict, name: str) -> str:
    keys = [k for k in row if k.startswith(name)]
    assert keys, f"no {name} column in {row}"
    return row[keys[0]]


def test_ps_shows_warm_and_busy_workers(esb_up):
    server = esb_up(WORKERS)
    server.invoke("pid")
    rows = ps_table(server)
    for name in ("pid", "sleeper", "crash"):
        assert name in rows, f"{name} missing from esb ps: {rows}"
    assert column(rows["pid"], "warm") == "1"
    assert column(rows["pid"], "busy") == "0"
    assert column(rows["sleeper"], "warm") == "0"

    t = threading.Thread(target=server.invoke, args=("sleeper", {"seconds": 2}))
    t.start()
    deadline = time.monotonic() + 10
    busy = "0"
    while time.monotonic() < deadline:
        busy = column(ps_table(server)["sleeper"], "busy")
        if busy == "1":
            break
        time.sleep(0.2)
    t.join(15)
    assert busy == "1", "esb ps never showed the sleeper busy while it ran"


def test_every_command_resolves_the_data_dir_from_env_and_esb_toml(tmp_path):
    from esb_helpers import run_esb, text
    via_env = tmp_path / "env-data"
    via_file = tmp_path / "file-data"
    work = tmp_path / "work"
    work.mkdir()
    # user: ESB_DATA_DIR is where the user pool goes.
    add = run_esb("user", "add", "alice", cwd=work, input=b"pw-0123456789\n",
                  env={"ESB_DATA_DIR": str(via_env)})
    assert add.returncode == 0, text(add.stderr)
    assert (via_env / "users.json").is_file()
    assert not (work / ".esb").exists(), "user ignored ESB_DATA_DIR"
    listed = run_esb("user", "list", cwd=work, env={"ESB_DATA_DIR": str(via_env)})
    assert "alice" in text(listed.stdout)
    # esb.toml: read by user, logs, ps and down alike.
    (work / "esb.toml").write_text(f'data_dir = "{via_file}"\n')
    add = run_esb("user", "add", "bob", cwd=work, input=b"pw-0123456789\n")
    assert add.returncode == 0, text(add.stderr)
    assert (via_file / "users.json").is_file()
    for cmd in (["logs"], ["ps"], ["down"]):
        r = run_esb(*cmd, cwd=work)
        assert r.returncode != 0
        assert str(via_file) in text(r.stderr), f"{cmd}: {text(r.stderr)}"
    # The variable beats the file, the flag beats both.
    r = run_esb("ps", cwd=work, env={"ESB_DATA_DIR": str(via_env)})
    assert str(via_env) in text(r.stderr), text(r.stderr)
    r = run_esb("logs", "--data-dir", str(tmp_path / "flag"), cwd=work,
                env={"ESB_DATA_DIR": str(via_env)})
    assert str(tmp_path / "flag") in text(r.stderr), text(r.stderr)
