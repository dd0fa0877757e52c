"""Logging setup: stderr for the user, a local log file for bugs, secrets always masked."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Mask ``value`` in every log record from now on (values shorter than 4 are ignored)."""
    if len(value) >= 4:
        with _lock:
            _secrets.add(value)


class SecretFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            msg = record.getMessage()
            masked = msg
            for s in _secrets:
                masked = masked.replace(s, "<secret>")
            if masked != msg:
                record.msg, record.args = masked, None
        return True


def setup(verbose: int, logfile: Path | None) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    err = logging.StreamHandler()
    err.setLevel(
        logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    )
    err.setFormatter(logging.Formatter("fieldtrace: %(levelname)s: %(message)s"))
    err.addFilter(SecretFilter())
    root.addHandler(err)
    if logfile is not None:
        try:
            fh = logging.FileHandler(logfile)
        except OSError:
            return
        fh.setLevel(logging.INFO)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh.addFilter(SecretFilter())
        root.addHandler(fh)
