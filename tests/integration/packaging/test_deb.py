"""The Debian package, built and installed on this machine (root), then purged.

Runs in file order: build -> lintian -> install -> use -> reinstall -> purge.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration
STATE = Path("/var/lib/fieldtrace")
ETC = Path("/etc/fieldtrace")
OPT = Path("/opt/fieldtrace")
# MemoryDenyWriteExecute= of the unit, reproduced with the kernel's PR_SET_MDWE (inherited
# by every child and kept across execve): no writable+executable memory, ever
MDWE = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "assert libc.prctl(65, 1, 0, 0, 0) == 0, os.strerror(ctypes.get_errno())\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


def run(
    *argv: str, check: bool = True, timeout: float = 300, **kw: object
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd="/", **kw)  # type: ignore[call-overload]  # fmt: skip
    if check:
        assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc  # type: ignore[no-any-return]


def purge() -> None:
    run("dpkg", "--purge", "fieldtrace", check=False)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    assert os.geteuid() == 0, "the package tests install a .deb: run them as root"
    if OPT.exists() or run("dpkg-query", "-W", "fieldtrace", check=False).returncode == 0:
        purge()  # a leftover of an earlier, killed run
    out = tmp_path_factory.mktemp("deb")
    t0 = time.monotonic()
    proc = subprocess.run([str(REPO / "packaging" / "build-deb"), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    took = time.monotonic() - t0
    (path,) = out.glob("fieldtrace_*_*.deb")
    print(f"built {path.name} in {took:.0f}s: {proc.stdout.strip().splitlines()[-1]}")
    try:
        yield path
    finally:
        purge()


def test_build_is_quick_and_small(deb: Path) -> None:
    assert re.fullmatch(r"fieldtrace_\d+\.\d+\.\d+_[a-z0-9]+\.deb", deb.name)
    assert deb.stat().st_size < 40 * 1024**2


def test_lintian_reports_no_errors(deb: Path) -> None:
    proc = run("lintian", "--no-tag-display-limit", str(deb), check=False, timeout=300)
    tags = [ln for ln in proc.stdout.splitlines() if re.match(r"^[EW]: ", ln)]
    assert not [t for t in tags if t.startswith("E: ")], proc.stdout
    assert not tags, "warnings without an override:\n" + "\n".join(tags)


def test_install_without_network_gives_user_dirs_and_modes(deb: Path) -> None:
    # dpkg itself never reaches the network: everything is in the .deb
    run("dpkg", "-i", str(deb))
    assert run("id", "-u", "fieldtrace").stdout.strip().isdigit()
    st = STATE.stat()
    assert oct(st.st_mode & 0o777) == "0o700"
    assert run("stat", "-c", "%U", str(STATE)).stdout.strip() == "fieldtrace"
    cfg = ETC / "fieldtrace.toml"
    assert oct(cfg.stat().st_mode & 0o777) == "0o640"
    assert (ETC / "kb.d").is_dir()
    assert run("man", "-w", "fieldtrace").stdout.strip().endswith("fieldtrace.1.gz")
    page = run("man", "fieldtrace", timeout=60).stdout
    for command in ("collect", "capture", "serve", "health run", "bundle open", "check-access"):
        assert f"fieldtrace {command}" in page, command


def test_unit_verifies_and_is_hardened(deb: Path) -> None:
    unit = "/lib/systemd/system/fieldtrace.service"
    proc = run("systemd-analyze", "verify", unit, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    proc = run("systemd-analyze", "security", "--offline=yes", unit, check=False)
    m = re.search(r"Overall exposure level for fieldtrace.service: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout[-2000:]
    assert float(m.group(1)) <= 3.0, proc.stdout


def test_the_fieldtrace_user_collects_this_host(deb: Path) -> None:
    as_user = ["runuser", "-u", "fieldtrace", "--", "fieldtrace"]
    assert run(*as_user, "--version").stdout.startswith("fieldtrace ")
    assert "config ok: /etc/fieldtrace/fieldtrace.toml" in run(*as_user, "config", "check").stdout
    proc = run(*as_user, "collect", check=False)
    assert proc.returncode in (0, 1), proc.stderr
    bundles = list((STATE / "outbox" / "delivered").glob("*.tar.zst.age"))
    assert len(bundles) == 1
    assert "fieldtrace bundle open /var/lib/fieldtrace/outbox/delivered/" in proc.stdout


def test_root_runs_as_the_service_user_so_state_stays_its_own(deb: Path) -> None:
    proc = run("fieldtrace", "collect", "--json", check=False)  # as `sudo fieldtrace collect`
    assert proc.returncode in (0, 1), proc.stderr
    owners = run("find", str(STATE), "!", "-user", "fieldtrace").stdout.split()
    assert owners == [], owners
    assert run("fieldtrace", "keys", "show").stdout == run(
        "runuser", "-u", "fieldtrace", "--", "fieldtrace", "keys", "show").stdout  # fmt: skip


def _sender(port: int, stop: threading.Event) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while not stop.is_set():
            s.sendto(b"fieldtrace package test", ("127.0.0.1", port))
            time.sleep(0.05)


def test_capture_and_check_access_under_the_units_restrictions(deb: Path, tmp_path: Path) -> None:
    """As the service runs them: the fieldtrace user, only CAP_NET_RAW + CAP_NET_ADMIN (ambient
    and bounding), no new privileges, and no writable+executable memory (MDWE)."""
    launcher = tmp_path / "mdwe.py"
    launcher.write_text(MDWE)
    launcher.chmod(0o644)
    tmp_path.chmod(0o755)
    restricted = [sys.executable, str(launcher), "fieldtrace"]  # the wrapper drops to the user
    caps = run(sys.executable, str(launcher), "setpriv", "--reuid=fieldtrace", "--regid=fieldtrace",
               "--init-groups", "--inh-caps=-all,+net_raw,+net_admin",
               "--ambient-caps=-all,+net_raw,+net_admin", "--bounding-set=-all,+net_raw,+net_admin",
               "--no-new-privs", "grep", "^Cap", "/proc/self/status").stdout  # fmt: skip
    assert "CapAmb:\t0000000000003000" in caps and "CapBnd:\t0000000000003000" in caps
    port = 40000 + os.getpid() % 20000
    stop = threading.Event()
    sender = threading.Thread(target=_sender, args=(port, stop), daemon=True)
    sender.start()
    try:
        proc = run(*restricted, "capture", "-i", "lo", "-f", f"udp port {port}", "-d", "3s",
                   "--json", check=False, timeout=120)  # fmt: skip
    finally:
        stop.set()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"packets"' in proc.stdout
    proc = run(*restricted, "check-access", "--json", check=False, timeout=300)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # read the rules: a verdict


def test_reinstall_keeps_an_edited_config_and_a_queued_bundle(deb: Path) -> None:
    key = ETC / "helpdesk.key"
    key.write_text("0" * 40 + "\n")
    os.chown(key, 0, int(run("id", "-g", "fieldtrace").stdout))
    key.chmod(0o640)
    cfg = ETC / "fieldtrace.toml"
    cfg.write_text(
        cfg.read_text() + '\n[site]\ncompany = "ACME Telecom"\ncontract = "TS-1"\n'
        '[helpdesk]\nbackend = "redmine"\nurl = "http://127.0.0.1:9"\n'
        f'api_key = {{ file = "{key}" }}\nproject = "diag"\ntimeout = "2s"\n'
    )
    proc = run("fieldtrace", "collect", "--json", check=False)
    queued = list((STATE / "outbox" / "queue").glob("*.tar.zst.age"))
    assert len(queued) == 1, proc.stdout + proc.stderr
    edited = cfg.read_text()
    run("dpkg", "-i", str(deb))
    assert cfg.read_text() == edited
    assert list((STATE / "outbox" / "queue").glob("*.tar.zst.age")) == queued
    assert "queued" in run("fieldtrace", "outbox", "list").stdout


def test_purge_removes_everything(deb: Path) -> None:
    run("dpkg", "--purge", "fieldtrace")
    for path in (ETC, STATE, OPT, Path("/usr/bin/fieldtrace")):
        assert not path.exists(), path
    assert run("id", "fieldtrace", check=False).returncode != 0
    assert run("getent", "group", "fieldtrace", check=False).returncode != 0
