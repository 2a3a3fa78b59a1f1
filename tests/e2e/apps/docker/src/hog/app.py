"""Allocates `mb` megabytes (query string), to hit the memory limit."""
import json


def handler(event, context):
    mb = int((event.get("queryStringParameters") or {}).get("mb", "1"))
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return {"statusCode": 200, "body": json.dumps({"allocated_mb": mb})}
