// ESB built-in Node.js runtime client (Node's standard library only).
//
// Speaks the Lambda Runtime API at $AWS_LAMBDA_RUNTIME_API: loads the
// handler named by argv[2] (or $_HANDLER) from $LAMBDA_TASK_ROOT (CommonJS
// `exports.handler` or an ES module's `export const handler`), then loops
// over GET /next -> handler(event, context[, callback]) -> POST /response
// | /error on one kept-alive HTTP/1.1 connection. Errors are sent in the
// Node.js runtime's shape: {errorType, errorMessage, trace}. Written by
// ESB; do not edit the cached copy.
//
// The connection is a raw `net` socket with a small HTTP/1.1 reader written
// here (Content-Length or chunked bodies, parsed on Buffers): `node:http`'s
// client cost about three times the per-invocation CPU of Python's built-in
// bootstrap. The invocation loop is plain callbacks (no Promise per
// request), and the POST of a result carries the next GET /next in the same
// write (HTTP/1.1 pipelining: the Runtime API answers requests of one
// connection in order), so an invocation costs one write system call
// (docs/benchmarks.md, "Node.js").
//
// A POST is never sent twice: if the connection breaks before its answer,
// the server may have acted on it, so the runtime exits. Only GET /next is
// sent again, once, on a new connection.

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
const HEAD_END = Buffer.from("\r\n\r\n", "latin1");
const HOST_LINE = `Host: ${address}\r\n`;
const NEXT_REQUEST = `GET ${API_PREFIX}/invocation/next HTTP/1.1\r\n${HOST_LINE}\r\n`;
// A result above this size is posted alone (its GET /next follows the
// answer): the Runtime API may refuse a large body and close the
// connection without reading it.
const PIPELINE_MAX = 256 * 1024;

// Values the managed runtime fixes for the life of the worker.
const ENV = process.env;
const FUNCTION_NAME = ENV.AWS_LAMBDA_FUNCTION_NAME || "";
const FUNCTION_VERSION = ENV.AWS_LAMBDA_FUNCTION_VERSION || "$LATEST";
const MEMORY_SIZE = ENV.AWS_LAMBDA_FUNCTION_MEMORY_SIZE || "128";
const LOG_GROUP = ENV.AWS_LAMBDA_LOG_GROUP_NAME || "";
const LOG_STREAM = ENV.AWS_LAMBDA_LOG_STREAM_NAME || "";

function exitWith(err) {
  process.stderr.write(`esb bootstrap: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
}

// ---- the connection ----------------------------------------------------------
//
// `expect` holds, in order, one entry per request written and not yet
// answered: {onResponse(res), idempotent}. `res` is {status, headers, body};
// `body` may be a view of the read buffer, valid until onResponse returns.
//
// Reads land in one reused buffer (`onread`: no stream machinery, no
// allocation per read). Bytes of an incomplete response are copied out into
// `pieces`, joined once the response can be complete.

let sock = null;
let buffered = null;
let pieces = [];
let piecesLength = 0;
let needed = 0;
const expect = [];
const READ_BUFFER = Buffer.allocUnsafe(64 * 1024);

function connect() {
  const s = net.connect({
    host,
    port,
    onread: {
      buffer: READ_BUFFER,
      callback: (nread, buf) => {
        if (sock === s) onData(buf.subarray(0, nread));
      },
    },
  });
  sock = s;
  resetReader();
  s.setNoDelay(true);
  s.on("error", (err) => {
    if (sock === s) lost(err);
  });
  s.on("close", () => {
    if (sock === s) lost(new Error("the Runtime API closed the connection"));
  });
}

function resetReader() {
  buffered = null;
  pieces = [];
  piecesLength = 0;
  needed = 0;
}

function drop() {
  const s = sock;
  sock = null;
  resetReader();
  if (s) s.destroy();
}

// The connection broke. Unanswered requests: a POST ends the runtime; a
// GET /next is sent again, once, on a new connection.
function lost(err) {
  drop();
  if (expect.length === 0) return; // idle (a handler runs): reconnect on the next write
  const pending = expect.splice(0);
  if (pending.some((e) => !e.idempotent) || pending[0].retried) {
    exitWith(err);
    return;
  }
  send(NEXT_REQUEST, { onResponse: onNext, idempotent: true, retried: true });
}

function send(text, ...entries) {
  if (sock === null) connect();
  for (const e of entries) expect.push(e);
  sock.write(text, "utf8");
}

function onData(chunk) {
  if (pieces.length > 0) {
    pieces.push(Buffer.from(chunk));
    piecesLength += chunk.length;
    if (piecesLength < needed) return;
    buffered = Buffer.concat(pieces, piecesLength);
    pieces = [];
    piecesLength = 0;
  } else {
    buffered = chunk;
  }
  needed = 0;
  const s = sock;
  while (sock === s && buffered !== null && expect.length > 0) {
    let res;
    try {
      res = parseResponse();
    } catch (err) {
      lost(err);
      return;
    }
    if (res === null) break;
    const entry = expect.shift();
    if (res.close) {
      // The server closes after this answer: requests written after it
      // were not read; GET /next is sent again on a new connection.
      const rest = expect.splice(0);
      drop();
      if (rest.some((e) => !e.idempotent)) {
        exitWith(new Error("the Runtime API closed the connection"));
        return;
      }
      entry.onResponse(res);
      if (rest.length > 0) send(NEXT_REQUEST, { onResponse: onNext, idempotent: true });
      return;
    }
    entry.onResponse(res);
  }
  // What is left is kept as a copy (the read buffer is reused).
  if (sock === s && buffered !== null) {
    pieces = [Buffer.from(buffered)];
    piecesLength = buffered.length;
    if (needed < piecesLength + 1) needed = piecesLength + 1;
  }
  buffered = null;
}

// Parses one response off the front of `buffered`, or returns null when it
// is not complete yet.
function parseResponse() {
  const buf = buffered;
  const headEnd = buf.indexOf(HEAD_END);
  if (headEnd < 0) {
    if (buf.length > MAX_HEAD) throw new Error("Runtime API response head too large");
    needed = buf.length + 1;
    return null;
  }
  const head = buf.toString("latin1", 0, headEnd);
  let lineEnd = head.indexOf("\r\n");
  if (lineEnd < 0) lineEnd = head.length;
  const status = parseInt(head.slice(head.indexOf(" ") + 1, lineEnd), 10);
  if (Number.isNaN(status)) throw new Error("bad status line from the Runtime API");
  const headers = {};
  let length = 0;
  let chunked = false;
  let close = false;
  while (lineEnd < head.length) {
    const start = lineEnd + 2;
    lineEnd = head.indexOf("\r\n", start);
    if (lineEnd < 0) lineEnd = head.length;
    const colon = head.indexOf(":", start);
    if (colon < 0 || colon > lineEnd) continue;
    const name = head.slice(start, colon).trim().toLowerCase();
    const value = head.slice(colon + 1, lineEnd).trim();
    headers[name] = value;
    if (name === "content-length") {
      length = Number(value);
      if (!Number.isSafeInteger(length) || length < 0) throw new Error("bad Content-Length from the Runtime API");
    } else if (name === "transfer-encoding") {
      chunked = value.toLowerCase().includes("chunked");
    } else if (name === "connection") {
      close = value.toLowerCase() === "close";
    }
  }
  let offset = headEnd + 4;
  let body;
  if (chunked) {
    const parts = [];
    for (;;) {
      const sizeEnd = buf.indexOf("\r\n", offset, "latin1");
      if (sizeEnd < 0) return null;
      const size = parseInt(buf.toString("latin1", offset, sizeEnd), 16);
      if (Number.isNaN(size) || size < 0) throw new Error("bad chunk size from the Runtime API");
      const start = sizeEnd + 2;
      if (size === 0) {
        // Trailers (usually none), then an empty line.
        let at = start;
        for (;;) {
          const end = buf.indexOf("\r\n", at, "latin1");
          if (end < 0) return null;
          if (end === at) break;
          at = end + 2;
        }
        offset = at + 2;
        break;
      }
      if (buf.length < start + size + 2) return null;
      parts.push(buf.subarray(start, start + size));
      offset = start + size + 2;
    }
    body = parts.length === 1 ? parts[0] : Buffer.concat(parts);
  } else {
    if (buf.length < offset + length) {
      needed = offset + length;
      return null;
    }
    body = buf.subarray(offset, offset + length);
    offset += length;
  }
  buffered = offset < buf.length ? buf.subarray(offset) : null;
  needed = 0;
  return { status, headers, body, close };
}

// ---- requests ------------------------------------------------------------------

function ignoreAnswer() {}

function postAnswered() {
  sendNext();
}

function sendNext() {
  send(NEXT_REQUEST, { onResponse: onNext, idempotent: true });
}

// Header values the function controls (an error's name) are cut to
// printable ASCII: no header can be injected.
function headerValue(value) {
  return String(value).replace(/[^\x20-\x7e]/g, "").slice(0, 256);
}

function postHead(urlPath, length, errorType) {
  let head = `POST ${API_PREFIX}${urlPath} HTTP/1.1\r\n${HOST_LINE}Content-Type: application/json\r\n`;
  if (errorType !== undefined) head += `Lambda-Runtime-Function-Error-Type: ${headerValue(errorType)}\r\n`;
  return `${head}Content-Length: ${length}\r\n\r\n`;
}

// Posts `text` (JSON) and asks for the next invocation: in the same write
// when the body is small, else once the POST is answered.
function postThenNext(urlPath, text, errorType) {
  const length = Buffer.byteLength(text, "utf8");
  const head = postHead(urlPath, length, errorType);
  if (length <= PIPELINE_MAX) {
    send(head + text + NEXT_REQUEST, { onResponse: ignoreAnswer, idempotent: false },
      { onResponse: onNext, idempotent: true });
  } else {
    send(head + text, { onResponse: postAnswered, idempotent: false });
  }
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
    return JSON.stringify({ errorType: String(obj.errorType), errorMessage: String(obj.errorMessage), trace: [] });
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

let handler = null;
let takesCallback = false;
// The running invocation's completion, for errors thrown outside it
// (uncaught exceptions, unhandled rejections).
let inFlight = null;

function parseJsonHeader(value) {
  if (!value) return undefined;
  return JSON.parse(value);
}

function makeContext(headers, finish) {
  const deadline = Number(headers["lambda-runtime-deadline-ms"] || 0);
  return {
    callbackWaitsForEmptyEventLoop: true,
    functionName: FUNCTION_NAME,
    functionVersion: FUNCTION_VERSION,
    invokedFunctionArn: headers["lambda-runtime-invoked-function-arn"] || "",
    memoryLimitInMB: MEMORY_SIZE,
    awsRequestId: headers["lambda-runtime-aws-request-id"] || "",
    logGroupName: LOG_GROUP,
    logStreamName: LOG_STREAM,
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

function postError(requestId, err, fallbackType) {
  const obj = errorObject(err, fallbackType);
  const text = safeStringify(obj);
  process.stderr.write(`${new Date().toISOString()}\t${requestId}\tERROR\tInvoke Error \t${text}\n`);
  postThenNext(`/invocation/${requestId}/error`, text, obj.errorType);
}

function postResult(requestId, result) {
  let text;
  try {
    text = JSON.stringify(result === undefined ? null : result);
  } catch (err) {
    postError(requestId, runtimeError("Runtime.MarshalError", `Unable to stringify response body as json: ${err.message}`));
    return;
  }
  // JSON.stringify gives undefined for a function or a symbol: null, as
  // for undefined.
  postThenNext(`/invocation/${requestId}/response`, text === undefined ? "null" : text);
}

function onNext(res) {
  if (res.status !== 200) {
    exitWith(new Error(`/next returned ${res.status}: ${res.body.toString("utf8", 0, 200)}`));
    return;
  }
  const headers = res.headers;
  const requestId = headers["lambda-runtime-aws-request-id"] || "";
  currentRequestId = requestId;
  const traceId = headers["lambda-runtime-trace-id"];
  if (traceId) ENV._X_AMZN_TRACE_ID = traceId;
  else delete ENV._X_AMZN_TRACE_ID;

  let event;
  try {
    event = res.body.length ? JSON.parse(res.body.toString("utf8")) : {};
  } catch (err) {
    postError(requestId, runtimeError("Runtime.UnmarshalError", `Unable to unmarshal input: ${err.message}`));
    return;
  }

  let settled = false;
  const finish = (err, result) => {
    if (settled) return;
    settled = true;
    if (inFlight === finish) inFlight = null;
    if (err !== null && err !== undefined) postError(requestId, err);
    else postResult(requestId, result);
  };
  let context;
  try {
    context = makeContext(headers, finish);
  } catch (err) {
    finish(runtimeError("Runtime.LambdaContextUnmarshalError", `Unable to parse Client Context JSON: ${err.message}`));
    return;
  }
  inFlight = finish;
  let ret;
  try {
    ret = takesCallback ? handler(event, context, finish) : handler(event, context);
  } catch (err) {
    finish(err);
    return;
  }
  if (ret !== null && typeof ret === "object" && typeof ret.then === "function") {
    ret.then((result) => finish(null, result), (err) => finish(err == null ? "undefined" : err));
  } else if (!takesCallback) {
    finish(null, ret);
  }
}

function initError(err) {
  const obj = errorObject(err);
  const text = safeStringify(obj);
  process.stderr.write(`${new Date().toISOString()}\tundefined\tERROR\tUncaught Exception \t${text}\n`);
  const length = Buffer.byteLength(text, "utf8");
  // Exits once the error is posted (or the connection failed).
  send(postHead("/init/error", length, obj.errorType) + text, {
    onResponse: () => process.exit(1),
    idempotent: false,
  });
}

function onFatal(kind) {
  return (reason) => {
    const err = kind === "Runtime.UnhandledPromiseRejection" && !(reason instanceof Error)
      ? runtimeError(kind, String(reason))
      : reason;
    if (inFlight) {
      // The running invocation fails with this error. The worker keeps
      // serving (AWS would start a fresh one); ending it here would race
      // the next invocation handed to it.
      inFlight(err);
      return;
    }
    // Outside an invocation (init, or a timer after the response): the
    // runtime exits, as on AWS.
    if (handler === null) {
      initError(err);
      return;
    }
    const text = safeStringify(errorObject(err));
    process.stderr.write(`${new Date().toISOString()}\tundefined\tERROR\tUncaught Exception \t${text}\n`);
    process.exit(1);
  };
}

async function main() {
  patchConsole();
  process.on("uncaughtException", onFatal("Runtime.UncaughtException"));
  process.on("unhandledRejection", onFatal("Runtime.UnhandledPromiseRejection"));
  const handlerName = process.argv[2] || ENV._HANDLER || "";
  const root = ENV.LAMBDA_TASK_ROOT || process.cwd();
  let fn;
  try {
    fn = await loadHandler(root, handlerName);
  } catch (err) {
    initError(err);
    return;
  }
  handler = fn;
  takesCallback = fn.length >= 3;
  sendNext();
}

main().catch(exitWith);
