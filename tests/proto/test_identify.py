"""Identify / identify-push: codec round trips, the reader machine, verification, caps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.proto.identify import (
    AGENT_VERSION,
    MAX_MESSAGES,
    PROTOCOL_VERSION,
    IdentifyReader,
    IdentifyReceived,
    IdentifyTimedOut,
    PushRateLimiter,
    build_identify,
    make_signed_peer_record,
    verify_signed_peer_record,
)
from glueberry.wire import pb_identify, protobuf, varint
from glueberry.wire.identity import PrivateKey
from glueberry.wire.multiaddr import Multiaddr
from glueberry.wire.pb_identify import (
    PEER_RECORD_DOMAIN,
    PEER_RECORD_PAYLOAD_TYPE,
    IdentifyFields,
    decode_identify,
    encode_identify,
)

KEY = PrivateKey.from_seed(bytes(range(32)))
OTHER = PrivateKey.from_seed(bytes(range(1, 33)))
PEER = KEY.peer_id
A1 = Multiaddr("/ip4/127.0.0.1/tcp/4001")
A2 = Multiaddr("/ip6/::1/udp/4001/quic-v1")
OBS = Multiaddr("/ip4/192.0.2.7/tcp/55555")
PROTOS = ["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/echo/1.0.0"]


def _read(wire: bytes, *, push: bool = False, split: bool = False) -> IdentifyReceived:
    r = IdentifyReader(PEER, push=push)
    if split:
        for i in range(len(wire)):
            r.receive_data(wire[i : i + 1], 0.0)
    elif wire:
        r.receive_data(wire, 0.0)
    assert r.next_event() is None
    r.receive_data(b"", 0.0)
    ev = r.next_event()
    assert isinstance(ev, IdentifyReceived)
    assert r.finished
    return ev


def _full(**kw: object) -> bytes:
    args: dict[str, object] = {
        "public_key": KEY.public_key,
        "listen_addrs": [A1, A2],
        "protocols": PROTOS,
        "observed_addr": OBS,
    }
    args.update(kw)
    return build_identify(**args)  # type: ignore[arg-type]


# --- codec ----------------------------------------------------------------------------------

_fields = st.builds(
    IdentifyFields,
    public_key=st.none() | st.binary(max_size=64),
    listen_addrs=st.none() | st.lists(st.binary(max_size=40), min_size=1, max_size=5),
    protocols=st.none() | st.lists(st.text(max_size=30), min_size=1, max_size=5),
    observed_addr=st.none() | st.binary(max_size=40),
    protocol_version=st.none() | st.text(max_size=20),
    agent_version=st.none() | st.text(max_size=20),
    signed_peer_record=st.none() | st.binary(max_size=100),
)


@given(_fields)
def test_identify_fields_round_trip(f: IdentifyFields) -> None:
    assert decode_identify(encode_identify(f)) == f


@given(st.binary(max_size=200))
def test_decode_never_raises_anything_else(data: bytes) -> None:
    try:
        decode_identify(data)
    except RemoteProtocolError:
        pass


def test_unknown_fields_are_skipped_and_scalars_last_wins() -> None:
    body = (
        protobuf.field_str(6, "first")
        + protobuf.field_varint(7, 99)
        + protobuf.field_bytes(100, b"x")
        + protobuf.field_str(6, "second")
    )
    f = decode_identify(body)
    assert f.agent_version == "second"
    assert f.listen_addrs is None and f.protocols is None


def test_wrong_wire_type_and_bad_utf8() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_identify(protobuf.field_varint(3, 1))
    with pytest.raises(RemoteProtocolError):
        decode_identify(protobuf.field_bytes(6, b"\xff\xfe"))


def test_caps() -> None:
    many_addrs = b"".join(protobuf.field_bytes(2, A1.to_bytes()) for _ in range(501))
    assert len(many_addrs) < 8192
    with pytest.raises(RemoteProtocolError):
        decode_identify(many_addrs)
    many_protos = b"".join(protobuf.field_str(3, "") for _ in range(1025))
    with pytest.raises(RemoteProtocolError):
        decode_identify(many_protos)
    with pytest.raises(RemoteProtocolError):
        decode_identify(protobuf.field_str(6, "a" * 1025))
    with pytest.raises(RemoteProtocolError):
        decode_identify(b"\x00" * 8193)


# --- reader -----------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True])
def test_full_identify(split: bool) -> None:
    ev = _read(_full(), split=split)
    info = ev.info
    assert not ev.push and ev.parts == 1
    assert info.public_key == KEY.public_key
    assert info.listen_addrs == (A1, A2)
    assert info.protocols == tuple(PROTOS)
    assert info.observed_addr == OBS
    assert info.protocol_version == PROTOCOL_VERSION == "ipfs/0.1.0"
    assert info.agent_version == AGENT_VERSION
    assert AGENT_VERSION.startswith("glueberry-py/")
    assert info.signed_peer_record is None and not info.signed_record_rejected
    assert info.dropped_addrs == 0


def test_parts_are_merged_like_go() -> None:
    p1 = encode_identify(IdentifyFields(listen_addrs=[A1.to_bytes()], agent_version="a"))
    p2 = encode_identify(IdentifyFields(listen_addrs=[A2.to_bytes()], agent_version="b"))
    wire = varint.encode_length_prefixed(p1) + varint.encode_length_prefixed(p2)
    ev = _read(wire, split=True)
    assert ev.parts == 2
    assert ev.info.listen_addrs == (A1, A2)
    assert ev.info.agent_version == "b"


def test_empty_stream_is_an_empty_identify() -> None:
    ev = _read(b"")
    assert ev.parts == 0
    assert ev.info.protocols is None and ev.info.public_key is None


def test_too_many_parts() -> None:
    part = varint.encode_length_prefixed(encode_identify(IdentifyFields(agent_version="x")))
    r = IdentifyReader(PEER)
    r.receive_data(part * MAX_MESSAGES, 0.0)
    with pytest.raises(RemoteProtocolError):
        r.receive_data(part, 0.0)
    assert r.finished


def test_oversized_part_is_refused_from_its_prefix() -> None:
    r = IdentifyReader(PEER)
    with pytest.raises(RemoteProtocolError):
        r.receive_data(varint.encode(8193), 0.0)


def test_truncated_final_part() -> None:
    r = IdentifyReader(PEER)
    r.receive_data(_full()[:-3], 0.0)
    with pytest.raises(RemoteProtocolError):
        r.receive_data(b"", 0.0)
    with pytest.raises(LocalProtocolError):
        r.receive_data(b"more", 0.0)


def test_public_key_of_another_peer_is_rejected() -> None:
    r = IdentifyReader(PEER)
    r.receive_data(_full(public_key=OTHER.public_key), 0.0)
    with pytest.raises(RemoteProtocolError):
        r.receive_data(b"", 0.0)


def test_garbage_key_that_hashes_to_peer_is_still_checked() -> None:
    # A sha256 peer ID for a bogus 100-byte "key": the ID matches, parsing must then fail.
    raw = b"\x08\x00\x12\x60" + b"\x30" * 96
    from glueberry.proto.identify import _peer_id_of_serialized_key

    pid = _peer_id_of_serialized_key(raw)
    assert pid is not None
    r = IdentifyReader(pid)
    r.receive_data(varint.encode_length_prefixed(protobuf.field_bytes(1, raw)), 0.0)
    with pytest.raises(RemoteProtocolError):
        r.receive_data(b"", 0.0)


def test_unparseable_addrs_are_dropped_and_counted() -> None:
    body = encode_identify(
        IdentifyFields(
            listen_addrs=[A1.to_bytes(), b"\xff\xff\xff", b""], observed_addr=b"\x04\x01"
        )
    )
    ev = _read(varint.encode_length_prefixed(body))
    assert ev.info.listen_addrs == (A1,)
    assert ev.info.observed_addr is None
    assert ev.info.dropped_addrs == 3


def test_timeout() -> None:
    r = IdentifyReader(PEER, now=100.0, timeout=5.0)
    assert r.get_timer() == 105.0
    r.handle_timer(104.0)
    assert r.next_event() is None
    r.handle_timer(105.0)
    assert isinstance(r.next_event(), IdentifyTimedOut)
    assert r.finished and r.get_timer() is None


def test_push_absent_fields_stay_none() -> None:
    wire = build_identify(
        public_key=None,
        listen_addrs=[A2],
        protocols=None,
        protocol_version=None,
        agent_version=None,
    )
    ev = _read(wire, push=True, split=True)
    assert ev.push
    assert ev.info.listen_addrs == (A2,)
    assert ev.info.protocols is None
    assert ev.info.agent_version is None
    assert ev.info.public_key is None


# --- signed peer records --------------------------------------------------------------------


def test_signed_peer_record_round_trip() -> None:
    rec = make_signed_peer_record(KEY, [A1, A2], seq=42)
    ev = _read(_full(signed_peer_record=rec))
    spr = ev.info.signed_peer_record
    assert spr is not None
    assert spr.peer_id == PEER and spr.seq == 42 and spr.addrs == (A1, A2)
    assert spr.envelope == rec


def test_large_message_splits_record_into_second_part() -> None:
    addrs = [Multiaddr(f"/ip4/10.0.{i // 250}.{i % 250}/tcp/{4000 + i}") for i in range(200)]
    rec = make_signed_peer_record(KEY, addrs[:10], seq=1)
    wire = _full(listen_addrs=addrs, signed_peer_record=rec)
    ev = _read(wire)
    assert ev.parts == 2
    assert ev.info.signed_peer_record is not None
    assert ev.info.listen_addrs is not None and len(ev.info.listen_addrs) == 200


def _bad_records() -> list[bytes]:
    payload = pb_identify.encode_peer_record(PEER, 1, [A1.to_bytes()])
    other_payload = pb_identify.encode_peer_record(OTHER.peer_id, 1, [A1.to_bytes()])
    good = pb_identify.encode_envelope(KEY, PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, payload)
    tampered = bytearray(good)
    tampered[-1] ^= 1
    return [
        # signed by another key (RUSTSEC-2022-0009)
        pb_identify.encode_envelope(OTHER, PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, payload),
        # right key, record about another peer
        pb_identify.encode_envelope(
            KEY, PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, other_payload
        ),
        # wrong domain (the RFC's name, not what peers use)
        pb_identify.encode_envelope(KEY, "libp2p-routing-state", PEER_RECORD_PAYLOAD_TYPE, payload),
        # wrong payload type (a relay voucher)
        pb_identify.encode_envelope(KEY, PEER_RECORD_DOMAIN, b"\x03\x02", payload),
        bytes(tampered),
        b"\x0a\x01",
    ]


@pytest.mark.parametrize("record", _bad_records())
def test_invalid_signed_record_is_ignored_not_trusted(record: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        verify_signed_peer_record(record, PEER)
    ev = _read(_full(signed_peer_record=record))
    assert ev.info.signed_peer_record is None
    assert ev.info.signed_record_rejected
    assert ev.info.listen_addrs == (A1, A2)


def test_envelope_codec_rejects_missing_fields() -> None:
    with pytest.raises(RemoteProtocolError):
        pb_identify.decode_envelope(protobuf.field_bytes(2, b"\x03\x01"))
    with pytest.raises(RemoteProtocolError):
        pb_identify.decode_envelope(b"\x00" * 9000)
    with pytest.raises(RemoteProtocolError):
        pb_identify.decode_peer_record(protobuf.field_varint(2, 5))


def test_builder_refuses_oversized_parts() -> None:
    with pytest.raises(LocalProtocolError):
        build_identify(public_key=None, listen_addrs=None, protocols=["/p/" + "x" * 1000] * 9)


# --- push rate limiter -------------------------------------------------------------------------


def test_push_rate_limiter() -> None:
    lim = PushRateLimiter(rate=2.0, burst=3)
    assert all(lim.allow("a", 0.0) for _ in range(3))
    assert not lim.allow("a", 0.0)
    assert lim.allow("b", 0.0)
    assert not lim.allow("a", 0.1)
    assert lim.allow("a", 0.6)  # 0.6 s * 2/s refilled one token (minus the failed try)
    assert lim.refused == 2
    # A storm of 1000 pushes in one second gets through at most burst + rate.
    lim2 = PushRateLimiter(rate=1.0, burst=5)
    passed = sum(lim2.allow("p", i / 1000) for i in range(1000))
    assert passed == 5
    with pytest.raises(LocalProtocolError):
        PushRateLimiter(rate=0)


def test_push_rate_limiter_table_is_bounded() -> None:
    lim = PushRateLimiter(rate=1.0, burst=2, max_peers=10)
    for i in range(100):
        lim.allow(i, float(i))
    assert len(lim._buckets) <= 11
    lim.forget(99)
    assert 99 not in lim._buckets
