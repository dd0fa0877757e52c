"""The outbox spool: atomic put, delivery, retry with backoff, parking, idempotent redelivery."""

from __future__ import annotations

import time
from pathlib import Path

from uploader.base import DeliveryMeta, PermanentError, Receipt, TransientError
from uploader.directory import DirectoryBackend
from uploader.outbox import Outbox


def _bundle(box: Outbox, name: str, data: bytes = b"age-encryption.org/v1 fake") -> DeliveryMeta:
    tmp = box.tmp_dir() / name
    tmp.write_bytes(data)
    meta = DeliveryMeta(bundle_id=name[:8], name=name, size=len(data), sha256="x")
    box.put(tmp, meta)
    return meta


class Flaky:
    name = "flaky"

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.delivered: list[str] = []

    def deliver(self, bundle_path: Path, meta: DeliveryMeta) -> Receipt:
        if self.failures:
            raise self.failures.pop(0)
        self.delivered.append(meta.bundle_id)
        return Receipt(self.name, f"ticket/{meta.bundle_id}")


def test_directory_delivery_is_atomic_and_idempotent(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    meta = _bundle(box, "a.tar.zst.age", b"x" * 1000)
    backend = DirectoryBackend(tmp_path / "dest")
    [att] = box.deliver(backend)
    assert att.outcome == "sent" and (tmp_path / "dest/a.tar.zst.age").read_bytes() == b"x" * 1000
    assert box.items("queued") == [] and box.items("sent")[0].name == meta.name
    # delivering the same bundle again (e.g. after a crash before the queue was updated)
    again = backend.deliver(tmp_path / "dest/a.tar.zst.age", meta)
    assert again.detail == {"already_there": True}
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["a.tar.zst.age"]


def test_transient_errors_back_off_then_succeed(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    _bundle(box, "b.tar.zst.age")
    backend = Flaky([TransientError("HTTP 503")])
    [att] = box.deliver(backend)
    assert att.outcome == "retry" and att.message == "HTTP 503"
    [item] = box.items("queued")
    assert item.record["attempts"] == 1 and item.record["next_attempt"] > time.time() + 20
    [att] = box.deliver(backend)
    assert att.outcome == "waiting"  # not due yet
    [att] = box.deliver(backend, force=True)
    assert att.outcome == "sent" and backend.delivered == ["b.tar.zs"]


def test_permanent_errors_park_with_reason_and_retry_requeues(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    _bundle(box, "c.tar.zst.age")
    backend = Flaky([PermanentError("401 Unauthorized: check the API key")])
    [att] = box.deliver(backend)
    assert att.outcome == "parked"
    [parked] = box.items("parked")
    assert parked.record["last_error"] == "401 Unauthorized: check the API key"
    assert parked.bundle is not None and parked.bundle.is_file()
    assert box.retry() == ["c.tar.zst.age"]
    [att] = box.deliver(backend)
    assert att.outcome == "sent"


def test_interrupted_put_is_ignored(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    (box.root / "queue" / "d.tar.zst.age.json").write_text('{"meta": {}}')
    assert box.items() == []
