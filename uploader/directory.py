"""``directory`` backend: copy bundles into a directory (air-gapped sites, the default)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from uploader.base import DeliveryMeta, PermanentError, Receipt, TransientError


class DirectoryBackend:
    """Delivers by atomic copy; a bundle already there with the same size is not copied again."""

    name = "directory"
    capabilities = frozenset({"attach"})

    def __init__(self, path: Path) -> None:
        self.path = path

    def deliver(self, bundle_path: Path, meta: DeliveryMeta) -> Receipt:
        target = self.path / meta.name
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if target.exists() and target.stat().st_size == meta.size:
                return Receipt(self.name, str(target), meta.ticket, {"already_there": True})
            tmp = self.path / f".{meta.name}.partial"
            shutil.copyfile(bundle_path, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN):
                raise TransientError(f"{self.path}: {exc.strerror}") from exc
            raise PermanentError(f"{self.path}: {exc.strerror or exc}") from exc
        return Receipt(self.name, str(target), meta.ticket)
