"""Opening a device's SNMP session: credentials from the site config's secret references."""

from __future__ import annotations

from pathlib import Path

from agent.settings import Device
from collectors.base import StepFailed
from collectors.snmp import SnmpCredentials, SnmpSession


def open_snmp(device: Device, home: Path) -> SnmpSession:
    """The session for ``device`` (nothing is sent yet: the first request talks to it).

    A secret that cannot be read raises ConfigError, which the caller turns into a failed step.
    """
    s = device.snmp
    if s is None:
        raise StepFailed(f"{device.name} has no snmp settings in the site config")
    credentials = SnmpCredentials(
        version=s.version,
        community=s.community.resolve() if s.community else None,
        username=s.username,
        auth_protocol=s.auth_protocol,
        auth_key=s.auth_key.resolve() if s.auth_key else None,
        priv_protocol=s.priv_protocol,
        priv_key=s.priv_key.resolve() if s.priv_key else None,
        context=s.context,
    )
    address = "127.0.0.1" if device.address in ("localhost", "local") else device.address
    return SnmpSession(
        device.name,
        address,
        s.port,
        credentials,
        timeout=s.timeout,
        retries=s.retries,
        walker=s.walker,
    )
