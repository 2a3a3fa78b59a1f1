"""Embedded S3 and DynamoDB: real clients (boto3, the aws CLI, requests)
against `esb up`, resources from the template, functions using them with
no endpoint code, SigV4 with the box's credentials, persistence."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import uuid
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from esb_helpers import APPS, EXAMPLE_APP, copy_app, module_server, start_esb

SERVICES = APPS / "services" / "template.yaml"
BUCKET = "esb-test-files"
REGION = "us-east-1"


# ---------------------------------------------------------------- helpers


def instance(server) -> dict:
    return json.loads((server.data_dir / "instance.json").read_text())


def box_credentials(server) -> tuple[str, str]:
    creds = json.loads((server.data_dir / "credentials.json").read_text())
    return creds["aws_access_key_id"], creds["aws_secret_access_key"]


def client(server, service: str, secret: str | None = None, endpoint: str | None = None, **config):
    akid, real_secret = box_credentials(server)
    url = endpoint or instance(server)["s3_url" if service == "s3" else "dynamodb_url"]
    config.setdefault("retries", {"max_attempts": 0})
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=akid,
        aws_secret_access_key=secret or real_secret,
        aws_session_token=None,
        config=Config(**config),
    )


def s3(server, **kw):
    return client(server, "s3", **kw)


def ddb(server, **kw):
    return client(server, "dynamodb", **kw)


def aws_cli(server, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    akid, secret = box_credentials(server)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": akid,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
    })
    return subprocess.run(["aws", *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """tests/e2e/apps/services over HTTPS, its own S3 / DynamoDB ports."""
    yield from module_server(tmp_path_factory, SERVICES)


# ---------------------------------------------------------------- S3


def test_template_bucket_exists(services):
    c = s3(services)
    names = [b["Name"] for b in c.list_buckets()["Buckets"]]
    assert BUCKET in names
    c.head_bucket(Bucket=BUCKET)


def test_put_get_head_delete(services):
    c = s3(services)
    c.put_object(Bucket=BUCKET, Key="docs/a.json", Body=b'{"a": 1}',
                 ContentType="application/json", Metadata={"owner": "tests"})
    got = c.get_object(Bucket=BUCKET, Key="docs/a.json")
    assert got["Body"].read() == b'{"a": 1}'
    assert got["ContentType"] == "application/json"
    head = c.head_object(Bucket=BUCKET, Key="docs/a.json")
    assert head["ContentLength"] == 8
    assert head["Metadata"] == {"owner": "tests"}
    c.delete_object(Bucket=BUCKET, Key="docs/a.json")
    with pytest.raises(ClientError) as err:
        c.head_object(Bucket=BUCKET, Key="docs/a.json")
    assert err.value.response["Error"]["Code"] in ("404", "NoSuchKey")


def test_create_bucket_and_list_with_prefix_and_pagination(services):
    c = s3(services)
    bucket = f"list-{uuid.uuid4().hex[:12]}"
    c.create_bucket(Bucket=bucket)
    keys = [f"page/{i:03d}.txt" for i in range(25)] + ["other/x.txt", "top.txt"]
    for k in keys:
        c.put_object(Bucket=bucket, Key=k, Body=k.encode())
    pages = list(c.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="page/", PaginationConfig={"PageSize": 10}))
    assert [p["KeyCount"] for p in pages] == [10, 10, 5]
    listed = [o["Key"] for p in pages for o in p.get("Contents", [])]
    assert listed == sorted(k for k in keys if k.startswith("page/"))
    root = c.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert sorted(p["Prefix"] for p in root["CommonPrefixes"]) == ["other/", "page/"]
    assert [o["Key"] for o in root["Contents"]] == ["top.txt"]


def test_multipart_upload(services):
    c = s3(services)
    part1 = os.urandom(5 * 1024 * 1024)
    part2 = os.urandom(1024 * 1024 + 7)
    up = c.create_multipart_upload(Bucket=BUCKET, Key="big/multi.bin")
    etags = []
    for n, data in enumerate([part1, part2], start=1):
        r = c.upload_part(Bucket=BUCKET, Key="big/multi.bin", UploadId=up["UploadId"],
                          PartNumber=n, Body=data)
        etags.append({"ETag": r["ETag"], "PartNumber": n})
    c.complete_multipart_upload(Bucket=BUCKET, Key="big/multi.bin", UploadId=up["UploadId"],
                                MultipartUpload={"Parts": etags})
    got = c.get_object(Bucket=BUCKET, Key="big/multi.bin")["Body"].read()
    assert got == part1 + part2


def test_presigned_get_with_requests(services):
    c = s3(services)
    c.put_object(Bucket=BUCKET, Key="shared/report.txt", Body=b"presigned body")
    url = c.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "shared/report.txt"},
                                   ExpiresIn=300)
    r = requests.get(url, timeout=10)
    assert r.status_code == 200, r.text
    assert r.content == b"presigned body"
    # Tampering with the signed URL is refused.
    r = requests.get(url.replace("report.txt", "other.txt"), timeout=10)
    assert r.status_code == 403


def test_range_get(services):
    c = s3(services)
    c.put_object(Bucket=BUCKET, Key="range.txt", Body=b"0123456789")
    got = c.get_object(Bucket=BUCKET, Key="range.txt", Range="bytes=2-5")
    assert got["Body"].read() == b"2345"
    assert got["ContentRange"] == "bytes 2-5/10"
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206


def test_copy_object(services):
    c = s3(services)
    c.put_object(Bucket=BUCKET, Key="copy/src.txt", Body=b"copy me")
    c.copy_object(Bucket=BUCKET, Key="copy/dst.txt", CopySource={"Bucket": BUCKET, "Key": "copy/src.txt"})
    assert c.get_object(Bucket=BUCKET, Key="copy/dst.txt")["Body"].read() == b"copy me"


def test_delete_objects(services):
    c = s3(services)
    for i in range(3):
        c.put_object(Bucket=BUCKET, Key=f"bulk/{i}", Body=b"x")
    r = c.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": f"bulk/{i}"} for i in range(3)]})
    assert sorted(d["Key"] for d in r["Deleted"]) == ["bulk/0", "bulk/1", "bulk/2"]
    assert c.list_objects_v2(Bucket=BUCKET, Prefix="bulk/")["KeyCount"] == 0


def test_virtual_hosted_style_for_localhost(services, monkeypatch):
    """boto3 addresses a hostname endpoint as <bucket>.localhost; resolve
    those names to loopback (as systemd-resolved does) and check the
    endpoint serves them."""
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    port = instance(services)["s3_url"].rsplit(":", 1)[1]
    c = s3(services, endpoint=f"http://localhost:{port}", s3={"addressing_style": "virtual"})
    c.put_object(Bucket=BUCKET, Key="vhost/x.txt", Body=b"virtual")
    assert c.get_object(Bucket=BUCKET, Key="vhost/x.txt")["Body"].read() == b"virtual"
    # Path style against the same name works too.
    p = s3(services, endpoint=f"http://localhost:{port}", s3={"addressing_style": "path"})
    assert p.get_object(Bucket=BUCKET, Key="vhost/x.txt")["Body"].read() == b"virtual"


def test_wrong_secret_is_refused_by_s3(services):
    c = s3(services, secret="not-the-secret-at-all-0000000000000000000")
    with pytest.raises(ClientError) as err:
        c.list_objects_v2(Bucket=BUCKET)
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    r = requests.get(instance(services)["s3_url"] + f"/{BUCKET}", timeout=10)
    assert r.status_code == 403, "an unsigned request must be refused"


def test_object_keys_cannot_leave_the_bucket(services):
    c = s3(services)
    for key in ["../escape.txt", "a/../../escape.txt", "/abs/escape.txt"]:
        try:
            c.put_object(Bucket=BUCKET, Key=key, Body=b"escape")
        except ClientError:
            pass
    s3_root = services.data_dir / "s3"
    outside = [p for p in services.data_dir.rglob("escape.txt")
               if s3_root / BUCKET not in p.parents]
    assert outside == [], outside
    assert not (s3_root / "escape.txt").exists()


def test_s3_long_key_round_trips(services):
    """Every valid key, up to 1,024 bytes of UTF-8, round-trips through
    PUT/GET/HEAD/LIST/COPY/multipart/DELETE (issue 12 "S")."""
    c = s3(services)
    base = f"long-{uuid.uuid4().hex[:8]}/"
    keys = [
        base + "k" * (1024 - len(base)),                        # 1,024 ASCII bytes
        base + "ü" * ((1024 - len(base)) // 2),                 # multi-byte UTF-8
        base + "sp ace+plus%percent?q=1&x#frag*~!'()[]{}<>\\\"|^`",
        base + "a" * 200 + "/" + "b" * 300,                     # long segments
        base + "trailing/",
        base + "ctl\tand\u2028line sep",
    ]
    for i, key in enumerate(keys):
        assert len(key.encode()) <= 1024
        body = f"body {i}".encode()
        c.put_object(Bucket=BUCKET, Key=key, Body=body)
        assert c.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
        assert c.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == len(body)
    listed = [o["Key"] for o in c.list_objects_v2(Bucket=BUCKET, Prefix=base)["Contents"]]
    assert listed == sorted(keys, key=lambda k: k.encode()), "listed in key byte order"
    # Pagination and StartAfter walk the same order.
    pages = c.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=base, PaginationConfig={"PageSize": 2})
    assert [o["Key"] for p in pages for o in p.get("Contents", [])] == listed
    after = c.list_objects_v2(Bucket=BUCKET, Prefix=base, StartAfter=listed[2])
    assert [o["Key"] for o in after["Contents"]] == listed[3:]
    # Copy and multipart to a long key.
    long_dst = base + "copy-" + "c" * 900
    c.copy_object(Bucket=BUCKET, Key=long_dst, CopySource={"Bucket": BUCKET, "Key": keys[0]})
    assert c.get_object(Bucket=BUCKET, Key=long_dst)["Body"].read() == b"body 0"
    mp_key = base + "multipart-" + "m" * 900
    up = c.create_multipart_upload(Bucket=BUCKET, Key=mp_key)
    assert up["Key"] == mp_key
    part = c.upload_part(Bucket=BUCKET, Key=mp_key, UploadId=up["UploadId"], PartNumber=1, Body=b"mp")
    done = c.complete_multipart_upload(Bucket=BUCKET, Key=mp_key, UploadId=up["UploadId"],
                                       MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
    assert done["Key"] == mp_key
    assert c.get_object(Bucket=BUCKET, Key=mp_key)["Body"].read() == b"mp"
    every = keys + [long_dst, mp_key]
    r = c.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in every]})
    assert sorted(d["Key"] for d in r["Deleted"]) == sorted(every)
    assert c.list_objects_v2(Bucket=BUCKET, Prefix=base)["KeyCount"] == 0
    with pytest.raises(ClientError) as err:
        c.put_object(Bucket=BUCKET, Key="k" * 1025, Body=b"x")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_s3_prefix_and_object_coexist(services):
    """`a` and `a/b` are both objects, whichever is written first."""
    c = s3(services)
    base = f"coexist-{uuid.uuid4().hex[:8]}/"
    for first, second in [("a", "a/b"), ("x/y", "x")]:
        c.put_object(Bucket=BUCKET, Key=base + first, Body=first.encode())
        c.put_object(Bucket=BUCKET, Key=base + second, Body=second.encode())
        for k in (first, second):
            assert c.get_object(Bucket=BUCKET, Key=base + k)["Body"].read() == k.encode()
    top = c.list_objects_v2(Bucket=BUCKET, Prefix=base, Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == [base + "a", base + "x"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == [base + "a/", base + "x/"]
    c.delete_object(Bucket=BUCKET, Key=base + "a")
    assert c.get_object(Bucket=BUCKET, Key=base + "a/b")["Body"].read() == b"a/b"
    every = [o["Key"] for o in c.list_objects_v2(Bucket=BUCKET, Prefix=base)["Contents"]]
    assert every == [base + "a/b", base + "x", base + "x/y"]


def test_s3_dot_segments_rejected(services):
    """`.`/`..` segments and NUL: 400 (robustness S3), nothing stored."""
    c = s3(services)
    for key in ["../escape.txt", "a/../b", "a/./b", ".", "..", "a/.."]:
        with pytest.raises(ClientError) as err:
            c.put_object(Bucket=BUCKET, Key=key, Body=b"x")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400, key
    # NUL cannot be sent by botocore's URL builder: send it percent-encoded
    # in a presigned URL.
    url = c.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": "nul\x00key"},
                                   ExpiresIn=60)
    r = requests.put(url, data=b"x", timeout=10)
    assert r.status_code == 400, r.text
    assert not any("escape" in p.name for p in services.data_dir.rglob("*"))


def test_s4_bad_signature_403(services):
    """Wrong secret, missing signature, skewed clock: 403 with S3's codes."""
    c = s3(services, secret="not-the-secret-at-all-0000000000000000000")
    with pytest.raises(ClientError) as err:
        c.put_object(Bucket=BUCKET, Key="s4.txt", Body=b"x")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    r = requests.put(instance(services)["s3_url"] + f"/{BUCKET}/s4.txt", data=b"x", timeout=10)
    assert r.status_code == 403
    # A SigV4 presigned URL whose date is moved 20 minutes back.
    good = s3(services, signature_version="s3v4")
    url = good.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "s4.txt"})
    assert "X-Amz-Date=" in url
    import datetime
    import re
    old = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=20)).strftime("%Y%m%dT%H%M%SZ")
    r = requests.get(re.sub(r"X-Amz-Date=[0-9TZ]+", f"X-Amz-Date={old}", url), timeout=10)
    assert r.status_code == 403, r.text
    assert any(code in r.text for code in ("SignatureDoesNotMatch", "RequestTimeTooSkewed", "AccessDenied"))
    with pytest.raises(ClientError):
        good.head_object(Bucket=BUCKET, Key="s4.txt")


def test_h10_s3_slowloris_does_not_lock_out(services):
    """1,030 half-sent requests to the S3 port (the issue's reproduction)
    must not lock other clients out."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200 and hard >= 2200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2200, hard))
    host, port = instance(services)["s3_url"].rsplit("/", 1)[1].rsplit(":", 1)
    held = []
    try:
        for _ in range(1030):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"GET /" + BUCKET.encode() + b"/x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            held.append(s)
        c = s3(services, connect_timeout=5, read_timeout=5)
        c.put_object(Bucket=BUCKET, Key="h10.txt", Body=b"served")
        assert c.get_object(Bucket=BUCKET, Key="h10.txt")["Body"].read() == b"served"
    finally:
        for s in held:
            s.close()


# ---------------------------------------------------------------- DynamoDB


def test_template_tables_exist_with_indexes(services):
    c = ddb(services)
    assert {"notes", "orders"} <= set(c.list_tables()["TableNames"])
    orders = c.describe_table(TableName="orders")["Table"]
    assert [k["AttributeName"] for k in orders["KeySchema"]] == ["customer", "order_id"]
    assert [i["IndexName"] for i in orders["GlobalSecondaryIndexes"]] == ["by-status"]
    assert [i["IndexName"] for i in orders["LocalSecondaryIndexes"]] == ["by-total"]
    notes = c.describe_table(TableName="notes")["Table"]
    assert notes["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]


def _orders(c, customer, n):
    for i in range(n):
        c.put_item(TableName="orders", Item={
            "customer": {"S": customer}, "order_id": {"S": f"o{i:03d}"},
            "status": {"S": "open" if i % 2 else "shipped"}, "total": {"N": str(i * 10)},
        })


def test_put_get_update_and_conditional_write(services):
    c = ddb(services)
    c.put_item(TableName="notes", Item={"id": {"S": "n1"}, "text": {"S": "hello"}, "v": {"N": "1"}})
    item = c.get_item(TableName="notes", Key={"id": {"S": "n1"}})["Item"]
    assert item["text"] == {"S": "hello"}
    c.update_item(TableName="notes", Key={"id": {"S": "n1"}},
                  UpdateExpression="SET #t = :t ADD v :one",
                  ExpressionAttributeNames={"#t": "text"},
                  ExpressionAttributeValues={":t": {"S": "bye"}, ":one": {"N": "1"}})
    item = c.get_item(TableName="notes", Key={"id": {"S": "n1"}})["Item"]
    assert item["text"] == {"S": "bye"} and item["v"] == {"N": "2"}
    with pytest.raises(ClientError) as err:
        c.put_item(TableName="notes", Item={"id": {"S": "n1"}},
                   ConditionExpression="attribute_not_exists(id)")
    assert err.value.response["Error"]["Code"] == "ConditionalCheckFailedException"


def test_query_and_scan_with_expressions_and_pagination(services):
    c = ddb(services)
    _orders(c, "alice", 25)
    pages = list(c.get_paginator("query").paginate(
        TableName="orders",
        KeyConditionExpression="customer = :c AND begins_with(order_id, :p)",
        ExpressionAttributeValues={":c": {"S": "alice"}, ":p": {"S": "o0"}},
        PaginationConfig={"PageSize": 10}))
    ids = [i["order_id"]["S"] for p in pages for i in p["Items"]]
    assert ids == [f"o{i:03d}" for i in range(25)]
    assert len(pages) >= 3
    filtered = c.query(TableName="orders", KeyConditionExpression="customer = :c",
                       FilterExpression="#s = :open",
                       ExpressionAttributeNames={"#s": "status"},
                       ExpressionAttributeValues={":c": {"S": "alice"}, ":open": {"S": "open"}})
    assert filtered["Count"] == 12
    scanned = [i for p in c.get_paginator("scan").paginate(
        TableName="orders", PaginationConfig={"PageSize": 7}) for i in p["Items"]]
    assert len([i for i in scanned if i["customer"]["S"] == "alice"]) == 25


def test_gsi_and_lsi_query(services):
    c = ddb(services)
    _orders(c, "bob", 6)
    r = c.query(TableName="orders", IndexName="by-status",
                KeyConditionExpression="#s = :s",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":s": {"S": "shipped"}})
    bobs = [i for i in r["Items"] if i["customer"]["S"] == "bob"]
    assert len(bobs) == 3
    r = c.query(TableName="orders", IndexName="by-total",
                KeyConditionExpression="customer = :c AND #t >= :t",
                ExpressionAttributeNames={"#t": "total"},
                ExpressionAttributeValues={":c": {"S": "bob"}, ":t": {"N": "30"}})
    assert sorted(int(i["total"]["N"]) for i in r["Items"]) == [30, 40, 50]


def test_batch_and_transact(services):
    c = ddb(services)
    c.batch_write_item(RequestItems={"notes": [
        {"PutRequest": {"Item": {"id": {"S": f"b{i}"}, "n": {"N": str(i)}}}} for i in range(5)]})
    got = c.batch_get_item(RequestItems={"notes": {"Keys": [{"id": {"S": f"b{i}"}} for i in range(5)]}})
    assert len(got["Responses"]["notes"]) == 5
    c.transact_write_items(TransactItems=[
        {"Put": {"TableName": "notes", "Item": {"id": {"S": "t1"}}}},
        {"Update": {"TableName": "notes", "Key": {"id": {"S": "b0"}},
                    "UpdateExpression": "SET n = :v", "ExpressionAttributeValues": {":v": {"N": "100"}}}},
    ])
    assert c.get_item(TableName="notes", Key={"id": {"S": "b0"}})["Item"]["n"] == {"N": "100"}
    with pytest.raises(ClientError) as err:
        c.transact_write_items(TransactItems=[
            {"Put": {"TableName": "notes", "Item": {"id": {"S": "t2"}}}},
            {"ConditionCheck": {"TableName": "notes", "Key": {"id": {"S": "missing"}},
                                "ConditionExpression": "attribute_exists(id)"}},
        ])
    assert err.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert "Item" not in c.get_item(TableName="notes", Key={"id": {"S": "t2"}})


def test_oversized_item_gets_the_aws_error(services):
    c = ddb(services)
    with pytest.raises(ClientError) as err:
        c.put_item(TableName="notes", Item={"id": {"S": "big"}, "blob": {"S": "x" * (400 * 1024 + 1)}})
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "size" in err.value.response["Error"]["Message"].lower()


def test_create_and_delete_table_from_a_client(services):
    c = ddb(services)
    c.create_table(TableName="adhoc", BillingMode="PAY_PER_REQUEST",
                   KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                   AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}])
    c.put_item(TableName="adhoc", Item={"k": {"S": "1"}})
    c.delete_table(TableName="adhoc")
    assert "adhoc" not in c.list_tables()["TableNames"]


def test_wrong_secret_is_refused_by_dynamodb(services):
    c = ddb(services, secret="not-the-secret-at-all-0000000000000000000")
    with pytest.raises(ClientError) as err:
        c.list_tables()
    assert err.value.response["Error"]["Code"] in ("UnrecognizedClientException", "InvalidSignatureException")
    stranger = boto3.client("dynamodb", endpoint_url=instance(services)["dynamodb_url"], region_name=REGION,
                            aws_access_key_id="AKIASTRANGER0000000", aws_secret_access_key="whatever",
                            config=Config(retries={"max_attempts": 0}))
    with pytest.raises(ClientError) as err:
        stranger.list_tables()
    assert err.value.response["Error"]["Code"] == "UnrecognizedClientException"
    r = requests.post(instance(services)["dynamodb_url"], data="{}", timeout=10,
                      headers={"X-Amz-Target": "DynamoDB_20120810.ListTables",
                               "Content-Type": "application/x-amz-json-1.0"})
    assert r.status_code == 400
    assert "MissingAuthenticationToken" in r.json()["__type"]


# ---------------------------------------------------------------- aws CLI


def test_aws_cli_against_both_endpoints(services, tmp_path):
    urls = instance(services)
    src = tmp_path / "hello.txt"
    src.write_text("from the aws cli")
    r = aws_cli(services, "--endpoint-url", urls["s3_url"], "s3", "cp", str(src),
                f"s3://{BUCKET}/cli/hello.txt", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    r = aws_cli(services, "--endpoint-url", urls["s3_url"], "s3", "ls", f"s3://{BUCKET}/cli/",
                tmp_path=tmp_path)
    assert r.returncode == 0 and "hello.txt" in r.stdout, r.stderr
    dest = tmp_path / "back.txt"
    r = aws_cli(services, "--endpoint-url", urls["s3_url"], "s3", "cp", f"s3://{BUCKET}/cli/hello.txt",
                str(dest), tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert dest.read_text() == "from the aws cli"
    r = aws_cli(services, "--endpoint-url", urls["dynamodb_url"], "dynamodb", "put-item",
                "--table-name", "notes", "--item", '{"id": {"S": "cli"}, "by": {"S": "aws"}}',
                tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    r = aws_cli(services, "--endpoint-url", urls["dynamodb_url"], "dynamodb", "get-item",
                "--table-name", "notes", "--key", '{"id": {"S": "cli"}}', tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["Item"]["by"] == {"S": "aws"}
    r = aws_cli(services, "--endpoint-url", urls["dynamodb_url"], "dynamodb", "list-tables",
                tmp_path=tmp_path)
    assert r.returncode == 0 and "orders" in r.stdout, r.stderr


# ---------------------------------------------------------------- functions


def test_function_uses_both_services_with_no_endpoint_code(services):
    r = services.get("/probe")
    assert r.status_code == 200, r.text
    body = r.json()
    urls = instance(services)
    assert body["env"]["AWS_ENDPOINT_URL_S3"] == urls["s3_url"]
    assert body["env"]["AWS_ENDPOINT_URL_DYNAMODB"] == urls["dynamodb_url"]
    assert body["env"]["AWS_ENDPOINT_URL_LAMBDA"]
    # The function's own key (docs/auth.md), never the box's.
    assert body["env"]["AWS_ACCESS_KEY_ID"].startswith("ASIA")
    assert body["env"]["AWS_ACCESS_KEY_ID"] != box_credentials(services)[0]
    assert body["object"] == "written by a function"
    assert body["item"]["by"] == {"S": "function"}
    assert BUCKET in body["buckets"]
    assert {"notes", "orders"} <= set(body["tables"])


def test_example_storage_route_writes_and_reads_back(example):
    key = f"k-{uuid.uuid4().hex[:8]}"
    r = example.post(f"/store/{key}", data="stored through the gateway",
                     headers={"Content-Type": "text/plain"})
    assert r.status_code == 201, r.text
    r = example.get(f"/store/{key}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "stored through the gateway"
    assert body["item"]["size"] == {"N": str(len("stored through the gateway"))}
    # The same object is visible to a client of the S3 endpoint.
    got = s3(example).get_object(Bucket="esb-data-dev", Key=key)["Body"].read()
    assert got == b"stored through the gateway"


# ---------------------------------------------------------------- persistence and start-up


def test_data_survives_restart_and_secret_is_printed_once(tmp_path):
    template = copy_app(SERVICES.parent, tmp_path)
    first = start_esb(template, tmp_path, http=True)
    try:
        creds_file = first.data_dir / "credentials.json"
        assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
        akid, secret = box_credentials(first)
        assert secret in first.output(), "a generated secret is printed once"
        s3(first).put_object(Bucket=BUCKET, Key="persist.txt", Body=b"still here")
        ddb(first).put_item(TableName="notes", Item={"id": {"S": "persist"}})
    finally:
        assert first.stop() == 0
    second = start_esb(template, tmp_path, http=True)
    try:
        assert box_credentials(second) == (akid, secret)
        assert secret not in second.output(), "the secret must not be printed again"
        assert s3(second).get_object(Bucket=BUCKET, Key="persist.txt")["Body"].read() == b"still here"
        assert "Item" in ddb(second).get_item(TableName="notes", Key={"id": {"S": "persist"}})
    finally:
        assert second.stop() == 0


@pytest.mark.parametrize("damage", ["dynamodb", "s3"])
def test_corrupt_data_fails_startup_naming_the_file(tmp_path, damage):
    template = copy_app(SERVICES.parent, tmp_path)
    data = tmp_path / "data"
    if damage == "dynamodb":
        bad = data / "dynamodb" / "dynamodb.sqlite3"
        bad.parent.mkdir(parents=True)
        bad.write_bytes(b"this is not a sqlite database" * 100)
    else:
        bad = data / "s3" / ".bucket-ZXNi.object-eA.metadata.json"
        bad.parent.mkdir(parents=True)
        bad.write_text("{not json")
    server = start_esb(template, tmp_path, http=True, wait=False)
    rc = server.process.wait(timeout=60)
    out = server.output()
    server.stop()
    assert rc != 0, out
    assert str(bad) in out or bad.name in out, out
    assert bad.read_bytes()[:10] in (b"this is no", b"{not json"), "the file must not be reset"


def test_services_can_be_disabled_or_external(tmp_path):
    template = copy_app(SERVICES.parent, tmp_path)
    server = start_esb(template, tmp_path, "--no-dynamodb", http=True,
                       env={"ESB_S3_ENDPOINT": "http://minio.example:9000"})
    try:
        urls = instance(server)
        assert urls["s3_url"] == "http://minio.example:9000"
        assert urls.get("dynamodb_url") is None
        assert "DynamoDB: disabled" in server.output()
    finally:
        assert server.stop() == 0
