"""Helpers shared by the command modules (loaded lazily, never for --help)."""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.settings import LoadedSettings


def settings(args: argparse.Namespace) -> LoadedSettings:
    from agent.settings import load_settings

    return load_settings(Path(args.config) if args.config else None)


_json_emitted = False


def emit_json(data: Any) -> None:
    global _json_emitted
    _json_emitted = True
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def json_emitted() -> bool:
    """Whether a command already wrote its JSON document (then an error adds none)."""
    return _json_emitted


def error_document(message: str, exit_code: int) -> dict[str, Any]:
    """What ``--json`` prints on stdout when a command fails before its own document."""
    return {"ok": False, "error": message, "exit_code": exit_code}


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 step``, ``2 steps`` (``many`` for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


# --- the command as the user typed it ------------------------------------------------------


def _readable(path: str) -> str:
    """``path`` relative to the current directory when it is below it, else absolute."""
    try:
        absolute = os.path.abspath(path)
        rel = os.path.relpath(absolute)
    except (OSError, ValueError):
        return path
    if rel.startswith(".."):
        return absolute
    return rel if os.sep in rel else f".{os.sep}{rel}"  # a bare name would be looked up on PATH


def _shell_word(text: str) -> str:
    """``text`` as one shell word, special characters backslash-escaped (not quoted, so a
    hint can stay inside the quotes of a message: 'my\\ tools/fieldtrace outbox list')."""
    return re.sub(r"([^\w@%+=:,./-])", r"\\\1", text)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@functools.cache
def prog() -> str:
    """How to run fieldtrace again, as the user invoked it, for hints and usage lines.

    ``fieldtrace`` when that name on PATH is the program that runs now (the packaged
    install, an activated virtualenv; or ``$FIELDTRACE_PROG``, which the packaged wrapper
    sets); otherwise the path that was typed, relative to the
    current directory when it is below it (``.venv/bin/fieldtrace`` after the README's
    first command); ``python -m agent`` as ``PYTHON -m agent``. Escaped for a shell.
    """
    named = os.environ.get("FIELDTRACE_PROG", "")
    if re.fullmatch(r"[\w./-]{1,200}", named):  # set by the packaged /usr/bin/fieldtrace
        return named
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "fieldtrace"
    if argv0.endswith("__main__.py"):  # python -m agent
        python = sys.executable or "python3"
        name = os.path.basename(python)
        on_path = shutil.which(name)
        # a venv's python is a symlink to the system one: compare paths, not inodes
        shown = name if on_path and os.path.abspath(on_path) == os.path.abspath(python) else None
        return f"{_shell_word(shown or _readable(python))} -m agent"
    found = shutil.which("fieldtrace")
    if found and _same_file(found, argv0):
        return "fieldtrace"
    return _shell_word(_readable(argv0))


_HINT = re.compile(r"(?<=['`])fieldtrace(?= )")


def hint(text: str) -> str:
    """Messages name commands as ``'fieldtrace ACTION ...'`` (quoted); show them as invoked.

    Messages are written by modules that do not know how the CLI was started (uploader,
    agent, collectors) and end up in manifests and tickets too, where ``fieldtrace`` is
    right; only what the CLI prints is rewritten.
    """
    name = prog()
    return text if name == "fieldtrace" else _HINT.sub(lambda _m: name, text)


def say(*lines: str, file: Any = None) -> None:
    """print() for the CLI's human output, with command hints shown as invoked."""
    print(hint("\n".join(lines)), file=file or sys.stdout)


def show_rows(args: argparse.Namespace, rows: list[dict[str, Any]], empty: str, line: Any) -> int:
    """A listing: ``rows`` as JSON with ``--json``; else ``empty``, or ``line(row)`` each."""
    if getattr(args, "json", False):
        emit_json(rows)
        return 0
    if not rows:
        print(empty)
    for r in rows:
        print(line(r))
    return 0
