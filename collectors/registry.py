"""The explicit collector registry: every collector fieldtrace knows, by KB name."""

from __future__ import annotations

from collectors.base import Collector
from collectors.firewall.collector import AccessCheck
from collectors.host import HostSnapshot
from collectors.local import LocalCommand, LocalFile
from collectors.ssh import SshCapture, SshCommand, SshFile

_COLLECTORS: dict[str, Collector] = {
    c.name: c
    for c in (
        HostSnapshot(),
        LocalCommand(),
        LocalFile(),
        SshCommand(),
        SshFile(),
        SshCapture(),
        AccessCheck(),
    )
}


def get(name: str) -> Collector:
    """The collector registered as ``name``; KeyError if there is none."""
    return _COLLECTORS[name]


def names() -> list[str]:
    return sorted(_COLLECTORS)
