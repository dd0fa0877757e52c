"""SIP call summary of a packet trace: calls by Call-ID, message ladder, final codes, timings.

scapy reads the trace (``RawPcapReader``, no dissection) and dissects only the packets whose
bytes contain ``SIP/2.0`` (``conf.l2types`` -> IP/IPv6 -> UDP/TCP), so RTP-heavy traces stay
cheap. scapy has no SIP layer; SIP is a text protocol, so the start line and the few headers
used here (Call-ID, From, To, CSeq, Content-Length, with their compact forms) are read from
the payload directly. Over TCP, a segment may carry several messages (split by
Content-Length); a message continued in a later segment is read from its first one (start
line and headers are what the summary needs), and retransmitted segments count twice.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_REQUEST = re.compile(rb"^([A-Z][A-Z-]*) (\S+) SIP/2\.0$")
_RESPONSE = re.compile(rb"^SIP/2\.0 (\d{3})(?: (.*))?$")
_COMPACT = {b"i": b"call-id", b"f": b"from", b"t": b"to", b"l": b"content-length"}
_TAG = re.compile(r";\s*tag=[^;>\s]*", re.IGNORECASE)
MAX_CALLS_LISTED = 2000  # per-call detail kept in the summary; counts cover every call


@dataclass(frozen=True)
class SipMessage:
    """One SIP message: a request (``method`` set) or a response (``code`` set)."""

    ts: float
    src: str
    dst: str
    method: str | None
    code: int | None
    reason: str
    call_id: str
    from_: str
    to: str
    cseq_method: str


def parse_messages(payload: bytes) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Split a UDP/TCP payload into SIP messages: [(start line, {lower header: value})]."""
    out: list[tuple[bytes, dict[bytes, bytes]]] = []
    rest = payload
    while rest:
        head, sep, body = rest.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        start = lines[0].strip()
        if not (_REQUEST.match(start) or _RESPONSE.match(start)):
            break
        headers: dict[bytes, bytes] = {}
        last = b""
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t") and last:  # folded continuation
                headers[last] += b" " + line.strip()
                continue
            name, colon, value = line.partition(b":")
            if not colon:
                continue
            key = name.strip().lower()
            key = _COMPACT.get(key, key)
            last = key
            headers.setdefault(key, value.strip())
        out.append((start, headers))
        if not sep:
            break
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            break
        rest = body[length:].lstrip(b"\r\n")
    return out


def _text(value: bytes | None, limit: int = 300) -> str:
    return (value or b"").decode("utf-8", "replace")[:limit]


def read_sip(paths: list[Path], deadline: float | None = None) -> tuple[list[SipMessage], bool]:
    """Every SIP message in the pcap files, in order; (messages, complete)."""
    import scapy.layers.inet
    import scapy.layers.inet6
    import scapy.layers.l2  # noqa: F401  (fill conf.l2types)
    from scapy.config import conf
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import RawPcapReader

    messages: list[SipMessage] = []
    for path in paths:
        reader = RawPcapReader(str(path))
        try:
            l2: Any = conf.l2types.get(reader.linktype)
            for n, (data, meta) in enumerate(reader):
                if deadline is not None and n % 4096 == 0 and time.monotonic() > deadline:
                    return messages, False
                if b"SIP/2.0" not in data or l2 is None:
                    continue
                pkt = l2(data)
                ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
                l4 = pkt.getlayer(UDP) or pkt.getlayer(TCP)
                if ip is None or l4 is None:
                    continue
                ts = meta.sec + meta.usec / 1e6
                src = f"{ip.src}:{l4.sport}"
                dst = f"{ip.dst}:{l4.dport}"
                for start, h in parse_messages(bytes(l4.payload)):
                    req = _REQUEST.match(start)
                    resp = _RESPONSE.match(start)
                    cseq = h.get(b"cseq", b"").split()
                    messages.append(
                        SipMessage(
                            ts=ts,
                            src=src,
                            dst=dst,
                            method=req.group(1).decode() if req else None,
                            code=int(resp.group(1)) if resp else None,
                            reason=_text(resp.group(2) if resp else None, 80),
                            call_id=_text(h.get(b"call-id")),
                            from_=_TAG.sub("", _text(h.get(b"from"))),
                            to=_TAG.sub("", _text(h.get(b"to"))),
                            cseq_method=_text(cseq[1] if len(cseq) > 1 else None, 20),
                        )
                    )
        finally:
            reader.close()
    return messages, True


@dataclass
class _Call:
    call_id: str
    from_: str
    to: str
    first_ts: float
    method: str
    ladder: list[dict[str, Any]] = field(default_factory=list)
    invite_ts: float | None = None
    answered_ts: float | None = None
    final_code: int | None = None
    final_reason: str = ""
    bye_ts: float | None = None

    def state(self) -> str:
        if self.method != "INVITE":
            return "other"
        if self.final_code is None:
            return "cancelled" if any(m["msg"] == "CANCEL" for m in self.ladder) else "no-answer"
        if self.final_code >= 300:
            return "failed"
        return "completed" if self.bye_ts is not None else "answered"


def summarise(messages: list[SipMessage], complete: bool = True) -> dict[str, Any]:
    """The summary document (``sip-summary.json``) built from the messages."""
    calls: dict[str, _Call] = {}
    msg_counts: Counter[str] = Counter()
    for m in messages:
        label = m.method or str(m.code)
        msg_counts[label] = msg_counts[label] + 1
        c = calls.get(m.call_id)
        if c is None:
            c = _Call(m.call_id, m.from_, m.to, m.ts, m.method or m.cseq_method)
            calls[m.call_id] = c
        if m.method == "INVITE" and c.method != "INVITE":
            c.method = "INVITE"
        c.ladder.append(
            {
                "t": round(m.ts - c.first_ts, 6),
                "src": m.src,
                "dst": m.dst,
                "msg": m.method or f"{m.code} {m.reason}".strip(),
                **({"cseq": m.cseq_method} if m.code is not None else {}),
            }
        )
        if m.method == "INVITE" and c.invite_ts is None:
            c.invite_ts = m.ts
        elif m.method == "BYE" and c.bye_ts is None:
            c.bye_ts = m.ts
        elif m.code is not None and m.cseq_method == "INVITE" and m.code >= 200:
            if c.final_code is None or (m.code < 300 and c.answered_ts is None):
                c.final_code, c.final_reason = m.code, m.reason
            if m.code < 300 and c.answered_ts is None:
                c.answered_ts = m.ts
    invite_calls = [c for c in calls.values() if c.method == "INVITE"]
    states = Counter(c.state() for c in invite_calls)
    finals = Counter(str(c.final_code) for c in invite_calls if c.final_code is not None)
    setups = [c.answered_ts - c.invite_ts for c in invite_calls if c.answered_ts and c.invite_ts]
    counts = {
        "calls": len(invite_calls),
        "completed": states["completed"],
        "answered_no_bye": states["answered"],
        "failed": states["failed"],
        "no_final_response": states["no-answer"] + states["cancelled"],
        "by_final_code": dict(sorted(finals.items())),
        "other_dialogs": len(calls) - len(invite_calls),
        "messages": dict(sorted(msg_counts.items())),
        "setup_s_max": round(max(setups), 6) if setups else None,
        "complete": complete,
    }
    listed = []
    for c in list(calls.values())[:MAX_CALLS_LISTED]:
        listed.append(
            {
                "call_id": c.call_id,
                "method": c.method,
                "from": c.from_,
                "to": c.to,
                "start": _iso(c.first_ts),
                "state": c.state(),
                "final_code": c.final_code,
                "final_reason": c.final_reason,
                "setup_s": _delta(c.invite_ts, c.answered_ts),
                "duration_s": _delta(c.answered_ts, c.bye_ts),
                "messages": c.ladder,
            }
        )
    return {
        "format": "fieldtrace.sip-summary/1",
        "counts": counts,
        "calls_listed": len(listed),
        "calls": listed,
    }


def _delta(a: float | None, b: float | None) -> float | None:
    return round(b - a, 6) if a is not None and b is not None else None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def render_text(summary: dict[str, Any]) -> str:
    """A readable version of the summary (``sip-summary.txt``)."""
    c = summary["counts"]
    lines = [
        f"SIP summary: {c['calls']} call(s): {c['completed']} completed, {c['failed']} failed, "
        f"{c['answered_no_bye']} answered without BYE, {c['no_final_response']} without a final "
        f"response; {c['other_dialogs']} other dialog(s)",
        "final codes: " + (", ".join(f"{k} x{v}" for k, v in c["by_final_code"].items()) or "-"),
        "messages: " + ", ".join(f"{k} x{v}" for k, v in c["messages"].items()),
    ]
    if not c["complete"]:
        lines.append("NOTE: the trace was not read to the end (out of time); counts are partial")
    if summary["calls_listed"] < c["calls"] + c["other_dialogs"]:
        lines.append(f"(the first {summary['calls_listed']} dialogs are listed)")
    for call in summary["calls"]:
        setup = f" setup {call['setup_s']:.3f}s" if call["setup_s"] is not None else ""
        dur = f" duration {call['duration_s']:.3f}s" if call["duration_s"] is not None else ""
        final = f" -> {call['final_code']} {call['final_reason']}" if call["final_code"] else ""
        lines += [
            "",
            f"Call-ID {call['call_id']}  {call['method']}{final}  [{call['state']}]{setup}{dur}",
            f"  start {call['start']}",
            f"  From: {call['from']}",
            f"  To:   {call['to']}",
        ]
        for m in call["messages"]:
            cseq = f" ({m['cseq']})" if "cseq" in m else ""
            t = f"+{m['t']:.3f}s"
            lines.append(f"  {t:>11}  {m['src']:>21} -> {m['dst']:<21} {m['msg']}{cseq}")
    return "\n".join(lines) + "\n"
