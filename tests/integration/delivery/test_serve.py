"""``fieldtrace serve`` end to end against the real Redmine: requests, health, signals, crashes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.fixtures.faultproxy import FaultProxy, Rule
from tests.fixtures.redmine import Redmine
from tests.fixtures.snmpd import Snmpd
from tests.fixtures.snmpd import snmpd as snmpd  # the session fixture

pytestmark = pytest.mark.integration
KB = """\
type: box
title: Test box
profiles:
  default:
    title: quick
    steps:
      - {id: uname, collector: local.command, command: "uname -a"}
  other:
    title: another profile
    steps:
      - {id: date, collector: local.command, command: "date -u"}
  denied:
    title: a profile the site never lets run on request
    steps:
      - {id: date, collector: local.command, command: "date -u"}
"""


class Serve:
    """A running ``fieldtrace serve``; its stderr is collected line by line."""

    def __init__(self, cli: Cli, config: Path) -> None:
        self.proc = cli.start("-c", str(config), "serve")
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_for(self, pattern: str, timeout: float = 60, start: int = 0) -> str:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for line in self.lines[start:]:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r}:\n" + self.log())
                self._cv.wait(min(left, 0.5))

    def log(self) -> str:
        with self._cv:
            return "\n".join(self.lines[-80:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> float:
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("serve did not stop within the timeout:\n" + self.log()) from None
        self._reader.join(5)
        return time.monotonic() - t0


@pytest.fixture
def site(cli: Cli, redmine: Redmine, tmp_path: Path) -> Iterator[dict[str, Any]]:
    kb = cli.cwd / "kb"
    kb.mkdir()
    (kb / "box.yaml").write_text(KB)
    keyfile = cli.cwd / "helpdesk.key"
    keyfile.write_text(redmine.api_key + "\n")
    eng = tmp_path / "engineer"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                    "engineer@vendor.example", "-f", str(eng)], check=True, timeout=30)  # fmt: skip
    config = cli.cwd / "site.toml"
    base = f"""\
[site]
company = "ACME Telecom"
contract = "TS-2024-117"
contact_email = "noc@acme.example"
[vendor]
request_keys = ["{eng.with_suffix(".pub").read_text().strip()}"]
[helpdesk]
backend = "redmine"
url = "{redmine.url}"
api_key = {{ file = "{keyfile}" }}
project = "diag"
tracker = "Support"
timeout = "20s"
priorities = {{ major = "High", critical = "Immediate" }}
[kb]
paths = ["{kb}"]
[outbox]
backoff_base = "200ms"
backoff_max = "1s"
[requests]
poll_interval = "1s"
approve_within = "6s"
policy = {{ "*" = "auto", other = "approve", denied = "deny" }}
[service]
outbox_interval = "1s"
[[devices]]
name = "local"
type = "box"
address = "localhost"
"""
    config.write_text(base)
    yield {"config": config, "base": base, "engineer": eng, "kb": kb}


def request_block(cli: Cli, site: dict[str, Any], ticket: int, profile: str = "default",
                  *extra: str) -> str:  # fmt: skip
    proc = cli.run("request", "create", "--key", str(site["engineer"]), "--ticket", str(ticket),
                   "--device", "local", "--profile", profile, "--site", "acme-telecom",
                   "--valid", "1h", *extra, check=0)  # fmt: skip
    return proc.stdout


def post_note(redmine: Redmine, ticket: int, text: str) -> None:
    r = redmine.api("PUT", f"/issues/{ticket}.json", json={"issue": {"notes": text}})
    assert r.status_code in (200, 204), r.text


def notes(redmine: Redmine, ticket: int) -> list[str]:
    return [j["notes"] for j in redmine.issue(ticket).get("journals", []) if j.get("notes")]


def note_with(redmine: Redmine, ticket: int, text: str, timeout: float = 60) -> str:
    """Wait for a note on ``ticket`` containing ``text``; returns it."""
    found: list[str] = wait_until(
        f"a note with {text!r} on #{ticket}",
        lambda: [n for n in notes(redmine, ticket) if text in n],
        timeout,
    )
    return found[0]


def wait_until(what: str, fn: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_signed_request_runs_its_profile_and_lands_on_its_ticket(
    cli: Cli, redmine: Redmine, site: dict[str, Any]
) -> None:
    ticket = redmine.create_issue("serve: request accepted")
    svc = Serve(cli, site["config"])
    try:
        svc.wait_for(r"serving .* requests on")
        post_note(redmine, ticket, "Please run this:\n\n" + request_block(cli, site, ticket))
        issue = wait_until("the bundle on the ticket",
                           lambda: redmine.issue(ticket).get("attachments"))  # fmt: skip
        assert len(issue) == 1 and issue[0]["filename"].endswith(".tar.zst.age")
        attach_note = wait_until("the attaching note", lambda: [
            n for n in notes(redmine, ticket) if "Diagnostics bundle attached" in n])  # fmt: skip
        assert (
            "Collected for request" in attach_note[0]
            and "engineer@vendor.example" in (attach_note[0])
        )
        bundle = cli.cwd / "got.tar.zst.age"
        bundle.write_bytes(redmine.download(issue[0]["content_url"]))
        shown = json.loads(cli.run("bundle", "inspect", str(bundle), "--json", check=0).stdout)
        job = shown["manifest"]["job"]
        assert job["trigger"] == "request" and job["requested_by"] == "engineer@vendor.example"
        # the audit log has the decision and the run
        audit = json.loads(cli.run("audit", "--json", "--verify", check=0).stdout)
        events = [(e["event"], e["fields"].get("decision") or e["fields"].get("result"))
                  for e in audit["entries"]]  # fmt: skip
        assert ("request", "auto") in events and ("request-run", "done") in events
    finally:
        assert svc.stop() < 10


REFUSALS = {
    "unsigned": lambda b: b[: b.index("-----BEGIN SSH SIGNATURE")] + b[b.index("-----END FI") :],
    "tampered": lambda b: b.replace("profile: default", "profile: other"),
    "extra-field": lambda b: b.replace("profile: default\n", "profile: default\ncommand: id\n"),
    "two-blocks": lambda b: b + "\n" + b,
}


def test_refused_requests_are_answered_audited_and_collect_nothing(
    cli: Cli, redmine: Redmine, site: dict[str, Any]
) -> None:
    svc = Serve(cli, site["config"])
    try:
        svc.wait_for(r"serving .* requests on")
        cases: dict[str, int] = {}
        for name, mangle in REFUSALS.items():
            t = redmine.create_issue(f"serve: refused {name}")
            post_note(redmine, t, mangle(request_block(cli, site, t)))
            cases[name] = t
        # a valid block for another ticket, an unknown profile, a replay, policy deny
        t = redmine.create_issue("serve: other ticket")
        post_note(redmine, t, request_block(cli, site, t + 1000))
        cases["other-ticket"] = t
        t = redmine.create_issue("serve: unknown profile")
        post_note(redmine, t, request_block(cli, site, t, "nosuch"))
        cases["unknown-profile"] = t
        t = redmine.create_issue("serve: policy deny")
        post_note(redmine, t, request_block(cli, site, t, "denied"))
        cases["deny"] = t
        expected = {
            "unsigned": "not signed", "tampered": "bad signature", "extra-field": "not allowed",
            "two-blocks": "more than one", "other-ticket": "another ticket",
            "unknown-profile": "no profile", "deny": "policy denies",
        }  # fmt: skip
        for name, t in cases.items():
            got = note_with(redmine, t, "fieldtrace: request refused")
            assert expected[name] in got, (name, got)
            assert "command: id" not in got  # the refusal never echoes the block
        time.sleep(2)  # a pass more: nothing was collected for any of them
        for t in cases.values():
            assert not redmine.issue(t).get("attachments")
        # replay: the same (valid) block posted twice
        t = redmine.create_issue("serve: replay")
        block = request_block(cli, site, t)
        post_note(redmine, t, block)
        wait_until("the first bundle", lambda: redmine.issue(t).get("attachments"))
        post_note(redmine, t, block)
        note_with(redmine, t, "replayed")
        assert len(redmine.issue(t)["attachments"]) == 1
        audit = json.loads(cli.run("audit", "--json", "--verify", check=0).stdout)
        refused = [e for e in audit["entries"] if e["fields"].get("decision") == "refused"]
        assert len(refused) >= len(cases) and audit["problems"] == []
    finally:
        svc.stop()


def test_approve_waits_for_the_site_and_expires_if_nobody_does(
    cli: Cli, redmine: Redmine, site: dict[str, Any]
) -> None:
    svc = Serve(cli, site["config"])
    try:
        svc.wait_for(r"serving .* requests on")
        a = redmine.create_issue("serve: approve me")
        b = redmine.create_issue("serve: let me expire")
        post_note(redmine, a, request_block(cli, site, a, "other"))
        post_note(redmine, b, request_block(cli, site, b, "other"))
        for t in (a, b):
            note_with(redmine, t, "waits for the site's approval")
        assert not redmine.issue(a).get("attachments")
        listed = json.loads(cli.run("requests", "list", "--json", check=0).stdout)
        pending = [r for r in listed if r["state"] == "pending" and r["ticket"] == str(a)]
        assert len(pending) == 1
        cli.run("requests", "approve", pending[0]["id"][:10], check=0)
        wait_until("the approved bundle", lambda: redmine.issue(a).get("attachments"))
        note_with(redmine, b, "expired", timeout=30)
        assert not redmine.issue(b).get("attachments")
    finally:
        svc.stop()


def _tmpfs(path: Path, size: str = "1m") -> None:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, timeout=30)  # fmt: skip


def test_a_failing_check_opens_one_ticket_recovers_and_reopens_after_close(
    cli: Cli, redmine: Redmine, site: dict[str, Any], tmp_path: Path
) -> None:
    mnt = tmp_path / "small"
    _tmpfs(mnt)
    try:
        config: Path = site["config"]
        config.write_text(site["base"] + f"""
[[health]]
check = "small-disk"
device = "local"
title = "Small disk space"
host = {{ metric = "disk_percent", path = "{mnt}", max = 50 }}
interval = "1s"
cooldown = "3s"
""")  # fmt: skip
        (mnt / "fill").write_bytes(b"x" * 700 * 1024)
        svc = Serve(cli, config)
        try:
            line = svc.wait_for(r"opened ticket (\d+)", timeout=90)
            ticket = int(re.search(r"opened ticket (\d+)", line).group(1))  # type: ignore[union-attr]
            time.sleep(4)  # it keeps failing every second: no second ticket, no note yet
            mine = redmine.issues_with("fieldtrace-problem:")
            assert [i["id"] for i in mine if "Small disk" in i["subject"]] == [ticket]
            issue = redmine.issue(ticket)
            assert issue["priority"]["name"] == "High" and len(issue["attachments"]) == 1
            assert "Small disk space failing on local" in issue["subject"]
            (mnt / "fill").unlink()
            note_with(redmine, ticket, "Recovered at")
            redmine.close_issue(ticket)
            time.sleep(3.5)  # past the cooldown
            (mnt / "fill").write_bytes(b"x" * 700 * 1024)
            n = len(svc.lines)
            line = svc.wait_for(r"opened ticket (\d+)", timeout=90, start=n)
            second = int(re.search(r"opened ticket (\d+)", line).group(1))  # type: ignore[union-attr]
            assert second != ticket
            out = cli.run("health", "explain", "local/small-disk", check=0).stdout
            assert "OK -> FAIL" in out and "FAIL -> OK" in out and f"ticket {second}" in out
        finally:
            svc.stop()
    finally:
        subprocess.run(["umount", str(mnt)], timeout=30, check=False)


def test_second_serve_is_refused_sighup_keeps_a_good_config(cli: Cli, site: dict[str, Any]) -> None:
    svc = Serve(cli, site["config"])
    try:
        svc.wait_for(r"serving ")
        again = cli.run("-c", str(site["config"]), "serve", timeout=60)
        assert again.returncode == 3
        assert f"(PID {svc.proc.pid})" in again.stderr
        good = site["config"].read_text()
        site["config"].write_text(good.replace('company = "ACME Telecom"', "company = 42"))
        n = len(svc.lines)
        svc.proc.send_signal(signal.SIGHUP)
        line = svc.wait_for(r"reload refused", start=n)
        assert str(site["config"]) in line and "site.company" in line
        assert svc.proc.poll() is None  # still serving the old config
        site["config"].write_text(good)
        n = len(svc.lines)
        svc.proc.send_signal(signal.SIGHUP)
        svc.wait_for(r"reloaded ", start=n)
    finally:
        took = svc.stop()
    assert took < 10 and svc.proc.returncode == 0


def test_corrupt_state_db_stops_before_the_outbox(cli: Cli, site: dict[str, Any]) -> None:
    (cli.home / "state.db").write_bytes(b"not a database\n" * 200)
    proc = cli.run("-c", str(site["config"]), "serve", timeout=60)
    assert proc.returncode == 3 and "corrupt" in proc.stderr
    assert not (cli.home / "outbox").exists()


def test_kill_9_during_a_request_job_then_restart_delivers_once(
    cli: Cli, redmine: Redmine, site: dict[str, Any]
) -> None:
    (site["kb"] / "box.yaml").write_text(KB.replace('command: "uname -a"', 'command: "sleep 4"'))
    ticket = redmine.create_issue("serve: crash during a job")
    svc = Serve(cli, site["config"])
    svc.wait_for(r"serving ")
    post_note(redmine, ticket, request_block(cli, site, ticket))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((cli.home / "staging").glob("*")):
        time.sleep(0.1)
    assert list((cli.home / "staging").glob("*")), "the job never started:\n" + svc.log()
    os.kill(svc.proc.pid, signal.SIGKILL)
    svc.proc.wait(10)
    again = Serve(cli, site["config"])
    try:
        again.wait_for(r"was cut short: it runs again")
        wait_until("the bundle", lambda: redmine.issue(ticket).get("attachments"), timeout=90)
        time.sleep(3)
        assert len(redmine.issue(ticket)["attachments"]) == 1
    finally:
        again.stop()


def test_kill_9_during_a_delivery_then_restart_attaches_once(
    cli: Cli, redmine: Redmine, site: dict[str, Any], proxy: FaultProxy
) -> None:
    ticket = redmine.create_issue("serve: crash during a delivery")
    config: Path = site["config"]
    config.write_text(site["base"].replace(redmine.url, proxy.url))
    proxy.set_rules([Rule("hold", "POST", r"^/uploads\.json")])
    svc = Serve(cli, config)
    svc.wait_for(r"serving ")
    post_note(redmine, ticket, request_block(cli, site, ticket))
    assert proxy.held.wait(90), "the upload never started:\n" + svc.log()
    os.kill(svc.proc.pid, signal.SIGKILL)
    svc.proc.wait(10)
    proxy.release()
    proxy.set_rules([])
    again = Serve(cli, config)
    try:
        again.wait_for(r"serving ")
        wait_until("the bundle", lambda: redmine.issue(ticket).get("attachments"), timeout=90)
        time.sleep(4)  # more outbox and poll passes: still one
        assert len(redmine.issue(ticket)["attachments"]) == 1
        assert len([n for n in notes(redmine, ticket) if "Diagnostics bundle" in n]) == 1
    finally:
        again.stop()


def test_an_snmp_device_that_stops_answering_opens_one_ticket(
    cli: Cli, redmine: Redmine, site: dict[str, Any], snmpd: Snmpd
) -> None:
    (cli.cwd / "community").write_text(snmpd.community)
    config: Path = site["config"]
    config.write_text(site["base"] + f"""
[[devices]]
name = "sw1"
type = "box"
address = "127.0.0.1"
[devices.snmp]
port = {snmpd.port}
version = "2c"
timeout = "500ms"
retries = 0
community = {{ file = "{cli.cwd / 'community'}" }}
[[health]]
check = "sw1-up"
device = "sw1"
title = "Switch answers SNMP"
reachable = "snmp"
interval = "1s"
[[health]]
check = "sw1-uptime"
device = "sw1"
step = {{ collector = "snmp.get", oid = "SNMPv2-MIB::sysUpTime.0" }}
expect = {{ min = 1 }}
interval = "1s"
""")  # fmt: skip
    svc = Serve(cli, config)
    try:
        svc.wait_for(r"health sw1/sw1-up: ok")
        snmpd.pause()
        try:
            line = svc.wait_for(r"opened ticket (\d+)", timeout=90)
            number = int(re.search(r"opened ticket (\d+)", line).group(1))  # type: ignore[union-attr]
            time.sleep(4)  # both checks keep failing: still one ticket
        finally:
            snmpd.resume()
        issue = redmine.issue(number)
        assert issue["subject"] == "sw1 reachable failing on sw1"
        assert issue["priority"]["name"] == "Immediate"  # the reachable check is critical
        downs = [i for i in redmine.issues_with("fieldtrace-problem:") if "sw1" in i["subject"]]
        assert [i["id"] for i in downs] == [number]
        note_with(redmine, number, "Recovered at", timeout=60)
    finally:
        svc.stop()


def test_systemd_notify_ready_and_watchdog(cli: Cli, site: dict[str, Any], tmp_path: Path) -> None:
    import socket

    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    cli.env.update(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="1000000")
    svc = Serve(cli, site["config"])
    try:
        got: list[str] = []
        while "WATCHDOG=1" not in got:
            got.append(sock.recv(4096).decode())
        assert got[0] == "READY=1"
    finally:
        took = svc.stop()
        sock.settimeout(10)
        assert sock.recv(4096).decode() == "STOPPING=1"
        sock.close()
    assert took < 10
