"""Read every live ruleset of a host through a ``run(argv) -> (rc, stdout, stderr)`` callable.

The callable hides where the host is: :func:`local_runner` runs the program here (argv, no
shell, timeout, capped output); :func:`ssh_runner` runs it over an open SSH session. A
missing program is exit status 127 either way (a shell's "command not found").

What is read ("auto"): ``nft -j list ruleset``; ``iptables-nft-save`` / ``ip6tables-nft-save``
(or ``iptables-save`` when the suffixed tools are absent, the variant taken from its header);
and, when the kernel has legacy x_tables tables (``/proc/net/ip_tables_names`` is not empty),
``iptables-legacy-save`` / ``ip6tables-legacy-save``. Tables iptables-nft manages are also
visible to nft; they are taken from iptables-save (complete) and skipped in nft's JSON (where
xt extensions are opaque), so nothing is counted twice.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from typing import Any, Literal

from collectors.firewall.iptables import parse_save
from collectors.firewall.model import FirewallError, FirewallPermissionError, Ruleset
from collectors.firewall.nft import parse_nft_json

log = logging.getLogger(__name__)

Run = Callable[[list[str]], tuple[int, bytes, bytes]]
Kind = Literal["auto", "nftables", "iptables"]
MISSING = 127
MAX_OUTPUT = 64 * 1024**2
_PERM = re.compile(r"permission denied|operation not permitted|you must be root", re.I)
_INCOMPATIBLE = re.compile(r"^# Table `(\w+)' is incompatible", re.M)


def local_runner(timeout: float = 30.0) -> Run:
    """Run programs on this host: argv, no shell, a timeout, capped output.

    Programs are looked up on $PATH (the sbin directories are searched when PATH is unset).
    """
    path = os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin"

    def run(argv: list[str]) -> tuple[int, bytes, bytes]:
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                env={"LC_ALL": "C", "PATH": path},
            )
        except FileNotFoundError:
            return MISSING, b"", f"{argv[0]}: not found".encode()
        except PermissionError:
            return 126, b"", f"{argv[0]}: permission denied".encode()
        except subprocess.TimeoutExpired:
            raise FirewallError(f"{shlex.join(argv)}: no answer after {timeout:g}s") from None
        return proc.returncode, proc.stdout[:MAX_OUTPUT], proc.stderr[:65536]

    return run


def ssh_runner(session: Any, timeout: float = 30.0) -> Run:
    """Run programs over an open SshSession (``session.run(command, timeout=...)``)."""

    def run(argv: list[str]) -> tuple[int, bytes, bytes]:
        # PATH: root's sbin is not on a non-login PATH everywhere
        command = "PATH=/usr/sbin:/sbin:$PATH LC_ALL=C " + shlex.join(argv)
        res = session.run(command, timeout=timeout, max_bytes=MAX_OUTPUT)
        if res.timed_out or res.exit_status is None:
            raise FirewallError(f"{shlex.join(argv)}: no answer after {timeout:g}s over SSH")
        if res.truncated:
            raise FirewallError(f"{shlex.join(argv)}: output larger than {MAX_OUTPUT} bytes")
        return int(res.exit_status), bytes(res.stdout), bytes(res.stderr)

    return run


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _check(argv: list[str], rc: int, err: bytes, where: str) -> None:
    if rc == 0:
        return
    msg = _text(err).strip().splitlines()
    detail = msg[-1] if msg else f"exit status {rc}"
    if _PERM.search(_text(err)) or rc == 126:
        raise FirewallPermissionError(
            f"{where}: {shlex.join(argv)}: permission denied ({detail}); reading the firewall "
            "needs root or CAP_NET_ADMIN: run fieldtrace as root (or the SSH user as root)"
        )
    raise FirewallError(f"{where}: {shlex.join(argv)} failed: {detail}")


def read_ruleset(run: Run, kind: Kind = "auto", where: str = "this host") -> Ruleset:
    """Every live ruleset of the host; FirewallError when it cannot be read."""
    rs = Ruleset()
    found_tool = False
    managed: set[tuple[str, str]] = set()  # (family, table) shown by iptables-nft-save
    if kind in ("auto", "iptables"):
        for tool, family in (("iptables", "ip"), ("ip6tables", "ip6")):
            text, variant = _read_iptables_nft(run, tool, where)
            if variant is not None:
                found_tool = True
            if text is not None and variant == "nf_tables":
                incompatible = set(_INCOMPATIBLE.findall(text))
                tables = [t for t in parse_save(text, tool, family) if t.name not in incompatible]
                rs.tables.extend(tables)
                managed |= {(family, t.name) for t in tables}
                rs.raw[f"{tool}-save.txt"] = text
                rs.sources.append(f"{tool}-nft-save ({len(tables)} tables)")
            legacy = _read_legacy(run, tool, family, where, text if variant == "legacy" else None)
            if legacy is not None:
                found_tool = True
                tables = parse_save(legacy, f"{tool}-legacy", family)
                rs.tables.extend(tables)
                rs.raw[f"{tool}-legacy-save.txt"] = legacy
                rs.sources.append(f"{tool}-legacy-save ({len(tables)} tables)")
    if kind in ("auto", "nftables"):
        argv = ["nft", "-j", "list", "ruleset"]
        rc, out, err = run(argv)
        if rc == MISSING:
            if kind == "nftables":
                raise FirewallError(
                    f"{where}: nft is not installed; install nftables or set firewall_kind"
                )
        else:
            _check(argv, rc, err, where)
            found_tool = True
            text = _text(out)
            tables = parse_nft_json(text or '{"nftables": []}', skip=managed)
            rs.tables.extend(tables)
            rs.raw["nft-ruleset.json"] = text
            rs.sources.append(f"nft -j list ruleset ({len(tables)} tables)")
    if not found_tool:
        wanted = {"auto": "nft or iptables-save", "iptables": "iptables-save"}.get(kind, "nft")
        raise FirewallError(
            f"{where}: neither {wanted} is installed, so the firewall cannot be read; install "
            "nftables or iptables (or set firewall_kind)"
        )
    for family in ("ip", "ip6"):
        nft_filter = any((t.family, t.name) == (family, "filter") for t in rs.tables if t.is_nft)
        if nft_filter and not any(t.source.startswith("ip") for t in rs.tables):
            rs.notes.append(
                f"nft table {family} filter looks like iptables-nft's, but iptables-save "
                "is not installed: its xt extensions are opaque and give 'unknown'"
            )
    return rs


def _read_iptables_nft(run: Run, tool: str, where: str) -> tuple[str | None, str | None]:
    """(output, variant) of the host's nf_tables iptables-save; variant None: not installed."""
    for argv in ([f"{tool}-nft-save"], [f"{tool}-save"]):
        rc, out, err = run(argv)
        if rc == MISSING:
            continue
        _check(argv, rc, err, where)
        text = _text(out)
        head = re.search(r"^# Generated by \S+ v[\d.]+ \((\w+)\)", text, re.M)
        if argv[0].endswith("-nft-save"):
            return text, "nf_tables"
        variant = head.group(1) if head else ("legacy" if text.strip() else "nf_tables")
        return text, variant
    return None, None


def _read_legacy(run: Run, tool: str, family: str, where: str, fallback: str | None) -> str | None:
    """Legacy x_tables rules when the kernel has any legacy table, else None."""
    names = "/proc/net/ip_tables_names" if family == "ip" else "/proc/net/ip6_tables_names"
    rc, out, _ = run(["cat", names])
    if rc != 0 or not out.strip():
        return None
    argv = [f"{tool}-legacy-save"]
    rc, out, err = run(argv)
    if rc == MISSING:
        if fallback is not None:
            return fallback
        raise FirewallError(
            f"{where}: the kernel has legacy {tool} tables ({_text(out).strip() or names}) but "
            f"{tool}-legacy-save is not installed to read them"
        )
    _check(argv, rc, err, where)
    return _text(out)
