"""The Redmine backend's service side against a real Redmine: notes, search, ticket state."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.fixtures.redmine import Redmine
from uploader.base import CAPABILITIES, PermanentError, capabilities
from uploader.directory import DirectoryBackend

from .conftest import MakeBundle, backend_for

pytestmark = pytest.mark.integration


def test_redmine_declares_every_capability_directory_only_attach(redmine: Redmine) -> None:
    assert capabilities(backend_for(redmine.url, redmine.api_key)) == frozenset(CAPABILITIES)
    assert capabilities(DirectoryBackend(redmine.dir)) == frozenset({"attach"})


def test_note_then_find_it_by_marker(redmine: Redmine) -> None:
    be = backend_for(redmine.url, redmine.api_key)
    number = redmine.create_issue("capabilities: note")
    op = f"fieldtrace-op: {uuid.uuid4().hex}"
    assert be.find_marker(op, ticket=str(number)) is None
    be.add_note(str(number), f"Still failing: disk on local\n{op}")
    assert be.find_marker(op, ticket=str(number)) == str(number)
    notes = [j["notes"] for j in redmine.issue(number).get("journals", []) if j.get("notes")]
    assert notes == [f"Still failing: disk on local\n{op}"]


def test_find_marker_in_descriptions(redmine: Redmine) -> None:
    be = backend_for(redmine.url, redmine.api_key)
    fp = f"fieldtrace-problem: {uuid.uuid4().hex[:16]}"
    assert be.find_marker(fp) is None
    number = redmine.create_issue("capabilities: marker", description=f"text\n{fp}\n")
    assert be.find_marker(fp) == str(number)


def test_ticket_state_follows_the_vendor(redmine: Redmine) -> None:
    be = backend_for(redmine.url, redmine.api_key)
    number = redmine.create_issue("capabilities: state")
    assert be.ticket_state(str(number)) == "open"
    redmine.close_issue(number)
    assert be.ticket_state(str(number)) == "closed"
    with pytest.raises(PermanentError, match="does not exist"):
        be.ticket_state("999999")


def test_notes_since_reads_new_notes_only(redmine: Redmine) -> None:
    be = backend_for(redmine.url, redmine.api_key)
    first, cursor = be.notes_since(None)
    assert first == []  # the first poll starts now: history is not replayed
    a = redmine.create_issue("capabilities: poll a")
    b = redmine.create_issue("capabilities: poll b")
    time.sleep(1.1)  # Redmine stores seconds
    be.add_note(str(a), "note one on a")
    be.add_note(str(b), "note on b")
    be.add_note(str(a), "note two on a")
    notes, cursor2 = be.notes_since(cursor)
    mine = [(n.ticket, n.text) for n in notes if n.ticket in (str(a), str(b))]
    assert mine == [(str(a), "note one on a"), (str(b), "note on b"), (str(a), "note two on a")]
    assert all(n.author and n.id.isdigit() and n.ticket_open for n in notes)
    assert cursor2 >= cursor


def test_a_new_ticket_takes_priority_preface_and_markers(
    redmine: Redmine, make_bundle: MakeBundle
) -> None:
    be = backend_for(redmine.url, redmine.api_key)
    fp = f"fieldtrace-problem: {uuid.uuid4().hex[:16]}"
    made = make_bundle(
        priority="Urgent", preface="disk check failing on local since 10:00", markers=(fp,),
        subject="disk check failing on local",
    )  # fmt: skip
    receipt = be.deliver(made.path, made.meta)
    issue = redmine.issue(receipt.ticket or "0")
    assert issue["priority"]["name"] == "Urgent"
    assert issue["subject"] == "disk check failing on local"
    assert issue["description"].startswith("disk check failing on local since 10:00")
    assert fp in issue["description"]
    assert be.find_marker(fp) == receipt.ticket
