"""SNMP without an agent: the name table, net-snmp-style rendering, KB validation of OIDs,
and the session opener's secret handling."""

from __future__ import annotations

from pathlib import Path

import pytest
from pysnmp.proto import rfc1902, rfc1905

from agent.errors import ConfigError
from agent.kb import parse_kb
from agent.sessions import DeviceSessions
from agent.settings import Device, Snmp
from agent.snmp_session import open_snmp
from collectors.base import StepFailed
from collectors.snmp import SnmpCredentials, SnmpSession
from collectors.snmp_format import mib_table, render, resolve_oid

IF_DESCR = (1, 3, 6, 1, 2, 1, 2, 2, 1, 2)


@pytest.mark.parametrize(
    ("text", "oid"),
    [
        ("IF-MIB::ifTable", "1.3.6.1.2.1.2.2"),
        ("ifXTable", "1.3.6.1.2.1.31.1.1"),
        ("IF-MIB::ifHCInOctets.3", "1.3.6.1.2.1.31.1.1.1.6.3"),
        ("SNMPv2-MIB::sysDescr.0", "1.3.6.1.2.1.1.1.0"),
        ("sysUpTime.0", "1.3.6.1.2.1.1.3.0"),
        ("HOST-RESOURCES-MIB::hrSWRunTable", "1.3.6.1.2.1.25.4.2"),
        ("hrStorageUsed", "1.3.6.1.2.1.25.2.3.1.6"),
        ("ENTITY-MIB::entPhysicalTable", "1.3.6.1.2.1.47.1.1.1"),
        ("entPhysicalSerialNum.1", "1.3.6.1.2.1.47.1.1.1.1.11.1"),
        ("enterprises.9", "1.3.6.1.4.1.9"),
        (".1.3.6.1.2.1.1", "1.3.6.1.2.1.1"),
        ("1.3.6.1.4.1.8072", "1.3.6.1.4.1.8072"),
    ],
)
def test_names_resolve_to_the_rfc_oids(text: str, oid: str) -> None:
    assert resolve_oid(text) == tuple(int(p) for p in oid.split("."))


def test_unknown_names_say_what_is_known() -> None:
    with pytest.raises(ValueError, match="unknown MIB object 'IF-MIB::ifFoo'") as exc:
        resolve_oid("IF-MIB::ifFoo")
    assert "IF-MIB" in str(exc.value) and "numerically" in str(exc.value)
    with pytest.raises(ValueError, match="not an OID"):
        resolve_oid("1.3.6.x")


def test_table_names_and_oids_are_unique() -> None:
    table = mib_table()
    short = [k for k in table.by_name if "::" not in k]
    full = [k for k in table.by_name if "::" in k]
    assert len(short) == len(full)  # no short name is shared by two objects
    assert len(table.by_oid) == len([k for k in full if not k.startswith("SNMPv2-SMI::")])


def test_kb_step_with_an_unknown_oid_fails_at_load_with_its_path() -> None:
    text = (
        "type: box\ntitle: t\nprofiles:\n  default:\n    title: t\n    steps:\n"
        "      - {id: a, collector: snmp.walk, oid: IF-MIB::ifTable}\n"
        "      - {id: b, collector: snmp.walk, oid: IF-MIB::ifTabel, max_repetitions: 0}\n"
    )
    with pytest.raises(ConfigError) as exc:
        parse_kb(text, "kb/box.yaml")
    msg = str(exc.value)
    assert "kb/box.yaml: profiles.default.steps[1].oid" in msg and "ifTabel" in msg
    assert "profiles.default.steps[1].max_repetitions" in msg


def _text(
    value: object, oid: tuple[int, ...] = (1, 3, 6, 1, 4, 1, 1, 0), named: bool = False
) -> str:
    return render(oid, value, mib_table() if named else None).text


def test_render_like_net_snmp() -> None:
    assert _text(rfc1902.TimeTicks(42)) == "Timeticks: (42) 0:00:00.42"
    assert _text(rfc1902.TimeTicks(8640000)) == "Timeticks: (8640000) 1 day, 0:00:00.00"
    assert _text(rfc1902.TimeTicks(27654321)) == "Timeticks: (27654321) 3 days, 4:49:03.21"
    assert _text(rfc1902.OctetString(b"")) == '""'
    assert _text(rfc1902.OctetString(b'say "hi" \\ ok')) == 'STRING: "say \\"hi\\" \\\\ ok"'
    data = bytes(range(0x80, 0x80 + 17))
    assert _text(rfc1902.OctetString(data)) == (
        "Hex-STRING: 80 81 82 83 84 85 86 87 88 89 8A 8B 8C 8D 8E 8F \n90 "
    )
    assert _text(rfc1902.Counter64(2**40)) == "Counter64: 1099511627776"
    assert _text(rfc1902.Gauge32(7)) == "Gauge32: 7"
    assert _text(rfc1902.IpAddress("192.0.2.1")) == "IpAddress: 192.0.2.1"
    assert _text(rfc1902.ObjectName("1.3.6.1.4.1.8072.3.2.10")) == "OID: .1.3.6.1.4.1.8072.3.2.10"
    assert _text(rfc1902.Opaque(b"\x9f\x78\x04\x3e\xb8\x00\x00")) == "Opaque: Float: 0.359375"
    assert _text(rfc1905.noSuchObject) == "No Such Object available on this agent at this OID"
    assert _text(rfc1905.noSuchInstance) == "No Such Instance currently exists at this OID"


def test_render_with_names_and_hints() -> None:
    row = render((*IF_DESCR, 1), rfc1902.OctetString(b"lo"), mib_table())
    assert row.line() == "IF-MIB::ifDescr.1 = STRING: lo\n"
    assert row.as_json() == {
        "oid": "1.3.6.1.2.1.2.2.1.2.1",
        "name": "IF-MIB::ifDescr.1",
        "type": "STRING",
        "value": "lo",
    }
    mac = (1, 3, 6, 1, 2, 1, 2, 2, 1, 6, 2)
    assert _text(rfc1902.OctetString(b"\x9a\x09\xb9\x59\xa1\xe7"), mac, True) == (
        "STRING: 9a:9:b9:59:a1:e7"
    )
    admin = (1, 3, 6, 1, 2, 1, 2, 2, 1, 7, 1)
    assert _text(rfc1902.Integer(2), admin, True) == "INTEGER: down(2)"
    assert _text(rfc1902.Integer(9), admin, True) == "INTEGER: 9"
    date = (1, 3, 6, 1, 2, 1, 25, 1, 2, 0)
    raw = bytes([0x07, 0xEA, 12, 1, 10, 52, 25, 0, ord("+"), 0, 0])
    assert _text(rfc1902.OctetString(raw), date, True) == "STRING: 2026-12-1,10:52:25.0,+0:0"
    storage = (1, 3, 6, 1, 2, 1, 25, 2, 3, 1, 2, 1)
    ram = rfc1902.ObjectName("1.3.6.1.2.1.25.2.1.2")
    assert _text(ram, storage, True) == "OID: HOST-RESOURCES-MIB::hrStorageRam"
    unknown = render((1, 3, 6, 1, 4, 1, 8072, 1), rfc1902.Integer(1), mib_table())
    assert unknown.name == ".1.3.6.1.4.1.8072.1"  # numeric when the name is not known


def test_credentials_never_show_in_repr() -> None:
    cred = SnmpCredentials(
        "3",
        community="c0mm",
        username="u",
        auth_protocol="SHA",
        auth_key="authSecret1",
        priv_protocol="AES",
        priv_key="privSecret1",
    )
    assert not {"c0mm", "authSecret1", "privSecret1"} & set(repr(cred).replace("'", " ").split())
    assert "authSecret1" not in repr(cred) and "privSecret1" not in repr(cred)


def test_open_snmp_resolves_secrets_lazily_and_reports_missing_ones(tmp_path: Path) -> None:
    secret = tmp_path / "community"
    secret.write_text("s3cretCommunity\n")
    dev = Device(
        name="gw1",
        type="box",
        address="127.0.0.1",
        snmp=Snmp.model_validate({"port": 1161, "community": {"file": str(secret)}}),
    )
    session = open_snmp(dev, tmp_path)
    try:
        assert isinstance(session, SnmpSession)
        assert session.credentials.community == "s3cretCommunity"
        assert session.where == "127.0.0.1:1161" and session._loop is None  # nothing sent yet
    finally:
        session.close()
    missing = Device(
        name="gw2",
        type="box",
        address="127.0.0.1",
        snmp=Snmp.model_validate({"community": {"file": str(tmp_path / "nope")}}),
    )
    sessions = DeviceSessions(missing, tmp_path)
    for _ in range(2):  # remembered: the second step gets the same message at once
        with pytest.raises(StepFailed, match=r"gw2: secret: cannot read .*nope"):
            sessions.get("snmp")
    sessions.close()


def test_v3_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="needs username"):
        Snmp.model_validate({"version": "3"})
    with pytest.raises(ValueError, match="priv_protocol needs priv_key and auth_protocol"):
        Snmp.model_validate(
            {"version": "3", "username": "u", "priv_protocol": "AES", "priv_key": {"env": "X"}}
        )
    ok = Snmp.model_validate(
        {
            "version": "3",
            "username": "u",
            "auth_protocol": "SHA256",
            "auth_key": {"env": "A"},
            "priv_protocol": "AES256",
            "priv_key": {"env": "P"},
            "context": "vrf-mgmt",
        }
    )
    assert ok.context == "vrf-mgmt"
