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


class Resumable:
    """Records progress in the checkpoint, then fails once at a chosen step."""

    name = "resumable"

    def __init__(self, fail_after: str | None) -> None:
        self.fail_after = fail_after
        self.calls: list[dict[str, object]] = []

    def deliver(self, bundle_path: Path, meta: DeliveryMeta, checkpoint: object = None) -> Receipt:
        from uploader.base import Checkpoint

        assert checkpoint is not None
        cp: Checkpoint = checkpoint  # type: ignore[assignment]
        self.calls.append({"ticket": cp.get("ticket"), "token": cp.get("upload_token")})
        if not cp.get("ticket"):
            cp.save(ticket="42")
        if self.fail_after == "ticket":
            self.fail_after = None
            raise TransientError("connection reset")
        cp.save(upload_token="7.abc")
        return Receipt(self.name, "t/42", cp.get("ticket"))


def test_checkpoint_survives_a_failed_attempt_and_is_handed_back(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox", backoff_base=0.01, backoff_max=0.01)
    _bundle(box, "e.tar.zst.age")
    backend = Resumable("ticket")
    [a] = box.deliver(backend)
    assert a.outcome == "retry"
    [item] = box.items("queued")
    assert item.record["checkpoint"] == {"ticket": "42"} and "in_flight" not in item.record
    [a] = box.deliver(backend, force=True)
    assert a.outcome == "sent" and a.receipt is not None and a.receipt.ticket == "42"
    assert backend.calls == [{"ticket": None, "token": None}, {"ticket": "42", "token": None}]
    [sent] = box.items("sent")
    assert sent.record["receipt"]["ticket"] == "42"
    assert not list((box.root / "locks").iterdir())  # lock files go with the item


def test_backoff_doubles_with_jitter_up_to_the_cap(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox", backoff_base=10, backoff_max=100)
    for attempts, low, high in ((1, 7.5, 12.5), (2, 15, 25), (3, 30, 50), (4, 60, 100),
                                (9, 75, 125)):  # fmt: skip
        delays = [box._delay(attempts) for _ in range(200)]
        assert low <= min(delays) and max(delays) <= high
        assert max(delays) - min(delays) > (high - low) / 4  # there is jitter


def test_a_locked_item_is_skipped_as_busy(tmp_path: Path) -> None:
    import fcntl

    box = Outbox(tmp_path / "outbox")
    _bundle(box, "f.tar.zst.age")
    with open(box.root / "locks" / "f.tar.zst.age.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert box.busy("f.tar.zst.age")
        [a] = box.deliver(Flaky([]))
        assert a.outcome == "busy"
    assert not box.busy("f.tar.zst.age")
    [a] = box.deliver(Flaky([]))
    assert a.outcome == "sent"


def test_interrupted_delivery_is_resumed(tmp_path: Path, caplog: object) -> None:
    import json
    import logging

    box = Outbox(tmp_path / "outbox")
    _bundle(box, "g.tar.zst.age")
    js = box.root / "queue" / "g.tar.zst.age.json"
    rec = json.loads(js.read_text())
    rec.update(in_flight={"pid": 999999, "since": 1.0}, checkpoint={"ticket": "7"}, attempts=1)
    js.write_text(json.dumps(rec))
    backend = Resumable(None)
    with caplog.at_level(logging.WARNING):  # type: ignore[attr-defined]
        [a] = box.deliver(backend)
    assert a.outcome == "sent" and backend.calls == [{"ticket": "7", "token": None}]
    assert "resuming g.tar.zst.age" in caplog.text and "999999" in caplog.text  # type: ignore[attr-defined]


def test_size_cap_refuses_and_keeps_everything(tmp_path: Path) -> None:
    import pytest

    from uploader.outbox import OutboxFull

    box = Outbox(tmp_path / "outbox", max_bytes=2500)
    _bundle(box, "h.tar.zst.age", b"x" * 2000)
    tmp = box.tmp_dir() / "i.tar.zst.age"
    tmp.write_bytes(b"y" * 1000)
    with pytest.raises(OutboxFull, match=r"1 bundle\(s\) take 2000 bytes of the 2500 allowed"):
        box.put(tmp, DeliveryMeta(bundle_id="i", name=tmp.name, size=1000, sha256=""))
    assert tmp.read_bytes() == b"y" * 1000
    assert [i.name for i in box.items("queued")] == ["h.tar.zst.age"]
    box.check_room()  # not full yet: a smaller bundle could still go in


def test_retry_makes_a_waiting_item_due_now(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    _bundle(box, "j.tar.zst.age")
    [a] = box.deliver(Flaky([TransientError("timeout")]))
    assert a.outcome == "retry"
    assert box.retry("j.tar.zst.age") == ["j.tar.zst.age"]
    [a] = box.deliver(Flaky([]))
    assert a.outcome == "sent"
