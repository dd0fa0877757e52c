"""Helpers shared by the benchmark scripts (not a benchmark itself)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def timed_run(argv: list[str]) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of one client process, measured by GNU time: wait4 from a
    big parent would report at least the parent's size (exec keeps the forked image's peak)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *argv],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        text=True,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed with exit {proc.returncode}: {proc.stderr[-500:]}")
    return elapsed, int(proc.stderr.strip().splitlines()[-1])
