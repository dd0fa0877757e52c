"""The SIP summary on a hand-built trace: failed, answered, cancelled and non-call dialogs,
compact header names, two messages in one TCP segment, RTP ignored."""

from __future__ import annotations

from pathlib import Path

from collectors.sip import read_sip, render_text, summarise


def _msg(start: str, call_id: str, cseq: str, compact: bool = False, body: str = "") -> bytes:
    names = ("i", "f", "t", "l") if compact else ("Call-ID", "From", "To", "Content-Length")
    return (
        f"{start}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-{call_id}\r\n"
        f"{names[1]}: <sip:alice@10.0.0.1>;tag=a1\r\n{names[2]}: <sip:bob@10.0.0.2>\r\n"
        f"{names[0]}: {call_id}\r\nCSeq: {cseq}\r\n{names[3]}: {len(body)}\r\n\r\n{body}"
    ).encode()


def _trace(path: Path) -> None:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import wrpcap

    a, b = "10.0.0.1", "10.0.0.2"
    pkts = []

    def udp(src: str, dst: str, payload: bytes, t: float) -> None:
        p = Ether() / IP(src=src, dst=dst) / UDP(sport=5060, dport=5060) / Raw(payload)
        p.time = 1_800_000_000 + t
        pkts.append(p)

    sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\n"
    udp(a, b, _msg("INVITE sip:bob@10.0.0.2 SIP/2.0", "busy-1", "1 INVITE", body=sdp), 0.0)
    udp(b, a, _msg("SIP/2.0 100 Trying", "busy-1", "1 INVITE"), 0.01)
    udp(b, a, _msg("SIP/2.0 486 Busy Here", "busy-1", "1 INVITE"), 0.5)
    udp(a, b, _msg("ACK sip:bob@10.0.0.2 SIP/2.0", "busy-1", "1 ACK"), 0.51)
    udp(a, b, _msg("INVITE sip:bob@10.0.0.2 SIP/2.0", "ok-2", "1 INVITE", compact=True), 1.0)
    udp(b, a, _msg("SIP/2.0 200 OK", "ok-2", "1 INVITE", compact=True), 1.25)
    udp(a, b, _msg("ACK sip:bob@10.0.0.2 SIP/2.0", "ok-2", "1 ACK", compact=True), 1.26)
    udp(a, b, b"\x80\x08" + b"\x00" * 170, 1.3)  # RTP, not SIP
    two = _msg("BYE sip:bob@10.0.0.2 SIP/2.0", "ok-2", "2 BYE") + _msg(
        "SIP/2.0 200 OK", "ok-2", "2 BYE"
    )
    p = Ether() / IP(src=a, dst=b) / TCP(sport=5060, dport=5060, flags="PA") / Raw(two)
    p.time = 1_800_000_000 + 4.25
    pkts.append(p)
    udp(a, b, _msg("INVITE sip:carol@10.0.0.2 SIP/2.0", "gone-3", "1 INVITE"), 5.0)
    udp(a, b, _msg("CANCEL sip:carol@10.0.0.2 SIP/2.0", "gone-3", "1 CANCEL"), 6.0)
    udp(a, b, _msg("OPTIONS sip:b@10.0.0.2 SIP/2.0", "ping-4", "1 OPTIONS"), 7.0)
    udp(b, a, _msg("SIP/2.0 200 OK", "ping-4", "1 OPTIONS"), 7.1)
    udp(a, b, _msg("INVITE sip:dave@10.0.0.2 SIP/2.0", "up-5", "1 INVITE"), 8.0)
    udp(b, a, _msg("SIP/2.0 200 OK", "up-5", "1 INVITE"), 8.5)
    wrpcap(str(path), pkts)


def test_summary_of_a_mixed_trace(tmp_path: Path) -> None:
    trace = tmp_path / "t.pcap"
    _trace(trace)
    messages, complete = read_sip([trace])
    assert complete
    s = summarise(messages)
    c = s["counts"]
    assert c["calls"] == 4
    assert (c["completed"], c["failed"], c["answered_no_bye"], c["no_final_response"]) == (
        1,
        1,
        1,
        1,
    )
    assert c["by_final_code"] == {"200": 2, "486": 1}
    assert c["other_dialogs"] == 1
    assert c["messages"] == {
        "100": 1,
        "200": 4,
        "486": 1,
        "ACK": 2,
        "BYE": 1,
        "CANCEL": 1,
        "INVITE": 4,
        "OPTIONS": 1,
    }
    calls = {x["call_id"]: x for x in s["calls"]}
    assert calls["busy-1"]["state"] == "failed" and calls["busy-1"]["final_code"] == 486
    assert calls["busy-1"]["from"] == "<sip:alice@10.0.0.1>"  # tag dropped
    ok = calls["ok-2"]
    assert ok["state"] == "completed" and ok["setup_s"] == 0.25 and ok["duration_s"] == 3.0
    assert [m["msg"] for m in ok["messages"]] == ["INVITE", "200 OK", "ACK", "BYE", "200 OK"]
    assert ok["to"] == "<sip:bob@10.0.0.2>"
    assert calls["gone-3"]["state"] == "cancelled"
    assert calls["ping-4"]["method"] == "OPTIONS" and calls["ping-4"]["state"] == "other"
    assert calls["up-5"]["state"] == "answered"
    text = render_text(s)
    assert "4 call(s): 1 completed, 1 failed, 1 answered without BYE" in text
    assert "Call-ID busy-1  INVITE -> 486 Busy Here  [failed]" in text
