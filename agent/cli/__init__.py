"""The ``fieldtrace`` command line: a thin shell over the functions the daemon calls too.

One module per command, each with ``register(subparsers)`` (argparse only, so ``--help`` is
fast) and a handler that imports what it needs. Errors are ``FieldtraceError`` classes
carrying their message and exit code: 0 ok, 1 done with failures, 2 usage/config error
(nothing touched), 3 runtime error (nothing lost).
"""

from __future__ import annotations

import argparse
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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"fieldtrace: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fieldtrace",
        description="Collect diagnostics from devices by the vendor's KB rules into a scrubbed, "
        "signed, encrypted bundle for the vendor's HelpDesk.",
        epilog="With no configuration, 'fieldtrace collect' collects from this host into an "
        "encrypted bundle in the local outbox.",
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from agent.errors import EXIT_RUNTIME, FieldtraceError
    from agent.logs import setup

    logfile = None
    if os.environ.get("FIELDTRACE_NO_LOGFILE") != "1":
        from agent.keys import home

        try:
            logfile = home() / "fieldtrace.log"
        except OSError:
            logfile = None
    setup(args.verbose, logfile)
    try:
        return int(args.handler(args))
    except FieldtraceError as exc:
        print(f"fieldtrace: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fieldtrace: interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception:
        import logging

        logging.getLogger("fieldtrace").exception("unexpected error (a bug; please report it)")
        print(f"fieldtrace: unexpected error; details in {logfile or 'the log'}", file=sys.stderr)
        return EXIT_RUNTIME
