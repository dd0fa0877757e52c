"""``fieldtrace devices list|trust``: the inventory, reachability, SSH host key enrolment."""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from agent.settings import Device


def register(sub: Any) -> None:
    p = sub.add_parser("devices", help="list devices, probe them, trust SSH host keys")
    dsub = p.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    ls = dsub.add_parser(
        "list",
        help="the configured devices (with --probe: can we reach and log in?)",
        description="List the devices of the site config. With --probe, connect to each "
        "(SSH: TCP, host key, authentication; SNMP: one GET) and say what works. Exit status "
        "1 when a probe failed.",
    )
    ls.add_argument("--probe", action="store_true", help="try SSH and SNMP on every device")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(handler=run_list)
    tr = dsub.add_parser(
        "trust",
        help="record a device's SSH host key in the site's known_hosts",
        description="Connect to the device without logging in, show its SSH host key type and "
        "SHA256 fingerprint, and record it in $FIELDTRACE_HOME/known_hosts after you confirm. "
        "Check the fingerprint against the device's console (ssh-keygen -lf "
        "/etc/ssh/ssh_host_ed25519_key.pub, or the device's 'show ssh' command) first.",
    )
    tr.add_argument("name", metavar="NAME", help="the device (as in 'fieldtrace devices list')")
    tr.add_argument(
        "--yes", action="store_true", help="do not ask (for scripts); required without a terminal"
    )
    tr.add_argument(
        "--replace",
        action="store_true",
        help="with --yes: also replace a key that CHANGED (otherwise refused without a terminal)",
    )
    tr.add_argument(
        "--fingerprint",
        metavar="SHA256:...",
        help="the key you expect (as 'ssh-keygen -lf' prints it): record it only if the "
        "device offers exactly this key, without asking (a script's --yes, pinned); a key "
        "that CHANGED still needs --replace",
    )
    tr.set_defaults(handler=run_trust)


def _transports(d: Device) -> list[str]:
    out = []
    if d.is_local:
        out.append("local")
    if d.ssh is not None:
        out.append("ssh")
    if d.snmp is not None:
        out.append("snmp")
    return out


def _probe(device: Device, home: Path) -> dict[str, str]:
    """One line per transport: "ok ..." or what went wrong."""
    from agent.errors import FieldtraceError
    from agent.sessions import DeviceSessions
    from collectors.base import StepError

    result: dict[str, str] = {}
    sessions = DeviceSessions(device, home)
    try:
        if device.ssh is not None:
            try:
                sessions.get("ssh")
                result["ssh"] = f"ok: logged in as {device.ssh.username}"
            except (StepError, FieldtraceError) as exc:
                result["ssh"] = f"failed: {exc}"
        if device.snmp is not None:
            try:
                snmp = sessions.get("snmp")
                probe = getattr(snmp, "probe", None)
                if probe is None:
                    result["snmp"] = "not available in this version of fieldtrace"
                else:
                    result["snmp"] = f"ok: {probe()}"
            except ImportError:
                result["snmp"] = "not available in this version of fieldtrace"
            except (StepError, FieldtraceError) as exc:
                result["snmp"] = f"failed: {exc}"
    finally:
        sessions.close()
    return result


def run_list(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from agent.cli.common import emit_json, settings
    from agent.errors import EXIT_OK, EXIT_PARTIAL
    from agent.keys import home

    loaded = settings(args)
    devices = loaded.settings.inventory()
    rows: list[dict[str, Any]] = [
        {
            "name": d.name,
            "type": d.type,
            "address": d.address,
            "transports": _transports(d),
            **({"ssh_port": d.ssh.port, "ssh_user": d.ssh.username} if d.ssh else {}),
            **({"ssh_jump": d.ssh.jump} if d.ssh and d.ssh.jump else {}),
        }
        for d in devices
    ]
    failed = False
    if args.probe:
        base = home()
        workers = max(1, min(loaded.settings.collect.max_parallel_devices, len(devices)))
        with ThreadPoolExecutor(workers) as pool:
            probes = list(pool.map(lambda d: _probe(d, base), devices))
        for row, probe in zip(rows, probes, strict=True):
            row["probe"] = probe
            failed |= any(not v.startswith("ok") for v in probe.values())
    if args.json:
        emit_json({"config": loaded.source, "devices": rows})
    else:
        print(f"{len(rows)} device(s) in {loaded.source}")
        for r in rows:
            port = f":{r['ssh_port']}" if "ssh_port" in r else ""
            jump = f" via {r['ssh_jump']}" if "ssh_jump" in r else ""
            print(
                f"  {r['name']:<16} {r['type']:<16} {r['address']}{port}{jump}  "
                f"[{', '.join(r['transports']) or '-'}]"
            )
            for kind, text in r.get("probe", {}).items():
                print(f"      {kind}: {text}")
    return EXIT_PARTIAL if failed else EXIT_OK


_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")


def _expected_fingerprint(value: str | None) -> str | None:
    from agent.errors import ConfigError

    if value is None:
        return None
    if not _FINGERPRINT.match(value.strip()):
        raise ConfigError(
            f"--fingerprint {value!r} is not a SHA256 key fingerprint; expected 'SHA256:' and "
            "43 base64 characters, as 'ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub' prints "
            "it on the device"
        )
    return value.strip().rstrip("=")


def run_trust(args: argparse.Namespace) -> int:
    from agent.cli.common import settings
    from agent.errors import ConfigError, RuntimeFailure
    from agent.keys import home
    from agent.ssh_session import fetch_host_key, fingerprint, known_keys, record_host_key
    from collectors.base import StepError

    expected = _expected_fingerprint(args.fingerprint)  # a usage error before connecting
    loaded = settings(args)
    by_name = {d.name: d for d in loaded.settings.inventory()}
    device = by_name.get(args.name)
    if device is None:
        raise ConfigError(
            f"unknown device {args.name!r} (configured: {', '.join(sorted(by_name))}); see "
            "'fieldtrace devices list'"
        )
    if device.ssh is None:
        raise ConfigError(f"device {device.name} has no ssh settings in {loaded.source}")
    base = home()
    port = device.ssh.port
    try:
        key = fetch_host_key(device, base)
    except StepError as exc:
        raise RuntimeFailure(f"{exc}; nothing was recorded") from None
    fp = fingerprint(key)
    where = f"{device.address}:{port}"
    known = known_keys(base, device.address, port)
    print(f"{device.name} ({where}) offers host key {key.get_name()} {fp}")
    if expected is not None and fp != expected:
        raise ConfigError(
            f"{device.name}: the device offers {key.get_name()} {fp}, not the expected "
            f"{expected}; nothing was recorded. Someone could be intercepting the connection, "
            "or the expected fingerprint is not this device's: check it on the device's console"
        )
    recorded = known.get(key.get_name())
    if recorded is not None and recorded == key:
        print(f"{device.name}: this key is already trusted; nothing to do")
        return 0
    changed = bool(known)
    if changed:
        old = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in known.values())
        print(
            "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
            f"WARNING: THE SSH HOST KEY OF {device.name} HAS CHANGED!\n"
            f"  recorded: {old}\n"
            f"  offered:  {key.get_name()} {fp}\n"
            "Someone could be intercepting the connection, or the device was replaced or\n"
            "re-installed. Replace the recorded key only if you have checked the new\n"
            "fingerprint on the device's console.\n"
            "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@",
            file=sys.stderr,
        )
    if args.yes or expected is not None:
        if changed and not args.replace:
            raise ConfigError(
                f"{device.name}: the host key CHANGED; nothing was recorded. After checking the "
                f"new fingerprint, run 'fieldtrace devices trust {device.name} --yes --replace' "
                "(or without --yes on a terminal)"
            )
    elif not sys.stdin.isatty():
        raise ConfigError(
            f"{device.name}: not a terminal, so cannot ask for confirmation; nothing was "
            f"recorded. Check the fingerprint, then run 'fieldtrace devices trust {device.name} "
            "--yes'"
        )
    else:
        want = "replace" if changed else "yes"
        answer = input(
            f"Type '{want}' to {'REPLACE the recorded key' if changed else 'trust this key'}: "
        )
        if answer.strip().lower() != want:
            print(f"{device.name}: not confirmed; nothing was recorded")
            return 1
    path = record_host_key(base, device.address, port, key)
    verb = "replaced the key of" if changed else "trusted"
    print(f"{verb} {device.name} ({where}): {key.get_name()} {fp}; recorded in {path}")
    return 0
