"""The Lambda Invoke API on the gateway's listener, driven by boto3 and the
aws CLI exactly as a user would (reference: lambda-invoke-api.md)."""

import base64
import json
import os
import subprocess
import time

import pytest
from botocore.exceptions import ClientError

from esb_helpers import curl


def test_invoke_hello(example):
    resp, payload = example.invoke("hello", {"k": "v"})
    assert resp["StatusCode"] == 200
    assert "FunctionError" not in resp, payload
    assert resp.get("ExecutedVersion") == "$LATEST"
    assert payload["statusCode"] == 200
    assert json.loads(payload["body"]) == {"message": "Hello from ESB", "stage": "dev"}


def test_invoke_latest_qualifier(example):
    resp, payload = example.invoke("hello", Qualifier="$LATEST")
    assert resp["StatusCode"] == 200
    assert "FunctionError" not in resp, payload


def _big_payload() -> bytes:
    return json.dumps({"blob": "x" * (6 * 1024 * 1024 + 100)}).encode()


def test_invoke_payload_over_6mb_is_413_curl(example, tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(_big_payload())
    r = curl(example, "/2015-03-31/functions/hello/invocations", "-X", "POST",
             "--data-binary", f"@{big}")
    assert r.status == 413, r.body[:300]
    assert r.header("x-amzn-ErrorType") == "RequestEntityTooLargeException"


def test_invoke_payload_over_6mb_is_413_boto3(example):
    # boto3 sends the whole body before it reads the answer: the server must
    # let it finish (or drain it) so the client sees the 413, not a reset.
    with pytest.raises(ClientError) as info:
        example.lambda_client().invoke(FunctionName="hello", Payload=_big_payload())
    err = info.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert err["Error"]["Code"] in ("RequestEntityTooLargeException", "RequestTooLargeException")
    # The gateway is still fine afterwards.
    assert example.invoke("hello")[0]["StatusCode"] == 200


def test_invoke_by_full_arn(example):
    resp, payload = example.invoke("arn:aws:lambda:us-east-1:123456789012:function:hello")
    assert resp["StatusCode"] == 200
    assert "FunctionError" not in resp, payload
    assert json.loads(payload["body"])["message"] == "Hello from ESB"


def test_invoke_function_error(example):
    resp, payload = example.invoke("fail")
    assert resp["StatusCode"] == 200
    assert resp["FunctionError"] == "Unhandled"
    assert payload["errorType"] == "PaymentDeclined"
    assert payload["errorMessage"] == "card declined for order 42"
    assert isinstance(payload["stackTrace"], list)


def test_invoke_timeout(example):
    start = time.monotonic()
    resp, payload = example.invoke("slow")
    elapsed = time.monotonic() - start
    assert resp["StatusCode"] == 200
    assert resp["FunctionError"] == "Unhandled"
    assert payload["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in payload["errorMessage"]
    assert elapsed < 4, f"answered after {elapsed:.1f}s, the function's timeout is 1s"


def test_invoke_timeout_log_tail(example):
    resp, _ = example.invoke("slow", LogType="Tail")
    log = base64.b64decode(resp["LogResult"]).decode()
    assert "going to sleep" in log, log
    assert "Task timed out after 1.00 seconds" in log, log
    assert "REPORT RequestId" in log, log


def test_invoke_log_tail(example):
    resp, payload = example.invoke("hello", LogType="Tail")
    assert resp["StatusCode"] == 200
    log = base64.b64decode(resp["LogResult"]).decode()
    for marker in ("START RequestId", "END RequestId", "REPORT RequestId", "hello called, request "):
        assert marker in log, f"{marker!r} missing from the log tail:\n{log}"


def test_invoke_request_id_is_the_functions_request_id(example):
    resp, _ = example.invoke("hello", LogType="Tail")
    request_id = resp["ResponseMetadata"]["RequestId"]
    log = base64.b64decode(resp["LogResult"]).decode()
    # hello prints context.aws_request_id.
    assert f"hello called, request {request_id}" in log, (request_id, log)


def test_invoke_log_tail_of_failed_invocation(example):
    resp, _ = example.invoke("fail", LogType="Tail")
    assert resp["FunctionError"] == "Unhandled"
    log = base64.b64decode(resp["LogResult"]).decode()
    assert "REPORT RequestId" in log
    assert "PaymentDeclined" in log, log


def test_invoke_event_is_accepted(example):
    resp = example.lambda_client().invoke(
        FunctionName="hello", InvocationType="Event", Payload=b"{}")
    assert resp["StatusCode"] == 202
    assert resp["Payload"].read() == b""


def test_event_invocation_runs_the_function(example):
    resp = example.lambda_client().invoke(
        FunctionName="hello", InvocationType="Event", Payload=b'{"async": true}')
    assert resp["StatusCode"] == 202
    request_id = resp["ResponseMetadata"]["RequestId"]
    assert request_id
    # hello prints its request id; the server's log shows the run.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if f"hello called, request {request_id}" in example.output():
            return
        time.sleep(0.1)
    pytest.fail(f"no run of hello with request id {request_id} in the esb up output")


def test_invoke_dry_run(example):
    resp = example.lambda_client().invoke(
        FunctionName="hello", InvocationType="DryRun", Payload=b"{}")
    assert resp["StatusCode"] == 204


def test_invoke_unknown_function(example):
    with pytest.raises(ClientError) as info:
        example.lambda_client().invoke(FunctionName="no-such-function", Payload=b"{}")
    err = info.value.response
    assert err["Error"]["Code"] == "ResourceNotFoundException"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert "no-such-function" in err["Error"]["Message"]


def test_dry_run_of_unknown_function_is_404(example):
    with pytest.raises(ClientError) as info:
        example.lambda_client().invoke(
            FunctionName="no-such-function", InvocationType="DryRun", Payload=b"{}")
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_invoke_rejects_non_json_payload(example):
    with pytest.raises(ClientError) as info:
        example.lambda_client().invoke(FunctionName="hello", Payload=b"this is not json")
    err = info.value.response
    assert err["Error"]["Code"] == "InvalidRequestContentException"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400


def _aws(example, tmp_path, *args, ca_bundle=True):
    env = dict(os.environ)
    env.update({
        "AWS_ACCESS_KEY_ID": example.credentials()["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": example.credentials()["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_MAX_ATTEMPTS": "1",
    })
    env.pop("AWS_PROFILE", None)
    cmd = ["aws", "lambda", *args, "--endpoint-url", example.base_url, "--region", "us-east-1"]
    if ca_bundle:
        env["AWS_CA_BUNDLE"] = str(example.cert)
    else:
        cmd.append("--no-verify-ssl")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)


@pytest.mark.parametrize("ca_bundle", [True, False], ids=["AWS_CA_BUNDLE", "no-verify-ssl"])
def test_aws_cli_invoke(example, tmp_path, ca_bundle):
    out = tmp_path / "out.json"
    proc = _aws(example, tmp_path, "invoke", "--function-name", "hello",
                # aws CLI v1 sends --payload as is (v2 would need
                # --cli-binary-format raw-in-base64-out, which v1 rejects).
                "--payload", '{"from": "aws-cli"}',
                str(out), ca_bundle=ca_bundle)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(proc.stdout)
    assert meta["StatusCode"] == 200
    assert "FunctionError" not in meta
    payload = json.loads(out.read_text())
    assert json.loads(payload["body"])["message"] == "Hello from ESB"


def test_aws_cli_invoke_function_error(example, tmp_path):
    out = tmp_path / "out.json"
    proc = _aws(example, tmp_path, "invoke", "--function-name", "fail", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["FunctionError"] == "Unhandled"
    assert json.loads(out.read_text())["errorType"] == "PaymentDeclined"
