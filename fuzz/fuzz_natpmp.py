"""Fuzz target: NAT-PMP response decoding and the request machine."""

from __future__ import annotations

import struct

from glueberry.errors import RemoteProtocolError
from glueberry.proto import natpmp as p

SEEDS = [
    struct.pack("!BBHI4s", 0, 128, 0, 1, b"\x01\x02\x03\x04"),
    struct.pack("!BBHIHHI", 0, 130, 0, 1, 1, 1, 60),
    struct.pack("!BBHI", 0, 129, 3, 1),
]


def TARGET(data: bytes) -> None:
    try:
        p.decode_response(data)
    except RemoteProtocolError:
        pass
    for payload in (
        p.encode_external_address_request(),
        p.encode_mapping_request(p.Opcode.MAP_TCP, 1, 1, 60),
    ):
        req = p.NatPmpRequest(payload, gateway=("192.168.1.1", 5351), now=0.0)
        req.datagrams_to_send(0.0)
        req.receive_datagram(data, ("192.168.1.1", 5351), 0.1)  # never raises
        list(req.events())
