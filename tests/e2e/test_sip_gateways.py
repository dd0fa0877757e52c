"""Fan-out end to end: ``fieldtrace collect --type sip-gateway`` against two simulated SIP
gateways (device-CLI simulators on loopback) -> one bundle, opened with stock age and tar."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import Cli
from tests.e2e.helpers import (
    collect_json,
    manifest_of,
    open_with_stock_tools,
    sha256,
    step,
    write_site,
)
from tests.fixtures.cli_sim import MOCKED, CliSimulator
from tests.fixtures.snmpd import COMMUNITY, SYSNAME, Snmpd, snmpd_server

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
GW2_PASSWORD = "gw2-Login-Passw0rd"
# secrets planted in the recorded running-config and log of both gateways
PLANTED = [
    "s3cr3tComm",
    "pr1vW1re",
    "$1$mERr$hx5rVt7rPNoS4wqbXKX7m0",
    "$9$nhEmQVczB7dqsO$X.HsgL6x1il0RxkOSSvyQYwucySCt7qFm4v7pYQg0Qs",
    "0822455D0A165445415F",
    "01100F175804575D72",
    "070C285F4D06485744",
    "045802150C2E",
    GW2_PASSWORD,
    COMMUNITY,  # gw1's SNMP community, also quoted by its sysLocation
]


@pytest.fixture(scope="module")
def gw1_snmpd() -> Iterator[Snmpd]:
    """gw1's SNMP agent (a real snmpd); its sysLocation quotes the community."""
    with snmpd_server(location=f"ACME HQ rack B4 (ro community {COMMUNITY})") as server:
        yield server


@pytest.fixture
def gateways(cli: Cli, gw1_snmpd: Snmpd) -> Iterator[tuple[CliSimulator, CliSimulator]]:
    """gw1: privileged account, key login, SNMP v2c; gw2: user-EXEC account (no
    running-config), password login, no SNMP. Both host keys are in the site's known_hosts;
    a local device too."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    client_key = paramiko.Ed25519Key(file_obj=io.StringIO(pem.decode()))
    keyfile = cli.cwd / "gw1.key"
    keyfile.write_bytes(pem)
    keyfile.chmod(0o600)
    pwfile = cli.cwd / "gw2.password"
    pwfile.write_text(GW2_PASSWORD + "\n")
    community = cli.cwd / "gw1.community"
    community.write_text(COMMUNITY + "\n")
    gw1 = CliSimulator(
        "gw1", "isr4321-cube", authorized_keys={"diag": [client_key]}, privileged=True
    )
    gw2 = CliSimulator("gw2", "isr4331-cube", users={"diag": GW2_PASSWORD})
    try:
        gw1.start()
        gw2.start()
        (cli.home / "known_hosts").write_text(
            f"{gw1.known_hosts_line()}\n{gw2.known_hosts_line()}\n"
        )
        (cli.cwd / "fieldtrace.toml").write_text(
            textwrap.dedent(
                f"""\
                [site]
                company = "ACME Telecom"
                contract = "TS-2024-117"
                [[devices]]
                name = "local"
                type = "linux-host"
                [[devices]]
                name = "gw1"
                type = "sip-gateway"
                address = "127.0.0.1"
                ssh = {{ port = {gw1.port}, username = "diag", key = {{ file = "{keyfile}" }} }}
                snmp = {{ port = {gw1_snmpd.port}, community = {{ file = "{community}" }} }}
                [[devices]]
                name = "gw2"
                type = "sip-gateway"
                address = "127.0.0.1"
                ssh = {{ port = {gw2.port}, username = "diag", password = {{ file = "{pwfile}" }} }}
                """
            )
        )
        yield gw1, gw2
    finally:
        gw1.stop()
        gw2.stop()


def _interval(s: dict[str, str]) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(s["started"]), datetime.fromisoformat(s["finished"])


def test_collect_by_type_fans_out_into_one_bundle(
    cli: Cli, gateways: tuple[CliSimulator, CliSimulator], tmp_path: Path
) -> None:
    gw1, gw2 = gateways
    gw1.latency = gw2.latency = 0.2  # each command takes a while, as on a real gateway
    data = collect_json(cli, "--type", "sip-gateway", check=1)
    # per-device status in the --json output: gw2's account cannot read the running config
    assert [(d["name"], d["status"]) for d in data["devices"]] == [
        ("gw1", "ok"),
        ("gw2", "failed"),
    ]
    assert data["devices"][0]["steps"] == {"ok": 9}
    assert data["devices"][1]["steps"] == {"failed": 1, "ok": 4, "skipped": 4}  # no SNMP
    bundle = Path(data["bundle"])
    assert "-multi-default-" in bundle.name
    assert len(list(bundle.parent.glob("*.age"))) == 1  # one bundle for the job

    top = open_with_stock_tools(bundle, cli.home / "identity.txt", tmp_path / "open")
    m = manifest_of(top)
    assert m["job"]["devices"] == ["gw1", "gw2"]  # --type picked the gateways, not "local"
    assert [d["status"] for d in m["devices"]] == ["ok", "failed"]
    assert set(m["kb"]) == {"sip-gateway"}
    files = {p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file()}
    for dev in ("gw1", "gw2"):
        for f in (
            "version/show_version.txt",
            "interfaces/show_ip_interface_brief.txt",
            "interfaces/show_interfaces.txt",
            "sip/show_sip-ua_status.txt",
            "sip/show_sip-ua_register_status.txt",
            "sip/show_sip-ua_calls.txt",
            "logging/show_logging.txt",
            "config/show_running-config.txt",
        ):
            assert f"{dev}/{f}" in files
    for s in m["steps"]:
        for a in s["artifacts"]:
            assert sha256(top / a["path"]) == a["sha256"]

    # gw1: everything collected, byte for byte what the device printed (paging off, no echo)
    recorded = MOCKED / "sip-gateway" / "isr4321-cube" / "show_interfaces.txt"
    assert (top / "gw1/interfaces/show_interfaces.txt").read_text() == recorded.read_text()
    sip = step({**m, "steps": [s for s in m["steps"] if s["device"] == "gw1"]}, "sip")
    assert [c["status"] for c in sip["facts"]["commands"]] == ["ok", "ok", "ok"]
    assert gw1.pager_answers == 0 and gw2.pager_answers == 0  # on_open turned paging off
    assert gw1.connections == 1 and gw1.shells == 1  # one connection, one shell for all steps

    # gw1 over SNMP: the system group and interface table in snmpwalk format
    system = (top / "gw1/snmp-system/system.txt").read_text()
    assert f"SNMPv2-MIB::sysName.0 = STRING: {SYSNAME}" in system
    assert "IF-MIB::ifDescr.1 = STRING: lo" in (top / "gw1/snmp-ifaces/ifTable.txt").read_text()
    assert (top / "gw1/snmp-ifaces/ifTable.json").is_file()
    snmp2 = [s for s in m["steps"] if s["device"] == "gw2" and s["collector"].startswith("snmp.")]
    assert [s["status"] for s in snmp2] == ["skipped"] * 4

    # gw2: the refused command is recorded as failed, with what the device said
    config2 = next(s for s in m["steps"] if s["device"] == "gw2" and s["id"] == "config")
    assert config2["status"] == "failed"
    assert "% Invalid input detected" in config2["error"]
    assert config2["facts"]["commands"][0]["status"] == "failed"
    assert "Invalid input" in (top / "gw2/config/show_running-config.txt").read_text()

    # secrets in the configuration and the log never reach the bundle
    config1 = next(s for s in m["steps"] if s["device"] == "gw1" and s["id"] == "config")
    assert sum(config1["artifacts"][0]["scrubbed"].values()) >= 10
    everything = b"".join((top / f).read_bytes() for f in files)
    for secret in PLANTED:
        assert secret.encode() not in everything, secret
    assert b"enable secret 5 <scrubbed>" in everything

    # the devices were collected in parallel: their first steps overlap in time
    first = [next(s for s in m["steps"] if s["device"] == d) for d in ("gw1", "gw2")]
    (a0, a1), (b0, b1) = _interval(first[0]), _interval(first[1])
    assert a0 < b1 and b0 < a1


def test_named_devices_and_all(cli: Cli, gateways: tuple[CliSimulator, CliSimulator]) -> None:
    data = collect_json(cli, "gw1", "--profile", "sip-calls", check=0)
    assert [d["name"] for d in data["devices"]] == ["gw1"]
    assert "-gw1-sip-calls-" in Path(data["bundle"]).name
    assert {s["id"] for s in data["steps"]} == {"registration", "calls", "statistics", "logging"}
    # --all in a dry run: every configured device, nothing touched
    gw2 = gateways[1]
    plan = collect_json(cli, "--all", "--dry-run", check=0)
    assert sorted({s["device"] for s in plan["steps"]}) == ["gw1", "gw2", "local"]
    assert gw2.connections == 0


def test_selection_errors_touch_nothing(cli: Cli) -> None:
    write_site(cli, ['{id: u, collector: local.command, command: "uname -a"}'])
    bad_type = cli.run("collect", "--type", "sip-gateway", check=2)
    assert "--type sip-gateway: no configured device has KB type 'sip-gateway'" in bad_type.stderr
    assert "types in the inventory: box" in bad_type.stderr
    both = cli.run("collect", "--all", "local", check=2)
    assert "--all cannot be combined" in both.stderr
    assert not (cli.home / "outbox" / "delivered").exists()


def test_progress_on_a_terminal_shows_each_device(
    cli: Cli, gateways: tuple[CliSimulator, CliSimulator]
) -> None:
    # stderr is a terminal: the progress display has a line per device with its current
    # step, then its status
    for gw in gateways:
        gw.latency = 0.2  # each step lasts a few screen refreshes
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "collect", "--type", "sip-gateway"],
            cwd=cli.cwd,
            env={**cli.env, "COLUMNS": "160", "TERM": "xterm"},
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
        )
        os.close(slave)
        slave = -1
        screen = bytearray()
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, "no progress output within 60s"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    assert proc.returncode == 1
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode("utf-8", "replace"))
    assert re.search(
        r"gw[12] [^\r\n]* (version|config|interfaces|sip|logging) \(ssh\.shell\)", text
    )
    assert re.search(r"gw1 [^\r\n]*100% ok", text)
    assert re.search(r"gw2 [^\r\n]*100% failed", text)
    # and the summary on stdout has a line per device
    assert "gw1 (sip-gateway): ok (ok 9)" in out
    assert "gw2 (sip-gateway): failed (failed 1, ok 4, skipped 4)" in out


def test_a_device_that_is_down_does_not_hold_up_the_others(
    cli: Cli, gateways: tuple[CliSimulator, CliSimulator], tmp_path: Path
) -> None:
    gw1, gw2 = gateways
    gw2.stop()  # its port now refuses connections
    data = collect_json(cli, "gw1", "gw2", check=1)
    assert [(d["name"], d["status"]) for d in data["devices"]] == [
        ("gw1", "ok"),
        ("gw2", "failed"),
    ]
    gw2_steps = [s for s in data["steps"] if s["device"] == "gw2" and s["status"] != "skipped"]
    assert len(gw2_steps) == 5
    assert all("connection refused" in s["error"] for s in gw2_steps)
    top = open_with_stock_tools(Path(data["bundle"]), cli.home / "identity.txt", tmp_path / "o")
    assert (top / "gw1/sip/show_sip-ua_calls.txt").is_file()
    assert not (top / "gw2").exists()
    assert gw1.connections == 1
