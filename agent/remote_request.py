"""Signed collection requests that vendor engineers post as ticket notes.

A request is a text block an engineer pastes into a note on the site's ticket:

    -----BEGIN FIELDTRACE REQUEST-----
    site: acme-telecom
    ticket: 4711
    devices: gw1 gw2
    profile: sip-calls
    not_before: 2026-12-02T07:00:00Z
    not_after: 2026-12-03T07:00:00Z
    nonce: 6f1c0e3a9b2d4f5e8a7c6b5d4e3f2a1b
    requested_by: j.smith@vendor.example
    -----BEGIN SSH SIGNATURE-----
    ...
    -----END SSH SIGNATURE-----
    -----END FIELDTRACE REQUEST-----

The signed message is the field lines, each stripped of surrounding white space, joined
with ``\\n`` and ended with one (so a HelpDesk that turns ``\\n`` into ``\\r\\n`` or indents a
pasted block does not break it). The signature is OpenSSH's SSHSIG in namespace
``fieldtrace-request`` (``ssh-keygen -Y sign -n fieldtrace-request``); it is verified by
OpenSSH's own ``ssh-keygen -Y verify`` against ``[vendor] request_keys`` written as an
allowed_signers file, with ``-I requested_by`` (so a key listed with principals can only
sign for them, and ``cert-authority`` lines and validity dates work as OpenSSH defines
them) and ``-r`` for ``[vendor] revoked_keys``.

A request names a site, the ticket it is on, known devices, a KB profile of theirs, a
validity window and a nonce, and nothing else: any other field, a block over 8 KiB or
two blocks in one note is refused. Everything here treats the note as hostile: the
reasons given never echo the block's content.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

NAMESPACE = "fieldtrace-request"
BEGIN = "-----BEGIN FIELDTRACE REQUEST-----"
END = "-----END FIELDTRACE REQUEST-----"
SIG_BEGIN = "-----BEGIN SSH SIGNATURE-----"
SIG_END = "-----END SSH SIGNATURE-----"
MAX_BLOCK = 8 * 1024
MAX_VALIDITY = timedelta(days=7)
FIELDS = ("site", "ticket", "devices", "profile", "not_before", "not_after", "nonce",
          "requested_by")  # fmt: skip
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_REQUESTER = re.compile(r"^[A-Za-z0-9._%+@-]{1,128}$")
_TICKET = re.compile(r"^#?[0-9]{1,12}$")
_TIME = "%Y-%m-%dT%H:%M:%SZ"
_SSH_KEYGEN_TIMEOUT = 15.0


class RequestRefused(Exception):
    """A request that must not run; ``reason`` is safe to post on the ticket."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code  # short machine name: unsigned, bad-signature, expired, ...


@dataclass(frozen=True)
class Request:
    """The verified fields of a request."""

    site: str
    ticket: str
    devices: tuple[str, ...]
    profile: str
    not_before: datetime
    not_after: datetime
    nonce: str
    requested_by: str

    def as_dict(self) -> dict[str, object]:
        return {
            "site": self.site,
            "ticket": self.ticket,
            "devices": list(self.devices),
            "profile": self.profile,
            "not_before": self.not_before.strftime(_TIME),
            "not_after": self.not_after.strftime(_TIME),
            "nonce": self.nonce,
            "requested_by": self.requested_by,
        }


@dataclass(frozen=True)
class Block:
    """One request block found in a note, parsed but not yet verified."""

    fields: dict[str, str]
    message: bytes  # what the signature covers
    signature: str  # the armoured SSHSIG


def contains_request(text: str) -> bool:
    return BEGIN in text or SIG_BEGIN in text


def extract(text: str) -> Block:
    """The single request block in a note's text; ``RequestRefused`` for anything else."""
    starts = text.count(BEGIN)
    if starts == 0:
        if SIG_BEGIN in text:
            raise RequestRefused("an SSH signature without a request block", "malformed")
        raise RequestRefused("no request block in the note", "malformed")
    if starts > 1:
        raise RequestRefused("more than one request block in one note", "several-blocks")
    start = text.index(BEGIN)
    stop = text.find(END, start)
    if stop < 0:
        raise RequestRefused("the request block has no END line", "malformed")
    raw = text[start : stop + len(END)]
    if len(raw.encode()) > MAX_BLOCK:
        raise RequestRefused(f"the request block is over {MAX_BLOCK // 1024} KiB", "too-big")
    lines = [line.strip() for line in raw.splitlines()][1:-1]
    if SIG_BEGIN not in lines:
        raise RequestRefused("the request is not signed", "unsigned")
    cut = lines.index(SIG_BEGIN)
    body, sig = lines[:cut], lines[cut:]
    if sig.count(SIG_END) != 1 or sig[-1] != SIG_END or sig.count(SIG_BEGIN) != 1:
        raise RequestRefused("the signature block is malformed", "malformed")
    if any(not re.fullmatch(r"[A-Za-z0-9+/=]*", line) for line in sig[1:-1]):
        raise RequestRefused("the signature block is malformed", "malformed")
    fields: dict[str, str] = {}
    for line in body:
        if not line:
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or not re.fullmatch(r"[a-z_]{1,32}", key):
            raise RequestRefused("a line of the request is not 'field: value'", "malformed")
        if key not in FIELDS:
            raise RequestRefused(
                f"field {key!r} is not allowed (a request names only: {', '.join(FIELDS)})",
                "unknown-field",
            )
        if key in fields:
            raise RequestRefused(f"field {key!r} is given twice", "malformed")
        fields[key] = value.strip()
    missing = [f for f in FIELDS if f not in fields]
    if missing:
        raise RequestRefused(f"missing field(s): {', '.join(missing)}", "malformed")
    message = ("\n".join(line for line in body if line) + "\n").encode()
    return Block(fields, message, "\n".join(sig) + "\n")


def parse_fields(fields: dict[str, str]) -> Request:
    """Type-check the fields (after the signature verified)."""

    def bad(name: str, what: str) -> RequestRefused:
        return RequestRefused(f"field {name!r}: {what}", "malformed")

    if not _NAME.match(fields["site"]):
        raise bad("site", "not a site name")
    if not _TICKET.match(fields["ticket"]):
        raise bad("ticket", "not a ticket number")
    devices = tuple(d for d in re.split(r"[\s,]+", fields["devices"]) if d)
    if not devices or len(devices) > 64 or not all(_NAME.match(d) for d in devices):
        raise bad("devices", "expected 1-64 device names separated by spaces")
    if len(set(devices)) != len(devices):
        raise bad("devices", "a device is named twice")
    if not _NAME.match(fields["profile"]):
        raise bad("profile", "not a profile name")
    times = {}
    for name in ("not_before", "not_after"):
        try:
            times[name] = datetime.strptime(fields[name], _TIME).replace(tzinfo=UTC)
        except ValueError:
            raise bad(name, "expected a UTC time like 2026-12-02T07:00:00Z") from None
    if not _NONCE.match(fields["nonce"]):
        raise bad("nonce", "expected 16-64 letters, digits, '-' or '_'")
    if not _REQUESTER.match(fields["requested_by"]):
        raise bad("requested_by", "expected an e-mail address or a user name")
    return Request(
        site=fields["site"],
        ticket=fields["ticket"].lstrip("#"),
        devices=devices,
        profile=fields["profile"],
        not_before=times["not_before"],
        not_after=times["not_after"],
        nonce=fields["nonce"],
        requested_by=fields["requested_by"],
    )


# --- OpenSSH -----------------------------------------------------------------------------


def _ssh_keygen() -> str:
    path = shutil.which("ssh-keygen")
    if path is None:
        raise RuntimeError("ssh-keygen is not installed (Debian package openssh-client)")
    return path


def _run(argv: list[str], stdin: bytes, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C", "HOME": str(cwd)}
    return subprocess.run(
        argv, input=stdin, capture_output=True, timeout=_SSH_KEYGEN_TIMEOUT, cwd=cwd, env=env,
        check=False,
    )  # fmt: skip


_KEY_TYPE = re.compile(r"^(ssh-|ecdsa-|sk-)")


def allowed_signers(request_keys: Iterable[str]) -> str:
    """``[vendor] request_keys`` as an OpenSSH allowed_signers file.

    A bare public key line may sign for any ``requested_by`` (principal ``*``); an
    allowed_signers line (``principals [options] key``) is kept as it is.
    """
    lines = []
    for entry in request_keys:
        entry = entry.strip()
        if _KEY_TYPE.match(entry):
            lines.append(f'* namespaces="{NAMESPACE}" {entry}')
        else:
            lines.append(entry)
    return "\n".join(lines) + "\n"


def verify(block: Block, request_keys: Iterable[str], revoked: Path | None = None) -> str:
    """Check the signature with ``ssh-keygen -Y verify``; returns the signer's key line."""
    keys = list(request_keys)
    if not keys:
        raise RequestRefused("this site accepts no requests: [vendor] request_keys is empty",
                             "unknown-key")  # fmt: skip
    requester = block.fields.get("requested_by", "")
    if not _REQUESTER.match(requester):
        raise RequestRefused("field 'requested_by': expected an e-mail address or a user name",
                             "malformed")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ft-req-") as tmp:
        d = Path(tmp)
        (d / "allowed_signers").write_text(allowed_signers(keys))
        (d / "request.sig").write_text(block.signature)
        argv = [_ssh_keygen(), "-Y", "verify", "-f", str(d / "allowed_signers"), "-I",
                requester, "-n", NAMESPACE, "-s", str(d / "request.sig")]  # fmt: skip
        if revoked is not None:
            argv += ["-r", str(revoked)]
        try:
            res = _run(argv, block.message, d)
        except subprocess.TimeoutExpired:
            raise RequestRefused(
                "the signature could not be checked in time", "bad-signature"
            ) from None
        out = (res.stdout + res.stderr).decode(errors="replace")
        if res.returncode == 0:
            m = re.search(r'Good "[^"]*" signature for \S+ with (\S+) key (\S+)', out)
            return f"{m.group(1)} {m.group(2)}" if m else "verified"
        # tell "nobody we know" from "a known key, but the content was changed"
        check = _run(
            [_ssh_keygen(), "-Y", "check-novalidate", "-n", NAMESPACE, "-s",
             str(d / "request.sig")], block.message, d,
        )  # fmt: skip
        if check.returncode != 0:
            if b"namespace" in check.stderr.lower() or b"namespace" in check.stdout.lower():
                raise RequestRefused(
                    "the signature is not for fieldtrace requests", "bad-signature"
                )
            raise RequestRefused("the signature does not match the request (bad signature)",
                                 "bad-signature")  # fmt: skip
        # ssh-keygen says the same for an unknown and a revoked key
        listed = "[vendor] request_keys" + (", or revoked" if revoked is not None else "")
        raise RequestRefused(
            f"the request is signed by a key this site does not accept for {requester!r} "
            f"(not in {listed})",
            "unknown-key",
        )


def verify_note(
    text: str, request_keys: Iterable[str], now: datetime, revoked: Path | None = None
) -> tuple[Request, str]:
    """The one request in a note, verified: its fields and the signer's key.

    Order: the block's shape, the signature (before any field is believed), the fields'
    types, the validity window. Site, ticket, devices, profile, nonce and policy are the
    caller's to check (they need the site's inventory and ledger)."""
    block = extract(text)
    signer = verify(block, request_keys, revoked)
    req = parse_fields(block.fields)
    check_window(req, now)
    return req, signer


def check_window(req: Request, now: datetime) -> None:
    if req.not_after <= req.not_before:
        raise RequestRefused("not_after is not after not_before", "malformed")
    if req.not_after - req.not_before > MAX_VALIDITY:
        raise RequestRefused(f"the validity window is longer than {MAX_VALIDITY.days} days",
                             "malformed")  # fmt: skip
    if now < req.not_before:
        raise RequestRefused(f"not valid before {req.not_before.strftime(_TIME)}", "not-yet-valid")
    if now >= req.not_after:
        raise RequestRefused(f"expired at {req.not_after.strftime(_TIME)}", "expired")


# --- for the engineer: fieldtrace request create -----------------------------------------


def body_text(
    site: str,
    ticket: str,
    devices: Iterable[str],
    profile: str,
    valid: timedelta,
    requested_by: str,
    now: datetime | None = None,
    nonce: str | None = None,
) -> str:
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    values = {
        "site": site,
        "ticket": ticket.lstrip("#"),
        "devices": " ".join(devices),
        "profile": profile,
        "not_before": (now - timedelta(minutes=5)).strftime(_TIME),
        "not_after": (now + valid).strftime(_TIME),
        "nonce": nonce or secrets.token_hex(16),
        "requested_by": requested_by,
    }
    fields = {k: str(v) for k, v in values.items()}
    parse_fields(fields)  # the same checks the site makes
    return "".join(f"{k}: {fields[k]}\n" for k in FIELDS)


def sign(body: str, key: Path, namespace: str = NAMESPACE) -> str:
    """The whole request block: ``body`` signed with ``ssh-keygen -Y sign -f key``."""
    if not key.is_file():
        raise FileNotFoundError(f"{key}: key file not found")
    with tempfile.TemporaryDirectory(prefix="ft-req-") as tmp:
        d = Path(tmp)
        msg = d / "request"
        msg.write_text(body)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C", "HOME": str(Path.home())}
        if "SSH_AUTH_SOCK" in os.environ:
            env["SSH_AUTH_SOCK"] = os.environ["SSH_AUTH_SOCK"]
        res = subprocess.run(
            [_ssh_keygen(), "-Y", "sign", "-f", str(key), "-n", namespace, str(msg)],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=120, env=env, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(
                f"ssh-keygen -Y sign failed: {res.stderr.decode(errors='replace').strip()}"
            )
        sig = (d / "request.sig").read_text()
    return f"{BEGIN}\n{body}{sig}{END}\n"
