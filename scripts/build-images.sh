#!/usr/bin/env bash
# Builds ESB's offline runtime base images from Debian packages, with no
# registry: debootstrap a minimal Debian (bookworm ships Python 3.11) into
# a directory, add awslambdaric with pip when it installs, and
# `docker import` the tree as esb/python3.11:latest.
#
#   scripts/build-images.sh [python3.11]      # skip when the image exists
#   FORCE=1 scripts/build-images.sh           # rebuild
#
# Needs root (debootstrap), docker, debootstrap. Takes a few minutes.
set -euo pipefail

target="${1:-python3.11}"
case "$target" in
  python3.11) image="esb/python3.11:latest" ;;
  *) echo "unknown image $target (known: python3.11)" >&2; exit 2 ;;
esac

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image already exists (FORCE=1 to rebuild)"
  exit 0
fi

mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite="${DEBIAN_SUITE:-bookworm}"
work="$(mktemp -d "${TMPDIR:-/tmp}/esb-image.XXXXXX")"
root="$work/rootfs"
trap 'rm -rf "$work"' EXIT

echo "debootstrap $suite into $root (a few minutes)"
debootstrap --variant=minbase --include=python3,ca-certificates \
  "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

# awslambdaric: the official Python runtime client. Installed from wheels on
# the host's pip for the image's Python (3.11); optional, ESB falls back to
# its built-in bootstrap when it is missing.
site="$root/usr/local/lib/python3.11/dist-packages"
mkdir -p "$site"
ric=no
if command -v pip >/dev/null 2>&1 && pip install --quiet --no-compile --target "$site" \
     --python-version 3.11 --only-binary=:all: --platform manylinux2014_x86_64 \
     --implementation cp awslambdaric >"$work/pip.log" 2>&1; then
  ric=yes
else
  echo "warning: awslambdaric did not install; the image uses ESB's built-in bootstrap" >&2
  tail -n 5 "$work/pip.log" >&2 || true
fi

# The non-root user workers run as (uid/gid 993, like sbx_user1051 on AWS).
echo 'sbx_user1051:x:993:990::/tmp:/usr/sbin/nologin' >>"$root/etc/passwd"
echo 'sbx_user1051:x:990:' >>"$root/etc/group"
mkdir -p "$root/var/task" "$root/var/runtime" "$root/opt"

# Trim what a runtime never needs.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*

tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV LAMBDA_TASK_ROOT=/var/task' \
  --change 'WORKDIR /var/task' \
  --change "LABEL io.esb.runtime=python3.11 io.esb.awslambdaric=$ric" \
  - "$image" >/dev/null
echo "built $image (awslambdaric: $ric)"
