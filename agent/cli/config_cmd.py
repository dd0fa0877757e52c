"""``fieldtrace config check``: validate the site config, the KB and every reference."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="check the site config")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    chk = csub.add_parser("check", help="validate config, KB, devices, secrets and recipients")
    chk.add_argument("--json", action="store_true")
    chk.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    from agent.cli.common import emit_json, settings
    from agent.errors import ConfigError
    from agent.job import load_context
    from agent.runner import make_plan
    from agent.settings import SecretRef

    loaded = settings(args)
    s = loaded.settings
    kb = load_context(loaded)
    problems = []
    for i, dev in enumerate(s.inventory()):
        if s.collect.default_profile in kb.types[dev.type].profiles:
            make_plan(s, kb, [dev], s.collect.default_profile)
        for where, ref in _refs(dev):
            try:
                ref.resolve()
            except ConfigError as exc:
                problems.append(f"devices[{i}].{where}: {exc}")
    helpdesk_ok = True
    for key, value in s.helpdesk:  # the backend's secrets (password, auth_value, api_key ...)
        if isinstance(value, SecretRef):
            try:
                value.resolve()
            except ConfigError as exc:
                problems.append(f"helpdesk.{key}: {exc}")
                helpdesk_ok = False
    for j, ref in enumerate(s.scrub.values):
        try:
            ref.resolve()
        except ConfigError as exc:
            problems.append(f"scrub.values[{j}]: {exc}")
    backend = None
    try:  # what else building the backend checks (its secrets were reported above)
        from agent.delivery import make_backend
        from agent.keys import home

        if helpdesk_ok:
            backend = make_backend(s, home())
    except ConfigError as exc:
        problems.append(str(exc))
    checks: list[Any] = []
    try:
        from agent.health import resolve_checks

        checks = resolve_checks(s, kb, loaded.source)
    except ConfigError as exc:
        problems.append(str(exc).replace(f"{loaded.source}: ", ""))
    if problems:
        raise ConfigError("\n".join(f"{loaded.source}: {p}" for p in problems))
    summary: dict[str, Any] = {
        "config": loaded.source,
        "site": s.site.company or "(unset)",
        "devices": [d.name for d in s.inventory()],
        "kb_types": sorted(kb.types),
        "recipients": len(s.vendor.recipients),
        "helpdesk": s.helpdesk.backend,
        "health_checks": len(checks),
        "helpdesk_capabilities": [],
        "helpdesk_lacks": {},
    }
    if backend is not None:
        from uploader.base import CAPABILITIES, CAPABILITY_TEXT, capabilities

        caps = capabilities(backend)
        summary["helpdesk_capabilities"] = sorted(caps)
        summary["helpdesk_lacks"] = {c: CAPABILITY_TEXT[c] for c in CAPABILITIES if c not in caps}
    if args.json:
        emit_json({"ok": True, **summary})
    else:
        print(f"config ok: {summary['config']}")
        print(
            f"  site {summary['site']}; devices: {', '.join(summary['devices'])}; "
            f"{summary['recipients']} vendor recipient(s); helpdesk: {summary['helpdesk']}"
        )
        lacks = summary["helpdesk_lacks"]
        if lacks:
            print(f"  the {s.helpdesk.backend} backend cannot, so `fieldtrace serve` will not:")
            for what in lacks.values():
                print(f"    - {what}")
            if "read_notes" in lacks and s.vendor.request_keys:
                print("  note: [vendor] request_keys is set, but requests are read from ticket "
                      "notes, which this backend cannot read")  # fmt: skip
        if not s.vendor.recipients:
            print(
                "  note: no [vendor] recipients: bundles are encrypted to this site's "
                "identity only, so the vendor cannot open them"
            )
    return 0


def _refs(dev: Any) -> list[tuple[str, Any]]:
    out = []
    for section in ("ssh", "snmp"):
        obj = getattr(dev, section)
        if obj is None:
            continue
        for field in ("key", "key_passphrase", "password", "community", "auth_key", "priv_key"):
            ref = getattr(obj, field, None)
            if ref is not None:
                out.append((f"{section}.{field}", ref))
    return out
