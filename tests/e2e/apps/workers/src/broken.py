# Deliberately invalid Python: importing this module must fail at init.
def handler(event, context)
    return "never"
