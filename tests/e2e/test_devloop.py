"""SAM's developer-loop flags and files: `--parameter-overrides` in every
form SAM takes, `--env-vars FILE`, `samconfig.toml`/`.yaml`, and
`esb invoke` without `-e` (uses `{}`, never reads stdin, stdout holds only
the result)."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from esb_helpers import ESB_BIN, run_esb, text

TEMPLATE = """AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Parameters:
  Stage:
    Type: String
    Default: dev
  Greeting:
    Type: String
    Default: Hello
Resources:
  EnvFn:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: env-fn
      CodeUri: src/
      Handler: app.handler
      Runtime: python3.11
      Environment:
        Variables:
          STAGE: !Ref Stage
          GREETING: !Ref Greeting
          FROM_TEMPLATE: template
  OtherFn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.handler
      Runtime: python3.11
"""

HANDLER = """import os


def handler(event, context):
    print("log line goes to stderr")
    keys = ["STAGE", "GREETING", "FROM_TEMPLATE", "SHARED", "OWN", "LEVEL"]
    return {"env": {k: os.environ.get(k) for k in keys}, "event": event}
"""


@pytest.fixture
def app(tmp_path) -> Path:
    root = tmp_path / "app"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text(HANDLER)
    (root / "template.yaml").write_text(TEMPLATE)
    return root


def invoke(app: Path, *args: str, fn: str = "EnvFn") -> dict:
    proc = run_esb("invoke", fn, "--data-dir", str(app / ".esb"), *args, cwd=app, input=b"")
    assert proc.returncode == 0, text(proc.stderr)
    return json.loads(proc.stdout)  # stdout holds only the result


@pytest.mark.parametrize("args, stage, greeting", [
    (["--parameter-overrides", "Stage=prod Greeting=Hi"], "prod", "Hi"),
    (["--parameter-overrides", "Stage=prod Greeting=\"Hello there\""], "prod", "Hello there"),
    (["--parameter-overrides", "Stage=prod", "Greeting='Good day'"], "prod", "Good day"),
    (["--parameter-overrides",
      "ParameterKey=Stage,ParameterValue=qa ParameterKey=Greeting,ParameterValue=\"Hi you\""],
     "qa", "Hi you"),
    ([], "dev", "Hello"),
])
def test_parameter_overrides_in_sams_forms(app, args, stage, greeting):
    env = invoke(app, "-t", "template.yaml", *args)["env"]
    assert env["STAGE"] == stage
    assert env["GREETING"] == greeting


def test_bad_parameter_overrides_are_refused(app):
    proc = run_esb("invoke", "EnvFn", "--parameter-overrides", "Stage=\"open",
                   cwd=app, input=b"")
    assert proc.returncode != 0
    assert "parameter_overrides" in text(proc.stderr), text(proc.stderr)


def test_env_vars_file_per_logical_id_function_name_and_parameters(app):
    (app / "env.json").write_text(json.dumps({
        "Parameters": {"SHARED": "all", "GREETING": "params", "LEVEL": 3},
        "EnvFn": {"OWN": "by-logical-id"},
        "env-fn": {"GREETING": "by-name"},
    }))
    env = invoke(app, "--env-vars", "env.json")["env"]
    assert env["SHARED"] == "all"
    assert env["LEVEL"] == "3"
    assert env["OWN"] == "by-logical-id"
    assert env["GREETING"] == "by-name", "a function's own entry beats Parameters"
    assert env["FROM_TEMPLATE"] == "template"
    other = invoke(app, "--env-vars", "env.json", fn="OtherFn")["env"]
    assert other["SHARED"] == "all"
    assert other["OWN"] is None, "another function's entry must not leak"


def test_broken_env_vars_file_is_a_clear_error(app):
    (app / "env.json").write_text("{not json")
    proc = run_esb("invoke", "EnvFn", "--env-vars", "env.json", cwd=app, input=b"")
    assert proc.returncode != 0
    assert "env.json" in text(proc.stderr), text(proc.stderr)


def test_samconfig_toml_sets_overrides_and_env_vars(app):
    (app / "env.json").write_text(json.dumps({"Parameters": {"SHARED": "from-samconfig"}}))
    (app / "samconfig.toml").write_text(
        'version = 0.1\n'
        '[default.global.parameters]\n'
        'parameter_overrides = "Stage=global Greeting=\\"Hi all\\""\n'
        '[default.local_invoke.parameters]\n'
        'parameter_overrides = "Stage=invoke"\n'
        'env_vars = "env.json"\n'
        '[default.deploy.parameters]\n'
        'capabilities = "CAPABILITY_IAM"\n'
    )
    env = invoke(app)["env"]
    assert env["STAGE"] == "invoke"
    assert env["GREETING"] == "Hi all"
    assert env["SHARED"] == "from-samconfig"
    # A flag beats samconfig.
    env = invoke(app, "--parameter-overrides", "Stage=flag")["env"]
    assert env["STAGE"] == "flag"


def test_samconfig_yaml(app):
    (app / "samconfig.yaml").write_text(
        "version: 0.1\ndefault:\n  local_invoke:\n    parameters:\n"
        "      parameter_overrides:\n        - Stage=yaml\n"
    )
    assert invoke(app)["env"]["STAGE"] == "yaml"


def test_validate_takes_overrides_in_one_string(app):
    proc = run_esb("validate", "--parameter-overrides", "Stage=prod Greeting=Hi", cwd=app)
    assert proc.returncode == 0, text(proc.stderr)


def test_invoke_without_event_uses_empty_object_and_never_reads_stdin(app):
    # stdin stays open and empty: an esb that reads it would hang.
    proc = subprocess.Popen([ESB_BIN, "invoke", "EnvFn", "--data-dir", str(app / ".esb")],
                            cwd=app, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = _wait_open_stdin(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, text(err)
    result = json.loads(out)
    assert result["event"] == {}
    assert "log line goes to stderr" in text(err)
    assert "log line" not in text(out)


def _wait_open_stdin(proc: subprocess.Popen, timeout: float = 60):
    """Wait for the process without closing its stdin."""
    proc.wait(timeout=timeout)
    return proc.stdout.read(), proc.stderr.read()


# ------------------------------------------------------------ checks at start

BROKEN = """AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Resources:
  Good:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: src/, Handler: app.handler, Runtime: python3.11}
  NoDir:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: nope/, Handler: app.handler, Runtime: python3.11}
  NoFile:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: src/, Handler: missing.handler, Runtime: python3.11}
  OldNode:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: src/, Handler: app.handler, Runtime: nodejs16.x}
"""


@pytest.fixture
def broken(app) -> Path:
    (app / "template.yaml").write_text(BROKEN)
    return app


def test_validate_fails_on_functions_that_cannot_run(broken):
    proc = run_esb("validate", cwd=broken)
    err = text(proc.stderr)
    assert proc.returncode == 1, err
    assert "Resources.NoDir.Properties.CodeUri" in err and "does not exist" in err, err
    assert "Resources.NoFile.Properties.Handler" in err and "missing" in err, err
    assert "Resources.OldNode.Properties.Runtime" in err and "nodejs16.x" in err, err
    assert "Resources.Good" not in err, err


def test_invoke_names_the_reason_a_function_cannot_run(broken):
    proc = run_esb("invoke", "NoDir", "--data-dir", str(broken / ".esb"), cwd=broken, input=b"")
    err = text(proc.stderr)
    assert proc.returncode != 0
    assert "code folder" in err and "nope" in err, err
    assert "python" not in err.split("code folder")[0].lower(), "must not blame the interpreter"
    ok = run_esb("invoke", "Good", "--data-dir", str(broken / ".esb"), cwd=broken, input=b"")
    assert ok.returncode == 0, text(ok.stderr)


def _python_version_not_on_host() -> str:
    """A Python 3.X the machine cannot run as `python3.X` (absent, or a
    pyenv shim of a version that is not active)."""
    for minor in (13, 12, 10, 9, 11):
        try:
            ok = subprocess.run([f"python3.{minor}", "-c", "pass"], capture_output=True,
                                timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if not ok:
            return f"3.{minor}"
    pytest.skip("every Python 3.9-3.13 is installed")


def test_python_version_the_host_lacks_fails_at_start(app, tmp_path):
    """`python3.X` runs on a Python 3.X, never silently on another one:
    `validate` fails, `invoke` refuses, `up` warns and leaves it out."""
    from esb_helpers import start_esb

    missing = _python_version_not_on_host()
    template = app / "template.yaml"
    template.write_text(TEMPLATE.replace(
        "      CodeUri: src/\n      Handler: app.handler\n      Runtime: python3.11\n"
        "      Environment:",
        f"      CodeUri: src/\n      Handler: app.handler\n      Runtime: python{missing}\n"
        "      Environment:", 1))
    assert f"python{missing}" in template.read_text()
    proc = run_esb("validate", cwd=app)
    err = text(proc.stderr)
    assert proc.returncode == 1, err
    assert "Resources.EnvFn.Properties.Runtime" in err, err
    assert f"needs a Python {missing} interpreter" in err, err
    assert "Resources.OtherFn" not in err, err
    proc = run_esb("invoke", "EnvFn", "--data-dir", str(app / ".esb"), cwd=app, input=b"")
    assert proc.returncode != 0
    assert f"Python {missing}" in text(proc.stderr), text(proc.stderr)
    server = start_esb(template, tmp_path)
    try:
        assert f"needs a Python {missing} interpreter" in server.output()
        import botocore.exceptions
        resp, _ = server.invoke("OtherFn", {})
        assert resp["StatusCode"] == 200
        with pytest.raises(botocore.exceptions.ClientError) as left_out:
            server.invoke("env-fn", {})
        assert left_out.value.response["Error"]["Code"] == "ResourceNotFoundException"
    finally:
        server.stop()


# ------------------------------------------------------------ invoke standalone: local services

SERVICES = """AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Resources:
  Bucket:
    Type: AWS::S3::Bucket
    Properties: {BucketName: devloop-bucket}
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: devloop-table
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions: [{AttributeName: pk, AttributeType: S}]
      KeySchema: [{AttributeName: pk, KeyType: HASH}]
  Store:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: src/, Handler: store.handler, Runtime: python3.11, Timeout: 20}
"""

STORE = """import os
import boto3
from botocore.config import Config

CFG = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})


def handler(event, context):
    s3 = boto3.client("s3", config=CFG)
    s3.put_object(Bucket="devloop-bucket", Key="k", Body=event["value"].encode())
    body = s3.get_object(Bucket="devloop-bucket", Key="k")["Body"].read().decode()
    db = boto3.client("dynamodb", config=CFG)
    db.put_item(TableName="devloop-table", Item={"pk": {"S": "a"}, "v": {"S": body}})
    item = db.get_item(TableName="devloop-table", Key={"pk": {"S": "a"}})["Item"]
    return {"s3": body, "ddb": item["v"]["S"],
            "s3_endpoint": os.environ.get("AWS_ENDPOINT_URL_S3"),
            "ddb_endpoint": os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")}
"""


def test_invoke_standalone_serves_s3_and_dynamodb_locally(app, tmp_path):
    (app / "template.yaml").write_text(SERVICES)
    (app / "src" / "store.py").write_text(STORE)
    event = tmp_path / "e.json"
    event.write_text('{"value": "persisted"}')
    data = app / ".esb"
    proc = run_esb("invoke", "Store", "-e", str(event), "--data-dir", str(data), cwd=app,
                   input=b"", env={"AWS_ACCESS_KEY_ID": "AKIAREAL", "AWS_SECRET_ACCESS_KEY": "x"})
    assert proc.returncode == 0, text(proc.stderr) + text(proc.stdout)
    out = json.loads(proc.stdout)
    assert out["s3"] == "persisted" and out["ddb"] == "persisted", out
    assert out["s3_endpoint"].startswith("http://127.0.0.1:"), out
    assert out["ddb_endpoint"].startswith("http://127.0.0.1:"), out
    # The object is in the data dir, so a later call (or esb up) sees it.
    assert any(p.is_file() for p in (data / "s3").rglob("*")), "nothing under the data dir's s3/"


# ------------------------------------------------------------ small fixes

def test_version_flag():
    proc = run_esb("--version")
    assert proc.returncode == 0, text(proc.stderr)
    assert text(proc.stdout).startswith("esb "), text(proc.stdout)


def test_invoke_writes_no_pycache_into_the_code_folder(app):
    invoke(app)
    assert not list((app / "src").rglob("__pycache__")), "bytecode written into the code folder"


def test_logs_of_an_unknown_function_is_an_error(app):
    invoke(app)  # the data dir exists
    (app / ".esb" / "logs").mkdir(parents=True, exist_ok=True)
    proc = run_esb("logs", "nosuchfn", "--data-dir", str(app / ".esb"), cwd=app)
    assert proc.returncode != 0
    assert "nosuchfn" in text(proc.stderr), text(proc.stderr)
    # A function of the template that has not logged yet is not an error.
    ok = run_esb("logs", "EnvFn", "--data-dir", str(app / ".esb"), cwd=app)
    assert ok.returncode == 0, text(ok.stderr)


def test_up_on_localhost_prints_a_working_aws_lambda_invoke_line(app, tmp_path):
    import os
    import shlex
    import shutil
    import time

    import requests

    from esb_helpers import free_port, in_ci, missing_dependency

    aws = shutil.which("aws")
    if not aws:
        missing_dependency("aws CLI")
    port = free_port()
    data = tmp_path / "data"
    log = tmp_path / "up.log"
    env = dict(os.environ, ESB_S3_LISTEN="127.0.0.1:0", ESB_DYNAMODB_LISTEN="127.0.0.1:0")
    with open(log, "wb") as out:
        proc = subprocess.Popen([ESB_BIN, "up", "--listen", f"localhost:{port}",
                                 "--data-dir", str(data)], cwd=app, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if requests.get(f"https://127.0.0.1:{port}/_esb/health",
                                verify=str(data / "tls" / "cert.pem"), timeout=2).ok:
                    break
            except (requests.RequestException, OSError):
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        output = log.read_text()
        assert "\x1b[" not in output, "colour codes in redirected output"
        line = next((l.strip() for l in output.splitlines()
                     if l.strip().startswith("aws lambda invoke")), None)
        assert line and "--ca-bundle" in line, output
        creds = json.loads((data / "credentials.json").read_text())
        cmd = shlex.split(line.replace("NAME", "EnvFn").replace("out.json", str(tmp_path / "o.json")))
        run = subprocess.run(cmd, capture_output=True, timeout=60, env=dict(
            os.environ, AWS_ACCESS_KEY_ID=creds["aws_access_key_id"],
            AWS_SECRET_ACCESS_KEY=creds["aws_secret_access_key"], AWS_CA_BUNDLE=""))
        assert run.returncode == 0, text(run.stderr)
        assert json.loads((tmp_path / "o.json").read_text())["env"]["STAGE"] == "dev"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("shell, marker", [("bash", "complete -F"), ("zsh", "#compdef esb"),
                                           ("fish", "complete -c esb")])
def test_completions(shell, marker):
    proc = run_esb("completions", shell)
    assert proc.returncode == 0, text(proc.stderr)
    out = text(proc.stdout)
    assert marker in out, out[:300]
    assert "invoke" in out and "parameter-overrides" in out


# ------------------------------------------------------------ Lambda control-plane reads

def test_aws_cli_lists_and_describes_functions(app, tmp_path):
    import os
    import shutil

    from esb_helpers import missing_dependency, start_esb

    if not shutil.which("aws"):
        missing_dependency("aws CLI")
    server = start_esb(app / "template.yaml", tmp_path)
    try:
        creds = json.loads((server.data_dir / "credentials.json").read_text())
        env = dict(os.environ, AWS_ACCESS_KEY_ID=creds["aws_access_key_id"],
                   AWS_SECRET_ACCESS_KEY=creds["aws_secret_access_key"],
                   AWS_DEFAULT_REGION="us-east-1")

        def aws(*args: str, signed: bool = True) -> subprocess.CompletedProcess:
            extra = [] if signed else ["--no-sign-request"]
            return subprocess.run(["aws", "lambda", *args, "--endpoint-url", server.base_url,
                                   "--ca-bundle", str(server.cert), "--output", "json", *extra],
                                  capture_output=True, timeout=60, env=env)

        listed = aws("list-functions")
        assert listed.returncode == 0, text(listed.stderr)
        functions = json.loads(listed.stdout)["Functions"]
        names = sorted(f["FunctionName"] for f in functions)
        assert names == ["OtherFn", "env-fn"], names
        env_fn = next(f for f in functions if f["FunctionName"] == "env-fn")
        assert env_fn["Runtime"] == "python3.11" and env_fn["Handler"] == "app.handler"
        assert env_fn["FunctionArn"].endswith(":function:env-fn")
        assert "Environment" not in env_fn, "the box's credentials must not be listed"

        conf = aws("get-function-configuration", "--function-name", "EnvFn")
        assert conf.returncode == 0, text(conf.stderr)
        assert json.loads(conf.stdout)["FunctionName"] == "env-fn"
        missing = aws("get-function-configuration", "--function-name", "nope")
        assert missing.returncode != 0 and "ResourceNotFoundException" in text(missing.stderr)

        account = aws("get-account-settings")
        assert account.returncode == 0, text(account.stderr)
        assert json.loads(account.stdout)["AccountUsage"]["FunctionCount"] == 2

        unsigned = aws("list-functions", signed=False)
        assert unsigned.returncode != 0, "unsigned control-plane reads must be refused"
    finally:
        server.stop()


# ------------------------------------------------------------ hot reload

VERSIONED = """def handler(event, context):
    return {"version": VERSION}
"""


def test_hot_reload_serves_new_code_and_survives_a_broken_template(app, tmp_path):
    import statistics
    import time

    from esb_helpers import start_esb, wait_until

    handler = app / "src" / "app.py"
    handler.write_text(VERSIONED.replace("VERSION", "0"))
    server = start_esb(app / "template.yaml", tmp_path)
    try:
        _, payload = server.invoke("EnvFn", {})
        assert payload == {"version": 0}, payload
        delays = []
        for i in range(1, 21):
            handler.write_text(VERSIONED.replace("VERSION", str(i)))
            t0 = time.monotonic()
            deadline = t0 + 10
            while True:
                _, payload = server.invoke("EnvFn", {})
                if payload == {"version": i}:
                    break
                assert payload["version"] == i - 1, payload
                assert time.monotonic() < deadline, f"edit {i} not served after 10 s: {payload}"
                time.sleep(0.01)
            delays.append(time.monotonic() - t0)
        p50 = statistics.median(delays)
        print(f"hot reload: write -> first response on new code p50 {p50 * 1000:.0f} ms, "
              f"max {max(delays) * 1000:.0f} ms over {len(delays)} edits")
        assert p50 < 1.0, delays

        # A broken template keeps the running app and says where it broke.
        template = app / "template.yaml"
        good = template.read_text()
        template.write_text(good.replace("Resources:", "Resources: [", 1))
        wait_until(lambda: "reload failed" in server.output(), what="the reload error")
        assert "template.yaml" in server.output()
        _, payload = server.invoke("EnvFn", {})
        assert payload == {"version": 20}, payload
        template.write_text(good)
    finally:
        server.stop()


def test_no_watch_keeps_the_old_code(app, tmp_path):
    import time

    from esb_helpers import start_esb

    handler = app / "src" / "app.py"
    handler.write_text(VERSIONED.replace("VERSION", "0"))
    server = start_esb(app / "template.yaml", tmp_path, "--no-watch")
    try:
        assert server.invoke("EnvFn", {})[1] == {"version": 0}
        handler.write_text(VERSIONED.replace("VERSION", "1"))
        time.sleep(0.5)  # nothing to poll for: the absence of a reload
        assert server.invoke("EnvFn", {})[1] == {"version": 0}
    finally:
        server.stop()


# ------------------------------------------------------------ esb build (zip functions, layers)

BUILD_TEMPLATE = """AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Resources:
  Deps:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.handler
      Runtime: python3.11
      Layers: [!Ref Shared]
  Shared:
    Type: AWS::Serverless::LayerVersion
    Properties: {ContentUri: layer/, CompatibleRuntimes: [python3.11]}
  NodeDeps:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: nodesrc/, Handler: index.handler, Runtime: NODE_RUNTIME}
"""

BUILD_HANDLER = """import six
import layerlib


def handler(event, context):
    return {"six": six.__file__, "layerlib": layerlib.__file__, "version": six.__version__}
"""

NODE_HANDLER = """
const lib = require("esb-test-lib");
exports.handler = async () => ({ lib: lib.hello(), from: require.resolve("esb-test-lib") });
"""


def _node_runtime() -> str:
    from esb_helpers import require_tool
    node = require_tool("node")
    major = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    return f"nodejs{major.lstrip('v').split('.')[0]}.x"


@pytest.fixture
def build_app(tmp_path) -> Path:
    from esb_helpers import require_tool
    require_tool("npm")
    root = tmp_path / "app"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text(BUILD_HANDLER)
    (root / "src" / "requirements.txt").write_text("six==1.16.0\n")
    (root / "layer").mkdir()
    # A local sdist-free dependency: a folder pip installs from a path.
    lib = tmp_path / "layerlib"
    (lib / "layerlib").mkdir(parents=True)
    (lib / "layerlib" / "__init__.py").write_text("VALUE = 1\n")
    (lib / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "layerlib"\nversion = "1.0"\n')
    (root / "layer" / "requirements.txt").write_text(f"{lib}\n")
    # A local npm package (absolute file: path, no registry needed).
    nlib = tmp_path / "esb-test-lib"
    nlib.mkdir()
    (nlib / "package.json").write_text('{"name": "esb-test-lib", "version": "1.0.0", "main": "index.js"}')
    (nlib / "index.js").write_text('exports.hello = () => "hello from a dependency";\n')
    (root / "nodesrc").mkdir()
    (root / "nodesrc" / "index.js").write_text(NODE_HANDLER)
    (root / "nodesrc" / "package.json").write_text(json.dumps(
        {"name": "fn", "version": "1.0.0", "dependencies": {"esb-test-lib": f"file:{nlib}"}}))
    (root / "template.yaml").write_text(BUILD_TEMPLATE.replace("NODE_RUNTIME", _node_runtime()))
    return root


def test_build_installs_requirements_layers_and_package_json_then_caches(build_app):
    import time

    data = build_app / ".esb"
    proc = run_esb("build", "--data-dir", str(data), cwd=build_app, timeout=600)
    err = text(proc.stderr)
    assert proc.returncode == 0, err + text(proc.stdout)
    assert "[1/3] Deps: pip install for python3.11" in err, err
    assert "built into" in err, err
    assert (data / "build" / "Deps" / "six.py").is_file()
    assert (data / "build" / "layer-Shared" / "python" / "layerlib" / "__init__.py").is_file()
    assert (data / "build" / "NodeDeps" / "node_modules" / "esb-test-lib" / "index.js").is_file()
    assert not (build_app / "nodesrc" / "node_modules").exists(), "the code folder is untouched"

    out = invoke(build_app, fn="Deps")
    assert out["six"].startswith(str(data / "build" / "Deps")), out
    assert out["layerlib"].startswith(str(data / "build" / "layer-Shared" / "python")), out
    node = invoke(build_app, fn="NodeDeps")
    assert node["lib"] == "hello from a dependency", node

    # Unchanged: nothing runs.
    t0 = time.monotonic()
    proc = run_esb("build", "--data-dir", str(data), cwd=build_app)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, text(proc.stderr)
    assert text(proc.stderr).count("up to date") == 3, text(proc.stderr)
    assert "pip" not in text(proc.stderr).split("up to date")[-1]
    print(f"esb build, unchanged requirements: {elapsed * 1000:.0f} ms")

    # A changed requirements file makes the build stale: invoke says so
    # and keeps using the old one until the next build.
    (build_app / "src" / "requirements.txt").write_text("six==1.17.0\n")
    proc = run_esb("invoke", "Deps", "--data-dir", str(data), cwd=build_app, input=b"")
    assert proc.returncode == 0, text(proc.stderr)
    proc = run_esb("build", "Deps", "--data-dir", str(data), cwd=build_app, timeout=600)
    assert proc.returncode == 0, text(proc.stderr)
    assert invoke(build_app, fn="Deps")["version"] == "1.17.0"


def test_up_warns_when_a_build_is_stale_or_missing(build_app, tmp_path):
    from esb_helpers import start_esb

    server = start_esb(build_app / "template.yaml", tmp_path)
    try:
        assert "requirements.txt in" in server.output() and "run `esb build`" in server.output()
    finally:
        server.stop()


# ------------------------------------------------------------ routes on hot reload, request log

ROUTES = """AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Resources:
  Api:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: routes.handler
      Runtime: python3.11
      Events:
EVENTS"""

ROUTE_HANDLER = """def handler(event, context):
    return {"statusCode": 200, "body": event["rawPath"]}
"""


def _events(paths):
    return "".join(
        f"        E{i}:\n          Type: HttpApi\n          Properties: {{Path: {p}, Method: GET}}\n"
        for i, p in enumerate(paths))


def test_routes_reload_atomically_under_load_and_requests_are_logged(app, tmp_path):
    import threading

    import requests

    from esb_helpers import start_esb, wait_until

    (app / "src" / "routes.py").write_text(ROUTE_HANDLER)
    template = app / "template.yaml"
    template.write_text(ROUTES.replace("EVENTS", _events(["/stay", "/old"])))
    server = start_esb(template, tmp_path, http=True, env={"ESB_LOG": "info"})
    try:
        session = requests.Session()
        assert session.get(server.url("/old"), timeout=10).status_code == 200
        assert session.get(server.url("/new"), timeout=10).status_code == 404

        failures, done, count = [], threading.Event(), [0]

        def hammer():
            s = requests.Session()
            while not done.is_set():
                r = s.get(server.url("/stay"), timeout=10)
                count[0] += 1
                if r.status_code != 200 or r.text != "/stay":
                    failures.append((r.status_code, r.text[:100]))

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            template.write_text(ROUTES.replace("EVENTS", _events(["/stay", "/new"])))
            wait_until(lambda: session.get(server.url("/new"), timeout=10).status_code == 200,
                       timeout=15, what="the new route")
            r = session.get(server.url("/old"), timeout=10)
            assert r.status_code == 404 and r.json() == {"message": "Not Found"}, r.text
            # A broken template keeps the routes.
            template.write_text("Resources: [")
            wait_until(lambda: "reload failed" in server.output(), what="the reload error")
            assert session.get(server.url("/new"), timeout=10).status_code == 200
        finally:
            done.set()
            for t in threads:
                t.join()
        assert count[0] > 0
        assert failures == [], failures[:5]
        assert "routes reloaded" in server.output()
        # One line per request: method, path, status, ms.
        assert re.search(r"GET /new 200 [0-9.]+ ms", server.output()), server.output()[-2000:]
        assert re.search(r"GET /old 404 [0-9.]+ ms", server.output())
    finally:
        server.stop()


def test_logs_follow_across_functions_prints_in_time_order(app, tmp_path):
    import time

    from esb_helpers import start_esb, wait_until

    server = start_esb(app / "template.yaml", tmp_path)
    follower = subprocess.Popen(
        [ESB_BIN, "logs", "-f", "-n", "0", "--data-dir", str(server.data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # let the follower reach the end of the files
        for _ in range(6):
            server.invoke("env-fn", {})
            server.invoke("OtherFn", {})
        wait_until(lambda: "REPORT" in server.output(), what="invocations logged")
        time.sleep(1.0)  # two polls plus the hold window
    finally:
        follower.terminate()
        out, _ = follower.communicate(timeout=10)
        server.stop()
    lines = [line for line in text(out).splitlines() if line.strip()]
    functions = {line.split(" ", 2)[1] for line in lines}
    assert {"[env-fn]", "[OtherFn]"} <= functions, lines[:10]
    stamps = [line.split(" ", 1)[0] for line in lines]
    assert stamps == sorted(stamps), "\n".join(lines)
