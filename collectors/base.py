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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, ClassVar, Literal, Protocol

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
    # what the sink saw while the collector wrote (empty when written by other means):
    written_sha256: str = ""
    binary: bool = False  # a NUL byte in the first 8 KiB: never scrubbed
    scrubbed_on_write: bool = False  # text scrubbed by the sink; ``scrubbed`` holds its counts


BINARY_PROBE = 8192  # bytes looked at to tell binary from text (a NUL among them = binary)


_SAFE_NAME = re.compile(r"^[A-Za-z0-9._+@=-][A-Za-z0-9._+@=/-]*$")


class ScrubbingStream(Protocol):
    """Scrubs one text stream pushed in pieces (the agent's ``agent.scrub.ScrubStream``)."""

    @property
    def counts(self) -> Mapping[str, int]: ...

    def feed(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


class TextScrubber(Protocol):
    def stream(self) -> ScrubbingStream: ...


class CappedWriter:
    """A binary writer that stops at ``max_bytes`` and remembers it truncated.

    It hashes what reaches the file. With a scrubber, a text artifact (no NUL byte in its
    first 8 KiB) is scrubbed on its way to the file, so the bundle step has nothing left to
    do for it; the cap applies to what the collector wrote, ``artifact.size`` to the file.
    """

    def __init__(
        self,
        sink: ArtifactSink,
        fh: IO[bytes],
        artifact: Artifact,
        max_bytes: int,
        scrubber: TextScrubber | None = None,
    ):
        self._sink = sink
        self._fh = fh
        self.artifact = artifact
        self.max_bytes = max_bytes
        self._sha = hashlib.sha256()
        self._taken = 0  # bytes accepted from the collector
        self._stream = scrubber.stream() if scrubber is not None else None
        self._head: bytearray | None = bytearray() if scrubber is not None else None

    @property
    def full(self) -> bool:
        return self._taken >= self.max_bytes

    def write(self, data: bytes) -> int:
        self._sink.check_open()
        room = self.max_bytes - self._taken
        if len(data) > room:
            data = data[: max(room, 0)]
            self.artifact.truncated = True
        if not data:
            return 0
        self._taken += len(data)
        if self._head is not None:  # text or binary is not known yet
            self._head += data
            if len(self._head) >= BINARY_PROBE:
                self._decide()
        elif self._stream is not None:
            self._emit(self._stream.feed(data))
        else:
            if self.artifact.size < BINARY_PROBE and 0 in data[: BINARY_PROBE - self.artifact.size]:
                self.artifact.binary = True
            self._emit(data)
        return len(data)

    def _decide(self) -> None:
        assert self._head is not None and self._stream is not None
        head, self._head = bytes(self._head), None
        if 0 in head[:BINARY_PROBE]:
            self.artifact.binary = True
            self._stream = None
            self._emit(head)
        else:
            self._emit(self._stream.feed(head))

    def _emit(self, data: bytes) -> None:
        if data:
            self._sink.check_open()
            self._fh.write(data)
            self._sha.update(data)
            self.artifact.size += len(data)

    def finish(self) -> None:
        """Flush what a scrubber holds back and record the digest of the file."""
        if self._head is not None:
            self._decide()
        if self._stream is not None:
            self._emit(self._stream.finish())
            self.artifact.scrubbed = {k: v for k, v in sorted(self._stream.counts.items()) if v}
            self.artifact.scrubbed_on_write = True
        self.artifact.written_sha256 = self._sha.hexdigest()


class ArtifactSink:
    """Where a step's artifacts go: a private directory, with byte caps and a seal.

    The runner seals the sink when a step's deadline passes or the job is cancelled; any
    later write raises ``SinkClosed``, so an abandoned collector thread cannot change what
    has already been hashed into the manifest.
    """

    def __init__(
        self,
        root: Path,
        prefix: str,
        default_max_bytes: int = 256 * 1024**2,
        scrubber: TextScrubber | None = None,
    ):
        self.root = root
        self.scrubber = scrubber
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
            cap = max_bytes or self.default_max_bytes
            writer = CappedWriter(self, fh, artifact, cap, self.scrubber)
            try:
                yield writer
            finally:  # what the collector wrote is kept (and scrubbed) even if it then failed
                if not self._sealed.is_set():
                    writer.finish()

    def reserve(self, name: str) -> Path:
        """Claim artifact ``name`` for a file another process writes (e.g. a capture tool).

        The file must not exist yet and must be complete when the step returns; the runner
        records its real size and sha256 afterwards.
        """
        self.check_open()
        return self._claim(name)[0]

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


def _no_progress(facts: Facts) -> None:
    pass


@dataclass
class StepContext:
    """Everything a collector gets besides its options.

    ``session(kind)`` returns the device's open session of that kind (``"ssh"``,
    ``"snmp"``), opened by the agent with credentials it resolved, shared by all the steps
    of the device in this job and closed by the runner when they are done. When the session
    cannot be opened it raises ``StepFailed`` with a message saying why and what to do; the
    failure is remembered, so a device that is down costs one connection timeout per job,
    not one per step.

    Open-ended collectors (captures, ``Collector.background_ok``) may run in the background
    while the device's next steps run: they set ``ready`` once they are recording (the
    runner starts the next step only then), and stop normally, keeping what they have, when
    the runner sets ``finish`` (the profile's other steps are done). ``progress(facts)``
    reports live counters (shown by the CLI); it is optional and cheap.
    """

    sink: ArtifactSink
    deadline: float  # time.monotonic() value
    cancel: threading.Event
    opener: SessionOpener = _no_sessions
    ready: threading.Event = field(default_factory=threading.Event)
    finish: threading.Event = field(default_factory=threading.Event)
    progress: Callable[[Facts], None] = _no_progress

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
    background_ok: ClassVar[bool] = False  # may run with `background: true` (see StepContext)

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
