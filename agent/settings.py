"""The site config (``fieldtrace.toml``): pydantic models, lookup order, embedded default.

Every model forbids unknown keys. Secrets are references, ``{file = "..."}`` or
``{env = "NAME"}``, resolved only when used and never logged.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.errors import ConfigError, ValidationFailed, pydantic_problems
from agent.health import SiteCheck
from collectors.base import Duration, Size
from uploader.base import is_loopback

DEFAULT_PATHS = (Path("fieldtrace.toml"), Path("/etc/fieldtrace/fieldtrace.toml"))
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Model):
    """A secret held outside the config: ``{file = "/path"}`` or ``{env = "NAME"}``."""

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_literal(cls, data: Any) -> Any:
        if isinstance(data, str):
            raise ValueError(
                'secrets must be references, not literal values: write { file = "/path" } '
                'or { env = "VARIABLE" }'
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise ValueError('give exactly one of file = "/path" or env = "VARIABLE"')
        return self

    def describe(self) -> str:
        return f"file {self.file}" if self.file else f"environment variable {self.env}"

    def resolve(self) -> str:
        """The secret's value (surrounding whitespace stripped); ConfigError if unavailable."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"secret: environment variable {self.env} is not set")
            return value.strip()
        assert self.file is not None
        try:
            return self.file.read_text().strip()
        except IsADirectoryError:
            raise ConfigError(
                f"secret: {self.file} is a directory, not a file holding the secret"
            ) from None
        except OSError as exc:
            raise ConfigError(f"secret: cannot read {self.file}: {exc.strerror}") from exc


_EMAIL_RE = r"[^@\s]+@[^@\s]+\.[^@\s]+"


class Site(Model):
    company: str = ""
    contract: str = ""
    contact_email: str = ""

    @field_validator("contact_email")
    @classmethod
    def _email(cls, value: str) -> str:
        if value and not re.fullmatch(_EMAIL_RE, value):
            raise ValueError(f"expected an e-mail address like noc@example.com, got {value!r}")
        return value


def _check_recipient(value: str) -> str:
    import pyrage

    value = value.strip()
    try:
        if value.startswith("age1"):
            pyrage.x25519.Recipient.from_str(value)
        elif value.startswith("ssh-"):
            pyrage.ssh.Recipient.from_str(value)
        else:
            raise ValueError("unknown kind")
    except Exception as exc:
        raise ValueError(
            f"not a valid age recipient ({exc}): expected 'age1...' (from age-keygen -y) "
            f"or an 'ssh-ed25519 ...' public key, got {value[:24]!r}"
        ) from None
    return value


_KEY_TYPE_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com)(-cert-v01@openssh\.com)?$"
)


def _check_request_key(value: str) -> str:
    """An OpenSSH public key line, or an allowed_signers line (``principals [options] key``)."""
    import base64
    import binascii

    value = value.strip()
    tokens = value.split()
    for i, tok in enumerate(tokens[:-1]):
        if _KEY_TYPE_RE.match(tok):
            try:
                blob = base64.b64decode(tokens[i + 1], validate=True)
            except (binascii.Error, ValueError):
                break
            n = int.from_bytes(blob[:4], "big")
            if (
                blob[4 : 4 + n].decode(errors="replace")
                != tok.removesuffix("-cert-v01@openssh.com")
                and blob[4 : 4 + n].decode(errors="replace") != tok
            ):
                break
            if i > 0 and tokens[0].startswith(("ssh-", "ecdsa-", "sk-")):
                break  # a key type in the principals' place
            return value
    raise ValueError(
        "expected an OpenSSH public key line ('ssh-ed25519 AAAA... engineer@vendor') or an "
        "allowed_signers line ('engineer@vendor.example ssh-ed25519 AAAA...', "
        f"'*@vendor.example cert-authority ssh-ed25519 AAAA...'), got {value[:24]!r}"
    )


class Vendor(Model):
    support_ips: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    recipients: list[Annotated[str, AfterValidator(_check_recipient)]] = []
    request_keys: list[Annotated[str, AfterValidator(_check_request_key)]] = []
    revoked_keys: Path | None = None  # OpenSSH revoked keys file or KRL (ssh-keygen -Y verify -r)

    @field_validator("support_ips", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, list):
            out = []
            for item in value:
                try:
                    out.append(ipaddress.ip_network(str(item), strict=False))
                except ValueError:
                    raise ValueError(
                        f"expected an IP address or CIDR like 198.51.100.7/32, got {item!r}"
                    ) from None
            return out
        return value


def _check_address(value: str) -> str:
    if not re.fullmatch(_EMAIL_RE, value):
        raise ValueError(f"expected an e-mail address like support@vendor.example, got {value!r}")
    return value


class EmailHelpdesk(Model):
    """SMTP delivery from the site's registered address to the vendor's support address."""

    backend: Literal["email"]
    host: str
    port: int | None = Field(None, ge=1, le=65535)  # default: 587 starttls, 465 tls, 25 none
    tls: Literal["starttls", "tls", "none"] = "starttls"
    ca_file: Path | None = None
    username: str | None = None
    password: SecretRef | None = None
    from_: Annotated[str, AfterValidator(_check_address)] | None = Field(None, alias="from")
    to: list[Annotated[str, AfterValidator(_check_address)]] = Field(min_length=1)
    max_attachment_bytes: Size = 10 * 1000**2
    oversize: Literal["split", "refuse"] = "split"
    timeout: Duration = 60.0

    @field_validator("to", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _auth(self) -> EmailHelpdesk:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password (a secret reference), or neither")
        if self.tls == "none" and self.password is not None and not is_loopback(self.host):
            raise ValueError(
                f'tls = "none" would send the SMTP password in clear text to {self.host}: '
                'use tls = "starttls" or "tls", or a relay on 127.0.0.1'
            )
        return self

    @property
    def smtp_port(self) -> int:
        return self.port or {"starttls": 587, "tls": 465, "none": 25}[self.tls]


class HttpFields(Model):
    """Form field names the HelpDesk endpoint expects; an empty name leaves the field out."""

    file: str = Field("file", min_length=1)
    bundle_id: str = "bundle_id"
    name: str = "name"
    sha256: str = "sha256"
    ticket: str = "ticket"
    company: str = "company"
    contract: str = "contract"
    contact_email: str = "contact_email"
    subject: str = "subject"
    description: str = "description"
    summary: str = "summary"


class HttpHelpdesk(Model):
    """A generic HelpDesk endpoint: one multipart/form-data POST per bundle."""

    backend: Literal["http"]
    url: str
    fields: HttpFields = HttpFields()
    extra_fields: dict[str, str] = {}
    auth_header: str = "Authorization"
    auth_value: SecretRef | None = None
    success_codes: list[Annotated[int, Field(ge=200, le=599)]] = [200, 201, 202, 204]
    response_ticket_field: str | None = None
    ca_file: Path | None = None
    connect_timeout: Duration = 15.0
    timeout: Duration = 300.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value

    @model_validator(mode="after")
    def _clear_text(self) -> HttpHelpdesk:
        from urllib.parse import urlsplit

        host = urlsplit(self.url).hostname or ""
        if self.url.startswith("http:") and self.auth_value is not None and not is_loopback(host):
            raise ValueError(
                f"an http:// URL would send the {self.auth_header} secret in clear text to "
                f"{host}: use https://"
            )
        return self


class DirectoryHelpdesk(Model):
    """Air-gapped delivery: bundles are copied into ``path`` (default: the local outbox)."""

    backend: Literal["directory"] = "directory"
    path: Path | None = None


class RedmineHelpdesk(Model):
    """Redmine REST API: tickets in ``project``, bundles attached via ``/uploads.json``."""

    backend: Literal["redmine"]
    url: str
    api_key: SecretRef
    project: str  # identifier ("support") or numeric id
    tracker: str | int | None = None  # name ("Support") or id; default: the project's first
    priority: str | int | None = None  # name ("Normal") or id; default: Redmine's default
    # health check severity -> Redmine priority name, for the tickets the service opens
    priorities: dict[Literal["critical", "major", "minor", "warning"], str] = {}
    timeout: Duration = 60.0  # connect/read timeout of each request (not of a whole upload)
    ca_file: Path | None = None  # CA bundle for a private HTTPS certificate

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError(
                f"expected an http(s) URL like https://helpdesk.example, got {value!r}"
            )
        return value.rstrip("/")

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        if not value.strip():
            raise ValueError('expected a project identifier like "support" or an id')
        return value.strip()


# The [helpdesk] table: one model per backend, chosen by ``backend``.
Helpdesk = Annotated[
    DirectoryHelpdesk | RedmineHelpdesk | EmailHelpdesk | HttpHelpdesk,
    Field(discriminator="backend"),
]


def _helpdesk_backends() -> list[str]:
    union = get_args(Helpdesk)[0]
    return [get_args(m.model_fields["backend"].annotation)[0] for m in get_args(union)]


class OutboxSettings(Model):
    """The spool of bundles waiting for delivery and how its worker retries."""

    max_bytes: Size = 10 * 1024**3  # queued + parked bundles; a new one over the cap is refused
    backoff_base: Duration = 30.0  # first retry after ~this, doubling on each failure ...
    backoff_max: Duration = 3600.0  # ... up to this (with +-jitter)


class Kb(Model):
    paths: list[Path] = []


class Ssh(Model):
    port: int = Field(22, ge=1, le=65535)
    username: str
    key: SecretRef | None = None
    password: SecretRef | None = None
    key_passphrase: SecretRef | None = None  # for an encrypted private key
    jump: str | None = None  # name of another device whose ssh reaches this one
    timeout: Duration = 10.0  # TCP connect, banner, auth and channel-open timeouts

    @model_validator(mode="after")
    def _credentials(self) -> Ssh:
        if self.key is None and self.password is None:
            raise ValueError('ssh needs key = { file = "..." } or password = { ... }')
        return self


class Snmp(Model):
    port: int = Field(161, ge=1, le=65535)
    version: Literal["1", "2c", "3"] = "2c"
    community: SecretRef | None = None
    username: str | None = None
    auth_protocol: Literal["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"] | None = None
    auth_key: SecretRef | None = None
    # AES192/AES256: key localization of net-snmp (draft-blumenthal); AES192C/AES256C: Cisco's
    priv_protocol: (
        Literal["DES", "3DES", "AES", "AES192", "AES256", "AES192C", "AES256C"] | None
    ) = None
    priv_key: SecretRef | None = None
    timeout: Duration = 2.0
    retries: int = Field(1, ge=0, le=10)
    context: str = ""  # SNMPv3 context name
    # what walks: "auto" = net-snmp's snmpbulkwalk when installed (Debian package snmp; ~8x
    # faster on big tables), else pysnmp; "net-snmp" = only snmpbulkwalk; "pysnmp" = never it
    walker: Literal["auto", "net-snmp", "pysnmp"] = "auto"

    @model_validator(mode="after")
    def _credentials(self) -> Snmp:
        if self.version in ("1", "2c") and self.community is None:
            raise ValueError(f"SNMP v{self.version} needs community = {{ file = ... }}")
        if self.version == "3" and not self.username:
            raise ValueError("SNMP v3 needs username")
        if self.auth_protocol and self.auth_key is None:
            raise ValueError("auth_protocol is set but auth_key is missing")
        if self.priv_protocol and (self.priv_key is None or not self.auth_protocol):
            raise ValueError("priv_protocol needs priv_key and auth_protocol")
        return self


class Device(Model):
    name: Annotated[str, Field(pattern=NAME_RE)]
    type: str
    address: str = "localhost"
    ssh: Ssh | None = None
    snmp: Snmp | None = None
    # where the firewall in front of the device lives (remote-access checks): "local" (this
    # host; default for a local device), "ssh" (the device, over its ssh settings; default
    # when it has them) or the name of another device (the gateway in front of it)
    firewall: str | None = None
    firewall_kind: Literal["auto", "nftables", "iptables"] = "auto"
    firewall_interface: str | None = None  # input interface the vendor's traffic arrives on
    firewall_out_interface: str | None = None  # gateway only: its interface towards the device
    _jump_device: Device | None = PrivateAttr(default=None)  # linked by Settings

    @property
    def jump_device(self) -> Device | None:
        """The device named by ``ssh.jump`` (set when the site config is validated)."""
        return self._jump_device

    @property
    def is_local(self) -> bool:
        return self.address in ("localhost", "127.0.0.1", "::1", "local")


class Scrub(Model):
    keywords: list[Annotated[str, Field(min_length=2)]] = []
    values: list[SecretRef] = []


class Requests(Model):
    """``[requests]``: signed collection requests read from ticket notes (``serve``)."""

    enabled: bool = True
    poll_interval: Duration = 60.0
    approve_within: Duration = 24 * 3600.0
    policy: dict[str, Literal["auto", "approve", "deny"]] = {}  # profile (or "*") -> decision

    def decision(self, profile: str) -> str:
        return self.policy.get(profile, self.policy.get("*", "approve"))


class Service(Model):
    """``[service]``: the daemon's site-wide limits."""

    max_new_tickets_per_hour: int = Field(10, ge=1, le=1000)
    outbox_interval: Duration = 30.0  # how often queued bundles are tried
    job_timeout: Duration = 3600.0  # a job still running after this is reported


class Collect(Model):
    max_parallel_devices: int = Field(32, ge=1, le=256)
    default_profile: str = "default"


LOCAL_DEVICE = Device(name="local", type="linux-host", address="localhost")


class Settings(Model):
    site: Site = Site()
    vendor: Vendor = Vendor()
    helpdesk: Helpdesk = DirectoryHelpdesk()
    outbox: OutboxSettings = OutboxSettings()
    kb: Kb = Kb()
    devices: list[Device] = []
    scrub: Scrub = Scrub()
    collect: Collect = Collect()
    health: list[SiteCheck] = []
    requests: Requests = Requests()
    service: Service = Service()

    @field_validator("helpdesk", mode="before")
    @classmethod
    def _backend_known(cls, value: Any) -> Any:
        if isinstance(value, dict):
            value = {"backend": "directory", **value}
            known = _helpdesk_backends()
            if value["backend"] not in known:
                raise ValueError(
                    f"backend {value['backend']!r} is not available in this version of "
                    f"fieldtrace (available: {', '.join(known)})"
                )
        return value

    @field_validator("devices")
    @classmethod
    def _unique(cls, devices: list[Device]) -> list[Device]:
        seen: set[str] = set()
        for d in devices:
            if d.name in seen:
                raise ValueError(f"device name {d.name!r} is used twice")
            seen.add(d.name)
        by_name = {d.name: d for d in devices}
        for d in devices:
            jump = d.ssh.jump if d.ssh else None
            if jump is None:
                continue
            target = by_name.get(jump)
            if target is None or target.ssh is None:
                raise ValueError(
                    f"device {d.name!r}: ssh.jump names {jump!r}, which is not a configured "
                    "device with ssh settings"
                )
            d._jump_device = target
        for d in devices:  # no loops: a -> b -> a
            seen_chain, cur = {d.name}, d.jump_device
            while cur is not None:
                if cur.name in seen_chain:
                    raise ValueError(
                        f"device {d.name!r}: ssh.jump chain loops back to {cur.name!r}"
                    )
                seen_chain.add(cur.name)
                cur = cur.jump_device
        return devices

    @model_validator(mode="after")
    def _firewalls(self) -> Settings:
        by_name = {d.name: d for d in self.devices}
        for i, d in enumerate(self.devices):
            fw = d.firewall
            if fw is None or fw == "local":
                continue
            where = f"devices[{i}].firewall"
            if fw == "ssh":
                if d.ssh is None:
                    raise ValueError(f'{where}: "ssh" needs ssh settings for device {d.name}')
                continue
            gw = by_name.get(fw)
            if gw is None or gw.name == d.name:
                raise ValueError(
                    f'{where}: expected "local", "ssh" or the name of another device (the '
                    f"gateway in front of {d.name}), got {fw!r}"
                )
            if not gw.is_local and gw.ssh is None:
                raise ValueError(f"{where}: gateway {gw.name} is not local and has no ssh settings")
        return self

    @model_validator(mode="after")
    def _registered_sender(self) -> Settings:
        hd = self.helpdesk
        if isinstance(hd, EmailHelpdesk) and not (hd.from_ or self.site.contact_email):
            raise ValueError(
                "helpdesk: the email backend sends from the site's registered address (the "
                "vendor accepts mail only from it): set [site] contact_email or [helpdesk] from"
            )
        return self

    def inventory(self) -> list[Device]:
        """The configured devices; with none, the implied device ``local`` (this host)."""
        return list(self.devices) or [LOCAL_DEVICE]

    def check_types(self, known: Collection[str], source: str) -> None:
        """ConfigError naming the device whose KB type is unknown."""
        for i, d in enumerate(self.devices):
            if d.type not in known:
                raise ConfigError(
                    f"{source}: devices[{i}].type: unknown KB type {d.type!r} for device "
                    f"{d.name} (known: {', '.join(sorted(known))}; add a KB file or fix the type)"
                )

    def site_slug(self) -> str:
        name = self.site.company or socket.gethostname()
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "site"


class LoadedSettings(BaseModel):
    """Settings plus where they came from (None: the embedded default)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    settings: Settings
    path: Path | None

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "(embedded default)"


def _config_file(path: Path, named_by: str) -> None:
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file{named_by}")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found{named_by}")


def find_config(explicit: Path | None = None) -> Path | None:
    """``--config``, else ``$FIELDTRACE_CONFIG``, else ./fieldtrace.toml, else /etc/...."""
    if explicit is not None:
        _config_file(explicit, "")
        return explicit
    env = os.environ.get("FIELDTRACE_CONFIG")
    if env:
        _config_file(Path(env), " (named by $FIELDTRACE_CONFIG)")
        return Path(env)
    return next((p for p in DEFAULT_PATHS if p.is_file()), None)


def load_settings(explicit: Path | None = None) -> LoadedSettings:
    path = find_config(explicit)
    if path is None:
        return LoadedSettings(settings=Settings(), path=None)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(str(path), pydantic_problems(exc)) from None
    return LoadedSettings(settings=settings, path=path)
