import json
import os


def handler(event, context):
    greeting = os.environ.get("GREETING", "Hello")
    print(f"hello called, request {context.aws_request_id}")
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"message": f"{greeting} from ESB", "stage": os.environ.get("STAGE")}),
    }
