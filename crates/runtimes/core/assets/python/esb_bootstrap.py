"""ESB built-in Python runtime client (standard library only).

Speaks the Lambda Runtime API at $AWS_LAMBDA_RUNTIME_API: loads the handler
named by argv[1] (or $_HANDLER) from $LAMBDA_TASK_ROOT, then loops over
GET /next -> handler(event, context) -> POST /response | /error, on one
keep-alive HTTP/1.1 connection (a small socket client, not http.client).
Written by ESB; do not edit the cached copy.

Every module imported here stays in every warm worker's memory, so the
bootstrap imports only what each invocation needs: `_socket` rather than
`socket` (about 1 MB less), `traceback` only when an error is reported, and
`logging` only when the function imports it (Lambda's log format is then
configured before the function's own code runs; see `_LoggingHook`).
"""

import _socket
import importlib
import importlib.machinery
import json
import os
import sys
import time

API_PREFIX = "/2018-06-01/runtime"
NEXT_PATH = API_PREFIX + "/invocation/next"
JSON_HEADERS = {"Content-Type": "application/json"}


class _Response:
    __slots__ = ("status", "headers")

    def __init__(self, status, headers):
        self.status = status
        self.headers = headers


class _Headers(dict):
    """Header map with case-insensitive get (names stored lower-case)."""

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)


class RuntimeClient:
    """A minimal HTTP/1.1 client over one kept-alive socket.

    http.client costs ~6 MB of imports and most of the per-invocation CPU of
    a trivial function; the Runtime API server is ESB's own, so a small
    client that handles Content-Length and chunked bodies is enough.
    """

    def __init__(self, address):
        host, _, port = address.rpartition(":")
        self.addr = (host.strip("[]") or "127.0.0.1", int(port))
        self.host_header = "Host: %s\r\n" % address
        self.sock = None
        self.buf = b""
        self._next_head = self._head("GET", NEXT_PATH)

    def _connect(self):
        host, port = self.addr
        error = OSError("no address for %s" % host)
        for family, kind, proto, _, addr in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
            sock = _socket.socket(family, kind, proto)
            try:
                sock.connect(addr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            self.sock = sock
            self.buf = b""
            return
        raise error

    def _close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.buf = b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("runtime API closed the connection")
        self.buf += chunk

    def _read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _read_line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            self._fill()

    def _exchange(self, head, body):
        self.sock.sendall(head + body if body else head)
        return self._read_response()

    def _read_response(self):
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            self._fill()
        raw, self.buf = self.buf[:i], self.buf[i + 4:]
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = _Headers()
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self._read_line().split(b";", 1)[0], 16)
                if size == 0:
                    while self._read_line():
                        pass
                    break
                parts.append(self._read_exact(size))
                self._read_line()
            data = b"".join(parts)
        else:
            data = self._read_exact(int(headers.get("content-length", "0") or 0))
        if headers.get("connection", "").lower() == "close":
            self._close()
        return _Response(status, headers), data

    def _request(self, method, path, body=None, headers=None, retry=False):
        """Sends one request and reads its answer.

        Only `retry=True` requests (the idempotent GET /next) are sent again,
        once, on a new connection after a socket error. A POST is never
        re-sent: the server may have acted on it before the connection broke
        (a response delivered twice, or a response posted for the next
        invocation), so the error propagates and the runtime exits.
        """
        request = self._head(method, path, body, headers)
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            if self.sock is None:
                self._connect()
            try:
                return self._exchange(request, body)
            except (OSError, ValueError, IndexError):
                self._close()
                if attempt + 1 == attempts:
                    raise
        raise RuntimeError("unreachable")

    def _head(self, method, path, body=None, headers=None):
        return "".join(
            [method, " ", path, " HTTP/1.1\r\n", self.host_header]
            + ["%s: %s\r\n" % kv for kv in (headers or {}).items()]
            + (["Content-Length: %d\r\n" % len(body)] if body is not None else [])
            + ["\r\n"]
        ).encode("latin-1")

    def next(self):
        resp, body = self._request("GET", NEXT_PATH, retry=True)
        return self._checked_next(resp, body)

    @staticmethod
    def _checked_next(resp, body):
        if resp.status != 200:
            raise RuntimeError("/next returned %d: %r" % (resp.status, body[:200]))
        return resp, body

    def _post_then_next(self, path, body, headers):
        """POSTs a result and asks for the next event in one write: one
        system call here and one wake-up of the server per invocation
        instead of two (the server answers pipelined requests in order).
        The POST is never sent twice: an error before its answer propagates
        and the runtime exits. The GET is idempotent: when its answer does
        not come (the connection broke or was closed after the POST), it is
        sent again once on a new connection."""
        if self.sock is None:
            self._connect()
        try:
            self.sock.sendall(self._head("POST", path, body, headers) + body + self._next_head)
            self._read_response()
        except (OSError, ValueError, IndexError):
            self._close()
            raise
        if self.sock is None:
            return self.next()
        try:
            resp, data = self._read_response()
        except (OSError, ValueError, IndexError):
            self._close()
            return self.next()
        return self._checked_next(resp, data)

    def respond_then_next(self, request_id, body):
        """Posts the response, then waits for the next event."""
        return self._post_then_next(
            API_PREFIX + "/invocation/" + request_id + "/response", body, JSON_HEADERS
        )

    def error_then_next(self, request_id, error):
        """Posts a function error, then waits for the next event."""
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Function-Error-Type": error.get("errorType", "Unhandled"),
        }
        body = json.dumps(error).encode()
        return self._post_then_next(
            API_PREFIX + "/invocation/" + request_id + "/error", body, headers
        )

    def post_init_error(self, error):
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Function-Error-Type": error.get("errorType", "Runtime.Unknown"),
        }
        self._request("POST", API_PREFIX + "/init/error", json.dumps(error).encode(), headers)


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, raw):
        self.cognito_identity_id = raw.get("cognitoIdentityId")
        self.cognito_identity_pool_id = raw.get("cognitoIdentityPoolId")


class Client:
    __slots__ = ("installation_id", "app_title", "app_version_name", "app_version_code", "app_package_name")

    def __init__(self, raw):
        self.installation_id = raw.get("installation_id")
        self.app_title = raw.get("app_title")
        self.app_version_name = raw.get("app_version_name")
        self.app_version_code = raw.get("app_version_code")
        self.app_package_name = raw.get("app_package_name")


class ClientContext:
    __slots__ = ("client", "custom", "env")

    def __init__(self, raw):
        client = raw.get("client")
        self.client = Client(client) if client else None
        self.custom = raw.get("custom")
        self.env = raw.get("env")


class LambdaContext:
    function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
    function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
    memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
    log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
    log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")

    def __init__(self, request_id, deadline_ms, arn, identity, client_context):
        self.aws_request_id = request_id
        self.invoked_function_arn = arn
        self._deadline_ms = deadline_ms
        self.identity = identity
        self.client_context = client_context

    def get_remaining_time_in_millis(self):
        return max(self._deadline_ms - int(time.time() * 1000), 0)

    def __repr__(self):
        return (
            "LambdaContext([aws_request_id=%s,log_group_name=%s,log_stream_name=%s,"
            "function_name=%s,memory_limit_in_mb=%s,function_version=%s,"
            "invoked_function_arn=%s])"
            % (
                self.aws_request_id,
                self.log_group_name,
                self.log_stream_name,
                self.function_name,
                self.memory_limit_in_mb,
                self.function_version,
                self.invoked_function_arn,
            )
        )


_current_request_id = ""


class _LoggingHook:
    """Configures `logging` the moment anything first imports it (a
    `sys.meta_path` finder that wraps the module's loader), so the
    function's module-level log calls already have Lambda's format, and a
    function that never logs does not pay for the module."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "logging":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:  # the function replaced sys.meta_path
            pass
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module):
            original_exec(module)
            if hasattr(module, "StreamHandler"):  # not a function's own logging.py
                _setup_logging(module)

        spec.loader.exec_module = exec_module
        return spec


def _install_logging_hook():
    if "logging" in sys.modules:
        _setup_logging(sys.modules["logging"])
    else:
        sys.meta_path.insert(0, _LoggingHook())


def _setup_logging(logging):
    # Same text format as the managed runtime: [LEVEL]\t<ts>\t<request id>\t<message>
    class _RequestIdFilter(logging.Filter):
        def filter(self, record):
            record.aws_request_id = _current_request_id
            return True

    handler = logging.StreamHandler(sys.stdout)
    formatter = logging.Formatter(
        "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
        "%Y-%m-%dT%H:%M:%S",
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL")
    if level:
        root.setLevel(level.upper())


def _stack(tb):
    import traceback

    return [line for line in traceback.format_list(traceback.extract_tb(tb))]


def _error_object(exc, error_type=None, request_id=None, stack=None):
    obj = {
        "errorMessage": str(exc),
        "errorType": error_type or type(exc).__name__,
    }
    if request_id is not None:
        obj["requestId"] = request_id
    obj["stackTrace"] = stack if stack is not None else _stack(exc.__traceback__)
    return obj


def _log_error(obj):
    # Like the managed runtime: one stderr record "[ERROR] Type: message" + traceback.
    lines = ["[ERROR] %s: %s" % (obj["errorType"], obj["errorMessage"])]
    trace = obj.get("stackTrace") or []
    if trace:
        lines.append("Traceback (most recent call last):")
        lines.extend(frame.rstrip("\n") for frame in trace)
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


def _load_handler(handler):
    try:
        module_path, fn_name = handler.rsplit(".", 1)
    except ValueError as exc:
        return None, _error_object(
            "Bad handler '%s': %s" % (handler, exc), "Runtime.MalformedHandlerName", "", []
        )
    module_name = module_path.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return None, _error_object(
            "Unable to import module '%s': %s" % (module_name, exc),
            "Runtime.ImportModuleError",
            "",
            [],
        )
    except SyntaxError as exc:
        return None, _error_object(
            "Syntax error in module '%s': %s" % (module_name, exc),
            "Runtime.UserCodeSyntaxError",
            "",
            [],
        )
    except Exception as exc:  # noqa: BLE001 - any init failure is reported
        return None, _error_object(exc, None, "", _stack(exc.__traceback__))
    fn = getattr(module, fn_name, None)
    if fn is None:
        return None, _error_object(
            "Handler '%s' missing on module '%s'" % (fn_name, module_name),
            "Runtime.HandlerNotFound",
            "",
            [],
        )
    return fn, None


def _pth_paths(sitedir):
    """Directories named by the `.pth` files of `sitedir`, like `site` does,
    except that `import` lines are not executed (they are what makes a full
    interpreter start-up slow and big: hooks of setuptools, certifi, ...)."""
    try:
        names = sorted(n for n in os.listdir(sitedir) if n.endswith(".pth") and not n.startswith("."))
    except OSError:
        return []
    out = []
    for name in names:
        try:
            with open(os.path.join(sitedir, name), encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            line = line.rstrip()
            if not line or line.startswith("#") or line.startswith(("import ", "import\t")):
                continue
            path = os.path.abspath(os.path.join(sitedir, line))
            if os.path.isdir(path):
                out.append(path)
    return out


def _venv_config():
    """(venv dir, include-system-site-packages) when the interpreter is a
    virtual environment's, else None (what `site.venv` reads)."""
    exe_dir = os.path.dirname(os.path.abspath(sys.executable))
    for cfg in (os.path.join(exe_dir, "pyvenv.cfg"), os.path.join(os.path.dirname(exe_dir), "pyvenv.cfg")):
        try:
            with open(cfg, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        system = False
        for line in lines:
            key, sep, value = line.partition("=")
            if sep and key.strip().lower() == "include-system-site-packages":
                system = value.strip().lower() == "true"
        return os.path.dirname(cfg), system
    return None


def _add_site_packages():
    """ESB starts this bootstrap with `python -S`, which skips the `site`
    module's start-up work: on a typical machine that work imports a few
    megabytes of modules from `.pth` hooks into every worker. The function
    still needs site-packages on `sys.path` (boto3 installed on the machine,
    as on Lambda), so they are added here, user site first as `site` does,
    and ESB's `sitecustomize` (first on PYTHONPATH) is imported."""
    if not sys.flags.no_site:
        return
    import site

    venv = _venv_config()
    if venv is not None:
        sys.prefix = sys.exec_prefix = venv[0]
        prefixes = [venv[0]] + (site.PREFIXES if venv[1] else [])
        user_site = False
    else:
        prefixes = site.PREFIXES
        user_site = site.check_enableusersite()
    dirs = [site.getusersitepackages()] if user_site else []
    dirs += site.getsitepackages(prefixes)
    for sitedir in dirs:
        if os.path.isdir(sitedir) and sitedir not in sys.path:
            sys.path.append(sitedir)
            sys.path.extend(p for p in _pth_paths(sitedir) if p not in sys.path)
    site.setquit()
    try:
        import sitecustomize  # noqa: F401 - ESB's endpoint patch (docs/runtime.md)
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - as site.execsitecustomize
        sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n%r\n" % exc)


def main():
    global _current_request_id
    _add_site_packages()
    handler_name = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("_HANDLER", "")
    task_root = os.environ.get("LAMBDA_TASK_ROOT", os.getcwd())
    if task_root not in sys.path:
        sys.path.insert(0, task_root)
    client = RuntimeClient(os.environ.get("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"))
    _install_logging_hook()

    handler, init_error = _load_handler(handler_name)
    if init_error is not None:
        _log_error(init_error)
        client.post_init_error(init_error)
        sys.exit(1)

    dumps = json.dumps
    loads = json.loads
    environ = os.environ
    resp, body = client.next()
    while True:
        headers = resp.headers
        request_id = headers.get("Lambda-Runtime-Aws-Request-Id", "")
        _current_request_id = request_id
        trace_id = headers.get("Lambda-Runtime-Trace-Id")
        if trace_id:
            environ["_X_AMZN_TRACE_ID"] = trace_id
        else:
            environ.pop("_X_AMZN_TRACE_ID", None)
        cognito = headers.get("Lambda-Runtime-Cognito-Identity")
        client_ctx = headers.get("Lambda-Runtime-Client-Context")
        try:
            identity = CognitoIdentity(loads(cognito)) if cognito else None
            client_context = ClientContext(loads(client_ctx)) if client_ctx else None
        except (ValueError, AttributeError) as exc:
            err = _error_object(
                "Unable to parse Client Context JSON: %s" % exc,
                "Runtime.LambdaContextUnmarshalError",
                request_id,
                [],
            )
            _log_error(err)
            resp, body = client.error_then_next(request_id, err)
            continue
        context = LambdaContext(
            request_id,
            int(headers.get("Lambda-Runtime-Deadline-Ms", "0") or 0),
            headers.get("Lambda-Runtime-Invoked-Function-Arn", ""),
            identity,
            client_context,
        )
        try:
            event = loads(body) if body else {}
        except ValueError as exc:
            err = _error_object(
                "Unable to unmarshal input: %s" % exc, "Runtime.UnmarshalError", request_id, []
            )
            _log_error(err)
            resp, body = client.error_then_next(request_id, err)
            continue
        try:
            result = handler(event, context)
        except Exception as exc:  # noqa: BLE001 - handler errors go to the caller
            err = _error_object(exc, None, request_id)
            _log_error(err)
            resp, body = client.error_then_next(request_id, err)
            continue
        try:
            payload = dumps(result).encode()
        except (TypeError, ValueError) as exc:
            err = _error_object(
                "Unable to marshal response: %s" % exc, "Runtime.MarshalError", request_id, []
            )
            _log_error(err)
            resp, body = client.error_then_next(request_id, err)
            continue
        resp, body = client.respond_then_next(request_id, payload)


if __name__ == "__main__":
    main()
