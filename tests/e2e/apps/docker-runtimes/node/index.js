// Reports where it runs: the Node.js version, the task root and user.
const fs = require("fs");

function pid1() {
  try {
    return fs.readFileSync("/proc/1/cmdline", "utf8").split("\0").join(" ");
  } catch (e) {
    return null;
  }
}

exports.handler = async (event, context) => ({
  statusCode: 200,
  headers: { "content-type": "application/json" },
  body: JSON.stringify({
    node: process.version,
    execEnv: process.env.AWS_EXECUTION_ENV,
    taskRoot: process.env.LAMBDA_TASK_ROOT,
    cwd: process.cwd(),
    uid: process.getuid(),
    requestId: context.awsRequestId,
    query: event.queryStringParameters || {},
    // In a container the in-container supervisor is PID 1.
    pid1: pid1(),
  }),
});
