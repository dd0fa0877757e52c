"""Option models and helpers shared by the local and SSH collectors.

``local.command``/``ssh.command`` take the same options, as do ``local.file``/``ssh.file``
(``ssh.file`` adds ``since``); each collector adds its own checks on top.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from collectors.base import Duration, Facts, Options, Size, StepFailed, StepPartial

STDERR_CAP = 1024 * 1024  # a command's stderr kept at most (stderr.txt)


class CommandOptions(Options):
    command: str = Field(min_length=1)
    timeout: Duration = 60.0
    max_bytes: Size = 64 * 1024**2
    ok_exit_codes: tuple[int, ...] = (0,)
    missing_ok: bool = False
    output: str | None = None


class FileOptions(Options):
    path: str | tuple[str, ...]
    max_bytes: Size = 16 * 1024**2
    total_max_bytes: Size = 256 * 1024**2
    tail: bool = False
    missing_ok: bool = False

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        for p in (value,) if isinstance(value, str) else value:
            if not p.startswith("/"):
                raise ValueError(f"expected an absolute path or glob, got {p!r}")
        return value

    @property
    def patterns(self) -> tuple[str, ...]:
        return (self.path,) if isinstance(self.path, str) else self.path


_UNSAFE = re.compile(r"[^A-Za-z0-9._+@=/-]")


def file_artifact(path: str) -> str:
    """The bundle name for a copied file: ``/var/log/x y`` -> ``files/var/log/x_y``."""
    return "files/" + _UNSAFE.sub("_", path.lstrip("/"))


def files_outcome(facts: Facts, copied: list[str], errors: list[str]) -> Facts:
    """The facts of a file copy, or StepFailed (nothing copied) / StepPartial (some errors)."""
    if errors and not copied:
        raise StepFailed("; ".join(errors))
    if errors:
        raise StepPartial("; ".join(errors), facts)
    return facts


def last_line(data: bytes | bytearray, limit: int) -> str:
    """The last non-blank line of a command's stderr, cut to ``limit`` characters."""
    lines = data.decode("utf-8", "replace").strip().splitlines()
    return lines[-1][:limit] if lines else ""
