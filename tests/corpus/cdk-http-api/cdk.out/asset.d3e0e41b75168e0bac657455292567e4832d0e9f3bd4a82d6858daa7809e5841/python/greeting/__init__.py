"""Layer module of the CDK corpus apps (written for ESB)."""

GREETING = "hello from the cdk layer"
