#!/bin/sh
# Handler name first (from CMD); the runtime client runs only under a
# Runtime API (a local emulator would be started otherwise).
if [ "$#" -ne 1 ]; then
  echo "usage: lambda-entrypoint.sh HANDLER" >&2
  exit 142
fi
export _HANDLER="$1"
if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
  echo "no AWS_LAMBDA_RUNTIME_API: no emulator in this test image" >&2
  exit 1
fi
exec /var/runtime/bootstrap
