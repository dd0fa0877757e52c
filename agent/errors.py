"""Errors that reach the user: each carries its message and the CLI exit code."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

EXIT_OK = 0
EXIT_PARTIAL = 1  # done, with failures (partial bundle, violations found)
EXIT_USAGE = 2  # usage or configuration error; nothing touched
EXIT_RUNTIME = 3  # runtime error; nothing lost
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C before anything was kept (128 + SIGINT, as shells)


class FieldtraceError(Exception):
    """Base of user-facing errors; ``str(self)`` is the whole message."""

    exit_code = EXIT_RUNTIME
    label = "error"  # the CLI prints ``fieldtrace: LABEL: message``


class ConfigError(FieldtraceError):
    """Bad site config, KB file, secret reference or command-line argument (exit 2)."""

    exit_code = EXIT_USAGE


class ValidationFailed(ConfigError):
    """Several problems in one file; the message lists each on its own line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class RuntimeFailure(FieldtraceError):
    """Something failed while working; the message says what was kept (exit 3)."""

    exit_code = EXIT_RUNTIME


class Interrupted(FieldtraceError):
    """Stopped by the user (Ctrl-C) with nothing kept; the message says so (exit 130)."""

    exit_code = EXIT_INTERRUPTED
    label = "interrupted"


_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list"}
# fields holding a discriminated union: pydantic puts the chosen tag (e.g. the helpdesk
# backend) after the field in the error path; users never wrote it, so it is dropped
_TAGGED_FIELDS = {"helpdesk"}


def pydantic_problems(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[str]:
    """Turn a pydantic ValidationError into ``path.to[2].field: reason`` lines."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = [*prefix, *err["loc"]]
        # drop pydantic's union/tag markers such as "function-after[...]" from the path
        loc = [p for p in loc if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]
        loc = [p for i, p in enumerate(loc) if not (i and loc[i - 1] in _TAGGED_FIELDS)]
        path = format_path(loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the documented keys)"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "string_pattern_mismatch":
            pattern = str((err.get("ctx") or {}).get("pattern", ""))
            msg = f"{pattern_text(pattern)}, got {err['input']!r}"
        problems.append(f"{path}: {msg}" if path else msg)
    return problems


def format_path(loc: list[str | int] | tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_CLASS_WORDS = (("A-Za-z", "letters"), ("a-z", "lowercase letters"), ("A-Z", "capitals"),
                ("0-9", "digits"))  # fmt: skip
_SIMPLE_RE = re.compile(
    r"\^\[([^\]]+)\](?:\[([^\]]+)\]\{0,(\d+)\})?\$|\^\[([^\]]+)\]\{(\d+),(\d+)\}\$"
)


def _class_text(cls: str) -> str:
    words = []
    for spec, word in _CLASS_WORDS:
        if spec in cls:
            words.append(word)
            cls = cls.replace(spec, "")
    words += [repr(c) for c in cls]
    return ", ".join(words[:-1]) + (" or " if len(words) > 1 else "") + words[-1]


def pattern_text(pattern: str) -> str:
    """A regex of a name field, in words: what pydantic only shows as the raw pattern.

    ``^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`` -> ``expected 1 to 63 characters: letters or
    digits first, then letters, digits, '.', '_' or '-'``.
    """
    m = _SIMPLE_RE.fullmatch(pattern)
    if m is None:
        return f"does not have the expected form (the pattern {pattern})"
    if m.group(4):  # ^[class]{min,max}$
        lo, hi = int(m.group(5)), int(m.group(6))
        return f"expected {lo} to {hi} characters: {_class_text(m.group(4))}"
    first, rest, more = m.group(1), m.group(2), m.group(3)
    if rest is None:
        return f"expected one character: {_class_text(first)}"
    return (
        f"expected 1 to {int(more) + 1} characters: {_class_text(first)} first, then "
        f"{_class_text(rest)}"
    )
