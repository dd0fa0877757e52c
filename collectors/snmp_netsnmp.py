r"""Walks through net-snmp's ``snmpbulkwalk``, the way ``pcap.capture`` drives tcpdump.

Why: a walk's time on a fast agent is the client's CPU, and pysnmp decodes each response
with pyasn1 in pure Python: 10 400 rows of snmpd's own table take ~1.1 s with the pysnmp
engine against 0.13 s for ``snmpbulkwalk`` (tests/bench/bench_snmp_walk.py). net-snmp's C
client, driven as a child process, walks at its speed; what is left here is reading its
output.

How:
* Credentials never go on the command line (``ps`` shows argv to every user): they are
  written to a ``snmp.conf`` (0600) in a private directory (0700, in RAM under /dev/shm when
  it exists) named by ``SNMPCONFPATH``, which also keeps the user's and the system's
  snmp.conf out. The file is deleted as soon as the child writes its first row (it reads
  its configuration, twice, before sending), the directory when the walk ends; directories left by a
  process that was killed are swept by the next walk. Secrets net-snmp's config syntax
  cannot carry (control characters, ``"``, ``\``) make the session use pysnmp instead
  (``usable()``).
* Output options: ``-On`` numeric OIDs, ``-Ox`` every octet string in hex (so no value text
  can be mistaken for a row: a row starts ``.1.3... = ``, anything else continues the hex of
  the row before), ``-Oe`` numeric enums; no MIBs are loaded. The rows are parsed into
  small value classes named like pysnmp's (``OctetString``, ``Integer``, ``TimeTicks`` ...),
  which ``snmp_format.render`` turns into the same snmpwalk text and JSON as the pysnmp
  engine.
* ``stdbuf -oL`` makes the child write each row as it gets it, so a walk stopped at its
  deadline (the child is killed) keeps every row the agent sent.
* Semantics match the pysnmp engine: rows strictly under the requested OID, none of
  snmpbulkwalk's extras (its GET of the OID itself when the subtree is empty, the
  end-of-MIB row).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collectors.base import StepFailed, StepTimeout
from collectors.snmp_format import Oid, dotted

if TYPE_CHECKING:
    from collectors.snmp import SnmpCredentials

TOOL = "snmpbulkwalk"
_AUTH = {
    "MD5": "MD5",
    "SHA": "SHA",
    "SHA224": "SHA-224",
    "SHA256": "SHA-256",
    "SHA384": "SHA-384",
    "SHA512": "SHA-512",
}
# net-snmp's AES-192/AES-256 localize keys as draft-blumenthal (like pysnmp's Blumenthal
# protocols, our AES192/AES256); Cisco's variants have "C"; net-snmp 5.9 has no 3DES
_PRIV = {
    "DES": "DES",
    "AES": "AES",
    "AES192": "AES-192",
    "AES256": "AES-256",
    "AES192C": "AES-192-C",
    "AES256C": "AES-256-C",
}
_SAFE_SECRET = re.compile(r'^[^\x00-\x1f\x7f"\\]+$')
_ROW = re.compile(rb"^(\.[0-9.]+) = (.*)$")
_READ = 256 * 1024


# --- values, named like pysnmp's so snmp_format.render takes either ------------------------


class Integer(int):
    pass


class Counter32(int):
    pass


class Gauge32(int):
    pass


class Unsigned32(int):
    pass


class Counter64(int):
    pass


class TimeTicks(int):
    pass


class OctetString(bytes):
    def asOctets(self) -> bytes:
        return bytes(self)


class IpAddress(bytes):
    pass


class Opaque(bytes):
    pass


class ObjectIdentifier(tuple[int, ...]):
    pass


class Null:
    pass


class NoSuchObject:
    pass


class NoSuchInstance:
    pass


class EndOfMibView:
    pass


class Unparsed(str):
    """A value form this reader does not know: kept as net-snmp printed it."""

    def prettyPrint(self) -> str:
        return str(self)


_INTS: dict[bytes, type[int]] = {
    b"INTEGER": Integer,
    b"Counter32": Counter32,
    b"Gauge32": Gauge32,
    b"UInteger32": Unsigned32,
    b"Counter64": Counter64,
}
_WORDS: dict[bytes, Any] = {
    b"NULL": Null(),
    b"No Such Object available on this agent at this OID": NoSuchObject(),
    b"No Such Instance currently exists at this OID": NoSuchInstance(),
    b"No more variables left in this MIB View (It is past the end of the MIB tree)": (
        EndOfMibView()
    ),
}


def _oid(text: bytes) -> Oid:
    return tuple(map(int, text[1:].split(b".")))


def parse_value(text: bytes) -> Any:
    """One value as ``snmpbulkwalk -On -Ox -Oe`` prints it (continuation lines joined)."""
    label, sep, rest = text.partition(b": ")
    if not sep:
        if text == b'""':
            return OctetString(b"")
        word = _WORDS.get(text.rstrip())
        return word if word is not None else Unparsed(text.decode("utf-8", "replace"))
    if label == b"Hex-STRING":
        return OctetString(bytes.fromhex(rest.decode("ascii")))
    kind = _INTS.get(label)
    if kind is not None:
        return kind(int(rest))
    if label == b"Timeticks":  # "(12345) 0:02:03.45"
        return TimeTicks(int(rest[1 : rest.index(b")")]))
    if label == b"OID":
        return ObjectIdentifier(_oid(rest.strip()))
    if label == b"IpAddress":
        return IpAddress(bytes(int(x) for x in rest.split(b".")))
    if label == b"STRING":  # not printed with -Ox; kept for safety (one line)
        inner = rest.strip()
        if inner[:1] == b'"' and inner[-1:] == b'"':
            inner = inner[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
        return OctetString(inner)
    if label.upper() == b"OPAQUE":
        # net-snmp's float/double in an Opaque, printed with %f (6 decimals): rewrapped
        kind_, _, number = rest.partition(b": ")
        if kind_ == b"Float":
            return Opaque(b"\x9f\x78\x04" + struct.pack(">f", float(number)))
        if kind_ == b"Double":
            return Opaque(b"\x9f\x79\x08" + struct.pack(">d", float(number)))
        return Opaque(bytes.fromhex(rest.decode("ascii")))
    return Unparsed(text.decode("utf-8", "replace"))


def parse_rows(data: bytes) -> list[tuple[Oid, Any]]:
    """Complete rows of ``snmpbulkwalk -On -Ox`` output (``data`` ends after a row)."""
    rows: list[tuple[Oid, Any]] = []
    oid: bytes | None = None
    parts: list[bytes] = []
    for line in data.split(b"\n"):
        m = _ROW.match(line)
        if m is None:
            if oid is not None and line:
                parts.append(line)  # a Hex-STRING's next line
            continue
        if oid is not None:
            rows.append((_oid(oid), parse_value(b" ".join(parts))))
        oid, parts = m.group(1), [m.group(2)]
    if oid is not None:
        rows.append((_oid(oid), parse_value(b" ".join(parts))))
    return rows


# --- running the tool ---------------------------------------------------------------------


def usable(cred: SnmpCredentials) -> str | None:
    """None when a walk with these credentials can go through snmpbulkwalk, else why not."""
    if shutil.which(TOOL) is None:
        return f"{TOOL} is not installed (Debian package snmp)"
    if cred.version == "1":
        return "SNMPv1 walks use GETNEXT (pysnmp)"
    if cred.priv_protocol is not None and cred.priv_protocol not in _PRIV:
        return f"net-snmp has no {cred.priv_protocol} privacy protocol"
    for secret in (cred.community, cred.username, cred.auth_key, cred.priv_key, cred.context):
        if secret and not _SAFE_SECRET.match(secret):
            return "a credential has characters snmp.conf cannot carry"
    return None


def private_base() -> Path:
    """Where walk configs go: RAM (/dev/shm) when there is one, else the temp directory."""
    shm = Path("/dev/shm")
    return (
        shm if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else Path(tempfile.gettempdir())
    )


def _sweep(base: Path) -> None:
    """Remove the config directories of walks whose process is gone (killed mid-walk)."""
    for entry in base.glob("ft-snmp-*-*"):
        pid = entry.name.split("-")[2]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        shutil.rmtree(entry, ignore_errors=True)


def _quote(value: str) -> str:
    return f'"{value}"'


def _config(cred: SnmpCredentials, state: Path) -> str:
    lines = [f"persistentDir {state}", "mibs :"]
    if cred.version == "2c":
        lines += ["defVersion 2c", f"defCommunity {_quote(cred.community or '')}"]
    else:
        level = "authPriv" if cred.priv_protocol else "authNoPriv" if cred.auth_protocol else None
        lines += [
            "defVersion 3",
            f"defSecurityName {_quote(cred.username or '')}",
            f"defSecurityLevel {level or 'noAuthNoPriv'}",
        ]
        if cred.auth_protocol:
            lines += [
                f"defAuthType {_AUTH[cred.auth_protocol]}",
                f"defAuthPassphrase {_quote(cred.auth_key or '')}",
            ]
        if cred.priv_protocol:
            lines += [
                f"defPrivType {_PRIV[cred.priv_protocol]}",
                f"defPrivPassphrase {_quote(cred.priv_key or '')}",
            ]
        if cred.context:
            lines.append(f"defContext {_quote(cred.context)}")
    return "\n".join(lines) + "\n"


class NoAnswer(StepFailed):
    """snmpbulkwalk timed out (the session turns it into its own no-answer error)."""


def _failure(stderr: str, where: str, cred: SnmpCredentials) -> StepFailed:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    text = "; ".join(ln.removeprefix(f"{TOOL}: ") for ln in lines[-3:]) or "no message"
    if any(ln.startswith("Timeout: No Response") for ln in lines):
        return NoAnswer(text)
    if "not increasing" in text:
        return StepFailed(f"{where} returned OIDs out of order (agent bug): {text}")
    if cred.version == "3" and any(
        w in text for w in ("Authentication failure", "Unknown user", "ecryption", "security")
    ):
        return StepFailed(
            f"{where} refused the request ({cred.describe}): {text}; "
            "check the v3 username, auth/priv protocols and keys"
        )
    return StepFailed(f"{where}: {TOOL} failed: {text}")


def walk(
    target: str,
    where: str,
    cred: SnmpCredentials,
    oid: Oid,
    *,
    max_repetitions: int,
    timeout: float,
    retries: int,
    deadline: float | None,
    cancel: threading.Event | None,
    closed: threading.Event,
) -> Iterator[list[tuple[Oid, Any]]]:
    """The rows under ``oid``, a list per read of the child's output (see the module doc).

    Raises NoAnswer, StepFailed (what snmpbulkwalk said) or StepTimeout (deadline, cancel);
    rows yielded before stay valid.
    """
    exe = shutil.which(TOOL)
    if exe is None:
        raise StepFailed(f"{TOOL} is not installed (Debian package snmp)")
    argv = [exe, "-On", "-Ox", "-Oe", f"-Cr{max_repetitions}"]
    argv += ["-t", f"{timeout:g}", "-r", str(retries), target, dotted(oid)]
    stdbuf = shutil.which("stdbuf")
    if stdbuf:
        argv = [stdbuf, "-oL", *argv]
    n = len(oid)
    base = private_base()
    _sweep(base)
    with tempfile.TemporaryDirectory(prefix=f"ft-snmp-{os.getpid()}-", dir=base) as tmp:  # 0700
        conf = Path(tmp) / "snmp.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w") as fh:
            fh.write(_config(cred, Path(tmp) / "state"))
        (Path(tmp) / "state" / "cert_indexes").mkdir(parents=True)  # else it says it made them
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SNMPCONFPATH": tmp,
            "SNMP_PERSISTENT_DIR": str(Path(tmp) / "state"),
            "HOME": tmp,
            "MIBS": "",
            "LC_ALL": "C",
        }
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        pending, stderr = b"", b""
        last: Oid = oid
        open_fds = {out_fd, err_fd}
        stopped: StepTimeout | None = None
        try:
            while open_fds:
                if closed.is_set():
                    raise StepFailed("the SNMP session was closed")
                if stopped is None:
                    if cancel is not None and cancel.is_set():
                        stopped = StepTimeout("cancelled")
                    elif deadline is not None and time.monotonic() >= deadline:
                        stopped = StepTimeout(f"the step's deadline passed while walking {where}")
                    if stopped is not None:  # stop it, then take the rows already written
                        os.killpg(proc.pid, signal.SIGKILL)
                ready, _, _ = select.select(list(open_fds), [], [], 0.05)
                if out_fd in ready or proc.poll() is not None:
                    conf.unlink(missing_ok=True)  # read by now: the secrets go at once
                for fd_ in ready:
                    chunk = os.read(fd_, _READ)
                    if not chunk:
                        open_fds.discard(fd_)
                        if fd_ == out_fd and pending:
                            pending += b"\n"  # the last row is complete at EOF
                    elif fd_ == err_fd:
                        stderr = (stderr + chunk)[-8192:]
                        continue
                    else:
                        pending += chunk
                    if fd_ != out_fd:
                        continue
                    # rows end where the next row starts: keep the last one until then
                    cut = pending.rfind(b"\n.") if chunk else len(pending)
                    if cut <= 0:
                        continue
                    data, pending = pending[:cut], pending[cut + 1 :] if chunk else b""
                    batch = []
                    for key, value in parse_rows(data):
                        if len(key) <= n or key[:n] != oid or type(value) is EndOfMibView:
                            continue  # the GET of the OID itself, end of MIB: not the walk's
                        if key <= last:
                            raise StepFailed(
                                f"{where} returned OID {dotted(key)} not after {dotted(last)} "
                                "(agent bug); stopped the walk there"
                            )
                        batch.append((key, value))
                        last = key
                    if batch:
                        yield batch
            proc.wait()
            if stopped is not None:
                raise stopped
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        if proc.returncode != 0:
            raise _failure(stderr.decode("utf-8", "replace"), where, cred)
