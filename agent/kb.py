"""The knowledge base: one YAML file per device type, validated completely at load.

Shipped types live in ``config/kb/`` (package data); ``[kb] paths`` in the site config add
directories whose types replace shipped ones of the same name. Every problem is reported as
``file: path.to[2].field: reason``; a KB with any problem is refused as a whole.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent import readonly
from agent.errors import ConfigError, ValidationFailed, format_path, pydantic_problems
from collectors import registry
from collectors.base import Options, parse_duration

STEP_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
TYPE_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# keys of a step that belong to the runner, not to the collector's options
STEP_KEYS = {"id", "collector", "title", "deadline", "background", "until"}
UNTIL = ("end-of-profile", "duration")  # when a background step stops (besides its own caps)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


class SshHints(_Model):
    """How to talk to the device over SSH (used by the ssh.* collectors)."""

    mode: Literal["exec", "shell"] = "exec"
    prompt: str | None = None
    on_open: list[str] = []
    failure_strings: list[str] = []
    pager: str | None = None
    pager_answer: str = " "  # what to send at a pager prompt (ssh.shell)

    _check_prompt = field_validator("prompt", "pager")(_regex)


class ReadOnly(_Model):
    """``read_only``: which CLI family's read-only defaults apply, and what else is allowed
    (patterns: see agent/readonly.py and docs/read-only.md)."""

    cli: Literal["linux", "network", "cisco", "huawei", "junos", "fortinet", "mikrotik"] | None = (
        None
    )
    allow: list[str] = []


class RemoteAccess(_Model):
    port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"
    purpose: str = ""


class _ProfileModel(_Model):
    title: str
    description: str = ""
    steps: list[dict[str, Any]] = Field(min_length=1)


class _KbModel(_Model):
    type: str = Field(pattern=TYPE_RE)
    title: str
    description: str = ""
    version: str = ""
    ssh: SshHints | None = None
    read_only: ReadOnly = ReadOnly()
    remote_access: list[RemoteAccess] = []
    profiles: dict[str, _ProfileModel] = Field(min_length=1)
    health: dict[str, Any] | None = None  # validated by agent.health.parse_checks


@dataclass(frozen=True)
class Step:
    """One validated KB step: which collector, with which options, and its deadline."""

    id: str
    collector: str
    options: Options
    title: str = ""
    deadline: float | None = None
    background: bool = False  # runs while the device's next steps run
    until: str | None = None  # background only: "end-of-profile" (default) or "duration"

    def options_dict(self) -> dict[str, Any]:
        return self.options.model_dump(mode="json", exclude_defaults=True)


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    description: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class KbType:
    type: str
    title: str
    description: str
    version: str
    sha256: str
    source: str
    remote_access: tuple[RemoteAccess, ...]
    profiles: dict[str, Profile]
    ssh: SshHints | None = None
    health: dict[str, Any] = field(default_factory=dict)  # id -> (CheckModel, Step | None)
    read_only: readonly.Policy = field(default_factory=lambda: readonly.make_policy(None, [])[0])

    def hints(self) -> dict[str, Any]:
        """What collectors may know of the type (transport hints), JSON-able."""
        return {
            "type": self.type,
            "ssh": self.ssh.model_dump() if self.ssh else None,
            "remote_access": [r.model_dump() for r in self.remote_access],
        }


@dataclass
class KnowledgeBase:
    types: dict[str, KbType] = field(default_factory=dict)

    def get(self, name: str) -> KbType:
        try:
            return self.types[name]
        except KeyError:
            known = ", ".join(sorted(self.types)) or "none"
            raise ConfigError(f"unknown KB type {name!r} (known: {known})") from None


def _validate_step(raw: Any, loc: tuple[str | int, ...], problems: list[str]) -> Step | None:
    where = format_path(loc)
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping like {{id: ..., collector: ...}}")
        return None
    step_id, name = raw.get("id"), raw.get("collector")
    ok = True
    if not isinstance(step_id, str) or not STEP_ID_RE.match(step_id):
        problems.append(
            f"{where}.id: expected a short lowercase id like 'version' (letters, digits, - _), "
            f"got {step_id!r}"
        )
        ok = False
    if not isinstance(name, str):
        problems.append(f"{where}.collector: required key is missing")
        return None
    try:
        collector = registry.get(name)
    except KeyError:
        problems.append(
            f"{where}.collector: unknown collector {name!r} (known: {', '.join(registry.names())})"
        )
        return None
    deadline = None
    if "deadline" in raw:
        try:
            deadline = parse_duration(raw["deadline"])
        except ValueError as exc:
            problems.append(f"{where}.deadline: {exc}")
            ok = False
    background, until = raw.get("background", False), raw.get("until")
    if not isinstance(background, bool):
        problems.append(f"{where}.background: expected true or false, got {background!r}")
        ok = False
    elif background and not collector.background_ok:
        problems.append(
            f"{where}.background: {name} cannot run in the background (only captures can)"
        )
        ok = False
    if until is not None and until not in UNTIL:
        problems.append(f"{where}.until: expected one of {', '.join(UNTIL)}, got {until!r}")
        ok = False
    elif until is not None and not background:
        problems.append(f"{where}.until: only for background steps (add background: true)")
        ok = False
    opts = {k: v for k, v in raw.items() if k not in STEP_KEYS}
    try:
        options = collector.Options.model_validate(opts)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, loc))
        return None
    if not ok:
        return None
    assert isinstance(step_id, str)
    if background:
        until = until or "end-of-profile"
    return Step(step_id, name, options, str(raw.get("title", "")), deadline, background, until)


validate_step = _validate_step  # for the health checks' steps

# the collectors whose commands reach a device or this host, and the slot that checks them
_COMMAND_SLOTS: dict[str, readonly.Slot] = {
    "ssh.shell": "ssh.shell",
    "ssh.command": "ssh.command",
    "local.command": "local.command",
}


def _step_commands(step: Step) -> list[tuple[str, str]]:
    """(path below the step, command) of every command a step sends."""
    command = getattr(step.options, "command", None)
    if step.collector == "ssh.shell":
        out = [("command", command)] if command else []
        commands = getattr(step.options, "commands", ())
        return out + [(f"commands[{i}]", c) for i, c in enumerate(commands)]
    return [("command", command)] if isinstance(command, str) else []


def _check_read_only(
    policy: readonly.Policy, slot: readonly.Slot, where: str, command: str, problems: list[str]
) -> None:
    """A command the type can send must be on its allow-list (docs/read-only.md)."""
    try:
        policy.check(slot, command)
    except readonly.Refused as exc:
        problems.append(f"{where}: {command!r} {exc}")


def check_step_read_only(
    policy: readonly.Policy, step: Step, where: str, problems: list[str]
) -> None:
    """Every command ``step`` would send, checked against the type's allow-list."""
    slot = _COMMAND_SLOTS.get(step.collector)
    if slot is not None:
        for sub, cmd in _step_commands(step):
            _check_read_only(policy, slot, f"{where}.{sub}", cmd, problems)


def _read_only_of(data: dict[str, Any]) -> ReadOnly:
    """The ``read_only`` section when the file as a whole did not validate (its own
    problems were reported with the rest); the defaults if it is itself wrong."""
    try:
        return ReadOnly.model_validate(data.get("read_only") or {})
    except ValidationError:
        return ReadOnly()


def parse_kb(text: str, source: str, expected_type: str | None = None) -> KbType:
    """Validate one KB file's text; ValidationFailed lists every problem found."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ValidationFailed(source, [f"{where}not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ValidationFailed(source, ["expected a mapping with type, title and profiles"])
    # every problem at once: a missing title must not hide the steps' problems
    problems: list[str] = []
    model: _KbModel | None = None
    try:
        model = _KbModel.model_validate(data)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc))
    raw_type = data.get("type")
    if expected_type is not None and isinstance(raw_type, str) and raw_type != expected_type:
        problems.append(
            f"type: {raw_type!r} does not match the file name; name the file {raw_type}.yaml"
        )
    ro = model.read_only if model is not None else _read_only_of(data)
    policy, policy_problems = readonly.make_policy(ro.cli, ro.allow)
    problems.extend(policy_problems)
    if model is not None and model.ssh is not None:
        for i, cmd in enumerate(model.ssh.on_open):
            _check_read_only(policy, "ssh.on_open", f"ssh.on_open[{i}]", cmd, problems)
        try:
            readonly.check_pager_answer(model.ssh.pager_answer)
        except readonly.Refused as exc:
            problems.append(f"ssh.pager_answer: {exc}")
    raw_profiles = data.get("profiles")
    steps_of: dict[str, tuple[Step, ...]] = {}
    for pname, prof in (raw_profiles if isinstance(raw_profiles, dict) else {}).items():
        if not STEP_ID_RE.match(str(pname)):
            problems.append(f"profiles.{pname}: profile names are lowercase letters, digits, - _")
        raw_steps = prof.get("steps") if isinstance(prof, dict) else None
        steps: list[Step] = []
        seen: set[str] = set()
        # what is not a list of mappings was reported by the model above
        for i, raw in enumerate(raw_steps if isinstance(raw_steps, list) else []):
            if not isinstance(raw, dict):
                continue
            step = _validate_step(raw, ("profiles", pname, "steps", i), problems)
            if step is None:
                continue
            if step.id in seen:
                problems.append(
                    f"profiles.{pname}.steps[{i}].id: duplicate step id {step.id!r} in this profile"
                )
            seen.add(step.id)
            steps.append(step)
            check_step_read_only(policy, step, f"profiles.{pname}.steps[{i}]", problems)
        steps_of[str(pname)] = tuple(steps)
    from agent.health import parse_checks

    health = parse_checks(data.get("health"), ("health",), problems)
    for cid, (check, hstep) in health.items():
        if check.profile not in steps_of:
            problems.append(
                f"health.{cid}.profile: no profile {check.profile!r} in this type "
                f"(profiles: {', '.join(sorted(steps_of))})"
            )
        if hstep is not None:
            check_step_read_only(policy, hstep, f"health.{cid}.step", problems)
    if problems or model is None:
        raise ValidationFailed(source, problems)
    profiles = {
        name: Profile(name, prof.title, prof.description, steps_of[name])
        for name, prof in model.profiles.items()
    }
    return KbType(
        type=model.type,
        title=model.title,
        description=model.description,
        version=model.version,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        source=source,
        remote_access=tuple(model.remote_access),
        profiles=profiles,
        ssh=model.ssh,
        health=health,
        read_only=policy,
    )


def load_kb_file(path: Path, display: str | None = None) -> KbType:
    source = display or str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    return parse_kb(text, source, expected_type=path.stem)


def shipped_kb_dir() -> Path:
    return Path(str(resources.files("config") / "kb"))


def _kb_files(directory: Path) -> list[Path]:
    try:
        return sorted(
            p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
        )
    except OSError as exc:
        raise ConfigError(
            f"{directory}: cannot list the KB directory: {exc.strerror or exc} (fix its "
            "permissions, or [kb] paths)"
        ) from None


def load_kb(
    site_paths: list[Path] | tuple[Path, ...] = (), source: str = "config"
) -> KnowledgeBase:
    """Shipped types, then each site directory in order (same name replaces)."""
    kb = KnowledgeBase()
    problems: list[str] = []
    dirs = [shipped_kb_dir()]
    for i, d in enumerate(site_paths):
        if not d.is_dir():
            raise ConfigError(f"{source}: kb.paths[{i}]: {d}: directory not found (fix [kb] paths)")
        dirs.append(d)
    for d in dirs:
        for path in _kb_files(d):
            try:
                t = load_kb_file(path)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
            kb.types[t.type] = t
    if problems:
        raise ConfigError("\n".join(problems))
    return kb
