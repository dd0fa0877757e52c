"""``fieldtrace kb list|show|validate``: the knowledge base."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("kb", help="list, show and validate KB device types")
    ksub = p.add_subparsers(dest="kb_command", metavar="ACTION", required=True)
    ls = ksub.add_parser("list", help="device types and their profiles")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=run_list)
    show = ksub.add_parser("show", help="one device type: transport, remote access, profiles")
    show.add_argument("type")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run_show)
    val = ksub.add_parser("validate", help="validate KB files (default: the whole KB)")
    val.add_argument("files", nargs="*", metavar="FILE")
    val.add_argument("--json", action="store_true")
    val.set_defaults(handler=run_validate)


def _kb(args: argparse.Namespace) -> Any:
    from agent.cli.common import settings
    from agent.kb import load_kb

    loaded = settings(args)
    return load_kb(loaded.settings.kb.paths, loaded.source)


def run_list(args: argparse.Namespace) -> int:
    from agent.cli.common import emit_json

    kb = _kb(args)
    rows = [
        {"type": t.type, "title": t.title, "source": t.source, "profiles": sorted(t.profiles)}
        for t in sorted(kb.types.values(), key=lambda t: t.type)
    ]
    if args.json:
        emit_json(rows)
    else:
        for r in rows:
            print(f"{r['type']:<20} {r['title']}\n{'':<20} profiles: {', '.join(r['profiles'])}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from agent.cli.common import emit_json

    t = _kb(args).get(args.type)
    data = {
        "type": t.type,
        "title": t.title,
        "description": t.description,
        "version": t.version,
        "source": t.source,
        "sha256": t.sha256,
        "ssh": t.ssh.model_dump() if t.ssh else None,
        "remote_access": [r.model_dump() for r in t.remote_access],
        "read_only": t.read_only.describe(),
        "profiles": {
            name: {
                "title": p.title,
                "description": p.description,
                "steps": [
                    {
                        "id": s.id,
                        "collector": s.collector,
                        **({"background": True, "until": s.until} if s.background else {}),
                        **s.options_dict(),
                    }
                    for s in p.steps
                ],
            }
            for name, p in t.profiles.items()
        },
    }
    if args.json:
        emit_json(data)
        return 0
    print(f"{t.type}: {t.title}  (version {t.version or '-'}, {t.source})")
    if t.description:
        print(f"  {t.description.strip()}")
    for r in t.remote_access:
        print(f"  remote access: {r.port}/{r.protocol} {r.purpose}")
    _print_read_only(data["read_only"])
    for name, p in t.profiles.items():
        print(f"\n  profile {name}: {p.title}")
        for s in p.steps:
            opts = " ".join(f"{k}={v!r}" for k, v in s.options_dict().items())
            bg = f"  [background until {s.until}]" if s.background else ""
            print(f"    {s.id:<14} {s.collector:<14} {opts}{bg}")
    return 0


def _wrapped(patterns: list[str], lead: str = "") -> None:
    import textwrap

    text = lead + "  ;  ".join(patterns)
    print(
        textwrap.fill(
            text,
            100,
            initial_indent=" " * 6,
            subsequent_indent=" " * 8,
            break_on_hyphens=False,
            break_long_words=False,
        )
    )


def _print_read_only(ro: dict[str, Any]) -> None:
    """What the type may send (its read-only allow-list), slot by slot."""
    print(f"\n  read-only allow-list (read_only.cli: {ro['cli'] or 'not set'}; docs/read-only.md)")
    for slot, info in ro["slots"].items():
        abbrev = ", unique abbreviations of the first word" if info["abbreviations"] else ""
        print(f"    {slot} (cli {info['cli']}{abbrev}):")
        _wrapped(info["defaults"] or ["(nothing by default)"])
        if info["filters"]:
            _wrapped(info["filters"], "after '|': ")
    print("    read_only.allow (this type, every slot):")
    for p in ro["allow"] or ["(none)"]:
        print(f"      {p}")
    print(f"    ssh.pager_answer: {ro['pager_answer']}")
    print(f"    refused in any case: {'; '.join(ro['refused_always'])}")


def run_validate(args: argparse.Namespace) -> int:
    from agent.cli.common import emit_json
    from agent.errors import ConfigError
    from agent.kb import load_kb_file

    if not args.files:
        kb = _kb(args)
        if args.json:
            emit_json({"ok": True, "types": sorted(kb.types)})
        else:
            print(f"KB ok: {len(kb.types)} device type(s): {', '.join(sorted(kb.types))}")
        return 0
    problems: list[str] = []
    for f in args.files:
        path = Path(f)
        if path.is_dir():
            problems.append(f"{f}: is a directory; give the KB files (*.yaml) in it")
            continue
        if not path.is_file():
            problems.append(f"{f}: file not found")
            continue
        try:
            load_kb_file(path)
        except ConfigError as exc:
            problems.append(str(exc))
    if args.json:
        emit_json({"ok": not problems, "problems": problems})
    elif not problems:
        print(f"{len(args.files)} KB file(s) ok")
    if problems:
        raise ConfigError("\n".join(problems))
    return 0
