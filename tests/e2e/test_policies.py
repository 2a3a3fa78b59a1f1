"""Per-function credentials and policies (docs/auth.md): every function
signs its S3, DynamoDB and Invoke API calls with its own generated key,
never the box's, and its template policies (SAM policy templates, managed
policies, inline statements, a template `AWS::IAM::Role`) decide as AWS
would: `enforce` refuses with AWS's error (boto3 sees `AccessDenied` /
`AccessDeniedException`), `warn` (the default) lets the call through and
logs what AWS would need. Functions use boto3 with no credential code."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from esb_helpers import ESB_BIN, APPS, missing_dependency, module_server, wait_until

POLICIES = APPS / "policies" / "template.yaml"
REGION = "us-east-1"
TABLE = "iam-items"
BUCKET = "iam-files"
TABLE_ARN = f"arn:aws:dynamodb:{REGION}:123456789012:table/{TABLE}"


@pytest.fixture(scope="module")
def enforced(tmp_path_factory):
    yield from module_server(tmp_path_factory, POLICIES, http=True, env={"ESB_IAM_MODE": "enforce"})


@pytest.fixture(scope="module")
def warned(tmp_path_factory):
    """The default mode (warn): no setting."""
    yield from module_server(tmp_path_factory, POLICIES, http=True)


def run(server, function: str, /, **event) -> dict:
    """Invokes `function` (signed with the box's key) with `event`; returns
    what the handler answered: {"ok": True, "result"} or {"ok": False,
    "code", "message", "status"} as boto3 saw the call inside it."""
    resp, payload = server.invoke(function, event)
    assert resp["StatusCode"] == 200 and "FunctionError" not in resp, payload
    return payload


def instance(server) -> dict:
    return json.loads((server.data_dir / "instance.json").read_text())


def client(server, service: str, akid: str | None = None, secret: str | None = None):
    creds = server.credentials()
    urls = instance(server)
    url = {"s3": urls["s3_url"], "dynamodb": urls["dynamodb_url"], "lambda": server.base_url}[service]
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=akid or creds["aws_access_key_id"],
        aws_secret_access_key=secret or creds["aws_secret_access_key"],
        config=Config(retries={"max_attempts": 0}),
    )


def function_credentials(server, function: str) -> tuple[str, str]:
    env = run(server, function, op="env")["result"]
    return env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]


def not_authorized(role: str, function: str, action: str, resource: str) -> str:
    return (f"User: arn:aws:sts::123456789012:assumed-role/{role}/{function} is not authorized "
            f"to perform: {action} on resource: {resource}")


# ---------------------------------------------------------------- enforce


def test_dynamodb_read_policy_reads_and_put_item_is_refused_as_on_aws(enforced):
    client(enforced, "dynamodb").put_item(TableName=TABLE, Item={"id": {"S": "seeded"}})
    got = run(enforced, "reader", op="ddb_get", id="seeded")
    assert got == {"ok": True, "result": {"id": {"S": "seeded"}}}, got
    put = run(enforced, "reader", op="ddb_put", id="from-reader")
    assert put["ok"] is False, put
    assert put["code"] == "AccessDeniedException" and put["status"] == 400, put
    assert put["message"] == not_authorized("ReaderRole", "reader", "dynamodb:PutItem", TABLE_ARN) + (
        " because no identity-based policy allows the dynamodb:PutItem action"), put
    item = client(enforced, "dynamodb").get_item(TableName=TABLE, Key={"id": {"S": "from-reader"}})
    assert "Item" not in item, "the refused write did not happen"


def test_s3_read_policy_reads_and_put_object_is_refused(enforced):
    client(enforced, "s3").put_object(Bucket=BUCKET, Key="seeded.txt", Body=b"from the box")
    assert run(enforced, "reader", op="s3_get", key="seeded.txt") == {"ok": True, "result": "from the box"}
    put = run(enforced, "reader", op="s3_put", key="from-reader.txt", body="no")
    assert (put["ok"], put["code"], put["status"]) == (False, "AccessDenied", 403), put
    assert put["message"].startswith(
        not_authorized("ReaderRole", "reader", "s3:PutObject", f"arn:aws:s3:::{BUCKET}/from-reader.txt")), put
    with pytest.raises(ClientError) as e:
        client(enforced, "s3").head_object(Bucket=BUCKET, Key="from-reader.txt")
    assert e.value.response["Error"]["Code"] in ("404", "NoSuchKey")


def test_lambda_invoke_policy_allows_its_one_function(enforced):
    ok = run(enforced, "invoker", op="invoke", function="target")
    assert ok["ok"] is True, ok
    assert json.loads(ok["result"]) == {"ok": True, "result": "hello from target"}, ok
    other = run(enforced, "invoker", op="invoke", function="bystander")
    assert (other["ok"], other["code"], other["status"]) == (False, "AccessDeniedException", 403), other
    assert other["message"].startswith(not_authorized(
        "InvokerRole", "invoker", "lambda:InvokeFunction",
        f"arn:aws:lambda:{REGION}:123456789012:function:bystander")), other
    # A function without the policy may invoke nothing.
    none = run(enforced, "bystander", op="invoke", function="target")
    assert none["code"] == "AccessDeniedException", none


def test_an_inline_deny_wins_over_the_crud_template(enforced):
    assert run(enforced, "denier", op="ddb_put", id="d1") == {"ok": True, "result": "put"}
    assert run(enforced, "denier", op="ddb_get", id="d1")["result"] == {"id": {"S": "d1"}}
    gone = run(enforced, "denier", op="ddb_delete", id="d1")
    assert gone["code"] == "AccessDeniedException", gone
    assert gone["message"] == not_authorized("DenierRole", "denier", "dynamodb:DeleteItem", TABLE_ARN) + (
        " with an explicit deny in an identity-based policy"), gone
    assert "Item" in client(enforced, "dynamodb").get_item(TableName=TABLE, Key={"id": {"S": "d1"}})


def test_a_role_from_the_template_grants_its_policies_only(enforced):
    assert run(enforced, "role-user", op="s3_put", key="by-role.txt", body="role") == {"ok": True, "result": "put"}
    assert client(enforced, "s3").get_object(Bucket=BUCKET, Key="by-role.txt")["Body"].read() == b"role"
    read = run(enforced, "role-user", op="s3_get", key="by-role.txt")
    assert read["code"] == "AccessDenied", read
    assert "assumed-role/WriterRole/role-user" in read["message"], read
    assert run(enforced, "role-user", op="ddb_get", id="seeded")["code"] == "AccessDeniedException"


# ---------------------------------------------------------------- credentials


def test_functions_never_get_the_box_key_and_each_has_its_own(enforced):
    box = enforced.credentials()
    keys = {name: function_credentials(enforced, name) for name in ("reader", "denier", "target")}
    for name, (akid, secret) in keys.items():
        assert akid != box["aws_access_key_id"], name
        assert secret != box["aws_secret_access_key"], name
        assert akid.startswith("ASIA") and len(akid) == 20, akid
    assert len({akid for akid, _ in keys.values()}) == 3
    assert len({secret for _, secret in keys.values()}) == 3


def test_a_functions_key_cannot_act_as_another_function(enforced):
    reader_akid, reader_secret = function_credentials(enforced, "reader")
    _, denier_secret = function_credentials(enforced, "denier")
    # The reader's own key, used from outside: still only the reader's rights.
    ddb = client(enforced, "dynamodb", reader_akid, reader_secret)
    ddb.get_item(TableName=TABLE, Key={"id": {"S": "seeded"}})
    with pytest.raises(ClientError) as e:
        ddb.put_item(TableName=TABLE, Item={"id": {"S": "impostor"}})
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    with pytest.raises(ClientError) as e:
        client(enforced, "lambda", reader_akid, reader_secret).invoke(FunctionName="target", Payload=b"{}")
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    # Another function's secret does not go with the reader's key.
    with pytest.raises(ClientError) as e:
        client(enforced, "dynamodb", reader_akid, denier_secret).put_item(
            TableName=TABLE, Item={"id": {"S": "impostor"}})
    assert e.value.response["Error"]["Code"] in ("InvalidSignatureException", "UnrecognizedClientException")
    # A key nobody issued is not recognised.
    with pytest.raises(ClientError) as e:
        client(enforced, "dynamodb", "ASIA" + "A" * 16, reader_secret).get_item(
            TableName=TABLE, Key={"id": {"S": "seeded"}})
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"


# ---------------------------------------------------------------- warn (the default)


def test_warn_mode_allows_and_logs_the_policy_aws_would_need(warned):
    put = run(warned, "reader", op="ddb_put", id="warned")
    assert put == {"ok": True, "result": "put"}, put
    assert "Item" in client(warned, "dynamodb").get_item(TableName=TABLE, Key={"id": {"S": "warned"}})
    line = wait_until(
        lambda: next((l for l in warned.output().splitlines()
                      if "dynamodb:PutItem" in l and "reader" in l and TABLE_ARN in l), None),
        what="the warn line for reader's PutItem")
    assert "DynamoDBWritePolicy: {TableName: iam-items}" in line, line
    # The same key outside a function: also allowed, same evaluation.
    assert run(warned, "reader", op="s3_put", key="w.txt", body="w") == {"ok": True, "result": "put"}
    wait_until(lambda: "S3WritePolicy: {BucketName: iam-files}" in warned.output(),
               what="the warn line for reader's PutObject")


# ---------------------------------------------------------------- docker runtime


def _docker_missing() -> str | None:
    """Why the docker runtime cannot run here (as tests/e2e/test_docker.py)."""
    if shutil.which("docker") is None:
        return "no docker client installed"
    run_docker = lambda *a: subprocess.run(["docker", *a], capture_output=True, timeout=30)  # noqa: E731
    try:
        if run_docker("info").returncode != 0:
            return "no Docker daemon answers"
        if run_docker("image", "inspect", "esb/python3.11:latest").returncode != 0:
            return "image esb/python3.11:latest missing (run scripts/build-images.sh)"
    except subprocess.TimeoutExpired:
        return "the Docker daemon does not answer"
    return None


def test_docker_workers_get_their_own_key_and_policies_apply(esb_up):
    reason = _docker_missing()
    if reason:
        missing_dependency(reason)
    server = esb_up(POLICIES, "--runtime", "docker", env={"ESB_IAM_MODE": "enforce"}, http=True)
    akid, secret = function_credentials(server, "reader")
    assert akid.startswith("ASIA") and akid != server.credentials()["aws_access_key_id"]
    assert secret != server.credentials()["aws_secret_access_key"]
    client(server, "dynamodb").put_item(TableName=TABLE, Item={"id": {"S": "in-docker"}})
    got = run(server, "reader", op="ddb_get", id="in-docker")
    assert got == {"ok": True, "result": {"id": {"S": "in-docker"}}}, got
    put = run(server, "reader", op="ddb_put", id="from-container")
    assert put["code"] == "AccessDeniedException", put
    assert "assumed-role/ReaderRole/reader" in put["message"], put
    denied = run(server, "invoker", op="invoke", function="bystander")
    assert denied["code"] == "AccessDeniedException", denied
