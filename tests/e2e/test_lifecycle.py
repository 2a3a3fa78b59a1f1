"""`esb up` as a process: start, TLS, endpoint table, port conflicts,
parameter overrides, graceful shutdown on SIGTERM/SIGINT."""

import signal
import threading

import requests

from esb_helpers import WORKERS, curl, pid_alive, run_esb, text


def test_health_answers_over_https_with_generated_certificate(example):
    assert example.cert.is_file(), "esb up did not write DATA_DIR/tls/cert.pem"
    assert example.cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    # curl checks the certificate chain and that it is valid for 127.0.0.1.
    r = curl(example, "/_esb/health")
    assert r.status == 200


def test_https_listener_does_not_serve_plain_http(example):
    try:
        r = requests.get(f"http://127.0.0.1:{example.port}/_esb/health", timeout=5)
    except requests.RequestException:
        return
    assert r.status_code != 200, "plain HTTP answered 200 on the HTTPS listener"


def test_http_flag_serves_plain_http(rest_only):
    assert rest_only.base_url.startswith("http://")
    r = requests.get(rest_only.url("/_esb/health"), timeout=5)
    assert r.status_code == 200


def test_prints_endpoint_table(example):
    out = example.output()
    for route in ("/hello", "/echo/{proxy+}", "/items/{id}", "/items/{id}/parts/{part}", "/chain"):
        assert route in out, f"route {route} missing from the endpoint table:\n{out}"
    assert str(example.port) in out, "the endpoint table does not show the listen address"


def test_second_up_on_same_port_fails_naming_the_port(example, tmp_path):
    proc = run_esb(
        "up", "-t", str(example.template),
        "--listen", f"127.0.0.1:{example.port}",
        "--data-dir", str(tmp_path / "data"),
        cwd=tmp_path, timeout=30,
    )
    out = text(proc.stdout) + text(proc.stderr)
    assert proc.returncode != 0, out
    assert str(example.port) in out, f"error does not name port {example.port}:\n{out}"
    # The first server is unharmed.
    assert example.get("/_esb/health").status_code == 200


def test_parameter_overrides(esb_up, example_template):
    server = esb_up(example_template, "--parameter-overrides", "Greeting=Hi", "Stage=prod")
    for path in ("/hello", "/prod/hello"):
        r = server.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.json() == {"message": "Hi from ESB", "stage": "prod"}


def test_sigterm_drains_in_flight_invocation_and_exits_0(esb_up):
    server = esb_up(WORKERS)
    result = {}

    def call():
        try:
            result["value"] = server.invoke("sleeper", {"seconds": 2})
        except Exception as e:  # reported below
            result["error"] = e

    t = threading.Thread(target=call)
    t.start()
    # The invocation is running (its worker started and has it).
    server.wait_busy("sleeper")
    workers = server.worker_pids()
    assert workers, "no worker process was started for the invocation"

    rc = server.stop(signal.SIGTERM)
    t.join(15)
    assert rc == 0
    assert "error" not in result, f"in-flight invocation failed during drain: {result.get('error')!r}"
    resp, payload = result["value"]
    assert resp["StatusCode"] == 200
    assert "FunctionError" not in resp, payload
    assert payload["slept"] == 2
    assert not [p for p in workers if pid_alive(p)], "worker processes survived SIGTERM"


def test_sigint_exits_0_and_stops_workers(esb_up):
    server = esb_up(WORKERS)
    _, payload = server.invoke("pid")
    worker = payload["pid"]
    assert pid_alive(worker)
    rc = server.stop(signal.SIGINT)
    assert rc == 0
    assert not pid_alive(worker), "the warm worker survived SIGINT"


def test_detach_then_down(example_template, tmp_path):
    import json
    import shutil
    from esb_helpers import free_port

    app = tmp_path / "app"
    shutil.copytree(example_template.parent, app)
    data = tmp_path / "data"
    port = free_port()
    env = {"ESB_S3_LISTEN": "127.0.0.1:0", "ESB_DYNAMODB_LISTEN": "127.0.0.1:0"}
    up = run_esb("up", "--detach", "-t", str(app / "template.yaml"), "--http",
                 "--listen", f"127.0.0.1:{port}", "--data-dir", str(data),
                 cwd=tmp_path, timeout=120, env=env)
    assert up.returncode == 0, text(up.stdout) + text(up.stderr)
    assert "esb down" in text(up.stdout)
    pid = json.loads((data / "instance.json").read_text())["pid"]
    try:
        # The detached server answers, and logs go to the data directory.
        r = requests.get(f"http://127.0.0.1:{port}/hello", timeout=30)
        assert r.status_code == 200 and "Hello" in r.text
        assert (data / "esb.log").exists()
    finally:
        down = run_esb("down", "--data-dir", str(data), cwd=tmp_path, timeout=90)
    assert down.returncode == 0, text(down.stdout) + text(down.stderr)
    assert not pid_alive(pid)
    assert not (data / "instance.json").exists()
    # Nothing left to stop.
    again = run_esb("down", "--data-dir", str(data), cwd=tmp_path, timeout=30)
    assert again.returncode != 0


def _detach(app, data, port, cwd, env=None):
    full = {"ESB_S3_LISTEN": "127.0.0.1:0", "ESB_DYNAMODB_LISTEN": "127.0.0.1:0"}
    full.update(env or {})
    return run_esb("up", "--detach", "-t", str(app / "template.yaml"), "--http",
                   "--listen", f"127.0.0.1:{port}", "--data-dir", str(data),
                   cwd=cwd, timeout=120, env=full)


def test_detached_log_holds_no_secret_and_state_files_are_private(example_template, tmp_path):
    import json
    import shutil
    import stat
    from esb_helpers import free_port

    app = tmp_path / "app"
    shutil.copytree(example_template.parent, app)
    data = tmp_path / "data"
    up = _detach(app, data, free_port(), tmp_path)
    assert up.returncode == 0, text(up.stdout) + text(up.stderr)
    pid = json.loads((data / "instance.json").read_text())["pid"]
    try:
        creds = json.loads((data / "credentials.json").read_text())
        secrets = [creds["aws_secret_access_key"], creds["api_key"]]
        log = (data / "esb.log").read_text()
        assert "esb is up" in log, log
        for secret in secrets:
            assert secret not in log, "a generated secret was written into esb.log"
        # The user still sees them once, on the terminal that ran --detach.
        assert creds["api_key"] in text(up.stdout)
        mode = lambda p: stat.S_IMODE(p.stat().st_mode)
        assert mode(data) == 0o700, oct(mode(data))
        for name in ["esb.log", "instance.json", "credentials.json", "esb.lock"]:
            assert mode(data / name) == 0o600, f"{name} is {oct(mode(data / name))}"
    finally:
        down = run_esb("down", "--data-dir", str(data), cwd=tmp_path, timeout=90)
    assert down.returncode == 0, text(down.stdout) + text(down.stderr)
    assert not pid_alive(pid)


def test_second_detach_on_same_data_dir_fails_and_keeps_the_first(example_template, tmp_path):
    import json
    import shutil
    from esb_helpers import free_port

    app = tmp_path / "app"
    shutil.copytree(example_template.parent, app)
    data = tmp_path / "data"
    port = free_port()
    first = _detach(app, data, port, tmp_path)
    assert first.returncode == 0, text(first.stdout) + text(first.stderr)
    record = (data / "instance.json").read_text()
    pid = json.loads(record)["pid"]
    try:
        log_before = (data / "esb.log").read_bytes()
        # Another port, same data dir: refused before anything is touched.
        second = _detach(app, data, free_port(), tmp_path)
        assert second.returncode != 0
        err = text(second.stderr)
        assert "already" in err or "another esb up" in err, err
        assert str(pid) in err, err
        assert (data / "instance.json").read_text() == record
        assert (data / "esb.log").read_bytes().startswith(log_before), "esb.log was truncated"
        # A foreground `esb up` on that data dir is refused the same way.
        fg = run_esb("up", "-t", str(app / "template.yaml"), "--http",
                     "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data),
                     cwd=tmp_path, timeout=60,
                     env={"ESB_S3_LISTEN": "127.0.0.1:0", "ESB_DYNAMODB_LISTEN": "127.0.0.1:0"})
        assert fg.returncode != 0 and str(pid) in text(fg.stderr), text(fg.stderr)
        assert (data / "instance.json").read_text() == record
        # The first one still serves, and ps / down find it through
        # ESB_DATA_DIR (no --data-dir).
        r = requests.get(f"http://127.0.0.1:{port}/hello", timeout=30)
        assert r.status_code == 200
        ps = run_esb("ps", cwd=tmp_path, timeout=30, env={"ESB_DATA_DIR": str(data)})
        assert ps.returncode == 0 and f"instance pid {pid}" in text(ps.stdout), \
            text(ps.stdout) + text(ps.stderr)
    finally:
        down = run_esb("down", cwd=tmp_path, timeout=90, env={"ESB_DATA_DIR": str(data)})
    assert down.returncode == 0, text(down.stdout) + text(down.stderr)
    assert not pid_alive(pid)
    assert not (data / "instance.json").exists()
