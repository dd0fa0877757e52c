"""``fieldtrace check-access`` and the ``access.check`` step against real rulesets.

The CLI runs inside the test's "device" namespace (firewall = "local"), or in the root
namespace reading the device namespace's rules over SSH from the real sshd fixture (whose
ForceCommand runs every command inside the device namespace), or against a gateway's FORWARD
chain. Each test asserts what a user sees: the exit code, the rule named, the fix, the file in
the bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.e2e.helpers import open_with_stock_tools
from tests.fixtures.sshd import Sshd, running_sshd, throwaway_user
from tests.integration.firewall.netns import NetnsBed

pytestmark = pytest.mark.integration

KB = """\
type: fwbox
title: A box behind a firewall
remote_access:
  - {port: 22, protocol: tcp, purpose: ssh}
  - {port: 161, protocol: udp, purpose: snmp}
profiles:
  default:
    title: access only
    steps:
      - {id: access, collector: access.check}
"""

COMPLIANT = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -s 198.51.100.7/32 -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -s 198.51.100.7/32 -p udp -m udp --dport 161 -j ACCEPT
COMMIT
"""
COMPLIANT6 = COMPLIANT.replace("198.51.100.7/32", "2001:db8:1::7/128")
OPEN_SSH = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -s 198.51.100.7/32 -p udp -m udp --dport 161 -j ACCEPT
-A INPUT -p udp -m udp --dport 161 -m recent --rcheck -j ACCEPT
COMMIT
"""


@pytest.fixture
def bed() -> Iterator[NetnsBed]:
    b = NetnsBed()
    try:
        b.up()
        yield b
    finally:
        b.close()


def site(cli: Cli, devices: str, support: str = '"198.51.100.7/32", "2001:db8:1::7/128"') -> None:
    kbdir = cli.cwd / "kb"
    kbdir.mkdir(exist_ok=True)
    (kbdir / "fwbox.yaml").write_text(KB)
    (cli.cwd / "fieldtrace.toml").write_text(
        f'[vendor]\nsupport_ips = [{support}]\n[kb]\npaths = ["{kbdir}"]\n'
        + textwrap.dedent(devices)
    )


def run_in(bed: NetnsBed, cli: Cli, *args: str, env: dict[str, str] | None = None,
           user: int | None = None, cwd: Path | None = None,
           ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """fieldtrace inside the device namespace (optionally as another uid)."""
    argv = [sys.executable, "-m", "agent", *args]
    if user is not None:
        argv = ["/usr/bin/setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(
        bed.exec_argv("device", argv),
        cwd=cwd or cli.cwd,
        env=env or cli.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


LOCAL_DEVICE = """
[[devices]]
name = "box"
type = "fwbox"
address = "198.51.100.1"
firewall = "local"
"""


def test_compliant_ruleset_exit_0_and_probe(bed: NetnsBed, cli: Cli) -> None:
    bed.load("iptables", COMPLIANT)
    bed.load("ip6tables", COMPLIANT6)
    bed.listen()
    site(cli, LOCAL_DEVICE)
    proc = run_in(bed, cli, "check-access", "--json", "--probe")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    (dev,) = out["devices"]
    assert out["compliant"] and dev["status"] == "compliant"
    assert [r["status"] for r in dev["requirements"]] == ["ok", "ok"]
    assert dev["requirements"][0]["vendor"] == {"198.51.100.7": "accept"}
    assert dev["firewall"]["destination"] == "198.51.100.1"
    assert any(s.startswith("iptables-nft-save") for s in dev["firewall"]["read"])
    probes = {(p["port"], p["protocol"]): p["result"] for p in dev["probes"]}
    assert probes == {(22, "tcp"): "open", (161, "udp"): "answered"}
    text = run_in(bed, cli, "check-access")
    assert text.returncode == 0 and "compliant" in text.stdout


def test_violation_names_the_rule_and_the_fix(bed: NetnsBed, cli: Cli) -> None:
    bed.load("iptables", OPEN_SSH)
    site(cli, LOCAL_DEVICE, support='"198.51.100.7/32"')
    proc = run_in(bed, cli, "check-access")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "'filter INPUT #2: -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT'" in out
    assert "accepts 22/tcp from outside the vendor's networks" in out
    assert "fix: restrict it to the vendor: add -s 198.51.100.7/32 to it" in out
    # the -m recent rule cannot be modelled: named, never guessed
    data = json.loads(run_in(bed, cli, "check-access", "--json").stdout)
    unknown = data["devices"][0]["unknown"]
    assert unknown and unknown[0]["rule"]["position"] == 4
    assert "recent" in unknown[0]["reason"]
    assert data["devices"][0]["requirements"][1]["status"] == "unknown"


def test_missing_tools_and_no_permission_exit_2(bed: NetnsBed, cli: Cli, tmp_path: Path) -> None:
    site(cli, LOCAL_DEVICE)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink("/usr/bin/cat", bin_dir / "cat")
    proc = run_in(bed, cli, "check-access", env={**cli.env, "PATH": str(bin_dir)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "neither nft or iptables-save is installed" in proc.stdout
    site(
        cli,
        LOCAL_DEVICE.replace(
            'firewall = "local"', 'firewall = "local"\nfirewall_kind = "nftables"'
        ),
    )
    proc = run_in(bed, cli, "check-access", "--json", env={**cli.env, "PATH": str(bin_dir)})
    assert proc.returncode == 2
    assert "nft is not installed" in json.loads(proc.stdout)["devices"][0]["error"]
    # not root: the kernel refuses to list the rules (config and home readable by nobody)
    home = Path(tempfile.mkdtemp(prefix="ft-nobody-"))
    try:
        home.chmod(0o777)
        (home / "kb").mkdir(mode=0o755)
        (home / "kb" / "fwbox.yaml").write_text(KB)
        config = home / "fieldtrace.toml"
        config.write_text(
            (cli.cwd / "fieldtrace.toml")
            .read_text()
            .replace(str(cli.cwd / "kb"), str(home / "kb"))
            .replace('firewall_kind = "nftables"', "")
        )
        for p in (home / "kb" / "fwbox.yaml", config):
            p.chmod(0o644)
        env = {**cli.env, "FIELDTRACE_HOME": str(home / "state"), "FIELDTRACE_NO_LOGFILE": "1",
               "FIELDTRACE_CONFIG": str(config)}  # fmt: skip
        proc = run_in(bed, cli, "check-access", env=env, user=65534, cwd=home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "permission denied" in proc.stdout and "root" in proc.stdout


def test_bad_firewall_setting_is_a_config_error(cli: Cli) -> None:
    site(cli, LOCAL_DEVICE.replace('firewall = "local"', 'firewall = "gw9"'))
    proc = cli.run("check-access")
    assert proc.returncode == 2
    assert "devices[0].firewall" in proc.stderr and "'gw9'" in proc.stderr
    site(cli, LOCAL_DEVICE.replace('firewall = "local"', 'firewall = "ssh"'))
    proc = cli.run("check-access")
    assert proc.returncode == 2
    assert '"ssh" needs ssh settings for device box' in proc.stderr


def test_gateway_forward_path(bed: NetnsBed, cli: Cli) -> None:
    bed.load(
        "iptables",
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        "-A FORWARD -m conntrack --ctstate ESTABLISHED -j ACCEPT\n"
        "-A FORWARD -s 198.51.100.7/32 -d 203.0.113.50/32 -p tcp -m tcp --dport 22 -j ACCEPT\n"
        "-A FORWARD -d 203.0.113.50/32 -j DROP\nCOMMIT\n",
    )
    site(
        cli,
        """
        [[devices]]
        name = "gw"
        type = "fwbox"
        address = "localhost"

        [[devices]]
        name = "pbx"
        type = "fwbox"
        address = "203.0.113.50"
        firewall = "gw"
        """,
    )
    proc = run_in(bed, cli, "check-access", "pbx", "--json")
    dev = json.loads(proc.stdout)["devices"][0]
    assert dev["firewall"]["path"] == "forward" and "gateway gw" in dev["firewall"]["location"]
    assert dev["requirements"][0]["status"] == "ok"  # 22/tcp: vendor only
    blocked = dev["violations"][0]
    assert blocked["kind"] == "vendor-blocked" and blocked["port"] == 161
    assert blocked["rule"]["text"] == "-A FORWARD -d 203.0.113.50/32 -j DROP"
    assert "-I FORWARD 3 -s 198.51.100.7/32 -p udp --dport 161 -j ACCEPT" in blocked["fix"]
    assert proc.returncode == 1
    # this host is the gateway: the KB step reads it too, and the bundle carries the verdict
    proc = run_in(bed, cli, "collect", "pbx", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    top = open_with_stock_tools(
        Path(json.loads(proc.stdout)["bundle"]), cli.home / "identity.txt", cli.cwd / "out"
    )
    (step,) = json.loads((top / "manifest.json").read_text())["steps"]
    assert step["facts"] == {"compliant": False, "violations": 1, "unknown": 0}, step
    text = (top / "pbx" / "access" / "access.txt").read_text()
    assert "-A FORWARD -d 203.0.113.50/32 -j DROP" in text and "161/udp" in text


@pytest.fixture
def ns_sshd(bed: NetnsBed) -> Iterator[Sshd]:
    """The real sshd fixture, every command it runs executed inside the device namespace."""
    ns = bed.ns["device"]
    force = f'ForceCommand /usr/sbin/ip netns exec {ns} /bin/sh -c "$SSH_ORIGINAL_COMMAND"'
    with running_sshd(extra_config=force) as server:
        yield server


def ssh_site(cli: Cli, server: Sshd, name: str = "gw1", user: str = "root") -> None:
    (cli.home / "known_hosts").write_text(server.known_hosts_line() + "\n")
    key = server.client_key
    site(
        cli,
        f"""
        [[devices]]
        name = "{name}"
        type = "fwbox"
        address = "127.0.0.1"
        firewall = "ssh"
        ssh = {{ port = {server.port}, username = "{user}", key = {{ file = "{key}" }} }}
        """,
    )


def test_rules_read_over_ssh(bed: NetnsBed, cli: Cli, ns_sshd: Sshd) -> None:
    bed.load("iptables", OPEN_SSH)
    bed.load("ip6tables", COMPLIANT6)
    bed.load("nft", "table inet extra {\n chain input {\n  type filter hook input priority 10;"
             " policy accept;\n  tcp dport 8080 accept\n }\n}\n")  # fmt: skip
    ssh_site(cli, ns_sshd)
    proc = cli.run("check-access", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    dev: dict[str, Any] = json.loads(proc.stdout)["devices"][0]
    assert dev["firewall"]["location"] == "gw1 over SSH"
    assert any(s.startswith("nft -j list ruleset (1 tables)") for s in dev["firewall"]["read"])
    msgs = [v["message"] for v in dev["violations"]]
    assert any("-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT" in m for m in msgs), msgs
    # 8080 is accepted by the nft chain but dropped by iptables' policy: not open
    assert not any(8080 in v["ports"] for v in dev["violations"])


def test_collect_bundle_carries_the_verdict(bed: NetnsBed, cli: Cli, ns_sshd: Sshd) -> None:
    bed.load("iptables", COMPLIANT)
    bed.load("ip6tables", COMPLIANT6)
    ssh_site(cli, ns_sshd)
    proc = cli.run("collect", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(proc.stdout)
    top = open_with_stock_tools(Path(res["bundle"]), cli.home / "identity.txt", cli.cwd / "out")
    manifest = json.loads((top / "manifest.json").read_text())
    (step,) = manifest["steps"]
    assert step["status"] == "ok", step
    assert step["facts"] == {"compliant": True, "violations": 0, "unknown": 0}
    doc = json.loads((top / "gw1" / "access" / "access.json").read_text())
    assert doc["compliant"] and doc["firewall"] == "ssh"
    assert "-A INPUT -s 198.51.100.7/32" in (top / "gw1/access/rules/iptables-save.txt").read_text()
    assert "result: COMPLIANT" in (top / "gw1" / "access" / "access.txt").read_text()


def test_ssh_user_without_privileges_exit_2(cli: Cli) -> None:
    with throwaway_user() as user, running_sshd(user=user) as server:
        ssh_site(cli, server, name="gw2", user=user)
        proc = cli.run("check-access", "--json")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = json.loads(proc.stdout)["devices"][0]["error"]
    assert error.startswith("gw2: ") and "permission denied" in error and "root" in error
