"""Health checks: what they are (KB ``health:`` + site ``[[health]]``) and how they judge.

A check is declared per KB type and applies to every device of that type:

    health:
      disk:                       # the check's id
        title: Root file system space
        host: {metric: disk_percent, path: /, max: 90}
        profile: default          # collected when the check fails
        severity: major           # critical | major | minor | warning
      sip-registered:
        step: {collector: ssh.shell, command: "show sip-ua register status"}
        expect: {match: "Registered", not_match: "(?i)unregistered|failed"}
      ifaces-up:
        step: {collector: snmp.walk, oid: IF-MIB::ifOperStatus}
        expect: {every: 1, rows: ["1", "2"]}   # every listed row is up(1)
      reachable:
        reachable: ssh            # ssh | snmp: log in / get an answer

Kinds: ``host`` (this host's disk/inode/memory %, load per core, from psutil), ``step``
(any read-only KB step, judged by ``expect``: a regex on its text output, a scalar of an
SNMP get compared with a value or range, every row of a walked column, or the
``compliant`` fact of ``access.check``) and ``reachable``. The step runs through the
same runner, sessions, scrubber and sink as a collection, in a throwaway staging
directory.

The site config enables, disables or tunes a check, or adds one to a single device:

    [[health]]
    check = "disk"
    max = 80                 # overrides the threshold (host: max; expect: min/max/equals)
    interval = "10m"
    [[health]]
    check = "gw1-uplink"
    device = "gw1"
    step = { collector = "snmp.get", oid = "IF-MIB::ifOperStatus.3" }
    expect = { equals = 1 }

The transitions and flood control live in ``agent/health_engine.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from agent.errors import pydantic_problems
from agent.kb import _Model, _regex  # the KB's own model base and regex check
from collectors.base import Duration

if TYPE_CHECKING:
    from agent.kb import Step
    from agent.runner import StepResult

Severity = Literal["critical", "major", "minor", "warning"]
CHECK_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")


class HostMetric(_Model):
    metric: Literal["disk_percent", "inode_percent", "memory_percent", "load_per_core"]
    path: str = "/"
    max: float = Field(gt=0)


class Expect(_Model):
    """What a step's result must show. Text: ``match``/``not_match`` (regex, multiline).
    SNMP get: ``equals``, ``one_of``, ``min``, ``max`` on each value. SNMP walk: ``every``
    (each row's value), with ``rows`` naming the instances that must be there.
    access.check: ``compliant``."""

    match: str | None = None
    not_match: str | None = None
    equals: int | float | str | None = None
    one_of: list[int | float | str] | None = None
    min: float | None = None
    max: float | None = None
    every: int | float | str | None = None
    rows: list[str] | None = None
    compliant: bool | None = None

    _check_match = field_validator("match", "not_match")(_regex)

    @model_validator(mode="after")
    def _something(self) -> Expect:
        if all(v is None for v in self.model_dump().values()):
            raise ValueError("expect needs at least one of: " + ", ".join(Expect.model_fields))
        if self.rows is not None and self.every is None:
            raise ValueError("rows: only with every (the value each listed row must have)")
        return self


class CheckModel(_Model):
    """One check as the KB declares it (``health.<id>``)."""

    title: str = ""
    host: HostMetric | None = None
    step: dict[str, Any] | None = None  # a KB step without id; validated by the KB loader
    reachable: Literal["ssh", "snmp"] | None = None
    expect: Expect | None = None
    profile: str = "default"
    severity: Severity = "major"
    interval: Duration = 300.0
    fail_after: int = Field(1, ge=1, le=100)
    cooldown: Duration = 6 * 3600.0
    repeat_interval: Duration = 3600.0
    recollect_interval: Duration = 6 * 3600.0
    enabled: bool = True

    @model_validator(mode="after")
    def _one_kind(self) -> CheckModel:
        kinds = [k for k in ("host", "step", "reachable") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a check has exactly one of host, step or reachable")
        if self.step is not None and self.expect is None:
            raise ValueError("a step check needs expect (what its result must show)")
        if self.step is None and self.expect is not None:
            raise ValueError("expect: only for step checks")
        return self


class SiteCheck(_Model):
    """``[[health]]`` in the site config: tune, disable or add a check."""

    check: str
    device: str | None = None
    type: str | None = None
    enabled: bool | None = None
    max: float | None = None
    min: float | None = None
    equals: int | float | str | None = None
    interval: Duration | None = None
    cooldown: Duration | None = None
    repeat_interval: Duration | None = None
    recollect_interval: Duration | None = None
    fail_after: int | None = Field(None, ge=1, le=100)
    severity: Severity | None = None
    profile: str | None = None
    title: str | None = None
    host: HostMetric | None = None
    step: dict[str, Any] | None = None
    reachable: Literal["ssh", "snmp"] | None = None
    expect: Expect | None = None

    @field_validator("check")
    @classmethod
    def _id(cls, value: str) -> str:
        if not CHECK_ID.match(value):
            raise ValueError("a check id is lowercase letters, digits, - and _")
        return value

    @property
    def defines(self) -> bool:
        return any(x is not None for x in (self.host, self.step, self.reachable))


@dataclass(frozen=True)
class HealthCheck:
    """A check bound to one device, with the site's overrides applied."""

    id: str  # the check's id in the KB / site config
    device: str
    title: str
    kind: str  # host | step | reachable
    spec: CheckModel
    step: Step | None = None  # the validated step of a step check

    @property
    def key(self) -> str:
        """Unique per site: device/check (the state.db row and the problem's fingerprint)."""
        return f"{self.device}/{self.id}"


def parse_checks(raw: Any, loc: tuple[str | int, ...], problems: list[str]) -> dict[str, Any]:
    """Validate a KB file's ``health:`` mapping: {id: (CheckModel, Step | None)}."""
    from agent.kb import validate_step

    out: dict[str, Any] = {}
    if raw is None:
        return out
    if not isinstance(raw, dict):
        problems.append(f"{loc[0]}: expected a mapping of check ids to checks")
        return out
    for cid, body in raw.items():
        here = (*loc, str(cid))
        if not isinstance(cid, str) or not CHECK_ID.match(cid):
            problems.append(f"{'.'.join(map(str, here))}: a check id is lowercase letters, "
                            "digits, - and _")  # fmt: skip
            continue
        try:
            model = CheckModel.model_validate(body)
        except ValidationError as exc:
            problems.extend(pydantic_problems(exc, here))
            continue
        step = None
        if model.step is not None:
            step = validate_step({"id": cid, **model.step}, (*here, "step"), problems)
            if step is None:
                continue
        out[cid] = (model, step)
    return out


def apply_site(model: CheckModel, site: SiteCheck) -> CheckModel:
    """The KB's check with the site's overrides."""
    changes: dict[str, Any] = {}
    for name in ("enabled", "interval", "cooldown", "repeat_interval", "recollect_interval",
                 "fail_after", "severity", "profile", "title"):  # fmt: skip
        value = getattr(site, name)
        if value is not None:
            changes[name] = value
    if site.max is not None and model.host is not None:
        changes["host"] = model.host.model_copy(update={"max": site.max})
    if model.expect is not None:
        upd = {
            k: getattr(site, k) for k in ("min", "max", "equals") if getattr(site, k) is not None
        }
        if upd:
            changes["expect"] = model.expect.model_copy(update=upd)
    return model.model_copy(update=changes)


# --- judging a result ------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One run of a check: ``ok`` True/False, or None when it could not be judged."""

    ok: bool | None
    message: str
    value: str = ""
    unreachable: bool = False  # the device could not be reached (inhibits its other checks)

    def with_message(self, message: str) -> Result:
        return replace(self, message=message)


def host_metric(metric: HostMetric) -> Result:
    import os

    import psutil

    try:
        if metric.metric == "disk_percent":
            value = psutil.disk_usage(metric.path).percent
            what = f"{metric.path} is {value:.1f}% full"
        elif metric.metric == "inode_percent":
            st = os.statvfs(metric.path)
            value = 100.0 * (st.f_files - st.f_ffree) / st.f_files if st.f_files else 0.0
            what = f"{metric.path} uses {value:.1f}% of its inodes"
        elif metric.metric == "memory_percent":
            value = psutil.virtual_memory().percent
            what = f"memory is {value:.1f}% used"
        else:
            value = os.getloadavg()[0] / (psutil.cpu_count() or 1)
            what = f"load per core is {value:.2f}"
    except OSError as exc:
        return Result(None, f"cannot read {metric.metric} of {metric.path}: {exc.strerror}")
    ok = value <= metric.max
    return Result(ok, f"{what} (limit {metric.max:g})", f"{value:.2f}")


_CONNECT_WORDS = ("no answer", "connection refused", "cannot connect", "timed out", "unreachable",
                  "no route", "authentication failed", "host key")  # fmt: skip


def judge_step(expect: Expect, res: StepResult, staging: Path) -> Result:
    """Judge a step's result (its facts and its artifacts in ``staging``)."""
    if res.status in ("failed", "timeout", "skipped"):
        err = res.error or res.status
        down = any(w in err.lower() for w in _CONNECT_WORDS)
        return Result(None if not down else False, f"the check's step {res.status}: {err}",
                      unreachable=down)  # fmt: skip
    if expect.compliant is not None:
        got = res.facts.get("compliant")
        ok = got is expect.compliant
        n = res.facts.get("violations", 0)
        return Result(ok, f"access {'compliant' if got else 'not compliant'} ({n} violations)",
                      str(got))  # fmt: skip
    if expect.match is not None or expect.not_match is not None:
        text = _text(res, staging)
        if expect.match is not None and not re.search(expect.match, text, re.M):
            return Result(False, f"the output does not match {expect.match!r}")
        if expect.not_match is not None and (m := re.search(expect.not_match, text, re.M)):
            line = text[text.rfind("\n", 0, m.start()) + 1 : text.find("\n", m.end())]
            return Result(False, f"the output matches {expect.not_match!r}: {line.strip()[:200]}")
        return Result(True, "the output is as expected")
    rows = _snmp_rows(res, staging)
    if rows is None:
        return Result(None, "the step wrote no SNMP rows to judge (expected <output>.json)")
    if expect.every is not None:
        return _every(expect, rows)
    if not rows:
        return Result(False, "no value returned")
    bad = [(name, v) for name, v in rows if not _compare(expect, v)]
    if bad:
        name, v = bad[0]
        return Result(False, f"{name} = {v} ({_wanted(expect)})", str(v))
    return Result(True, f"{len(rows)} value(s) as expected", str(rows[0][1]))


def _text(res: StepResult, staging: Path) -> str:
    parts = []
    for art in res.artifacts:
        if art.path.endswith((".txt", ".log", ".json")):
            try:
                parts.append((staging / art.path).read_text(errors="replace"))
            except OSError:
                continue
    return "\n".join(parts)


def _snmp_rows(res: StepResult, staging: Path) -> list[tuple[str, Any]] | None:
    for art in res.artifacts:
        if art.path.endswith(".json"):
            try:
                data = json.loads((staging / art.path).read_text())
            except (OSError, ValueError):
                return None
            if isinstance(data, list):
                return [
                    (str(r.get("name") or r.get("oid")), r.get("value"))
                    for r in data
                    if isinstance(r, dict)
                ]
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = re.match(r"^-?\d+(?:\.\d+)?", value.strip())
        if m:
            return float(m.group(0))
        m = re.search(r"\((-?\d+)\)", value)  # "up(1)"
        if m:
            return float(m.group(1))
    return None


def _same(want: int | float | str, got: Any) -> bool:
    if isinstance(want, str):
        return str(got) == want or (isinstance(got, str) and got.split("(")[0] == want)
    n = _number(got)
    return n is not None and n == float(want)


def _compare(expect: Expect, value: Any) -> bool:
    if expect.equals is not None and not _same(expect.equals, value):
        return False
    if expect.one_of is not None and not any(_same(w, value) for w in expect.one_of):
        return False
    if expect.min is not None or expect.max is not None:
        n = _number(value)
        if n is None:
            return False
        if expect.min is not None and n < expect.min:
            return False
        if expect.max is not None and n > expect.max:
            return False
    return True


def _wanted(expect: Expect) -> str:
    parts = []
    if expect.equals is not None:
        parts.append(f"expected {expect.equals}")
    if expect.one_of is not None:
        parts.append(f"expected one of {expect.one_of}")
    if expect.min is not None:
        parts.append(f"min {expect.min:g}")
    if expect.max is not None:
        parts.append(f"max {expect.max:g}")
    return ", ".join(parts)


def _every(expect: Expect, rows: list[tuple[str, Any]]) -> Result:
    assert expect.every is not None
    by_instance = {name.rsplit(".", 1)[-1]: (name, v) for name, v in rows}
    if expect.rows is not None:
        missing = [r for r in expect.rows if r not in by_instance]
        if missing:
            return Result(False, f"row(s) {', '.join(missing)} missing from the walk")
        chosen = [by_instance[r] for r in expect.rows]
    else:
        chosen = rows
    if not chosen:
        return Result(False, "the walk returned no rows")
    bad = [(n, v) for n, v in chosen if not _same(expect.every, v)]
    if bad:
        listed = ", ".join(f"{n} = {v}" for n, v in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        return Result(False, f"{len(bad)} of {len(chosen)} rows differ: {listed}{more}")
    return Result(True, f"all {len(chosen)} rows are {expect.every}")


def resolve_checks(settings: Any, kb: Any, source: str = "config") -> list[HealthCheck]:
    """Every enabled check of every device: the KB's, tuned or added by ``[[health]]``.

    ``host`` checks apply to the agent host only; a check whose step needs SSH or SNMP
    settings the device lacks is left out (as a profile's step would be skipped).
    Problems in ``[[health]]`` (unknown check, device or type) raise ValidationFailed.
    """
    from agent.errors import ValidationFailed
    from agent.kb import check_step_read_only, validate_step
    from agent.runner import _skip_reason

    problems: list[str] = []
    inventory = settings.inventory()
    names = {d.name for d in inventory}
    declared_ids = {cid for d in inventory for cid in kb.get(d.type).health}
    added: dict[tuple[str, str], tuple[CheckModel, Step | None]] = {}
    for i, sc in enumerate(settings.health):
        where = f"health[{i}]"
        if sc.device is not None and sc.device not in names:
            problems.append(f"{where}.device: no device {sc.device!r} in the inventory")
            continue
        if sc.type is not None and sc.type not in {d.type for d in inventory}:
            problems.append(f"{where}.type: no device of KB type {sc.type!r} in the inventory")
            continue
        if sc.defines:
            if sc.device is None:
                problems.append(f"{where}.device: a check defined here names its device")
                continue
            body = sc.model_dump(
                exclude={"check", "device", "type", "min", "max", "equals"}, exclude_none=True
            )
            try:
                model = CheckModel.model_validate(body)
            except ValidationError as exc:
                problems.extend(pydantic_problems(exc, ("health", i)))
                continue
            step = None
            if model.step is not None:
                step = validate_step({"id": sc.check, **model.step}, ("health", i, "step"),
                                     problems)  # fmt: skip
                if step is None:
                    continue
                # the device's type decides what may be sent to it, here as in its KB
                dtype = next(d.type for d in inventory if d.name == sc.device)
                before = len(problems)
                check_step_read_only(kb.get(dtype).read_only, step, f"health[{i}].step", problems)
                if len(problems) > before:
                    continue
            added[(sc.device, sc.check)] = (apply_site(model, sc), step)
        elif sc.check not in declared_ids:
            known = ", ".join(sorted(declared_ids)) or "none"
            problems.append(
                f"{where}.check: no check {sc.check!r} in the KB types of the inventory "
                f"(known: {known}); to add one, give host, step or reachable and a device"
            )
    if problems:
        raise ValidationFailed(source, problems)
    out: list[HealthCheck] = []
    for dev in inventory:
        kbtype = kb.get(dev.type)
        checks = dict(kbtype.health)
        checks.update({cid: v for (dname, cid), v in added.items() if dname == dev.name})
        for cid, (model, step) in checks.items():
            for sc in settings.health:
                if (
                    sc.check == cid
                    and not sc.defines
                    and sc.device in (None, dev.name)
                    and (sc.type in (None, dev.type))
                ):
                    model = apply_site(model, sc)
            if not model.enabled:
                continue
            if model.host is not None and not dev.is_local:
                continue
            if step is not None and _skip_reason(dev, step):
                continue
            if model.reachable == "snmp" and dev.snmp is None:
                continue
            if model.reachable == "ssh" and dev.ssh is None and not dev.is_local:
                continue
            kind = "host" if model.host else "step" if step else "reachable"
            out.append(HealthCheck(cid, dev.name, model.title or cid, kind, model, step))
    return out
