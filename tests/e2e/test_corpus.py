"""The template corpus (tests/corpus): real-world template shapes.

Part (a), for every corpus app: `esb validate --json` is run on its template
and checked twice:

* against the app's hand-written `corpus.json` (what a user of that app
  expects: the validate verdict, its functions, routes with their functions,
  authorizers and stages, environment values, the located diagnostics); this
  is what makes the test fail when the loader is wrong, whatever the golden
  says;
* against the golden `expected.json` (the whole output, absolute paths
  rewritten relative to the app directory), so that any change of the output
  shows up in review. `BLESS=1` rewrites the goldens, but only for apps whose
  `corpus.json` expectations hold: wrong output is never blessed.

An app the current loader still gets wrong carries `"xfail_validate"` (and/or
`"xfail_up"`) with the reason in its `corpus.json`; its tests are
xfail(strict=True), so they start failing (XPASS) the day it is fixed.

Part (b): for a representative set of apps (at least one per shape), `esb up`
is started on a fresh copy of the app and the routes are called with real
clients (requests, curl, boto3 `lambda.invoke`), asserting what a user of the
app would check: status, body, which function answered.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from esb_helpers import ESB_BIN, REPO, curl, run_esb, start_esb

CORPUS = REPO / "tests" / "corpus"
BLESS = os.environ.get("BLESS") == "1"


# ---------------------------------------------------------------- the corpus


def corpus_apps() -> list[str]:
    return sorted(
        p.parent.name for p in CORPUS.glob("*/corpus.json") if not p.parent.name.startswith("_")
    )


def spec_of(name: str) -> dict:
    return json.loads((CORPUS / name / "corpus.json").read_text())


def xfail_marks(name: str, key: str) -> list:
    reason = spec_of(name).get(key)
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


def test_corpus_is_complete():
    """At least 30 apps; each has a template, SOURCE.md and a golden unless
    it is a known failure; every shape the issue lists is present."""
    apps = corpus_apps()
    assert len(apps) >= 30, apps
    shapes = {spec_of(a)["shape"] for a in apps}
    assert shapes >= {"openapi", "cloudformation", "nested", "cdk", "serverless", "sam"}, shapes
    for app in apps:
        spec = spec_of(app)
        assert (CORPUS / app / spec["template"]).is_file(), app
        assert (CORPUS / app / "SOURCE.md").is_file(), app
        if not spec.get("xfail_validate"):
            assert (CORPUS / app / "expected.json").is_file(), f"{app}: no golden (BLESS=1)"


# ---------------------------------------------------------------- validate


def run_validate(app: str) -> tuple[int, dict, str]:
    """`esb validate --json -t <template>` run from the app directory."""
    spec = spec_of(app)
    app_dir = CORPUS / app
    proc = subprocess.run(
        [ESB_BIN, "validate", "--json", "-t", spec["template"]],
        cwd=app_dir, capture_output=True, timeout=60, text=True,
    )
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"validate printed no JSON (rc {proc.returncode})\nstdout: {proc.stdout[:2000]}\n"
                    f"stderr: {proc.stderr[:2000]}")
    return proc.returncode, out, proc.stderr


def normalise(value, app_dir: Path):
    """Absolute paths -> relative to the app (`<APP>`), the repo (`<REPO>`) or
    the home directory (`<HOME>`), so goldens do not depend on the checkout."""
    roots = []
    for root, token in ((app_dir, "<APP>"), (REPO, "<REPO>"), (Path.home(), "<HOME>")):
        for variant in {str(root), str(root.resolve())}:
            roots.append((variant, token))
    roots.sort(key=lambda r: -len(r[0]))

    def fix(v):
        if isinstance(v, str):
            for prefix, token in roots:
                if v == prefix or v.startswith(prefix + "/"):
                    return token + v[len(prefix):]
                v = v.replace(prefix + "/", token + "/")
            return v
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    return fix(value)


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


class Model:
    """Tolerant view of `esb validate --json` output: the loader's JSON model
    is being extended (nested names, aliases, route targets), so functions
    are found by any of their identifiers and a route's function by any
    identifier its target carries."""

    def __init__(self, out: dict):
        self.app = out.get("app") or {}
        self.diagnostics = (out.get("warnings") or []) + (out.get("errors") or [])
        self.functions = self.app.get("functions") or []
        self.routes = self.app.get("routes") or []
        self.apis = self.app.get("apis") or []

    @staticmethod
    def ids(fn: dict) -> set[str]:
        ids = {fn.get("name"), fn.get("logical_id"), fn.get("function_name")}
        ids |= set(fn.get("aliases") or [])
        return {i for i in ids if i}

    def function(self, names) -> dict | None:
        names = [names] if isinstance(names, str) else names
        for fn in self.functions:
            if self.ids(fn) & set(names):
                return fn
        return None

    def route_function(self, route: dict) -> dict | None:
        for key in ("function", "function_name", "target"):
            for s in _strings(route.get(key)):
                fn = self.function(s)
                if fn is not None:
                    return fn
        return None

    @staticmethod
    def is_default(route: dict) -> bool:
        return route.get("path") in ("$default", "/$default") or route.get("method") == "$default"

    @staticmethod
    def is_url(route: dict) -> bool:
        return route.get("source") == "function_url" or "url" in str(route.get("api_kind", "")).lower()

    def matching(self, want: dict) -> list[dict]:
        found = []
        for r in self.routes:
            if want.get("function_url"):
                ok = self.is_url(r)
            elif want.get("default_route"):
                ok = self.is_default(r)
            else:
                ok = (not self.is_url(r)
                      and str(r.get("method", "")).upper() == want["method"]
                      and r.get("path") == want["path"])
            if ok:
                found.append(r)
        return found


def check_expectations(spec: dict, rc: int, out: dict) -> list[str]:
    """Everything `corpus.json` says a user expects; returns the problems."""
    m = Model(out)
    problems = []
    has_error = bool(out.get("errors")) or any(d.get("severity") == "error" for d in m.diagnostics)
    verdict = "errors" if has_error else ("warnings" if m.diagnostics else "ok")
    allowed = spec["validate"] if isinstance(spec["validate"], list) else [spec["validate"]]
    if verdict not in allowed:
        problems.append(f"validate verdict is {verdict}, expected {allowed}: "
                        + "; ".join(d.get("message", "") for d in m.diagnostics)[:1500])
    if (rc == 0) != (verdict == "ok"):
        problems.append(f"exit code {rc} does not match verdict {verdict}")
    for names in spec.get("functions", []):
        if m.function(names) is None:
            problems.append(f"no function {names!r} (have {[sorted(m.ids(f)) for f in m.functions]})")
    for want in spec.get("routes", []):
        routes = m.matching(want)
        label = ("function URL" if want.get("function_url") else "$default route" if want.get("default_route")
                 else f"{want['method']} {want['path']}")
        if not routes:
            problems.append(f"no route {label} (have {[(r.get('method'), r.get('path')) for r in m.routes]})")
            continue
        route = routes[0]
        if want.get("function") is not None:
            fn, expected = m.route_function(route), m.function(want["function"])
            if fn is None or expected is None or fn is not expected:
                problems.append(f"{label} is served by {fn and sorted(m.ids(fn))}, expected {want['function']}")
        if "authorizer" in want:
            got = (route.get("auth") or {}).get("authorizer") or None
            got = None if got in ("NONE", "") else got
            exp = want["authorizer"]
            if (exp is None and got is not None) or (exp == "*" and got is None) or (
                    exp not in (None, "*") and got != exp):
                problems.append(f"{label}: authorizer {got!r}, expected {exp!r}")
        if "scopes" in want and (route.get("auth") or {}).get("authorization_scopes") != want["scopes"]:
            problems.append(f"{label}: scopes {(route.get('auth') or {}).get('authorization_scopes')}, "
                            f"expected {want['scopes']}")
        if want.get("api_key_required") and not (route.get("auth") or {}).get("api_key_required"):
            problems.append(f"{label}: api key not required")
        if "payload" in want and route.get("payload_format_version") != want["payload"]:
            problems.append(f"{label}: payload {route.get('payload_format_version')!r}, expected {want['payload']}")
        if "stage" in want and route.get("stage") != want["stage"]:
            problems.append(f"{label}: stage {route.get('stage')!r}, expected {want['stage']!r}")
    for want in spec.get("absent_routes", []):
        if m.matching(want):
            problems.append(f"route {want['method']} {want['path']} exists but must not")
    for want in spec.get("apis", []):
        text = json.dumps(m.apis)
        if "cors_origin" in want and want["cors_origin"] not in text:
            problems.append(f"no API has CORS origin {want['cors_origin']}")
        if "binary_media_type" in want and want["binary_media_type"] not in text:
            problems.append(f"no API has binary media type {want['binary_media_type']}")
        if "stage_variable" in want:
            k, v = want["stage_variable"]
            if not any((a.get("stage_variables") or {}).get(k) == v for a in m.apis):
                problems.append(f"no API has stage variable {k}={v}")
    for name, env in spec.get("environment", {}).items():
        fn = m.function(name)
        for k, v in env.items():
            got = fn and (fn.get("environment") or {}).get(k)
            if got != v:
                problems.append(f"{name}: {k}={got!r}, expected {v!r}")
    for name, count in spec.get("layers", {}).items():
        fn = m.function(name)
        if fn is None or len(fn.get("layers") or []) != count:
            problems.append(f"{name}: layers {fn and fn.get('layers')}, expected {count}")
    for needle in spec.get("diagnostics", []):
        if not any(needle.lower() in json.dumps(d).lower() for d in m.diagnostics):
            problems.append(f"no diagnostic mentions {needle!r}")
    for d in m.diagnostics:
        if not d.get("file") or not d.get("line"):
            problems.append(f"diagnostic without a location: {d}")
    if spec.get("code_in_cdk_out"):
        for fn in m.functions:
            code = json.dumps(fn.get("code"))
            if "cdk.out/asset." not in code:
                problems.append(f"{fn.get('logical_id')}: code {code} is not the cdk.out asset")
    return problems


@pytest.mark.parametrize(
    "app", [pytest.param(a, marks=xfail_marks(a, "xfail_validate")) for a in corpus_apps()]
)
def test_validate(app):
    spec = spec_of(app)
    rc, out, stderr = run_validate(app)
    problems = check_expectations(spec, rc, out)
    assert not problems, f"{app}: esb validate output is wrong:\n  " + "\n  ".join(problems)
    golden_path = CORPUS / app / "expected.json"
    got = normalise(out, CORPUS / app)
    if BLESS:
        golden_path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        return
    if not golden_path.is_file() and spec.get("xfail_validate"):
        return  # known-wrong apps have no golden: passing the expectations is an XPASS
    assert golden_path.is_file(), f"{app}: no expected.json; run with BLESS=1"
    golden = json.loads(golden_path.read_text())
    assert got == golden, (
        f"{app}: esb validate --json differs from expected.json (BLESS=1 to accept)\n"
        + "\n".join(_diff(golden, got))
    )


def _diff(want, got, path="") -> list[str]:
    if type(want) is not type(got):
        return [f"{path or '/'}: {json.dumps(want)[:200]} -> {json.dumps(got)[:200]}"]
    if isinstance(want, dict):
        out = []
        for k in sorted(set(want) | set(got)):
            if k not in got:
                out.append(f"{path}/{k}: removed")
            elif k not in want:
                out.append(f"{path}/{k}: added {json.dumps(got[k])[:200]}")
            else:
                out += _diff(want[k], got[k], f"{path}/{k}")
        return out[:40]
    if isinstance(want, list) and len(want) == len(got):
        return [d for i, (a, b) in enumerate(zip(want, got)) for d in _diff(a, b, f"{path}[{i}]")][:40]
    return [] if want == got else [f"{path or '/'}: {json.dumps(want)[:200]} -> {json.dumps(got)[:200]}"]


def test_check_expectations_can_fail():
    """The expectation checker itself rejects a model with a wrong route target."""
    spec = {"validate": "ok", "functions": ["A", "B"],
            "routes": [{"method": "GET", "path": "/a", "function": "A"}]}
    out = {"app": {"functions": [{"name": "A", "logical_id": "A"}, {"name": "B", "logical_id": "B"}],
                   "routes": [{"method": "GET", "path": "/a", "function": "B"}]}, "warnings": []}
    assert check_expectations(spec, 0, out) == ["GET /a is served by ['B'], expected A"]
    out["app"]["routes"][0]["function"] = "A"
    assert check_expectations(spec, 0, out) == []
    assert check_expectations(spec, 1, out) == ["exit code 1 does not match verdict ok"]


# ---------------------------------------------------------------- esb up


@pytest.fixture
def corpus_up(tmp_path_factory):
    """Factory: `corpus_up(app, *args)` copies tests/corpus/<app> to a fresh
    directory and starts `esb up` (plain HTTP) on its template. Teardown:
    SIGTERM, exit 0, nothing left behind."""
    servers = []

    def start(app: str, *args, env=None):
        workdir = tmp_path_factory.mktemp("corpus")
        dest = workdir / f"app-{app}"
        shutil.copytree(CORPUS / app, dest, ignore=shutil.ignore_patterns("__pycache__", ".esb", "*.pyc"))
        server = start_esb(dest / spec_of(app)["template"], workdir, *args, env=env, http=True)
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


def body(r) -> dict:
    assert r.status_code == 200, f"{r.request.method} {r.url}: {r.status_code} {r.text[:500]}"
    return r.json()


def up_case(app: str):
    return pytest.mark.parametrize("app", [pytest.param(app, marks=xfail_marks(app, "xfail_up"))])


@up_case("openapi-rest-inline")
def test_up_openapi_rest_inline(corpus_up, app):
    s = corpus_up(app)
    got = body(s.get("/pets"))
    assert got["label"] == "list" and got["route"] == "/pets" and got["version"] == "1.0"
    got = body(s.get("/v1/pets/7"))
    assert got["label"] == "get" and got["pathParameters"] == {"petId": "7"}
    got = body(s.post("/pets", json={"name": "rex"}))
    assert got["label"] == "create" and got["method"] == "POST"
    assert s.request("DELETE", "/pets").status_code in (403, 404)


@up_case("openapi-http-inline")
def test_up_openapi_http_inline(corpus_up, app):
    s = corpus_up(app)
    got = body(s.get("/todos"))
    assert got["label"] == "todos" and got["version"] == "2.0" and got["route"] == "GET /todos"
    got = body(s.get("/legacy/5"))
    assert got["label"] == "todos" and got["version"] == "1.0" and got["pathParameters"] == {"id": "5"}
    got = body(s.get("/anything/else"))
    assert got["label"] == "fallback" and got["route"] == "$default"
    pre = curl(s, "/todos", "-X", "OPTIONS", "-H", "Origin: https://app.example.com",
               "-H", "Access-Control-Request-Method: POST")
    assert pre.status in (200, 204)
    assert pre.header("access-control-allow-origin") == "https://app.example.com"


@up_case("openapi-unsupported-integrations")
def test_up_openapi_unsupported_integrations(corpus_up, app):
    s = corpus_up(app)
    assert body(s.get("/items"))["label"] == "items"
    r = s.get("/upstream/a/b")
    assert r.status_code == 500 and "HTTP_PROXY" in r.json()["message"].upper(), r.text
    r = s.post("/queue", json={})
    assert r.status_code == 500 and "AWS" in r.json()["message"].upper(), r.text
    r = s.get("/gone")
    assert r.status_code == 500 and r.json() == {"message": "Internal server error"}, r.text
    assert "deleted-function" in s.output()


@up_case("cfn-rest-tree")
def test_up_cfn_rest_tree(corpus_up, app):
    s = corpus_up(app)
    got = body(s.get("/staging/products/42"))
    assert got["label"] == "catalog" and got["route"] == "/products/{productId}"
    assert got["stageVariables"] == {"table": "products-staging"}
    assert body(s.get("/"))["label"] == "catalog"
    r = curl(s, "/products/42/reviews", "-X", "POST", "-d", "{}")
    assert r.status == 200 and r.json()["label"] == "reviews"


@up_case("cfn-http-routes")
def test_up_cfn_http_routes(corpus_up, app):
    s = corpus_up(app)
    got = body(s.get("/items"))
    assert got["label"] == "items" and got["version"] == "2.0"
    got = body(s.request("DELETE", "/items/9"))
    assert got["label"] == "items" and got["pathParameters"] == {"id": "9"}
    got = body(s.get("/legacy/a/b"))
    assert got["label"] == "legacy" and got["version"] == "1.0"
    assert body(s.get("/somewhere"))["label"] == "legacy"


@up_case("cfn-lambda-inline-url")
def test_up_cfn_lambda_inline_url(corpus_up, app):
    s = corpus_up(app)
    r = curl(s, "/lambda-url/clock/some/path?x=1")
    assert r.status == 200, r.body
    got = r.json()
    assert got["inline"] is True and got["zone"] == "UTC"
    assert got["path"] == "/some/path" and got["routeKey"] == "$default"
    resp, payload = s.invoke("clock", {"rawPath": "/direct"})
    assert json.loads(payload["body"])["path"] == "/direct"


@up_case("nested-sam-app")
def test_up_nested_sam_app(corpus_up, app):
    s = corpus_up(app)
    assert body(s.get("/orders"))["label"] == "orders-dev"
    assert body(s.get("/status"))["label"] == "front", "the parent's GET /status must win over the child's"
    assert body(s.post("/payments/charge", json={"cents": 100}))["label"] == "charge"
    assert "shadowed" in s.output()


def invoke_case(app: str):
    return pytest.mark.parametrize("app", [pytest.param(app, marks=xfail_marks(app, "xfail_invoke"))])


@invoke_case("nested-sam-app")
def test_invoke_api_nested_sam_app(corpus_up, app):
    """boto3 lambda.invoke with a grandchild's stack path and its FunctionName."""
    s = corpus_up(app)
    for name in ("Orders/Payments/ChargeFunction", "shop-dev-charge"):
        resp, payload = s.invoke(name, {"input": name})
        assert resp["StatusCode"] == 200 and "FunctionError" not in resp, (name, payload)
        got = json.loads(payload["body"])
        assert got["label"] == "charge" and got["input"] == name
    resp, payload = s.invoke("Orders/OrdersFunction", {})
    assert json.loads(payload["body"])["label"] == "orders-dev"


@up_case("nested-cfn-stack")
def test_up_nested_cfn_stack(corpus_up, app):
    s = corpus_up(app)
    got = body(s.get("/jobs"))
    assert got["label"] == "jobs" and got["version"] == "2.0"


@invoke_case("nested-cfn-stack")
def test_invoke_api_nested_cfn_stack(corpus_up, app):
    s = corpus_up(app)
    resp, payload = s.invoke("ApiStack/Workers/Worker", {"input": 1})
    assert resp["StatusCode"] == 200 and "FunctionError" not in resp, payload
    assert json.loads(payload["body"])["label"] == "worker-qa"
    resp, payload = s.invoke("jobs-qa", {})
    assert json.loads(payload["body"])["label"] == "jobs"


@up_case("cdk-rest-api")
def test_up_cdk_rest_api(corpus_up, app):
    s = corpus_up(app)
    got = body(s.get("/v1/books/12"))
    assert got["label"] == "books" and got["pathParameters"] == {"bookId": "12"}
    assert got["stageVariables"] == {"shelf": "fiction"}
    got = body(s.get("/prod/any/deep/path"))
    assert got["label"] == "proxy" and got["pathParameters"] == {"proxy": "any/deep/path"}


@pytest.mark.xfail(strict=True, reason=(
    "shared listener: OPTIONS /v1/books is matched by ProxyApi's ANY /{proxy+} (REST routes are also "
    "served without their stage prefix) before BooksApi (stage v1) answers its CORS preflight; on AWS "
    "each API has its own host. Gateway routing, not the template loader."))
def test_up_cdk_rest_api_cors_preflight(corpus_up):
    """defaultCorsPreflightOptions: CDK writes OPTIONS methods with MOCK
    integrations; a browser's preflight must get the CORS headers."""
    s = corpus_up("cdk-rest-api")
    pre = curl(s, "/v1/books", "-X", "OPTIONS", "-H", "Origin: https://books.example.com",
               "-H", "Access-Control-Request-Method: POST")
    assert pre.status in (200, 204), pre.body
    assert pre.header("access-control-allow-origin") == "https://books.example.com"


@up_case("cdk-http-api")
def test_up_cdk_http_api(corpus_up, app):
    s = corpus_up(app)
    got = body(s.get("/items/3"))
    assert got["label"] == "items" and got["version"] == "2.0" and got["pathParameters"] == {"id": "3"}
    assert body(s.request("DELETE", "/items/3"))["method"] == "DELETE"
    assert body(s.get("/items"))["route"] == "GET /items"


def test_up_cdk_http_api_layer_and_url(corpus_up):
    """The CDK LayerVersion asset is on the function's path, through the HTTP
    API route and through the function's URL."""
    s = corpus_up("cdk-http-api")
    assert body(s.get("/greeting"))["greeting"] == "hello from the cdk layer"
    fn = Model(run_validate("cdk-http-api")[1]).function("LayeredFunction7B11A541")
    assert fn is not None
    assert body(s.get(f"/lambda-url/{fn['name']}/"))["greeting"] == "hello from the cdk layer"


@up_case("sls-rest-api")
def test_up_sls_rest_api(corpus_up, app):
    s = corpus_up(app)
    got = body(s.get("/dev/users/3"))
    assert got["label"] == "sls-rest" and got["pathParameters"] == {"id": "3"}
    assert got["function"] == "corpus-rest-dev-getUser"
    assert body(s.post("/users", json={}))["function"] == "corpus-rest-dev-createUser"


@up_case("sls-http-api")
def test_up_sls_http_api(corpus_up, app):
    s = corpus_up(app)
    assert body(s.get("/hello"))["label"] == "hello"
    assert s.get("/secure").status_code == 401
    assert s.get("/secure", headers={"Authorization": "nope"}).status_code == 403
    got = body(s.get("/secure", headers={"Authorization": "allow"}))
    assert got["label"] == "hello" and got["authorizer"]["lambda"] == {"tier": "gold"}
    assert body(s.get("/not/declared"))["label"] == "catchall"


@up_case("sam-rest-lambda-authorizers")
def test_up_sam_rest_lambda_authorizers(corpus_up, app):
    s = corpus_up(app)
    assert s.get("/secret").status_code == 401
    assert s.get("/secret", headers={"Authorization": "Bearer deny"}).status_code == 403
    got = body(s.get("/secret", headers={"Authorization": "Bearer allow"}))
    assert got["authorizer"]["tier"] == "gold"
    assert s.get("/report").status_code == 401
    assert body(s.get("/report?token=allow"))["label"] == "app"
    assert body(s.get("/open"))["label"] == "app"


@up_case("sam-layers")
def test_up_sam_layers(corpus_up, app):
    s = corpus_up(app)
    got = body(s.get("/shout"))
    assert got == {"layer": "layer-1.2.0", "message": "HELLO!", "function": "ShoutFunction"}


@up_case("sam-zip-codeuri")
def test_up_sam_zip_codeuri(corpus_up, app):
    s = corpus_up(app)
    assert body(s.get("/zipped"))["label"] == "zipped"


@up_case("sam-image-missing")
def test_up_sam_image_missing(corpus_up, app):
    """Lenient up: the zip function is served, the image one answers an error
    naming the cause, and the start-up output says which resource it is."""
    s = corpus_up(app)
    assert body(s.get("/working"))["label"] == "working"
    r = s.get("/image")
    assert r.status_code >= 500 and "ImageFunction" in s.output(), r.text


@up_case("sam-duplicate-function-name")
def test_up_sam_duplicate_function_name(corpus_up, app):
    """Lenient up: a warning, and each function keeps its own route."""
    s = corpus_up(app)
    assert body(s.get("/first"))["label"] == "first"
    assert body(s.get("/second"))["label"] == "second"
    assert "shared-name" in s.output()


@up_case("openapi-rest-include")
def test_up_openapi_rest_include(corpus_up, app):
    s = corpus_up(app)
    got = body(s.get("/prod/orders/o-1"))
    assert got["label"] == "orders" and got["pathParameters"] == {"orderId": "o-1"}
    assert body(s.get("/health"))["label"] == "health"


@up_case("openapi-security")
def test_up_openapi_security(corpus_up, app):
    s = corpus_up(app)
    assert body(s.get("/public"))["label"] == "protected"
    assert s.get("/private").status_code == 401
    assert s.get("/private", headers={"Authorization": "deny"}).status_code == 403
    got = body(s.get("/private", headers={"Authorization": "allow"}))
    assert got["authorizer"]["tier"] == "gold"
    assert s.get("/partner").status_code == 403
    key = s.credentials()["api_key"]
    assert body(s.get("/partner", headers={"x-api-key": key}))["label"] == "protected"


@up_case("cfn-rest-authorizers")
def test_up_cfn_rest_authorizers(corpus_up, app):
    s = corpus_up(app)
    assert s.get("/prod/account").status_code == 401
    assert body(s.get("/prod/account", headers={"Authorization": "allow"}))["authorizer"]["tier"] == "gold"
    assert s.get("/report", headers={"X-Token": "deny"}).status_code == 403
    assert body(s.get("/report", headers={"X-Token": "allow"}))["label"] == "app"
    assert s.get("/keyed").status_code == 403
    assert body(s.get("/keyed", headers={"x-api-key": s.credentials()["api_key"]}))["label"] == "app"


@up_case("cfn-http-quickcreate")
def test_up_cfn_http_quickcreate(corpus_up, app):
    s = corpus_up(app)
    got = body(s.get("/hello"))
    assert got["label"] == "hello" and got["version"] == "2.0"
    assert body(s.post("/anything", json={}))["label"] == "catchall"


@up_case("sam-inline-code")
def test_up_sam_inline_code(corpus_up, app):
    s = corpus_up(app)
    r = curl(s, "/ping")
    assert r.status == 200 and r.json() == {"pong": True, "path": "/ping"}


@up_case("sam-merge-definitions")
def test_up_sam_merge_definitions(corpus_up, app):
    """MergeDefinitions adds the event route; without it the body is used as
    is and the event route does not exist (AWS, not SAM CLI)."""
    s = corpus_up(app)
    assert body(s.get("/documented"))["label"] == "doc"
    assert body(s.post("/from-event", json={}))["label"] == "event"
    assert body(s.get("/plain/documented"))["label"] == "doc"
    assert s.post("/plain/from-event", json={}).status_code in (403, 404)


@pytest.mark.parametrize("name", [
    "Orders/Payments/ChargeFunction",
    "shop-dev-charge",
])
def test_esb_invoke_nested_names(tmp_path, name):
    """`esb invoke` (no server) finds a grandchild function by its stack path
    and by its FunctionName."""
    app = "nested-sam-app"
    dest = tmp_path / app
    shutil.copytree(CORPUS / app, dest, ignore=shutil.ignore_patterns("__pycache__", ".esb", "*.pyc"))
    proc = run_esb("invoke", name, "-t", str(dest / "template.yaml"), "--data-dir", str(tmp_path / "data"),
                   "-e", "-", input=json.dumps({"input": name}).encode(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    got = json.loads(json.loads(proc.stdout)["body"])
    assert got["label"] == "charge" and got["input"] == name


@up_case("cdk-nested-stack")
def test_up_cdk_nested_stack(corpus_up, app):
    """A CDK NestedStack: its template is found through aws:asset:path and
    its REST API is served beside the parent's."""
    s = corpus_up(app)
    assert body(s.get("/prod/front"))["label"] == "front"
    assert body(s.get("/prod/orders"))["label"] == "orders"


@up_case("openapi-http-authorizers")
def test_up_openapi_http_authorizers(corpus_up, app):
    """Authorizers declared only as OpenAPI security schemes of an HTTP API."""
    s = corpus_up(app)
    assert s.get("/lambda").status_code == 401
    assert s.get("/lambda", headers={"Authorization": "nope"}).status_code == 403
    got = body(s.get("/lambda", headers={"Authorization": "allow"}))
    assert got["label"] == "app" and got["authorizer"]["lambda"] == {"tier": "gold"}
    r = s.get("/jwt")
    assert r.status_code == 401, r.text
    r = s.get("/jwt", headers={"Authorization": "Bearer not.a.jwt"})
    assert r.status_code == 401, r.text


@up_case("cfn-http-jwt-cors")
def test_up_cfn_http_jwt_cors(corpus_up, app):
    """Raw HTTP API with a named stage: stage prefix, stage variables, JWT
    authorizer, CorsConfiguration preflight."""
    s = corpus_up(app)
    got = body(s.get("/v1/public"))
    assert got["label"] == "profiles" and got["stageVariables"] == {"tier": "free"}
    assert s.get("/v1/me").status_code == 401
    pre = curl(s, "/v1/me", "-X", "OPTIONS", "-H", "Origin: https://profiles.example.com",
               "-H", "Access-Control-Request-Method: PUT")
    assert pre.status in (200, 204), pre.body
    assert pre.header("access-control-allow-origin") == "https://profiles.example.com"


@up_case("sam-function-url")
def test_up_sam_function_url(corpus_up, app):
    """A function reachable only through its URL (payload 2.0, $default)."""
    s = corpus_up(app)
    got = body(s.post("/lambda-url/webhook/hooks/github", json={"zen": "ok"}))
    assert got["label"] == "webhook" and got["version"] == "2.0" and got["method"] == "POST"
    # rawPath without the prefix and routeKey "$default": test_up_cfn_lambda_inline_url.
