"""``fieldtrace serve``: health checks, the outbox worker and signed requests, as a service."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run as a service: scheduled health checks, delivery, requests from tickets",
        description="Runs until SIGTERM. Logs one line per event on stderr (journald takes "
        "them from there). SIGHUP reloads the config and the KB; a file that does not "
        "validate keeps the old config running.",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from agent.keys import home
    from agent.serve import serve

    root = logging.getLogger()
    for h in root.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(min(h.level, logging.INFO))
    for noisy in ("apscheduler", "paramiko", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return serve(Path(args.config) if args.config else None, home())
