"""The runner owns deadlines and exceptions: a collector that ignores its deadline or has a
bug costs one step, never the job."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent.kb import load_kb, parse_kb
from agent.runner import Runner, make_plan, select_devices
from agent.settings import Device, Settings
from collectors import registry
from collectors.base import Collector, DeviceInfo, Facts, Options, StepContext

RELEASE = threading.Event()


class Stubborn(Collector):
    """Ignores its deadline and the cancel event (a buggy plugin)."""

    name = "test.stubborn"
    default_deadline = 0.5

    def collect(self, ctx: StepContext, device: DeviceInfo, options: Any) -> Facts:
        ctx.sink.write_text("early.txt", "written before the hang\n")
        RELEASE.wait(20)
        ctx.sink.write_text("late.txt", "must not land\n")
        return {}


class Buggy(Collector):
    name = "test.buggy"

    def collect(self, ctx: StepContext, device: DeviceInfo, options: Any) -> Facts:
        raise ZeroDivisionError("boom")


class Fine(Collector):
    name = "test.fine"
    seen: ClassVar[list[str]] = []

    def collect(self, ctx: StepContext, device: DeviceInfo, options: Options) -> Facts:
        ctx.sink.write_text("ok.txt", "fine\n")
        return {"device": device.name}


@pytest.fixture
def fake_collectors(monkeypatch: pytest.MonkeyPatch) -> None:
    for c in (Stubborn(), Buggy(), Fine()):
        monkeypatch.setitem(registry._COLLECTORS, c.name, c)


KB = """\
type: box
title: t
profiles:
  default:
    title: t
    steps:
      - {id: stubborn, collector: test.stubborn}
      - {id: buggy, collector: test.buggy}
      - {id: fine, collector: test.fine}
      - {id: cmd, collector: local.command, command: "echo hi"}
"""


def test_runner_survives_hanging_and_buggy_collectors(
    fake_collectors: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kb = load_kb()
    kb.types["box"] = parse_kb(KB, "box.yaml")
    settings = Settings(
        devices=[
            Device(name="local", type="box"),
            Device(name="remote", type="box", address="192.0.2.99"),
        ]
    )
    plan = make_plan(settings, kb, select_devices(settings, []), "default")
    t0 = time.monotonic()
    results = Runner(plan, tmp_path, max_parallel=2).run()
    elapsed = time.monotonic() - t0
    RELEASE.set()
    by = {(r.device, r.step): r for r in results}
    stub = by[("local", "stubborn")]
    assert stub.status == "timeout" and "deadline of 0.5s" in stub.error  # type: ignore[operator]
    assert [a.path for a in stub.artifacts] == ["local/stubborn/early.txt"]
    buggy = by[("local", "buggy")]
    assert buggy.status == "failed"
    assert buggy.error == "internal error in test.buggy: ZeroDivisionError: boom"
    assert "bug in collector test.buggy" in caplog.text
    assert by[("local", "fine")].status == "ok"
    assert by[("local", "fine")].facts == {"device": "local"}
    assert by[("local", "cmd")].status == "ok"
    # local.command cannot run on a remote device: skipped with the reason, not attempted
    remote_cmd = by[("remote", "cmd")]
    assert remote_cmd.status == "skipped" and "remote device" in remote_cmd.error  # type: ignore[operator]
    assert elapsed < 15  # both devices' stubborn steps ran in parallel, bounded by deadlines
    time.sleep(0.2)
    assert not (tmp_path / "local/stubborn/late.txt").exists()
