"""NAT-PMP codec and request machine (glueberry.proto.natpmp)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.proto import natpmp as p

GW = ("192.168.1.1", 5351)


def test_request_bytes_match_rfc6886() -> None:
    assert p.encode_external_address_request() == b"\x00\x00"
    # Map TCP 40001 -> suggested 40001 for 7200 s.
    assert p.encode_mapping_request(p.Opcode.MAP_TCP, 40001, 40001, 7200) == bytes.fromhex(
        "000200009c419c4100001c20"
    )
    # Delete: lifetime 0, external port 0.
    assert p.encode_mapping_request(p.Opcode.MAP_UDP, 5000, 0, 0) == bytes.fromhex(
        "000100001388000000000000"
    )
    with pytest.raises(LocalProtocolError):
        p.encode_mapping_request(p.Opcode.EXTERNAL_ADDRESS, 1, 1, 1)
    with pytest.raises(LocalProtocolError):
        p.encode_mapping_request(p.Opcode.MAP_TCP, 70000, 1, 1)


def test_decode_responses() -> None:
    ext = bytes.fromhex("0080000000000064cb007101")
    r = p.decode_response(ext)
    assert r == p.ExternalAddressResponse(
        result=0, epoch=100, address=ipaddress.IPv4Address("203.0.113.1")
    )
    m = struct.pack("!BBHIHHI", 0, 130, 0, 7, 40001, 41000, 3600)
    assert p.decode_response(m) == p.MappingResponse(
        opcode=p.Opcode.MAP_TCP,
        result=0,
        epoch=7,
        internal_port=40001,
        external_port=41000,
        lifetime=3600,
    )
    # Error responses may be short (8 bytes).
    err = struct.pack("!BBHI", 0, 129, 3, 9)
    assert p.decode_response(err).result == 3


@pytest.mark.parametrize(
    "bad",
    ["", "00", "0100000000000000", "0000", "0085000000000000", "008000000000", "0082" + "00" * 16],
)
def test_decode_rejects(bad: str) -> None:
    with pytest.raises(RemoteProtocolError):
        p.decode_response(bytes.fromhex(bad))


@given(st.binary(max_size=40))
def test_decode_only_raises_remote_protocol_error(data: bytes) -> None:
    try:
        p.decode_response(data)
    except RemoteProtocolError:
        pass


def test_retransmission_schedule_and_timeout() -> None:
    req = p.NatPmpRequest(p.encode_external_address_request(), gateway=GW, now=0.0, tries=4)
    sent_at = []
    now = 0.0
    while not req.finished:
        if req.datagrams_to_send(now):
            sent_at.append(now)
        t = req.get_timer()
        assert t is not None
        now = t
        req.handle_timer(now)
    assert sent_at == [0.0, 0.25, 0.75, 1.75]  # 250 ms, doubling (RFC 6886 §3.1)
    assert list(req.events()) == [p.NatPmpTimedOut(tries=4)]


def test_only_the_gateways_matching_answer_counts() -> None:
    req = p.NatPmpRequest(p.encode_mapping_request(p.Opcode.MAP_TCP, 1, 1, 60), gateway=GW, now=0)
    assert req.datagrams_to_send(0.0) == [(bytes.fromhex("000200000001000100000" + "03c"), GW)]
    good = struct.pack("!BBHIHHI", 0, 130, 0, 7, 1, 1, 60)
    req.receive_datagram(good, ("192.168.1.2", 5351), 0.1)  # wrong source
    req.receive_datagram(good, ("192.168.1.1", 5350), 0.1)  # wrong port
    req.receive_datagram(struct.pack("!BBHIHHI", 0, 129, 0, 7, 1, 1, 60), GW, 0.1)  # UDP answer
    req.receive_datagram(b"\x00\x80garbage", GW, 0.1)
    assert not req.finished
    req.receive_datagram(good, GW, 0.1)
    (ev,) = list(req.events())
    assert isinstance(ev, p.NatPmpSucceeded) and ev.response.lifetime == 60  # type: ignore[union-attr]


def test_error_result() -> None:
    req = p.NatPmpRequest(p.encode_external_address_request(), gateway=GW, now=0)
    req.datagrams_to_send(0)
    req.receive_datagram(struct.pack("!BBHI", 0, 128, 3, 1), GW, 0.1)
    (ev,) = list(req.events())
    assert isinstance(ev, p.NatPmpFailed) and ev.result == 3
