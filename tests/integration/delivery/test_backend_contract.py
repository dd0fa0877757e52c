"""The backend contract (uploader/base.py), one suite for every backend (restic's idea).

Each backend gets a small harness: how to build it, and how to read back every copy of a
bundle it delivered. Delivering the same bundle twice must leave exactly one copy, byte
for byte the bundle; a missing bundle file must not be reported as delivered. New backends
add a harness to HARNESSES.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from tests.fixtures.redmine import Redmine
from tests.integration.delivery.conftest import Made, MakeBundle, backend_for
from uploader.base import Backend, DeliveryError, MemoryCheckpoint, Receipt, ResumableBackend
from uploader.directory import DirectoryBackend

pytestmark = pytest.mark.integration


@dataclass
class Harness:
    backend: Backend
    copies: Callable[[Made], list[bytes]]  # every delivered copy of this bundle
    prepare: Callable[[Made], Made] = lambda m: m


def _directory(tmp_path: Path, redmine: Redmine) -> Harness:
    dest = tmp_path / "dest"
    return Harness(
        DirectoryBackend(dest),
        lambda m: [p.read_bytes() for p in dest.glob("*") if p.name == m.meta.name],
    )


def _redmine(tmp_path: Path, redmine: Redmine) -> Harness:
    number = redmine.create_issue("contract")

    def copies(m: Made) -> list[bytes]:
        atts = redmine.issue(number)["attachments"]
        return [redmine.download(a["content_url"]) for a in atts if a["filename"] == m.meta.name]

    def prepare(m: Made) -> Made:
        from dataclasses import replace

        return Made(m.path, replace(m.meta, ticket=str(number)), m.data)

    return Harness(backend_for(redmine.url, redmine.api_key), copies, prepare)


HARNESSES: dict[str, Callable[[Path, Redmine], Harness]] = {
    "directory": _directory,
    "redmine": _redmine,
}


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path, redmine: Redmine) -> Harness:
    return HARNESSES[request.param](tmp_path, redmine)


def _deliver(h: Harness, made: Made) -> Receipt:
    if "checkpoint" in inspect.signature(h.backend.deliver).parameters:
        resumable = cast(ResumableBackend, h.backend)
        return resumable.deliver(made.path, made.meta, checkpoint=MemoryCheckpoint())
    return h.backend.deliver(made.path, made.meta)


def test_delivered_once_byte_identical_even_when_delivered_twice(
    harness: Harness, make_bundle: MakeBundle
) -> None:
    made = harness.prepare(make_bundle(size=200 * 1024))
    first = _deliver(harness, made)
    second = _deliver(harness, made)
    assert first.backend == second.backend == harness.backend.name
    copies = harness.copies(made)
    assert len(copies) == 1
    assert hashlib.sha256(copies[0]).hexdigest() == made.meta.sha256


def test_a_missing_bundle_file_is_an_error_not_a_delivery(
    harness: Harness, make_bundle: MakeBundle
) -> None:
    made = harness.prepare(make_bundle())
    made.path.unlink()
    with pytest.raises(DeliveryError):
        _deliver(harness, made)
    assert harness.copies(made) == []
