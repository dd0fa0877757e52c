"""Signed requests: every case in tests/data/requests/ against OpenSSH's ssh-keygen."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent import remote_request as rr

DATA = Path(__file__).resolve().parent.parent / "data" / "requests"
NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


def keygen(path: Path, comment: str = "") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True, timeout=30,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("reqkeys")
    return {
        "engineer": keygen(d / "engineer", "engineer@vendor.example"),
        "stranger": keygen(d / "stranger", "mallory@example.org"),
    }


def default_fields() -> dict[str, str]:
    return {
        "site": "acme-telecom",
        "ticket": "4711",
        "devices": "gw1 gw2",
        "profile": "sip-calls",
        "not_before": (NOW - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": (NOW + timedelta(hours=23)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nonce": "6f1c0e3a9b2d4f5e8a7c6b5d4e3f2a1b",
        "requested_by": "engineer@vendor.example",
    }


def render(case: Path, keys: dict[str, Path]) -> tuple[str, str]:
    """The note's text for a case file, and the refusal code it expects."""
    lines = case.read_text().splitlines()
    header = [ln[2:] for ln in lines if ln.startswith("# ")]
    template = "\n".join(ln for ln in lines if not ln.startswith("# ")) + "\n"
    opts: dict[str, list[str]] = {}
    for h in header:
        k, _, v = h.partition(": ")
        opts.setdefault(k, []).append(v)
    expect = opts.pop("expect")[0]
    fields = default_fields()
    for k in rr.FIELDS:
        if k in opts:
            fields[k] = opts.pop(k)[0].encode().decode("unicode_escape")
    body = "".join(f"{k}: {v}\n" for k, v in fields.items())
    for extra in opts.pop("add-field", []):
        body += extra + "\n"
    block = rr.sign(body, keys[opts.pop("signer", ["engineer"])[0]],
                    namespace=opts.pop("namespace", [rr.NAMESPACE])[0])  # fmt: skip
    for t in opts.pop("tamper", []):
        k, _, v = t.partition(": ")
        block = block.replace(f"{k}: {fields[k]}\n", f"{k}: {v}\n")
    for t in opts.pop("transform", []):
        if t == "indent-crlf":
            block = "".join("    " + ln + "\r\n" for ln in block.splitlines())
        elif t == "drop-end":
            block = block.replace(rr.END, "")
    if "pad" in opts:
        pad = int(opts.pop("pad")[0])
        block = block.replace("\nnonce:", "\n" + "\n" * pad + "nonce:")
    assert not opts, f"{case.name}: unknown header(s) {sorted(opts)}"
    unsigned = body and f"{rr.BEGIN}\n{body}{rr.END}\n"
    sig_only = block[block.index(rr.SIG_BEGIN) : block.index(rr.SIG_END) + len(rr.SIG_END)]
    note = (
        template.replace("{{BLOCK}}", block)
        .replace("{{UNSIGNED}}", unsigned)
        .replace("{{SIG_ONLY}}", sig_only)
    )
    return note, expect


CASES = sorted(DATA.glob("*.note"))


def test_the_corpus_is_there() -> None:
    assert len(CASES) >= 18


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_note(case: Path, keys: dict[str, Path]) -> None:
    note, expect = render(case, keys)
    engineer = (keys["engineer"].with_suffix(".pub")).read_text()
    if expect == "accepted":
        req, signer = rr.verify_note(note, [engineer], NOW)
        assert req.site == "acme-telecom" and req.ticket == "4711"
        assert req.devices == ("gw1", "gw2") and req.profile == "sip-calls"
        assert req.requested_by == "engineer@vendor.example"
        assert signer.startswith("ED25519 SHA256:")
        return
    with pytest.raises(rr.RequestRefused) as info:
        rr.verify_note(note, [engineer], NOW)
    assert info.value.code == expect, info.value.reason
    # a refusal is posted on the ticket: it never echoes what the note carried
    assert "rm -rf" not in info.value.reason and "\x1b" not in info.value.reason


def test_principals_bind_the_key_to_requested_by(keys: dict[str, Path]) -> None:
    pub = keys["engineer"].with_suffix(".pub").read_text().strip()
    body = "".join(f"{k}: {v}\n" for k, v in default_fields().items())
    note = rr.sign(body, keys["engineer"])
    bound = f"engineer@vendor.example {pub}"
    assert rr.verify_note(note, [bound], NOW)[0].requested_by == "engineer@vendor.example"
    fields = default_fields() | {"requested_by": "boss@vendor.example"}
    note = rr.sign("".join(f"{k}: {v}\n" for k, v in fields.items()), keys["engineer"])
    with pytest.raises(rr.RequestRefused) as info:
        rr.verify_note(note, [bound], NOW)
    assert info.value.code == "unknown-key"


def test_cert_authority_signs_short_lived_engineer_certificates(tmp_path: Path) -> None:
    ca = keygen(tmp_path / "ca")
    eng = keygen(tmp_path / "eng")
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", "eng-cert", "-n", "engineer@vendor.example",
         "-V", "-1h:+1h", str(eng.with_suffix(".pub"))], check=True, timeout=30,
    )  # fmt: skip
    cert = tmp_path / "eng-cert.pub"  # -Y sign -f CERT loads the private key beside it
    line = f"*@vendor.example cert-authority {ca.with_suffix('.pub').read_text().strip()}"
    now = datetime.now(UTC)
    fields = default_fields() | {
        "not_before": (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    note = rr.sign("".join(f"{k}: {v}\n" for k, v in fields.items()), cert)
    req, signer = rr.verify_note(note, [line], now)
    assert signer.startswith("ED25519-CERT ")
    assert req.requested_by == "engineer@vendor.example"
    # the bare engineer key is not listed: only the CA is trusted
    with pytest.raises(rr.RequestRefused):
        rr.verify_note(note, [eng.with_suffix(".pub").read_text()], now)


def test_revoked_key_is_refused(keys: dict[str, Path], tmp_path: Path) -> None:
    pub = keys["engineer"].with_suffix(".pub")
    revoked = tmp_path / "revoked"
    revoked.write_text(pub.read_text())
    body = "".join(f"{k}: {v}\n" for k, v in default_fields().items())
    note = rr.sign(body, keys["engineer"])
    with pytest.raises(rr.RequestRefused) as info:
        rr.verify_note(note, [pub.read_text()], NOW, revoked=revoked)
    assert info.value.code == "unknown-key" and "revoked" in info.value.reason
    assert rr.verify_note(note, [pub.read_text()], NOW)  # the same note, not revoked


def test_no_request_keys_means_no_requests(keys: dict[str, Path]) -> None:
    body = "".join(f"{k}: {v}\n" for k, v in default_fields().items())
    with pytest.raises(rr.RequestRefused) as info:
        rr.verify_note(rr.sign(body, keys["engineer"]), [], NOW)
    assert info.value.code == "unknown-key"


def test_body_text_round_trips(keys: dict[str, Path]) -> None:
    body = rr.body_text("acme-telecom", "#4711", ["gw1"], "default", timedelta(hours=24),
                        "engineer@vendor.example", now=NOW)  # fmt: skip
    req, _ = rr.verify_note(
        rr.sign(body, keys["engineer"]),
        [keys["engineer"].with_suffix(".pub").read_text()],
        NOW,
    )
    assert req.ticket == "4711" and req.not_after == NOW + timedelta(hours=24)
    with pytest.raises(rr.RequestRefused):
        rr.body_text("acme", "4711", ["gw 1;rm"], "default", timedelta(hours=1), "e@v")
