"""Another function's code: its neighbours must not be able to read it."""

SECRET = "other-function-source"


def handler(event, context):
    return {"secret": SECRET}
