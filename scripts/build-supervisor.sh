#!/usr/bin/env bash
# Builds the static `esb-supervisor` (the entrypoint of docker workers,
# bind-mounted into every container) and puts it next to the esb binaries
# (target/debug and target/release), where `esb agent` looks for it.
# Static glibc (no musl here); see docs/docker.md.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' \
CARGO_TARGET_DIR=target/supervisor \
  cargo build --release --target x86_64-unknown-linux-gnu -p esb-container-supervisor --bin esb-supervisor
bin=target/supervisor/x86_64-unknown-linux-gnu/release/esb-supervisor
for dir in target/debug target/release; do
  mkdir -p "$dir"
  install -m 0755 "$bin" "$dir/esb-supervisor"
done
echo "esb-supervisor: $bin (copied to target/debug and target/release)"
