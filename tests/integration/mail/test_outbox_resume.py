"""kill -9 of ``collect`` while it mails the parts, then ``outbox deliver``: only the parts
still missing are sent (the outbox item's checkpoint), each exactly once."""

from __future__ import annotations

import hashlib
import json
import re
import signal

import pytest

from tests.conftest import Cli
from tests.integration.mail.support import SmtpServer, kill_sender_on
from tests.integration.mail.test_collect_email import email_site

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_kill_9_mid_delivery_then_outbox_deliver_sends_only_missing_parts(
    cli: Cli, smtp: SmtpServer
) -> None:
    email_site(cli, smtp, "max_attachment_bytes = 200")
    proc = cli.start("collect", "--json")
    kill_sender_on(smtp.recorder, proc.pid, 2)
    try:
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(smtp.recorder.messages) == 2
    smtp.recorder.on_data = None
    out = cli.run("outbox", "deliver", "--json", check=0)
    rows = json.loads(out.stdout)
    assert [r["outcome"] for r in rows] == ["sent"], rows
    parts = [m.message["X-Fieldtrace-Part"] for m in smtp.recorder.messages]
    total = parts[0].split("/")[1]
    assert parts == [f"{i}/{total}" for i in range(1, int(total) + 1)], parts
    joined = b"".join(m.attachment()[1] for m in smtp.recorder.messages)
    found = re.search(r"sha256 ([0-9a-f]{64})", smtp.recorder.messages[0].body())
    assert found and hashlib.sha256(joined).hexdigest() == found.group(1)
    assert joined.startswith(b"age-encryption.org/v1")
