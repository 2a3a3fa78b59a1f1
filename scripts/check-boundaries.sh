#!/usr/bin/env bash
# The engine-socket rule, checked instead of kept by convention:
#  - the gateway side (esb-gateway, esb-pool, esb-supervisor,
#    esb-runtimes-core, esb-runtimes-process, esb-agent-client) never
#    depends on bollard, directly or transitively;
#  - esb-cli reaches bollard only through esb-agent (the hidden `esb agent`
#    subcommand's server): `esb up`, `esb build` and `esb images build` talk
#    to an agent over gRPC;
#  - the build without the default `docker` feature compiles, has no
#    bollard at all and is clippy-clean;
#  - the same for containerd's API (containerd-client, reached through
#    esb-runtimes-containerd): only esb-agent links it.
# Usage: scripts/check-boundaries.sh   (exit 1 on the first broken rule)
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check-boundaries: $*" >&2; exit 1; }

# `cargo tree -i bollard` errors out ("did not match any packages") when
# bollard is not in the package's graph: that is the passing case.
engine_paths() {
  local engine="$1"; shift
  cargo tree -e normal -i "$engine" --prefix depth --no-dedupe "$@" 2>/dev/null || true
}
bollard_paths() { engine_paths bollard "$@"; }

for crate in esb-gateway esb-pool esb-supervisor esb-runtimes-core \
             esb-runtimes-process esb-agent-client; do
  paths="$(bollard_paths -p "$crate")"
  if [ -n "$paths" ]; then
    echo "$paths" >&2
    fail "$crate depends on bollard (only the agent may link the engine API)"
  fi
  echo "ok: $crate has no bollard"
done

# In the inverted tree each `esb-cli` line sits under the crate esb-cli
# depends on directly; that crate must be esb-agent every time.
paths="$(bollard_paths -p esb-cli)"
[ -n "$paths" ] || fail "esb-cli has no bollard at all: is the docker feature still default?"
offenders="$(awk '
  { depth = $0; sub(/[^0-9].*/, "", depth); name = substr($0, length(depth) + 1); split(name, f, " ")
    crate[depth + 0] = f[1]
    if (f[1] == "esb-cli" && crate[depth - 1] != "esb-agent") print crate[depth - 1] }
' <<<"$paths" | sort -u)"
if [ -n "$offenders" ]; then
  echo "$paths" >&2
  fail "esb-cli reaches bollard through: $offenders (only esb-agent may)"
fi
echo "ok: esb-cli reaches bollard only through esb-agent"

# containerd's API: the same rule (esb-runtimes-containerd, the agent's
# containerd engine, is the only crate using containerd-client).
for crate in esb-gateway esb-pool esb-supervisor esb-runtimes-core \
             esb-runtimes-process esb-agent-client esb-runtimes-docker; do
  paths="$(engine_paths containerd-client -p "$crate")"
  if [ -n "$paths" ]; then
    echo "$paths" >&2
    fail "$crate depends on containerd-client (only the agent may link the engine API)"
  fi
  echo "ok: $crate has no containerd-client"
done
paths="$(engine_paths esb-runtimes-containerd -p esb-cli)"
[ -n "$paths" ] || fail "esb-cli has no containerd engine: is esb-agent still linking it?"
offenders="$(awk '
  { depth = $0; sub(/[^0-9].*/, "", depth); name = substr($0, length(depth) + 1); split(name, f, " ")
    crate[depth + 0] = f[1]
    if (depth + 0 == 1 && f[1] != "esb-agent") print f[1] }
' <<<"$paths" | sort -u)"
if [ -n "$offenders" ]; then
  echo "$paths" >&2
  fail "esb-runtimes-containerd is linked by: $offenders (only esb-agent may)"
fi
echo "ok: only esb-agent links esb-runtimes-containerd"

paths="$(bollard_paths -p esb-cli --no-default-features)"
[ -z "$paths" ] || fail "esb-cli --no-default-features still depends on bollard"
paths="$(engine_paths containerd-client -p esb-cli --no-default-features)"
[ -z "$paths" ] || fail "esb-cli --no-default-features still depends on containerd-client"
# Its own target dir: the lean `esb` must not replace target/debug/esb,
# which the e2e tests run.
cargo build -q -p esb-cli --no-default-features --target-dir target/no-default-features
cargo clippy -q -p esb-cli --no-default-features --all-targets -- -D warnings
echo "ok: esb-cli builds without the docker feature"
