"""``fieldtrace collect`` from SNMP devices (a real snmpd): v2c and v3 devices, one with a
wrong community; the bundle holds snmpwalk-format output and the community never leaks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.e2e.helpers import collect_json, manifest_of, open_with_stock_tools, write_site
from tests.fixtures.snmpd import COMMUNITY, SYSNAME, Snmpd, snmpd_server

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(scope="module")
def leaky_snmpd() -> Iterator[Snmpd]:
    """An agent whose sysLocation quotes its own community (it happens in real configs)."""
    with snmpd_server(location=f"rack 7, ro community {COMMUNITY}") as server:
        yield server


def _steps(manifest: dict[str, Any], device: str) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in manifest["steps"] if s["device"] == device}


def test_collect_snmp_devices_into_a_bundle(cli: Cli, leaky_snmpd: Snmpd, tmp_path: Path) -> None:
    server = leaky_snmpd
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    community = secrets / "community"
    community.write_text(server.community + "\n")
    (secrets / "priv").write_text(server.v3_priv + "\n")
    (secrets / "wrong").write_text("wrongCommunity42\n")
    cli.env["FT_TEST_V3_AUTH"] = server.v3_auth
    config = f"""
[[devices]]
name = "gw1"
type = "snmp-box"
address = "127.0.0.1"
snmp = {{ port = {server.port}, version = "2c", community = {{ file = "{community}" }} }}

[[devices]]
name = "gw2"
type = "snmp-box"
address = "127.0.0.1"
[devices.snmp]
port = {server.port}
version = "3"
username = "{server.v3_user}"
auth_protocol = "SHA"
auth_key = {{ env = "FT_TEST_V3_AUTH" }}
priv_protocol = "AES"
priv_key = {{ file = "{secrets / "priv"}" }}

[[devices]]
name = "gw3"
type = "snmp-box"
address = "127.0.0.1"
[devices.snmp]
port = {server.port}
community = {{ file = "{secrets / "wrong"}" }}
timeout = "0.5s"
retries = 1
"""
    write_site(
        cli,
        [
            "{id: system, collector: snmp.get, oid: [SNMPv2-MIB::sysName.0, sysLocation.0]}",
            "{id: ifaces, collector: snmp.walk, oid: IF-MIB::ifTable}",
            "{id: ifx, collector: snmp.walk, oid: ifXTable, max_repetitions: 10}",
            "{id: storage, collector: snmp.walk, oid: HOST-RESOURCES-MIB::hrStorageTable}",
        ],
        config,
        ktype="snmp-box",
    )
    data = collect_json(cli, "gw1", "gw2", "gw3", check=1)  # gw3 fails: done with failures
    top = open_with_stock_tools(Path(data["bundle"]), cli.home / "identity.txt", tmp_path / "o")
    m = manifest_of(top)
    for device in ("gw1", "gw2"):
        steps = _steps(m, device)
        assert {s["status"] for s in steps.values()} == {"ok"}, steps
        system = (top / device / "system/get.txt").read_text()
        assert f"SNMPv2-MIB::sysName.0 = STRING: {SYSNAME}\n" in system
        assert "SNMPv2-MIB::sysLocation.0 = STRING: rack 7, ro community" in system
        ifaces = (top / device / "ifaces/walk.txt").read_text()
        assert "IF-MIB::ifDescr.1 = STRING: lo\n" in ifaces
        rows = json.loads((top / device / "ifaces/walk.json").read_text())
        assert steps["ifaces"]["facts"]["rows"] == len(rows) > 10
        assert steps["ifaces"]["facts"]["stop"] == "end of subtree"
        assert "IF-MIB::ifName.1 = STRING: lo\n" in (top / device / "ifx/walk.txt").read_text()
        storage = (top / device / "storage/walk.txt").read_text()
        assert "HOST-RESOURCES-MIB::hrStorageType.1 = OID: HOST-RESOURCES-MIB::hrStorage" in storage
    failed = _steps(m, "gw3")
    assert {s["status"] for s in failed.values()} == {"failed"}
    assert (
        f"no answer from 127.0.0.1:{server.port} after 2 tries of 0.5s" in failed["system"]["error"]
    )
    assert "community" in failed["system"]["error"]
    # the session failure is remembered: one timeout for the device, not one per step
    assert sum(s["seconds"] for s in failed.values()) < 4.0
    # the community (and the v3 keys) are nowhere in the bundle, even where the agent said it
    everything = b"".join(p.read_bytes() for p in top.rglob("*") if p.is_file())
    for secret in (server.community, server.v3_auth, server.v3_priv):
        assert secret.encode() not in everything
    assert b"ro community <scrubbed>" in everything or b"community <" in everything


def test_agent_that_stopped_answering_fails_its_steps_and_the_job_goes_on(
    cli: Cli, tmp_path: Path
) -> None:
    with snmpd_server() as server:
        community = tmp_path / "community"
        community.write_text(server.community)
        config = f"""
[[devices]]
name = "gw1"
type = "snmp-box"
address = "127.0.0.1"
snmp = {{ port = {server.port}, community = {{ file = "{community}" }}, timeout = "1s" }}
"""
        write_site(
            cli,
            [
                "{id: system, collector: snmp.get, oid: sysName.0}",
                "{id: ifaces, collector: snmp.walk, oid: IF-MIB::ifTable, deadline: 20s}",
                '{id: here, collector: local.command, command: "echo still collecting"}',
            ],
            config,
            ktype="snmp-box",
        )
        server.pause()
        try:
            data = collect_json(cli, "gw1", check=1)
        finally:
            server.resume()
    top = open_with_stock_tools(Path(data["bundle"]), cli.home / "identity.txt", tmp_path / "o")
    steps = _steps(manifest_of(top), "gw1")
    assert steps["system"]["status"] == "failed"
    assert steps["system"]["error"].startswith(
        f"no answer from 127.0.0.1:{server.port} after 2 tries of 1s (SNMP v2c)"
    )
    assert 1.5 < steps["system"]["seconds"] < 4.0
    assert steps["ifaces"]["status"] == "failed"
    assert "not asked again in this job" in steps["ifaces"]["error"]
    assert steps["ifaces"]["seconds"] < 1.0
    assert steps["here"]["status"] == "ok"
    assert (top / "gw1/here/output.txt").read_text() == "still collecting\n"
