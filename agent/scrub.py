"""Scrubbing secrets out of text artifacts before anything is packed.

Built-in rules cover password/secret/token assignments in the common config syntaxes
(``key = v``, ``key: v``, JSON, XML, Cisco-style ``password 7 v``), SNMP communities, PEM
private keys, bearer/basic authorization, ``user:pass@`` in URLs; the site adds key names
(``[scrub] keywords``) and literal secret values (``[scrub] values`` and every secret the
agent resolved). The value is replaced, the key is kept, so an engineer still sees *that* a
password was configured. Counts per rule go into the manifest; values never do.

Speed: a file is processed in ~1 MiB chunks cut at line ends. Rules only run on the lines
where a lowercase trigger word occurs (found with ``bytes.find`` on the lowered chunk), so
ordinary log text costs little more than a copy.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from collectors.base import BINARY_PROBE

MASK = b"<scrubbed>"
CHUNK = 1024 * 1024
_PEM_MAX = 1024 * 1024  # how far to read ahead for the end of a PEM block

_BUILTIN_KEYS = [
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "api-key",
    "access_key",
    "access-key",
    "private_key",
    "private-key",
    "auth_key",
    "authkey",
    "auth-key",
    "priv_key",
    "privkey",
    "credential",
    "credentials",
    "psk",
    "pre-shared-key",
    "key-string",
    "authentication-key",
    "community",
    "session_key",
]
_PEM = re.compile(
    rb"(-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY((?: BLOCK)?)-----)(.*?)"
    rb"(-----END \2PRIVATE KEY\3-----|\Z)",
    re.DOTALL,
)


# Substrings that every line a rule can match contains (lowercase). Few and short on purpose:
# each one costs a scan of every chunk, so a key is covered by a trigger it contains.
_BASE_TRIGGERS = (
    "pass", "pwd", "secret", "token", "key", "credential", "psk", "communit", "com2sec",
    "bearer", "authoriz", "://", "snmp",
)  # fmt: skip


def _triggers(keys: Iterable[str]) -> list[str]:
    extra = {k for k in keys if not any(t in k for t in _BASE_TRIGGERS)}
    return sorted(set(_BASE_TRIGGERS) | extra)


def _key_alternation(keys: Iterable[str]) -> bytes:
    return b"|".join(re.escape(k.encode()) for k in sorted(set(keys), key=len, reverse=True))


class Scrubber:
    """Scrubs secrets from text; thread-safe and reusable for a whole job."""

    def __init__(self, keywords: Iterable[str] = (), literals: Iterable[str] = ()) -> None:
        keys = [k.lower() for k in (*_BUILTIN_KEYS, *keywords)]
        alt = _key_alternation(keys)
        ident = rb"[\w.-]*(?:" + alt + rb")[\w-]*"
        # device-CLI forms where a bare "key" is a secret (never "key" alone in prose)
        cli_alt = alt + (
            rb"|(?:tacacs|radius)-server[ \t]+key|message-digest-key[ \t]+\d+[ \t]+md5"
            rb"|key(?=[ \t]+[07][ \t])"
        )
        value = rb"(?:\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'|[^\s,;&<>\"']+)"
        flags = re.IGNORECASE
        self._rules: list[tuple[str, re.Pattern[bytes], int]] = [
            # scheme://user:PASS@host
            (
                "url_credentials",
                re.compile(rb"([a-z][a-z0-9+.-]*://[^\s:/@]+:)([^\s@/]+)(?=@)", flags),
                2,
            ),
            # Authorization: Bearer X / Basic X, bare "Bearer X"
            (
                "authorization",
                re.compile(
                    rb"(authorization\"?\s*[:=]\s*\"?(?:bearer|basic|token|digest|"
                    rb"apikey)?\s*)([^\s\"]+)",
                    flags,
                ),
                2,
            ),
            ("authorization", re.compile(rb"(\bbearer\s+)([A-Za-z0-9._~+/=-]{8,})", flags), 2),
            # XML <password>X</password>
            ("password", re.compile(rb"(<(" + ident + rb")(?:\s[^>]*)?>)([^<]+)(?=</)", flags), 3),
            # JSON list of argv: "--password", "X"
            ("password", re.compile(rb"(\"-{1,2}" + ident + rb"\",\s*)(\"[^\"]*\")", flags), 2),
            # key = value, key: value, "key": "value", --key=value
            (
                "password",
                re.compile(
                    rb"((?<![\w-])\"?" + ident + rb"\"?\s*(?:=|:(?!//))\s*)(" + value + rb")", flags
                ),
                2,
            ),
            # net-snmp: rocommunity X, com2sec NAME SOURCE X; snmp CLI tools: -c X
            (
                "community",
                re.compile(rb"(^\s*(?:[rw][ow]community6?|trapcommunity)\s+)(\S+)", flags | re.M),
                2,
            ),
            (
                "community",
                re.compile(rb"(^\s*com2sec6?\s+(?:-Cn\s+\S+\s+)?\S+\s+\S+\s+)(\S+)", flags | re.M),
                2,
            ),
            # (client tools only: for the snmpd daemon, -c names its config file)
            (
                "community",
                re.compile(
                    rb"(\bsnmp(?:bulk)?(?:walk|get|getnext|set|table|trap|inform|status|df|"
                    rb"netstat|test|delta|usm|vacm)\b[^\n]*?\s-c ?)([^\s-]\S*)"
                ),
                2,
            ),
            # device CLI: [words] password|secret|key-string|community [type] VALUE
            (
                "password",
                re.compile(
                    rb"(^[ \t]*(?:\S+[ \t]+){0,4}?(?:" + cli_alt + rb")(?:[ \t]+(?:[05789]|md5|"
                    rb"sha|ascii|hex|encrypted|cipher))*[ \t]+)(?![:=])(\S+)",
                    flags | re.M,
                ),
                2,
            ),
            # the same forms later in a line: "credentials username U password 7 VALUE",
            # logged commands ("logged command:snmp-server community VALUE RO"), "... key 7 V"
            (
                "password",
                re.compile(
                    rb"((?<![\w-])(?:password|secret|community|key(?=[ \t]+[07][ \t]))"
                    rb"(?:[ \t]+(?:[05789]|md5|sha|ascii|hex|encrypted|cipher))*[ \t]+)"
                    rb"(?![:=])(\S+)",
                    flags,
                ),
                2,
            ),
        ]
        self._triggers = _triggers(keys)
        self._finder: Any = None
        self._literals = sorted(
            {s.encode() for s in literals if len(s) >= 4}, key=len, reverse=True
        )

    # --- text -----------------------------------------------------------------------------

    def stream(self) -> ScrubStream:
        """A push-based scrubber for one artifact (what the artifact sink uses)."""
        return ScrubStream(self)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_finder"] = None  # an RE2 object does not pickle; rebuilt where it is used
        return state

    def _find(self) -> Any:
        """One RE2 scan finds every trigger word and PEM header (case-insensitive)."""
        if self._finder is None:
            import re2

            alt = "|".join(re.escape(t) for t in self._triggers)
            self._finder = re2.compile(f"(?i)(private key)|{alt}".encode())
        return self._finder

    def scrub_bytes(self, data: bytes, counts: Counter[str] | None = None) -> bytes:
        """Scrub one chunk (whole lines); adds what it replaced to ``counts``."""
        counts = counts if counts is not None else Counter()
        for lit in self._literals:
            n = data.count(lit)
            if n:
                data = data.replace(lit, MASK)
                counts["value"] += n
        starts, pem = self._trigger_lines(data)
        if pem:
            data, n = _PEM.subn(rb"\1\n<scrubbed private key>\n\5", data)
            if n:
                counts["private_key"] += n
                starts, _ = self._trigger_lines(data)
        if not starts:
            return data
        out: list[bytes] = []
        pos = 0
        for start in starts:
            end = data.find(b"\n", start)
            end = len(data) if end == -1 else end
            out.append(data[pos:start])
            out.append(self._scrub_line(data[start:end], counts))
            pos = end
        out.append(data[pos:])
        return b"".join(out)

    def _trigger_lines(self, data: bytes) -> tuple[list[int], bool]:
        """Start offsets of the lines holding a trigger word; whether a PEM key shows up."""
        starts: list[int] = []
        pem = False
        line_end = -1
        for m in self._find().finditer(data):
            if m.group(1) is not None:
                pem = True
            i = m.start()
            if i <= line_end:
                continue  # this line is already listed
            starts.append(data.rfind(b"\n", 0, i) + 1)
            line_end = data.find(b"\n", i)
            if line_end == -1:
                break
        return starts, pem

    def _scrub_line(self, line: bytes, counts: Counter[str]) -> bytes:
        for rule, pattern, group in self._rules:

            def repl(m: re.Match[bytes], rule: str = rule, group: int = group) -> bytes:
                if m.group(group).strip(b"\"'") == MASK:
                    return m.group(0)  # already masked by an earlier rule
                key = m.group(0)[: m.start(group) - m.start(0)]
                counts["community" if b"community" in key.lower() else rule] += 1
                return key + MASK

            line = pattern.sub(repl, line)
        return line

    # --- files ----------------------------------------------------------------------------

    def scrub_file(self, path: Path) -> dict[str, int] | None:
        """Scrub a text file in place (atomically); None if it looks binary."""
        return self.scrub_and_digest(path)[0]

    def scrub_and_digest(self, path: Path) -> tuple[dict[str, int] | None, str, int]:
        """Scrub a text file in place; return (counts or None if binary, sha256, size).

        The digest is computed in the same pass, of the bytes that will be packed. (Artifacts
        that collectors write through the sink are scrubbed on the way in; this is for the
        rest, such as a capture tool's own output file.)
        """
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as src:
            head = src.read(BINARY_PROBE)
            if b"\x00" in head:
                digest.update(head)
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                return None, digest.hexdigest(), path.stat().st_size
            src.seek(0)
            stream = self.stream()
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".scrub-")
            try:
                with os.fdopen(fd, "wb") as dst:
                    while True:
                        block = src.read(CHUNK)
                        clean = stream.feed(block) if block else stream.finish()
                        dst.write(clean)
                        digest.update(clean)
                        size += len(clean)
                        if not block:
                            break
                if stream.counts:
                    os.replace(tmp, path)
                else:  # nothing replaced: keep the original file, skip the rename
                    os.unlink(tmp)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return {k: v for k, v in sorted(stream.counts.items()) if v}, digest.hexdigest(), size


def scrub_many(
    scrubber: Scrubber, paths: list[Path], parallel_threshold: int = 64 * 1024 * 1024
) -> Iterator[tuple[dict[str, int] | None, str, int]]:
    """``scrub_and_digest`` over many files, in order; big jobs use a process per core."""
    total = sum(p.stat().st_size for p in paths)
    workers = min(os.cpu_count() or 1, 4)
    if total < parallel_threshold or workers < 2 or len(paths) < 2:
        yield from (scrubber.scrub_and_digest(p) for p in paths)
        return
    ctx = multiprocessing.get_context("spawn")  # never fork a process that has threads
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        yield from pool.map(scrubber.scrub_and_digest, paths)


class ScrubStream:
    """Scrubs one text stream pushed in pieces: whole lines at a time, ~1 MiB per pass.

    ``feed`` returns the scrubbed text it can release so far, ``finish`` the rest. A PEM
    private key block is never cut (held back until its END line, up to 1 MiB); a very long
    line without a newline is cut anyway after 4 MiB. ``counts`` holds replacements per rule.
    """

    def __init__(self, scrubber: Scrubber) -> None:
        self._scrubber = scrubber
        self._pending = bytearray()
        self.counts: Counter[str] = Counter()

    def feed(self, data: bytes) -> bytes:
        self._pending += data
        if len(self._pending) < CHUNK:
            return b""
        cut = self._cut()
        if cut == 0:
            return b""
        chunk = bytes(self._pending[:cut])
        del self._pending[:cut]
        return self._scrubber.scrub_bytes(chunk, self.counts)

    def finish(self) -> bytes:
        chunk = bytes(self._pending)
        self._pending.clear()
        return self._scrubber.scrub_bytes(chunk, self.counts) if chunk else b""

    def _cut(self) -> int:
        """Where to cut the pending text: after a line, never inside a PEM key block."""
        data = self._pending
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            return len(data) if len(data) >= 4 * CHUNK else 0
        begin = data.rfind(b"-----BEGIN", 0, cut)
        if begin != -1 and b"PRIVATE KEY" in data[begin : begin + 64]:
            end = data.find(b"-----END", begin)
            if end == -1:  # wait for the end of the block, within reason
                return cut if len(data) - begin > _PEM_MAX else 0
            line_end = data.find(b"\n", end)
            if line_end == -1:
                return 0
            cut = max(cut, line_end + 1)
        return cut
