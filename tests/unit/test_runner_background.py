"""Background steps in the runner: the next step starts once the background one records, it
is told to finish when the device's other steps are done (or runs to its own end with
``until: duration``), and its result lands in its own place in the plan's order."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.kb import load_kb, parse_kb
from agent.runner import Runner, make_plan, select_devices
from agent.settings import Device, Settings
from collectors import registry
from collectors.base import Collector, DeviceInfo, Facts, Options, StepContext

EVENTS: list[str] = []


class Recorder(Collector):
    """A background-capable collector that logs when it records and why it stopped."""

    name = "test.recorder"
    background_ok = True
    default_deadline = 10.0

    def collect(self, ctx: StepContext, device: DeviceInfo, options: Any) -> Facts:
        time.sleep(0.3)  # slow to start: the runner must wait for ready
        EVENTS.append("recording")
        ctx.ready.set()
        end = time.monotonic() + 1.0  # its own "duration"
        while time.monotonic() < end:
            if ctx.cancel.is_set():
                EVENTS.append("cancel")
                return {"stop": "cancelled"}
            if ctx.finish.is_set():
                EVENTS.append("finish")
                return {"stop": "end-of-profile"}
            time.sleep(0.01)
        EVENTS.append("own end")
        return {"stop": "duration"}


class Marker(Collector):
    name = "test.marker"

    def collect(self, ctx: StepContext, device: DeviceInfo, options: Options) -> Facts:
        EVENTS.append("foreground")
        return {}


@pytest.fixture(autouse=True)
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    EVENTS.clear()
    for c in (Recorder(), Marker()):
        monkeypatch.setitem(registry._COLLECTORS, c.name, c)


def _run(tmp_path: Path, until: str) -> list[Any]:
    kb = load_kb()
    kb.types["box"] = parse_kb(
        "type: box\ntitle: t\nprofiles:\n  p:\n    title: t\n    steps:\n"
        f"      - {{id: rec, collector: test.recorder, background: true, until: {until}}}\n"
        "      - {id: one, collector: test.marker}\n"
        "      - {id: two, collector: test.marker}\n",
        "box.yaml",
    )
    settings = Settings(devices=[Device(name="local", type="box")])
    plan = make_plan(settings, kb, select_devices(settings, []), "p")
    return Runner(plan, tmp_path).run()


def test_background_step_is_finished_when_the_others_are_done(tmp_path: Path) -> None:
    results = _run(tmp_path, "end-of-profile")
    assert EVENTS == ["recording", "foreground", "foreground", "finish"]
    assert [r.step for r in results] == ["rec", "one", "two"]
    assert results[0].status == "ok" and results[0].facts == {"stop": "end-of-profile"}
    assert results[0].finished >= results[2].finished


def test_until_duration_lets_it_run_to_its_own_end(tmp_path: Path) -> None:
    t0 = time.monotonic()
    results = _run(tmp_path, "duration")
    assert EVENTS == ["recording", "foreground", "foreground", "own end"]
    assert results[0].facts == {"stop": "duration"}
    assert time.monotonic() - t0 >= 1.0


def test_background_step_sees_the_cancel_of_a_ctrl_c(tmp_path: Path) -> None:
    kb = load_kb()
    kb.types["box"] = parse_kb(
        "type: box\ntitle: t\nprofiles:\n  p:\n    title: t\n    steps:\n"
        "      - {id: rec, collector: test.recorder, background: true, until: duration}\n",
        "box.yaml",
    )
    settings = Settings(devices=[Device(name="local", type="box")])
    runner = Runner(make_plan(settings, kb, select_devices(settings, []), "p"), tmp_path)
    threading.Timer(0.5, runner.cancel.set).start()
    t0 = time.monotonic()
    results = runner.run()
    assert time.monotonic() - t0 < 1.2  # stopped by the cancel, before its own 1 s end
    assert results[0].status == "ok" and results[0].facts == {"stop": "cancelled"}
    assert EVENTS == ["recording", "cancel"]
