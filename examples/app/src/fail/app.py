class PaymentDeclined(Exception):
    pass


def handler(event, context):
    """Always raises, to show Lambda's error shape."""
    raise PaymentDeclined("card declined for order 42")
