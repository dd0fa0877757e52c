"""Read-only by allow-list (agent/readonly.py, checked by agent/kb.py when a KB loads).

The attack cases are data: tests/data/readonly/changing/*.txt (commands that change a
device, from the vendors' CLI references) must be refused in every slot under every CLI
family; tests/data/readonly/allowed/*.txt must pass, so the defaults stay usable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import readonly
from agent.errors import ValidationFailed
from agent.kb import parse_kb

DATA = Path(__file__).resolve().parent.parent / "data" / "readonly"
CLIS: list[str | None] = [None, *readonly.CLI_NAMES]


def corpus(path: Path) -> Iterator[str]:
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        if raw.startswith("esc: "):
            raw = raw[5:].encode("ascii").decode("unicode_escape")
        yield raw


CHANGING = [(f.stem, cmd) for f in sorted((DATA / "changing").glob("*.txt")) for cmd in corpus(f)]


def kb_text(
    *,
    cli: str | None = None,
    allow: list[str] | None = None,
    shell: list[str] = (),  # type: ignore[assignment]
    command: str | None = None,
    local: str | None = None,
    on_open: list[str] = (),  # type: ignore[assignment]
    pager_answer: str = " ",
) -> str:
    """A KB file with the given commands in their slots (JSON is valid YAML)."""
    steps: list[dict[str, object]] = [{"id": "snap", "collector": "host.snapshot"}]
    if shell:
        steps.append({"id": "sh", "collector": "ssh.shell", "commands": list(shell)})
    if command is not None:
        steps.append({"id": "cmd", "collector": "ssh.command", "command": command})
    if local is not None:
        steps.append({"id": "loc", "collector": "local.command", "command": local})
    doc: dict[str, object] = {
        "type": "box",
        "title": "Test box",
        "ssh": {"mode": "shell", "on_open": list(on_open), "pager_answer": pager_answer},
        "profiles": {"default": {"title": "t", "steps": steps}},
    }
    ro: dict[str, object] = {}
    if cli is not None:
        ro["cli"] = cli
    if allow is not None:
        ro["allow"] = allow
    if ro:
        doc["read_only"] = ro
    return json.dumps(doc)


def problems(text: str) -> list[str]:
    try:
        parse_kb(text, "kb/box.yaml")
    except ValidationFailed as exc:
        return exc.problems
    return []


SLOTS = ("ssh.shell", "ssh.command", "ssh.on_open", "ssh.pager_answer", "local.command")


def place(slot: str, cmd: str, cli: str | None) -> str:
    if slot == "ssh.shell":
        return kb_text(cli=cli, shell=[cmd])
    if slot == "ssh.command":
        return kb_text(cli=cli, command=cmd)
    if slot == "ssh.on_open":
        return kb_text(cli=cli, on_open=[cmd])
    if slot == "ssh.pager_answer":
        return kb_text(cli=cli, pager_answer=cmd)
    return kb_text(cli=cli, local=cmd)


def refused_at_load(slot: str, cmd: str, cli: str | None) -> bool:
    """The KB is refused, and the refusal is about that slot (not some other problem)."""
    where = {
        "ssh.shell": "steps[1].commands",  # [0], or the whole list from the options model
        "ssh.command": "steps[1].command",
        "ssh.on_open": "ssh.on_open[0]",
        "ssh.pager_answer": "ssh.pager_answer",
        "local.command": "steps[1].command",
    }[slot]
    found = problems(place(slot, cmd, cli))
    return bool(found) and all(where in p for p in found)


def combinations(vendor: str) -> list[tuple[str, str | None]]:
    """Where a corpus command is tried: every slot under every family, except a device
    command where the slot's family is Linux (local.command; ssh.command without a cli;
    cli linux): there the same words are another program ('free user-interface vty 0' is
    Huawei's logout of a user, and Linux's free(1))."""
    device = vendor not in ("linux", "evasion")

    def linux(slot: str, cli: str | None) -> bool:
        if slot == "ssh.pager_answer":
            return False
        return readonly.make_policy(cli, [])[0].family(slot).name == "linux"  # type: ignore[arg-type]

    return [(s, c) for s in SLOTS for c in CLIS if not (device and linux(s, c))]


@pytest.mark.parametrize(("vendor", "cmd"), CHANGING, ids=[f"{v}:{c!r}" for v, c in CHANGING])
def test_changing_commands_are_refused_everywhere(vendor: str, cmd: str) -> None:
    missed = [(s, c) for s, c in combinations(vendor) if not refused_at_load(s, cmd, c)]
    assert not missed, f"{vendor}: {cmd!r} was accepted in {missed}"


def test_corpus_is_big_and_covers_every_vendor() -> None:
    vendors = {v for v, _ in CHANGING}
    assert vendors >= {
        "cisco-ios",
        "cisco-nxos",
        "cisco-asa",
        "arista-eos",
        "junos",
        "huawei-vrp",
        "mikrotik",
        "linux",
        "evasion",
    }
    assert len(CHANGING) >= 400


def _allowed(name: str) -> list[str]:
    return list(corpus(DATA / "allowed" / name))


@pytest.mark.parametrize("cli", ["cisco", "huawei", "junos", "fortinet", "mikrotik"])
def test_read_only_device_commands_pass_with_their_family(cli: str) -> None:
    cmds = _allowed(f"{cli}.txt")
    assert not problems(kb_text(cli=cli, shell=cmds))
    for cmd in cmds:
        assert not problems(kb_text(cli=cli, command=cmd)), cmd
    on_open = DATA / "allowed" / f"{cli}.on_open.txt"
    if on_open.exists():
        assert not problems(kb_text(cli=cli, on_open=list(corpus(on_open))))


@pytest.mark.parametrize("cli", ["cisco", "huawei", "junos", "fortinet"])
def test_the_network_default_takes_every_network_family_but_its_ambiguous_abbreviations(
    cli: str,
) -> None:
    # without read_only.cli, ssh.shell gets the union; an abbreviation ambiguous across
    # the families ('dis' is display, disable or disconnect) or shorter than 3 letters
    # ('sh' is also the Unix shell) needs the family
    verbs = ("show", "display", "get")
    cmds = [c for c in _allowed(f"{cli}.txt") if c.split()[0].lower() in verbs]
    assert cmds and not problems(kb_text(shell=cmds))
    assert not problems(kb_text(shell=["sho run", "disp cur"]))
    for short, family in (("dis cur", "huawei"), ("sh run", "cisco")):
        assert problems(kb_text(shell=[short]))
        assert not problems(kb_text(cli=family, shell=[short]))


def test_read_only_linux_commands_pass_locally_and_over_ssh() -> None:
    for cmd in _allowed("linux.txt"):
        assert not problems(kb_text(local=cmd)), cmd
        assert not problems(kb_text(command=cmd)), cmd
    for cmd in _allowed("linux.ssh.txt"):
        assert not problems(kb_text(command=cmd)), cmd
        found = problems(kb_text(local=cmd))  # no shell, so no pipe
        assert found and "without a shell" in found[0]


def test_the_shipped_kb_loads() -> None:
    from agent.kb import load_kb

    kb = load_kb()
    assert {"linux-host", "sip-gateway"} <= set(kb.types)
    assert kb.get("sip-gateway").read_only.cli == "cisco"


def test_errors_name_the_file_the_path_and_the_fix() -> None:
    text = kb_text(shell=["show version", "wri mem"], on_open=["terminal length 0"])
    with pytest.raises(ValidationFailed) as info:
        parse_kb(text, "kb/box.yaml")
    msg = str(info.value)
    assert msg.startswith("kb/box.yaml: profiles.default.steps[1].commands[1]: 'wri mem' ")
    assert "read_only.allow" in msg and "kb show" in msg
    writing = problems(kb_text(cli="cisco", shell=["show run | redirect flash:x"]))
    assert "refused in any case" in writing[0] and "redirect" in writing[0]


def test_allow_extends_the_defaults_explicitly_and_never_past_the_hard_refusals() -> None:
    assert problems(kb_text(cli="cisco", shell=["ping 192.0.2.1 repeat 5"]))
    ok = kb_text(cli="cisco", allow=["ping * repeat 5"], shell=["ping 192.0.2.1 repeat 5"])
    assert not problems(ok)
    # the first word of an allowed pattern may be abbreviated when unique among the CLI's
    # commands ('mor': more, move, monitor...), not when ambiguous ('pin': ping, ping6)
    assert not problems(kb_text(cli="cisco", allow=["more *"], shell=["mor flash:x.txt"]))
    assert problems(kb_text(cli="cisco", allow=["ping * repeat 5"], shell=["pin x repeat 5"]))
    # but the rest must match word by word
    assert problems(kb_text(cli="cisco", allow=["ping * repeat 5"], shell=["ping x size 9000"]))
    for hard in ("ping x; reload", "ping x | redirect flash:y", "ping x > flash:y"):
        assert problems(kb_text(cli="cisco", allow=["ping ..."], shell=[hard])), hard
    # a pipe filter the defaults do not know is listed as "| ..."
    assert problems(kb_text(cli="cisco", shell=["show run | utility egrep x"]))
    assert not problems(
        kb_text(cli="cisco", allow=["| utility egrep ..."], shell=["show run | utility egrep x"])
    )


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "empty"),
        ("* ...", "first word"),
        ("show ... more", "last word"),
        ("show [a", "not a word"),
        ("! show", "needs a word"),
        ("sh\u043ew ...", "non-ASCII"),
    ],
)
def test_bad_patterns_are_refused_with_their_path(pattern: str, reason: str) -> None:
    found = problems(kb_text(allow=["show ...", pattern]))
    assert found and found[0].startswith("read_only.allow[1]: ") and reason in found[0]


def test_refusals_understand_getopt() -> None:
    p, _ = readonly.make_policy(None, ["tool ... !--delete !-d"])
    p.check("local.command", "tool --verbose -x file")
    for bad in ("tool --delete x", "tool --del x", "tool --delete=x", "tool -xd", "tool -d"):
        with pytest.raises(readonly.Refused):
            p.check("local.command", bad)


@pytest.mark.parametrize("answer", [" ", "\n", "\r", "\r\n", "q", "n", "Q", "1"])
def test_pager_answers_are_one_key(answer: str) -> None:
    assert not problems(kb_text(pager_answer=answer))


@pytest.mark.parametrize("answer", ["y", "Y", "yes", "  ", "q\n", "\x03", "\u00a0", ""])
def test_other_pager_answers_are_refused(answer: str) -> None:
    found = problems(kb_text(pager_answer=answer))
    assert found and found[0].startswith("ssh.pager_answer: ")


def test_describe_lists_what_is_allowed_per_slot() -> None:
    p, _ = readonly.make_policy("junos", ["ping * count 5"])
    d = p.describe()
    assert d["cli"] == "junos" and d["allow"] == ["ping * count 5"]
    assert "show ..." in d["slots"]["ssh.shell"]["defaults"]
    assert "set cli screen-length 0" in d["slots"]["ssh.on_open"]["defaults"]
    assert d["slots"]["local.command"]["cli"] == "linux"


def figure() -> tuple[int, int, int, int]:
    """(commands refused everywhere, commands, checks refused, checks) over the corpus."""
    cmds = ok_cmds = checks = ok_checks = 0
    for vendor, cmd in CHANGING:
        combos = combinations(vendor)
        refused = sum(refused_at_load(s, cmd, c) for s, c in combos)
        cmds += 1
        ok_cmds += refused == len(combos)
        checks += len(combos)
        ok_checks += refused
    return ok_cmds, cmds, ok_checks, checks


if __name__ == "__main__":  # the figure of docs/read-only.md: python -m tests.unit.test_readonly
    a, b, c, d = figure()
    print(f"changing commands refused in every slot and family: {a}/{b}; checks refused: {c}/{d}")
