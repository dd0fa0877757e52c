"""[helpdesk] redmine and [outbox] settings: the example's keys validate, errors name the key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.delivery import make_backend, make_outbox
from agent.errors import ConfigError, pydantic_problems
from agent.settings import RedmineHelpdesk, Settings
from uploader.base import DeliveryMeta, PermanentError
from uploader.redmine import RedmineBackend, description, note, parse_ticket, subject

REPO = Path(__file__).resolve().parents[2]


def test_example_redmine_keys_validate_when_uncommented() -> None:
    text = (REPO / "config" / "fieldtrace.example.toml").read_text()
    block = text[text.index('# backend = "redmine"') : text.index('# --- backend = "email"')]
    keys = [m.group(1) for m in re.finditer(r"^# (\w+ = .*?)(?:\s{2,}#.*)?$", block, re.M)]
    body = "\n".join(k for k in keys if not k.startswith("backend"))
    data = tomllib.loads(f'[helpdesk]\nbackend = "redmine"\n{body}\n')
    hd = Settings.model_validate(data).helpdesk
    assert isinstance(hd, RedmineHelpdesk)
    assert (hd.project, hd.tracker, hd.timeout) == ("support", "Support", 60.0)
    assert hd.ca_file == Path("/etc/fieldtrace/helpdesk-ca.pem")


@pytest.mark.parametrize(
    ("helpdesk", "expect"),
    [
        ({"backend": "jira"}, "helpdesk: backend 'jira' is not available"),
        ({"backend": "redmine", "url": "helpdesk.example", "api_key": {"env": "K"},
          "project": "p"}, "helpdesk.url: expected an http(s) URL"),
        ({"backend": "redmine", "url": "https://h", "project": "p"},
         "helpdesk.api_key: required key is missing"),
        ({"backend": "redmine", "url": "https://h", "api_key": "literal", "project": "p"},
         "helpdesk.api_key: secrets must be references"),
        ({"backend": "redmine", "url": "https://h", "api_key": {"env": "K"}, "project": "p",
          "path": "/x"}, "helpdesk.path: unknown key"),
    ],
)  # fmt: skip
def test_helpdesk_errors_name_the_key(helpdesk: dict[str, object], expect: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Settings.model_validate({"helpdesk": helpdesk})
    assert any(p.startswith(expect) for p in pydantic_problems(exc.value)), exc.value


def test_make_backend_resolves_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.model_validate(
        {"helpdesk": {"backend": "redmine", "url": "https://h.example/", "project": "diag",
                      "api_key": {"env": "FT_TEST_KEY"}},
         "outbox": {"max_bytes": "1MiB", "backoff_base": "2s", "backoff_max": "10s"}}
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"helpdesk\.api_key: .*FT_TEST_KEY is not set"):
        make_backend(settings, tmp_path)
    monkeypatch.setenv("FT_TEST_KEY", " abc123 \n")
    backend = make_backend(settings, tmp_path)
    assert isinstance(backend, RedmineBackend)
    assert backend.o.api_key == "abc123" and backend.o.url == "https://h.example"
    box = make_outbox(settings, tmp_path)
    assert (box.max_bytes, box.backoff_base, box.backoff_max) == (1024**2, 2.0, 10.0)


def test_ticket_texts_carry_company_contract_and_marker() -> None:
    meta = DeliveryMeta(
        bundle_id="b" * 32, name="n.tar.zst.age", size=10, sha256="s", company="ACME",
        contract="C-1", contact_email="noc@a.example", devices=("gw1", "gw2"),
        profile="sip-calls", summary="3 steps ok 3",
    )  # fmt: skip
    assert subject(meta) == "ACME (C-1): sip-calls diagnostics from gw1, gw2"
    d = description(meta)
    assert "Company: ACME" in d and "Contract: C-1" in d and "Devices: gw1, gw2" in d
    assert d.endswith("fieldtrace-bundle: " + "b" * 32)
    assert "3 steps ok 3" in note(meta) and "fieldtrace-bundle: " + "b" * 32 in note(meta)
    assert parse_ticket("#4711") == parse_ticket(" 4711 ") == 4711
    for bad in ("ABC-1", "0", ""):
        with pytest.raises(PermanentError):
            parse_ticket(bad)
