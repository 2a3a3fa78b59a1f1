// ESB built-in Node.js runtime client (Node's standard library only).
//
// Speaks the Lambda Runtime API at $AWS_LAMBDA_RUNTIME_API: loads the
// handler named by argv[2] (or $_HANDLER) from $LAMBDA_TASK_ROOT (CommonJS
// `exports.handler` or an ES module's `export const handler`), then loops
// over GET /next -> handler(event, context[, callback]) -> POST /response
// | /error on one kept-alive HTTP/1.1 connection. The connection is a raw
// `net` socket with a small HTTP/1.1 reader written here (one request at a
// time, Content-Length or chunked bodies): `node:http`'s client cost about
// three times the per-invocation CPU of Python's built-in bootstrap on the
// same path (docs/benchmarks.md). Errors are sent in the
// Node.js runtime's shape: {errorType, errorMessage, trace}. Written by
// ESB; do not edit the cached copy.

import net from "node:net";
import fs from "node:fs";
import path from "node:path";
import util from "node:util";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const API_PREFIX = "/2018-06-01/runtime";
const address = process.env.AWS_LAMBDA_RUNTIME_API || "127.0.0.1:9001";
const sep = address.lastIndexOf(":");
const host = address.slice(0, sep).replace(/^\[|\]$/g, "") || "127.0.0.1";
const port = Number(address.slice(sep + 1));
const MAX_HEAD = 64 * 1024;

// The one connection to the Runtime API, and the request waiting on it.
let conn = null;
let pending = null;
let buffered = Buffer.alloc(0);

function fail(err) {
  const p = pending;
  pending = null;
  buffered = Buffer.alloc(0);
  if (conn) {
    conn.destroy();
    conn = null;
  }
  if (p) p.reject(err);
}

// Parses one response out of `buffered`, if complete: {status, headers, body}.
function parseResponse() {
  const headEnd = buffered.indexOf("\r\n\r\n");
  if (headEnd < 0) {
    if (buffered.length > MAX_HEAD) throw new Error("Runtime API response head too large");
    return null;
  }
  const lines = buffered.toString("latin1", 0, headEnd).split("\r\n");
  const status = Number(lines[0].split(" ")[1]);
  const headers = {};
  for (let i = 1; i < lines.length; i++) {
    const c = lines[i].indexOf(":");
    if (c > 0) headers[lines[i].slice(0, c).trim().toLowerCase()] = lines[i].slice(c + 1).trim();
  }
  let offset = headEnd + 4;
  let body;
  if ((headers["transfer-encoding"] || "").toLowerCase().includes("chunked")) {
    const parts = [];
    for (;;) {
      const lineEnd = buffered.indexOf("\r\n", offset);
      if (lineEnd < 0) return null;
      const size = parseInt(buffered.toString("latin1", offset, lineEnd), 16);
      if (Number.isNaN(size)) throw new Error("bad chunk size from the Runtime API");
      const start = lineEnd + 2;
      if (size === 0) {
        const trailerEnd = buffered.indexOf("\r\n\r\n", lineEnd);
        if (trailerEnd < 0) return null;
        offset = trailerEnd + 4;
        break;
      }
      if (buffered.length < start + size + 2) return null;
      parts.push(buffered.subarray(start, start + size));
      offset = start + size + 2;
    }
    body = Buffer.concat(parts);
  } else {
    const length = Number(headers["content-length"] || 0);
    if (buffered.length < offset + length) return null;
    body = Buffer.from(buffered.subarray(offset, offset + length));
    offset += length;
  }
  buffered = buffered.subarray(offset);
  return { status, headers, body };
}

function connect() {
  const sock = net.connect({ host, port });
  conn = sock;
  sock.setNoDelay(true);
  // Events of a socket that is no longer the current one are ignored.
  sock.on("data", (chunk) => {
    if (conn !== sock) return;
    buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
    if (!pending) return;
    let res;
    try {
      res = parseResponse();
    } catch (err) {
      fail(err);
      return;
    }
    if (res) {
      const p = pending;
      pending = null;
      if ((res.headers.connection || "").toLowerCase() === "close") {
        conn = null;
        buffered = Buffer.alloc(0);
        sock.destroy();
      }
      p.resolve(res);
    }
  });
  sock.on("error", (err) => {
    if (conn === sock) fail(err);
  });
  sock.on("close", () => {
    if (conn === sock) fail(new Error("the Runtime API closed the connection"));
  });
}

function request(method, urlPath, body, headers) {
  return new Promise((resolve, reject) => {
    if (!conn) connect();
    pending = { resolve, reject };
    let head = `${method} ${API_PREFIX}${urlPath} HTTP/1.1\r\nHost: ${address}\r\n`;
    for (const [k, v] of Object.entries(headers || {})) head += `${k}: ${v}\r\n`;
    if (body !== undefined && !(headers && "Content-Length" in headers)) {
      head += `Content-Length: ${body.length}\r\n`;
    }
    head += "\r\n";
    if (body !== undefined && body.length) {
      conn.write(Buffer.concat([Buffer.from(head, "latin1"), body]));
    } else {
      conn.write(head, "latin1");
    }
  });
}

async function next() {
  // GET /next is idempotent: retried once on a new connection.
  let res;
  try {
    res = await request("GET", "/invocation/next");
  } catch {
    res = await request("GET", "/invocation/next");
  }
  if (res.status !== 200) {
    throw new Error(`/next returned ${res.status}: ${res.body.toString("utf8", 0, 200)}`);
  }
  return res;
}

function postJson(urlPath, text, errorType) {
  const body = Buffer.from(text, "utf8");
  const headers = { "Content-Type": "application/json", "Content-Length": body.length };
  if (errorType) headers["Lambda-Runtime-Function-Error-Type"] = errorType;
  return request("POST", urlPath, body, headers);
}

// ---- errors in the Node.js runtime's shape --------------------------------

function errorObject(err, fallbackType) {
  if (err instanceof Error) {
    const trace = typeof err.stack === "string" ? err.stack.split("\n") : [];
    return {
      errorType: err.name || err.constructor?.name || "Error",
      errorMessage: err.message,
      trace,
    };
  }
  let message;
  try {
    message = typeof err === "string" ? err : JSON.stringify(err);
  } catch {
    message = String(err);
  }
  return { errorType: fallbackType || typeof err, errorMessage: message ?? String(err), trace: [] };
}

function runtimeError(errorType, message) {
  const err = new Error(message);
  err.name = errorType;
  return err;
}

function safeStringify(obj) {
  try {
    return JSON.stringify(obj);
  } catch {
    return JSON.stringify({ errorType: obj.errorType, errorMessage: String(obj.errorMessage), trace: [] });
  }
}

// ---- logging: console.* lines as the managed runtime prints them -----------

let currentRequestId = "undefined";

function patchConsole() {
  const write = (stream, level) => (...args) => {
    const line = `${new Date().toISOString()}\t${currentRequestId}\t${level}\t${util.format(...args)}\n`;
    stream.write(line);
  };
  console.log = write(process.stdout, "INFO");
  console.info = write(process.stdout, "INFO");
  console.debug = write(process.stdout, "DEBUG");
  console.trace = write(process.stdout, "TRACE");
  console.warn = write(process.stderr, "WARN");
  console.error = write(process.stderr, "ERROR");
  console.fatal = write(process.stderr, "FATAL");
}

// ---- loading the handler ---------------------------------------------------

function splitHandler(handler) {
  // "dir/sub/index.handler" -> ["dir/sub/index", "handler"];
  // "index.a.b" -> ["index", "a.b"] (a nested export).
  const slash = handler.lastIndexOf("/");
  const dot = handler.indexOf(".", slash + 1);
  if (dot < 0) {
    throw runtimeError("Runtime.MalformedHandlerName", "Bad handler");
  }
  return [handler.slice(0, dot), handler.slice(dot + 1)];
}

function findModuleFile(root, modulePath) {
  for (const ext of [".js", ".mjs", ".cjs"]) {
    const file = path.resolve(root, modulePath + ext);
    if (fs.existsSync(file)) return file;
  }
  return null;
}

async function loadModule(root, modulePath) {
  const file = findModuleFile(root, modulePath);
  if (file === null) {
    throw runtimeError("Runtime.ImportModuleError", `Error: Cannot find module '${modulePath}'`);
  }
  try {
    if (file.endsWith(".mjs")) {
      return await import(pathToFileURL(file).href);
    }
    const require = createRequire(path.join(root, "noop.js"));
    try {
      return require(file);
    } catch (err) {
      // An ES module in a `.js` file ("type": "module"), or one with
      // top-level await: loaded with import().
      if (err && (err.code === "ERR_REQUIRE_ESM" || err.code === "ERR_REQUIRE_ASYNC_MODULE")) {
        return await import(pathToFileURL(file).href);
      }
      throw err;
    }
  } catch (err) {
    if (err instanceof SyntaxError) {
      throw runtimeError("Runtime.UserCodeSyntaxError", `${err.name}: ${err.message}`);
    }
    if (err && err.code === "MODULE_NOT_FOUND") {
      throw runtimeError("Runtime.ImportModuleError", `Error: ${err.message}`);
    }
    throw err;
  }
}

async function loadHandler(root, handlerName) {
  const [modulePath, exportPath] = splitHandler(handlerName);
  const mod = await loadModule(root, modulePath);
  let fn = mod;
  for (const key of exportPath.split(".")) {
    fn = fn == null ? undefined : fn[key];
  }
  // A CommonJS module imported as ESM keeps its exports on `default`.
  if (typeof fn !== "function" && mod && mod.default) {
    fn = mod.default;
    for (const key of exportPath.split(".")) {
      fn = fn == null ? undefined : fn[key];
    }
  }
  if (typeof fn !== "function") {
    throw runtimeError("Runtime.HandlerNotFound", `${handlerName} is undefined or not exported`);
  }
  return fn;
}

// ---- the invocation loop -----------------------------------------------------

function parseJsonHeader(value) {
  if (!value) return undefined;
  return JSON.parse(value);
}

function makeContext(headers, finish) {
  const deadline = Number(headers["lambda-runtime-deadline-ms"] || 0);
  const env = process.env;
  return {
    callbackWaitsForEmptyEventLoop: true,
    functionName: env.AWS_LAMBDA_FUNCTION_NAME || "",
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION || "$LATEST",
    invokedFunctionArn: headers["lambda-runtime-invoked-function-arn"] || "",
    memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE || "128",
    awsRequestId: headers["lambda-runtime-aws-request-id"] || "",
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME || "",
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME || "",
    identity: parseJsonHeader(headers["lambda-runtime-cognito-identity"]),
    clientContext: parseJsonHeader(headers["lambda-runtime-client-context"]),
    getRemainingTimeInMillis() {
      return Math.max(deadline - Date.now(), 0);
    },
    // Legacy completion methods, as the managed runtime still offers.
    done(err, result) {
      finish(err, result);
    },
    succeed(result) {
      finish(null, result);
    },
    fail(err) {
      finish(err == null ? "handled" : err);
    },
  };
}

let inFlight = null;

async function reportError(requestId, err, fallbackType) {
  const obj = errorObject(err, fallbackType);
  process.stderr.write(
    `${new Date().toISOString()}\t${requestId}\tERROR\tInvoke Error \t${safeStringify(obj)}\n`,
  );
  await postJson(`/invocation/${requestId}/error`, safeStringify(obj), obj.errorType);
}

async function runOne(handler, res) {
  const headers = res.headers;
  const requestId = headers["lambda-runtime-aws-request-id"] || "";
  currentRequestId = requestId;
  const traceId = headers["lambda-runtime-trace-id"];
  if (traceId) process.env._X_AMZN_TRACE_ID = traceId;
  else delete process.env._X_AMZN_TRACE_ID;

  let event;
  try {
    event = res.body.length ? JSON.parse(res.body.toString("utf8")) : {};
  } catch (err) {
    await reportError(requestId, runtimeError("Runtime.UnmarshalError", `Unable to unmarshal input: ${err.message}`));
    return;
  }

  const outcome = await new Promise((resolve) => {
    let settled = false;
    const finish = (err, result) => {
      if (settled) return;
      settled = true;
      resolve({ err, result });
    };
    let context;
    try {
      context = makeContext(headers, finish);
    } catch (err) {
      finish(runtimeError("Runtime.LambdaContextUnmarshalError", `Unable to parse Client Context JSON: ${err.message}`));
      return;
    }
    inFlight = { requestId, finish };
    try {
      const ret = handler.length >= 3
        ? handler(event, context, (err, result) => finish(err, result))
        : handler(event, context);
      if (ret && typeof ret.then === "function") {
        ret.then((result) => finish(null, result), (err) => finish(err == null ? "undefined" : err));
      } else if (handler.length < 3) {
        finish(null, ret);
      }
    } catch (err) {
      finish(err);
    }
  });
  inFlight = null;

  if (outcome.err !== null && outcome.err !== undefined) {
    await reportError(requestId, outcome.err);
    return;
  }
  let payload;
  try {
    payload = JSON.stringify(outcome.result === undefined ? null : outcome.result);
  } catch (err) {
    await reportError(requestId, runtimeError("Runtime.MarshalError", `Unable to stringify response body as json: ${err.message}`));
    return;
  }
  await postJson(`/invocation/${requestId}/response`, payload);
}

async function initError(err) {
  const obj = errorObject(err);
  process.stderr.write(
    `${new Date().toISOString()}\tundefined\tERROR\tUncaught Exception \t${safeStringify(obj)}\n`,
  );
  try {
    await postJson("/init/error", safeStringify(obj), obj.errorType);
  } finally {
    process.exit(1);
  }
}

function onFatal(kind) {
  return async (reason) => {
    const err = kind === "Runtime.UnhandledPromiseRejection" && !(reason instanceof Error)
      ? runtimeError(kind, String(reason))
      : reason;
    if (inFlight) {
      // The running invocation fails with this error. The worker keeps
      // serving (AWS would start a fresh one); ending it here would race
      // the next invocation handed to it.
      const { finish } = inFlight;
      inFlight = null;
      finish(err);
      return;
    }
    // Outside an invocation (init, or a timer after the response): the
    // runtime exits, as on AWS.
    try {
      await initError(err);
    } finally {
      process.exit(129);
    }
  };
}

async function main() {
  patchConsole();
  process.on("uncaughtException", onFatal("Runtime.UncaughtException"));
  process.on("unhandledRejection", onFatal("Runtime.UnhandledPromiseRejection"));
  const handlerName = process.argv[2] || process.env._HANDLER || "";
  const root = process.env.LAMBDA_TASK_ROOT || process.cwd();
  let handler;
  try {
    handler = await loadHandler(root, handlerName);
  } catch (err) {
    await initError(err);
    return;
  }
  for (;;) {
    const res = await next();
    await runOne(handler, res);
  }
}

main().catch((err) => {
  process.stderr.write(`esb bootstrap: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
