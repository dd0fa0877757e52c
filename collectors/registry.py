"""The explicit collector registry: every collector fieldtrace knows, by KB name."""

from __future__ import annotations

from collectors.base import Collector
from collectors.firewall.collector import AccessCheck
from collectors.host import HostSnapshot
from collectors.local import LocalCommand, LocalFile
from collectors.pcap import PcapCapture
from collectors.snmp import SnmpGet, SnmpWalk
from collectors.ssh import SshCapture, SshCommand, SshFile
from collectors.ssh_shell import SshShell

_COLLECTORS: dict[str, Collector] = {
    c.name: c
    for c in (
        HostSnapshot(),
        LocalCommand(),
        LocalFile(),
        SshCommand(),
        SshFile(),
        SshCapture(),
        SnmpGet(),
        SnmpWalk(),
        PcapCapture(),
        SshShell(),
        AccessCheck(),
    )
}


def get(name: str) -> Collector:
    """The collector registered as ``name``; KeyError if there is none."""
    return _COLLECTORS[name]


def names() -> list[str]:
    return sorted(_COLLECTORS)
