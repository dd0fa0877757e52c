"""Files the technician adds to a collection (``collect --attach``): screenshots, notes.

They go inside the bundle under ``attachments/`` (one encrypted delivery, never a second
channel), are listed in the manifest's ``attachments`` with size and sha256, and are
scrubbed like every artifact when they are text. Every file is checked (exists, is a
regular file, readable) before anything is collected.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from collectors.base import Artifact, ArtifactSink

log = logging.getLogger(__name__)
PREFIX = "attachments"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+@=-]")


@dataclass(frozen=True)
class Attachment:
    source: Path
    name: str  # the file's name inside ``attachments/`` (safe for any tar and file system)


def safe_name(name: str) -> str:
    return _UNSAFE.sub("_", name).lstrip(".") or "file"


def check_attachments(paths: Sequence[Path]) -> list[Attachment]:
    """Validate ``--attach`` files; ConfigError (exit 2) naming the first bad one."""
    out: list[Attachment] = []
    used: set[str] = set()
    for path in paths:
        if not path.exists():
            raise ConfigError(f"--attach {path}: no such file; nothing was collected")
        if path.is_dir():
            raise ConfigError(
                f"--attach {path}: is a directory; attach files one by one (one --attach "
                "per file); nothing was collected"
            )
        if not path.is_file():
            raise ConfigError(
                f"--attach {path}: not a regular file (attach files one by one); "
                "nothing was collected"
            )
        try:
            with open(path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise ConfigError(
                f"--attach {path}: cannot read it ({exc.strerror}); nothing was collected"
            ) from None
        base = name = safe_name(path.name)
        n = 1
        while name in used:
            n += 1
            stem, dot, ext = base.partition(".")
            name = f"{stem}-{n}{dot}{ext}"
        used.add(name)
        out.append(Attachment(path, name))
    return out


def stage_attachments(
    staging: Path, attachments: Sequence[Attachment]
) -> tuple[list[Artifact], dict[str, str]]:
    """Copy the files into the staging directory; returns the artifacts and copy errors."""
    sink = ArtifactSink(staging, PREFIX, default_max_bytes=2**62)
    errors: dict[str, str] = {}
    for att in attachments:
        try:
            with open(att.source, "rb") as src, sink.open(att.name) as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
        except OSError as exc:  # the file went away since the check: keep the collection
            log.warning("--attach %s: cannot copy it: %s", att.source, exc)
            errors[att.name] = f"cannot read {att.source}: {exc.strerror or exc}"
            sink.artifacts = [a for a in sink.artifacts if a.path != f"{PREFIX}/{att.name}"]
            (staging / PREFIX / att.name).unlink(missing_ok=True)
    return list(sink.artifacts), errors


def manifest_entries(
    attachments: Sequence[Attachment], artifacts: Sequence[Artifact], errors: dict[str, str]
) -> list[dict[str, Any]]:
    by_path = {a.path: a for a in artifacts}
    entries: list[dict[str, Any]] = []
    for att in attachments:
        art = by_path.get(f"{PREFIX}/{att.name}")
        entry: dict[str, Any] = {"path": f"{PREFIX}/{att.name}", "name": att.source.name}
        if art is None:
            entry["error"] = errors.get(att.name, "not copied")
        else:
            entry.update(size=art.size, sha256=art.sha256, scrubbed=art.scrubbed)
        entries.append(entry)
    return entries
