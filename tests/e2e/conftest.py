"""Fixtures of the end-to-end suite (helpers live in esb_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from esb_helpers import (
    _ACTIVE, EXAMPLE_APP, HTTP_ONLY, REST_ONLY, WORKERS, EsbServer, copy_app, module_server, start_esb,
)


@pytest.fixture
def esb_up(tmp_path_factory):
    """Factory: `esb_up(template, *args, env=None, http=False)` → EsbServer.

    The app directory of `template` is copied to a fresh directory first.
    On teardown every server still running gets SIGTERM and must exit 0
    within 20 s, leaving no process behind."""
    servers: list[EsbServer] = []

    def start(template, *args, env=None, http=False, wait=True) -> EsbServer:
        workdir = tmp_path_factory.mktemp("esb")
        copied = copy_app(Path(template).parent, workdir)
        server = start_esb(copied, workdir, *args, env=env, http=http, wait=wait)
        servers.append(server)
        return server

    yield start
    errors = []
    for server in servers:
        if server.stopped_rc is None:
            rc = server.stop()
            if rc != 0:
                errors.append(f"esb up exited with {rc}\n{server.output()[-4000:]}")
    assert not errors, "\n".join(errors)


@pytest.fixture(scope="session")
def example(tmp_path_factory):
    """The example app (examples/app), HTTPS, shared by the whole session."""
    yield from module_server(tmp_path_factory, EXAMPLE_APP / "template.yaml")


@pytest.fixture(scope="session")
def example_template() -> Path:
    return EXAMPLE_APP / "template.yaml"


@pytest.fixture(scope="session")
def rest_only(tmp_path_factory):
    """tests/e2e/apps/restonly: one REST API, served over plain HTTP (--http)."""
    yield from module_server(tmp_path_factory, REST_ONLY, http=True)


@pytest.fixture(scope="session")
def http_only(tmp_path_factory):
    """tests/e2e/apps/httponly: one HTTP API, served over HTTPS."""
    yield from module_server(tmp_path_factory, HTTP_ONLY)


@pytest.fixture(scope="session")
def workers(tmp_path_factory):
    """tests/e2e/apps/workers with a one-second queue timeout."""
    yield from module_server(tmp_path_factory, WORKERS, env={"ESB_QUEUE_TIMEOUT": "1s"})


# ---------------------------------------------------------------- reporting


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for server in list(_ACTIVE):
            report.sections.append(
                (f"esb up output ({server.template.parent.name}, port {server.port})",
                 server.output()[-4000:])
            )
