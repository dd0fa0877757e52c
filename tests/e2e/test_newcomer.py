"""What a new user tripped over (issue 10 §7), tried the way they tried it: the CLI in a
subprocess, asserting the exit code and the message they see."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.e2e.helpers import manifest_of, open_with_stock_tools, write_site
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.e2e

ONE_STEP = ['{id: hello, collector: local.command, command: "echo hello"}']


# --- the command as it was invoked ---------------------------------------------------------


def _console_script(directory: Path) -> Path:
    """What `pip install` puts in .venv/bin: a script running agent.cli:main."""
    script = directory / ".venv" / "bin" / "fieldtrace"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom agent.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    return script


def _run(cli: Cli, argv: list[str], cwd: Path, path: str, check: int) -> Any:
    env = {**cli.env, "PATH": path}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def test_hints_name_the_command_as_it_was_typed(cli: Cli, tmp_path: Path) -> None:
    """After the README's first command the program is .venv/bin/fieldtrace, not on PATH."""
    script = _console_script(cli.cwd)
    write_site(cli, ONE_STEP)
    system = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    proc = _run(cli, [".venv/bin/fieldtrace", "collect"], cli.cwd, system, 0)
    bundle = next((cli.home / "outbox" / "delivered").iterdir())
    assert f"open it:  .venv/bin/fieldtrace bundle open {bundle}\n" in proc.stdout
    assert "(see '.venv/bin/fieldtrace keys show')" in proc.stdout
    # a hint inside an error message, and argparse's usage line
    bad = _run(cli, [".venv/bin/fieldtrace", "collect", "-p", "nosuch"], cli.cwd, system, 2)
    assert "see '.venv/bin/fieldtrace kb show box'" in bad.stderr
    usage = _run(cli, [".venv/bin/fieldtrace", "collect", "--nosuch"], cli.cwd, system, 2)
    assert usage.stderr.startswith("usage: .venv/bin/fieldtrace ")
    # typed as an absolute path from elsewhere: shown as typed
    other = tmp_path / "elsewhere"
    other.mkdir()
    bad = _run(
        cli,
        [str(script), "-c", "../cwd/fieldtrace.toml", "collect", "-p", "nosuch"],
        other,
        system,
        2,
    )
    assert f"see '{script} kb show box'" in bad.stderr


def test_fieldtrace_is_named_plainly_when_path_finds_this_very_program(
    cli: Cli, tmp_path: Path
) -> None:
    script = _console_script(cli.cwd)
    with_it = f"{script.parent}:/usr/bin:/bin"
    for argv in (["fieldtrace"], [".venv/bin/fieldtrace"], [str(script)]):
        bad = _run(cli, [*argv, "collect", "-p", "nosuch"], cli.cwd, with_it, 2)
        assert "see 'fieldtrace kb show linux-host'" in bad.stderr, argv
    # another fieldtrace first on PATH: then the one that ran is named by its path
    decoy = _console_script(tmp_path / "decoy")
    decoy_first = f"{decoy.parent}:{script.parent}:/usr/bin:/bin"
    bad = _run(cli, [".venv/bin/fieldtrace", "collect", "-p", "x"], cli.cwd, decoy_first, 2)
    assert "see '.venv/bin/fieldtrace kb show linux-host'" in bad.stderr


# --- collect --dry-run touches nothing -----------------------------------------------------


def _tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under root: mode, size, mtime and, for files, the content's sha256."""
    out: dict[str, tuple[Any, ...]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    st = root.lstat()
    out["."] = (st.st_mode, st.st_mtime_ns)
    return out


def test_dry_run_creates_nothing_on_a_fresh_machine(cli: Cli, tmp_path: Path) -> None:
    fresh = tmp_path / "never-made"
    note = cli.cwd / "note.txt"
    note.write_text("what I saw\n")
    env = {**cli.env, "FIELDTRACE_HOME": str(fresh)}
    for extra in ([], ["--json"], ["--attach", "note.txt", "--output", str(tmp_path / "usb/x")]):
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "collect", "--dry-run", *extra],
            cwd=cli.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        if "--json" in extra:
            plan = json.loads(proc.stdout)
            assert plan["ok"] is True and plan["steps"][0]["device"] == "local"
        else:
            assert "nothing will be touched" in proc.stdout
    assert not fresh.exists()  # no home: no keys, outbox, staging or log file
    assert not (tmp_path / "usb").exists()
    # and it still checks everything a real run checks, touching nothing either
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "collect", "--dry-run", "-p", "nosuch"],
        cwd=cli.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no profile 'nosuch'" in proc.stderr
    assert not fresh.exists()


def test_dry_run_leaves_an_existing_home_byte_identical(cli: Cli) -> None:
    write_site(cli, ONE_STEP)
    cli.run("collect", check=0)  # keys, outbox, a delivered bundle, the log
    before = _tree(cli.home)
    assert "identity.txt" in before and "fieldtrace.log" in before
    time.sleep(0.05)  # a write now would show in the mtimes
    out = cli.run("collect", "--dry-run", check=0).stdout
    assert "local/hello" in out
    assert _tree(cli.home) == before


# --- outbox deliver ------------------------------------------------------------------------


def test_deliver_names_a_bundle_that_is_not_there(cli: Cli) -> None:
    write_site(cli, ONE_STEP)
    sent = Path(json.loads(cli.run("collect", "--json", check=0).stdout)["bundle"]).name
    proc = cli.run("outbox", "deliver", "nosuch.tar.zst.age", check=2)
    assert "no bundle named nosuch.tar.zst.age in the outbox; '" in proc.stderr
    assert "outbox list' shows them" in proc.stderr
    doc = json.loads(cli.run("outbox", "deliver", "nosuch", "--json", check=2).stdout)
    assert doc["ok"] is False and doc["exit_code"] == 2 and "no bundle named nosuch" in doc["error"]
    assert "delivered already" in cli.run("outbox", "deliver", sent, check=0).stdout
    assert "no bundle named nosuch" in cli.run("outbox", "retry", "nosuch", check=2).stderr


def test_deliver_of_a_parked_bundle_says_why_and_what_to_do(cli: Cli, tmp_path: Path) -> None:
    dest = tmp_path / "drop"
    dest.write_text("a file where the delivery directory should be")
    write_site(cli, ONE_STEP, f'[helpdesk]\nbackend = "directory"\npath = "{dest}"\n')
    cli.run("collect", check=1)  # parked
    [row] = json.loads(cli.run("outbox", "list", "--json", check=0).stdout)
    proc = cli.run("outbox", "deliver", row["name"], check=1)
    assert proc.stdout.startswith(f"parked  {row['name']}  parked, not delivered: {dest}")
    assert f"outbox retry {row['name']}'" in proc.stdout


def _http_site(cli: Cli, url: str) -> None:
    write_site(
        cli,
        ONE_STEP,
        f'[helpdesk]\nbackend = "http"\nurl = "{url}"\n'
        '[outbox]\nbackoff_base = "1s"\nbackoff_max = "2s"\n',
    )


class _Lines:
    """Reads a pipe (or a pty) in a thread; ``wait_for`` polls what came so far."""

    def __init__(self, read: Any) -> None:
        self.chunks: list[str] = []
        self.thread = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self.thread.start()

    def _pump(self, read: Any) -> None:
        while True:
            try:
                data = read()
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data if isinstance(data, str) else data.decode(errors="replace"))

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def wait_for(self, proc: subprocess.Popen[str], test: Any, what: str) -> None:
        deadline = time.monotonic() + 90  # generous: the VM is shared
        while not test(self.text):
            assert proc.poll() is None, f"exited {proc.returncode} before {what}: {self.text}"
            assert time.monotonic() < deadline, f"no {what}: {self.text}"
            time.sleep(0.1)


@pytest.fixture
def stopped_http(cli: Cli) -> Iterator[str]:
    """A HelpDesk URL nobody answers on, and one bundle queued for it."""
    port = free_port()
    _http_site(cli, f"http://127.0.0.1:{port}/upload")
    proc = cli.run("collect", check=0)  # collected fine; the delivery will be retried
    want = f"delivery: will retry: cannot connect to 127.0.0.1:{port}: connection refused"
    assert want in proc.stdout
    yield f"127.0.0.1:{port}"


def test_deliver_wait_shows_each_attempt_and_what_is_left_when_stopped(
    cli: Cli, stopped_http: str
) -> None:
    proc = cli.start("outbox", "deliver", "--wait")
    assert proc.stderr is not None
    err = _Lines(proc.stderr.readline)
    try:
        err.wait_for(proc, lambda t: t.count("outbox: retry ") >= 2, "two attempts")
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.stdout is not None
        out = proc.stdout.read()  # not communicate(): the thread owns stderr
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err.thread.join(5)
    assert proc.returncode == 1, out + err.text
    lines = [ln for ln in err.text.splitlines() if ln.startswith("outbox: retry ")]
    assert "(attempt 2): cannot connect to " + stopped_http in lines[0]  # collect made #1
    assert "connection refused" in lines[0] and "; next try in " in lines[0]
    assert "stopping after the current attempt" in err.text
    assert "stopped with 1 bundle(s) still queued:" in out and "next try in" in out
    assert "nothing queued" not in out
    assert "Error" not in out + err.text  # no NewConnectionError & co.
    [row] = json.loads(cli.run("outbox", "list", "--json", check=0).stdout)
    assert row["state"] == "queued" and "connection refused" in row["last_error"]


def test_deliver_wait_on_a_terminal_shows_the_countdown(cli: Cli, stopped_http: str) -> None:
    master, slave = pty.openpty()
    proc = cli.start(
        "outbox",
        "deliver",
        "--wait",
        stderr=slave,
        env={**cli.env, "TERM": "xterm", "COLUMNS": "400"},
    )
    os.close(slave)
    screen = _Lines(lambda: os.read(master, 4096))
    try:
        screen.wait_for(
            proc, lambda t: "waiting to deliver 1 bundle(s)" in t and "next try in" in t, "live"
        )
        assert f"failed: cannot connect to {stopped_http}: connection refused" in screen.text
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        screen.thread.join(5)
        os.close(master)
    assert proc.returncode == 1 and "stopped with 1 bundle(s) still queued" in out


def test_deliver_wait_ends_when_the_helpdesk_takes_it(cli: Cli) -> None:
    from tests.integration.mail.support import HttpEndpoint, Reply

    endpoint = HttpEndpoint()
    try:
        endpoint.replies = [Reply(status=503), Reply(status=503)]
        _http_site(cli, endpoint.url)
        assert "delivery: will retry: " in cli.run("collect", check=0).stdout
        proc = cli.run("outbox", "deliver", "--wait", check=0)
    finally:
        endpoint.stop()
    assert "outbox: retry " in proc.stderr and "answered HTTP 503" in proc.stderr
    assert proc.stdout.startswith("sent ")
    assert len(endpoint.requests) == 3


def test_delivery_errors_are_sentences(cli: Cli) -> None:
    _http_site(cli, "http://helpdesk.invalid/upload")
    out = cli.run("collect", check=0).stdout
    assert "delivery: will retry: cannot connect to helpdesk.invalid:80: the name " in out
    assert "Error" not in out


# --- inputs --------------------------------------------------------------------------------


def test_kb_validate_lists_every_problem_of_a_file(cli: Cli) -> None:
    kb = cli.cwd / "box.yaml"
    kb.write_text(
        "type: box\nprofiles:\n  default:\n    title: t\n    steps:\n"
        "      - {id: a, collector: nosuch.thing}\n"
        '      - {id: b, collector: local.command, command: "uname", timeout: ninety}\n'
        '      - {id: Bad, collector: local.command, command: "uname"}\n'
    )
    err = cli.run("kb", "validate", str(kb), check=2).stderr
    for problem in (
        "box.yaml: title: required key is missing",
        "box.yaml: profiles.default.steps[0].collector: unknown collector 'nosuch.thing'",
        "box.yaml: profiles.default.steps[1].timeout: expected a duration",
        "box.yaml: profiles.default.steps[2].id: expected a short lowercase id",
    ):
        assert problem in err, err
    doc = json.loads(cli.run("kb", "validate", str(kb), "--json", check=2).stdout)
    assert doc["ok"] is False  # one document, the command's own


def test_a_directory_where_a_file_is_expected_is_called_one(cli: Cli) -> None:
    d = cli.cwd / "adir"
    d.mkdir()
    assert (
        "adir: is a directory, not a config file"
        in cli.run("-c", "adir", "collect", check=2).stderr
    )
    env_config = {**cli.env, "FIELDTRACE_CONFIG": str(d)}
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "config", "check"],
        cwd=cli.cwd,
        env=env_config,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "is a directory, not a config file" in proc.stderr
    err = cli.run("collect", "--attach", "adir", check=2).stderr
    assert "--attach adir: is a directory; attach files one by one" in err
    assert "adir: is a directory" in cli.run("kb", "validate", "adir", check=2).stderr
    write_site(cli, ONE_STEP, f'[scrub]\nvalues = [{{ file = "{d}" }}]\n')
    err = cli.run("config", "check", check=2).stderr
    assert f"scrub.values[0]: secret: {d} is a directory, not a file holding the secret" in err


def test_capture_on_an_interface_that_does_not_exist_is_refused_before_starting(
    cli: Cli,
) -> None:
    proc = cli.run("capture", "-i", "nosuch0", "-d", "2s", check=2)
    assert "-i nosuch0: no such interface on this host (here: any, " in proc.stderr
    assert "lo" in proc.stderr.split("(here: ")[1]
    doc = json.loads(cli.run("capture", "-i", "nosuch0", "--json", check=2).stdout)
    assert doc["exit_code"] == 2 and "no such interface" in doc["error"]
    assert not list(cli.home.rglob("*.age"))  # no bundle made, none delivered


def test_attach_takes_one_file_and_leaves_device_names_alone(cli: Cli, tmp_path: Path) -> None:
    write_site(cli, ONE_STEP)
    (cli.cwd / "a.txt").write_text("first\n")
    (cli.cwd / "b.txt").write_text("second\n")
    err = cli.run("collect", "--attach", "a.txt", "b.txt", check=2).stderr
    assert "'b.txt' is not a configured device" in err and "write --attach b.txt" in err
    data = json.loads(
        cli.run(
            "collect", "--attach", "a.txt", "local", "--attach", "b.txt", "--json", check=0
        ).stdout
    )
    assert [d["name"] for d in data["devices"]] == ["local"]
    top = open_with_stock_tools(Path(data["bundle"]), cli.home / "identity.txt", tmp_path / "o")
    assert [a["name"] for a in manifest_of(top)["attachments"]] == ["a.txt", "b.txt"]
    assert (top / "attachments" / "b.txt").read_text() == "second\n"


def test_the_messages_a_newcomer_reported(cli: Cli, tmp_path: Path) -> None:
    # a raw regex in the bad device name error
    (cli.cwd / "fieldtrace.toml").write_text("[[devices]]\nname = 'gw 1'\ntype = 'linux-host'\n")
    err = cli.run("collect", check=2).stderr
    assert "devices[0].name: expected 1 to 63 characters: letters or digits first" in err
    assert "^[" not in err and "pattern" not in err
    # a secret file error printed twice
    write_site(
        cli,
        ONE_STEP,
        f'[helpdesk]\nbackend = "http"\nurl = "https://hd.example/u"\n'
        f'auth_value = {{ file = "{tmp_path}/missing" }}\n',
    )
    err = cli.run("config", "check", check=2).stderr
    assert err.count(f"cannot read {tmp_path}/missing") == 1, err
    # "1 steps"
    write_site(cli, ONE_STEP)
    assert "collected 1 step from local in " in cli.run("collect", check=0).stdout


def test_tables_are_plain_text_when_stdout_is_not_a_terminal(cli: Cli) -> None:
    proc = cli.run("check-access", "--budget", "5")
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # this host's own firewall
    header = [ln for ln in proc.stdout.splitlines() if ln.startswith("port ")]
    assert header and "purpose" in header[0] and "status" in header[0], proc.stdout
    assert not set(proc.stdout) & set("─━│┃┏┓┗┛┡┩╇╸╺")


# --- --json always gives JSON --------------------------------------------------------------


def _json_commands() -> list[list[str]]:
    """Every (sub)command that takes --json, from the parser itself, with dummy arguments."""
    import argparse

    from agent.cli import build_parser

    found: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in subs:
            for name, child in action.choices.items():
                walk(child, [*path, name])
        if any("--json" in a.option_strings for a in parser._actions):
            args = list(path)
            for a in parser._actions:
                if not a.option_strings and a.nargs in (None, "+"):
                    args.append("x")  # a positional: kb show TYPE, bundle inspect FILE ...
                elif a.required and a.option_strings:
                    args += [a.option_strings[0], "x"]  # capture -i
            found.append(args)

    walk(build_parser(), [])
    return found


def test_every_json_command_prints_an_error_document(cli: Cli, tmp_path: Path) -> None:
    commands = _json_commands()
    assert len(commands) >= 12, commands  # collect, capture, kb x3, outbox x3, devices ...
    not_a_dir = tmp_path / "home-is-a-file"
    not_a_dir.write_text("")
    env = {**cli.env, "FIELDTRACE_HOME": str(not_a_dir)}
    for args in commands:
        for argv in (
            ["-c", str(tmp_path / "missing.toml"), *args, "--json"],  # a config error
            [*args, "--json", "--no-such-option"],  # a usage error
        ):
            proc = subprocess.run(
                [sys.executable, "-m", "agent", *argv],
                cwd=cli.cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
            doc = json.loads(proc.stdout)  # one document, nothing else on stdout
            assert doc["ok"] is False and doc["exit_code"] == 2, (argv, doc)
            assert doc["error"] and "fieldtrace: " in proc.stderr, argv
    # the state directory unusable: keys show (which reads no config) says so in JSON too
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "keys", "show", "--json"],
        cwd=cli.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "not a directory; $FIELDTRACE_HOME" in json.loads(proc.stdout)["error"]


# --- Ctrl-C --------------------------------------------------------------------------------


def test_ctrl_c_twice_abandons_the_job_with_exit_130(cli: Cli) -> None:
    # a step that shrugs off SIGTERM, so the job is still stopping when Ctrl-C comes again
    stubborn = cli.cwd / "stubborn.py"
    stubborn.write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('started', flush=True)\ntime.sleep(60)\n"
    )
    write_site(
        cli,
        [f'{{id: slow, collector: local.command, command: "{sys.executable} {stubborn}"}}'],
        allow=[f"{sys.executable} {stubborn}"],  # beyond the read-only defaults
    )
    proc = cli.start("collect")
    staging = cli.home / "staging"
    deadline = time.monotonic() + 60
    while not any(staging.glob("*/local/slow/output.txt")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "fieldtrace: interrupted: Ctrl-C twice: the job was abandoned; nothing was kept" in err
    assert not list(cli.home.rglob("*.age")) and not any(staging.iterdir())
