"""Shared helpers shipped as a Lambda layer (corpus, written for ESB)."""

VERSION = "layer-1.2.0"


def shout(text: str) -> str:
    return text.upper() + "!"
