"""Device sessions: one connection of each kind per device per job, opened on first use.

The agent owns sessions because opening one needs what collectors must never see: the site
config's credentials (secret references resolved here) and the site's ``known_hosts``.
Collectors get the opened session through ``ctx.session(kind)``.

An opener is ``open(device, home) -> session``; the session has ``close()``. An opener
raises ``StepError`` (usually ``StepFailed``) with a message for the user when the device
cannot be reached or refuses us; a ``ConfigError`` (a secret file missing, say) is turned
into the same. Openers live in their own modules and are imported only when a step needs
them, so jobs without devices never import paramiko or pysnmp.
"""

from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.settings import Device
from collectors.base import StepError, StepFailed

log = logging.getLogger(__name__)

# kind -> "module:function" of its opener
OPENERS: dict[str, str] = {
    "ssh": "agent.ssh_session:open_ssh",
    "snmp": "agent.snmp_session:open_snmp",
}


class DeviceSessions:
    """The sessions of one device in one job; thread-safe; ``close()`` ends them all."""

    def __init__(self, device: Device, home: Path) -> None:
        self.device = device
        self.home = home
        self._open: dict[str, Any] = {}
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, kind: str) -> Any:
        with self._lock:
            if kind in self._open:
                return self._open[kind]
            if kind in self._failed:
                raise StepFailed(self._failed[kind])
            target = OPENERS.get(kind)
            if target is None:
                raise StepFailed(f"no {kind} session kind is known to this agent")
            module, func = target.split(":")
            opener = getattr(importlib.import_module(module), func)
            try:
                session = opener(self.device, self.home)
            except StepError as exc:
                self._failed[kind] = str(exc)
                raise
            except ConfigError as exc:
                self._failed[kind] = f"{self.device.name}: {exc}"
                raise StepFailed(self._failed[kind]) from None
            self._open[kind] = session
            return session

    def close(self) -> None:
        with self._lock:
            sessions, self._open = list(self._open.items()), {}
        for kind, session in sessions:
            try:
                session.close()
            except Exception:  # closing must never lose the job
                log.warning("%s: closing %s session failed", self.device.name, kind, exc_info=True)
