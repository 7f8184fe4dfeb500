"""Codecs of relay v2, vouchers, DCUtR and AutoNAT v1/v2 (glueberry.wire.pb_nat)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glueberry.errors import RemoteProtocolError
from glueberry.wire import pb_nat as pb
from glueberry.wire import protobuf, varint
from glueberry.wire.identity import PeerId, PrivateKey

KEYS = [PrivateKey.from_seed(bytes([i]) * 32) for i in range(3)]
PIDS = [k.peer_id for k in KEYS]

addr = st.binary(min_size=1, max_size=40)
addrs = st.lists(addr, max_size=5).map(tuple)
pid = st.sampled_from(PIDS)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 63) - 1)
peer = st.builds(pb.PeerInfo, peer_id=pid, addrs=addrs)
limit = st.builds(pb.Limit, duration=st.none() | u32, data=st.none() | u64)
rsvp = st.builds(
    pb.Reservation, expire=u64, addrs=addrs, voucher=st.none() | st.binary(max_size=50)
)
status = st.none() | st.sampled_from(pb.RelayStatus)


@given(
    st.builds(
        pb.HopMessage,
        type=st.sampled_from(pb.HopType),
        peer=st.none() | peer,
        reservation=st.none() | rsvp,
        limit=st.none() | limit,
        status=status,
    )
)
def test_hop_round_trip(m: pb.HopMessage) -> None:
    assert pb.decode_hop(pb.encode_hop(m)) == m


@given(
    st.builds(
        pb.StopMessage,
        type=st.sampled_from(pb.StopType),
        peer=st.none() | peer,
        limit=st.none() | limit,
        status=status,
    )
)
def test_stop_round_trip(m: pb.StopMessage) -> None:
    assert pb.decode_stop(pb.encode_stop(m)) == m


@given(st.builds(pb.HolePunch, type=st.sampled_from(pb.HolePunchType), obs_addrs=addrs))
def test_holepunch_round_trip(m: pb.HolePunch) -> None:
    assert pb.decode_holepunch(pb.encode_holepunch(m)) == m


@given(
    st.builds(
        pb.AutoNATMessage,
        type=st.sampled_from(pb.AutoNATMessageType),
        dial=st.none() | peer,
        dial_response=st.none()
        | st.builds(
            pb.AutoNATDialResponse,
            status=st.sampled_from(pb.AutoNATStatus),
            status_text=st.none() | st.text(max_size=20),
            addr=st.none() | addr,
        ),
    )
)
def test_autonat_v1_round_trip(m: pb.AutoNATMessage) -> None:
    assert pb.decode_autonat(pb.encode_autonat(m)) == m


v2msg = st.one_of(
    st.builds(pb.DialRequest, addrs=addrs, nonce=st.integers(0, (1 << 64) - 1)),
    st.builds(
        pb.DialResponse,
        status=st.sampled_from(pb.ResponseStatus),
        addr_idx=u32,
        dial_status=st.sampled_from(pb.DialStatus),
    ),
    st.builds(pb.DialDataRequest, addr_idx=u32, num_bytes=u64),
    st.builds(pb.DialDataResponse, data=st.binary(max_size=100)),
)


@given(v2msg)
def test_autonat_v2_round_trip(m: pb.V2Message) -> None:
    assert pb.decode_v2(pb.encode_v2(m)) == m


@given(st.integers(0, (1 << 64) - 1))
def test_dial_back_round_trip(nonce: int) -> None:
    assert pb.decode_dial_back(pb.encode_dial_back(pb.DialBack(nonce=nonce))).nonce == nonce
    assert pb.decode_dial_back_response(pb.encode_dial_back_response(pb.DialBackResponse())) == (
        pb.DialBackResponse()
    )


def test_go_compatible_bytes() -> None:
    # proto3: RESERVE (0) is the implicit default, so go sends an empty body.
    assert pb.encode_hop(pb.HopMessage(type=pb.HopType.RESERVE)) == b""
    assert pb.decode_hop(b"") == pb.HopMessage(type=pb.HopType.RESERVE)
    assert pb.decode_stop(b"") == pb.StopMessage(type=pb.StopType.CONNECT)
    # STATUS OK: 08 02 28 64
    assert pb.encode_hop(pb.HopMessage(type=pb.HopType.STATUS, status=pb.RelayStatus.OK)) == (
        bytes.fromhex("08022864")
    )
    # DCUtR is proto2 with a required type: CONNECT = 100 -> 08 64.
    assert pb.encode_holepunch(pb.HolePunch(type=pb.HolePunchType.CONNECT)) == b"\x08\x64"
    with pytest.raises(RemoteProtocolError):
        pb.decode_holepunch(b"")
    # Limit fields are `optional`: 0 is written (and means "no limit").
    assert pb.encode_limit(pb.Limit(duration=0)) == b"\x08\x00"


@pytest.mark.parametrize(
    "bad",
    [
        "0803",  # Hop type 3 unknown
        "2801",  # status 1 unknown
        "0a",  # truncated
        "12020a01",  # peer with truncated id
        "1203" + "0a0100",  # peer id that is not a multihash
        "0b",  # group wire type
        "0a00",  # type as bytes
    ],
)
def test_hop_rejects(bad: str) -> None:
    with pytest.raises(RemoteProtocolError):
        pb.decode_hop(bytes.fromhex(bad))


def test_limit_duration_is_uint32() -> None:
    with pytest.raises(RemoteProtocolError):
        pb.decode_limit(protobuf.field_varint(1, 1 << 32))


def test_too_many_addrs_rejected() -> None:
    body = protobuf.field_varint(1, 100) + protobuf.field_bytes(2, b"\x00") * (pb.MAX_ADDRS + 1)
    with pytest.raises(RemoteProtocolError):
        pb.decode_holepunch(body)


def test_v2_oneof_required_and_nonce_type() -> None:
    with pytest.raises(RemoteProtocolError):
        pb.decode_v2(b"")
    # nonce as varint instead of fixed64
    with pytest.raises(RemoteProtocolError):
        pb.decode_v2(protobuf.field_bytes(1, protobuf.field_varint(2, 5)))
    with pytest.raises(RemoteProtocolError):
        pb.decode_dial_back_response(protobuf.field_varint(1, 3))


# --- vouchers and envelopes ---------------------------------------------------------------


def test_voucher_seal_and_verify() -> None:
    v = pb.Voucher(relay=PIDS[0], peer=PIDS[1], expiration=1_700_000_000)
    env = pb.seal_voucher(KEYS[0], v)
    assert pb.decode_voucher(env) == v
    opened = pb.open_envelope(env, pb.VOUCHER_DOMAIN, pb.VOUCHER_PAYLOAD_TYPE)
    assert opened.signer == PIDS[0]
    assert opened.payload_type == b"\x03\x02"


def test_voucher_wrong_domain_type_signer_and_tamper() -> None:
    v = pb.Voucher(relay=PIDS[0], peer=PIDS[1], expiration=5)
    payload = pb.encode_voucher_payload(v)
    wrong_domain = pb.seal_envelope(KEYS[0], "libp2p-peer-record", b"\x03\x02", payload)
    wrong_type = pb.seal_envelope(KEYS[0], pb.VOUCHER_DOMAIN, b"\x03\x01", payload)
    wrong_signer = pb.seal_envelope(KEYS[2], pb.VOUCHER_DOMAIN, b"\x03\x02", payload)
    good = bytearray(pb.seal_voucher(KEYS[0], v))
    good[-1] ^= 1
    for env in (wrong_domain, wrong_type, wrong_signer, bytes(good), b"", b"\x0a\x00"):
        with pytest.raises(RemoteProtocolError):
            pb.decode_voucher(env)


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_decoders_raise_only_remote_protocol_error(data: bytes) -> None:
    for fn in (
        pb.decode_hop,
        pb.decode_stop,
        pb.decode_holepunch,
        pb.decode_autonat,
        pb.decode_v2,
        pb.decode_dial_back,
        pb.decode_dial_back_response,
        pb.decode_voucher,
        pb.inspect_multiaddr,
    ):
        try:
            fn(data)
        except RemoteProtocolError:
            pass


# --- framing -------------------------------------------------------------------------------


def test_delimited_reader_byte_at_a_time_and_rest() -> None:
    msgs = [b"abc", b"", b"x" * 300]
    stream = b"".join(pb.frame(m) for m in msgs) + b"raw tail"
    r = pb.DelimitedReader(4096, "t")
    out = []
    for i in range(len(stream) - len(b"raw tail")):
        r.feed(stream[i : i + 1])
        while (m := r.next_message()) is not None:
            out.append(m)
    assert out == msgs
    r.feed(b"raw tail")
    assert r.take_rest() == b"raw tail"


def test_delimited_reader_rejects_oversize_prefix_before_body() -> None:
    r = pb.DelimitedReader(4096, "t")
    with pytest.raises(RemoteProtocolError):
        r.feed(varint.encode(4097))
    r = pb.DelimitedReader(10, "t")
    r.feed(pb.frame(b"ok"))
    with pytest.raises(RemoteProtocolError):
        r.feed(varint.encode(11))
        r.next_message()


# --- multiaddr inspection -------------------------------------------------------------------


def test_inspect_multiaddr() -> None:
    a = pb.ip_tcp_multiaddr("8.8.8.8", 4001)
    info = pb.inspect_multiaddr(a)
    assert str(info.ip) == "8.8.8.8" and info.port == 4001 and info.transport == "tcp"
    assert not info.relayed
    q = pb.ip_udp_multiaddr("2001:db8::1", 9, quic=True)
    assert pb.inspect_multiaddr(q).transport == "quic-v1"
    p2p = varint.encode(pb.P_P2P) + varint.encode_length_prefixed(PIDS[0].to_bytes())
    circ = a + p2p + varint.encode(pb.P_CIRCUIT)
    assert pb.inspect_multiaddr(circ).relayed
    assert pb.public_direct_addr(a)
    assert not pb.public_direct_addr(circ)
    assert not pb.public_direct_addr(pb.ip_tcp_multiaddr("10.0.0.1", 1))
    assert pb.public_direct_addr(pb.ip_tcp_multiaddr("10.0.0.1", 1), allow_private=True)
    assert not pb.public_direct_addr(pb.ip_tcp_multiaddr("127.0.0.1", 1), allow_private=True)
    assert not pb.public_direct_addr(b"\xff\xff\x03")
    with pytest.raises(RemoteProtocolError):
        pb.multiaddr_components(b"\x04\x01\x02")


def test_peer_id_type() -> None:
    m = pb.decode_hop(
        pb.encode_hop(pb.HopMessage(type=pb.HopType.CONNECT, peer=pb.PeerInfo(peer_id=PIDS[1])))
    )
    assert isinstance(m.peer, pb.PeerInfo) and isinstance(m.peer.peer_id, PeerId)
