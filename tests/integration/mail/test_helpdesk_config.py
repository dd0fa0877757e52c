"""``[helpdesk]`` email/http settings: bad values are exit 2 with the key and the fix;
subjects and part names are what a HelpDesk and ``cat`` need."""

from __future__ import annotations

import pytest

from tests.conftest import Cli
from tests.e2e.helpers import write_site
from uploader.base import DeliveryMeta
from uploader.email import part_name, subject_for

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("helpdesk", "site", "expect"),
    [
        (
            'backend = "email"\nhost = "smtp.example"\nto = "support@vendor.example"',
            "",
            "set [site] contact_email or [helpdesk] from",
        ),
        (
            'backend = "email"\nhost = "smtp.example"\nto = "not-an-address"',
            'contact_email = "noc@acme.example"',
            "helpdesk.to[0]: expected an e-mail address",
        ),
        (
            'backend = "email"\nhost = "10.1.2.3"\ntls = "none"\nto = "s@v.example"\n'
            'username = "u"\npassword = { env = "X" }',
            'contact_email = "noc@acme.example"',
            "would send the SMTP password in clear text to 10.1.2.3",
        ),
        (
            'backend = "email"\nhost = "h"\nto = "s@v.example"\npassword = "literal"',
            'contact_email = "noc@acme.example"',
            "helpdesk.password: secrets must be references",
        ),
        (
            'backend = "email"\nhost = "h"\nto = "s@v.example"\noversize = "drop"',
            'contact_email = "noc@acme.example"',
            "helpdesk.oversize: Input should be 'split' or 'refuse'",
        ),
        (
            'backend = "http"\nurl = "http://helpdesk.example/upload"\nauth_value = { env = "X" }',
            "",
            "would send the Authorization secret in clear text",
        ),
        (
            'backend = "http"\nurl = "https://h.example/u"\nfields = { attachment = "f" }',
            "",
            "helpdesk.fields.attachment: unknown key",
        ),
    ],
)
def test_bad_helpdesk_settings_exit_2_naming_the_key(
    cli: Cli, helpdesk: str, site: str, expect: str
) -> None:
    config = write_site(cli, ["{id: u, collector: local.command, command: uname}"])
    text = config.read_text().replace('contact_email = "noc@acme.example"\n', site + "\n")
    config.write_text(text + f"[helpdesk]\n{helpdesk}\n")
    proc = cli.run("config", "check", check=2)
    assert expect in proc.stderr, proc.stderr
    assert "fieldtrace.toml" in proc.stderr


def test_missing_password_file_is_exit_2_naming_the_key(cli: Cli) -> None:
    write_site(
        cli,
        ["{id: u, collector: local.command, command: uname}"],
        '[helpdesk]\nbackend = "email"\nhost = "127.0.0.1"\nto = "s@v.example"\n'
        f'username = "u"\npassword = {{ file = "{cli.cwd}/missing.secret" }}\n',
    )
    proc = cli.run("outbox", "deliver", check=2)
    assert "helpdesk.password" in proc.stderr and "missing.secret" in proc.stderr
    proc = cli.run("config", "check", check=2)
    assert (
        "helpdesk.password: secret: cannot read" in proc.stderr and "missing.secret" in proc.stderr
    )


def test_subject_and_part_names() -> None:
    meta = DeliveryMeta(
        "b1", "N.tar.zst.age", 10, "x", ticket="4711", company="ACME Telecom",
        contract="TS-2024-117", devices=("gw1", "gw2"), profile="sip-calls",
    )  # fmt: skip
    assert subject_for(meta) == (
        "[TS-2024-117] ACME Telecom: ticket #4711: fieldtrace bundle gw1 gw2 sip-calls"
    )
    assert subject_for(meta, 2, 3).endswith("sip-calls (part 2/3)")
    bare = DeliveryMeta("b1", "N", 10, "x", subject="Calls drop")
    assert subject_for(bare) == "Calls drop"
    assert part_name("N", 1, 1) == "N"
    assert part_name("N", 7, 12) == "N.part007-of-012"
    assert part_name("N", 7, 1200) == "N.part0007-of-1200"
    names = [part_name("N", i, 1200) for i in range(1, 1201)]
    assert names == sorted(names)  # the shell's glob order is the byte order
