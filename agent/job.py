"""A collection job, end to end: plan -> run -> scrub -> manifest -> bundle -> outbox.

The CLI, and later the scheduler and remote requests, all call ``prepare`` then ``execute``.
``prepare`` validates everything (config, KB, devices, profile, recipients, keys) and
touches no device; ``execute`` does the work. Plaintext artifacts exist only in a private
staging directory that is removed when the job ends, whatever happens.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import logging
import os
import shutil
import socket
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from agent import __version__
from agent.access import device_access_info
from agent.attachments import Attachment, check_attachments, manifest_entries, stage_attachments
from agent.bundle import FORMAT, SUFFIX, PackStats, write_bundle
from agent.delivery import check_room, make_backend, make_outbox
from agent.errors import EXIT_OK, EXIT_PARTIAL, ConfigError, RuntimeFailure
from agent.kb import KnowledgeBase, load_kb
from agent.keys import (
    IDENTITY_FILE,
    SIGNING_KEY_FILE,
    SigningKey,
    home,
    load_identity,
    load_signing_key,
)
from agent.runner import Plan, PlannedStep, Runner, StepResult, make_plan, select_devices, utcnow
from agent.scrub import Scrubber, scrub_many
from agent.settings import LoadedSettings, SecretRef, Settings
from collectors.base import Artifact, sha256_file
from uploader.base import Backend, DeliveryMeta
from uploader.outbox import Attempt, OutboxFull

log = logging.getLogger(__name__)
FAILED_STATES = {"failed", "timeout", "partial"}


class Reporter(Protocol):
    """Progress hooks; the CLI shows them on a terminal, the daemon logs them."""

    def step(self, event: str, ps: PlannedStep, result: StepResult | None) -> None: ...
    def phase(self, name: str, total: int = 0) -> None: ...
    def advance(self, n: int) -> None: ...


class _Silent:
    def step(self, event: str, ps: PlannedStep, result: StepResult | None) -> None:
        pass

    def phase(self, name: str, total: int = 0) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


@dataclass(frozen=True)
class JobRequest:
    devices: tuple[str, ...] = ()
    types: tuple[str, ...] = ()  # every device of these KB types, besides ``devices``
    profile: str | None = None
    ticket: str | None = None
    trigger: str = "cli"
    requested_by: str = ""
    output: Path | None = None
    subject: str = ""  # for a new ticket (collect --subject)
    description: str = ""  # for a new ticket (collect --description)
    attachments: tuple[Path, ...] = ()  # files added to the bundle (collect --attach)
    priority: str = ""  # HelpDesk priority of a new ticket (the service's health checks)
    preface: str = ""  # first lines of the new ticket's description or of the note
    markers: tuple[str, ...] = ()  # marker lines for the HelpDesk (problem, operation)


@dataclass
class Prepared:
    loaded: LoadedSettings
    kb: KnowledgeBase
    plan: Plan
    request: JobRequest
    home: Path
    recipients: list[Any]
    signing_key: SigningKey
    scrubber: Scrubber
    backend: Backend | None = None  # None with --output
    attachments: list[Attachment] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return self.loaded.settings


@dataclass
class JobResult:
    job_id: str
    bundle_id: str
    bundle: Path | None
    manifest: dict[str, Any]
    results: list[StepResult]
    pack: PackStats | None = None
    delivery: Attempt | None = None
    interrupted: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    ticket: str | None = None  # the HelpDesk ticket (given, or created by the delivery)
    ticket_url: str | None = None

    @property
    def exit_code(self) -> int:
        bad = any(r.status in FAILED_STATES for r in self.results)
        parked = self.delivery is not None and self.delivery.outcome == "parked"
        return EXIT_PARTIAL if bad or self.interrupted or parked else EXIT_OK


def requester() -> str:
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"{user}@{socket.gethostname()}"


def vendor_recipients(settings: Settings) -> list[Any]:
    """The vendor's age recipients (X25519 or SSH keys), parsed."""
    import pyrage

    out: list[Any] = []
    for i, r in enumerate(settings.vendor.recipients):
        try:
            out.append(
                pyrage.x25519.Recipient.from_str(r)
                if r.startswith("age1")
                else pyrage.ssh.Recipient.from_str(r)
            )
        except Exception as exc:  # validated at load; kept as a guard
            raise ConfigError(f"vendor.recipients[{i}]: invalid recipient: {exc}") from None
    return out


def site_recipients(settings: Settings, base: Path) -> list[Any]:
    """The vendor's recipients plus the site identity (so the site can open its bundles)."""
    out = vendor_recipients(settings)
    ident = load_identity(base)
    out.append(ident.to_public())  # type: ignore[attr-defined]
    return out


def _secret_literals(settings: Settings) -> list[str]:
    """Every secret value the site config names, so it can be masked wherever it shows up."""
    refs: list[SecretRef] = list(settings.scrub.values)
    values = [r.resolve() for r in refs]  # explicit scrub values must resolve
    for dev in settings.devices:
        for ref in (
            dev.ssh.password if dev.ssh else None,
            dev.ssh.key_passphrase if dev.ssh else None,
            dev.snmp.community if dev.snmp else None,
            dev.snmp.auth_key if dev.snmp else None,
            dev.snmp.priv_key if dev.snmp else None,
        ):
            if ref is not None:
                with contextlib.suppress(ConfigError):  # the step using it reports it
                    values.append(ref.resolve())
    for key in ("api_key", "password", "auth_value"):  # the HelpDesk backends' secrets
        ref = getattr(settings.helpdesk, key, None)
        if isinstance(ref, SecretRef):
            with contextlib.suppress(ConfigError):  # building the backend reports it
                values.append(ref.resolve())
    return values


def load_context(loaded: LoadedSettings) -> KnowledgeBase:
    """The KB with the site's directories, checked against the inventory's device types."""
    kb = load_kb(loaded.settings.kb.paths, loaded.source)
    loaded.settings.check_types(kb.types, loaded.source)
    return kb


@dataclass(frozen=True)
class Checked:
    """A job that passed every check: its KB, plan, attachments and backend."""

    kb: KnowledgeBase
    plan: Plan
    attachments: list[Attachment]
    backend: Backend | None  # None with --output
    home: Path


def check_job(
    loaded: LoadedSettings,
    request: JobRequest,
    kb: KnowledgeBase | None = None,
    plan: Plan | None = None,
    touch: bool = True,
) -> Checked:
    """Validate the whole job; ConfigError (exit 2) or RuntimeFailure before anything runs.

    With ``touch=False`` (``collect --dry-run``) nothing is created or written: no
    $FIELDTRACE_HOME, site keys (checked only if they exist), outbox, staging or probe file.
    """
    settings = loaded.settings
    attachments = check_attachments(request.attachments)
    kb = kb or load_context(loaded)
    if plan is None:
        devices = select_devices(settings, list(request.devices), request.types)
        profile = request.profile or settings.collect.default_profile
        plan = make_plan(settings, kb, devices, profile)
    base = home(create=touch)
    backend = None
    if request.output is not None:
        out = request.output
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--output {out}: a file of that name exists already")
        _check_writable(out if out.is_dir() else out.parent, touch, "--output")
    else:
        try:
            backend = make_backend(settings, base)
        except ConfigError as exc:
            raise ConfigError(f"{loaded.source}: {exc}") from None
        if request.ticket and settings.helpdesk.backend == "redmine":
            from uploader.base import PermanentError
            from uploader.redmine import parse_ticket

            try:
                parse_ticket(request.ticket)
            except PermanentError as exc:
                raise ConfigError(f"--ticket: {exc}") from None
        if touch:
            _check_writable(base / "outbox" / "tmp")
        check_room(make_outbox(settings, base, create=touch))
    vendor_recipients(settings)
    if not touch:  # what prepare would load (or create): checked when it is there
        if (base / IDENTITY_FILE).exists():
            load_identity(base, create=False)
        if (base / SIGNING_KEY_FILE).exists():
            load_signing_key(base, create=False)
        _secret_literals(settings)  # [scrub] values must resolve
    return Checked(kb, plan, attachments, backend, base)


def prepare(
    loaded: LoadedSettings,
    request: JobRequest,
    kb: KnowledgeBase | None = None,
    plan: Plan | None = None,
) -> Prepared:
    """Validate the whole job (``check_job``), then load or create the site's keys.

    ``plan`` replaces the KB profile's plan (an ad-hoc job such as ``fieldtrace capture``).
    """
    settings = loaded.settings
    checked = check_job(loaded, request, kb, plan)
    base = checked.home
    return Prepared(
        loaded=loaded,
        kb=checked.kb,
        plan=checked.plan,
        request=request,
        home=base,
        recipients=site_recipients(settings, base),
        signing_key=load_signing_key(base),
        scrubber=Scrubber(settings.scrub.keywords, _secret_literals(settings)),
        backend=checked.backend,
        attachments=checked.attachments,
    )


def _check_writable(directory: Path, touch: bool = True, option: str = "") -> None:
    """Refuse to start collecting when the bundle could not be written anyway.

    ``option`` names the command-line option that chose the place (a usage error, exit 2);
    otherwise it is the outbox (a runtime error, exit 3). Without ``touch``, the nearest
    existing directory must be writable, and nothing is made.
    """
    error = ConfigError if option else RuntimeFailure
    label = f"{option} {directory}" if option else str(directory)
    fix = f"Fix {option} or" if option else "Fix the outbox path or"
    if not touch:
        existing = directory
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
            return
        why = "not a directory" if existing.exists() and not existing.is_dir() else "not writable"
        raise error(
            f"{label}: cannot write bundles there ({existing}: {why}); {fix.lower()} its "
            "permissions"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError as exc:
        raise error(
            f"{label}: cannot write bundles there ({exc.strerror or exc}); nothing was "
            f"collected. {fix} its permissions and run again"
        ) from None


def bundle_name(settings: Settings, plan: Plan, when: datetime, bundle_id: str) -> str:
    device = plan.devices[0].name if len(plan.devices) == 1 else "multi"
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    return f"{settings.site_slug()}-{device}-{plan.profile}-{stamp}-{bundle_id[:8]}{SUFFIX}"


class Staging:
    """A private (0700) staging directory, locked while in use, always removed."""

    def __init__(self, base: Path, job_id: str) -> None:
        self.root = base / "staging"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._sweep()
        self.path = self.root / job_id
        self.path.mkdir(mode=0o700)
        self._lock = open(self.path / ".lock", "w")  # noqa: SIM115
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _sweep(self) -> None:
        """Remove staging dirs left by a job that was killed (their lock is free)."""
        for d in self.root.iterdir():
            lock = d / ".lock"
            try:
                with open(lock, "a") as fh:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another job is running
            except OSError:
                pass
            log.warning("removing staging left by an interrupted job: %s", d)
            shutil.rmtree(d, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.close()


def execute(prep: Prepared, reporter: Reporter | None = None) -> JobResult:
    rep = reporter or _Silent()
    settings = prep.settings
    job_id = uuid.uuid4().hex
    bundle_id = uuid.uuid4().hex
    created = datetime.now(UTC)
    staging = Staging(prep.home, job_id)
    try:
        runner = Runner(
            prep.plan,
            staging.path,
            settings.collect.max_parallel_devices,
            rep.step,
            prep.home,
            prep.scrubber,
            access=functools.partial(device_access_info, settings),
        )
        rep.phase("collect", len(prep.plan.steps))
        started = utcnow()
        results = runner.run()
        finished = utcnow()
        attached, attach_errors = stage_attachments(staging.path, prep.attachments)
        rep.phase("scrub", sum(len(r.artifacts) for r in results) + len(attached))
        counts = scrub_and_hash(prep.scrubber, staging.path, results, rep, attached)
        manifest = build_manifest(
            prep, job_id, bundle_id, created, started, finished, results, runner.interrupted
        )
        manifest["attachments"] = manifest_entries(prep.attachments, attached, attach_errors)
        subject = _scrubbed(prep.scrubber, prep.request.subject)
        description = _scrubbed(prep.scrubber, prep.request.description)
        manifest["job"].update(subject=subject, description=description)
        name = bundle_name(settings, prep.plan, created, bundle_id)
        result = JobResult(
            job_id,
            bundle_id,
            None,
            manifest,
            results,
            interrupted=runner.interrupted,
            counts=counts,
        )
        total = sum(a["size"] for s in manifest["steps"] for a in s["artifacts"])
        total += sum(a.size for a in attached)
        rep.phase("pack", total)
        out = prep.request.output
        outbox = None if out is not None else make_outbox(settings, prep.home)
        if out is not None:
            dest = out / name if out.is_dir() else out
        else:
            assert outbox is not None
            dest = outbox.tmp_dir() / name
        result.pack = write_bundle(
            dest,
            name.removesuffix(SUFFIX),
            manifest,
            staging.path,
            prep.signing_key,
            prep.recipients,
            created.timestamp(),
            rep.advance,
        )
        if outbox is None:  # --output: the technician takes it from here
            result.bundle = dest
            return result
        tmp = dest
        meta = DeliveryMeta(
            bundle_id=bundle_id,
            name=name,
            size=result.pack.encrypted_bytes,
            sha256=sha256_file(tmp),
            ticket=prep.request.ticket,
            company=settings.site.company,
            contract=settings.site.contract,
            contact_email=settings.site.contact_email,
            devices=tuple(d.name for d in prep.plan.devices),
            profile=prep.plan.profile,
            summary=summary_text(manifest),
            created=created.isoformat(),
            subject=subject,
            description=description,
            priority=prep.request.priority,
            preface=_scrubbed(prep.scrubber, prep.request.preface),
            markers=prep.request.markers,
        )
        try:
            item = outbox.put(tmp, meta)
        except OutboxFull as exc:
            raise RuntimeFailure(
                f"{exc}. The new bundle was NOT queued; it is kept at {tmp} (take it from "
                "there, or free room and collect again)"
            ) from None
        result.bundle = item.bundle
        result.ticket = prep.request.ticket
        rep.phase("deliver", meta.size if settings.helpdesk.backend != "directory" else 0)
        backend = make_backend(settings, prep.home, rep.advance)  # with upload progress
        try:
            attempts = outbox.deliver(backend, only=name)
        except KeyboardInterrupt:  # the bundle is safe in the queue; the next run resumes
            log.warning("delivery of %s interrupted; it stays queued", name)
            attempts = [Attempt(item, "retry", "interrupted (Ctrl-C); the bundle stays queued")]
        for attempt in attempts:
            result.delivery = attempt
            if attempt.receipt is not None:
                result.ticket = attempt.receipt.ticket or result.ticket
                result.ticket_url = attempt.receipt.detail.get("ticket_url")
                # the directory backend's copy is the bundle now; a remote one is not local
                local = attempt.receipt.backend == "directory"
                result.bundle = Path(attempt.receipt.location) if local else None
            else:  # not delivered yet: the ticket it may have created already
                made = (attempt.item.record.get("checkpoint") or {}).get("ticket")
                result.ticket = result.ticket or (str(made) if made else None)
        return result
    finally:
        staging.remove()


def scrub_and_hash(
    scrubber: Scrubber,
    staging: Path,
    results: list[StepResult],
    rep: Reporter,
    extra: list[Artifact] | None = None,
) -> dict[str, int]:
    """Scrub what was not scrubbed on its way in (and ``extra`` files); record digests."""
    totals: Counter[str] = Counter()
    arts = [a for res in results for a in res.artifacts] + list(extra or ())
    todo = []
    for art in arts:
        if art.scrubbed_on_write or (art.binary and art.written_sha256):
            art.sha256 = art.written_sha256
            totals.update(art.scrubbed)
            rep.advance(1)
        else:
            todo.append(art)
    try:
        paths = [staging / a.path for a in todo]
        for art, (counts, digest, size) in zip(todo, scrub_many(scrubber, paths), strict=True):
            art.scrubbed = counts or {}
            art.sha256 = digest
            art.size = size
            totals.update(art.scrubbed)
            rep.advance(1)
    except OSError as exc:
        raise RuntimeFailure(f"scrubbing the artifacts failed: {exc.strerror or exc}") from exc
    return dict(totals)


def build_manifest(
    prep: Prepared,
    job_id: str,
    bundle_id: str,
    created: datetime,
    started: str,
    finished: str,
    results: list[StepResult],
    interrupted: bool,
) -> dict[str, Any]:
    settings = prep.settings
    statuses = Counter(r.status for r in results)
    kb_used = {ps.kbtype.type: ps.kbtype for ps in prep.plan.steps}
    devices = []
    for d in prep.plan.devices:
        st = [r.status for r in results if r.device == d.name]
        worst = next((s for s in ("failed", "timeout", "partial") if s in st), "ok")
        devices.append(
            {
                "name": d.name,
                "type": d.type,
                "address": d.address,
                "status": worst,
                "steps": dict(sorted(Counter(st).items())),
            }
        )
    return {
        "format": FORMAT,
        "bundle_id": bundle_id,
        "agent": {"name": "fieldtrace", "version": __version__, "host": socket.gethostname()},
        "site": {
            "company": settings.site.company,
            "contract": settings.site.contract,
            "contact_email": settings.site.contact_email,
            "slug": settings.site_slug(),
        },
        "job": {
            "id": job_id,
            "trigger": prep.request.trigger,
            "requested_by": prep.request.requested_by or requester(),
            "ticket": prep.request.ticket,
            "profile": prep.plan.profile,
            "devices": [d.name for d in prep.plan.devices],
            "created": created.isoformat().replace("+00:00", "Z"),
            "started": started,
            "finished": finished,
            "interrupted": interrupted,
        },
        "kb": {
            t: {
                "title": k.title,
                "version": k.version,
                "sha256": k.sha256,
                "source": k.source,
                "profile": prep.plan.profile,
            }
            for t, k in kb_used.items()
        },
        "devices": devices,
        "steps": [
            {
                "device": r.device,
                "id": r.step,
                "collector": r.collector,
                "options": r.options,
                "status": r.status,
                "error": r.error,
                "started": r.started,
                "finished": r.finished,
                "seconds": r.seconds,
                "facts": r.facts,
                "artifacts": [
                    {
                        "path": a.path,
                        "size": a.size,
                        "sha256": a.sha256,
                        "truncated": a.truncated,
                        "scrubbed": a.scrubbed,
                    }
                    for a in r.artifacts
                ],
            }
            for r in results
        ],
        "summary": {"steps": len(results), **dict(sorted(statuses.items()))},
        "signer": prep.signing_key.fingerprint(),
    }


def _scrubbed(scrubber: Scrubber, text: str) -> str:
    return scrubber.scrub_bytes(text.encode()).decode(errors="replace") if text else ""


def summary_text(manifest: dict[str, Any]) -> str:
    """A short human summary for tickets and messages: what was collected, what failed."""
    s = manifest["summary"]
    job = manifest["job"]
    lines = [
        f"fieldtrace bundle {manifest['bundle_id'][:8]}: profile {job['profile']} on "
        f"{', '.join(job['devices'])}; {s['steps']} step{'' if s['steps'] == 1 else 's'} "
        + ", ".join(f"{k} {v}" for k, v in s.items() if k != "steps")
    ]
    for st in manifest["steps"]:
        if st["status"] in FAILED_STATES:
            lines.append(f"- {st['device']}/{st['id']}: {st['status']}: {st['error']}")
    return "\n".join(lines)
