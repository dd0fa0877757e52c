"""The CLI over SSH end to end: ``collect`` from several devices over a real sshd (each
failure recorded, the job ending on time, no secret in the bundle), ``devices list --probe``
and ``devices trust``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.e2e.helpers import manifest_of, open_with_stock_tools
from tests.fixtures import sshd as fx
from tests.fixtures.ports import free_port
from tests.fixtures.sshd import Sshd
from tests.fixtures.tcp_proxy import CuttingProxy

pytestmark = pytest.mark.integration
sshd = fx.sshd
sshd_user = fx.sshd_user

ENABLE = "pl4ntedEnableSecretHash"
COMMUNITY = "pl4ntedSnmpCommunity"


def fingerprint_of(pubfile: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(pubfile)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[1]


def ssh_device(
    name: str,
    server: Sshd,
    port: int | None = None,
    key: Path | None = None,
    address: str = "127.0.0.1",
) -> str:
    return textwrap.dedent(
        f"""\
        [[devices]]
        name = "{name}"
        type = "testgw"
        address = "{address}"
        ssh = {{ port = {port or server.port}, username = "{server.user}", timeout = "3s", KEY }}
        """
    ).replace("KEY", f'key = {{ file = "{key or server.client_key}" }}')


def write_config(cli: Cli, devices: str, steps: list[str]) -> Path:
    kbdir = cli.cwd / "kb"
    kbdir.mkdir(exist_ok=True)
    body = "\n".join(f"      - {s}" for s in steps)
    (kbdir / "testgw.yaml").write_text(
        "type: testgw\ntitle: Test gateway\nremote_access:\n  - {port: 22, protocol: tcp}\n"
        f"profiles:\n  default:\n    title: t\n    steps:\n{body}\n"
    )
    config = cli.cwd / "fieldtrace.toml"
    config.write_text(f'[site]\ncompany = "ACME Telecom"\n[kb]\npaths = ["{kbdir}"]\n\n' + devices)
    return config


@pytest.fixture
def device_files() -> Iterator[Path]:
    """Files 'on the device' (readable by any login user), removed afterwards."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="ft-device-"))
    d.chmod(0o755)
    (d / "running.conf").write_text(
        "hostname gw1\n"
        f"enable secret 5 {ENABLE}\n"
        f"snmp-server community {COMMUNITY} RO\n"
        "interface Gi0/0\n ip address 192.0.2.1 255.255.255.0\n"
    )
    (d / "sip.log").write_text("".join(f"INVITE sip:{i}@example.test\n" for i in range(5000)))
    (d / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    (d / "waiting.txt").write_text("waiting\n")  # tail -f prints it, then waits forever
    for f in d.iterdir():
        f.chmod(0o644)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Traffic:
    def __init__(self) -> None:
        self.port = free_port()
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            while not self.stop.is_set():
                u.sendto(b"REGISTER sip:test SIP/2.0\r\n", ("127.0.0.1", self.port))
                time.sleep(0.01)


def test_collect_over_ssh_records_each_failure_and_leaks_no_secret(
    cli: Cli, sshd: Sshd, sshd_user: Sshd, device_files: Path, tmp_path: Path
) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")],
        check=True,
    )
    traffic = Traffic()
    traffic.t.start()
    with (
        CuttingProxy(sshd.port, cut_after=3 * 1024 * 1024) as dropper,
        CuttingProxy(sshd.port) as unknown,
    ):
        devices = (
            ssh_device("gw1", sshd)
            + ssh_device("gw2", sshd_user)
            + ssh_device("badauth", sshd, key=tmp_path / "stranger")
            + ssh_device("unknown", sshd, port=unknown.port)
            + ssh_device("changed", sshd_user, address="localhost")
            + ssh_device("down", sshd, port=free_port())
            + ssh_device("dropper", sshd, port=dropper.port)
        )
        write_config(
            cli,
            devices,
            [
                "{id: version, collector: ssh.command, command: 'cat "
                f"{device_files}/running.conf {sshd.client_key}'}}",
                f"{{id: config, collector: ssh.file, path: '{device_files}/*.conf'}}",
                f"{{id: log, collector: ssh.file, path: '{device_files}/sip.log', "
                "max_bytes: 10KB, tail: true}",
                f"{{id: big, collector: ssh.file, path: '{device_files}/big.bin', max_bytes: 8MB}}",
                "{id: trace, collector: ssh.capture, interface: lo, "
                f"filter: 'udp port {traffic.port}', duration: 2s}}",
                "{id: hang, collector: ssh.command, command: 'tail -f "
                f"{device_files}/waiting.txt', timeout: 2s}}",
            ],
        )
        known = [
            sshd.known_hosts_line(),
            sshd_user.known_hosts_line(),
            sshd.known_hosts_line(dropper.port),
            f"[localhost]:{sshd_user.port} {sshd.host_key_line}",  # not that device's key
        ]
        (cli.home / "known_hosts").write_text("\n".join(known) + "\n")
        t0 = time.monotonic()
        proc = cli.run("collect", "--json", timeout=120)
        elapsed = time.monotonic() - t0
    traffic.stop.set()
    assert proc.returncode == 1, proc.stderr
    assert elapsed < 60
    assert "Traceback" not in proc.stderr  # failures are step messages, not library noise
    data = json.loads(proc.stdout)
    top = open_with_stock_tools(Path(data["bundle"]), cli.home / "identity.txt", tmp_path / "o")
    m = manifest_of(top)
    st = {(s["device"], s["id"]): s for s in m["steps"]}
    for s in m["steps"]:  # shown by pytest if an assertion below fails
        print(f"{s['device']}/{s['id']}: {s['status']} {s['seconds']}s {s['error'] or ''}")
    print(proc.stderr)

    def status(dev: str, step: str) -> str:
        return str(st[(dev, step)]["status"])

    def error(dev: str, step: str) -> str:
        return str(st[(dev, step)]["error"])

    # the healthy device: everything but the hanging command
    for step in ("version", "config", "log", "big", "trace"):
        assert status("gw1", step) == "ok", (step, error("gw1", step))
    assert status("gw1", "hang") == "timeout"
    assert (top / "gw1/hang/output.txt").read_text() == "waiting\n"
    assert st[("gw1", "trace")]["facts"]["stop_reason"] == "duration"
    assert st[("gw1", "trace")]["facts"]["packets"] > 0
    pcap = top / "gw1/trace/capture.pcap"
    r = subprocess.run(["tcpdump", "-r", str(pcap)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "REGISTER" not in r.stderr
    assert (top / "gw1/big/files" / str(device_files / "big.bin").lstrip("/")).read_bytes() == (
        device_files / "big.bin"
    ).read_bytes()
    tail = (top / "gw1/log/files" / str(device_files / "sip.log").lstrip("/")).read_text()
    assert tail.endswith("INVITE sip:4999@example.test\n") and len(tail) <= 10_000
    # an unprivileged login: files fine, capture refused with the reason
    assert status("gw2", "config") == "ok"
    assert status("gw2", "trace") == "failed" and "no permission" in error("gw2", "trace")
    # each broken device: one clear reason, on every step
    for step in ("version", "config", "trace"):
        assert "authentication failed" in error("badauth", step)
        assert "not trusted" in error("unknown", step)
        assert "devices trust unknown" in error("unknown", step)
        assert "CHANGED" in error("changed", step)
        assert "connection refused" in error("down", step)
    # the dropped connection: what came before is kept, the cut file is partial
    assert status("dropper", "version") == "ok"
    assert status("dropper", "big") in ("partial", "failed")
    assert "connection lost" in error("dropper", "big")
    # ... and the next steps ran over a new connection
    assert status("dropper", "trace") == "ok", error("dropper", "trace")
    devices_status = {d["name"]: d["status"] for d in m["devices"]}
    assert devices_status["gw1"] == "timeout" and devices_status["down"] == "failed"
    # no planted secret anywhere in the bundle, in files or command output
    key_body = [ln for ln in sshd.client_key.read_text().splitlines() if "-----" not in ln]
    for f in top.rglob("*"):
        if f.is_file():
            blob = f.read_bytes()
            assert ENABLE.encode() not in blob, f
            assert COMMUNITY.encode() not in blob, f
            for line in key_body:
                assert line.encode() not in blob, f
    version = (top / "gw1/version/output.txt").read_text()
    assert "enable secret 5 <scrubbed>" in version and "PRIVATE KEY" in version


def _trust_config(cli: Cli, server: Sshd, extra: str = "") -> None:
    write_config(
        cli,
        ssh_device("gw1", server) + extra,
        ["{id: version, collector: ssh.command, command: 'uname -a'}"],
    )


def test_devices_trust_records_the_key_after_confirmation(
    cli: Cli, sshd: Sshd, tmp_path: Path
) -> None:
    _trust_config(cli, sshd)
    kh = cli.home / "known_hosts"
    fp = fingerprint_of(sshd.host_key.with_suffix(".pub"))
    p = cli.run("devices", "trust", "gw1", check=2)  # stdin is not a terminal
    assert "not a terminal" in p.stderr and fp in p.stdout
    assert not kh.exists()
    p = cli.run("devices", "trust", "gw1", "--yes", check=0)
    assert fp in p.stdout and "ssh-ed25519" in p.stdout
    assert kh.read_text() == sshd.known_hosts_line() + "\n"
    assert kh.stat().st_mode & 0o777 == 0o600
    p = cli.run("devices", "trust", "gw1", "--yes", check=0)
    assert "already trusted" in p.stdout
    # the job now runs
    proc = cli.run("collect", "--json", check=0)
    assert json.loads(proc.stdout)["summary"]["ok"] == 1
    # a changed key: refused loudly unless explicitly replaced
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    fake = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    kh.write_text(f"example.test {fake}\n[127.0.0.1]:{sshd.port} {fake}\n")
    p = cli.run("devices", "trust", "gw1", "--yes", check=2)
    assert "HAS CHANGED" in p.stderr and "--replace" in p.stderr
    assert fingerprint_of(other.with_suffix(".pub")) in p.stderr
    p = cli.run("devices", "trust", "gw1", "--yes", "--replace", check=0)
    assert "replaced" in p.stdout
    assert kh.read_text() == f"example.test {fake}\n" + sshd.known_hosts_line() + "\n"


def test_devices_trust_errors(cli: Cli, sshd: Sshd) -> None:
    write_config(
        cli,
        ssh_device("down", sshd, port=free_port()),
        ["{id: v, collector: ssh.command, command: 'true'}"],
    )
    p = cli.run("devices", "trust", "nosuch", "--yes", check=2)
    assert "unknown device 'nosuch'" in p.stderr
    p = cli.run("devices", "trust", "down", "--yes", check=3)
    assert "connection refused" in p.stderr and "nothing was recorded" in p.stderr


def test_devices_list_and_probe(cli: Cli, sshd: Sshd) -> None:
    snmp_port = free_port()
    community = cli.cwd / "community"
    community.write_text("public\n")
    devices = (
        ssh_device("gw1", sshd)
        + f'snmp = {{ port = {snmp_port}, community = {{ file = "{community}" }}, timeout = "1s", '
        "retries = 0 }\n" + ssh_device("down", sshd, port=free_port())
    )
    write_config(cli, devices, ["{id: v, collector: ssh.command, command: 'true'}"])
    p = cli.run("devices", "list", check=0)
    assert "gw1" in p.stdout and "ssh, snmp]" in p.stdout and "down" in p.stdout
    (cli.home / "known_hosts").write_text(sshd.known_hosts_line() + "\n")
    p = cli.run("devices", "list", "--probe", "--json", check=1)
    rows: dict[str, Any] = {d["name"]: d for d in json.loads(p.stdout)["devices"]}
    assert rows["gw1"]["probe"]["ssh"] == "ok: logged in as root"
    snmp = rows["gw1"]["probe"]["snmp"]
    assert snmp.startswith(("failed:", "not available")), snmp  # nobody answers on that port
    assert rows["down"]["probe"]["ssh"].startswith("failed:")
    assert "connection refused" in rows["down"]["probe"]["ssh"]
    assert rows["gw1"]["transports"][-2:] == ["ssh", "snmp"]


def _trust_on_a_terminal(cli: Cli, answer: str) -> subprocess.CompletedProcess[str]:
    """``devices trust gw1`` with stdin on a pseudo-terminal, typing ``answer``."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = cli.start("devices", "trust", "gw1", stdin=slave)
        os.write(master, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
        os.close(slave)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_devices_trust_asks_on_a_terminal(cli: Cli, sshd: Sshd, tmp_path: Path) -> None:
    _trust_config(cli, sshd)
    kh = cli.home / "known_hosts"
    p = _trust_on_a_terminal(cli, "no")
    assert p.returncode == 1 and "Type 'yes' to trust this key" in p.stdout
    assert "nothing was recorded" in p.stdout and not kh.exists()
    p = _trust_on_a_terminal(cli, "yes")
    assert p.returncode == 0, p.stderr
    assert kh.read_text() == sshd.known_hosts_line() + "\n"
    # a changed key needs the word "replace", not a reflexive "yes"
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    fake = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    kh.write_text(f"[127.0.0.1]:{sshd.port} {fake}\n")
    p = _trust_on_a_terminal(cli, "yes")
    assert p.returncode == 1 and "HAS CHANGED" in p.stderr and "Type 'replace'" in p.stdout
    assert kh.read_text() == f"[127.0.0.1]:{sshd.port} {fake}\n"
    p = _trust_on_a_terminal(cli, "replace")
    assert p.returncode == 0 and kh.read_text() == sshd.known_hosts_line() + "\n"
