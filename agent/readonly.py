"""Read-only by allow-list: what a KB step may type on a device or run on the agent host.

Every command a KB file can make fieldtrace send is checked when the KB loads: the
``ssh.shell`` commands, ``ssh.command``, ``ssh.on_open``, ``ssh.pager_answer`` and
``local.command``. A command passes only if it matches an allowed *pattern*: the defaults of
the type's CLI family (``read_only.cli``) plus what the type lists in ``read_only.allow``.
Some forms are refused whatever the patterns say: command separators, redirections, pipes
that write the output somewhere, and any character that is not printable ASCII (look-alike
letters). docs/read-only.md is the reference; this module is its implementation.

Pattern syntax (one string per pattern, words separated by spaces; matched word by word
against the command, ``|`` segments separately):

``word``        that word (device CLIs: any case; the first word also as a unique
                abbreviation: ``sh`` for ``show``); ``*`` and ``?`` inside a word are
                wildcards (``--show-*``)
``*``           any one word that does not start with ``-``
``a|b|c``       one of these words
``[a|b]``       optionally one of these words
``{a|b}``       any number of these words (zero or more)
``...``         any further words (last only)
``!word``       no word of the command may be this: ``!--long`` also refuses the getopt
                abbreviations ``--lo`` and ``--long=VALUE``; ``!-x`` also refuses ``x``
                inside bundled short options (``-ax``); other words are wildcards
``| pattern``   a pipe filter the type may use after ``|`` (device CLIs, ssh.command)
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Slot = Literal["ssh.shell", "ssh.command", "ssh.on_open", "local.command"]
CliName = Literal["linux", "network", "cisco", "huawei", "junos", "fortinet", "mikrotik"]
CLI_NAMES: tuple[str, ...] = (
    "linux",
    "network",
    "cisco",
    "huawei",
    "junos",
    "fortinet",
    "mikrotik",
)

# --- families ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """How one kind of CLI is read: its read-only defaults and its parsing rules."""

    name: str
    title: str
    commands: tuple[str, ...]  # default patterns for commands (ssh.shell, ssh.command)
    on_open: tuple[str, ...] = ()  # default patterns for ssh.on_open (paging off)
    filters: tuple[str, ...] = ()  # default patterns after a "|"
    vocabulary: frozenset[str] = frozenset()  # top-level commands (for abbreviations)
    filter_vocabulary: frozenset[str] = frozenset()
    shell: bool = False  # POSIX shell quoting and expansions (Linux)
    abbreviations: bool = True  # the CLI accepts unique prefixes of keywords
    case_sensitive: bool = False
    refused_chars: str = ""  # characters refused anywhere in a command of this family
    slash_paths: bool = False  # MikroTik: "/ip/address/print" is "/ip address print"
    min_abbreviation: int = 1  # shortest abbreviation accepted (besides being unique)
    dashes: bool = True  # a word of the command may start with "-" (not in device CLIs)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Cisco-style EXEC commands (IOS, IOS-XE, NX-OS, ASA, IOS-XR, Arista EOS), from the vendors'
# command references: an abbreviation is accepted only when it is unique among these.
_CISCO_VOCAB = _words(
    """access-enable access-template admin archive attach bash blink callhome capture cd cfs
    changeto checkpoint clear cli clock cluster cns commit configure connect copy crypto
    debug delete diagnostic dir disable disconnect echo enable erase ethanalyzer event exit
    failover find format fsck gunzip gzip hardware help history hw-module install ip ipv6
    license load lock login logout mkdir monitor more move mtrace name-connection no ntp
    packet-tracer pager ping ping6 purge pwd quit release reload rename renew request resume
    rlogin rmdir rollback routing-context run run-script save send session set setup show
    sleep slip slot squeeze ssh ssh6 start-chat systat system tac-pac tail tar tclsh telnet
    telnet6 terminal test traceroute traceroute6 tunnel udld undebug unmount unprovision
    update-license upgrade verify vpn-sessiondb where write x28 xconnect xml zerotouch zip
    """
)
_CISCO_FILTERS_VOCAB = _words(
    """append begin count cut diff egrep email exclude file format grep head human include
    json json-pretty last less no-more redirect section sed sort tail tee tr uniq utility vsh
    wc xml"""
)
# Huawei VRP and H3C Comware user view
_HUAWEI_VOCAB = _words(
    """cd check clear clock cls compare copy debugging delete dir display execute format free
    ftp help language-mode local-user lock mkdir more move ping pwd quit reboot refresh rename
    reset return rmdir save schedule screen-length screen-width send sftp startup stelnet
    super system-view telnet terminal test-aaa tftp tracert undelete undo unzip upgrade zip
    """
)
_HUAWEI_FILTERS_VOCAB = _words("begin count exclude include no-more refresh section")
# Junos operational mode
_JUNOS_VOCAB = _words(
    """clear configure file help load monitor mtrace op ping quit request restart save set
    show ssh start telnet test traceroute"""
)
_JUNOS_FILTERS_VOCAB = _words(
    """append compare count display except find hold last match no-more refresh request
    resolve save tee trim"""
)
# FortiOS
_FORTI_VOCAB = _words("abort alias config diagnose end execute exit get next show sudo tree")
_FORTI_FILTERS_VOCAB = frozenset(["grep"])

CISCO = Family(
    "cisco",
    "Cisco-style CLI (IOS, IOS-XE, NX-OS, ASA, IOS-XR, Arista EOS)",
    commands=("show ...",),
    on_open=(
        "terminal length|len 0",
        "terminal width|wid|wi *",
        "terminal pager|pag 0",  # ASA
        "terminal exec prompt no-timestamp",  # IOS-XR
    ),
    filters=(
        "include ...",
        "exclude ...",
        "begin ...",
        "section ...",
        "count ...",
        "grep ...",
        "egrep ...",
        "head ...",
        "tail ...",
        "last ...",
        "no-more",
        "json",
        "json-pretty",
        "xml",
        "sort ...",
        "uniq ...",
        "wc ...",
    ),
    vocabulary=_CISCO_VOCAB,
    filter_vocabulary=_CISCO_FILTERS_VOCAB,
    dashes=False,
)
HUAWEI = Family(
    "huawei",
    "Huawei VRP / H3C Comware",
    commands=("display ...",),
    on_open=("screen-length 0 temporary", "screen-length disable", "screen-width *"),
    filters=("begin ...", "exclude ...", "include ...", "count", "section ...", "no-more"),
    vocabulary=_HUAWEI_VOCAB,
    filter_vocabulary=_HUAWEI_FILTERS_VOCAB,
    dashes=False,
)
JUNOS = Family(
    "junos",
    "Juniper Junos (operational mode)",
    commands=("show ...",),
    on_open=("set cli screen-length 0", "set cli screen-width *"),
    filters=(
        "match ...",
        "except ...",
        "count",
        "find ...",
        "last ...",
        "no-more",
        "display ...",
        "trim ...",
        "resolve ...",
        "hold",
    ),
    vocabulary=_JUNOS_VOCAB,
    filter_vocabulary=_JUNOS_FILTERS_VOCAB,
    dashes=False,
)
FORTINET = Family(
    "fortinet",
    "Fortinet FortiOS",
    commands=("get ...", "show ..."),
    on_open=(),  # FortiOS turns paging off in its configuration only: answer the pager
    filters=("grep ...",),
    vocabulary=_FORTI_VOCAB,
    filter_vocabulary=_FORTI_FILTERS_VOCAB,
    dashes=False,
)
_MT_ARGS = "... !file=*"  # "print file=x" and "export file=x" write a file on the router
MIKROTIK = Family(
    "mikrotik",
    "MikroTik RouterOS",
    commands=(
        "/system resource|identity|routerboard|package|clock|health|license|history print "
        + _MT_ARGS,
        f"/system ntp client|server print {_MT_ARGS}",
        f"/interface print {_MT_ARGS}",
        "/interface ethernet|bridge|vlan|bonding|list|wireless|wifi|vrrp|eoip|gre print "
        + _MT_ARGS,
        f"/interface bridge port|host|vlan print {_MT_ARGS}",
        f"/ip address|route|arp|neighbor|service|dns|pool|settings print {_MT_ARGS}",
        f"/ip dhcp-server|dhcp-client print {_MT_ARGS}",
        f"/ip dhcp-server lease print {_MT_ARGS}",
        f"/ip firewall filter|nat|mangle|raw|address-list|connection|service-port print {_MT_ARGS}",
        f"/ipv6 address|route|neighbor|settings print {_MT_ARGS}",
        f"/ipv6 firewall filter|nat|mangle|raw|address-list print {_MT_ARGS}",
        f"/routing ospf instance|area|interface|neighbor|lsa print {_MT_ARGS}",
        f"/routing bgp peer|connection|session|template|instance|advertisements print {_MT_ARGS}",
        f"/routing route|table|rule print {_MT_ARGS}",
        f"/log print {_MT_ARGS}",
        f"/user print {_MT_ARGS}",
        f"/user active print {_MT_ARGS}",
        f"/queue simple|tree print {_MT_ARGS}",
        f"/snmp print {_MT_ARGS}",
        f"/export {_MT_ARGS}",
    ),
    abbreviations=False,
    case_sensitive=True,
    refused_chars="[]{}$:;",  # scripting: command substitution, variables, ":execute"
    slash_paths=True,
)

_IPOPT = (
    "{-s|-d|-h|-4|-6|-0|-j|-p|-o|-r|-a|-br|-c|-t|-ts|-stats|-statistics|-details|-human"
    "|-json|-pretty|-oneline|-resolve|-brief|-color|-all|-timestamp|-iec}"
)
_IPOBJ = (
    "address|addr|a|link|l|route|ro|r|rule|ru|neighbour|neighbor|neigh|n|maddress|maddr|m"
    "|mroute|mr|tunnel|tuntap|tap|netconf|ntable|tcp_metrics|tcpmetrics|token|vrf|nexthop|nh"
    "|stats|netns|addrlabel"
)
_SS_NO = "!-K !--kill !-D !--diag"
_SORT_NO = "!-o !--output"
LINUX = Family(
    "linux",
    "Linux (exec over SSH, and local.command on the agent host)",
    commands=(
        "cat ...",
        "tac ...",
        "head ...",
        "tail ...",
        "ls ...",
        "stat ...",
        "wc ...",
        "grep ...",
        "egrep ...",
        "fgrep ...",
        "zcat ...",
        "zgrep ...",
        "readlink ...",
        "md5sum ...",
        "sha256sum ...",
        "find ... !-delete !-exec !-execdir !-ok !-okdir !-fprint !-fprint0 !-fprintf !-fls",
        "df ...",
        "du ...",
        "free ...",
        "uptime ...",
        "uname ...",
        "nproc ...",
        "arch",
        "id ...",
        "whoami",
        "groups ...",
        "who ...",
        "w ...",
        "last ...",
        "hostname [-f|-s|-i|-I|-d|-A|--fqdn|--long|--short|--ip-address|--all-ip-addresses"
        "|--domain|--all-fqdns]",
        "date {-u|-R|--utc|--universal|--rfc-email|-I*|--iso-8601*|--rfc-3339=*|+*}",
        "ps ...",
        "pgrep ...",
        "vmstat ...",
        "iostat ...",
        "mpstat ...",
        "lsmod",
        "lspci ...",
        "lsusb ...",
        "lsblk ...",
        "lscpu ...",
        "lsof ...",
        "lsns ...",
        "findmnt ...",
        "mount {-l|-v}",
        f"ss ... {_SS_NO}",
        "netstat ...",
        f"ip {_IPOPT} {_IPOBJ}",
        f"ip {_IPOPT} {_IPOBJ} show|list|lst ...",
        f"ip {_IPOPT} route|ro|r|neighbour|neighbor|neigh|n get ...",
        "route {-n|-e|-ee|-v|-C|-F|-4|-6}",
        "arp {-n|-a|-e|-v}",
        "tc {-s|-d|-j|-p|-g|-r|-i|-statistics|-details|-json|-pretty|-graph|-raw} "
        "qdisc|class|filter|action|chain",
        "tc {-s|-d|-j|-p|-g|-r|-i|-statistics|-details|-json|-pretty|-graph|-raw} "
        "qdisc|class|filter|action|chain show|list|ls ...",
        "ethtool *",
        "ethtool -i|-S|-k|-g|-a|-c|-l|-m|-T|-P|-d|-e|--driver|--statistics|--show-*"
        "|--module-info|--phy-statistics|--dump-module-eeprom|--register-dump|--eeprom-dump *",
        "dmesg ... !-c !-C !-D !-E !-n !--read-clear !--clear !--console-off !--console-on "
        "!--console-level",
        "journalctl ... !--vacuum-size !--vacuum-time !--vacuum-files !--rotate !--flush "
        "!--sync !--relinquish-var !--smart-relinquish-var !--setup-keys !--update-catalog",
        "sysctl ... !-w !--write !-p !--load !-f !--system !*=*",
        "systemctl {-*} status|show|cat|list-*|is-*|get-default|show-environment ...",
        "timedatectl {-*}",
        "timedatectl {-*} status|show|show-timesync|timesync-status|list-timezones ...",
        "chronyc {-n|-c|-N|-4|-6} tracking|sources|sourcestats|activity|ntpdata|serverstats"
        "|selectdata|authdata|rtcdata|smoothing|clients ... !-m",
        "ntpq {-n|-p|-pn|-np|-4|-6}",
        "nft {-a|-n|-nn|-nnn|-j|-s|-N|-t|-T|-S|-y|-c|--handle|--numeric|--json|--stateless"
        "|--terse|--service|--guid|--numeric-priority|--numeric-protocol|--check} "
        "list|describe ... !-f !--file !-i !--interactive !add !insert !replace !create "
        "!delete !destroy !flush !rename !reset !import",
        "iptables-save ... !-f !--file !-M !--modprobe",
        "ip6tables-save ... !-f !--file !-M !--modprobe",
        "iptables|ip6tables ... !-A !-D !-I !-R !-F !-Z !-N !-X !-P !-E !--append !--delete "
        "!--insert !--replace !--flush !--zero !--new-chain !--delete-chain !--policy "
        "!--rename-chain !--modprobe",
        "conntrack -L|-S|-C|--dump|--stats|--count ... !-F !-D !-I !-U !--flush !--delete "
        "!--create !--update",
        "getent hosts|ahosts|ahostsv4|ahostsv6|services|protocols|networks ...",
        "dig ...",
        "host ...",
        "echo ...",
        "true",
        "false",
        "sleep *",
    ),
    filters=(
        "grep ...",
        "egrep ...",
        "fgrep ...",
        "head ...",
        "tail ...",
        f"sort ... {_SORT_NO}",
        "uniq {-*}",
        "wc ...",
        "cut ...",
        "cat ...",
    ),
    shell=True,
    abbreviations=False,
    case_sensitive=True,
)
NETWORK = Family(
    "network",
    "any network device CLI (the union of cisco, huawei, junos and fortinet)",
    commands=("show ...", "display ...", "get ..."),
    on_open=tuple(dict.fromkeys(CISCO.on_open + HUAWEI.on_open + JUNOS.on_open)),
    filters=tuple(dict.fromkeys(CISCO.filters + HUAWEI.filters + JUNOS.filters + FORTINET.filters)),
    vocabulary=_CISCO_VOCAB | _HUAWEI_VOCAB | _JUNOS_VOCAB | _FORTI_VOCAB,
    filter_vocabulary=(
        _CISCO_FILTERS_VOCAB | _HUAWEI_FILTERS_VOCAB | _JUNOS_FILTERS_VOCAB | _FORTI_FILTERS_VOCAB
    ),
    dashes=False,
    # without a named family the target could even be a Unix shell, where 'sh' is the
    # shell itself: abbreviations start at 3 letters ('sho run'; 'sh run' needs cli: cisco)
    min_abbreviation=3,
)
FAMILIES: dict[str, Family] = {
    f.name: f for f in (LINUX, NETWORK, CISCO, HUAWEI, JUNOS, FORTINET, MIKROTIK)
}

# pipes that send the output somewhere (a file, another user, a mail), in any CLI: refused
# even when abbreviated (any prefix), whatever read_only.allow says
WRITING_PIPES = ("redirect", "tee", "append", "save", "file", "request", "email")
PAGER_ANSWERS = (" ", "\n", "\r", "\r\n")  # plus one letter or digit other than y/Y

# --- patterns -------------------------------------------------------------------------------

_WORD_RE = re.compile(r"^[!-~]+$")


@dataclass(frozen=True)
class _Elem:
    alts: tuple[str, ...]
    kind: Literal["one", "opt", "many"]


@dataclass(frozen=True)
class Pattern:
    """One parsed allow pattern (see the module docstring for the syntax)."""

    text: str
    elems: tuple[_Elem, ...]
    rest: bool
    refused: tuple[str, ...]
    pipe: bool = False  # "| filter ...": a pipe filter

    @property
    def first_words(self) -> tuple[str, ...]:
        """Literal words the pattern can start with (added to the abbreviation vocabulary)."""
        if not self.elems or self.elems[0].kind != "one":
            return ()
        return tuple(a for a in self.elems[0].alts if not _is_wild(a))


def _is_wild(word: str) -> bool:
    return "*" in word or "?" in word


def parse_pattern(text: str) -> Pattern:
    """Parse one pattern; ValueError says what is wrong with it."""
    if not isinstance(text, str):
        raise ValueError(f"a pattern is a string like 'show ...', got {text!r}")
    bad = _bad_char(text)
    if bad:
        raise ValueError(f"pattern {text!r}: {bad}")
    words = text.split()
    pipe = bool(words) and words[0] == "|"
    if pipe:
        words = words[1:]
    if not words:
        raise ValueError(f"pattern {text!r} is empty")
    elems: list[_Elem] = []
    refused: list[str] = []
    rest = False
    for w in words:
        if w.startswith("!"):
            if len(w) == 1:
                raise ValueError(f"pattern {text!r}: '!' needs a word after it, like !-w")
            refused.append(w[1:])
            continue
        if rest:
            raise ValueError(f"pattern {text!r}: '...' must be the last word (before !words)")
        if w == "...":
            rest = True
            continue
        kind: Literal["one", "opt", "many"] = "one"
        inner = w
        if w.startswith("[") and w.endswith("]"):
            kind, inner = "opt", w[1:-1]
        elif w.startswith("{") and w.endswith("}"):
            kind, inner = "many", w[1:-1]
        alts = tuple(inner.split("|"))
        for a in alts:
            if not a or any(c in a for c in "[]{}!") or a == "...":
                raise ValueError(f"pattern {text!r}: {w!r} is not a word, a|b, [a|b] or {{a|b}}")
        elems.append(_Elem(alts, kind))
    if not elems:
        raise ValueError(f"pattern {text!r} has no word to match, only refusals")
    first = elems[0]
    if first.kind != "one" or (not pipe and any(a == "*" or a.startswith("*") for a in first.alts)):
        raise ValueError(
            f"pattern {text!r}: the first word must be a command name, not {words[0]!r}"
        )
    return Pattern(text, tuple(elems), rest, tuple(refused), pipe)


# --- command text -> segments of words ----------------------------------------------------


class Refused(ValueError):
    """A command that may not be sent; the message says why and what to do."""


def _bad_char(text: str) -> str | None:
    for ch in text:
        code = ord(ch)
        if code > 126:
            return (
                f"contains the non-ASCII character {ch!r} (U+{code:04X}); only plain ASCII is "
                "allowed, so a look-alike letter cannot pass for another"
            )
        if code < 32 or code == 127:
            what = "a line break" if ch in "\r\n" else f"the control character {ch!r}"
            return f"contains {what}; a command is one line"
    return None


def _global_refusal(text: str) -> str | None:
    bad = _bad_char(text)
    if bad:
        return bad
    for token, what in (
        ("&&", "'&&' (a command separator)"),
        ("||", "'||' (a command separator)"),
        (";", "';' (a command separator)"),
        ("&", "'&' (runs a command in the background)"),
        ("`", "a backtick (command substitution)"),
        ("$(", "'$(' (command substitution)"),
        (">", "'>' (redirects the output into a file)"),
        ("<", "'<' (redirects input from a file)"),
    ):
        if token in text:
            return f"contains {what}"
    return None


@dataclass(frozen=True)
class _Word:
    text: str
    globbed: bool = False  # an unquoted * ? [ (the shell would expand it)


def _shell_split(command: str) -> list[list[_Word]]:
    """Split like a POSIX shell: quotes removed, segments at unquoted '|'. Raises Refused
    for what the shell would expand or treat specially (so the words we check are the
    words the program gets)."""
    segments: list[list[_Word]] = [[]]
    cur: list[str] = []
    have = globbed = False
    i, n = 0, len(command)

    def end_word() -> None:
        nonlocal cur, have, globbed
        if have:
            segments[-1].append(_Word("".join(cur), globbed))
        cur, have, globbed = [], False, False

    while i < n:
        ch = command[i]
        if ch == "'":
            j = command.find("'", i + 1)
            if j < 0:
                raise Refused("has an unbalanced single quote")
            cur.append(command[i + 1 : j])
            have, i = True, j + 1
            continue
        if ch == '"':
            i += 1
            while True:
                if i >= n:
                    raise Refused("has an unbalanced double quote")
                c = command[i]
                if c == '"':
                    break
                if c == "$":
                    raise Refused("has '$' (the shell expands variables even inside \"...\")")
                if c == "\\" and i + 1 < n and command[i + 1] in '"\\$':
                    i += 1
                    c = command[i]
                cur.append(c)
                i += 1
            have, i = True, i + 1
            continue
        if ch == "\\":
            if i + 1 >= n:
                raise Refused("ends with a backslash")
            cur.append(command[i + 1])
            have, i = True, i + 2
            continue
        if ch == " ":
            end_word()
            i += 1
            continue
        if ch == "|":
            end_word()
            segments.append([])
            i += 1
            continue
        if ch == "$":
            raise Refused("has '$' (variable expansion changes the words the program gets)")
        if ch in "(){}":
            raise Refused(f"has an unquoted {ch!r} (subshell or brace expansion)")
        if ch == "!":
            raise Refused("has an unquoted '!' (history expansion in an interactive shell)")
        if ch == "#" and not have:
            raise Refused("has an unquoted '#' starting a word (the rest would be a comment)")
        if ch in "*?[":
            globbed = True
        if ch == "~" and not have:
            cur.append("/~")  # tilde expansion yields an absolute path
            have, i = True, i + 1
            continue
        cur.append(ch)
        have, i = True, i + 1
    end_word()
    return segments


def _split(command: str, fam: Family, shell: bool) -> list[list[_Word]]:
    if shell:
        return _shell_split(command)
    # device CLIs: every "|" starts a filter (no quoting is trusted: on some CLIs a quoted
    # "|" is still a pipe), words are whitespace-separated
    segments = [[_Word(w) for w in part.split()] for part in command.split("|")]
    if fam.slash_paths and segments and segments[0]:
        first = segments[0][0].text
        if first.startswith("/") and "/" in first[1:]:
            parts = [p for p in first.split("/") if p]
            segments[0][:1] = [_Word("/" + parts[0]), *(_Word(p) for p in parts[1:])]
    return segments


# --- matching ------------------------------------------------------------------------------


def _refuses(word: str, refusal: str) -> bool:
    if refusal.startswith("--") and len(refusal) > 2 and not _is_wild(refusal):
        if not word.startswith("--") or len(word) == 2:
            return False
        name = word[2:].split("=", 1)[0]
        return bool(name) and refusal[2:].startswith(name)
    if len(refusal) == 2 and refusal[0] == "-" and refusal[1].isalnum():
        return word.startswith("-") and not word.startswith("--") and refusal[1] in word[1:]
    return fnmatch.fnmatchcase(word, refusal)


def _abbreviates(word: str, verb: str, vocabulary: Iterable[str]) -> bool:
    """``word`` is a prefix of ``verb`` and of no other known command."""
    if not word or not verb.startswith(word):
        return False  # (the caller checks the family's minimum length)
    return all(v == verb or not v.startswith(word) for v in vocabulary)


class _Matcher:
    def __init__(self, fam: Family, vocabulary: frozenset[str]) -> None:
        self.fam = fam
        self.vocabulary = vocabulary

    def norm(self, s: str) -> str:
        return s if self.fam.case_sensitive else s.lower()

    def word_ok(self, word: _Word, alt: str, first: bool) -> bool:
        w = self.norm(word.text)
        a = self.norm(alt)
        if a == "*":
            return bool(w) and not w.startswith("-")
        if _is_wild(a):
            return fnmatch.fnmatchcase(w, a)
        if w == a:
            return True
        return (
            first
            and self.fam.abbreviations
            and len(w) >= self.fam.min_abbreviation
            and _abbreviates(w, a, self.vocabulary)
        )

    def match(self, pat: Pattern, words: Sequence[_Word]) -> bool:
        for w in words:
            if w.globbed and not w.text.startswith("/"):
                return False  # a glob that is not an absolute path could expand to anything
            if any(_refuses(self.norm(w.text), self.norm(r)) for r in pat.refused):
                return False
        return self._at(pat, 0, words, 0)

    def _at(self, pat: Pattern, i: int, words: Sequence[_Word], j: int) -> bool:
        if i == len(pat.elems):
            return pat.rest or j == len(words)
        el = pat.elems[i]

        def ok(k: int) -> bool:
            return k < len(words) and any(self.word_ok(words[k], a, k == 0) for a in el.alts)

        if el.kind == "one":
            return ok(j) and self._at(pat, i + 1, words, j + 1)
        if el.kind == "opt":
            return (ok(j) and self._at(pat, i + 1, words, j + 1)) or self._at(pat, i + 1, words, j)
        k = j
        while True:
            if self._at(pat, i + 1, words, k):
                return True
            if not ok(k):
                return False
            k += 1


# --- the policy of one KB type ---------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """What one KB type may send: its families, its explicit patterns, and the checks."""

    cli: str | None  # read_only.cli as written (None: the defaults below)
    allow: tuple[Pattern, ...] = ()
    shell_family: Family = NETWORK  # ssh.shell and ssh.on_open
    exec_family: Family = LINUX  # ssh.command

    def family(self, slot: Slot) -> Family:
        if slot == "local.command":
            return LINUX
        if slot == "ssh.command":
            return self.exec_family
        return self.shell_family

    def _patterns(self, slot: Slot) -> tuple[list[Pattern], list[Pattern]]:
        fam = self.family(slot)
        default_commands, default_filters = _defaults(fam, slot == "ssh.on_open")
        commands, filters = list(default_commands), list(default_filters)
        for p in self.allow:
            (filters if p.pipe else commands).append(p)
        return commands, filters

    def check(self, slot: Slot, command: str) -> None:
        """Raise Refused when ``command`` may not be sent in ``slot``."""
        fam = self.family(slot)
        text = command.strip()
        if not text:
            raise Refused("is empty")
        why = _global_refusal(text)
        if why:
            raise Refused(f"{why}: refused in any case")
        for ch in fam.refused_chars:
            if ch in text:
                raise Refused(f"contains {ch!r}, which {fam.name} CLIs treat as scripting")
        shell = fam.shell
        segments = _split(text, fam, shell)
        if any(not s for s in segments):
            raise Refused("has an empty '|' segment")
        for seg in segments:
            for w in seg:
                if w.globbed and not w.text.startswith("/"):
                    raise Refused(
                        f"has the wildcard {w.text!r}: the shell would expand it to names that "
                        "could be options or sub-commands; only absolute paths may hold * ? ["
                    )
        for seg in segments[1:]:
            head = seg[0].text.lower()
            for writer in WRITING_PIPES:
                if writer.startswith(head):
                    raise Refused(
                        f"pipes its output into '| {seg[0].text}' ({writer}): output must not be "
                        "written anywhere on the device; refused in any case"
                    )
        if slot == "local.command" and len(segments) > 1:
            raise Refused("has a '|': local.command runs without a shell, so there is no pipe")
        commands, filters = self._patterns(slot)
        vocab = fam.vocabulary | {self_w.lower() for p in commands for self_w in p.first_words}
        fvocab = fam.filter_vocabulary | {w.lower() for p in filters for w in p.first_words}
        first, rest = segments[0], segments[1:]
        if not fam.dashes and any(w.text.startswith("-") for w in first):
            raise Refused(
                f"has a word starting with '-': {fam.name} CLI commands take none (such a word "
                "would be an option to a program, as if this were a Unix shell)"
            )
        m = _Matcher(fam, frozenset(vocab))
        if not any(m.match(p, first) for p in commands):
            raise Refused(self._not_allowed(slot, fam))
        fm = _Matcher(fam, frozenset(fvocab))
        for seg in rest:
            if not any(fm.match(p, seg) for p in filters):
                words = " ".join(w.text for w in seg)
                raise Refused(
                    f"pipes into '| {words}', which is not an allowed filter for {fam.name} "
                    "(see 'fieldtrace kb show TYPE'); add '| PATTERN' to read_only.allow if it "
                    "only filters"
                )

    def _not_allowed(self, slot: Slot, fam: Family) -> str:
        where = {
            "ssh.on_open": "the paging-off commands",
            "local.command": "the read-only programs",
        }.get(slot, "the read-only commands")
        return (
            f"is not on the read-only allow-list of this type ({slot}, cli {fam.name}: "
            f"{where}; see 'fieldtrace kb show TYPE'). If it cannot change anything, add a "
            "pattern for it to read_only.allow"
            + ("" if self.cli or slot == "local.command" else ", or set read_only.cli")
        )

    def describe(self) -> dict[str, Any]:
        """What is allowed, per slot (for ``fieldtrace kb show``)."""
        out: dict[str, Any] = {"cli": self.cli, "allow": [p.text for p in self.allow]}
        slots: dict[str, Any] = {}
        all_slots: tuple[Slot, ...] = ("ssh.shell", "ssh.command", "ssh.on_open", "local.command")
        for slot in all_slots:
            fam = self.family(slot)
            defaults = fam.on_open if slot == "ssh.on_open" else fam.commands
            slots[slot] = {
                "cli": fam.name,
                "defaults": list(defaults),
                "filters": [] if slot in ("local.command", "ssh.on_open") else list(fam.filters),
                "abbreviations": fam.abbreviations,
            }
        out["slots"] = slots
        out["pager_answer"] = "a space, Enter (\\r, \\n, \\r\\n), or one letter or digit but y"
        out["refused_always"] = [
            "; && || & (separators)",
            "` $( (command substitution)",
            "> < (redirection)",
            "| " + " | ".join(WRITING_PIPES) + " (and any abbreviation of them)",
            "any character that is not printable ASCII",
        ]
        return out


@functools.cache
def _defaults(fam: Family, on_open: bool) -> tuple[tuple[Pattern, ...], tuple[Pattern, ...]]:
    """A family's default patterns, parsed once: (commands or on_open, pipe filters)."""
    commands = tuple(parse_pattern(p) for p in (fam.on_open if on_open else fam.commands))
    return commands, tuple(parse_pattern("| " + p) for p in fam.filters)


def check_pager_answer(answer: str) -> None:
    if answer in PAGER_ANSWERS:
        return
    if len(answer) == 1 and answer.isascii() and answer.isalnum() and answer not in "yY":
        return
    raise Refused(
        f'{answer!r} is not one key: use a space (next page), Enter ("\\r" or "\\n"), or '
        "one letter or digit such as 'q' (never 'y': a confirmation prompt mistaken for a "
        "pager must not be answered yes)"
    )


def make_policy(cli: str | None, allow: Sequence[str]) -> tuple[Policy, list[str]]:
    """The policy of a KB type from its ``read_only`` block; problems as ``path: reason``."""
    problems: list[str] = []
    patterns: list[Pattern] = []
    for i, text in enumerate(allow):
        try:
            patterns.append(parse_pattern(text))
        except ValueError as exc:
            problems.append(f"read_only.allow[{i}]: {exc}")
    if cli is None:
        shell_family, exec_family = NETWORK, LINUX
    else:
        shell_family = exec_family = FAMILIES[cli]
        if cli == "network":
            exec_family = NETWORK
    return Policy(cli, tuple(patterns), shell_family, exec_family), problems
