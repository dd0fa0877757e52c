"""Bundles: signed manifest + artifacts -> tar -> zstd -> age, streamed; and the way back.

Layout inside the tar (all under one top directory named after the bundle):
``manifest.json``, ``manifest.sig`` (base64 Ed25519 signature of manifest.json's bytes),
``signer.pub`` (the signer's OpenSSH public key), then ``<device>/<step-id>/...``.
The plaintext archive only ever exists in a pipe between the tar/zstd thread and age; the
output is written to a temp file and renamed into place, so a failure leaves nothing.
Openable with stock tools: ``age -d -i identity.txt B | tar --zstd -x``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from agent.errors import ConfigError, RuntimeFailure
from agent.keys import SigningKey, fingerprint, parse_public_openssh

FORMAT = "fieldtrace.bundle/1"
SUFFIX = ".tar.zst.age"
_ZSTD_LEVEL = 3
_ZSTD_JOB = 1024 * 1024  # small jobs keep multi-threaded zstd's memory low
_BUF = 256 * 1024


class _Counting:
    """Adds tell() to a write-only stream so tarfile can use its fast non-stream mode."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.pos = 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos


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
    import zstandard

    manifest_bytes = json.dumps(manifest, indent=2, ensure_ascii=False).encode() + b"\n"
    signature = base64.b64encode(key.sign(manifest_bytes)) + b"\n"
    signer = key.public_openssh().encode() + b"\n"
    paths = [a["path"] for s in manifest["steps"] for a in s["artifacts"]]
    paths += [a["path"] for a in manifest.get("attachments", []) if "sha256" in a]
    stats = PackStats()
    errors: list[BaseException] = []
    r_fd, w_fd = os.pipe()

    def produce() -> None:
        try:
            with open(w_fd, "wb", buffering=0) as pipe:
                params = zstandard.ZstdCompressionParameters.from_level(
                    _ZSTD_LEVEL, threads=min(2, os.cpu_count() or 1), job_size=_ZSTD_JOB
                )
                cctx = zstandard.ZstdCompressor(compression_params=params)
                with cctx.stream_writer(pipe, closefd=False, write_size=_BUF) as zw:
                    out: Any = _Counting(zw)
                    with tarfile.TarFile(
                        fileobj=out, mode="w", format=tarfile.PAX_FORMAT, copybufsize=_BUF
                    ) as tf:
                        topdir = _tarinfo(top, 0, mtime, 0o755)
                        topdir.type = tarfile.DIRTYPE
                        tf.addfile(topdir)
                        for name, data in (
                            ("manifest.json", manifest_bytes),
                            ("manifest.sig", signature),
                            ("signer.pub", signer),
                        ):
                            tf.addfile(
                                _tarinfo(f"{top}/{name}", len(data), mtime), io.BytesIO(data)
                            )
                        for rel in paths:
                            src = staging / rel
                            with open(src, "rb") as fh:
                                size = os.fstat(fh.fileno()).st_size
                                tf.addfile(_tarinfo(f"{top}/{rel}", size, mtime), fh)
                            if on_progress:
                                on_progress(size)
                    stats.plaintext_bytes = out.pos
        except BaseException as exc:
            errors.append(exc)

    tmp = dest.with_name(f".{dest.name}.partial")
    producer = threading.Thread(target=produce, name="bundle-pack", daemon=True)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb", buffering=_BUF) as out_fh:
            producer.start()
            with open(r_fd, "rb", buffering=_BUF) as reader:
                r_fd = -1
                try:
                    pyrage.encrypt_io(reader, out_fh, recipients)
                except BaseException:
                    reader.close()  # unblocks the producer (broken pipe)
                    raise
            producer.join()
            if errors:
                raise errors[0]
            out_fh.flush()
            os.fsync(out_fh.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException as exc:
        if producer.is_alive():
            producer.join(5)
        tmp.unlink(missing_ok=True)
        if r_fd != -1:
            os.close(r_fd)
        if isinstance(exc, OSError | pyrage.EncryptError):
            cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise RuntimeFailure(
                f"packing the bundle failed: {cause} (writing {dest.parent}); nothing was kept: "
                "the collected data was discarded rather than left unencrypted. Free space or "
                "fix permissions there and run again"
            ) from exc
        raise
    stats.encrypted_bytes = dest.stat().st_size
    return stats


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

        return zstandard.ZstdDecompressor().stream_reader(self._reader, read_size=_BUF)

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
