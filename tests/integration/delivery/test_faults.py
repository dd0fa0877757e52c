"""Faults between the agent and Redmine: every bundle ends attached exactly once, or parked.

A fault-injecting proxy (tests/fixtures/faultproxy.py) sits between the backend and a real
Redmine; workers are killed with SIGKILL at chosen points and restarted.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fixtures.faultproxy import FaultProxy, Rule
from tests.fixtures.redmine import Redmine
from tests.integration.delivery.conftest import Made, MakeBundle, backend_for, queue
from uploader.outbox import Outbox

pytestmark = pytest.mark.integration

UPLOAD = r"^/uploads\.json"
ISSUE = r"^/issues/\d+\.json"
CREATE = r"^/issues\.json$"


def attached_once(redmine: Redmine, made: Made, number: int | str) -> None:
    """Exactly one attachment for the bundle, byte-identical; one ticket for its marker."""
    issue = redmine.issue(number)
    mine = [a for a in issue["attachments"] if a["filename"] == made.meta.name]
    assert len(mine) == 1, issue["attachments"]
    body = redmine.download(mine[0]["content_url"])
    assert hashlib.sha256(body).hexdigest() == made.meta.sha256
    notes = [j for j in issue["journals"] if made.meta.bundle_id in (j.get("notes") or "")]
    assert len(notes) == 1


@pytest.mark.parametrize(
    "rule",
    [
        Rule("503", "POST", UPLOAD, times=2),
        Rule("503", "PUT", ISSUE, times=1),
        Rule("reset", "GET", ISSUE, times=2),
        Rule("cut", "POST", UPLOAD, times=2, cut_bytes=100_000),
        Rule("drop_response", "POST", UPLOAD, times=1),
        Rule("drop_response", "PUT", ISSUE, times=1),
        Rule("drop_response", "POST", CREATE, times=1),
        Rule("delay", "PUT", ISSUE, times=1, delay=2.5),
    ],
    ids=lambda r: f"{r.action}-{r.method}-{r.path.split(chr(92))[0].strip('^/')}",
)
def test_transient_fault_then_attached_exactly_once(
    redmine: Redmine, proxy: FaultProxy, make_bundle: MakeBundle, outbox: Outbox, rule: Rule
) -> None:
    new_ticket = rule.path == CREATE
    number = None if new_ticket else redmine.create_issue(f"fault {rule.action}")
    made = make_bundle(size=512 * 1024, ticket=None if number is None else str(number))
    queue(outbox, made)
    proxy.set_rules([rule])
    before = redmine.uploads_count()
    backend = backend_for(proxy.url, redmine.api_key, timeout=1.5)
    attempts = outbox.run(backend)
    assert proxy.stats["faults"] >= 1, "the fault never fired"
    [last] = attempts
    assert last.outcome == "sent", last.message
    assert last.item.record["attempts"] >= 2  # it did fail first, then recovered
    assert last.receipt is not None and last.receipt.ticket
    attached_once(redmine, made, last.receipt.ticket)
    if new_ticket:
        assert len(redmine.issues_with(f"fieldtrace-bundle: {made.meta.bundle_id}")) == 1
    # a cut upload never becomes a file; only a lost upload answer leaves an orphan upload
    # behind (never attached; Redmine prunes unattached uploads after a day)
    lost_answer = rule.action == "drop_response" and rule.path == UPLOAD
    assert redmine.uploads_count() - before == (2 if lost_answer else 1)


def test_server_errors_keep_retrying_with_growing_backoff(
    redmine: Redmine, proxy: FaultProxy, make_bundle: MakeBundle, outbox: Outbox
) -> None:
    made = make_bundle(ticket=str(redmine.create_issue("backoff")))
    queue(outbox, made)
    proxy.set_rules([Rule("503")])
    backend = backend_for(proxy.url, redmine.api_key)
    waits = []
    for _ in range(4):
        [a] = outbox.deliver(backend, force=True)
        assert a.outcome == "retry" and "HTTP 503" in a.message
        rec = outbox.items("queued")[0].record
        waits.append(rec["next_attempt"] - time.time())
    assert outbox.items("queued")[0].record["attempts"] == 4
    # 0.05 s doubling, capped at 0.3 s, +-25 % jitter
    assert waits[0] < 0.07 and 0.07 < waits[2] < 0.38 and waits[3] < 0.38
    proxy.set_rules([])
    [a] = outbox.deliver(backend, force=True)
    assert a.outcome == "sent"


# -- kill -9 of a worker process ------------------------------------------------------


def _site(tmp_path: Path, proxy: FaultProxy, redmine: Redmine) -> tuple[dict[str, str], Path]:
    keyfile = tmp_path / "helpdesk.key"
    keyfile.write_text(redmine.api_key + "\n")
    config = tmp_path / "fieldtrace.toml"
    config.write_text(
        '[site]\ncompany = "ACME Telecom"\ncontract = "TS-2024-117"\n'
        f'[helpdesk]\nbackend = "redmine"\nurl = "{proxy.url}"\n'
        f'api_key = {{ file = "{keyfile}" }}\nproject = "diag"\ntracker = "Support"\n'
        'timeout = "20s"\n[outbox]\nbackoff_base = "50ms"\nbackoff_max = "300ms"\n'
    )
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDTRACE_")}
    env.update(FIELDTRACE_HOME=str(home), FIELDTRACE_CONFIG=str(config), PYTHONPATH=str(REPO))
    return env, home


def _worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "outbox", "deliver", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill9(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize(
    ("phase", "rule", "new_ticket"),
    [
        ("mid-upload", Rule("slow", "POST", UPLOAD, rate=3 * 1024**2, mark_bytes=2 * 1024**2),
         False),
        ("uploaded-not-attached", Rule("hold", "PUT", ISSUE), False),
        ("attached-answer-lost", Rule("hold_response", "PUT", ISSUE), False),
        ("ticket-created-answer-lost", Rule("hold_response", "POST", CREATE), True),
    ],
)  # fmt: skip
def test_kill_9_mid_delivery_then_restart_attaches_exactly_once(
    redmine: Redmine,
    proxy: FaultProxy,
    make_bundle: MakeBundle,
    tmp_path: Path,
    phase: str,
    rule: Rule,
    new_ticket: bool,
) -> None:
    env, home = _site(tmp_path, proxy, redmine)
    box = Outbox(home / "outbox")
    number = None if new_ticket else redmine.create_issue(f"kill -9 {phase}")
    made = make_bundle(size=8 * 1024**2, ticket=None if number is None else str(number))
    queue(box, made)
    proxy.set_rules([rule])
    before = redmine.uploads_count()
    worker = _worker(env)
    try:
        assert proxy.held.wait(60), f"the worker never reached {phase}"
        if phase == "attached-answer-lost" or phase == "ticket-created-answer-lost":
            time.sleep(0.5)  # let Redmine finish the request it was given
        _kill9(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        proxy.release()
    # the crashed worker left the item queued, in flight, with its progress
    [item] = box.items("queued")
    assert item.record["in_flight"]["pid"] == worker.pid
    checkpoint = item.record.get("checkpoint", {})
    if phase in ("uploaded-not-attached", "attached-answer-lost"):
        assert checkpoint.get("upload_token")
    if phase == "ticket-created-answer-lost":
        assert not checkpoint.get("ticket")  # the answer with its number never came
    proxy.set_rules([])
    again = _worker(env, "--json")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, out + err
    [row] = json.loads(out)
    assert row["outcome"] == "sent", row
    assert "resuming" in err and str(worker.pid) in err
    ticket = number or row["ticket"]
    attached_once(redmine, made, ticket)
    assert len(redmine.issues_with(f"fieldtrace-bundle: {made.meta.bundle_id}")) == (
        1 if new_ticket else 0
    )
    # the bundle went up once (a cut upload never became a file; a recorded token was reused)
    assert redmine.uploads_count() - before == 1
    assert box.items("queued") == [] and [i.name for i in box.items("sent")] == [made.meta.name]


def test_two_workers_never_deliver_the_same_bundle_at_once(
    redmine: Redmine, proxy: FaultProxy, make_bundle: MakeBundle, tmp_path: Path
) -> None:
    env, home = _site(tmp_path, proxy, redmine)
    box = Outbox(home / "outbox")
    number = redmine.create_issue("two workers")
    made = make_bundle(size=6 * 1024**2, ticket=str(number))
    queue(box, made)
    before = redmine.uploads_count()
    proxy.set_rules([Rule("slow", "POST", UPLOAD, rate=3 * 1024**2, mark_bytes=1024**2)])
    first = _worker(env, "--json")
    try:
        assert proxy.held.wait(60)
        listing = subprocess.run(
            [sys.executable, "-m", "agent", "outbox", "list", "--json"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert [r["state"] for r in json.loads(listing.stdout)] == ["delivering"]
        second = subprocess.run(
            [sys.executable, "-m", "agent", "outbox", "deliver", "--json"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1
        assert [r["outcome"] for r in json.loads(second.stdout)] == ["busy"]
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, out + err
    attached_once(redmine, made, number)
    assert redmine.uploads_count() - before == 1
