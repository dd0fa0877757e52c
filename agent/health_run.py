"""Running one health check: through the same runner, sessions and scrubber as a job."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path

from agent.access import device_access_info
from agent.errors import ConfigError
from agent.health import HealthCheck, Result, host_metric, judge_step
from agent.job import Staging
from agent.kb import KnowledgeBase
from agent.runner import Plan, PlannedStep, Runner
from agent.scrub import Scrubber
from agent.sessions import DeviceSessions
from agent.settings import Settings
from collectors.base import StepError


def run_check(
    check: HealthCheck, settings: Settings, kb: KnowledgeBase, home: Path, scrubber: Scrubber
) -> Result:
    """Run ``check`` now and judge it; never raises for a device's failure."""
    device = next((d for d in settings.inventory() if d.name == check.device), None)
    if device is None:
        return Result(None, f"device {check.device} is no longer in the inventory")
    spec = check.spec
    if spec.host is not None:
        return host_metric(spec.host)
    if spec.reachable is not None:
        sessions = DeviceSessions(device, home)
        try:
            sessions.get(spec.reachable)
        except StepError as exc:
            return Result(False, str(exc), unreachable=True)
        except ConfigError as exc:
            return Result(None, str(exc))
        finally:
            sessions.close()
        return Result(True, f"{device.name} answers over {spec.reachable}")
    assert check.step is not None and spec.expect is not None
    kbtype = kb.get(device.type)
    plan = Plan(f"health:{check.id}", (device,), (PlannedStep(device, kbtype, check.step),))
    staging = Staging(home, f"health-{check.id}-{uuid.uuid4().hex[:12]}")  # locked, private
    try:
        runner = Runner(
            plan, staging.path, 1, home=home, scrubber=scrubber,
            access=functools.partial(device_access_info, settings),
        )  # fmt: skip
        (res,) = runner.run()
        return judge_step(spec.expect, res, staging.path)
    finally:
        staging.remove()
