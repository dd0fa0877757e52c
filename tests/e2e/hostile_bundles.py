"""Build real bundles (tar via tarfile -> zstd -> age via pyrage) from the declarative attack
cases in ``tests/data/hostile_bundles/*.yaml``; one file per attack.

A case file says what the tar stream holds and what the run must show::

    attack: one line saying what the attack tries
    command: open                 # or inspect
    members:                      # the tar stream in order (default: the standard layout)
      - std: head                 # top dir, manifest.json, manifest.sig, signer.pub
      - std: artifacts            # the two standard artifacts
      - {many_dirs: N}            # N directory entries
      - name: local/x/y           # path below the top directory (raw: exact tar name)
        type: file                # file dir symlink hardlink chr blk fifo cont sparse
                                  # xhd xgl longname longlink, or a raw type byte
        data: "text"              # or size: N (fill: "A"), or zeros: N (cheap: one zstd
                                  # frame per MiB, repeated)
        target: /etc/passwd       # links
        mode: 0o4755              # uid, gid, devmajor, devminor, pax: {key: value}
        listed: true              # add it to the manifest (declared_size: N to lie)
    manifest:                     # edits before signing
      set: {steps.0.artifacts.0.size: "ten"}
      delete: [site]
      raw: "text"                 # replace the whole manifest.json
      extra_objects: N            # a "padding" key holding N empty objects
      compact: true               # no indentation
    sign: {key: site | other, over: manifest | other-bytes, signer_pub: "text"}
    zstd: {window_log: 31}
    tail: {zeros: N, garbage: "text"}     # bytes after the end-of-archive blocks
    age: {to: vendor | other, plain: false, header_junk: N, armor: false, truncate: N}
    trusted_signers: "acme-telecom {site_fp}\\n"     # default; null: no file
    args: ["--signer", "{other_fp}"]
    preplant: [{name: "{tree}", symlink: "{outside}"}]
    expect: {exit: 1, stderr: "regex", stdout: "regex", extracted: false}
    stock: false                  # leave out of the stock-tool run...
    stock_note: why               # ...and say why
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

CASES = Path(__file__).resolve().parent.parent / "data" / "hostile_bundles"
TOP = "acme-telecom-local-default-20240105T101500Z-5f3c2a1b"
SLUG = "acme-telecom"
MIB = 1 << 20
STANDARD = {
    "local/hello/output.txt": b"hello from the device\n",
    "local/conf/files/etc/app.conf": b"# app config\nlisten = 0.0.0.0:8080\nworkers = 4\n",
}
_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "cont": tarfile.CONTTYPE,
    "sparse": tarfile.GNUTYPE_SPARSE,
    "xhd": tarfile.XHDTYPE,
    "xgl": tarfile.XGLTYPE,
    "longname": tarfile.GNUTYPE_LONGNAME,
    "longlink": tarfile.GNUTYPE_LONGLINK,
}


@dataclass
class Keys:
    site: Ed25519PrivateKey
    other: Ed25519PrivateKey
    vendor: Any  # pyrage x25519 identity the bundles are encrypted to
    stranger: Any  # an identity nobody encrypts to

    @staticmethod
    def make() -> Keys:
        import pyrage

        return Keys(
            Ed25519PrivateKey.generate(),
            Ed25519PrivateKey.generate(),
            pyrage.x25519.Identity.generate(),
            pyrage.x25519.Identity.generate(),
        )

    def fp(self, which: str) -> str:
        return fingerprint(getattr(self, which))


def public_line(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return raw.decode()


def fingerprint(key: Ed25519PrivateKey) -> str:
    blob = base64.b64decode(public_line(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass
class Case:
    name: str
    spec: dict[str, Any]

    @property
    def expect(self) -> dict[str, Any]:
        out: dict[str, Any] = self.spec["expect"]
        return out

    @property
    def command(self) -> str:
        return str(self.spec.get("command", "open"))

    @property
    def stock(self) -> bool:
        return bool(self.spec.get("stock", True))


def load_cases() -> list[Case]:
    cases = []
    for path in sorted(CASES.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        assert isinstance(spec, dict) and "attack" in spec and "expect" in spec, path
        cases.append(Case(path.stem, spec))
    return cases


def substitute(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def base_manifest(keys: Keys) -> dict[str, Any]:
    """What fieldtrace's writer puts in a manifest, for one device and two steps."""

    def art(path: str) -> dict[str, Any]:
        data = STANDARD[path]
        return {
            "path": path,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "truncated": False,
            "scrubbed": {},
        }

    def step(step_id: str, collector: str, path: str) -> dict[str, Any]:
        return {
            "device": "local",
            "id": step_id,
            "collector": collector,
            "options": {},
            "status": "ok",
            "error": None,
            "started": "2024-01-05T10:15:00Z",
            "finished": "2024-01-05T10:15:01Z",
            "seconds": 0.4,
            "facts": {},
            "artifacts": [art(path)],
        }

    return {
        "format": "fieldtrace.bundle/1",
        "bundle_id": "5f3c2a1b9d8e4f00a1b2c3d4e5f60718",
        "agent": {"name": "fieldtrace", "version": "0.1.0", "host": "gw-host"},
        "site": {
            "company": "ACME Telecom",
            "contract": "TS-2024-117",
            "contact_email": "noc@acme.example",
            "slug": SLUG,
        },
        "job": {
            "id": "job-1",
            "trigger": "cli",
            "requested_by": "tech@acme",
            "ticket": None,
            "profile": "default",
            "devices": ["local"],
            "created": "2024-01-05T10:15:00Z",
            "started": "2024-01-05T10:15:00Z",
            "finished": "2024-01-05T10:15:02Z",
            "interrupted": False,
            "subject": "",
            "description": "",
        },
        "kb": {},
        "devices": [{"name": "local", "type": "linux-host", "address": "localhost"}],
        "steps": [
            step("hello", "local.command", "local/hello/output.txt"),
            step("conf", "local.file", "local/conf/files/etc/app.conf"),
        ],
        "attachments": [],
        "summary": {"steps": 2, "ok": 2},
        "signer": fingerprint(keys.site),
    }


def _set(doc: Any, dotted: str, value: Any, delete: bool = False) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    last: Any = int(parts[-1]) if isinstance(doc, list) else parts[-1]
    if delete:
        del doc[last]
    else:
        doc[last] = value


class _Stream:
    """The tar stream as pieces: plain bytes, or a chunk repeated (a bomb costs one frame)."""

    def __init__(self) -> None:
        self.pieces: list[tuple[bytes, int]] = []
        self.size = 0

    def add(self, data: bytes, times: int = 1) -> None:
        if data:
            self.pieces.append((data, times))
            self.size += len(data) * times

    def zeros(self, n: int, byte: bytes = b"\0") -> None:
        self.add(byte * MIB, n // MIB)
        self.add(byte * (n % MIB))

    def pad(self) -> None:
        self.add(bytes(-self.size % tarfile.BLOCKSIZE))

    def compress(self, window_log: int | None) -> bytes:
        import zstandard

        if window_log:  # one streaming frame that declares a huge window
            params = zstandard.ZstdCompressionParameters.from_level(3, window_log=window_log)
            obj = zstandard.ZstdCompressor(compression_params=params).compressobj()
            out = b"".join(obj.compress(d * n) for d, n in self.pieces)
            return out + obj.flush()
        cctx = zstandard.ZstdCompressor(level=3)
        frames = []
        buf = bytearray()
        for data, times in self.pieces:
            if times == 1:
                buf += data
                continue
            if buf:
                frames.append(cctx.compress(bytes(buf)))
                buf.clear()
            frames.append(cctx.compress(data) * times)  # concatenated frames: one stream
        if buf:
            frames.append(cctx.compress(bytes(buf)))
        return b"".join(frames)


def _header(ti: tarfile.TarInfo) -> bytes:
    fmt = tarfile.GNU_FORMAT if ti.type in (b"L", b"K", b"S") else tarfile.PAX_FORMAT
    return ti.tobuf(fmt, "utf-8", "surrogateescape")


def build(case: Case, keys: Keys) -> bytes:
    """The encrypted bundle a case describes."""
    import pyrage

    spec = case.spec
    members = spec.get("members") or [{"std": "head"}, {"std": "artifacts"}]
    manifest = base_manifest(keys)
    for m in members:  # files that are to be listed in the manifest
        if m.get("listed"):
            data = _data_of(m)
            path = m.get("listed_as") or m["name"]
            manifest["steps"][0]["artifacts"].append(
                {
                    "path": path,
                    "size": m.get("declared_size", len(data) if data is not None else 0),
                    "sha256": hashlib.sha256(data or b"").hexdigest(),
                    "truncated": False,
                    "scrubbed": {},
                }
            )
    edits = spec.get("manifest") or {}
    for dotted, value in (edits.get("set") or {}).items():
        _set(manifest, dotted, copy.deepcopy(value))
    for dotted in edits.get("delete") or []:
        _set(manifest, dotted, None, delete=True)
    if edits.get("extra_objects"):
        manifest["padding"] = [{} for _ in range(int(edits["extra_objects"]))]
    if "raw" in edits:
        manifest_bytes = str(edits["raw"]).encode("utf-8", "surrogateescape")
    elif edits.get("compact"):
        manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
    else:
        manifest_bytes = json.dumps(manifest, indent=2, ensure_ascii=False).encode() + b"\n"
    sign = spec.get("sign") or {}
    key = keys.other if sign.get("key") == "other" else keys.site
    signed = b"something else" if sign.get("over") == "other-bytes" else manifest_bytes
    signature = base64.b64encode(key.sign(signed)) + b"\n"
    signer_pub = str(sign.get("signer_pub", public_line(key) + "\n")).encode()
    std = {"manifest.json": manifest_bytes, "manifest.sig": signature, "signer.pub": signer_pub}

    stream = _Stream()
    for m in members:
        which = m.get("std")
        if which in ("head", "topdir"):
            ti = tarfile.TarInfo(TOP)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            stream.add(_header(ti))
        if which == "head":
            for name, data in std.items():
                _file(stream, f"{TOP}/{name}", data)
        elif which in std:
            _file(stream, f"{TOP}/{which}", std[which])
        elif which == "artifacts":
            for rel, data in STANDARD.items():
                _file(stream, f"{TOP}/{rel}", data)
        elif m.get("many_dirs"):
            for i in range(int(m["many_dirs"])):
                ti = tarfile.TarInfo(f"{TOP}/local/d{i:05d}")
                ti.type = tarfile.DIRTYPE
                stream.add(_header(ti))
        elif which is None:
            _custom(stream, m)
    stream.add(bytes(2 * tarfile.BLOCKSIZE))
    stream.add(bytes(-stream.size % tarfile.RECORDSIZE))
    tail = spec.get("tail") or {}
    if tail.get("zeros"):
        stream.zeros(int(tail["zeros"]))
    if tail.get("garbage"):
        stream.add(str(tail["garbage"]).encode())
    plain = stream.compress((spec.get("zstd") or {}).get("window_log"))

    age = spec.get("age") or {}
    if age.get("plain"):
        return plain
    if age.get("armor"):
        return b"-----BEGIN AGE ENCRYPTED FILE-----\n" + base64.b64encode(plain[:48]) + b"\n"
    to = keys.stranger if age.get("to") == "other" else keys.vendor
    out: bytes = pyrage.encrypt(plain, [to.to_public()])
    if age.get("header_junk"):
        first, rest = out.split(b"\n", 1)
        junk = (
            b"-> junk-stanza AAAA\n"
            + b"QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB\n"
        )
        out = first + b"\n" + junk * (int(age["header_junk"]) // len(junk) + 1) + rest
    if age.get("truncate"):
        out = out[: -int(age["truncate"])]
    return out


def _data_of(m: dict[str, Any]) -> bytes | None:
    if "data" in m:
        return str(m["data"]).encode("utf-8", "surrogateescape")
    if "size" in m:
        return str(m.get("fill", "A")).encode() * int(m["size"])
    return None


def _file(stream: _Stream, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 1704449700
    stream.add(_header(ti))
    stream.add(data)
    stream.pad()


def _custom(stream: _Stream, m: dict[str, Any]) -> None:
    name = m["raw"] if "raw" in m else f"{TOP}/{m['name']}"
    kind = m.get("type", "file")
    ti = tarfile.TarInfo(name)
    ti.type = _TYPES.get(kind) or str(kind).encode()
    mode = m.get("mode", 0o755 if kind == "dir" else 0o644)
    ti.mode = int(mode, 0) if isinstance(mode, str) else int(mode)  # YAML reads 0o666 as text
    ti.uid, ti.gid = int(m.get("uid", 0)), int(m.get("gid", 0))
    ti.mtime = 1704449700
    ti.linkname = str(m.get("target", ""))
    ti.devmajor, ti.devminor = int(m.get("devmajor", 0)), int(m.get("devminor", 0))
    if m.get("pax"):
        ti.pax_headers = {str(k): str(v) for k, v in m["pax"].items()}
    data = _data_of(m)
    zeros = int(m.get("zeros", 0))
    ti.size = zeros or (len(data) if data is not None else 0)
    if kind in ("xhd", "longname", "longlink") and not m.get("pax"):
        # a bare extension header (its data follows), then a member for it to describe
        stream.add(_header(ti))
        if zeros:
            stream.zeros(zeros, b"1")
        elif data:
            stream.add(data)
        stream.pad()
        after = tarfile.TarInfo(f"{TOP}/after-extension")
        after.size = 0
        stream.add(_header(after))
        return
    stream.add(_header(ti))
    if zeros:
        stream.zeros(zeros)
    elif data:
        stream.add(data)
    stream.pad()
