"""``fieldtrace collect`` / ``outbox`` end to end with the redmine backend (real Redmine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.e2e.helpers import collect_json, manifest_of, open_with_stock_tools, write_site
from tests.fixtures.faultproxy import FaultProxy, Rule
from tests.fixtures.redmine import Redmine

pytestmark = pytest.mark.integration
STEPS = ['{id: a, collector: local.command, command: "echo hello-from-gw"}',
         '{id: b, collector: local.command, command: "false"}']  # fmt: skip


def _site(cli: Cli, url: str, key: str) -> Path:
    keyfile = cli.cwd / "helpdesk.key"
    keyfile.write_text(key + "\n")
    write_site(
        cli,
        STEPS,
        f'[helpdesk]\nbackend = "redmine"\nurl = "{url}"\napi_key = {{ file = "{keyfile}" }}\n'
        'project = "diag"\ntracker = "Support"\ntimeout = "10s"\n'
        '[outbox]\nbackoff_base = "100ms"\nbackoff_max = "500ms"\n',
    )
    return keyfile


def test_collect_creates_a_ticket_and_attaches_the_bundle(
    cli: Cli, redmine: Redmine, tmp_path: Path
) -> None:
    _site(cli, redmine.url, redmine.api_key)
    proc = cli.run("-vv", "collect", check=1)  # step b fails: done with failures
    assert "ticket: #" in proc.stdout and "delivery: attached to ticket #" in proc.stdout
    assert "uploads.json" in proc.stderr  # debug logging was on ...
    log = (cli.home / "fieldtrace.log").read_text()
    assert "attached" in log
    for text in (proc.stdout, proc.stderr, log):  # ... and the API key is never in it
        assert redmine.api_key not in text
    data = collect_json(cli, check=1)
    number = data["ticket"]
    assert data["delivery"]["outcome"] == "sent" and data["ticket_url"].endswith(f"/{number}")
    issue = redmine.issue(number)
    assert "ACME Telecom" in issue["subject"] and "TS-2024-117" in issue["subject"]
    assert "Contract: TS-2024-117" in issue["description"]
    assert "Devices: local" in issue["description"]
    [att] = issue["attachments"]
    note = next(j["notes"] for j in issue["journals"] if j.get("notes"))
    assert "local/b: failed" in note and data["bundle_id"] in note
    # the attachment is the bundle: download it and open it with stock tools
    bundle = tmp_path / att["filename"]
    bundle.write_bytes(redmine.download(att["content_url"]))
    top = open_with_stock_tools(bundle, cli.home / "identity.txt", tmp_path / "open")
    manifest = manifest_of(top)
    assert manifest["bundle_id"] == data["bundle_id"]
    assert (top / "local/a/output.txt").read_text().strip() == "hello-from-gw"
    rows = json.loads(cli.run("outbox", "list", "--json", check=0).stdout)
    assert {r["state"] for r in rows} == {"sent"} and str(number) in {r["ticket"] for r in rows}
    assert not list((cli.home / "outbox/queue").iterdir())


def test_collect_with_ticket_attaches_to_that_ticket(cli: Cli, redmine: Redmine) -> None:
    _site(cli, redmine.url, redmine.api_key)
    number = redmine.create_issue("One-way audio on gw1")
    data = collect_json(cli, "--ticket", str(number), check=1)
    assert data["ticket"] == str(number) and data["delivery"]["outcome"] == "sent"
    issue = redmine.issue(number)
    [att] = issue["attachments"]
    assert data["bundle_id"][:8] in att["filename"] and data["delivery"]["location"].endswith(
        f"/issues/{number}"
    )
    assert redmine.issues_with(f"fieldtrace-bundle: {data['bundle_id']}") == []  # none created


def test_wrong_api_key_parks_then_retry_delivers(cli: Cli, redmine: Redmine) -> None:
    keyfile = _site(cli, redmine.url, "0123456789" * 4)
    number = redmine.create_issue("wrong key")
    proc = cli.run("collect", "--ticket", str(number), check=1)
    assert "delivery: parked:" in proc.stdout and "refused the API key (HTTP 401)" in proc.stdout
    assert "-m agent outbox retry' and " in proc.stdout  # the command as it was run
    [row] = json.loads(cli.run("outbox", "list", "--json", check=0).stdout)
    assert row["state"] == "parked" and "api_key" in row["last_error"]
    keyfile.write_text(redmine.api_key)
    assert "1 bundle(s) back in the queue" in cli.run("outbox", "retry", check=0).stdout
    out = cli.run("outbox", "deliver", check=0).stdout
    assert out.startswith("sent") and f"ticket #{number}" in out
    assert [a["filename"] for a in redmine.issue(number)["attachments"]] == [row["name"]]


def test_helpdesk_down_queues_then_deliver_wait_sends(
    cli: Cli, redmine: Redmine, proxy: FaultProxy
) -> None:
    _site(cli, proxy.url, redmine.api_key)
    number = redmine.create_issue("helpdesk down")
    proxy.set_rules([Rule("503")])
    proc = cli.run("collect", "--ticket", str(number), check=1)
    assert "delivery: will retry: " in proc.stdout and "HTTP 503" in proc.stdout
    [row] = json.loads(cli.run("outbox", "list", "--json", check=0).stdout)
    assert row["state"] == "queued" and row["attempts"] == 1
    proxy.set_rules([])
    out = json.loads(cli.run("outbox", "deliver", "--wait", "--json", check=0).stdout)
    assert [(r["outcome"], r["ticket"]) for r in out] == [("sent", str(number))]
    assert len(redmine.issue(number)["attachments"]) == 1


def test_bad_ticket_number_is_refused_before_collecting(cli: Cli, redmine: Redmine) -> None:
    _site(cli, redmine.url, redmine.api_key)
    proc = cli.run("collect", "--ticket", "ABC-1", check=2)
    assert "--ticket" in proc.stderr and "not a Redmine issue number" in proc.stderr
    assert not list((cli.home / "outbox").rglob("*.age"))


def test_ctrl_c_during_delivery_keeps_the_bundle_queued(
    cli: Cli, redmine: Redmine, proxy: FaultProxy
) -> None:
    import signal

    _site(cli, proxy.url, redmine.api_key)
    number = redmine.create_issue("ctrl-c")
    proxy.set_rules([Rule("hold", "POST", r"^/uploads\.json")])
    proc = cli.start("collect", "--ticket", str(number))
    try:
        assert proxy.held.wait(60), "the upload never started"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proxy.release()
    assert proc.returncode == 1, out + err  # step b failed; the delivery is pending
    assert "delivery: will retry: interrupted (Ctrl-C); the bundle stays queued" in out
    [row] = json.loads(cli.run("outbox", "list", "--json", check=0).stdout)
    assert row["state"] == "queued"
    proxy.set_rules([])
    out = cli.run("outbox", "deliver", check=0).stdout
    assert out.startswith("sent") and len(redmine.issue(number)["attachments"]) == 1
