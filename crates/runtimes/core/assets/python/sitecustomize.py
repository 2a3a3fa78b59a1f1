"""ESB: point botocore at ESB's endpoints (AWS_ENDPOINT_URL_<SERVICE>).

botocore >= 1.31 reads AWS_ENDPOINT_URL_<SERVICE> itself. Older botocore
ignores those variables, so a chained `boto3.client("lambda").invoke(...)`
would go to real AWS. This module, put first on PYTHONPATH by ESB, wraps
botocore.session.Session.create_client the moment botocore.session is
imported (lazily: nothing is imported when the function never uses boto3)
and fills `endpoint_url` from the environment when the caller gave none.
ESB_FORCE_ENDPOINT_PATCH=1 applies the patch on new botocore too.
"""

import os
import sys


def _endpoint_for(service_name):
    key = "AWS_ENDPOINT_URL_" + str(service_name).upper().replace("-", "_").replace(" ", "_")
    return os.environ.get(key) or os.environ.get("AWS_ENDPOINT_URL")


def _needs_patch(botocore_module):
    if os.environ.get("ESB_FORCE_ENDPOINT_PATCH") == "1":
        return True
    try:
        parts = tuple(int(p) for p in botocore_module.__version__.split(".")[:2])
    except (AttributeError, ValueError):
        return True
    return parts < (1, 31)


def _patch(session_module):
    session_cls = getattr(session_module, "Session", None)
    original = getattr(session_cls, "create_client", None)
    if original is None or getattr(original, "__esb_patched__", False):
        return
    import botocore

    if not _needs_patch(botocore):
        return

    def create_client(self, service_name, *args, **kwargs):
        # endpoint_url is the 5th parameter after service_name.
        if len(args) < 5 and kwargs.get("endpoint_url") is None:
            url = _endpoint_for(service_name)
            if url:
                kwargs["endpoint_url"] = url
        return original(self, service_name, *args, **kwargs)

    create_client.__esb_patched__ = True
    create_client.__wrapped__ = original
    session_cls.create_client = create_client


def _install():
    if not any(k.startswith("AWS_ENDPOINT_URL") for k in os.environ):
        return
    existing = sys.modules.get("botocore.session")
    if existing is not None:
        _patch(existing)
        return

    # A plain class: `sys.meta_path` only needs `find_spec`, and
    # `importlib.abc` would import `typing` and friends (about 4 MB of RSS
    # in every worker).
    import importlib.machinery

    class _Finder:
        def find_spec(self, fullname, path, target=None):
            if fullname != "botocore.session":
                return None
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None or spec.loader is None:
                return spec
            loader = spec.loader
            original_exec = loader.exec_module

            def exec_module(module):
                original_exec(module)
                try:
                    _patch(module)
                except Exception:  # noqa: BLE001 - never break the user's import
                    pass

            loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())


try:
    _install()
except Exception:  # noqa: BLE001 - must never break interpreter start-up
    pass
