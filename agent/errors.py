"""Errors that reach the user: each carries its message and the CLI exit code."""

from __future__ import annotations

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
