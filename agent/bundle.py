"""Bundles: signed manifest + artifacts -> tar -> zstd -> age, streamed; and the way back.

Layout inside the tar (all under one top directory named after the bundle):
``manifest.json``, ``manifest.sig`` (base64 Ed25519 signature of manifest.json's bytes),
``signer.pub`` (the signer's OpenSSH public key), then ``<device>/<step-id>/...``.
The plaintext archive only ever exists in memory, a few chunks at a time, between the tar
reader, the zstd workers and age; the output is written to a temp file and renamed into
place, so a failure leaves nothing. The zstd stream is a run of independent frames (one per
512 KiB of tar), which any zstd decoder reads as one stream.
Openable with stock tools (README: the safe form, into a new 0700 directory):
``age -d -i identity.txt B | tar --zstd -x -k --no-same-owner --no-same-permissions -C DIR``.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import tarfile
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from agent.errors import ConfigError, RuntimeFailure
from agent.keys import SigningKey, fingerprint, parse_public_openssh
from agent.manifest import FORMAT as FORMAT
from agent.manifest import (
    MANIFEST_MAX,
    SIGNATURE_MEMBERS,
    ManifestInvalid,
    component_problem,
    member_path_problem,
    parse_manifest,
    printable,
)
from agent.signers import SignerVerdict, TrustedSigners, judge_signer

if TYPE_CHECKING:
    from concurrent.futures import Future

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
#
# A bundle arriving at the vendor is hostile until verified. ``read_bundle`` streams it
# (file -> age -> zstd -> tar, every stage bounded) and checks, in this order: the age header
# size; every tar header (type, name, size, extension headers) before its data is read; the
# three signature members (size caps), then the signature, the pinned signer, the manifest
# (agent.manifest), the engineer's trusted_signers and the free space for the declared total;
# then every artifact against the manifest (listed, size, sha256; never read past its size).
# With an output directory, artifacts are written only into a private temporary directory
# next to it, and only after the manifest is verified; the tree is renamed into place when
# every check has passed. An artifact that comes before manifest.json (an archive repacked by
# other tools) is hashed but not written, and a second pass over the file extracts it once
# the first has verified everything. docs/bundle-reading.md describes the checks and limits.

AGE_MAGIC = b"age-encryption.org/v1\n"
AGE_HEADER_MAX = 64 * 1024  # a recipient stanza is ~100 bytes; ours have a handful
ZSTD_WINDOW_MAX = 1 << 23  # 8 MiB: what zstd -19 uses; ours are 512 KiB frames
MAX_MEMBERS = 65_536  # tar members, directories included
EXT_HEADER_MAX = 64 * 1024  # a pax or GNU long-name header; tarfile reads it whole
SMALL_MEMBER_MAX = {"manifest.json": MANIFEST_MAX, "manifest.sig": 1024, "signer.pub": 16384}
UNVERIFIED_MAX = 1 << 30  # artifact bytes read (hashed, never written) before the manifest
TRAILING_MAX = 1 << 20  # zero padding after the end-of-archive blocks (GNU tar -b2048)
RESERVE_MIN = 64 * 1024 * 1024  # kept free on the output filesystem, at least...
RESERVE_FRACTION = 0.02  # ...or this share of it
PROBLEMS_MAX = 50
OPEN_PREFIX = ".fieldtrace-open-"


class BundleInvalid(RuntimeFailure):
    """The bundle failed verification (exit 1: done, but the bundle is not trustworthy)."""

    exit_code = 1


class DecryptFailed(BundleInvalid):
    """age could not decrypt the bundle with the identities given; ``reason`` is age's."""

    def __init__(self, shown: str, reason: str, tail: str = "") -> None:
        self.shown, self.reason, self.tail = shown, reason, tail
        self.no_key = "no matching keys" in reason.lower()  # else: damaged or cut short
        super().__init__(f"{shown}: cannot decrypt: {reason}{tail}")


@dataclass
class Verified:
    manifest: dict[str, Any]
    signer: str  # OpenSSH public key line
    signer_fingerprint: str
    artifacts: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    extracted_to: Path | None = None
    signer_state: str = "unknown"  # trusted | pinned | unknown (see agent.signers)
    signer_site: str | None = None
    signer_note: str = ""
    warnings: list[str] = field(default_factory=list)


class _Refused(Exception):
    """A check failed; the message (printable already) names the problem."""


def tree_name(bundle: Path) -> str:
    """The directory ``bundle open`` extracts into: the bundle's file name without
    ``.tar.zst.age``, in the member alphabet. Never the archive's own top directory."""
    stem = bundle.name
    for suffix in (SUFFIX, ".age"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        stem += ".d"
    return re.sub(r"[^A-Za-z0-9._+@=-]", "_", stem).lstrip(".")[:200] or "bundle"


@dataclass(frozen=True)
class _Policy:
    pinned: str | None
    trusted: TrustedSigners
    require_trusted: bool


class _Plaintext:
    """The tar stream of a bundle: the file (opened once) -> age (pyrage, in a thread) -> a
    pipe -> zstd (window capped) -> counted reads, refused past ``limit`` bytes."""

    def __init__(self, path: Path, identities: list[Any]) -> None:
        import pyrage
        import zstandard

        self.error: BaseException | None = None
        self.consumed = 0
        self.limit = UNVERIFIED_MAX + MANIFEST_MAX + 64 * 1024 * 1024
        self.why = (
            f"more than {UNVERIFIED_MAX >> 20} MiB of archive before a verified manifest.json"
        )
        self._src = open(path, "rb", buffering=_BUF)  # noqa: SIM115
        try:
            self._check_age_header()
        except BaseException:
            self._src.close()
            raise
        r_fd, w_fd = os.pipe()
        self._pipe = open(r_fd, "rb", buffering=_BUF)  # noqa: SIM115
        src = self._src

        def run() -> None:
            try:
                with open(w_fd, "wb") as pipe:
                    pyrage.decrypt_io(src, pipe, identities)
            except BrokenPipeError:
                pass
            except BaseException as exc:
                self.error = exc

        self._thread = threading.Thread(target=run, name="bundle-decrypt", daemon=True)
        self._thread.start()
        dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_WINDOW_MAX)
        self._zstd: IO[bytes] = dctx.stream_reader(
            self._pipe, read_size=_BUF, read_across_frames=True
        )

    def _check_age_header(self) -> None:
        head = self._src.read(AGE_HEADER_MAX)
        if not head.startswith(AGE_MAGIC):
            if head.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----"):
                raise _Refused("an ASCII-armored age file; fieldtrace bundles are binary")
            raise _Refused(
                "not an age-encrypted file (no age-encryption.org/v1 header); "
                "is this a fieldtrace bundle?"
            )
        end = head.find(b"\n--- ")
        if end < 0 or head.find(b"\n", end + 1) < 0:
            raise _Refused(
                f"the age header is longer than {AGE_HEADER_MAX // 1024} KiB or cut short "
                "(a bundle's header takes a few hundred bytes)"
            )
        self._src.seek(0)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._zstd.read(size if size >= 0 else _BUF)
        self.consumed += len(data)
        if self.consumed > self.limit:
            raise _Refused(self.why)
        return data

    def bound(self, limit: int, why: str) -> None:
        self.limit, self.why = limit, why

    def drain(self) -> None:
        """Read what follows the end-of-archive blocks: at most TRAILING_MAX zero bytes."""
        extra = 0
        while chunk := self.read(_BUF):
            extra += len(chunk)
            if extra > TRAILING_MAX:
                raise _Refused(f"more than {TRAILING_MAX >> 20} MiB after the end of the archive")
            if chunk.count(0) != len(chunk):
                raise _Refused("data after the end of the archive")

    def close(self) -> None:
        self._zstd.close()
        self._pipe.close()
        self._thread.join(30)
        if not self._thread.is_alive():
            self._src.close()


class _TarFile(tarfile.TarFile):
    members: list[tarfile.TarInfo]  # (set by tarfile; not in its type stubs)
    ext_headers = 0  # extension headers seen for the member being read


class _CheckedTarInfo(tarfile.TarInfo):
    """tarfile's header parsing, refusing before it allocates: pax and GNU long-name headers
    over EXT_HEADER_MAX (tarfile reads them whole into memory), more than 4 extension headers
    for one member, pax global headers, GNU long link names, and every GNU sparse form (the
    1.0 form makes tarfile read a sparse map of any length)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, *_EXT_REFUSED, b"L"):
            if self.type in _EXT_REFUSED:
                raise _Refused(f"has {_EXT_REFUSED[self.type]} (never in a fieldtrace bundle)")
            if self.size > EXT_HEADER_MAX:
                raise _Refused(
                    f"has a tar extension header of {self.size} bytes (at most {EXT_HEADER_MAX})"
                )
            if isinstance(tarfile_, _TarFile):
                tarfile_.ext_headers += 1
                if tarfile_.ext_headers > 4:
                    raise _Refused("has more than 4 tar extension headers for one member")
        elif self.type == tarfile.GNUTYPE_SPARSE:
            raise _Refused(f"member {printable(repr(self.name))} is a GNU sparse file")
        result: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return result

    def _proc_gnusparse_00(self, *args: Any) -> None:
        raise _Refused("has a GNU sparse file (pax GNU.sparse 0.0)")

    def _proc_gnusparse_01(self, *args: Any) -> None:
        raise _Refused("has a GNU sparse file (pax GNU.sparse 0.1)")

    def _proc_gnusparse_10(self, *args: Any) -> None:
        raise _Refused("has a GNU sparse file (pax GNU.sparse 1.0)")


_EXT_REFUSED = {tarfile.XGLTYPE: "a pax global header", tarfile.GNUTYPE_LONGLINK: "a link name"}
_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
}


def _kind_problem(ti: tarfile.TarInfo) -> str | None:
    """None for a regular file or a directory; else what the member is."""
    if ti.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        return None
    kind = _KINDS.get(ti.type) or f"of unknown type {printable(repr(ti.type))}"
    if ti.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        kind += f" to {printable(repr(ti.linkname))}"
    return kind


@dataclass
class _Header:
    """The verified signature members and what they say."""

    raw: dict[str, bytes]
    data: dict[str, Any]
    members: dict[str, tuple[int, str]]  # path -> (size, sha256), as the manifest declares
    signer_line: str
    fingerprint: str
    verdict: SignerVerdict
    warnings: list[str]


class _Scan:
    """One pass over a bundle. With a tree (``open``) the first problem ends it; without one
    (``inspect``) content problems are collected and structural ones end it."""

    def __init__(
        self,
        path: Path,
        identities: list[Any],
        policy: _Policy,
        tree: _Tree | None = None,
        known: dict[str, bytes] | None = None,
    ) -> None:
        self.path, self.shown = path, printable(path)
        self.identities, self.policy, self.tree, self.known = identities, policy, tree, known
        self.top: str | None = None
        self.names: set[str] = set()
        self.small: dict[str, bytes] = {}
        self.header: _Header | None = None
        self.seen: dict[str, tuple[int, str]] = {}  # artifact path -> (size, sha256) read
        self.unverified = 0
        self.deferred = False  # open: an artifact came before the manifest (pass 2 extracts)
        self.problems: list[str] = []
        self.more_problems = 0
        self.count = 0
        self.plain: _Plaintext | None = None

    def run(self) -> Verified:
        import zstandard

        try:
            self.plain = _Plaintext(self.path, self.identities)
            if self.known is not None:
                self._verify(self.known)
            stream = cast(IO[bytes], self.plain)
            with _TarFile.open(fileobj=stream, mode="r|", tarinfo=_CheckedTarInfo) as tf:
                while True:
                    tf.ext_headers = 0
                    ti = tf.next()
                    if ti is None:
                        break
                    tf.members.clear()  # stream mode would keep every header in memory
                    self._member(tf, ti)
            self.plain.drain()
            self._close()
        except _Refused as exc:
            self._close(quiet=True)
            raise BundleInvalid(self._message(str(exc))) from None
        except (tarfile.TarError, EOFError, zstandard.ZstdError, ValueError, UnicodeError) as exc:
            self._close(quiet=True)
            why = printable(exc) or type(exc).__name__
            if "too much memory" in why:
                why += f" (frames may need a window of at most {ZSTD_WINDOW_MAX >> 20} MiB)"
            raise BundleInvalid(self._message(f"not a readable bundle: {why}")) from None
        except BaseException:
            self._close(quiet=True)
            raise
        return self._result()

    def _close(self, quiet: bool = False) -> None:
        plain, self.plain = self.plain, None
        if plain is None:
            return
        plain.close()
        if plain.error is not None:
            exc = plain.error
            reason = printable(exc) if str(exc) else type(exc).__name__
            if isinstance(exc, OSError) and exc.strerror:
                reason = f"reading it failed: {exc.strerror}"
            tail = "; nothing was extracted" if self.tree is not None else ""
            raise DecryptFailed(self.shown, reason, tail) from None
        if not quiet and plain._thread.is_alive():
            raise BundleInvalid(f"{self.shown}: decryption did not finish")

    def _message(self, text: str) -> str:
        tail = "; nothing was extracted" if self.tree is not None else ""
        return f"{self.shown}: {text}{tail}"

    def _problem(self, text: str) -> None:
        if self.tree is not None:
            raise _Refused(text)
        if len(self.problems) < PROBLEMS_MAX:
            self.problems.append(text)
        else:
            self.more_problems += 1

    # -- members ----------------------------------------------------------------------------

    def _member(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        self.count += 1
        if self.count > MAX_MEMBERS:
            raise _Refused(f"has more than {MAX_MEMBERS} members")
        rel = self._relative(ti.name)
        shown = printable(repr(ti.name))
        if rel in self.names:
            raise _Refused(f"member {shown} appears twice")
        self.names.add(rel)
        kind = _kind_problem(ti)
        if kind:
            raise _Refused(f"member {shown} is {kind}; a bundle holds only regular files")
        if ti.isdir():
            return  # directories carry nothing; the tree's come from the file paths
        if rel == "":
            raise _Refused(f"member {shown} is a file where the top directory belongs")
        if ti.sparse is not None or any(k.startswith("GNU.sparse") for k in ti.pax_headers):
            raise _Refused(f"member {shown} is a GNU sparse file")
        fh = tf.extractfile(ti)
        assert fh is not None  # a regular file always has a reader
        if rel in SIGNATURE_MEMBERS:
            self._small(rel, ti.size, fh)
        else:
            self._artifact(rel, ti.size, fh)

    def _relative(self, name: str) -> str:
        """The member's path below the archive's top directory, checked; the top directory is
        one safe name shared by every member (and never used to build a destination)."""
        top, _, rel = name.partition("/")
        shown = printable(repr(name))
        if name.startswith("/"):
            raise _Refused(f"member {shown} is an absolute path")
        why = component_problem(top)
        if why:
            raise _Refused(f"member {shown}: its top directory {why}")
        if self.top is None:
            self.top = top
        elif top != self.top:
            raise _Refused(f"member {shown} lies outside the top directory {self.top!r}")
        if "/" not in name:
            return ""
        why = "has an empty component" if rel.startswith("/") else member_path_problem(rel)
        if why:
            raise _Refused(f"member {shown} {why}")
        return rel

    def _small(self, rel: str, size: int, fh: IO[bytes]) -> None:
        cap = SMALL_MEMBER_MAX[rel]
        if size > cap:
            raise _Refused(f"{rel} is {size} bytes; at most {cap} (not read)")
        data = fh.read(size)
        if self.known is not None and data != self.known[rel]:
            raise _Refused(f"{rel} changed between the checking and the extracting pass")
        self.small[rel] = data
        if self.header is None and len(self.small) == len(SIGNATURE_MEMBERS):
            self._verify(self.small)

    def _artifact(self, rel: str, size: int, fh: IO[bytes]) -> None:
        if self.header is None:  # before the manifest: hashed, never written
            self.unverified += size
            if self.unverified > UNVERIFIED_MAX:
                raise _Refused(
                    f"more than {UNVERIFIED_MAX >> 20} MiB of members before manifest.json "
                    "(fieldtrace writes the manifest first)"
                )
            self.deferred = self.tree is not None
            self.seen[rel] = (size, _hash(fh, size, None))
            return
        declared = self.header.members.get(rel)
        if declared is None:
            self.seen[rel] = (size, "")
            self._problem(f"{rel}: in the bundle but not in the manifest")
            return
        if size != declared[0]:
            self.seen[rel] = (size, "")
            self._problem(
                f"{rel}: sha256/size differ from the manifest (altered): {size} bytes in the "
                f"archive, {declared[0]} declared" + ("; not read" if size > declared[0] else "")
            )
            return
        out = None if self.tree is None or self.deferred else self.tree.create(rel)
        try:
            digest = _hash(fh, size, out)
        finally:
            if out is not None:
                self.tree.close_file(out)  # type: ignore[union-attr]
        self.seen[rel] = (size, digest)
        if digest != declared[1]:
            self._problem(f"{rel}: sha256/size differ from the manifest (altered)")

    # -- the signature members -------------------------------------------------------------

    def _verify(self, raw: dict[str, bytes]) -> None:
        from cryptography.exceptions import InvalidSignature

        try:
            signer_line = raw["signer.pub"].decode("ascii").strip()
            pub = parse_public_openssh(signer_line)
        except (UnicodeDecodeError, ValueError):
            raise _Refused("signer.pub is not an ssh-ed25519 public key line") from None
        try:
            signature = base64.b64decode(raw["manifest.sig"].strip(), validate=True)
            pub.verify(signature, raw["manifest.json"])
        except (binascii.Error, InvalidSignature):
            raise _Refused(
                "the manifest signature does not verify: the manifest was altered or signed by "
                "another key"
            ) from None
        fp = fingerprint(pub)
        if self.policy.pinned is not None and fp != self.policy.pinned:
            raise _Refused(f"signed by {fp}, not by the expected signer {self.policy.pinned}")
        try:
            model, data = parse_manifest(raw["manifest.json"])
        except ManifestInvalid as exc:
            more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
            raise _Refused(f"manifest.json: {exc.problems[0]}{more}") from None
        try:
            verdict = judge_signer(fp, model.site.slug, self.policy.pinned, self.policy.trusted)
        except ValueError as exc:
            raise _Refused(str(exc)) from None
        if self.policy.require_trusted and verdict.state == "unknown":
            raise _Refused(
                f"signed by {fp}, a key that is neither pinned (--signer) nor listed for site "
                f"{printable(model.site.slug)!r} in trusted_signers (--require-trusted)"
            )
        warnings = []
        if model.signer is not None and model.signer != fp:
            warnings.append(
                f"the manifest names its signer as {printable(model.signer)} but it is signed "
                f"by {fp}"
            )
        members = model.members()
        self.header = _Header(dict(raw), data, members, signer_line, fp, verdict, warnings)
        for rel, (size, digest) in list(self.seen.items()):  # read before the manifest
            declared = members.get(rel)
            if declared is None:
                self._problem(f"{rel}: in the bundle but not in the manifest")
            elif declared != (size, digest):
                self._problem(f"{rel}: sha256/size differ from the manifest (altered)")
        declared_total = sum(size for size, _ in members.values())
        assert self.plain is not None
        self.plain.bound(
            self.plain.consumed + declared_total + (len(members) + 16) * 8192 + 2 * TRAILING_MAX,
            "the archive is larger than the manifest declares (a decompression bomb?)",
        )
        if self.tree is not None:
            self.tree.check_space(declared_total, len(members), self.shown)

    def _result(self) -> Verified:
        for rel in SIGNATURE_MEMBERS:
            if rel not in self.small:
                raise BundleInvalid(self._message(f"{rel} is missing; not a fieldtrace bundle"))
        header = self.header
        assert header is not None
        try:
            for rel in sorted(header.members.keys() - self.seen.keys()):
                self._problem(f"{rel}: listed in the manifest but missing from the bundle")
        except _Refused as exc:
            raise BundleInvalid(self._message(str(exc))) from None
        if self.more_problems:
            self.problems.append(f"... and {self.more_problems} more problems")
        if self.tree is not None and not self.deferred:
            for rel in SIGNATURE_MEMBERS:
                self.tree.write_small(rel, header.raw[rel])
        artifacts = [size for rel, (size, _) in self.seen.items() if rel in header.members]
        return Verified(
            header.data,
            header.signer_line,
            header.fingerprint,
            len(artifacts),
            sum(artifacts),
            [printable(p) for p in self.problems],
            None,
            header.verdict.state,
            header.verdict.site,
            header.verdict.note,
            header.warnings,
        )


def _hash(fh: IO[bytes], size: int, out: IO[bytes] | None) -> str:
    """sha256 of a member's data, copied to ``out``; never reads more than ``size`` + 1."""
    h = hashlib.sha256()
    n = 0
    while chunk := fh.read(min(_BUF, size + 1 - n)):
        n += len(chunk)
        if n > size:  # tarfile stops at the header's size; this guards the guard
            raise _Refused(f"a member holds more than its {size} bytes")
        h.update(chunk)
        if out is not None:
            out.write(chunk)
    if n != size:
        raise _Refused(f"a member ends after {n} of its {size} bytes")
    return h.hexdigest()


class _Tree:
    """The private temporary directory ``<out>/.fieldtrace-open-XXXX/`` (0700, on the output
    directory's filesystem) in which the tree is built: directory fds, O_EXCL, O_NOFOLLOW,
    modes 0700/0600 whatever the umask and the archive say. ``commit`` renames its one top
    directory into place and never replaces anything; ``discard`` removes it all."""

    def __init__(self, out_fd: int, out: Path) -> None:
        self.out_fd, self.out = out_fd, out
        for _ in range(16):
            self.tmp = OPEN_PREFIX + secrets.token_hex(8)
            try:
                os.mkdir(self.tmp, 0o700, dir_fd=out_fd)
                break
            except FileExistsError:
                continue
        else:
            raise RuntimeFailure(f"{printable(out)}: cannot make a temporary directory")
        self.live = True
        os.chmod(self.tmp, 0o700, dir_fd=out_fd)
        self.tmp_fd = _open_dir(self.tmp, out_fd)
        os.mkdir("tree", 0o700, dir_fd=self.tmp_fd)
        os.chmod("tree", 0o700, dir_fd=self.tmp_fd)
        self.dirs = {""}

    def check_space(self, declared: int, files: int, shown: str) -> None:
        st = os.fstatvfs(self.out_fd)
        block = st.f_frsize or 4096
        free = st.f_bavail * block
        reserve = max(RESERVE_MIN, int(st.f_blocks * block * RESERVE_FRACTION))
        need = declared + (files + 3) * block
        if need + reserve > free:
            raise _NoSpace(
                f"{shown}: the manifest declares {_size(declared)} in {files} files; "
                f"{printable(self.out)} has {_size(free)} free and {_size(reserve)} must stay "
                "free; nothing was extracted (free space or pass -o another filesystem)"
            )
        if st.f_files and files + 3 + 1000 > st.f_favail:
            raise _NoSpace(
                f"{shown}: {files} files will not fit the {st.f_favail} free inodes of "
                f"{printable(self.out)}; nothing was extracted"
            )

    def create(self, rel: str) -> IO[bytes]:
        """A new file at ``rel`` (its directories made as needed), open for writing."""
        parts = rel.split("/")
        try:
            fd = _open_dir("tree", self.tmp_fd)
            try:
                for i, part in enumerate(parts[:-1]):
                    sub = "/".join(parts[: i + 1])
                    if sub not in self.dirs:
                        os.mkdir(part, 0o700, dir_fd=fd)
                        os.chmod(part, 0o700, dir_fd=fd)
                        self.dirs.add(sub)
                    nfd = _open_dir(part, fd)
                    os.close(fd)
                    fd = nfd
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                ffd = os.open(parts[-1], flags, 0o600, dir_fd=fd)
            finally:
                os.close(fd)
            os.fchmod(ffd, 0o600)
            return open(ffd, "wb", buffering=_BUF)
        except OSError as exc:
            raise self._failed(exc) from exc

    def close_file(self, fh: IO[bytes]) -> None:
        try:
            fh.close()
        except OSError as exc:
            raise self._failed(exc) from exc

    def write_small(self, rel: str, data: bytes) -> None:
        fh = self.create(rel)
        try:
            fh.write(data)
        except OSError as exc:
            raise self._failed(exc) from exc
        finally:
            self.close_file(fh)

    def _failed(self, exc: OSError) -> RuntimeFailure:
        return RuntimeFailure(
            f"writing the extracted files under {printable(self.out)} failed: "
            f"{exc.strerror or exc}; nothing was extracted"
        )

    def commit(self, name: str) -> None:
        try:
            _rename_noreplace(self.tmp_fd, "tree", self.out_fd, name)
        except FileExistsError:
            raise ConfigError(
                f"{printable(self.out / name)} already exists (made while the bundle was read);"
                " nothing was extracted: remove it or pass another -o"
            ) from None
        except OSError as exc:
            raise self._failed(exc) from exc
        os.close(self.tmp_fd)
        self.live = False
        os.rmdir(self.tmp, dir_fd=self.out_fd)

    def discard(self) -> None:
        import shutil

        if not self.live:
            return
        self.live = False
        os.close(self.tmp_fd)
        try:
            shutil.rmtree(self.tmp, dir_fd=self.out_fd)
        except OSError as exc:
            logging.getLogger(__name__).warning(
                "could not remove %s: %s", self.out / self.tmp, exc.strerror or exc
            )


class _NoSpace(RuntimeFailure):
    """The declared total does not fit the output filesystem (exit 3)."""


def _open_dir(name: str, dir_fd: int) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def _rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE): never replaces what exists at ``dst`` (FileExistsError)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        if fn(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), 1) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), dst)
    # no renameat2 here: rename(2) never follows a link at dst and replaces only an empty
    # directory, so checking first leaves nothing worse than that to a race
    try:
        os.lstat(dst, dir_fd=dst_dir)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def read_bundle(
    path: Path,
    identities: list[Any],
    expected_signer: str | None = None,
    extract_to: Path | None = None,
    *,
    trusted: TrustedSigners | None = None,
    require_trusted: bool = False,
    name: str | None = None,
) -> Verified:
    """Decrypt and verify a bundle (see the comment above); with ``extract_to``, extract the
    verified tree to ``extract_to / name`` (default :func:`tree_name`), or nothing at all.

    ``expected_signer`` is a ``SHA256:`` fingerprint (agent.signers.parse_signer). Raises
    BundleInvalid (exit 1) for a bundle that fails a check, ConfigError (exit 2) for a bad
    target, RuntimeFailure (exit 3) when the output cannot hold it or writing fails."""
    policy = _Policy(expected_signer, trusted or TrustedSigners(), require_trusted)
    if not path.is_file():
        raise ConfigError(f"{printable(path)}: no such bundle file")
    if extract_to is None:
        return _Scan(path, identities, policy).run()
    name = name or tree_name(path)
    try:
        out_fd = os.open(extract_to, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{printable(extract_to)}: {exc.strerror}; pass -o a directory") from None
    try:
        if _exists(name, out_fd):
            raise ConfigError(
                f"{printable(extract_to / name)} already exists; nothing was extracted: remove "
                "it or pass another -o"
            )
        tree = _Tree(out_fd, extract_to)
        try:
            scan = _Scan(path, identities, policy, tree)
            verified = scan.run()
            if scan.deferred:  # artifacts came before the manifest: extract in a second pass
                assert scan.header is not None
                tree.discard()
                tree = _Tree(out_fd, extract_to)
                verified = _Scan(path, identities, policy, tree, scan.header.raw).run()
            tree.commit(name)
        except BaseException:
            tree.discard()
            raise
    finally:
        os.close(out_fd)
    verified.extracted_to = extract_to / name
    return verified


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True
