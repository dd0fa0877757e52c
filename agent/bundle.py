"""Bundles: signed manifest + artifacts -> tar -> zstd -> age, streamed; and the way back.

Layout inside the tar (all under one top directory named after the bundle):
``manifest.json``, ``manifest.sig`` (base64 Ed25519 signature of manifest.json's bytes),
``signer.pub`` (the signer's OpenSSH public key), then ``<device>/<step-id>/...``.
The plaintext archive only ever exists in memory, a few chunks at a time, between the tar
reader, the zstd workers and age; the output is written to a temp file and renamed into
place, so a failure leaves nothing. The zstd stream is a run of independent frames (one per
512 KiB of tar), which any zstd decoder reads as one stream.
Openable with stock tools: ``age -d -i identity.txt B | tar --zstd -x``.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import tarfile
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from agent.errors import ConfigError, RuntimeFailure
from agent.keys import SigningKey, fingerprint, parse_public_openssh

if TYPE_CHECKING:
    from concurrent.futures import Future

FORMAT = "fieldtrace.bundle/1"
SUFFIX = ".tar.zst.age"
_ZSTD_LEVEL = 3
_CHUNK = 512 * 1024  # tar stream piece compressed as one zstd frame
_WORKERS = min(2, os.cpu_count() or 1)
_INFLIGHT = _WORKERS + 2  # pieces being compressed or waiting to be encrypted
_BUF = 256 * 1024


def _tarinfo(name: str, size: int, mtime: float, mode: int = 0o644) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = int(mtime)
    ti.mode = mode
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "fieldtrace"
    return ti


@dataclass
class PackStats:
    plaintext_bytes: int = 0
    encrypted_bytes: int = 0


def write_bundle(
    dest: Path,
    top: str,
    manifest: dict[str, Any],
    staging: Path,
    key: SigningKey,
    recipients: list[Any],
    mtime: float,
    on_progress: Callable[[int], None] | None = None,
) -> PackStats:
    """Sign the manifest and stream the bundle to ``dest`` (atomic; nothing left on failure)."""
    import pyrage

    manifest_bytes = json.dumps(manifest, indent=2, ensure_ascii=False).encode() + b"\n"
    signature = base64.b64encode(key.sign(manifest_bytes)) + b"\n"
    signer = key.public_openssh().encode() + b"\n"
    paths = [a["path"] for s in manifest["steps"] for a in s["artifacts"]]
    paths += [a["path"] for a in manifest.get("attachments", []) if "sha256" in a]
    members: list[tuple[str, bytes | Path]] = [
        ("manifest.json", manifest_bytes),
        ("manifest.sig", signature),
        ("signer.pub", signer),
    ]
    members += [(rel, staging / rel) for rel in paths]
    frames = _Frames(top, mtime, members, on_progress)
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb", buffering=_BUF) as out_fh:
            sink = _Sink(out_fh)
            try:
                pyrage.encrypt_io(frames, sink, recipients)
            except BaseException as exc:
                raise (frames.error or sink.error or exc) from None
            if frames.error:  # never seal a bundle whose stream broke off
                raise frames.error
            out_fh.flush()
            os.fsync(out_fh.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError | pyrage.EncryptError):
            cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            where = f"reading {staging}" if exc is frames.error else f"writing {dest.parent}"
            raise RuntimeFailure(
                f"packing the bundle failed: {cause} ({where}); nothing was kept: "
                "the collected data was discarded rather than left unencrypted. Free space or "
                "fix permissions there and run again"
            ) from exc
        raise
    finally:
        frames.close()
    return PackStats(frames.plaintext_bytes, dest.stat().st_size)


class _Sink:
    """The output file as pyrage writes it, keeping the exception a write raised (pyrage
    would turn a KeyboardInterrupt or an OSError into a generic EncryptError)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.error: BaseException | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        try:
            return self.raw.write(data)
        except BaseException as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.raw.flush()
        except BaseException as exc:
            self.error = exc
            raise


class _Frames:
    """The compressed tar stream, as a readable file for ``pyrage.encrypt_io`` to pull from.

    The tar stream (what ``tarfile`` writes in PAX format: ``TarInfo.tobuf`` headers, data
    padded to 512-byte blocks, two zero blocks, zeros to a whole record) is cut into
    ``_CHUNK``-byte pieces; a small thread pool compresses each piece as an independent zstd
    frame (python-zstandard releases the GIL), at most ``_INFLIGHT`` ahead of the reader, and
    ``read`` hands the frames out in order. Concatenated frames are one valid zstd stream.
    Everything runs on the reading thread except compression, so nothing competes with
    pyrage for the GIL (pyrage holds it while it encrypts); memory stays bounded by the
    chunks in flight. An exception raised while producing is kept in ``error`` (pyrage only
    reports a generic I/O error) and raised again by any later ``read``.
    """

    def __init__(
        self,
        top: str,
        mtime: float,
        members: list[tuple[str, bytes | Path]],
        on_progress: Callable[[int], None] | None,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.plaintext_bytes = 0
        self.error: BaseException | None = None
        self._free: list[bytearray] = []
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="bundle-zstd")
        self._pending: deque[Future[bytes]] = deque()
        self._chunks = self._tar(top, mtime, members, on_progress)
        self._more = True
        self._frame = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.error:
            raise self.error
        try:
            while self._pos >= len(self._frame):
                self._frame = b""  # let it go before the next chunk buffer is needed
                self._submit()
                if not self._pending:
                    return b""
                frame = self._pending.popleft().result()
                self._submit()
                self._frame, self._pos = frame, 0
            end = len(self._frame) if size < 0 else self._pos + size
            out = self._frame[self._pos : end]
            self._pos += len(out)
            return out
        except BaseException as exc:
            self.error = exc
            raise

    def close(self) -> None:
        for fut in self._pending:
            fut.cancel()
        self._pool.shutdown(wait=True)
        self._pending.clear()
        self._chunks.close()

    def _submit(self) -> None:
        while self._more and len(self._pending) < _INFLIGHT:
            piece = next(self._chunks, None)
            if piece is None:
                self._more = False
                return
            self.plaintext_bytes += len(piece)
            self._pending.append(self._pool.submit(self._compress, piece))

    def _compress(self, piece: bytearray) -> bytes:
        import zstandard

        cctx = getattr(self._local, "cctx", None)
        if cctx is None:  # one per worker thread, reused
            cctx = self._local.cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
        frame: bytes = cctx.compress(piece)
        if len(piece) == _CHUNK:
            self._free.append(piece)
        return frame

    def _tar(
        self,
        top: str,
        mtime: float,
        members: list[tuple[str, bytes | Path]],
        on_progress: Callable[[int], None] | None,
    ) -> Generator[bytearray, None, None]:
        buf = bytearray(_CHUNK)
        fill = 0
        total = 0

        def put(data: bytes) -> Iterator[bytearray]:
            nonlocal buf, fill, total
            view = memoryview(data)
            while view:
                n = min(len(view), _CHUNK - fill)
                buf[fill : fill + n] = view[:n]
                fill += n
                total += n
                view = view[n:]
                if fill == _CHUNK:
                    yield buf
                    buf, fill = self._buffer(), 0

        topdir = _tarinfo(top, 0, mtime, 0o755)
        topdir.type = tarfile.DIRTYPE
        yield from put(_header(topdir))
        for rel, src in members:
            if isinstance(src, bytes):
                yield from put(_header(_tarinfo(f"{top}/{rel}", len(src), mtime)))
                yield from put(src)
                size = len(src)
            else:
                with open(src, "rb", buffering=0) as fh:
                    size = left = os.fstat(fh.fileno()).st_size
                    yield from put(_header(_tarinfo(f"{top}/{rel}", size, mtime)))
                    while left:
                        n = fh.readinto(memoryview(buf)[fill : fill + min(left, _CHUNK - fill)])
                        if not n:
                            raise OSError(errno.EIO, f"{src} shrank while it was packed")
                        fill += n
                        total += n
                        left -= n
                        if fill == _CHUNK:
                            yield buf
                            buf, fill = self._buffer(), 0
                if on_progress:
                    on_progress(size)
            yield from put(bytes(-size % tarfile.BLOCKSIZE))
        yield from put(bytes(2 * tarfile.BLOCKSIZE))
        yield from put(bytes(-total % tarfile.RECORDSIZE))
        if fill:
            yield buf[:fill]

    def _buffer(self) -> bytearray:
        return self._free.pop() if self._free else bytearray(_CHUNK)


def _header(ti: tarfile.TarInfo) -> bytes:
    return ti.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading bundles -----------------------------------------------------------------------


class BundleInvalid(RuntimeFailure):
    """The bundle failed verification (exit 1: done, but the bundle is not trustworthy)."""

    exit_code = 1


@dataclass
class Verified:
    manifest: dict[str, Any]
    signer: str  # OpenSSH public key line
    signer_fingerprint: str
    artifacts: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    extracted_to: Path | None = None


_MEMBER_RE = re.compile(r"^[A-Za-z0-9._+@=/-]+$")


@dataclass
class _Decrypting:
    """A readable stream of the decrypted, decompressed tar (age in a thread, zstd here)."""

    path: Path
    identities: list[Any]
    error: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        import pyrage

        r_fd, w_fd = os.pipe()
        self._reader = open(r_fd, "rb", buffering=_BUF)  # noqa: SIM115

        def run() -> None:
            try:
                with open(self.path, "rb", buffering=_BUF) as src, open(w_fd, "wb") as pipe:
                    pyrage.decrypt_io(src, pipe, self.identities)
            except BrokenPipeError:
                pass
            except BaseException as exc:
                self.error.append(exc)

        self._thread = threading.Thread(target=run, name="bundle-decrypt", daemon=True)
        self._thread.start()

    def stream(self) -> IO[bytes]:
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(
            self._reader, read_size=_BUF, read_across_frames=True
        )

    def close(self) -> None:
        self._reader.close()
        self._thread.join(10)


def read_bundle(
    path: Path,
    identities: list[Any],
    expected_signer: str | None = None,
    extract_to: Path | None = None,
) -> Verified:
    """Decrypt, verify the signature and every artifact's sha256; optionally extract."""
    from cryptography.exceptions import InvalidSignature

    if not path.is_file():
        raise ConfigError(f"{path}: no such bundle file")
    dec = _Decrypting(path, identities)
    members: dict[str, bytes] = {}
    hashes: dict[str, tuple[str, int]] = {}
    problems: list[str] = []
    top = None
    try:
        with tarfile.open(fileobj=dec.stream(), mode="r|") as tf:
            for ti in tf:
                name = ti.name
                if top is None:
                    top = name.split("/")[0]
                rel = name[len(top) + 1 :] if name.startswith(top + "/") else None
                if ti.isdir() and (name.rstrip("/") == top or (rel and _safe(rel.rstrip("/")))):
                    continue  # directories carry nothing to verify
                if rel is None or not ti.isfile() or not _safe(rel):
                    problems.append(f"unexpected member {name!r}")
                    continue
                fh = tf.extractfile(ti)
                assert fh is not None
                if rel in ("manifest.json", "manifest.sig", "signer.pub"):
                    members[rel] = fh.read()
                    continue
                hashes[rel] = _hash_member(fh, extract_to / top / rel if extract_to else None)
    except Exception as exc:
        dec.close()
        if dec.error:
            raise _decrypt_error(path, dec.error[0]) from None
        raise BundleInvalid(f"{path}: not a readable bundle: {exc}") from None
    dec.close()
    if dec.error:
        raise _decrypt_error(path, dec.error[0])
    for required in ("manifest.json", "manifest.sig", "signer.pub"):
        if required not in members:
            raise BundleInvalid(f"{path}: {required} is missing; not a fieldtrace bundle")
    signer_line = members["signer.pub"].decode(errors="replace").strip()
    try:
        pub = parse_public_openssh(signer_line)
        pub.verify(base64.b64decode(members["manifest.sig"]), members["manifest.json"])
    except (ValueError, InvalidSignature):
        raise BundleInvalid(
            f"{path}: the manifest signature does not verify: the manifest was altered or "
            "signed by another key"
        ) from None
    fp = fingerprint(pub)
    if expected_signer is not None and expected_signer not in (fp, _key_body(signer_line)):
        raise BundleInvalid(f"{path}: signed by {fp}, not by the expected signer {expected_signer}")
    manifest = json.loads(members["manifest.json"])
    if manifest.get("format") != FORMAT:
        problems.append(f"unknown manifest format {manifest.get('format')!r}")
    listed = {a["path"]: a for s in manifest.get("steps", []) for a in s.get("artifacts", [])}
    listed.update({a["path"]: a for a in manifest.get("attachments", []) if "sha256" in a})
    for rel, meta in listed.items():
        got = hashes.get(rel)
        if got is None:
            problems.append(f"{rel}: listed in the manifest but missing from the bundle")
        elif got != (meta["sha256"], meta["size"]):
            problems.append(f"{rel}: sha256/size differ from the manifest (altered)")
    for rel in hashes.keys() - listed.keys():
        problems.append(f"{rel}: in the bundle but not in the manifest")
    v = Verified(
        manifest,
        signer_line,
        fp,
        len(hashes),
        sum(n for _, n in hashes.values()),
        problems,
        extract_to / top if extract_to and top else None,
    )
    if extract_to and top:
        (extract_to / top).mkdir(parents=True, exist_ok=True)
        for name, data in members.items():
            (extract_to / top / name).write_bytes(data)
    return v


def _key_body(line: str) -> str:
    parts = line.split()
    return f"{parts[0]} {parts[1]}" if len(parts) >= 2 else line


def _safe(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(_MEMBER_RE.match(rel)) and not p.is_absolute() and ".." not in p.parts


def _hash_member(fh: IO[bytes], target: Path | None) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    out = None
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        out = open(target, "wb")  # noqa: SIM115
    try:
        for chunk in _chunks(fh):
            h.update(chunk)
            n += len(chunk)
            if out:
                out.write(chunk)
    finally:
        if out:
            out.close()
    return h.hexdigest(), n


def _chunks(fh: IO[bytes]) -> Iterator[bytes]:
    while chunk := fh.read(_BUF):
        yield chunk


def _decrypt_error(path: Path, exc: BaseException) -> RuntimeFailure:
    return BundleInvalid(
        f"{path}: cannot decrypt: {exc} (is this bundle encrypted to this identity? "
        "pass the vendor's identity with -i)"
    )
