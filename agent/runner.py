"""Planner and runner: (devices, profile) -> Plan -> step results in a staging directory.

The plan is validated completely before any device is touched. The runner collects from
devices in parallel (bounded), runs each device's steps in order, each in its own thread
with a deadline: a step that overruns is recorded as ``timeout``, its sink is sealed and the
job goes on. Expected failures become a status and a message; anything else is a bug,
logged with its traceback, recorded as ``failed``, and the job goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.kb import KbType, KnowledgeBase, Step
from agent.sessions import DeviceSessions
from agent.settings import Device, Settings
from collectors import registry
from collectors.base import (
    Artifact,
    ArtifactSink,
    DeviceInfo,
    StepContext,
    StepError,
    StepPartial,
    TextScrubber,
)

log = logging.getLogger(__name__)
GRACE = 2.0  # seconds a collector gets past its deadline to stop by itself


@dataclass(frozen=True)
class PlannedStep:
    device: Device
    kbtype: KbType
    step: Step
    skip_reason: str | None = None

    def deadline(self) -> float:
        if self.step.deadline:
            return self.step.deadline
        return registry.get(self.step.collector).deadline_for(self.step.options)


@dataclass(frozen=True)
class Plan:
    profile: str
    devices: tuple[Device, ...]
    steps: tuple[PlannedStep, ...]

    def for_device(self, name: str) -> list[PlannedStep]:
        return [s for s in self.steps if s.device.name == name]

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "device": s.device.name,
                "type": s.kbtype.type,
                "step": s.step.id,
                "collector": s.step.collector,
                "options": s.step.options_dict(),
                "deadline_s": s.deadline(),
                "background": s.step.background,
                "skip": s.skip_reason,
            }
            for s in self.steps
        ]


def _skip_reason(device: Device, step: Step) -> str | None:
    transport = registry.get(step.collector).transport
    if transport == "local" and not device.is_local:
        return f"{step.collector} runs on the agent host; {device.name} is a remote device"
    if transport == "ssh" and device.ssh is None:
        return f"{device.name} has no ssh settings in the site config"
    if transport == "snmp" and device.snmp is None:
        return f"{device.name} has no snmp settings in the site config"
    return None


def select_devices(
    settings: Settings, names: list[str], types: list[str] | tuple[str, ...] = ()
) -> list[Device]:
    """The devices named, plus every device of the KB types given; all of them if neither."""
    inventory = settings.inventory()
    if not names and not types:
        return inventory
    by_name = {d.name: d for d in inventory}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(
            f"unknown device {', '.join(map(repr, unknown))} "
            f"(configured: {', '.join(sorted(by_name))}); see 'fieldtrace devices list'"
        )
    present = sorted({d.type for d in inventory})
    for t in types:
        if t not in present:
            raise ConfigError(
                f"--type {t}: no configured device has KB type {t!r} "
                f"(types in the inventory: {', '.join(present)})"
            )
    chosen = [by_name[n] for n in names] + [d for d in inventory if d.type in types]
    return list({d.name: d for d in chosen}.values())


def make_plan(settings: Settings, kb: KnowledgeBase, devices: list[Device], profile: str) -> Plan:
    steps: list[PlannedStep] = []
    for device in devices:
        try:
            kbtype = kb.get(device.type)
        except ConfigError as exc:
            raise ConfigError(f"device {device.name}: {exc}") from None
        prof = kbtype.profiles.get(profile)
        if prof is None:
            raise ConfigError(
                f"device {device.name}: KB type {kbtype.type!r} has no profile {profile!r} "
                f"(profiles: {', '.join(sorted(kbtype.profiles))}); see 'fieldtrace kb show "
                f"{kbtype.type}'"
            )
        for step in prof.steps:
            steps.append(PlannedStep(device, kbtype, step, _skip_reason(device, step)))
    return Plan(profile, tuple(devices), tuple(steps))


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class StepResult:
    device: str
    step: str
    collector: str
    options: dict[str, Any]
    status: str = "skipped"
    error: str | None = None
    started: str | None = None
    finished: str | None = None
    seconds: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)


def _wait(futures: list[Future[None]]) -> None:
    for fut in futures:
        while not fut.done():
            try:  # wake up regularly so KeyboardInterrupt reaches the main thread
                fut.result(timeout=0.2)
            except TimeoutError:
                continue
        fut.result()


# events: "start", "progress" (live facts of a running step, e.g. packets captured), "end"
Progress = Callable[[str, PlannedStep, StepResult | None], None]


class Runner:
    """Runs a plan into ``staging``; ``cancel`` stops it early (Ctrl-C)."""

    def __init__(
        self,
        plan: Plan,
        staging: Path,
        max_parallel: int = 8,
        progress: Progress | None = None,
        home: Path | None = None,
        scrubber: TextScrubber | None = None,
        access: Callable[[Device], dict[str, Any]] | None = None,
    ) -> None:
        self.plan = plan
        self.access = access  # device -> DeviceInfo.access (agent.access.device_access_info)
        self.home = home or staging
        self.scrubber = scrubber
        self.staging = staging
        self.max_parallel = max_parallel
        self.progress = progress or (lambda event, step, result: None)
        self.cancel = threading.Event()
        self.interrupted = False

    def run(self) -> list[StepResult]:
        results: dict[int, StepResult] = {}
        order = {id(s): i for i, s in enumerate(self.plan.steps)}

        def device_job(device: Device) -> None:
            sessions = DeviceSessions(device, self.home)
            background: list[tuple[int, Callable[[], StepResult]]] = []
            try:
                for ps in self.plan.for_device(device.name):
                    if ps.step.background and not ps.skip_reason:
                        background.append((order[id(ps)], self._start_background(ps, sessions)))
                    else:
                        results[order[id(ps)]] = self._run_step(ps, sessions)
            finally:
                for i, stop in background:  # the device's other steps are done
                    results[i] = stop()
                sessions.close()

        workers = max(1, min(self.max_parallel, len(self.plan.devices)))
        with ThreadPoolExecutor(workers, thread_name_prefix="device") as pool:
            futures = [pool.submit(device_job, d) for d in self.plan.devices]
            try:
                _wait(futures)
            except KeyboardInterrupt:
                # first Ctrl-C: stop the running steps, skip the rest, keep what we have;
                # a second Ctrl-C propagates and the caller discards everything
                self.interrupted = True
                self.cancel.set()
                _wait(futures)
        return [results[i] for i in range(len(self.plan.steps))]

    def _start_background(
        self, ps: PlannedStep, sessions: DeviceSessions
    ) -> Callable[[], StepResult]:
        """Start a background step; once it records, return the call that ends it."""
        ready, finish = threading.Event(), threading.Event()
        box: list[StepResult] = []
        worker = threading.Thread(
            target=lambda: box.append(self._run_step(ps, sessions, ready, finish)),
            name=f"bg-{ps.device.name}-{ps.step.id}",
            daemon=True,
        )
        worker.start()
        while worker.is_alive() and not ready.wait(0.05):
            pass  # the next step starts only once the capture is recording

        def stop() -> StepResult:
            if ps.step.until != "duration":
                finish.set()
            worker.join()
            return box[0]

        return stop

    def _run_step(
        self,
        ps: PlannedStep,
        sessions: DeviceSessions,
        ready: threading.Event | None = None,
        finish: threading.Event | None = None,
    ) -> StepResult:
        step = ps.step
        res = StepResult(ps.device.name, step.id, step.collector, step.options_dict())
        if ps.skip_reason:
            res.error = ps.skip_reason
            self.progress("end", ps, res)
            return res
        if self.cancel.is_set():
            res.error = "not started: the job was interrupted"
            self.progress("end", ps, res)
            return res
        collector = registry.get(step.collector)
        sink = ArtifactSink(self.staging, f"{ps.device.name}/{step.id}", scrubber=self.scrubber)
        limit = ps.deadline()
        t0 = time.monotonic()

        def live(facts: dict[str, Any]) -> None:
            res.facts = facts
            self.progress("progress", ps, res)

        ctx = StepContext(
            sink=sink,
            deadline=t0 + limit,
            cancel=threading.Event(),
            opener=sessions.get,
            ready=ready or threading.Event(),
            finish=finish or threading.Event(),
            progress=live,
        )
        info = DeviceInfo(
            ps.device.name,
            ps.device.type,
            ps.device.address,
            ps.kbtype.hints(),
            self.access(ps.device) if self.access else {},
        )
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["facts"] = collector.collect(ctx, info, step.options) or {}
            except BaseException as exc:  # recorded below; a collector never kills the job
                outcome["exc"] = exc

        res.started = utcnow()
        self.progress("start", ps, res)
        worker = threading.Thread(
            target=target, name=f"step-{ps.device.name}-{step.id}", daemon=True
        )
        worker.start()
        while worker.is_alive():
            remaining = ctx.deadline + GRACE - time.monotonic()
            if remaining <= 0:
                break
            if self.cancel.is_set():
                ctx.cancel.set()
            worker.join(min(remaining, 0.1))
        alive = worker.is_alive()
        if alive:
            ctx.cancel.set()
            sink.seal()
            worker.join(GRACE)  # give it a last moment; if it still runs it is abandoned
        sink.seal()
        res.seconds = round(time.monotonic() - t0, 3)
        res.finished = utcnow()
        res.artifacts = list(sink.artifacts)
        exc = outcome.get("exc")
        if alive:
            res.status = "timeout"
            res.error = f"no result after the step's deadline of {limit:g}s; stopped"
        elif exc is None:
            res.status = "ok"
            res.facts = outcome.get("facts", {})
        elif isinstance(exc, StepError):
            res.status = exc.status
            res.error = str(exc)
            if self.cancel.is_set() and exc.status == "timeout":
                res.status = "partial"
                res.error = "interrupted by the user"
            facts = exc.facts if isinstance(exc, StepPartial) else getattr(exc, "facts", None)
            if isinstance(facts, dict):  # what a failed step still knows (e.g. per command)
                res.facts = facts
        else:
            log.error(
                "bug in collector %s (%s/%s)", step.collector, ps.device.name, step.id, exc_info=exc
            )
            res.status = "failed"
            res.error = f"internal error in {step.collector}: {type(exc).__name__}: {exc}"
        self.progress("end", ps, res)
        return res
