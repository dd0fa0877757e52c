"""The flat response specs decode every SNMP value exactly as pysnmp's own specs do."""

from __future__ import annotations

from typing import Any

from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.proto.api import v2c
from pysnmp.proto.mpmod.rfc3412 import SNMPv3Message

from collectors.snmp_asn1 import _types

VALUES: list[Any] = [
    rfc1902.Integer(-7),
    rfc1902.OctetString(b"eth0\x00\xff"),
    rfc1902.ObjectIdentifier((1, 3, 6, 1, 4, 1, 8072)),
    rfc1902.IpAddress("10.1.2.3"),
    rfc1902.Counter32(4294967295),
    rfc1902.Gauge32(12),
    rfc1902.Unsigned32(13),
    rfc1902.TimeTicks(123456),
    rfc1902.Opaque(b"\x9f\x78\x04\x3f\x80\x00\x00"),
    rfc1902.Counter64(2**64 - 1),
    rfc1905.noSuchObject,
    rfc1905.noSuchInstance,
    rfc1905.endOfMibView,
    rfc1902.Bits(b"\x80"),
    v2c.Null(""),
]


def _response() -> Any:
    pdu = v2c.ResponsePDU()
    v2c.apiPDU.set_defaults(pdu)
    v2c.apiPDU.set_request_id(pdu, 4711)
    v2c.apiPDU.set_varbinds(pdu, [((1, 3, 6, 1, 2, i), v) for i, v in enumerate(VALUES)])
    return pdu


def _leaves(pdu: Any) -> list[tuple[tuple[int, ...], str, Any]]:
    return [
        (tuple(name), type(value).__name__, bytes(encoder.encode(value)))
        for name, value in v2c.apiPDU.get_varbinds(pdu)
    ]


def test_v2c_response_decodes_to_the_same_values() -> None:
    msg = v2c.Message()
    v2c.apiMessage.set_defaults(msg)
    v2c.apiMessage.set_community(msg, "public")
    v2c.apiMessage.set_pdu(msg, _response())
    wire = encoder.encode(msg)
    ours, rest = decoder.decode(wire, asn1Spec=_types()[0]())
    theirs, _ = decoder.decode(wire, asn1Spec=v2c.Message())
    assert rest == b""
    assert encoder.encode(ours) == wire
    got = _leaves(v2c.apiMessage.get_pdu(ours))
    assert got == _leaves(v2c.apiMessage.get_pdu(theirs))
    assert [kind for _, kind, _ in got][:4] == [
        "Integer",
        "OctetString",
        "ObjectIdentifier",
        "IpAddress",
    ]
    assert v2c.apiPDU.get_error_status(v2c.apiMessage.get_pdu(ours)).prettyPrint() == "noError"


def test_v3_scoped_pdu_decodes_to_the_same_values() -> None:
    from pysnmp.proto.mpmod.rfc3412 import ScopedPDU

    scoped = ScopedPDU()
    scoped.setComponentByPosition(0, b"engine")
    scoped.setComponentByPosition(1, b"")
    scoped.setComponentByPosition(2).getComponentByPosition(2).setComponentByType(
        rfc1905.ResponsePDU.tagSet, _response(), verifyConstraints=False, matchTags=False
    )
    wire = encoder.encode(scoped)
    spec = _types()[1]().setComponentByPosition(3)[3].setComponentByPosition(0)[0]
    ours, _ = decoder.decode(wire, asn1Spec=spec)
    theirs, _ = decoder.decode(wire, asn1Spec=SNMPv3Message()["msgData"]["plaintext"])
    assert _leaves(ours[2].getComponent()) == _leaves(theirs[2].getComponent())
