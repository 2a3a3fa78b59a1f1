"""Node.js functions on the process runtime (`nodejs18.x`/`20.x`/`22.x`):
CommonJS and ES module handlers, async and callback styles, the context
object, errors in the Node.js runtime's shape, environment variables, a
route through the gateway, an AWS SDK v3 call to the local S3, and the
start check for a Node.js version the machine does not have."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from esb_helpers import (
    missing_dependency, require_tool, run_esb, start_esb, text, wait_until,
)


def host_node_major() -> int:
    node = require_tool("node")
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.strip().lstrip("v").split(".")[0])


def runtime_for_host() -> str:
    major = host_node_major()
    if major not in (18, 20, 22):
        missing_dependency(f"node v{major} is none of the Lambda versions 18, 20, 22")
    return f"nodejs{major}.x"


TEMPLATE = """AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: {runtime}
    Timeout: 20
    Environment:
      Variables:
        GREETING: hello-node
Resources:
  Cjs:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: node-cjs
      CodeUri: cjs/
      Handler: index.handler
      Events:
        Hello:
          Type: HttpApi
          Properties: {{Path: /hello, Method: GET}}
  Esm:
    Type: AWS::Serverless::Function
    Properties: {{CodeUri: esm/, Handler: app.handler}}
  EsmPkg:
    Type: AWS::Serverless::Function
    Properties: {{CodeUri: esmpkg/, Handler: src/main.handler}}
  Callback:
    Type: AWS::Serverless::Function
    Properties: {{CodeUri: cjs/, Handler: callback.handler}}
  Fails:
    Type: AWS::Serverless::Function
    Properties: {{CodeUri: cjs/, Handler: fails.handler}}
  CallbackFails:
    Type: AWS::Serverless::Function
    Properties: {{CodeUri: cjs/, Handler: fails.viaCallback}}
"""

CJS = """
const os = require("node:os");
let coldStarts = 0;
coldStarts += 1;
exports.handler = async (event, context) => {
  console.log("cjs got", JSON.stringify(event));
  return {
    statusCode: 200,
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      style: "cjs",
      event,
      node: process.versions.node,
      greeting: process.env.GREETING,
      execEnv: process.env.AWS_EXECUTION_ENV,
      handlerEnv: process.env._HANDLER,
      requestId: context.awsRequestId,
      functionName: context.functionName,
      arn: context.invokedFunctionArn,
      memory: context.memoryLimitInMB,
      remaining: context.getRemainingTimeInMillis(),
      logGroup: context.logGroupName,
      coldStarts,
    }),
  };
};
"""

CALLBACK = """
exports.handler = function (event, context, callback) {
  setTimeout(() => callback(null, { style: "callback", value: event.value * 2,
                                    requestId: context.awsRequestId }), 10);
};
"""

FAILS = """
class ValidationError extends Error {
  constructor(message) { super(message); this.name = "ValidationError"; }
}
exports.handler = async () => { throw new ValidationError("bad input: 42"); };
exports.viaCallback = (event, context, callback) => callback(new TypeError("callback failed"));
"""

ESM = """
import { basename } from "node:path";
const started = await Promise.resolve("top-level await works");
export const handler = async (event, context) => ({
  style: "esm", file: basename(import.meta.url), started, event,
  functionName: context.functionName,
});
"""

ESM_PKG = """
export async function handler(event) {
  return { style: "esm-package", event };
}
"""


@pytest.fixture
def app(tmp_path) -> Path:
    runtime = runtime_for_host()
    root = tmp_path / "app"
    (root / "cjs").mkdir(parents=True)
    (root / "esm").mkdir()
    (root / "esmpkg" / "src").mkdir(parents=True)
    (root / "cjs" / "index.js").write_text(CJS)
    (root / "cjs" / "callback.js").write_text(CALLBACK)
    (root / "cjs" / "fails.js").write_text(FAILS)
    (root / "esm" / "app.mjs").write_text(ESM)
    (root / "esmpkg" / "package.json").write_text('{"type": "module"}')
    (root / "esmpkg" / "src" / "main.js").write_text(ESM_PKG)
    (root / "template.yaml").write_text(TEMPLATE.format(runtime=runtime))
    return root


def invoke(app: Path, fn: str, event: dict | None = None, ok: bool = True, env=None):
    args = ["invoke", fn, "--data-dir", str(app / ".esb")]
    if event is not None:
        (app / "event.json").write_text(json.dumps(event))
        args += ["-e", str(app / "event.json")]
    proc = run_esb(*args, cwd=app, input=b"", env=env)
    if ok:
        assert proc.returncode == 0, text(proc.stderr) + text(proc.stdout)
    else:
        assert proc.returncode != 0, text(proc.stdout)
    return json.loads(proc.stdout), text(proc.stderr)


def test_commonjs_async_handler_context_and_env(app):
    out, logs = invoke(app, "Cjs", {"name": "x"})
    body = json.loads(out["body"])
    assert body["style"] == "cjs"
    assert body["event"] == {"name": "x"}
    assert body["node"].split(".")[0] == str(host_node_major())
    assert body["greeting"] == "hello-node"
    assert body["execEnv"] == f"AWS_Lambda_{runtime_for_host()}"
    assert body["handlerEnv"] == "index.handler"
    assert re.fullmatch(r"[0-9a-f-]{36}", body["requestId"]), body
    assert body["functionName"] == "node-cjs"
    assert body["arn"].endswith(":function:node-cjs")
    assert body["memory"] == "128"
    assert 0 < body["remaining"] <= 20000
    assert body["logGroup"] == "/aws/lambda/node-cjs"
    # console.log lines carry the timestamp, request id and level.
    assert re.search(r"\t" + body["requestId"] + r"\tINFO\tcjs got \{\"name\":\"x\"\}", logs), logs


def test_esm_mjs_with_top_level_await(app):
    out, _ = invoke(app, "Esm", {"a": 1})
    assert out == {"style": "esm", "file": "app.mjs", "started": "top-level await works",
                   "event": {"a": 1}, "functionName": "Esm"}


def test_esm_by_package_type_module_in_a_subfolder(app):
    out, _ = invoke(app, "EsmPkg", {"b": 2})
    assert out == {"style": "esm-package", "event": {"b": 2}}


def test_callback_style(app):
    out, _ = invoke(app, "Callback", {"value": 21})
    assert out["style"] == "callback" and out["value"] == 42
    assert out["requestId"]


def test_thrown_error_has_lambdas_node_shape(app):
    out, logs = invoke(app, "Fails", ok=False)
    assert out["errorType"] == "ValidationError", out
    assert out["errorMessage"] == "bad input: 42"
    assert isinstance(out["trace"], list) and out["trace"][0] == "ValidationError: bad input: 42"
    assert any("fails.js" in line for line in out["trace"]), out["trace"]
    assert "Invoke Error" in logs and "ValidationError" in logs


def test_callback_error(app):
    out, _ = invoke(app, "CallbackFails", ok=False)
    assert out["errorType"] == "TypeError" and out["errorMessage"] == "callback failed", out


def test_missing_export_and_missing_file(app):
    (app / "cjs" / "fails.js").write_text("exports.other = () => 1;\n")
    out, _ = invoke(app, "Fails", ok=False)
    assert out["errorType"] == "Runtime.HandlerNotFound", out
    (app / "cjs" / "fails.js").unlink()
    proc = run_esb("validate", cwd=app)
    assert proc.returncode != 0
    assert "Resources.Fails.Properties.Handler" in text(proc.stderr), text(proc.stderr)


def test_through_the_gateway_warm_worker_is_reused(app, tmp_path):
    server = start_esb(app / "template.yaml", tmp_path, http=True)
    try:
        r1 = requests.get(server.url("/hello?x=1"), timeout=30)
        r2 = requests.get(server.url("/hello?x=2"), timeout=30)
    finally:
        server.stop()
    assert r1.status_code == 200 and r2.status_code == 200, r1.text
    b1, b2 = r1.json(), r2.json()
    assert b1["style"] == "cjs"
    assert b1["event"]["queryStringParameters"] == {"x": "1"}
    assert b2["coldStarts"] == 1, "the warm worker keeps its module state"
    assert b1["requestId"] != b2["requestId"]


def test_unavailable_node_version_is_a_located_error_naming_what_was_found(app):
    host = host_node_major()
    missing = next((v for v in (18, 20, 22) if v != host and shutil.which(f"node{v}") is None), None)
    if missing is None:
        pytest.skip("every Node.js version is installed")
    template = (app / "template.yaml").read_text().replace(
        f"Runtime: nodejs{host}.x", f"Runtime: nodejs{missing}.x")
    (app / "template.yaml").write_text(template)
    proc = run_esb("validate", cwd=app)
    err = text(proc.stderr)
    assert proc.returncode != 0
    assert f"runtime nodejs{missing}.x needs Node.js {missing}" in err, err
    assert f"v{host}." in err, "names the version it found"
    assert "Properties.Runtime" in err
    # invoke refuses it up front, not with a crash at the first request.
    proc = run_esb("invoke", "Cjs", "--data-dir", str(app / ".esb"), cwd=app, input=b"")
    assert proc.returncode != 0
    assert f"Node.js {missing}" in text(proc.stderr), text(proc.stderr)


# ------------------------------------------------------------ AWS SDK v3

SDK_TEMPLATE = """AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Resources:
  Bucket:
    Type: AWS::S3::Bucket
    Properties: {{BucketName: node-bucket}}
  Sdk:
    Type: AWS::Serverless::Function
    Properties: {{CodeUri: sdk/, Handler: index.handler, Runtime: {runtime}, Timeout: 20}}
"""

SDK_HANDLER = """
import { S3Client, PutObjectCommand, GetObjectCommand } from "@aws-sdk/client-s3";
const s3 = new S3Client({ maxAttempts: 1 });
export const handler = async (event) => {
  await s3.send(new PutObjectCommand({ Bucket: "node-bucket", Key: "k", Body: event.value }));
  const got = await s3.send(new GetObjectCommand({ Bucket: "node-bucket", Key: "k" }));
  return { body: await got.Body.transformToString(),
           endpoint: process.env.AWS_ENDPOINT_URL_S3 };
};
"""


@pytest.fixture(scope="module")
def sdk_modules(tmp_path_factory) -> Path:
    """node_modules with @aws-sdk/client-s3 (npm; `.ci/run` installs it
    into ESB_NODE_SDK_DIR so CI needs no network here)."""
    preset = os.environ.get("ESB_NODE_SDK_DIR")
    if preset and (Path(preset) / "node_modules" / "@aws-sdk" / "client-s3").is_dir():
        return Path(preset) / "node_modules"
    npm = require_tool("npm")
    root = tmp_path_factory.mktemp("sdk")
    (root / "package.json").write_text('{"name": "sdk-fixture", "private": true}')
    proc = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--omit=dev",
                           "@aws-sdk/client-s3@3"], cwd=root, capture_output=True, timeout=300)
    if proc.returncode != 0:
        missing_dependency("npm install @aws-sdk/client-s3 failed: " + text(proc.stderr)[-500:])
    return root / "node_modules"


def test_aws_sdk_v3_reaches_the_local_s3(tmp_path, sdk_modules):
    root = tmp_path / "app"
    (root / "sdk").mkdir(parents=True)
    (root / "sdk" / "index.mjs").write_text(SDK_HANDLER)
    # A copy, not a symlink: the worker sandbox shows the code folder
    # only, as a deployment package holds its node_modules.
    shutil.copytree(sdk_modules, root / "sdk" / "node_modules", symlinks=True)
    (root / "template.yaml").write_text(SDK_TEMPLATE.format(runtime=runtime_for_host()))
    (root / "e.json").write_text('{"value": "from node"}')
    proc = run_esb("invoke", "Sdk", "-e", "e.json", "--data-dir", str(root / ".esb"), cwd=root,
                   input=b"", timeout=120,
                   env={"AWS_ACCESS_KEY_ID": "AKIAREAL", "AWS_SECRET_ACCESS_KEY": "x"})
    assert proc.returncode == 0, text(proc.stderr) + text(proc.stdout)
    out = json.loads(proc.stdout)
    assert out["body"] == "from node", out
    assert out["endpoint"].startswith("http://127.0.0.1:"), out
    wait_until(lambda: any(p.is_file() for p in (root / ".esb" / "s3").rglob("*")),
               what="the object under the data dir")


HOSTILE = """
exports.exits = async () => { process.exit(3); };
exports.uncaught = async () => {
  setTimeout(() => { throw new RangeError("thrown later"); }, 0);
  return new Promise(() => {});  // never settles
};
exports.rejects = async () => { Promise.reject(new Error("nobody catches me")); await new Promise(() => {}); };
exports.circular = async () => { const a = {}; a.self = a; return a; };
exports.ok = async () => "fine";
"""


@pytest.mark.parametrize("handler, error_type", [
    ("exits", "Runtime.ExitError"),
    ("uncaught", "RangeError"),
    ("rejects", "Error"),
    ("circular", "Runtime.MarshalError"),
])
def test_hostile_handlers_fail_their_invocation_only(app, tmp_path, handler, error_type):
    (app / "cjs" / "hostile.js").write_text(HOSTILE)
    template = app / "template.yaml"
    template.write_text(template.read_text() + f"""  Hostile:
    Type: AWS::Serverless::Function
    Properties: {{CodeUri: cjs/, Handler: hostile.{handler}, Timeout: 5}}
  Fine:
    Type: AWS::Serverless::Function
    Properties: {{CodeUri: cjs/, Handler: hostile.ok}}
""")
    server = start_esb(template, tmp_path)
    try:
        resp, payload = server.invoke("Hostile", {})
        assert resp.get("FunctionError") == "Unhandled", payload
        assert payload["errorType"] == error_type, payload
        # The function is served again (a fresh worker), and others never noticed.
        resp, payload = server.invoke("Hostile", {})
        assert payload["errorType"] == error_type, payload
        assert server.invoke("Fine", {})[1] == "fine"
    finally:
        server.stop()


# ------------------------------------------------- the bootstrap's HTTP client
#
# The built-in bootstrap against a hand-written Runtime API that does what
# ESB's never does on purpose: cut connections at the wrong moment, answer
# with `Connection: close`, chunked bodies, bytes trickled one write at a
# time. The real server cannot be made to do these.

import socket
import threading
import time

BOOTSTRAP = Path(__file__).resolve().parents[2] / "crates" / "runtimes" / "core" / "assets" / "node" / "esb_bootstrap.mjs"
NEXT = "GET /2018-06-01/runtime/invocation/next HTTP/1.1"


def event_response(request_id: str, body: bytes, chunked: bool = False, close: bool = False) -> bytes:
    head = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Lambda-Runtime-Aws-Request-Id: {request_id}\r\nLambda-Runtime-Deadline-Ms: 99999999999999\r\n"
            "Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:000000000000:function:f\r\n")
    if close:
        head += "Connection: close\r\n"
    if chunked:
        half = len(body) // 2
        parts = [body[:half], body[half:]]
        data = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + data
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


ACCEPTED = b'HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"status":"OK"}'


class FakeRuntimeApi:
    """Records every request as (connection number, request line, body);
    `answer(conn, line, body)` returns the bytes to send back (None: cut
    the connection; b"": send nothing, keep reading)."""

    def __init__(self, answer, trickle: bool = False):
        self.answer = answer
        self.trickle = trickle
        self.seen: list[tuple[int, str, bytes]] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.closing = False
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self):
        n = 0
        while True:
            conn, _ = self.listener.accept()
            if self.closing:
                conn.close()
                return
            threading.Thread(target=self._serve, args=(n, conn), daemon=True).start()
            n += 1

    def _serve(self, n, conn):
        try:
            self._exchange(n, conn)
        except OSError:
            pass  # the bootstrap was killed at the end of the test
        finally:
            conn.close()

    def _exchange(self, n, conn):
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next((int(l.split(":", 1)[1]) for l in lines[1:]
                           if l.lower().startswith("content-length:")), 0)
            while len(buf) < length:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            body, buf = buf[:length], buf[length:]
            with self.lock:
                self.seen.append((n, lines[0], body))
            reply = self.answer(n, lines[0], body)
            if reply is None:
                conn.shutdown(socket.SHUT_RDWR)
                return
            if self.trickle:
                for i in range(len(reply)):
                    conn.sendall(reply[i:i + 1])
            else:
                conn.sendall(reply)
            if b"\r\nConnection: close\r\n" in reply.partition(b"\r\n\r\n")[0] + b"\r\n":
                return  # as a server does after such an answer

    def requests(self):
        with self.lock:
            return list(self.seen)

    def close(self):
        # The listener is closed only once its thread is gone: closed
        # under a blocked accept(), its descriptor number could be reused
        # by the next test's listener and served by this thread.
        self.closing = True
        socket.create_connection(self.listener.getsockname(), timeout=5).close()
        self.acceptor.join(5)
        self.listener.close()


def run_bootstrap(tmp_path: Path, api: FakeRuntimeApi, handler_source: str):
    node = require_tool("node")
    (tmp_path / "index.js").write_text(handler_source)
    env = {"PATH": os.environ.get("PATH", ""), "AWS_LAMBDA_RUNTIME_API": api.address,
           "LAMBDA_TASK_ROOT": str(tmp_path), "AWS_LAMBDA_FUNCTION_NAME": "f"}
    return subprocess.Popen([node, str(BOOTSTRAP), "index.handler"], env=env, cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_exit(proc, timeout=20.0) -> int:
    wait_until(lambda: proc.poll() is not None, timeout=timeout, what="the bootstrap to exit")
    return proc.returncode


def test_bootstrap_retries_next_once_but_never_resends_a_post(tmp_path):
    # Connection 0: the first /next is cut off unanswered. Connection 1: the
    # retried /next gets an event, the /response is cut off unanswered.
    # A later connection is answered nothing.
    def answer(n, line, body):
        if n == 1 and line.startswith("GET"):
            return event_response("req-1", b"{}")
        if n <= 1:
            return None
        return b""

    api = FakeRuntimeApi(answer)
    proc = run_bootstrap(tmp_path, api, "exports.handler = async () => ({ ok: true });\n")
    try:
        code = wait_exit(proc)
        stderr = text(proc.stderr.read())
        assert code != 0, "exits after a lost POST: " + stderr
        lines = [(n, line) for n, line, _ in api.requests()]
        post = "POST /2018-06-01/runtime/invocation/req-1/response HTTP/1.1"
        assert lines == [(0, NEXT), (1, NEXT), (1, post)], (lines, stderr)
    finally:
        proc.kill()
        api.close()


@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "byte-by-byte"])
def test_bootstrap_reads_chunked_and_split_answers_and_follows_connection_close(tmp_path, trickle):
    big = "x" * (400 * 1024)  # over the size whose POST carries the next GET

    def answer(n, line, body):
        # On connection 0 the answer to the first POST closes it; the next
        # invocation comes on connection 1, chunked; then a big result, whose
        # answer is followed by a GET on the same connection.
        if line == NEXT:
            count = sum(1 for _, l, _ in api.requests() if l == NEXT)
            if count == 1:
                return event_response("req-1", b'{"n": 1}')
            if count == 2:
                return event_response("req-2", json.dumps({"n": 2, "pad": "\u00e9" * 3000}).encode(), chunked=True)
            if count == 3:
                return event_response("req-3", json.dumps({"n": 3, "big": True}).encode())
            return b""  # long poll: nothing more to do
        if n == 0:
            return ACCEPTED.replace(b"Content-Type", b"Connection: close\r\nContent-Type")
        return ACCEPTED

    api = FakeRuntimeApi(answer, trickle=trickle)
    handler = ("exports.handler = async (event, context) => event.big ? { big: '%s' }"
               " : { n: event.n, len: (event.pad || '').length, id: context.awsRequestId };\n" % big)
    proc = run_bootstrap(tmp_path, api, handler)
    try:
        wait_until(lambda: len([r for r in api.requests() if r[1] == NEXT]) == 4 or proc.poll() is not None,
                   timeout=30, what="four GET /next")
        assert proc.poll() is None, text(proc.stderr.read())
        reqs = api.requests()
        posts = [(n, line, body) for n, line, body in reqs if line.startswith("POST")]
        assert [(n, line.split()[1]) for n, line, _ in posts] == [
            (0, "/2018-06-01/runtime/invocation/req-1/response"),
            (1, "/2018-06-01/runtime/invocation/req-2/response"),
            (1, "/2018-06-01/runtime/invocation/req-3/response"),
        ], reqs
        assert json.loads(posts[0][2]) == {"n": 1, "id": "req-1", "len": 0}
        assert json.loads(posts[1][2]) == {"n": 2, "id": "req-2", "len": 3000}
        assert json.loads(posts[2][2]) == {"big": big}
        # Every request after the close went on connection 1.
        assert [n for n, line, _ in reqs] == [0, 0, 1, 1, 1, 1, 1], [(n, l) for n, l, _ in reqs]
    finally:
        proc.kill()
        api.close()


def test_bootstrap_error_type_header_cannot_be_injected(tmp_path):
    def answer(n, line, body):
        if line == NEXT:
            if sum(1 for _, l, _ in api.requests() if l == NEXT) == 1:
                return event_response("req-1", b"{}")
            return b""
        return ACCEPTED

    api = FakeRuntimeApi(answer)
    handler = ("exports.handler = async () => { const e = new Error('boom');"
               " e.name = 'Bad\\r\\nX-Injected: 1\\r\\n\\r\\nGET /x HTTP/1.1'; throw e; };\n")
    proc = run_bootstrap(tmp_path, api, handler)
    try:
        wait_until(lambda: len(api.requests()) >= 3 or proc.poll() is not None, what="the error and the next GET")
        reqs = api.requests()
        assert [line for _, line, _ in reqs] == [
            NEXT, "POST /2018-06-01/runtime/invocation/req-1/error HTTP/1.1", NEXT], reqs
        assert json.loads(reqs[1][2])["errorMessage"] == "boom"
    finally:
        proc.kill()
        api.close()
