"""``redmine`` backend: the bundle attached to a Redmine issue through the REST API.

One delivery is four steps, each safe to repeat (idempotent on ``meta.bundle_id``):

1. **Ticket.** ``meta.ticket`` (``collect --ticket``), else the ticket this item already
   created (checkpoint ``ticket``), else -- when an earlier attempt got as far as creating
   one (checkpoint ``creating``) -- one found by its marker line
   ``fieldtrace-bundle: <bundle_id>`` in the description (created just before a crash or a
   lost answer, its number never recorded), else ``POST /issues.json`` creates one in the
   configured project/tracker, with the site's company, contract and contact, the devices
   and the profile in the description. Its number is checkpointed at once.
2. **Already there?** ``GET /issues/N.json?include=attachments``: an attachment named like
   the bundle whose description carries its id means a previous attempt finished: done.
   A closed ticket (status ``is_closed``) is refused with a permanent error: the vendor
   closed the case, so new material needs a new ticket (``collect`` without ``--ticket``);
   attaching silently to a closed case would go unseen.
3. **Upload.** Unless the checkpoint holds an upload token: ``POST /uploads.json`` streams
   the file (``application/octet-stream``, Content-Length from the file, read in 1 MiB
   blocks: memory stays flat whatever the size). The token is checkpointed at once, and its
   digest part (sha256 in Redmine >= 4.2) is checked against the bundle's.
4. **Attach.** ``PUT /issues/N.json`` with the token and a journal note built from the
   manifest summary (what was collected, what failed). Redmine answers 422 for a token it
   no longer knows (pruned): the token is dropped and the bundle uploaded again.

A crash anywhere therefore ends with exactly one attachment: before step 3's checkpoint the
orphan upload is never attached (Redmine prunes it); after it, the same token is attached;
after step 4, step 2 sees the attachment.

Errors: connection failures, timeouts, resets, 5xx, 408 and 429 are transient; 401/403
(API key, permissions), 404 (unknown ticket or project), 422 (refused: too large, invalid
field) and a closed ticket are permanent, with a message saying what to fix. The API key is
sent as ``X-Redmine-API-Key`` and never logged.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import requests
from urllib3.exceptions import NewConnectionError

from uploader.base import (
    CAPABILITIES,
    Checkpoint,
    DeliveryMeta,
    MemoryCheckpoint,
    Note,
    PermanentError,
    Receipt,
    TransientError,
    big_blocks_adapter,
    host_port,
    network_problem,
)

log = logging.getLogger(__name__)
MARKER = "fieldtrace-bundle:"


@dataclass(frozen=True)
class RedmineOptions:
    url: str
    api_key: str
    project: str
    tracker: str | int | None = None
    priority: str | int | None = None
    timeout: float = 60.0
    verify: bool | str = True
    # how long a request Redmine received may still be running after we stopped waiting
    # for its answer (default 2 x timeout + 2 s); a lost ticket creation is not repeated
    # before that, so a slow HelpDesk does not get two tickets
    settle: float | None = None


class _NotSent(TransientError):
    """No connection could be made: the request certainly did not reach the server."""


class _Reader:
    """A file for requests to stream: known length, reads counted for progress."""

    def __init__(self, fh: BinaryIO, size: int, progress: Callable[[int], None] | None) -> None:
        self.fh = fh
        self.size = size
        self.progress = progress

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        if self.progress is not None and data:
            self.progress(len(data))
        return data


def parse_ticket(ticket: str) -> int:
    """``"123"`` or ``"#123"`` -> 123; anything else is a PermanentError."""
    m = re.fullmatch(r"\s*#?(\d{1,12})\s*", ticket)
    if not m or int(m.group(1)) == 0:
        raise PermanentError(f"ticket {ticket!r} is not a Redmine issue number (like 1234)")
    return int(m.group(1))


def marker(meta: DeliveryMeta) -> str:
    return f"{MARKER} {meta.bundle_id}"


class RedmineBackend:
    name = "redmine"
    capabilities = frozenset(CAPABILITIES)

    def __init__(
        self, options: RedmineOptions, progress: Callable[[int], None] | None = None
    ) -> None:
        self.o = options
        self.progress = progress
        self.settle = options.settle if options.settle is not None else 2 * options.timeout + 2
        self._ids: dict[str, int] = {}

    # -- HTTP -------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        s = requests.Session()
        s.headers["X-Redmine-API-Key"] = self.o.api_key
        s.headers["User-Agent"] = "fieldtrace"
        s.verify = self.o.verify
        s.mount("http://", big_blocks_adapter())
        s.mount("https://", big_blocks_adapter())
        return s

    def _call(
        self, s: requests.Session, method: str, path: str, what: str, **kw: Any
    ) -> requests.Response:
        timeout = (min(10.0, self.o.timeout), self.o.timeout)
        try:
            r = s.request(method, self.o.url + path, timeout=timeout, **kw)
        except requests.exceptions.SSLError as exc:
            raise PermanentError(f"{what}: {self._problem(exc)}") from None
        except requests.exceptions.ConnectTimeout:  # before Timeout: it is one too
            raise _NotSent(f"{what}: {self._where()} did not accept a connection in time") from None
        except requests.exceptions.Timeout:
            raise TransientError(f"{what}: {self._where()} did not answer in time") from None
        except requests.exceptions.ConnectionError as exc:
            reason = getattr(exc.args[0] if exc.args else None, "reason", None)
            cls = _NotSent if isinstance(reason, NewConnectionError) else TransientError
            raise cls(f"{what}: {self._problem(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise TransientError(f"{what}: {self._problem(exc)}") from None
        self._raise_for(r, what)
        return r

    def _where(self) -> str:
        host, port = host_port(self.o.url)
        return f"{host}:{port}"

    def _problem(self, exc: Exception) -> str:
        return network_problem(exc, *host_port(self.o.url))

    def _raise_for(self, r: requests.Response, what: str) -> None:
        code = r.status_code
        if code < 400:
            return
        detail = _errors(r)
        if code >= 500 or code in (408, 429):
            raise TransientError(f"{what}: HTTP {code} from {self.o.url}{detail}")
        if code == 401:
            raise PermanentError(
                f"{what}: {self.o.url} refused the API key (HTTP 401); check [helpdesk] "
                "api_key and that the REST API is enabled in Redmine"
            )
        if code == 403:
            raise PermanentError(
                f"{what}: HTTP 403: the API user may not do this in Redmine (check its role "
                f"in project {self.o.project!r}){detail}"
            )
        if code == 413:
            raise PermanentError(f"{what}: HTTP 413: the HelpDesk refuses a file this large")
        raise PermanentError(f"{what}: HTTP {code}{detail}")

    # -- the delivery -----------------------------------------------------------------
    def deliver(
        self, bundle_path: Path, meta: DeliveryMeta, checkpoint: Checkpoint | None = None
    ) -> Receipt:
        cp = checkpoint if checkpoint is not None else MemoryCheckpoint()
        with self._session() as s:
            number, created = self._ticket(s, meta, cp)
            issue = self._issue(s, number)
            att = _attachment(issue, meta)
            if att is not None:
                log.info("redmine: %s is already on ticket #%d", meta.name, number)
                return self._receipt(number, att, created, already=True)
            status = issue.get("status") or {}
            if status.get("is_closed"):
                raise PermanentError(
                    f"ticket #{number} is closed (status {status.get('name')}); new material "
                    "needs an open ticket: reopen it in the HelpDesk, or collect again without "
                    "--ticket to open a new one"
                )
            token = cp.get("upload_token")
            if not token:
                token = self._upload(s, bundle_path, meta)
                cp.save(upload_token=token)
            self._attach(s, number, token, meta, cp)
            log.info("redmine: attached %s to ticket #%d", meta.name, number)
            return self._receipt(number, None, created, already=False)

    def _receipt(
        self, number: int, att: dict[str, Any] | None, created: bool, already: bool
    ) -> Receipt:
        ticket_url = f"{self.o.url}/issues/{number}"
        return Receipt(
            self.name,
            str(att.get("content_url")) if att and att.get("content_url") else ticket_url,
            str(number),
            {
                "ticket_url": ticket_url,
                "attachment_id": att.get("id") if att else None,
                "created_ticket": created,
                "already_attached": already,
            },
        )

    def _ticket(self, s: requests.Session, meta: DeliveryMeta, cp: Checkpoint) -> tuple[int, bool]:
        if meta.ticket:
            return parse_ticket(meta.ticket), False
        if cp.get("ticket"):
            return int(cp.get("ticket")), True
        found = None
        creating = cp.get("creating")
        if creating:  # an earlier attempt sent the create and never heard back
            found = self._find_created(s, meta)
            wait = float(creating) + self.settle - time.time()
            if found is None and wait > 0:
                # Redmine may still be working on that request: creating another ticket now
                # could make two; look again once it must have finished
                raise TransientError(
                    f"creating the ticket: no answer to the first try yet; checking again in "
                    f"{wait:.0f}s before creating it"
                )
        if found is None:
            # from here on, a failure is ambiguous: even a 500 can come after the commit
            # (an after_commit hook failing), so the next attempt looks before creating
            cp.save(creating=time.time())
            try:
                found = self._create(s, meta)
            except _NotSent:
                cp.save(creating=None)  # never reached Redmine: nothing to look for
                raise
        cp.save(ticket=str(found), creating=None)
        return found, True

    def _find_created(self, s: requests.Session, meta: DeliveryMeta) -> int | None:
        r = self._call(
            s,
            "GET",
            "/issues.json",
            "looking for this bundle's ticket",
            params={
                "project_id": self.o.project,
                "status_id": "*",
                "description": f"~{marker(meta)}",
                "sort": "id",
                "limit": 5,
            },
        )
        ids = [int(i["id"]) for i in _json(r).get("issues", [])]
        return min(ids) if ids else None

    def _create(self, s: requests.Session, meta: DeliveryMeta) -> int:
        fields: dict[str, Any] = {
            "project_id": self.o.project,
            "subject": subject(meta),
            "description": description(meta),
        }
        if self.o.tracker is not None:
            fields["tracker_id"] = self._lookup(s, "tracker", self.o.tracker)
        priority = meta.priority or self.o.priority
        if priority:
            fields["priority_id"] = self._lookup(s, "priority", priority)
        r = self._call(s, "POST", "/issues.json", "creating the ticket", json={"issue": fields})
        number = int(_json(r)["issue"]["id"])
        log.info("redmine: created ticket #%d for bundle %s", number, meta.bundle_id)
        return number

    def _lookup(self, s: requests.Session, kind: str, value: str | int) -> int:
        if isinstance(value, int) or str(value).isdigit():
            return int(value)
        key = f"{kind}:{str(value).lower()}"
        if key not in self._ids:
            path, field = {
                "tracker": ("/trackers.json", "trackers"),
                "priority": ("/enumerations/issue_priorities.json", "issue_priorities"),
            }[kind]
            rows = _json(self._call(s, "GET", path, f"reading the {kind}s")).get(field, [])
            for row in rows:
                self._ids[f"{kind}:{str(row['name']).lower()}"] = int(row["id"])
            if key not in self._ids:
                names = ", ".join(str(row["name"]) for row in rows)
                raise PermanentError(
                    f"[helpdesk] {kind} {value!r} does not exist in Redmine (known: {names})"
                )
        return self._ids[key]

    def _issue(self, s: requests.Session, number: int) -> dict[str, Any]:
        try:
            r = self._call(
                s,
                "GET",
                f"/issues/{number}.json",
                f"reading ticket #{number}",
                params={"include": "attachments"},
            )
        except PermanentError as exc:
            if "HTTP 404" in str(exc):
                raise PermanentError(
                    f"ticket #{number} does not exist in {self.o.url} (or the API user cannot "
                    "see it); check the ticket number"
                ) from None
            raise
        issue: dict[str, Any] = _json(r)["issue"]
        return issue

    def _upload(self, s: requests.Session, path: Path, meta: DeliveryMeta) -> str:
        try:
            fh = open(path, "rb")  # noqa: SIM115
        except OSError as exc:
            raise PermanentError(f"{path}: cannot read the bundle: {exc.strerror}") from exc
        with fh:
            size = _fsize(fh)
            r = self._call(
                s,
                "POST",
                "/uploads.json",
                f"uploading {meta.name}",
                params={"filename": meta.name},
                data=_Reader(fh, size, self.progress),
                headers={"Content-Type": "application/octet-stream"},
            )
        token = str(_json(r)["upload"]["token"])
        digest = token.partition(".")[2]
        if len(digest) == 64 and meta.sha256 and len(meta.sha256) == 64 and digest != meta.sha256:
            raise TransientError(
                f"uploading {meta.name}: Redmine stored different bytes (sha256 {digest[:12]}... "
                f"!= {meta.sha256[:12]}...); will upload again"
            )
        log.info("redmine: uploaded %s (%d bytes)", meta.name, size)
        return token

    def _attach(
        self, s: requests.Session, number: int, token: str, meta: DeliveryMeta, cp: Checkpoint
    ) -> None:
        body = {
            "issue": {
                "notes": note(meta),
                "uploads": [
                    {
                        "token": token,
                        "filename": meta.name,
                        "description": f"fieldtrace bundle {meta.bundle_id}",
                        "content_type": "application/octet-stream",
                    }
                ],
            }
        }
        try:
            self._call(
                s, "PUT", f"/issues/{number}.json", f"attaching to ticket #{number}", json=body
            )
        except PermanentError as exc:
            if "could not be saved" in str(exc):  # Redmine no longer knows the token
                cp.save(upload_token=None)
                raise TransientError(
                    f"ticket #{number}: Redmine no longer has the uploaded file; will upload again"
                ) from None
            raise

    # -- the service's side: notes, search, ticket state --------------------------------
    def add_note(self, ticket: str, text: str) -> None:
        number = parse_ticket(ticket)
        with self._session() as s:
            self._call(
                s, "PUT", f"/issues/{number}.json", f"adding a note to ticket #{number}",
                json={"issue": {"notes": text}},
            )  # fmt: skip

    def ticket_state(self, ticket: str) -> str:
        number = parse_ticket(ticket)
        with self._session() as s:
            status = self._issue(s, number).get("status") or {}
        return "closed" if status.get("is_closed") else "open"

    def find_marker(self, marker_line: str, ticket: str | None = None) -> str | None:
        """The ticket whose description (or, given ``ticket``, whose notes) holds the line."""
        with self._session() as s:
            if ticket is not None:
                number = parse_ticket(ticket)
                r = self._call(s, "GET", f"/issues/{number}.json", f"reading ticket #{number}",
                               params={"include": "journals"})  # fmt: skip
                issue = _json(r).get("issue") or {}
                texts = [str(issue.get("description") or "")]
                texts += [str(j.get("notes") or "") for j in issue.get("journals") or []]
                return str(number) if any(marker_line in t for t in texts) else None
            r = self._call(
                s, "GET", "/issues.json", "searching for an earlier write",
                params={"project_id": self.o.project, "status_id": "*",
                        "description": f"~{marker_line}", "sort": "id", "limit": 5},
            )  # fmt: skip
            ids = [int(i["id"]) for i in _json(r).get("issues", [])]
            return str(min(ids)) if ids else None

    def notes_since(self, since: str | None) -> tuple[list[Note], str]:
        """Notes added to the project's tickets after ``since`` (an ISO time; None: now).

        Returns the notes, oldest first, and the cursor for the next call. Tickets are
        those updated since then (Redmine's ``updated_on`` filter), open or closed (the
        note says which), read with their journals; the cursor steps back a minute to
        cover clock skew, so a caller must drop notes it has seen (by id)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
        if since is None:
            return [], now
        notes: list[Note] = []
        with self._session() as s:
            offset = 0
            while True:
                r = self._call(
                    s, "GET", "/issues.json", "reading updated tickets",
                    params={"project_id": self.o.project, "status_id": "*",
                            "updated_on": f">={since}", "sort": "updated_on",
                            "limit": 100, "offset": offset},
                )  # fmt: skip
                page = _json(r)
                issues = page.get("issues") or []
                for issue in issues:
                    number = int(issue["id"])
                    full = _json(self._call(
                        s, "GET", f"/issues/{number}.json", f"reading ticket #{number}",
                        params={"include": "journals"},
                    )).get("issue") or {}  # fmt: skip
                    closed = bool((full.get("status") or {}).get("is_closed"))
                    for j in full.get("journals") or []:
                        text = j.get("notes") or ""
                        created = str(j.get("created_on") or "")
                        if not text or created < since:
                            continue
                        author = str((j.get("user") or {}).get("name") or "")
                        notes.append(Note(str(number), str(j.get("id")), author, created,
                                          str(text), ticket_open=not closed))  # fmt: skip
                offset += len(issues)
                if not issues or offset >= int(page.get("total_count") or 0):
                    break
        notes.sort(key=lambda n: (n.created, int(n.id) if n.id.isdigit() else 0))
        return notes, now


def subject(meta: DeliveryMeta) -> str:
    if meta.subject:
        return meta.subject[:255]
    who = " ".join(x for x in (meta.company, f"({meta.contract})" if meta.contract else "") if x)
    devices = ", ".join(meta.devices[:5]) + (" ..." if len(meta.devices) > 5 else "")
    text = f"{who or 'Site'}: {meta.profile or 'diagnostics'} diagnostics from {devices or 'site'}"
    return text[:255]


def description(meta: DeliveryMeta) -> str:
    lines = []
    if meta.preface:
        lines += [meta.preface.strip(), ""]
    if meta.description:
        lines += [meta.description.strip(), ""]
    lines += [
        "Diagnostics collected by fieldtrace.",
        "",
        f"Company: {meta.company or '(not configured)'}",
        f"Contract: {meta.contract or '(not configured)'}",
        f"Contact: {meta.contact_email or '(not configured)'}",
        f"Devices: {', '.join(meta.devices) or '(none)'}",
        f"Profile: {meta.profile}",
        f"Collected: {meta.created}",
        "",
        marker(meta),
        *meta.markers,
    ]
    return "\n".join(lines)


def note(meta: DeliveryMeta) -> str:
    lines = [meta.preface.strip(), ""] if meta.preface else []
    lines += [
        f"Diagnostics bundle attached: {meta.name} ({meta.size} bytes, sha256 {meta.sha256})",
        "",
        meta.summary.strip() or "(no summary)",
        "",
        "The bundle is encrypted to the vendor's key: fieldtrace bundle open FILE",
        marker(meta),
        *meta.markers,
    ]
    return "\n".join(lines)


def _attachment(issue: dict[str, Any], meta: DeliveryMeta) -> dict[str, Any] | None:
    for att in issue.get("attachments") or []:
        if att.get("filename") == meta.name and meta.bundle_id in (att.get("description") or ""):
            return dict(att)
    return None


def _json(r: requests.Response) -> dict[str, Any]:
    try:
        data = r.json()
    except ValueError:
        raise TransientError(
            f"HTTP {r.status_code} from {r.url.split('?')[0]}: not a JSON answer"
        ) from None
    if not isinstance(data, dict):
        raise TransientError(f"HTTP {r.status_code} from {r.url.split('?')[0]}: unexpected JSON")
    return data


def _errors(r: requests.Response) -> str:
    try:
        errors = r.json().get("errors")
    except (ValueError, AttributeError):
        return ""
    if isinstance(errors, list) and errors:
        return ": " + "; ".join(str(e) for e in errors)
    return ""


def _fsize(fh: BinaryIO) -> int:
    return os.fstat(fh.fileno()).st_size
