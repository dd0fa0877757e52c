"""The collector contract.

A collector is a small class that gathers one kind of evidence from one device:

* ``name``: the dotted name KB steps use (``"local.command"``);
* ``transport``: what the device must offer for the step to run (``"local"`` for the agent's
  own host, later ``"ssh"``, ``"snmp"``); the planner skips steps a device cannot serve;
* ``Options``: a frozen pydantic model (``extra="forbid"``) validated when the KB loads, so a
  typo in a KB file is an error at load time, never at 3 a.m. on site;
* ``collect(ctx, device, options) -> facts``: writes artifacts only through ``ctx.sink``,
  returns a small JSON-able dict for the manifest.

The runner owns everything else: deadlines, cancellation, exception capture, scrubbing,
hashing and the manifest. A collector signals an expected outcome by raising one of the
``Step*`` exceptions below; anything else it raises is recorded as a bug (with traceback in
the local log) and the job goes on. Collectors never read settings or secrets, never
encrypt, upload or schedule.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict

Facts = dict[str, Any]
Transport = Literal["local", "ssh", "snmp", "any"]  # any: the collector decides

# --- units -------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
}  # fmt: skip


def parse_duration(value: object) -> float:
    """``"90s"``, ``"5m"``, ``"1.5h"``, ``"250ms"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "90s", got {value!r}')
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f'expected a duration like "90s" or "5m", got {value!r}')
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"expected a positive duration, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """``"200MB"``, ``"64KiB"``, ``"1G"`` or a number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError(f'expected a size like "200MB", got {value!r}')
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f'expected a size like "200MB" or "64KiB", got {value!r}')
        size = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])
    if size <= 0:
        raise ValueError(f"expected a positive size, got {value!r}")
    return size


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class Options(BaseModel):
    """Base of every collector's options: frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- outcomes ----------------------------------------------------------------------------


class StepError(Exception):
    """An expected step outcome; the runner records ``status`` and ``str(self)``."""

    status: ClassVar[str] = "failed"


class StepFailed(StepError):
    status = "failed"


class StepSkipped(StepError):
    status = "skipped"


class StepTimeout(StepError):
    status = "timeout"


class StepPartial(StepError):
    """The step finished, but part of what it was asked for could not be collected."""

    status = "partial"

    def __init__(self, message: str, facts: Facts | None = None) -> None:
        super().__init__(message)
        self.facts = facts or {}


class SinkClosed(StepError):
    """The runner sealed the sink (deadline passed or job cancelled)."""

    status = "timeout"


# --- the artifact sink -------------------------------------------------------------------


@dataclass
class Artifact:
    """One file written by a step, relative to the staging root (``<device>/<step>/<name>``)."""

    path: str
    size: int = 0
    truncated: bool = False
    sha256: str = ""  # set by the runner after scrubbing
    scrubbed: dict[str, int] = field(default_factory=dict)  # replacements per scrub rule


_SAFE_NAME = re.compile(r"^[A-Za-z0-9._+@=-][A-Za-z0-9._+@=/-]*$")


class CappedWriter:
    """A binary writer that stops at ``max_bytes`` and remembers it truncated."""

    def __init__(self, sink: ArtifactSink, fh: IO[bytes], artifact: Artifact, max_bytes: int):
        self._sink = sink
        self._fh = fh
        self.artifact = artifact
        self.max_bytes = max_bytes

    @property
    def full(self) -> bool:
        return self.artifact.size >= self.max_bytes

    def write(self, data: bytes) -> int:
        self._sink.check_open()
        room = self.max_bytes - self.artifact.size
        if len(data) > room:
            data = data[: max(room, 0)]
            self.artifact.truncated = True
        if data:
            self._fh.write(data)
            self.artifact.size += len(data)
        return len(data)


class ArtifactSink:
    """Where a step's artifacts go: a private directory, with byte caps and a seal.

    The runner seals the sink when a step's deadline passes or the job is cancelled; any
    later write raises ``SinkClosed``, so an abandoned collector thread cannot change what
    has already been hashed into the manifest.
    """

    def __init__(self, root: Path, prefix: str, default_max_bytes: int = 256 * 1024**2):
        self.root = root
        self.prefix = prefix.strip("/")
        self.default_max_bytes = default_max_bytes
        self.artifacts: list[Artifact] = []
        self._sealed = threading.Event()
        self._lock = threading.Lock()

    def check_open(self) -> None:
        if self._sealed.is_set():
            raise SinkClosed("the step's deadline passed; output after it was discarded")

    def seal(self) -> None:
        self._sealed.set()

    def _claim(self, name: str) -> tuple[Path, Artifact]:
        if not _SAFE_NAME.match(name) or ".." in name.split("/"):
            raise ValueError(f"unsafe artifact name {name!r}")
        rel = f"{self.prefix}/{name}"
        with self._lock:
            if any(a.path == rel for a in self.artifacts):
                raise ValueError(f"artifact {rel!r} written twice")
            artifact = Artifact(rel)
            self.artifacts.append(artifact)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path, artifact

    @contextmanager
    def open(self, name: str, max_bytes: int | None = None) -> Iterator[CappedWriter]:
        """Open artifact ``name`` for streaming writes, capped at ``max_bytes``."""
        self.check_open()
        path, artifact = self._claim(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb", buffering=1024 * 1024) as fh:
            yield CappedWriter(self, fh, artifact, max_bytes or self.default_max_bytes)

    def write_bytes(self, name: str, data: bytes, max_bytes: int | None = None) -> Artifact:
        with self.open(name, max_bytes) as w:
            w.write(data)
        return w.artifact

    def write_text(self, name: str, text: str, max_bytes: int | None = None) -> Artifact:
        return self.write_bytes(name, text.encode("utf-8", "replace"), max_bytes)


# --- the step context --------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    """What a collector may know about a device: identity and its KB type's hints."""

    name: str
    type: str
    address: str
    kb: dict[str, Any] = field(default_factory=dict)
    # for access.check: vendor support networks and where the firewall is (agent.access)
    access: dict[str, Any] = field(default_factory=dict)


SessionOpener = Callable[[str], Any]


def _no_sessions(kind: str) -> Any:
    raise StepFailed(f"no {kind} session is available for this device")


@dataclass
class StepContext:
    """Everything a collector gets besides its options.

    ``session(kind)`` returns the device's open session of that kind (``"ssh"``,
    ``"snmp"``), opened by the agent with credentials it resolved, shared by all the steps
    of the device in this job and closed by the runner when they are done. When the session
    cannot be opened it raises ``StepFailed`` with a message saying why and what to do; the
    failure is remembered, so a device that is down costs one connection timeout per job,
    not one per step.
    """

    sink: ArtifactSink
    deadline: float  # time.monotonic() value
    cancel: threading.Event
    opener: SessionOpener = _no_sessions

    def session(self, kind: str) -> Any:
        return self.opener(kind)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def check(self) -> None:
        """Raise if the step should stop now (cancelled or past its deadline)."""
        if self.cancel.is_set():
            raise StepTimeout("cancelled")
        if time.monotonic() >= self.deadline:
            raise StepTimeout("deadline reached")


class Collector:
    """Base class: subclasses set ``name``, ``transport``, ``Options``, ``collect``."""

    name: ClassVar[str]
    transport: ClassVar[Transport] = "local"
    Options: ClassVar[type[Options]] = Options
    default_deadline: ClassVar[float] = 60.0
    summary: ClassVar[str] = ""

    def deadline_for(self, options: Any) -> float:
        """The step's deadline in seconds when the KB step gives none."""
        timeout = getattr(options, "timeout", None)
        return float(timeout) + 5.0 if timeout else self.default_deadline

    def collect(self, ctx: StepContext, device: DeviceInfo, options: Any) -> Facts:
        raise NotImplementedError


def sha256_file(path: Path, bufsize: int = 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()
