"""The durable outbox: a spool of finished bundles and the worker that delivers them.

Layout under the outbox root::

    tmp/        bundles being written (same filesystem, so the final move is atomic)
    queue/      NAME.tar.zst.age + NAME.json   waiting for delivery
    parked/     NAME.tar.zst.age + NAME.json   permanent failure; reason in the json
    sent/       NAME.json                      delivered; the receipt
    locks/      NAME.lock                      held (flock) by the worker delivering NAME
    delivered/  the ``directory`` backend's default target

An item's json is written before its bundle is moved in, so a bundle in ``queue/`` always
has its metadata; a json without a bundle is an interrupted put and is ignored.

Delivery guarantees:

* **One worker per item.** A worker takes ``locks/NAME.lock`` (non-blocking flock) and then
  re-reads the item; another worker finding it locked skips it ("busy"). The kernel drops
  the lock when a worker dies, even by ``kill -9``. A lock file is removed only once its
  item has left the queue, so while an item is queued every worker locks the same inode.
* **Crash recovery.** While delivering, the record holds ``in_flight`` (pid, start); the
  backend's progress (``checkpoint``: the ticket it created, the upload token) is written
  to the record, fsynced, as it happens. A worker that finds ``in_flight`` set and the
  lock free resumes from the checkpoint; the backend's idempotence on the bundle id makes
  the repeat safe (attached exactly once).
* **Retries.** A transient error sets ``next_attempt`` with exponential backoff
  (``backoff_base`` doubling per failed attempt, capped at ``backoff_max``, x0.75-1.25
  jitter so many sites do not retry in step); a permanent error parks the item with the
  reason. Nothing is ever deleted except a delivered bundle.
* **Size cap.** ``put`` refuses (``OutboxFull``) a bundle that would take queued + parked
  bundles over ``max_bytes``; the caller keeps the bundle and says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import json
import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from uploader.base import (
    Backend,
    DeliveryMeta,
    PermanentError,
    Receipt,
    ResumableBackend,
    TransientError,
)

log = logging.getLogger(__name__)
SUFFIX = ".tar.zst.age"
BACKOFF_BASE = 30.0
BACKOFF_MAX = 3600.0


class OutboxFull(Exception):
    """The bundle would take the spool over its size cap; nothing was queued or deleted."""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _retry_message(backend: str, exc: Exception) -> str:
    """What the user is told of a failed attempt that will be retried (never a class name)."""
    if isinstance(exc, TransientError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:  # a backend that let one through
        where = f"{exc.filename}: " if exc.filename else ""
        log.warning("backend %s raised an OS error unwrapped", backend, exc_info=exc)
        return f"{backend}: {where}{exc.strerror}"
    log.error("bug in backend %s", backend, exc_info=exc)
    return (
        f"unexpected error in the {backend} backend (a bug; the traceback is in the log): "
        f"{exc or 'no message'}"
    )


@dataclass
class Item:
    state: str  # queued | parked | sent
    meta: DeliveryMeta
    record: dict[str, Any]
    bundle: Path | None

    @property
    def name(self) -> str:
        return self.meta.name


@dataclass
class Attempt:
    item: Item
    outcome: str  # sent | retry | parked | waiting | busy
    message: str = ""
    receipt: Receipt | None = None


class _ItemCheckpoint:
    """The backend's progress, kept in the queued item's record and fsynced on each save."""

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path = path
        self.record = record

    def get(self, key: str) -> Any:
        return (self.record.get("checkpoint") or {}).get(key)

    def save(self, **values: Any) -> None:
        cp = dict(self.record.get("checkpoint") or {})
        cp.update(values)
        self.record["checkpoint"] = {k: v for k, v in cp.items() if v is not None}
        _write_json(self.path, self.record)


class Outbox:
    def __init__(
        self,
        root: Path,
        max_bytes: int | None = None,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
        create: bool = True,
    ) -> None:
        """``create=False`` only reads (a dry run's room check): no directory is made."""
        self.root = root
        self.max_bytes = max_bytes
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        if create:
            for sub in ("tmp", "queue", "parked", "sent", "locks"):
                (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def default_delivery_dir(self) -> Path:
        return self.root / "delivered"

    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    # -- the spool ------------------------------------------------------------------
    def used_bytes(self) -> tuple[int, int]:
        """(bytes, bundles) held in queue/ and parked/: what counts against ``max_bytes``."""
        total = count = 0
        for sub in ("queue", "parked"):
            for p in (self.root / sub).glob(f"*{SUFFIX}"):
                with contextlib.suppress(OSError):
                    total += p.stat().st_size
                    count += 1
        return total, count

    def check_room(self, size: int = 0) -> None:
        """OutboxFull when ``size`` more bytes would exceed the cap (or it is full already)."""
        if self.max_bytes is None:
            return
        used, count = self.used_bytes()
        if used + size > self.max_bytes or (size == 0 and used >= self.max_bytes):
            raise OutboxFull(
                f"the outbox is full: {count} bundle(s) take {used} bytes of the {self.max_bytes}"
                f" allowed ([outbox] max_bytes)"
                + (f" and this bundle needs {size} more" if size else "")
                + "; deliver them ('fieldtrace outbox deliver'), deal with parked ones "
                "('fieldtrace outbox list'), or raise [outbox] max_bytes"
            )

    def put(self, bundle: Path, meta: DeliveryMeta) -> Item:
        """Queue a finished bundle (moved, not copied; it must be on the outbox's filesystem).

        Raises OutboxFull, leaving ``bundle`` where it is, when it does not fit under the cap.
        """
        self.check_room(meta.size)
        record = {
            "meta": meta.to_json(),
            "attempts": 0,
            "next_attempt": 0.0,
            "last_error": None,
            "queued": time.time(),
        }
        queue = self.root / "queue"
        _write_json(queue / f"{meta.name}.json", record)
        target = queue / meta.name
        os.replace(bundle, target)
        return Item("queued", meta, record, target)

    def _load(self, state: str, js: Path) -> Item | None:
        try:
            record = json.loads(js.read_text())
            meta = DeliveryMeta.from_json(record["meta"])
        except FileNotFoundError:
            return None  # moved meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("outbox: unreadable record %s", js)
            return None
        bundle = js.with_suffix("")
        if state != "sent" and not bundle.exists():
            return None  # interrupted put (or moved meanwhile)
        return Item(state, meta, record, bundle if state != "sent" else None)

    def items(self, state: str | None = None) -> list[Item]:
        out = []
        for st in ("queued", "parked", "sent") if state is None else (state,):
            d = self.root / ("queue" if st == "queued" else st)
            for js in sorted(d.glob(f"*{SUFFIX}.json")):
                item = self._load(st, js)
                if item is not None:
                    out.append(item)
        return out

    def busy(self, name: str) -> bool:
        """Is a worker delivering this item right now?"""
        with self._item_lock(name) as got:
            return not got

    @contextlib.contextmanager
    def _item_lock(self, name: str) -> Iterator[bool]:
        path = self.root / "locks" / f"{name}.lock"
        fh: IO[str] = open(path, "a")  # noqa: SIM115
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                if not (self.root / "queue" / f"{name}.json").exists():
                    path.unlink(missing_ok=True)  # item left the queue: nobody needs it
                fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            fh.close()

    # -- the worker -----------------------------------------------------------------
    def deliver(
        self, backend: Backend, force: bool = False, only: str | None = None
    ) -> list[Attempt]:
        """One pass: try every queued item that is due (all of them with ``force``)."""
        results = []
        for listed in self.items("queued"):
            if only is not None and listed.name != only:
                continue
            with self._item_lock(listed.name) as got:
                if not got:
                    results.append(Attempt(listed, "busy", "another worker is delivering it"))
                    continue
                item = self._load("queued", self.root / "queue" / f"{listed.name}.json")
                if item is None:
                    continue  # delivered or parked by another worker meanwhile
                if not force and item.record.get("next_attempt", 0) > time.time():
                    results.append(Attempt(item, "waiting", item.record.get("last_error") or ""))
                    continue
                results.append(self._attempt(backend, item))
        return results

    def run(
        self,
        backend: Backend,
        stop: threading.Event | None = None,
        until_idle: bool = True,
        max_sleep: float = 60.0,
        only: str | None = None,
        on_attempt: Callable[[Attempt], None] | None = None,
        on_wait: Callable[[list[Item], float], None] | None = None,
    ) -> list[Attempt]:
        """Deliver until nothing is queued (``until_idle``) or ``stop`` is set.

        Sleeps until the next item is due; returns the last attempt of each item. ``only``
        restricts it to one item; ``on_attempt`` hears of every attempt made (not of items
        still waiting), ``on_wait`` of the items left and when the next one is due, before
        each sleep.
        """
        stop = stop or threading.Event()
        last: dict[str, Attempt] = {}
        while not stop.is_set():
            busy = False
            for a in self.deliver(backend, only=only):
                busy = busy or a.outcome == "busy"
                if a.outcome != "waiting":
                    last[a.item.name] = a
                    if on_attempt is not None:
                        on_attempt(a)
            queued = [i for i in self.items("queued") if only is None or i.name == only]
            if not queued and until_idle:
                break
            due = min((i.record.get("next_attempt", 0.0) for i in queued), default=0.0)
            if busy:  # another worker holds one: look again in a second, not in a spin
                due = max(due, time.time() + 1.0)
            if on_wait is not None:
                on_wait(queued, due)
            stop.wait(min(max_sleep, max(0.05, due - time.time())))
        return list(last.values())

    def _delay(self, attempts: int) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2.0 ** max(0, attempts - 1))
        return float(delay * random.uniform(0.75, 1.25))

    def _attempt(self, backend: Backend, item: Item) -> Attempt:
        assert item.bundle is not None
        rec = item.record
        js = self.root / "queue" / f"{item.name}.json"
        if rec.get("in_flight"):
            log.warning(
                "outbox: resuming %s, interrupted while delivering (pid %s)",
                item.name,
                rec["in_flight"].get("pid"),
            )
        rec["attempts"] = rec.get("attempts", 0) + 1
        rec["in_flight"] = {"pid": os.getpid(), "since": time.time(), "backend": backend.name}
        _write_json(js, rec)
        checkpoint = _ItemCheckpoint(js, rec)
        try:
            if "checkpoint" in inspect.signature(backend.deliver).parameters:
                receipt = cast(ResumableBackend, backend).deliver(
                    item.bundle, item.meta, checkpoint=checkpoint
                )
            else:
                receipt = backend.deliver(item.bundle, item.meta)
        except PermanentError as exc:
            rec.pop("in_flight", None)
            rec["last_error"] = str(exc)
            rec["parked"] = time.time()
            self._move(item, "parked")
            log.warning("outbox: parked %s: %s", item.name, exc)
            return Attempt(item, "parked", str(exc))
        except Exception as exc:
            message = _retry_message(backend.name, exc)
            rec.pop("in_flight", None)
            rec["next_attempt"] = time.time() + self._delay(rec["attempts"])
            rec["last_error"] = message
            _write_json(js, rec)
            log.info("outbox: %s will be retried: %s", item.name, message)
            return Attempt(item, "retry", message)
        rec.pop("in_flight", None)
        rec["receipt"] = {
            "backend": receipt.backend,
            "location": receipt.location,
            "ticket": receipt.ticket,
            "detail": receipt.detail,
        }
        rec["sent"] = time.time()
        rec["last_error"] = None
        _write_json(self.root / "sent" / f"{item.name}.json", rec)
        item.bundle.unlink(missing_ok=True)
        js.unlink(missing_ok=True)
        return Attempt(item, "sent", receipt.location, receipt)

    def _move(self, item: Item, state: str) -> None:
        assert item.bundle is not None
        d = self.root / state
        _write_json(d / f"{item.name}.json", item.record)
        os.replace(item.bundle, d / item.name)
        item.bundle.with_name(item.bundle.name + ".json").unlink(missing_ok=True)

    def retry(self, name: str | None = None) -> list[str]:
        """Parked items (all, or one) back to the queue, and waiting ones, due now."""
        moved = []
        for item in self.items("parked") + self.items("queued"):
            if name and item.name != name:
                continue
            assert item.bundle is not None
            with self._item_lock(item.name) as got:
                if not got:
                    continue  # being delivered right now
                item.record["next_attempt"] = 0.0
                _write_json(self.root / "queue" / f"{item.name}.json", item.record)
                if item.state == "parked":
                    os.replace(item.bundle, self.root / "queue" / item.name)
                    (self.root / "parked" / f"{item.name}.json").unlink(missing_ok=True)
                moved.append(item.name)
        return moved
