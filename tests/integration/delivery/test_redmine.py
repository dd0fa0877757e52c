"""The redmine backend against a real Redmine: tickets, attachments, idempotence, refusals."""

from __future__ import annotations

import hashlib
import time

import pytest

from tests.fixtures.redmine import Redmine
from tests.integration.delivery.conftest import MakeBundle, backend_for, queue
from uploader.base import MemoryCheckpoint, PermanentError, TransientError
from uploader.outbox import Outbox

pytestmark = pytest.mark.integration


def test_new_ticket_with_company_and_contract_and_bundle_byte_identical(
    redmine: Redmine, make_bundle: MakeBundle
) -> None:
    made = make_bundle(300 * 1024)
    receipt = backend_for(redmine.url, redmine.api_key).deliver(made.path, made.meta)
    assert receipt.ticket is not None and receipt.detail["created_ticket"] is True
    issue = redmine.issue(receipt.ticket)
    assert "ACME Telecom" in issue["subject"] and "TS-2024-117" in issue["subject"]
    for text in ("Company: ACME Telecom", "Contract: TS-2024-117", "Contact: noc@acme.example",
                 "Devices: gw1, core-sw", "Profile: sip-calls"):  # fmt: skip
        assert text in issue["description"]
    assert issue["tracker"]["name"] == "Support"
    [att] = issue["attachments"]
    assert att["filename"] == made.meta.name and att["filesize"] == len(made.data)
    body = redmine.download(att["content_url"])
    assert hashlib.sha256(body).hexdigest() == made.meta.sha256
    notes = [j["notes"] for j in issue["journals"] if j.get("notes")]
    assert len(notes) == 1
    assert "3 steps ok 2, failed 1" in notes[0] and "gw1/trace: failed" in notes[0]
    assert f"fieldtrace-bundle: {made.meta.bundle_id}" in notes[0]


def test_attach_to_existing_ticket_once_even_when_delivered_twice(
    redmine: Redmine, make_bundle: MakeBundle
) -> None:
    number = redmine.create_issue("Calls drop after 30 s")
    made = make_bundle(ticket=f"#{number}")
    backend = backend_for(redmine.url, redmine.api_key)
    first = backend.deliver(made.path, made.meta)
    again = backend.deliver(made.path, made.meta)
    assert first.ticket == again.ticket == str(number)
    assert again.detail["already_attached"] is True
    issue = redmine.issue(number)
    assert [a["filename"] for a in issue["attachments"]] == [made.meta.name]
    assert issue["subject"] == "Calls drop after 30 s"


def test_checkpointed_ticket_is_reused_not_created_again(
    redmine: Redmine, make_bundle: MakeBundle
) -> None:
    made = make_bundle()
    cp = MemoryCheckpoint()
    backend = backend_for(redmine.url, redmine.api_key)
    r1 = backend.deliver(made.path, made.meta, checkpoint=cp)
    assert cp.get("ticket") == r1.ticket and not cp.get("creating")
    # a crash after the create request, before its answer was recorded: found by its marker
    crashed = MemoryCheckpoint({"creating": time.time() - 3600})
    r2 = backend.deliver(made.path, made.meta, checkpoint=crashed)
    assert r2.ticket == r1.ticket and r2.detail["already_attached"]
    assert crashed.get("ticket") == r1.ticket
    assert len(redmine.issues_with(f"fieldtrace-bundle: {made.meta.bundle_id}")) == 1


def test_unanswered_create_is_not_repeated_until_it_must_have_finished(
    redmine: Redmine, make_bundle: MakeBundle
) -> None:
    made = make_bundle()
    backend = backend_for(redmine.url, redmine.api_key, timeout=5)
    cp = MemoryCheckpoint({"creating": time.time()})  # sent just now, no answer, not found
    with pytest.raises(TransientError, match=r"checking again in 1[0-2]s before creating it"):
        backend.deliver(made.path, made.meta, checkpoint=cp)
    assert redmine.issues_with(f"fieldtrace-bundle: {made.meta.bundle_id}") == []
    cp.save(creating=time.time() - 13)  # 2 x timeout + 2 s later: create it
    receipt = backend.deliver(made.path, made.meta, checkpoint=cp)
    assert len(redmine.issues_with(f"fieldtrace-bundle: {made.meta.bundle_id}")) == 1
    assert receipt.detail["created_ticket"] is True


def test_recorded_upload_token_is_attached_without_uploading_again(
    redmine: Redmine, make_bundle: MakeBundle
) -> None:
    """A crash after the upload, before the attach: the next attempt attaches that token."""
    number = redmine.create_issue("token reuse")
    made = make_bundle(ticket=str(number))
    backend = backend_for(redmine.url, redmine.api_key)
    with backend._session() as s:
        token = backend._upload(s, made.path, made.meta)
    uploads = redmine.uploads_count()
    made.path.write_bytes(b"")  # the file is not read again: an upload would be refused empty
    backend.deliver(made.path, made.meta, checkpoint=MemoryCheckpoint({"upload_token": token}))
    assert redmine.uploads_count() == uploads
    [att] = redmine.issue(number)["attachments"]
    assert hashlib.sha256(redmine.download(att["content_url"])).hexdigest() == made.meta.sha256


def test_stale_upload_token_is_dropped_and_uploaded_again(
    redmine: Redmine, make_bundle: MakeBundle, outbox: Outbox
) -> None:
    number = redmine.create_issue("stale token")
    made = make_bundle(ticket=str(number))
    queue(outbox, made)
    [item] = outbox.items("queued")
    item.record["checkpoint"] = {"upload_token": "999999.deadbeef"}
    from uploader.outbox import _write_json

    _write_json(outbox.root / "queue" / f"{made.meta.name}.json", item.record)
    backend = backend_for(redmine.url, redmine.api_key)
    [a1] = outbox.deliver(backend)
    assert a1.outcome == "retry" and "upload again" in a1.message
    [a2] = outbox.deliver(backend, force=True)
    assert a2.outcome == "sent"
    assert [a["filename"] for a in redmine.issue(number)["attachments"]] == [made.meta.name]


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("wrong-key", "refused the API key (HTTP 401)"),
        ("unknown-ticket", "ticket #987654 does not exist"),
        ("closed-ticket", "is closed (status Closed)"),
        ("bad-tracker", "tracker 'Incident' does not exist in Redmine (known: Bug, Feature, "),
        ("bad-ticket", "is not a Redmine issue number"),
    ],
)
def test_permanent_errors_park_with_the_reason(
    redmine: Redmine, make_bundle: MakeBundle, outbox: Outbox, case: str, expect: str
) -> None:
    key, ticket, opts = redmine.api_key, None, {}
    if case == "wrong-key":
        key = "0" * 40
    elif case == "unknown-ticket":
        ticket = "987654"
    elif case == "closed-ticket":
        number = redmine.create_issue("closed case")
        redmine.close_issue(number)
        ticket = str(number)
    elif case == "bad-tracker":
        opts = {"tracker": "Incident"}
    elif case == "bad-ticket":
        ticket = "ABC-12"
    made = make_bundle(ticket=ticket)
    queue(outbox, made)
    uploads = redmine.uploads_count()
    backend = backend_for(redmine.url, key)
    if opts:
        backend = backend_for(redmine.url, key, tracker=opts["tracker"])
    [att] = outbox.deliver(backend)
    assert att.outcome == "parked", att.message
    assert expect in att.message
    [parked] = outbox.items("parked")
    assert parked.record["last_error"] == att.message
    assert parked.bundle is not None and parked.bundle.read_bytes() == made.data  # kept
    assert redmine.uploads_count() == uploads  # refused before uploading anything


def test_file_over_the_size_limit_is_parked(redmine: Redmine, make_bundle: MakeBundle,
                                            outbox: Outbox) -> None:  # fmt: skip
    number = redmine.create_issue("big file")
    made = make_bundle(size=200 * 1024, ticket=str(number))
    queue(outbox, made)
    redmine.set_setting("attachment_max_size", "100")  # KB
    try:
        [att] = outbox.deliver(backend_for(redmine.url, redmine.api_key))
    finally:
        redmine.set_setting("attachment_max_size", str(1024 * 1024))
    assert att.outcome == "parked"
    assert "HTTP 422" in att.message and "exceeds the maximum allowed file size" in att.message
    assert redmine.issue(number)["attachments"] == []
    with pytest.raises(PermanentError):
        backend_for(redmine.url, redmine.api_key).deliver(made.path, made.meta)
