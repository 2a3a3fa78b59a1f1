"""The web console (docs/console.md) in a real headless Chromium.

A user logs in with a user-pool account, visits every page and checks what
an operator would: the example function with its route, an invocation and
its log line, a metrics chart, an object uploaded with boto3, an item put
with boto3, the user pool. The API refuses calls without a valid token, a
wrong password is refused, hostile object keys render as text, and keys
cannot leave their bucket. A screenshot of every page is saved in the test's
tmp dir and checked to be a PNG.

Needs Debian's `chromium` and `chromium-driver` and Python `selenium`.
"""

from __future__ import annotations

import json
import time

import boto3
import pytest
import requests
from botocore.config import Config

from esb_helpers import EXAMPLE_APP, copy_app, missing_dependency, require_tool, run_esb, start_esb, wait_until

PASSWORD = "console test password 1"
USER = "operator"
BUCKET = "esb-data-dev"
TABLE = "esb-items"
HOSTILE_KEY = "reports/<img src=x onerror=alert(1)>.txt"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("esb-console")
    template = copy_app(EXAMPLE_APP, workdir)
    server = start_esb(template, workdir, http=True, env={"ESB_CONSOLE": "true"})
    added = run_esb("user", "add", "--data-dir", str(server.data_dir), USER,
                    input=(PASSWORD + "\n").encode())
    assert added.returncode == 0, added.stderr
    yield server
    rc = server.stop()
    assert rc == 0, f"esb up exited with {rc}\n{server.output()[-4000:]}"


def boto(server, service: str):
    inst = json.loads((server.data_dir / "instance.json").read_text())
    creds = server.credentials()
    return boto3.client(
        service,
        endpoint_url=inst["s3_url" if service == "s3" else "dynamodb_url"],
        region_name="us-east-1",
        aws_access_key_id=creds["aws_access_key_id"],
        aws_secret_access_key=creds["aws_secret_access_key"],
        config=Config(retries={"max_attempts": 0}),
    )


def api_token(server) -> str:
    r = server.post("/_esb/console/api/login", json={"username": USER, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()["token"]


# ---------------------------------------------------------------- API, no browser


def test_api_refuses_calls_without_a_valid_token(console):
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic x"}):
        for path in ("functions", "logs", "users", "s3/buckets", "dynamodb/tables"):
            r = console.get(f"/_esb/console/api/{path}", headers=headers)
            assert r.status_code == 401, (path, headers, r.status_code, r.text)
    # A token of the box's API key is no user token either.
    key = console.credentials()["api_key"]
    assert console.get("/_esb/console/api/users",
                       headers={"Authorization": f"Bearer {key}"}).status_code == 401
    wrong = console.post("/_esb/console/api/login", json={"username": USER, "password": "nope"})
    assert wrong.status_code == 401
    assert "token" not in wrong.text
    token = api_token(console)
    r = console.get("/_esb/console/api/users", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert [u["username"] for u in r.json()] == [USER]
    assert "password" not in r.text and "argon2" not in r.text


def test_object_paths_cannot_leave_their_bucket(console):
    auth = {"Authorization": f"Bearer {api_token(console)}"}
    for key in ("../other/x", "a/../../x", "./x", "a//b"):
        r = console.request("PUT", "/_esb/console/api/s3/object",
                            params={"bucket": BUCKET, "key": key}, data=b"x", headers=auth)
        assert r.status_code == 400, (key, r.text)
    for bucket in ("..", "a/b", "Bad"):
        r = console.get("/_esb/console/api/s3/objects", params={"bucket": bucket}, headers=auth)
        assert r.status_code == 400, (bucket, r.text)
    # A weird but valid key round-trips through the console API to S3.
    key = "dir/we ird+name?#%.txt"
    r = console.request("PUT", "/_esb/console/api/s3/object",
                        params={"bucket": BUCKET, "key": key}, data=b"weird", headers=auth)
    assert r.status_code == 200, r.text
    got = boto(console, "s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert got == b"weird"
    r = console.get("/_esb/console/api/s3/object", params={"bucket": BUCKET, "key": key}, headers=auth)
    assert r.content == b"weird"
    assert r.headers["content-disposition"] == "attachment"
    r = console.request("DELETE", "/_esb/console/api/s3/object",
                        params={"bucket": BUCKET, "key": key}, headers=auth)
    assert r.status_code == 204, r.text


def test_console_is_off_unless_enabled(tmp_path):
    template = copy_app(EXAMPLE_APP, tmp_path)
    server = start_esb(template, tmp_path, http=True, env={"ESB_CONSOLE": "false"})
    try:
        # The gateway's own "no route" answer (403 / 404 by API kind).
        page = server.get("/_esb/console/")
        assert page.status_code in (403, 404) and "ESB console" not in page.text
        login = server.post("/_esb/console/api/login", json={})
        assert login.status_code in (403, 404) and "token" not in login.text
    finally:
        assert server.stop() == 0


# ---------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser():
    chromium = require_tool("chromium")
    driver_path = require_tool("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing_dependency("python selenium is not installed (pip install -r tests/requirements.txt)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    yield driver
    driver.quit()


def shot(driver, tmp_path, name: str):
    path = tmp_path / f"console-{name}.png"
    assert driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 1000, f"{name}: not a PNG"
    return path


def text_of(driver, css: str) -> str:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, css).text


def wait_text(driver, css: str, needle: str, timeout: float = 20.0) -> str:
    def check():
        try:
            t = text_of(driver, css)
        except Exception:  # noqa: BLE001 - element not there yet
            return None
        return t if needle in t else None
    return wait_until(check, timeout=timeout, what=f"{needle!r} in {css}")


def click_tab(driver, page: str):
    from selenium.webdriver.common.by import By
    driver.find_element(By.CSS_SELECTOR, f'#tabs button[data-page="{page}"]').click()


def test_console_pages_in_chromium(console, browser, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    base = console.url("/_esb/console/")
    # Data a user put in with the real clients.
    boto(console, "s3").put_object(Bucket=BUCKET, Key="uploads/report.txt", Body=b"hello console")
    boto(console, "s3").put_object(Bucket=BUCKET, Key=HOSTILE_KEY, Body=b"x")
    boto(console, "dynamodb").put_item(TableName=TABLE, Item={
        "pk": {"S": "console-item-1"}, "note": {"S": "<b>not bold</b>"}})
    _, payload = console.invoke("hello", {})
    assert payload["statusCode"] == 200
    failed, _ = console.invoke("fail", {})
    assert failed.get("FunctionError") == "Unhandled"

    # First load: the login form; a wrong password is refused.
    d.get(base)
    timing = d.execute_script(
        "const t = performance.timing; return [t.navigationStart, t.loadEventEnd];")
    wait_until(lambda: d.execute_script("return performance.timing.loadEventEnd") > 0,
               what="load event")
    start, _ = timing
    end = d.execute_script("return performance.timing.loadEventEnd")
    print(f"\nconsole first page load: {end - start} ms (navigationStart -> loadEventEnd)")
    assert d.find_element(By.ID, "login-form").is_displayed()
    shot(d, tmp_path, "login")
    d.find_element(By.ID, "username").send_keys(USER)
    d.find_element(By.ID, "password").send_keys("wrong password")
    d.find_element(By.ID, "login-button").click()
    wait_text(d, "#login-error", "Wrong user or password")
    assert not d.find_element(By.ID, "tabs").is_displayed()
    assert d.execute_script("return sessionStorage.getItem('esb-console-token')") is None

    d.find_element(By.ID, "password").clear()
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    d.find_element(By.ID, "login-button").click()

    # Functions: the example function, its runtime and route.
    wait_text(d, "#functions-table tbody", "hello")
    rows = d.find_elements(By.CSS_SELECTOR, "#functions-table tbody tr")
    hello = next(r for r in rows if r.find_elements(By.TAG_NAME, "td")[0].text == "hello")
    cells = [c.text for c in hello.find_elements(By.TAG_NAME, "td")]
    assert cells[1].startswith("python"), cells
    assert "GET /hello" in cells[2], cells
    shot(d, tmp_path, "functions")

    # Invocations: the call made above, with duration and status.
    click_tab(d, "invocations")
    wait_text(d, "#invocations-table tbody", "hello")
    rows = [[c.text for c in r.find_elements(By.TAG_NAME, "td")]
            for r in d.find_elements(By.CSS_SELECTOR, "#invocations-table tbody tr")]
    by_function = {r[1]: r for r in rows}
    assert by_function["hello"][4] == "ok", rows
    assert float(by_function["hello"][3]) >= 0, rows
    assert by_function["fail"][4] == "error", rows
    shot(d, tmp_path, "invocations")

    # Logs: the function's line; search narrows; a new invocation's line
    # appears by the 2 s refresh, without reloading.
    click_tab(d, "logs")
    wait_text(d, "#logs-lines", "hello called")
    marker = f"marker-{time.time_ns()}"
    d.find_element(By.ID, "logs-search").send_keys(marker)
    wait_until(lambda: "hello called" not in text_of(d, "#logs-lines"), what="search filters")
    console.invoke("hello", {"marker": marker})
    d.find_element(By.ID, "logs-search").clear()
    d.find_element(By.ID, "logs-search").send_keys("hello called")
    lines_before = text_of(d, "#logs-lines").count("hello called")
    console.invoke("hello", {})
    wait_until(lambda: text_of(d, "#logs-lines").count("hello called") > lines_before,
               timeout=20, what="live refresh shows the new line")
    shot(d, tmp_path, "logs")

    # Metrics: the Invocations chart counts the calls.
    click_tab(d, "metrics")
    wait_text(d, "#metrics-charts", "Invocations")
    # Charts are redrawn every 2 s: read them in one script call.
    invocations = """
        for (const c of document.querySelectorAll('#metrics-charts .chart'))
            if (c.querySelector('h4').textContent === 'Invocations')
                return Number(c.querySelector('.value').textContent);
        return 0;"""
    wait_until(lambda: d.execute_script(invocations) >= 3, what="invocations counted")
    assert d.find_elements(By.CSS_SELECTOR, "#metrics-charts svg polyline")
    shot(d, tmp_path, "metrics")

    # S3: the bucket, the uploaded object under its prefix, the hostile key as text.
    click_tab(d, "s3")
    wait_text(d, "#s3-buckets", BUCKET)
    wait_text(d, "#s3-objects tbody", "uploads/")
    assert "reports/" in text_of(d, "#s3-objects tbody")
    d.find_element(By.ID, "s3-prefix").send_keys("uploads/")
    d.find_element(By.ID, "s3-refresh").click()
    wait_text(d, "#s3-objects tbody", "uploads/report.txt")
    assert "13" in text_of(d, "#s3-objects tbody")
    shot(d, tmp_path, "s3")
    d.find_element(By.ID, "s3-prefix").clear()
    d.find_element(By.ID, "s3-prefix").send_keys("reports/")
    d.find_element(By.ID, "s3-refresh").click()
    wait_text(d, "#s3-objects tbody", HOSTILE_KEY)
    assert not d.find_elements(By.CSS_SELECTOR, "#s3-objects img"), "key rendered as markup"
    # Upload through the page, then delete through the page.
    upload = tmp_path / "from-browser.txt"
    upload.write_bytes(b"uploaded in chromium")
    d.find_element(By.ID, "s3-file").send_keys(str(upload))
    d.find_element(By.ID, "s3-upload").click()
    wait_text(d, "#s3-objects tbody", "reports/from-browser.txt")
    got = boto(console, "s3").get_object(Bucket=BUCKET, Key="reports/from-browser.txt")
    assert got["Body"].read() == b"uploaded in chromium"
    row = next(r for r in d.find_elements(By.CSS_SELECTOR, "#s3-objects tbody tr")
               if r.find_elements(By.TAG_NAME, "td")[0].text == "reports/from-browser.txt")
    row.find_element(By.XPATH, ".//button[text()='Delete']").click()
    wait_until(lambda: "from-browser.txt" not in text_of(d, "#s3-objects tbody"), what="deleted")
    listed = boto(console, "s3").list_objects_v2(Bucket=BUCKET, Prefix="reports/")
    assert [o["Key"] for o in listed.get("Contents", [])] == [HOSTILE_KEY]

    # DynamoDB: the table, the item put with boto3 (markup shown as text),
    # an item put through the page, then deleted through the page.
    click_tab(d, "dynamodb")
    wait_text(d, "#ddb-tables", TABLE)
    wait_text(d, "#ddb-items tbody", "console-item-1")
    assert "<b>not bold</b>" in text_of(d, "#ddb-items tbody")
    assert not d.find_elements(By.CSS_SELECTOR, "#ddb-items b")
    d.find_element(By.ID, "ddb-item").send_keys('{"pk": {"S": "from-browser"}, "n": {"N": "7"}}')
    d.find_element(By.ID, "ddb-put").click()
    wait_text(d, "#ddb-items tbody", "from-browser")
    item = boto(console, "dynamodb").get_item(TableName=TABLE, Key={"pk": {"S": "from-browser"}})
    assert item["Item"]["n"] == {"N": "7"}
    shot(d, tmp_path, "dynamodb")
    row = next(r for r in d.find_elements(By.CSS_SELECTOR, "#ddb-items tbody tr")
               if "from-browser" in r.text)
    row.find_element(By.XPATH, ".//button[text()='Delete']").click()
    wait_until(lambda: "from-browser" not in text_of(d, "#ddb-items tbody"), what="item deleted")
    assert "Item" not in boto(console, "dynamodb").get_item(
        TableName=TABLE, Key={"pk": {"S": "from-browser"}})

    # Users: the pool's user.
    click_tab(d, "users")
    wait_text(d, "#users-table tbody", USER)
    shot(d, tmp_path, "users")

    # The token lives in sessionStorage only; logging out forgets it.
    assert d.execute_script("return sessionStorage.getItem('esb-console-token')")
    assert not d.get_cookies()
    d.find_element(By.ID, "logout").click()
    assert d.find_element(By.ID, "login-form").is_displayed()
    assert d.execute_script("return sessionStorage.getItem('esb-console-token')") is None


def test_console_assets_carry_a_strict_policy(console):
    r = requests.get(console.url("/_esb/console/"), timeout=10)
    assert r.status_code == 200 and "ESB console" in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert requests.get(console.url("/_esb/console/app.js"), timeout=10).headers[
        "content-type"].startswith("text/javascript")


def test_token_of_a_removed_user_is_refused(console):
    added = run_esb("user", "add", "--data-dir", str(console.data_dir), "temp-op",
                    input=(PASSWORD + "\n").encode())
    assert added.returncode == 0, added.stderr
    r = console.post("/_esb/console/api/login", json={"username": "temp-op", "password": PASSWORD})
    assert r.status_code == 200, r.text
    auth = {"Authorization": f"Bearer {r.json()['token']}"}
    assert console.get("/_esb/console/api/functions", headers=auth).status_code == 200
    removed = run_esb("user", "remove", "--data-dir", str(console.data_dir), "temp-op")
    assert removed.returncode == 0, removed.stderr
    assert console.get("/_esb/console/api/functions", headers=auth).status_code == 401
