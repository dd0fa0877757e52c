"""Malformed site configs and KB files: each refused with exit 2, a message naming the file,
the field path and the reason, and nothing collected."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli

pytestmark = pytest.mark.e2e

GOOD_KB = """\
type: box
title: A test box
profiles:
  default:
    title: t
    steps:
      - {id: one, collector: local.command, command: "echo hi"}
"""


@dataclass
class Case:
    name: str
    config: str = ""
    kb: str | None = None  # written to kb/box.yaml and named in [kb] paths
    kb_file: str = "box.yaml"
    args: tuple[str, ...] = ()
    expect: tuple[str, ...] = ()  # substrings of stderr, besides the file name


def kb_step(step: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        type: box
        title: A test box
        {extra}
        profiles:
          default:
            title: t
            steps:
              - {step}
        """
    )


CASES = [
    # --- site config ------------------------------------------------------------------------
    Case("toml-syntax", "[site\ncompany = 'x'\n", expect=("not valid TOML", "line 1")),
    Case("unknown-section", "[sitee]\ncompany = 'x'\n", expect=("sitee: unknown key",)),
    Case("unknown-site-key", "[site]\ncompnay = 'ACME'\n", expect=("site.compnay: unknown key",)),
    Case(
        "bad-email",
        "[site]\ncontact_email = 'noc'\n",
        expect=("site.contact_email", "expected an e-mail address"),
    ),
    Case(
        "bad-support-ip",
        "[vendor]\nsupport_ips = ['198.51.100.300']\n",
        expect=("vendor.support_ips", "expected an IP address or CIDR"),
    ),
    Case(
        "bad-recipient",
        "[vendor]\nrecipients = ['age1notarealkey']\n",
        expect=("vendor.recipients[0]", "not a valid age recipient"),
    ),
    Case(
        "bad-request-key",
        "[vendor]\nrequest_keys = ['ssh-rsa AAAAB3Nza engineer']\n",
        expect=("vendor.request_keys[0]", "ssh-ed25519"),
    ),
    Case(
        "unknown-backend",
        "[helpdesk]\nbackend = 'jira'\n",
        expect=("helpdesk", "'jira'", "not available"),
    ),
    Case(
        "literal-secret",
        "[[devices]]\nname='gw1'\ntype='linux-host'\naddress='127.0.0.1'\n"
        "ssh = { username = 'diag', password = 'hunter2' }\n",
        expect=("devices[0].ssh.password", "secrets must be references"),
    ),
    Case(
        "secret-both-file-and-env",
        "[[devices]]\nname='gw1'\ntype='linux-host'\n"
        "ssh = { username = 'd', key = { file = '/k', env = 'K' } }\n",
        expect=("devices[0].ssh.key", "exactly one"),
    ),
    Case(
        "bad-device-name",
        "[[devices]]\nname='gw 1'\ntype='linux-host'\n",
        expect=("devices[0].name", "letters or digits first", "got 'gw 1'"),
    ),
    Case(
        "duplicate-device",
        "[[devices]]\nname='gw1'\ntype='linux-host'\n[[devices]]\nname='gw1'\ntype='linux-host'\n",
        expect=("devices", "'gw1' is used twice"),
    ),
    Case(
        "device-without-type",
        "[[devices]]\nname='gw1'\n",
        expect=("devices[0].type", "required key is missing"),
    ),
    Case(
        "ssh-port-range",
        "[[devices]]\nname='gw1'\ntype='linux-host'\nssh = { port = 70000, username = 'd' }\n",
        expect=("devices[0].ssh.port", "65535"),
    ),
    Case(
        "snmp-v2c-without-community",
        "[[devices]]\nname='gw1'\ntype='linux-host'\nsnmp = { version = '2c' }\n",
        expect=("devices[0].snmp", "needs community"),
    ),
    Case(
        "unknown-device-type",
        "[[devices]]\nname='gw1'\ntype='pbx-9000'\n",
        expect=("devices[0].type", "unknown KB type 'pbx-9000'", "linux-host"),
    ),
    Case(
        "missing-kb-dir",
        "[kb]\npaths = ['/nonexistent/kb.d']\n",
        expect=("kb.paths[0]", "directory not found"),
    ),
    Case(
        "parallel-zero",
        "[collect]\nmax_parallel_devices = 0\n",
        expect=("collect.max_parallel_devices", "greater than or equal to 1"),
    ),
    Case(
        "unknown-profile",
        "",
        args=("--profile", "nosuch"),
        expect=("has no profile 'nosuch'", "default"),
    ),
    Case("unknown-device-arg", "", args=("gw9",), expect=("unknown device 'gw9'", "local")),
    # --- KB files ---------------------------------------------------------------------------
    Case("kb-yaml-syntax", kb="type: box\ntitle: [unclosed\n", expect=("box.yaml", "line", "YAML")),
    Case(
        "kb-unknown-collector",
        kb=kb_step("{id: a, collector: local.comand, command: x}"),
        expect=("profiles.default.steps[0].collector", "unknown collector 'local.comand'"),
    ),
    Case(
        "kb-bad-duration",
        kb=kb_step('{id: a, collector: local.command, command: x, timeout: "ninety"}'),
        expect=("profiles.default.steps[0].timeout", 'expected a duration like "90s"'),
    ),
    Case(
        "kb-unknown-option",
        kb=kb_step("{id: a, collector: local.command, comand: x}"),
        expect=("profiles.default.steps[0].comand", "unknown key"),
    ),
    Case(
        "kb-duplicate-step",
        kb=GOOD_KB + "      - {id: one, collector: local.command, command: y}\n",
        expect=("profiles.default.steps[1].id", "duplicate step id 'one'"),
    ),
    Case(
        "kb-missing-title",
        kb=GOOD_KB.replace("title: A test box\n", ""),
        expect=("title", "required key is missing"),
    ),
    Case(
        "kb-type-file-mismatch",
        kb=GOOD_KB,
        kb_file="other.yaml",
        expect=("other.yaml", "type", "does not match the file name"),
    ),
    Case(
        "kb-bad-size",
        kb=kb_step("{id: a, collector: local.file, path: /x, max_bytes: lots}"),
        expect=("profiles.default.steps[0].max_bytes", "expected a size"),
    ),
    Case(
        "kb-relative-path",
        kb=kb_step("{id: a, collector: local.file, path: var/log/x}"),
        expect=("profiles.default.steps[0].path", "absolute"),
    ),
    Case(
        "kb-bad-port",
        kb=kb_step(
            "{id: a, collector: local.command, command: x}",
            "remote_access: [{port: 0, protocol: tcp}]",
        ),
        expect=("remote_access[0].port", "greater than or equal to 1"),
    ),
    Case(
        "kb-bad-prompt-regex",
        kb=kb_step("{id: a, collector: local.command, command: x}", "ssh: {prompt: '[unclosed'}"),
        expect=("ssh.prompt", "not a valid regular expression"),
    ),
    Case(
        "kb-unsplittable-command",
        kb=kb_step('{id: a, collector: local.command, command: "echo \'unbalanced"}'),
        expect=("profiles.default.steps[0].command", "cannot split"),
    ),
    Case(
        "kb-bad-step-id",
        kb=kb_step("{id: Bad Id, collector: local.command, command: x}"),
        expect=("profiles.default.steps[0].id", "lowercase id"),
    ),
]


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 20
    assert len({c.name for c in CASES}) == len(CASES)


def _assert_nothing_collected(home: Path) -> None:
    bundles = list(home.rglob("*.age")) + list(home.rglob("*.partial"))
    assert bundles == [], bundles
    staging = home / "staging"
    assert not staging.exists() or not any(staging.iterdir())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused(cli: Cli, case: Case) -> None:
    config = case.config
    source = "fieldtrace.toml"
    if case.kb is not None:
        kbdir = cli.cwd / "kb"
        kbdir.mkdir()
        (kbdir / case.kb_file).write_text(case.kb)
        config = f"[kb]\npaths = ['{kbdir}']\n" + config
        source = case.kb_file
    (cli.cwd / "fieldtrace.toml").write_text(config)
    proc = cli.run("collect", *case.args, check=2)
    err = proc.stderr
    if not case.args:  # CLI-argument errors name the argument, not a file
        assert source in err, err
    for needle in case.expect:
        assert needle in err, f"{needle!r} not in:\n{err}"
    assert "Traceback" not in err
    _assert_nothing_collected(cli.home)


def test_config_check_reports_same_errors(cli: Cli) -> None:
    (cli.cwd / "fieldtrace.toml").write_text("[site]\ncompnay = 'ACME'\n")
    proc = cli.run("config", "check", check=2)
    assert "fieldtrace.toml: site.compnay: unknown key" in proc.stderr


def test_kb_validate_names_each_bad_file(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "box.yaml"
    bad.write_text(kb_step("{id: a, collector: nope}"))
    good = tmp_path / "good.yaml"
    good.write_text(GOOD_KB.replace("type: box", "type: good"))
    proc = cli.run("kb", "validate", str(good), str(bad), check=2)
    assert f"{bad}: profiles.default.steps[0].collector: unknown collector 'nope'" in proc.stderr
    assert str(good) not in proc.stderr
    cli.run("kb", "validate", str(good), check=0)


def test_missing_explicit_config_file(cli: Cli) -> None:
    proc = cli.run("--config", "/nonexistent/ft.toml", "collect", check=2)
    assert "/nonexistent/ft.toml: config file not found" in proc.stderr
    cli.env["FIELDTRACE_CONFIG"] = "/nonexistent/env.toml"
    proc = cli.run("collect", check=2)
    assert "$FIELDTRACE_CONFIG" in proc.stderr
    _assert_nothing_collected(cli.home)
