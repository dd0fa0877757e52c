"""The durable outbox: a spool of finished bundles and the worker that delivers them.

Layout under the outbox root::

    tmp/        bundles being written (same filesystem, so the final move is atomic)
    queue/      NAME.tar.zst.age + NAME.json   waiting for delivery
    parked/     NAME.tar.zst.age + NAME.json   permanent failure; reason in the json
    sent/       NAME.json                      delivered; the receipt
    delivered/  the ``directory`` backend's default target

An item's json is written before its bundle is moved in, so a bundle in ``queue/`` always
has its metadata; a json without a bundle is an interrupted put and is ignored. One worker
at a time holds ``.lock``; a crash mid-delivery leaves the item queued, and the backend's
idempotence on bundle id makes the retry safe.
"""

from __future__ import annotations

import fcntl
import inspect
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

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
    outcome: str  # sent | retry | parked | waiting
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
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("tmp", "queue", "parked", "sent"):
            (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def default_delivery_dir(self) -> Path:
        return self.root / "delivered"

    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def put(self, bundle: Path, meta: DeliveryMeta) -> Item:
        """Queue a finished bundle (moved, not copied; it must be on the outbox's filesystem)."""
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

    def items(self, state: str | None = None) -> list[Item]:
        out = []
        for st in ("queued", "parked", "sent") if state is None else (state,):
            d = self.root / ("queue" if st == "queued" else st)
            for js in sorted(d.glob(f"*{SUFFIX}.json")):
                try:
                    record = json.loads(js.read_text())
                except (OSError, ValueError):
                    log.warning("outbox: unreadable record %s", js)
                    continue
                bundle = js.with_suffix("")
                if st != "sent" and not bundle.exists():
                    continue  # interrupted put
                out.append(
                    Item(
                        st,
                        DeliveryMeta.from_json(record["meta"]),
                        record,
                        bundle if st != "sent" else None,
                    )
                )
        return out

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def deliver(self, backend: Backend, force: bool = False) -> list[Attempt]:
        """Try every queued item that is due (all of them with ``force``)."""
        results = []
        with self._locked():
            for item in self.items("queued"):
                if not force and item.record.get("next_attempt", 0) > time.time():
                    results.append(Attempt(item, "waiting", item.record.get("last_error") or ""))
                    continue
                results.append(self._attempt(backend, item))
        return results

    def _attempt(self, backend: Backend, item: Item) -> Attempt:
        assert item.bundle is not None
        rec = item.record
        rec["attempts"] = rec.get("attempts", 0) + 1
        js = item.bundle.with_name(item.bundle.name + ".json")
        try:
            if "checkpoint" in inspect.signature(backend.deliver).parameters:
                receipt = cast(ResumableBackend, backend).deliver(
                    item.bundle, item.meta, checkpoint=_ItemCheckpoint(js, rec)
                )
            else:
                receipt = backend.deliver(item.bundle, item.meta)
        except PermanentError as exc:
            rec["last_error"] = str(exc)
            self._move(item, "parked")
            return Attempt(item, "parked", str(exc))
        except Exception as exc:
            if not isinstance(exc, TransientError):
                log.error("bug in backend %s", backend.name, exc_info=exc)
            delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (rec["attempts"] - 1))
            rec["next_attempt"] = time.time() + delay * random.uniform(0.8, 1.2)
            rec["last_error"] = str(exc)
            _write_json(item.bundle.with_name(item.bundle.name + ".json"), rec)
            return Attempt(item, "retry", str(exc))
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
        item.bundle.with_name(item.bundle.name + ".json").unlink(missing_ok=True)
        return Attempt(item, "sent", receipt.location, receipt)

    def _move(self, item: Item, state: str) -> None:
        assert item.bundle is not None
        d = self.root / state
        _write_json(d / f"{item.name}.json", item.record)
        os.replace(item.bundle, d / item.name)
        item.bundle.with_name(item.bundle.name + ".json").unlink(missing_ok=True)

    def retry(self, name: str | None = None) -> list[str]:
        """Move parked items (all, or one) back to the queue, due now."""
        moved = []
        for item in self.items("parked"):
            if name and item.name != name:
                continue
            assert item.bundle is not None
            item.record["next_attempt"] = 0.0
            _write_json(self.root / "queue" / f"{item.name}.json", item.record)
            os.replace(item.bundle, self.root / "queue" / item.name)
            (self.root / "parked" / f"{item.name}.json").unlink(missing_ok=True)
            moved.append(item.name)
        return moved
