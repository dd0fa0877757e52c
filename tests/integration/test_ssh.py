"""SSH collectors and session opening against a real OpenSSH sshd on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ConfigError
from agent.settings import Device, Settings
from agent.ssh_session import fetch_host_key, fingerprint, open_ssh
from collectors.base import (
    ArtifactSink,
    Collector,
    DeviceInfo,
    StepContext,
    StepError,
    StepFailed,
    StepPartial,
    StepSkipped,
    StepTimeout,
)
from collectors.ssh import SshCapture, SshCommand, SshFile, SshSession
from tests.fixtures import sshd as fx
from tests.fixtures.ports import free_port
from tests.fixtures.sshd import SSHD_USER_PASSWORD, Sshd, running_sshd
from tests.fixtures.tcp_proxy import CuttingProxy
from tests.fixtures.tshark import tshark_count

pytestmark = pytest.mark.integration
sshd = fx.sshd
sshd_user = fx.sshd_user


def device(server: Sshd, name: str = "gw1", port: int | None = None, **ssh: Any) -> Device:
    settings = {"port": port or server.port, "username": server.user}
    settings.update(ssh)
    if "key" not in settings and "password" not in settings:
        settings["key"] = {"file": str(server.client_key)}
    return Device.model_validate(
        {"name": name, "type": "testgw", "address": "127.0.0.1", "ssh": settings}
    )


def trusting_home(tmp: Path, *servers: Sshd) -> Path:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    lines = [s.known_hosts_line(p) for s in servers for p in s.ports]
    (home / "known_hosts").write_text("\n".join(lines) + "\n")
    return home


@pytest.fixture(scope="module")
def root_session(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshSession]:
    s = open_ssh(device(sshd), trusting_home(tmp_path_factory.mktemp("h"), sshd))
    yield s
    s.close()


@pytest.fixture(scope="module")
def user_session(sshd_user: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshSession]:
    s = open_ssh(device(sshd_user), trusting_home(tmp_path_factory.mktemp("h"), sshd_user))
    yield s
    s.close()


class Ran:
    def __init__(self, root: Path, facts: dict[str, Any] | None, error: StepError | None):
        self.root = root
        self.facts = facts or (error.facts if isinstance(error, StepPartial) else {})
        self.error = error
        self.seconds = 0.0

    def file(self, name: str) -> Path:
        return self.root / "gw1" / "step" / name


def run(
    collector: Collector,
    session: SshSession,
    tmp: Path,
    deadline: float = 60,
    cancel_after: float | None = None,
    **options: Any,
) -> Ran:
    root = tmp / f"stage-{time.monotonic_ns()}"
    sink = ArtifactSink(root, "gw1/step")
    cancel = threading.Event()
    if cancel_after is not None:  # as the runner does on Ctrl-C
        threading.Timer(cancel_after, cancel.set).start()
    ctx = StepContext(
        sink=sink,
        deadline=time.monotonic() + deadline,
        cancel=cancel,
        opener=lambda kind: session,
    )
    t0 = time.monotonic()
    try:
        ran = Ran(
            root,
            collector.collect(
                ctx,
                DeviceInfo("gw1", "testgw", "127.0.0.1"),
                collector.Options.model_validate(options),
            ),
            None,
        )
    except StepError as exc:
        ran = Ran(root, None, exc)
    ran.seconds = time.monotonic() - t0
    return ran


# --- exec -----------------------------------------------------------------------------------


def test_command_keeps_stdout_stderr_and_exit_status(
    root_session: SshSession, tmp_path: Path
) -> None:
    r = run(
        SshCommand(),
        root_session,
        tmp_path,
        command="echo out; echo err >&2; exit 3",
        ok_exit_codes=[3],
    )
    assert r.error is None
    assert r.file("output.txt").read_text() == "out\n"
    assert r.file("stderr.txt").read_text() == "err\n"
    assert r.facts["exit_status"] == 3
    r = run(SshCommand(), root_session, tmp_path, command="echo nope >&2; exit 3")
    assert isinstance(r.error, StepFailed) and "exit status 3: nope" in str(r.error)
    r = run(SshCommand(), root_session, tmp_path, command="no-such-tool-xyz", missing_ok=True)
    assert isinstance(r.error, StepSkipped)


def test_run_reads_stdout_and_stderr_together_without_deadlock(root_session: SshSession) -> None:
    # 8 MB on each stream, interleaved: a reader of only one stream would block the command
    cmd = "for i in $(seq 1 400); do head -c 20000 /dev/zero; head -c 20000 /dev/zero >&2; done"
    res = root_session.run(cmd, timeout=60)
    assert res.exit_status == 0 and not res.timed_out
    assert len(res.stdout) == 8_000_000
    assert len(res.stderr) == 1024 * 1024  # kept up to the stderr cap, drained past it


def test_command_output_cap_stops_the_command(root_session: SshSession, tmp_path: Path) -> None:
    r = run(
        SshCommand(),
        root_session,
        tmp_path,
        command="cat /dev/zero",
        max_bytes="1MB",
        timeout="30s",
    )
    assert r.error is None
    assert r.file("output.txt").stat().st_size == 1_000_000
    assert r.facts["truncated"] is True
    assert r.seconds < 10


def test_hanging_command_times_out_and_is_killed(
    user_session: SshSession, sshd_user: Sshd, tmp_path: Path
) -> None:
    r = run(SshCommand(), user_session, tmp_path, command="echo started; sleep 300", timeout="1s")
    assert isinstance(r.error, StepTimeout), r.error
    assert r.seconds < 6
    assert r.file("output.txt").read_text() == "started\n"
    time.sleep(0.5)
    left = subprocess.run(
        ["ps", "-u", sshd_user.user, "-o", "args="], capture_output=True, text=True
    ).stdout
    assert "sleep 300" not in left  # the SSH signal request killed it on the device


def test_open_shell_gives_an_interactive_pty(user_session: SshSession) -> None:
    chan = user_session.open_shell(width=123, height=40, timeout=10)
    try:
        chan.sendall(b"stty size; echo marker-$((6*7))\n")
        seen = b""
        deadline = time.monotonic() + 10
        while b"marker-42" not in seen and time.monotonic() < deadline:
            seen += chan.recv(4096)
        assert b"marker-42" in seen and b"40 123" in seen
    finally:
        chan.close()
    # the session and its SFTP client are reused, not reopened
    assert user_session.sftp() is user_session.sftp()


def test_a_connection_lost_between_steps_is_reopened(tmp_path: Path) -> None:
    with running_sshd() as server:
        s = open_ssh(device(server), trusting_home(tmp_path, server))
        try:
            assert s.run("echo one", timeout=10).stdout == b"one\n"
            for pid in server.session_pids():  # the device drops the connection
                os.kill(pid, 9)
            deadline = time.monotonic() + 5
            while s._transport_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert s.run("echo two", timeout=10).stdout == b"two\n"
            assert s.reconnects == 1
        finally:
            s.close()


# --- host keys, credentials, reachability ---------------------------------------------------


def test_unknown_host_key_is_refused_with_fingerprint(sshd: Sshd, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with pytest.raises(StepFailed) as e:
        open_ssh(device(sshd), home)
    fp = subprocess.run(
        ["ssh-keygen", "-lf", f"{sshd.host_key}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    msg = str(e.value)
    assert "gw1" in msg and fp in msg and "not trusted" in msg
    assert "run 'fieldtrace devices trust gw1' after checking the fingerprint" in msg


def test_changed_host_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True
    )
    other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    home = tmp_path / "home"
    home.mkdir()
    (home / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
    with pytest.raises(StepFailed) as e:
        open_ssh(device(sshd), home)
    msg = str(e.value)
    assert "CHANGED" in msg and "gw1" in msg and "devices trust gw1" in msg
    import paramiko

    offered = paramiko.Ed25519Key.from_private_key_file(str(sshd.host_key))
    assert fingerprint(offered) in msg


def test_wrong_key_and_wrong_password_fail_authentication(sshd_user: Sshd, tmp_path: Path) -> None:
    home = trusting_home(tmp_path, sshd_user)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(tmp_path / "stranger")],
        check=True,
    )
    with pytest.raises(StepFailed) as e:
        open_ssh(device(sshd_user, key={"file": str(tmp_path / "stranger")}), home)
    assert "authentication failed" in str(e.value) and sshd_user.user in str(e.value)
    (tmp_path / "badpw").write_text("not-the-password\n")
    with pytest.raises(StepFailed) as e:
        open_ssh(device(sshd_user, password={"file": str(tmp_path / "badpw")}), home)
    assert "authentication failed" in str(e.value)
    assert "not-the-password" not in str(e.value)


def test_password_login_and_jump_host(sshd: Sshd, sshd_user: Sshd, tmp_path: Path) -> None:
    home = trusting_home(tmp_path, sshd, sshd_user)
    (tmp_path / "pw").write_text(SSHD_USER_PASSWORD + "\n")
    s = open_ssh(device(sshd_user, password={"file": str(tmp_path / "pw")}), home)
    try:
        assert s.run("id -un", timeout=10).stdout.decode().strip() == sshd_user.user
    finally:
        s.close()
    # the target is reached through a direct-tcpip channel of the jump host's connection
    settings = Settings.model_validate(
        {
            "devices": [
                {
                    "name": "bastion",
                    "type": "t",
                    "address": "127.0.0.1",
                    "ssh": {
                        "port": sshd.port,
                        "username": "root",
                        "key": {"file": str(sshd.client_key)},
                    },
                },
                {
                    "name": "inner",
                    "type": "t",
                    "address": "127.0.0.1",
                    "ssh": {
                        "port": sshd_user.port,
                        "username": sshd_user.user,
                        "jump": "bastion",
                        "key": {"file": str(sshd_user.client_key)},
                    },
                },
            ]
        }
    )
    logins = sshd.log.read_text().count("Accepted publickey for root")
    s = open_ssh(settings.devices[1], home)
    try:
        out = s.run("id -un; echo $SSH_CONNECTION", timeout=10).stdout.decode().split()
        assert out[0] == sshd_user.user
        # the inner sshd sees a client socket that belongs to the bastion's sshd, not to us
        owner = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"sport = :{out[2]}"],
            capture_output=True,
            text=True,
        ).stdout
        assert '"sshd"' in owner and "python" not in owner, owner
    finally:
        s.close()
    assert sshd.log.read_text().count("Accepted publickey for root") == logins + 1
    # the host key of a device behind a jump is fetched through the jump too
    key = fetch_host_key(settings.devices[1], home)
    assert sshd_user.host_key_line == f"{key.get_name()} {key.get_base64()}"


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ed25519-encrypted"])
def test_key_types_and_an_encrypted_key(sshd_user: Sshd, tmp_path: Path, kind: str) -> None:
    key = tmp_path / "id"
    argv = ["ssh-keygen", "-q", "-t", kind.split("-")[0], "-f", str(key)]
    argv += ["-N", "s3cret-phrase" if kind.endswith("encrypted") else ""]
    subprocess.run(argv, check=True)
    auth = sshd_user.workdir / "authorized_keys"
    auth.write_text(auth.read_text() + key.with_suffix(".pub").read_text())
    extra: dict[str, Any] = {"key": {"file": str(key)}}
    if kind.endswith("encrypted"):
        with pytest.raises(ConfigError, match="key_passphrase"):  # DeviceSessions: StepFailed
            open_ssh(device(sshd_user, **extra), trusting_home(tmp_path, sshd_user))
        (tmp_path / "phrase").write_text("s3cret-phrase\n")
        extra["key_passphrase"] = {"file": str(tmp_path / "phrase")}
    s = open_ssh(device(sshd_user, **extra), trusting_home(tmp_path, sshd_user))
    try:
        assert s.run("id -un", timeout=10).stdout.decode().strip() == sshd_user.user
    finally:
        s.close()


def test_unreachable_port_and_silent_server_fail_fast(sshd: Sshd, tmp_path: Path) -> None:
    home = trusting_home(tmp_path, sshd)
    t0 = time.monotonic()
    with pytest.raises(StepFailed) as e:
        open_ssh(device(sshd, port=free_port()), home)
    assert "connection refused" in str(e.value)
    assert time.monotonic() - t0 < 5
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never says a word
        t0 = time.monotonic()
        with pytest.raises(StepFailed) as e:
            open_ssh(device(sshd, port=silent.getsockname()[1], timeout="1s"), home)
        assert "within 1s (no SSH banner)" in str(e.value)
        assert time.monotonic() - t0 < 5


# --- SFTP -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("remote")
    lines = [
        f"2026-12-01T10:{i // 60 % 60:02d}:{i % 60:02d} line {i:07d} of the log\n"
        for i in range(60000)
    ]
    (d / "app.log").write_text("".join(lines))  # ~2.9 MB
    (d / "small.txt").write_text("hello\n")
    (d / "old.log").write_text("old\n")
    week_ago = time.time() - 7 * 86400
    os.utime(d / "old.log", (week_ago, week_ago))
    (d / "sub").mkdir()
    (d / "sub" / "nested.log").write_text("nested\n")
    return d


def test_sftp_fetch_glob_with_caps_tail_and_since(
    root_session: SshSession, remote_files: Path, tmp_path: Path
) -> None:
    r = run(
        SshFile(),
        root_session,
        tmp_path,
        path=f"{remote_files}/*.log",
        max_bytes="100KB",
        tail=True,
        since="24h",
    )
    assert r.error is None, r.error
    assert r.facts["matched"] == 1 and r.facts["older_than_since"] == 1
    got = r.file("files/" + str(remote_files / "app.log").lstrip("/")).read_bytes()
    assert 0 < len(got) <= 100_000
    assert got.endswith(b"line 0059999 of the log\n")  # the end of the log ...
    assert got.startswith(b"2026-12-01T10:")  # ... starting on a whole line
    r = run(
        SshFile(),
        root_session,
        tmp_path,
        path=(f"{remote_files}/*", f"{remote_files}/*/*"),
        max_bytes="1MB",
        total_max_bytes=1_000_010,
    )
    assert isinstance(r.error, StepPartial) and "total_max_bytes" in str(r.error)
    assert r.facts["bytes"] == 1_000_010
    head = r.file("files/" + str(remote_files / "app.log").lstrip("/")).read_bytes()
    assert head.startswith(b"2026-12-01T10:00:00 line 0000000") and len(head) == 1_000_000
    assert (r.root / "gw1/step/files" / str(remote_files / "old.log").lstrip("/")).exists()


def test_sftp_refused_by_the_device(tmp_path: Path) -> None:
    with running_sshd(sftp=False) as server:
        s = open_ssh(device(server), trusting_home(tmp_path, server))
        try:
            r = run(SshFile(), s, tmp_path, path="/etc/hostname")
            assert isinstance(r.error, StepFailed)
            assert "cannot start SFTP" in str(r.error) and "subsystem" in str(r.error)
            assert s.run("echo still-usable", timeout=10).stdout == b"still-usable\n"
        finally:
            s.close()


def test_sftp_missing_files(root_session: SshSession, tmp_path: Path) -> None:
    r = run(SshFile(), root_session, tmp_path, path="/nonexistent-dir/*.log")
    assert isinstance(r.error, StepFailed) and "no file matches" in str(r.error)
    r = run(SshFile(), root_session, tmp_path, path="/nonexistent-dir/*.log", missing_ok=True)
    assert isinstance(r.error, StepSkipped)


def test_sftp_session_dropped_mid_file_keeps_what_was_fetched(sshd: Sshd, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(16 * 1024 * 1024))
    with CuttingProxy(sshd.port, cut_after=4 * 1024 * 1024) as proxy:
        home = trusting_home(tmp_path, sshd)
        (home / "known_hosts").write_text(
            sshd.known_hosts_line(proxy.port).replace(str(proxy.port), str(proxy.port)) + "\n"
        )
        session = open_ssh(device(sshd, port=proxy.port), home)
        try:
            r = run(SshFile(), session, tmp_path, path=str(big), max_bytes="64MB")
            # the next step, right away, gets a new connection
            assert session.run("echo after", timeout=10).stdout == b"after\n"
            assert session.reconnects == 1
        finally:
            session.close()
    assert proxy.cut_count == 1  # the new connection was not cut
    assert r.seconds < 20
    assert isinstance(r.error, StepError) and "connection lost" in str(r.error)
    part = r.file("files/" + str(big).lstrip("/"))
    assert part.exists()
    kept = part.read_bytes()
    assert 0 < len(kept) < big.stat().st_size
    assert big.read_bytes()[: len(kept)] == kept  # what was kept is exactly the file's start


def test_sftp_on_a_link_that_goes_silent_fails_by_its_timeout(sshd: Sshd, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024))
    with CuttingProxy(sshd.port, cut_after=3 * 1024 * 1024, stall=True) as proxy:
        home = trusting_home(tmp_path, sshd)
        (home / "known_hosts").write_text(sshd.known_hosts_line(proxy.port) + "\n")
        session = open_ssh(device(sshd, port=proxy.port, timeout="2s"), home)
        try:
            r = run(SshFile(), session, tmp_path, path=str(big), max_bytes="64MB")
            assert proxy.cut_count == 1
            assert isinstance(r.error, StepError) and "connection lost" in str(r.error)
            assert r.seconds < 15  # the SFTP channel's timeout, not a hang
            kept = r.file("files/" + str(big).lstrip("/")).read_bytes()
            assert big.read_bytes()[: len(kept)] == kept
            # the next step on the dead link fails fast too
            t0 = time.monotonic()
            r = run(SshCommand(), session, tmp_path, command="true", timeout="3s")
            assert isinstance(r.error, StepError)
            assert time.monotonic() - t0 < 15
        finally:
            session.close()


# --- capture --------------------------------------------------------------------------------


class Traffic:
    """UDP datagrams to 127.0.0.1:port every 2 ms until stopped."""

    def __init__(self) -> None:
        self.port = free_port()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            while not self._stop.is_set():
                u.sendto(b"fieldtrace-test " * 20, ("127.0.0.1", self.port))
                time.sleep(0.002)

    def __enter__(self) -> Traffic:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(5)


def test_capture_stops_at_each_cap_with_a_valid_pcap(
    root_session: SshSession, tmp_path: Path
) -> None:
    with Traffic() as traffic:
        flt = f"udp port {traffic.port}"
        r = run(
            SshCapture(),
            root_session,
            tmp_path,
            interface="lo",
            filter=flt,
            max_packets=25,
            duration="30s",
        )
        assert r.error is None, r.error
        assert r.facts["stop_reason"] == "max_packets" and r.facts["packets"] == 25
        assert tshark_count(r.file("capture.pcap")) == 25
        assert r.seconds < 10

        r = run(SshCapture(), root_session, tmp_path, interface="lo", filter=flt, duration="1s")
        assert r.error is None, r.error
        assert r.facts["stop_reason"] == "duration" and r.facts["packets"] > 10
        assert tshark_count(r.file("capture.pcap")) == r.facts["packets"]
        assert 0.9 < r.seconds < 6

        r = run(
            SshCapture(),
            root_session,
            tmp_path,
            interface="lo",
            filter=flt,
            max_bytes="20KB",
            duration="30s",
        )
        assert r.error is None, r.error
        assert r.facts["stop_reason"] == "max_bytes"
        size = r.file("capture.pcap").stat().st_size
        assert size == r.facts["bytes"] <= 20_000
        assert tshark_count(r.file("capture.pcap")) == r.facts["packets"] > 0

        # the default interface "any" (a cooked-mode link type) reads back as well
        r = run(SshCapture(), root_session, tmp_path, filter=flt, max_packets=5)
        assert r.error is None and r.facts["interface"] == "any", r.error
        assert tshark_count(r.file("capture.pcap")) == 5
    left = subprocess.run(
        ["ps", "-C", "tcpdump", "-o", "args="], capture_output=True, text=True
    ).stdout
    assert flt not in left  # every remote tcpdump was stopped


def test_capture_interrupted_keeps_the_packets_so_far(
    root_session: SshSession, tmp_path: Path
) -> None:
    with Traffic() as traffic:
        r = run(
            SshCapture(),
            root_session,
            tmp_path,
            cancel_after=1.0,
            interface="lo",
            filter=f"udp port {traffic.port}",
            duration="60s",
        )
    assert isinstance(r.error, StepPartial) and "interrupted" in str(r.error)
    assert r.facts["stop_reason"] == "cancelled" and r.facts["packets"] > 0
    assert tshark_count(r.file("capture.pcap")) == r.facts["packets"]
    assert r.seconds < 6


def test_capture_reports_no_permission_and_no_tcpdump(
    user_session: SshSession, tmp_path: Path
) -> None:
    r = run(SshCapture(), user_session, tmp_path, interface="lo", duration="5s")
    assert isinstance(r.error, StepFailed)
    assert "no permission to capture on lo" in str(r.error)
    with running_sshd(extra_config="SetEnv PATH=/nonexistent") as bare:
        s = open_ssh(device(bare), trusting_home(tmp_path, bare))
        try:
            r = run(SshCapture(), s, tmp_path, interface="lo", duration="5s")
        finally:
            s.close()
    assert isinstance(r.error, StepFailed) and "tcpdump is not installed" in str(r.error)
