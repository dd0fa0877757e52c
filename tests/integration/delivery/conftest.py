"""Fixtures for the delivery tests: a real Redmine (session), a fault proxy, bundles."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.faultproxy import FaultProxy, fault_proxy
from tests.fixtures.redmine import Redmine, redmine_instance
from uploader.base import DeliveryMeta
from uploader.outbox import SUFFIX, Outbox
from uploader.redmine import RedmineBackend, RedmineOptions


@pytest.fixture(scope="session")
def redmine(request: pytest.FixtureRequest) -> Iterator[Redmine]:
    cache = Path(request.config.cache.mkdir("fieldtrace-redmine"))
    with redmine_instance(cache) as rm:
        yield rm


@pytest.fixture
def proxy(redmine: Redmine) -> Iterator[FaultProxy]:
    with fault_proxy(redmine.port) as p:
        yield p


def backend_for(url: str, key: str, timeout: float = 30.0, **kw: object) -> RedmineBackend:
    opts: dict[str, object] = {"tracker": "Support", **kw}
    return RedmineBackend(RedmineOptions(url=url, api_key=key, project="diag", timeout=timeout,
                                         **opts))  # type: ignore[arg-type]  # fmt: skip


@dataclass
class Made:
    path: Path
    meta: DeliveryMeta
    data: bytes


MakeBundle = Callable[..., Made]


@pytest.fixture
def make_bundle(tmp_path: Path) -> MakeBundle:
    """A bundle-like file (random bytes) and its DeliveryMeta."""

    def make(size: int = 64 * 1024, ticket: str | None = None, where: Path | None = None,
             **meta: object) -> Made:  # fmt: skip
        bundle_id = uuid.uuid4().hex
        name = f"acme-telecom-gw1-default-20261201T101010Z-{bundle_id[:8]}{SUFFIX}"
        data = os.urandom(size)
        path = (where or tmp_path) / name
        path.write_bytes(data)
        fields: dict[str, object] = dict(
            bundle_id=bundle_id, name=name, size=size, sha256=hashlib.sha256(data).hexdigest(),
            ticket=ticket, company="ACME Telecom", contract="TS-2024-117",
            contact_email="noc@acme.example", devices=("gw1", "core-sw"), profile="sip-calls",
            summary="fieldtrace bundle: profile sip-calls on gw1; 3 steps ok 2, failed 1\n"
            "- gw1/trace: failed: capture refused",
            created="2026-12-01T10:10:10+00:00",
        )  # fmt: skip
        fields.update(meta)
        return Made(path, DeliveryMeta(**fields), data)  # type: ignore[arg-type]

    return make


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox", backoff_base=0.05, backoff_max=0.3)


def queue(box: Outbox, made: Made) -> None:
    tmp = box.tmp_dir() / made.meta.name
    os.replace(made.path, tmp)
    box.put(tmp, made.meta)
