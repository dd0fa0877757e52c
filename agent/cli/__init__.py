"""The ``fieldtrace`` command line: a thin shell over the functions the daemon calls too.

One module per command, each with ``register(subparsers)`` (argparse only, so ``--help`` is
fast) and a handler that imports what it needs. Errors are ``FieldtraceError`` classes
carrying their message and exit code: 0 ok, 1 done with failures, 2 usage/config error
(nothing touched), 3 runtime error (nothing lost).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from agent import __version__
from agent.cli import (
    audit_cmd,
    bundle_cmd,
    capture_cmd,
    check_access_cmd,
    collect_cmd,
    config_cmd,
    devices_cmd,
    health_cmd,
    kb_cmd,
    keys_cmd,
    outbox_cmd,
    request_cmd,
    serve_cmd,
)

_argv: list[str] = []  # the arguments being parsed (a usage error with --json needs them)


def _wants_json(argv: Sequence[str]) -> bool:
    return "--json" in (list(argv)[: list(argv).index("--")] if "--" in argv else argv)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        from agent.errors import EXIT_USAGE

        self.print_usage(sys.stderr)
        if _wants_json(_argv):
            from agent.cli.common import emit_json, error_document

            emit_json(error_document(f"usage: {message}", EXIT_USAGE))
        self.exit(EXIT_USAGE, f"fieldtrace: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from agent.cli.common import prog

    p = _Parser(
        prog=prog(),
        description="Collect diagnostics from devices by the vendor's KB rules into a scrubbed, "
        "signed, encrypted bundle for the vendor's HelpDesk.",
        epilog=f"With no configuration, '{prog()} collect' collects from this host into an "
        "encrypted bundle in the local outbox. Exit codes: 0 ok, 1 done with failures, "
        "2 usage or configuration error, 3 runtime error, 130 stopped by Ctrl-C "
        "(docs/cli.md has them per command).",
    )
    p.add_argument("--version", action="version", version=f"fieldtrace {__version__}")
    p.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="site config (default: $FIELDTRACE_CONFIG, ./fieldtrace.toml, "
        "/etc/fieldtrace/fieldtrace.toml, else the embedded default)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in (
        collect_cmd,
        capture_cmd,
        kb_cmd,
        config_cmd,
        bundle_cmd,
        keys_cmd,
        outbox_cmd,
        devices_cmd,
        check_access_cmd,
        serve_cmd,
        health_cmd,
        request_cmd,
        audit_cmd,
    ):
        mod.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code follows docs/cli.md (0, 1, 2, 3, and 130)."""
    global _argv
    _argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(_argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from agent.cli.common import emit_json, error_document, hint, json_emitted
    from agent.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, FieldtraceError
    from agent.logs import setup

    def fail(message: str, code: int, label: str = "error") -> int:
        print(f"fieldtrace: {label}: {hint(message)}", file=sys.stderr)
        if getattr(args, "json", False) and not json_emitted():
            emit_json(error_document(hint(message), code))
        return code

    logfile = None
    # a dry run touches nothing: no $FIELDTRACE_HOME, no log file (logs go to stderr only)
    if os.environ.get("FIELDTRACE_NO_LOGFILE") != "1" and not getattr(args, "dry_run", False):
        from agent.keys import home

        try:
            logfile = home() / "fieldtrace.log"
        except (OSError, FieldtraceError):  # the command that needs it says why
            logfile = None
    setup(args.verbose, logfile)
    try:
        return int(args.handler(args))
    except FieldtraceError as exc:
        return fail(str(exc), exc.exit_code, exc.label)
    except KeyboardInterrupt:
        return fail("stopped by Ctrl-C", EXIT_INTERRUPTED, "interrupted")
    except BrokenPipeError:  # e.g. `fieldtrace outbox list | head`: the reader had enough
        with contextlib.suppress(OSError):  # no second error when Python flushes at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception:
        import logging

        logging.getLogger("fieldtrace").exception("unexpected error (a bug; please report it)")
        return fail(f"unexpected error (a bug); details in {logfile or 'the log'}", EXIT_RUNTIME)
