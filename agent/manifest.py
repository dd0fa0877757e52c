"""The bundle manifest, ``fieldtrace.bundle/1``, as the reading side checks it.

``manifest.json`` arrives from outside (a vendor engineer opens what a site sent), so it is
parsed under a size cap, as strict JSON (no duplicate keys, no NaN), and validated by the
models below before any field is used. Fields the reader relies on are typed strictly (a
string where a string belongs, an int that is not a bool); records may carry more keys than
listed here, so a newer writer's extra information does not make old readers refuse a
bundle, but those keys are never used to decide anything. Only ``format`` and ``steps`` are
required (the writer always sets the rest; a missing site is an unknown, untrusted one).
A problem is reported with its path, e.g.
``manifest.json: steps[3].artifacts[0].size: Input should be a valid integer``.

Every artifact path is checked by :func:`member_path_problem`: the same alphabet the
writer's artifact sink allows (``[A-Za-z0-9._+@=-]`` per component), so ``..``, ``.``,
absolute paths, empty components, backslashes, NUL, control characters and look-alike
Unicode names are impossible by construction.

:func:`printable` escapes terminal control characters in any text that came from a bundle.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.errors import pydantic_problems

FORMAT = "fieldtrace.bundle/1"
SIGNATURE_MEMBERS = ("manifest.json", "manifest.sig", "signer.pub")
# manifest.json is read whole into memory and parsed: 4 MiB holds ~13,000 artifact entries
# (a real entry is ~300 bytes), and the worst case, 4 MiB of hostile JSON that is a million
# empty objects, peaks near 140 MiB of process memory (8 MiB: 255 MiB; docs/bundle-reading.md)
MANIFEST_MAX = 4 * 1024 * 1024
MAX_ARTIFACTS = 20_000
PATH_MAX = 4096  # bytes, as Linux's PATH_MAX
COMPONENT_MAX = 255  # bytes, as NAME_MAX
MEMBER_SIZE_MAX = 1 << 50  # 1 PiB: beyond any real artifact, small enough for exact sums

_COMPONENT = re.compile(r"[A-Za-z0-9._+@=-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# C0/C1 controls, DEL, line/paragraph separators, bidi overrides and isolates, BOM, and lone
# surrogates (a name decoded with surrogateescape): what a terminal could act on, or what
# could make text read differently from what it is
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)


def printable(value: object) -> str:
    """``value`` as text safe to print on a terminal: control characters become ``\\xNN`` or
    ``\\uNNNN`` escapes (so ESC sequences, carriage returns and bidi tricks show as text)."""
    text = value if isinstance(value, str) else str(value)
    return _UNPRINTABLE.sub(_escape, text)


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def component_problem(part: str) -> str | None:
    """Why ``part`` is not a safe single path component (None when it is)."""
    if part == "":
        return "has an empty component"
    if part in (".", ".."):
        return f"has a {part!r} component"
    if not _COMPONENT.fullmatch(part):
        return (
            "has characters outside [A-Za-z0-9._+@=-] (fieldtrace never writes such names: "
            "no spaces, slashes, backslashes, NUL, controls or non-ASCII)"
        )
    if len(part) > COMPONENT_MAX:
        return f"has a component longer than {COMPONENT_MAX} bytes"
    return None


def member_path_problem(rel: str) -> str | None:
    """Why ``rel`` is not a safe relative member path (None when it is)."""
    if not rel:
        return "is empty"
    if len(rel.encode("utf-8", "surrogatepass")) > PATH_MAX:
        return f"is longer than {PATH_MAX} bytes"
    if rel.startswith("/"):
        return "is absolute"
    for part in rel.split("/"):
        why = component_problem(part)
        if why:
            return why
    return None


def _safe_path(rel: str) -> str:
    why = member_path_problem(rel)
    if why:
        raise ValueError(f"{printable(repr(rel))} {why}")
    if rel in SIGNATURE_MEMBERS:
        raise ValueError(f"path {rel!r} is reserved for the bundle's signature members")
    return rel


def _sha256(value: str) -> str:
    if not _SHA256.fullmatch(value):
        raise ValueError("expected 64 lowercase hex digits")
    return value


MemberPath = Annotated[str, AfterValidator(_safe_path)]
Sha256 = Annotated[str, AfterValidator(_sha256)]
Size = Annotated[int, Field(ge=0, le=MEMBER_SIZE_MAX)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)


class ArtifactEntry(_Record):
    path: MemberPath
    size: Size
    sha256: Sha256
    truncated: bool = False
    scrubbed: dict[str, int] = {}


class AttachmentEntry(_Record):
    """A technician's file (``collect --attach``): a member when it has ``sha256``, else only
    a record of why it could not be copied (``error``)."""

    path: MemberPath
    name: str
    size: Size | None = None
    sha256: Sha256 | None = None
    scrubbed: dict[str, int] = {}
    error: str | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> AttachmentEntry:
        if (self.size is None) != (self.sha256 is None):
            raise ValueError("an attachment has both size and sha256, or neither")
        return self


class StepEntry(_Record):
    device: str
    id: str
    collector: str = ""
    options: dict[str, Any] = {}
    status: str = ""
    error: str | None = None
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    facts: dict[str, Any] = {}
    artifacts: list[ArtifactEntry] = []


class SiteEntry(_Record):
    company: str = ""
    contract: str = ""
    contact_email: str = ""
    slug: str = ""


class JobEntry(_Record):
    id: str = ""
    trigger: str = ""
    requested_by: str = ""
    ticket: str | None = None
    profile: str = ""
    devices: list[str] = []
    created: str = ""
    started: str = ""
    finished: str = ""
    interrupted: bool = False
    subject: str = ""
    description: str = ""


class Manifest(_Record):
    format: str
    bundle_id: str = ""
    agent: dict[str, Any] = {}
    site: SiteEntry = SiteEntry()
    job: JobEntry = JobEntry()
    kb: dict[str, Any] = {}
    devices: list[dict[str, Any]] = []
    steps: list[StepEntry]
    attachments: list[AttachmentEntry] = []
    summary: dict[str, Any] = {}
    signer: str | None = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value != FORMAT:
            raise ValueError(
                f"unsupported bundle format {printable(repr(value))}; this fieldtrace reads "
                f"{FORMAT} (a newer format needs a newer fieldtrace)"
            )
        return value

    @model_validator(mode="after")
    def _members_are_a_tree(self) -> Manifest:
        seen: dict[str, str] = {}
        for where, rel in self._listed():
            if rel in seen:
                raise ValueError(f"{where}: {rel!r} is listed twice (also at {seen[rel]})")
            seen[rel] = where
        if len(seen) > MAX_ARTIFACTS:
            raise ValueError(f"lists {len(seen)} files; at most {MAX_ARTIFACTS}")
        for rel, where in seen.items():  # "a/b" and "a/b/c" cannot both be files
            parts = rel.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent in seen:
                    raise ValueError(f"{where}: {rel!r} lies under the file {parent!r}")
        return self

    def _listed(self) -> list[tuple[str, str]]:
        out = [
            (f"steps[{i}].artifacts[{j}].path", a.path)
            for i, s in enumerate(self.steps)
            for j, a in enumerate(s.artifacts)
        ]
        out += [
            (f"attachments[{k}].path", a.path)
            for k, a in enumerate(self.attachments)
            if a.sha256 is not None
        ]
        return out

    def members(self) -> dict[str, tuple[int, str]]:
        """Every file the bundle must hold besides the signature members: path -> (size,
        sha256)."""
        out = {a.path: (a.size, a.sha256) for s in self.steps for a in s.artifacts}
        for att in self.attachments:
            if att.sha256 is not None and att.size is not None:
                out[att.path] = (att.size, att.sha256)
        return out


class ManifestInvalid(ValueError):
    """manifest.json failed to parse or validate; ``problems`` are ``path: reason`` lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestInvalid([f"key {printable(repr(key))} appears twice in one object"])
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ManifestInvalid([f"{name} is not a JSON number"])


def parse_manifest(raw: bytes) -> tuple[Manifest, dict[str, Any]]:
    """Parse and validate manifest.json's bytes -> (model, plain dict); ManifestInvalid."""
    if len(raw) > MANIFEST_MAX:
        raise ManifestInvalid([f"is {len(raw)} bytes; at most {MANIFEST_MAX}"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestInvalid([f"not UTF-8 (byte {exc.start})"]) from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ManifestInvalid([f"not valid JSON: {exc.msg} (line {exc.lineno})"]) from None
    except RecursionError:
        raise ManifestInvalid(["not valid JSON: nested too deeply"]) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        if isinstance(exc, ManifestInvalid):
            raise
        raise ManifestInvalid([f"not valid JSON: {exc}"]) from None
    if not isinstance(data, dict):
        raise ManifestInvalid(["expected a JSON object at the top"])
    try:
        model = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestInvalid([printable(p) for p in pydantic_problems(exc)]) from None
    except RecursionError:
        raise ManifestInvalid(["nested too deeply"]) from None
    return model, data
