#!/usr/bin/env bash
# Builds ESB's offline runtime base images: a thin wrapper over
# `esb images build`, which asks an agent (one started for the command, or
# --agent URL) to debootstrap a minimal Debian and import it as
# esb/python3.11:latest. See docs/docker.md.
#
#   scripts/build-images.sh [python3.11]      # skip when the image exists
#   FORCE=1 scripts/build-images.sh           # rebuild
#
# Needs root (debootstrap), a Docker daemon, debootstrap. Takes a few
# minutes. Uses $ESB_BIN, else target/{release,debug}/esb, else `esb` on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

esb="${ESB_BIN:-}"
if [ -z "$esb" ]; then
  for candidate in target/release/esb target/debug/esb; do
    if [ -x "$candidate" ]; then esb="$candidate"; break; fi
  done
fi
esb="${esb:-esb}"

args=(images build "${1:-python3.11}")
if [ "${FORCE:-0}" = 1 ]; then args+=(--force); fi
exec "$esb" "${args[@]}"
