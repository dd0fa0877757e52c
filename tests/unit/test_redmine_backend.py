"""The redmine backend without a server: what a refused connection means for the ticket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from uploader.base import DeliveryMeta, MemoryCheckpoint, TransientError
from uploader.redmine import RedmineBackend, RedmineOptions


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nobody listens once it is closed


def test_refused_connection_is_transient_and_creates_no_ambiguity(tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar.zst.age"
    bundle.write_bytes(b"x")
    meta = DeliveryMeta(bundle_id="c" * 32, name=bundle.name, size=1, sha256="")
    port = _closed_port()
    url = f"http://127.0.0.1:{port}"
    backend = RedmineBackend(RedmineOptions(url=url, api_key="k" * 40, project="diag"))
    cp = MemoryCheckpoint()
    with pytest.raises(TransientError) as err:
        backend.deliver(bundle, meta, checkpoint=cp)
    assert str(err.value).startswith(
        f"creating the ticket: cannot connect to 127.0.0.1:{port}: connection refused"
    )
    assert "Error" not in str(err.value)  # no NewConnectionError / class names
    assert cp.values == {}  # the create never left this host: no need to look for it later
