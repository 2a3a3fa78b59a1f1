import time


def handler(event, context):
    """Sleeps past its one-second Timeout."""
    print("going to sleep")
    time.sleep(5)
    return {"statusCode": 200, "body": "woke up"}
