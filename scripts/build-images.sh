#!/usr/bin/env bash
# Builds ESB's offline runtime base images: a thin wrapper over
# `esb images build`, which asks an agent (one started for the command, or
# --agent URL) to debootstrap a minimal Debian and import it (no registry).
# See docs/docker.md.
#
#   scripts/build-images.sh                   # python3.11 (skipped when current)
#   scripts/build-images.sh nodejs20.x provided
#   scripts/build-images.sh all               # python3.11 python3.13 nodejs18.x nodejs20.x provided
#   FORCE=1 scripts/build-images.sh           # rebuild
#
# Needs root (debootstrap), a Docker daemon, debootstrap, and pip for the
# Python images. A few minutes per image. Uses $ESB_BIN, else
# target/{release,debug}/esb, else `esb` on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

esb="${ESB_BIN:-}"
if [ -z "$esb" ]; then
  for candidate in target/release/esb target/debug/esb; do
    if [ -x "$candidate" ]; then esb="$candidate"; break; fi
  done
fi
esb="${esb:-esb}"

names=("$@")
if [ "${#names[@]}" -eq 0 ]; then names=(python3.11); fi
if [ "${names[0]}" = all ]; then names=(python3.11 python3.13 nodejs18.x nodejs20.x provided); fi

for name in "${names[@]}"; do
  args=(images build "$name")
  if [ "${FORCE:-0}" = 1 ]; then args+=(--force); fi
  "$esb" "${args[@]}"
done
