#!/usr/bin/env python3
"""Cold-start and warm-path cost of the isolation levels, measured in one run
(the machine is shared and noisy, so only the difference means something).

Usage: ESB_BIN=target/debug/esb python3 scripts/measure_isolation.py [ROUNDS]
Starts tests/e2e/apps/workers once per level (`none`, `sandbox`), then
- cold: ROUNDS times, crash the `crash` worker and invoke it again, reading
  the new worker's `Init Duration` from its REPORT line;
- warm: 20 x ROUNDS sequential `GET /sleep?seconds=0` through the gateway
  (HTTP API, plain HTTP), client-side latency.
Prints p50 of each."""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from esb_helpers import WORKERS, copy_app, start_esb  # noqa: E402


def measure(level: str, rounds: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"esb-measure-{level}-"))
    app = copy_app(WORKERS.parent, workdir)
    server = start_esb(app, workdir, http=True, env={"ESB_ISOLATION": level})
    try:
        for _ in range(rounds):
            server.invoke("crash", {"exit": True})
            server.invoke("crash")
        inits = [float(m) for m in re.findall(
            r"\[crash\] REPORT .*?Init Duration: ([0-9.]+) ms", server.output())]
        warm = []
        session = server._session
        for _ in range(20):
            session.get(server.url("/sleep?seconds=0"))
        for _ in range(20 * rounds):
            t = time.perf_counter()
            r = session.get(server.url("/sleep?seconds=0"), timeout=10)
            warm.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.text
        return {"cold_p50_ms": statistics.median(inits), "cold_n": len(inits),
                "warm_p50_ms": statistics.median(warm), "warm_n": len(warm)}
    finally:
        server.stop()


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    results = {}
    # Interleave twice to spread the noise over both levels.
    for level in ("none", "sandbox", "none", "sandbox"):
        r = measure(level, rounds)
        results.setdefault(level, []).append(r)
        print(level, r, flush=True)
    for level, rs in results.items():
        print(f"{level}: cold p50 {statistics.median(r['cold_p50_ms'] for r in rs):.2f} ms, "
              f"warm p50 {statistics.median(r['warm_p50_ms'] for r in rs):.3f} ms")


if __name__ == "__main__":
    main()
