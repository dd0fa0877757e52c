"""Reading ``snmpbulkwalk -On -Ox -Oe`` output back into values ``render`` prints as net-snmp."""

from __future__ import annotations

import pytest

from collectors.snmp import SnmpCredentials
from collectors.snmp_format import render
from collectors.snmp_netsnmp import _config, parse_rows, usable

OUTPUT = b"""\
.1.3.6.1.2.1.1.1.0 = Hex-STRING: 66 69 65 6C 64 74 72 61 63 65 20 74 65 73 74 20
61 67 65 6E 74
.1.3.6.1.2.1.1.3.0 = Timeticks: (12345) 0:02:03.45
.1.3.6.1.2.1.2.2.1.6.1 = ""
.1.3.6.1.2.1.2.2.1.6.2 = Hex-STRING: 9A 09 B9 59 A1 E7
.1.3.6.1.2.1.2.2.1.7.1 = INTEGER: -3
.1.3.6.1.2.1.31.1.1.1.6.1 = Counter64: 18446744073709551615
.1.3.6.1.2.1.4.20.1.1.127.0.0.1 = IpAddress: 127.0.0.1
.1.3.6.1.2.1.1.2.0 = OID: .1.3.6.1.4.1.8072.3.2.10
.1.3.6.1.4.1.2021.10.1.6.1 = Opaque: Float: 1.023926
.1.3.6.1.2.1.1.9.9 = No Such Instance currently exists at this OID
.1.3.6.1.2.1.1.9.10 = NULL
.1.3.6.1.2.1.1.9.11 = Gauge32: 7
.1.3.6.1.2.1.1.9.12 = Network Address: 0A:01:02:03
"""


def test_rows_render_as_snmpwalk_prints_them() -> None:
    rows = parse_rows(OUTPUT)
    lines = [render(oid, value, None).line().rstrip("\n") for oid, value in rows]
    assert lines == [
        '.1.3.6.1.2.1.1.1.0 = STRING: "fieldtrace test agent"',
        ".1.3.6.1.2.1.1.3.0 = Timeticks: (12345) 0:02:03.45",
        '.1.3.6.1.2.1.2.2.1.6.1 = ""',
        ".1.3.6.1.2.1.2.2.1.6.2 = Hex-STRING: 9A 09 B9 59 A1 E7 ",
        ".1.3.6.1.2.1.2.2.1.7.1 = INTEGER: -3",
        ".1.3.6.1.2.1.31.1.1.1.6.1 = Counter64: 18446744073709551615",
        ".1.3.6.1.2.1.4.20.1.1.127.0.0.1 = IpAddress: 127.0.0.1",
        ".1.3.6.1.2.1.1.2.0 = OID: .1.3.6.1.4.1.8072.3.2.10",
        ".1.3.6.1.4.1.2021.10.1.6.1 = Opaque: Float: 1.023926",
        ".1.3.6.1.2.1.1.9.9 = No Such Instance currently exists at this OID",
        ".1.3.6.1.2.1.1.9.10 = NULL",
        ".1.3.6.1.2.1.1.9.11 = Gauge32: 7",
        # a form this reader does not know is kept as printed, not dropped
        ".1.3.6.1.2.1.1.9.12 = Unparsed: Network Address: 0A:01:02:03",
    ]
    assert rows[0][0] == (1, 3, 6, 1, 2, 1, 1, 1, 0)
    assert render(*rows[3], None).as_json()["value"] == "9a09b959a1e7"


def test_credentials_go_in_the_config_quoted_and_odd_ones_fall_back() -> None:
    cred = SnmpCredentials(
        "3",
        username="diag user",
        auth_protocol="SHA256",
        auth_key="auth pass#1",
        priv_protocol="AES256C",
        priv_key="priv'pass",
    )
    conf = _config(cred, __import__("pathlib").Path("/state"))
    assert 'defSecurityName "diag user"' in conf
    assert "defSecurityLevel authPriv" in conf
    assert "defAuthType SHA-256" in conf and 'defAuthPassphrase "auth pass#1"' in conf
    assert "defPrivType AES-256-C" in conf and 'defPrivPassphrase "priv\'pass"' in conf
    assert usable(cred) is None
    assert "cannot carry" in (usable(SnmpCredentials("2c", community="a\nb")) or "")
    assert "3DES" in (usable(SnmpCredentials("3", username="u", priv_protocol="3DES")) or "")


def test_without_the_snmp_package_auto_walks_with_pysnmp(monkeypatch: pytest.MonkeyPatch) -> None:
    from collectors import snmp_netsnmp
    from collectors.base import StepFailed
    from collectors.snmp import SnmpSession

    monkeypatch.setattr(snmp_netsnmp.shutil, "which", lambda name: None)
    cred = SnmpCredentials("2c", community="public")
    assert "Debian package snmp" in (usable(cred) or "")
    assert SnmpSession("gw1", "127.0.0.1", 161, cred).walk_engine == "pysnmp"
    strict = SnmpSession("gw1", "127.0.0.1", 161, cred, walker="net-snmp")
    with pytest.raises(StepFailed, match="snmpbulkwalk is not installed"):
        _ = strict.walk_engine
