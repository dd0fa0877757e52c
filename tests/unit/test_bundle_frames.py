"""write_bundle's multi-frame zstd stream: stock tools and ``read_bundle`` open it whole; a
source that breaks off mid-stream leaves no bundle behind."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agent import bundle
from agent.bundle import read_bundle, write_bundle
from agent.errors import RuntimeFailure
from agent.keys import load_identity, load_signing_key

# odd sizes: members straddle chunk boundaries and need tar padding
SIZES = {"gw1/big/random.bin": 3 * bundle._CHUNK + 12345, "gw1/small/log.txt": 1000}


def _stage(root: Path) -> dict[str, Any]:
    steps = []
    for rel, size in SIZES.items():
        path = root / rel
        path.parent.mkdir(parents=True)
        data = (os.urandom(size // 2) + b"line of text\n" * (size // 13 + 1))[:size]
        path.write_bytes(data)
        art = {"path": rel, "size": size, "sha256": hashlib.sha256(data).hexdigest()}
        steps.append({"device": "gw1", "id": rel.split("/")[1], "artifacts": [art]})
    return {"format": bundle.FORMAT, "steps": steps}


class Site:
    """A site home, staged artifacts and an empty outbox directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.home, self.staging, self.out = (
            tmp_path / "home",
            tmp_path / "staging",
            tmp_path / "out",
        )
        self.home.mkdir()
        self.out.mkdir()
        self.manifest = _stage(self.staging)
        self.ident: Any = load_identity(self.home)

    def pack(self, dest: Path, progress: Any = None) -> bundle.PackStats:
        return write_bundle(
            dest,
            "top",
            self.manifest,
            self.staging,
            load_signing_key(self.home),
            [self.ident.to_public()],
            time.time(),
            progress,
        )


def test_multi_frame_bundle_opens_with_stock_tools_and_read_bundle(tmp_path: Path) -> None:
    for tool in ("age", "tar", "zstd"):
        assert shutil.which(tool), f"{tool} is not installed (tests/run.sh installs it)"
    site = Site(tmp_path)
    home, staging, out, ident = site.home, site.staging, site.out, site.ident
    progress: list[int] = []
    dest = out / "b.tar.zst.age"
    stats = site.pack(dest, progress.append)
    assert progress == list(SIZES.values())
    assert stats.encrypted_bytes == dest.stat().st_size
    assert [p.name for p in out.iterdir()] == ["b.tar.zst.age"]  # no .partial left

    plain = subprocess.run(
        ["age", "-d", "-i", str(home / "identity.txt"), str(dest)], capture_output=True, check=True
    ).stdout
    assert plain.count(b"\x28\xb5\x2f\xfd") >= 4  # zstd frame magic: one frame per chunk
    tar = subprocess.run(["zstd", "-dc"], input=plain, capture_output=True, check=True).stdout
    assert len(tar) == stats.plaintext_bytes and len(tar) % 10240 == 0
    dest_dir = tmp_path / "x"
    dest_dir.mkdir()
    subprocess.run(["tar", "-x", "-C", str(dest_dir)], input=tar, check=True)
    for rel in SIZES:
        assert (dest_dir / "top" / rel).read_bytes() == (staging / rel).read_bytes()

    v = read_bundle(dest, [ident])
    assert v.problems == [] and v.artifacts == len(SIZES) and v.bytes == sum(SIZES.values())


def test_source_that_shrinks_while_packing_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Site(tmp_path)
    big = site.staging / "gw1/big/random.bin"
    real_fstat = os.fstat

    def lying_fstat(fd: int) -> os.stat_result:  # claims more data than the file holds
        st = real_fstat(fd)
        if os.path.samefile(f"/proc/self/fd/{fd}", big):
            return os.stat_result((*st[:6], st.st_size + 4096, *st[7:]))
        return st

    monkeypatch.setattr(bundle.os, "fstat", lying_fstat)
    with pytest.raises(
        RuntimeFailure, match=r"shrank while it was packed \(reading .*staging\); nothing was kept"
    ):
        site.pack(site.out / "b.tar.zst.age")
    assert list(site.out.iterdir()) == []
