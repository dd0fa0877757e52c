"""Helpers shared by the benchmark scripts (not a benchmark itself)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.kb import KnowledgeBase
    from agent.settings import Settings

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


def time_profile(settings: Settings, knowledge: KnowledgeBase, home: Path, parallel: int) -> float:
    """Wall seconds of the Runner collecting profile ``default`` on every device of
    ``settings`` (staging in a temp dir, removed after); SystemExit if any step failed."""
    from agent.runner import Runner, make_plan

    plan = make_plan(settings, knowledge, settings.inventory(), "default")
    staging = Path(tempfile.mkdtemp(prefix="ft-bench-staging-"))
    try:
        t0 = time.monotonic()
        results = Runner(plan, staging, parallel, home=home).run()
        wall = time.monotonic() - t0
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    bad = [r for r in results if r.status != "ok"]
    if bad:
        first = [(r.device, r.step, r.status, r.error) for r in bad[:5]]
        raise SystemExit(f"{len(bad)} steps failed, e.g. {first}")
    return wall
