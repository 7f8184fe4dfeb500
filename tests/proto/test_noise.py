"""libp2p Noise XX machine and transport: differential tests against ``noiseprotocol``,
full handshakes between two machines, and the bad-input list B-01..B-05."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from glueberry.errors import (
    DecryptionFailed,
    LocalProtocolError,
    NegotiationFailed,
    PeerIdMismatch,
    RemoteProtocolError,
    SecurityError,
)
from glueberry.proto.noise import (
    MAX_HANDSHAKE_MESSAGE,
    MAX_PLAINTEXT,
    NONCE_LIMIT,
    PROTOCOL_NAME,
    SEAL_IN_PLACE,
    SIGNATURE_PREFIX,
    HandshakeCompleted,
    NoiseHandshake,
    NoiseStaticKey,
    NoiseTransport,
)
from glueberry.wire import protobuf
from glueberry.wire.identity import PeerId, PrivateKey
from glueberry.wire.pb_noise import (
    NoiseExtensions,
    NoiseHandshakePayload,
    decode_payload,
    encode_payload,
)

ALICE = PrivateKey.from_seed(bytes(range(32)))
BOB = PrivateKey.from_seed(bytes(range(1, 33)))
MALLORY = PrivateKey.from_seed(bytes(range(2, 34)))


def x25519(seed: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def raw(key: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def libp2p_payload(
    identity: PrivateKey,
    static_pub: bytes,
    muxers: tuple[str, ...] = ("/yamux/1.0.0",),
    *,
    prefix: bytes = SIGNATURE_PREFIX,
) -> bytes:
    return encode_payload(
        NoiseHandshakePayload(
            identity_key=identity.public_key.to_protobuf(),
            identity_sig=identity.sign(prefix + static_pub),
            extensions=NoiseExtensions(stream_muxers=muxers) if muxers else None,
        )
    )


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(2, "big") + body


def unframe(data: bytes) -> bytes:
    n = int.from_bytes(data[:2], "big")
    assert len(data) == 2 + n
    return data[2:]


def oracle(initiator: bool, static: X25519PrivateKey, eph: X25519PrivateKey) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL_NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, raw(static))
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, raw(eph))
    conn.set_prologue(b"")
    with warnings.catch_warnings():
        # The oracle warns about a preset ephemeral key: that is what this test wants.
        warnings.filterwarnings("ignore", "One of ephemeral keypairs", UserWarning)
        conn.start_handshake()
    return conn


def completed(m: NoiseHandshake) -> HandshakeCompleted:
    events = list(m.events())
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, HandshakeCompleted)
    return ev


# --- differential tests against the noiseprotocol package -------------------------------


def test_our_initiator_against_oracle_responder() -> None:
    s_r, e_r = x25519(3), x25519(4)
    ours = NoiseHandshake(
        True,
        ALICE,
        expected_peer=BOB.peer_id,
        static_key=x25519(1),
        ephemeral_key=x25519(2),
    )
    resp = oracle(False, s_r, e_r)
    msg1 = ours.data_to_send()
    assert msg1 == frame(x25519(2).public_key().public_bytes_raw())
    assert resp.read_message(unframe(msg1)) == b""
    s_r_pub = s_r.public_key().public_bytes_raw()
    msg2 = bytes(resp.write_message(libp2p_payload(BOB, s_r_pub)))
    ours.receive_data(frame(msg2))
    msg3 = ours.data_to_send()
    ev = completed(ours)
    assert ev.remote_peer == BOB.peer_id
    assert ev.remote_public_key == BOB.public_key
    assert ev.muxer == "/yamux/1.0.0"
    assert ev.trailing_data == b""
    # The oracle decrypts our payload: it is signed by Alice over our static key.
    payload = decode_payload(bytes(resp.read_message(unframe(msg3))))
    assert resp.handshake_finished
    assert payload.identity_key == ALICE.public_key.to_protobuf()
    static_pub = x25519(1).public_key().public_bytes_raw()
    assert ALICE.public_key.verify(SIGNATURE_PREFIX + static_pub, payload.identity_sig)
    assert payload.extensions is not None
    assert payload.extensions.stream_muxers == ("/yamux/1.0.0",)
    _check_transport_against_oracle(ev.transport, resp)


def test_oracle_initiator_against_our_responder() -> None:
    s_i, e_i = x25519(5), x25519(6)
    init = oracle(True, s_i, e_i)
    ours = NoiseHandshake(False, BOB, static_key=x25519(7), ephemeral_key=x25519(8))
    assert ours.data_to_send() == b""
    ours.receive_data(frame(bytes(init.write_message())))
    msg2 = ours.data_to_send()
    payload = decode_payload(bytes(init.read_message(unframe(msg2))))
    static_pub = x25519(7).public_key().public_bytes_raw()
    assert BOB.public_key.verify(SIGNATURE_PREFIX + static_pub, payload.identity_sig)
    s_i_pub = s_i.public_key().public_bytes_raw()
    msg3 = bytes(
        init.write_message(libp2p_payload(ALICE, s_i_pub, ("/mplex/6.7.0", "/yamux/1.0.0")))
    )
    # The oracle's first transport message rides in the same segment as message 3.
    first = bytes(init.encrypt(b"early bytes"))
    ours.receive_data(frame(msg3) + frame(first))
    ev = completed(ours)
    assert ev.remote_peer == ALICE.peer_id
    assert ev.muxer == "/yamux/1.0.0"
    assert ev.transport.decrypt(ev.trailing_data) == b"early bytes"
    _check_transport_against_oracle(ev.transport, init)


def _check_transport_against_oracle(ours: NoiseTransport, theirs: NoiseConnection) -> None:
    for size in (0, 1, 1024, MAX_PLAINTEXT):
        data = os.urandom(size)
        if size:
            assert bytes(theirs.decrypt(unframe(ours.encrypt(data)))) == data
        assert ours.decrypt(frame(bytes(theirs.encrypt(data)))) == data
    # Large write: several frames, each a valid Noise message for the oracle.
    data = os.urandom(3 * MAX_PLAINTEXT + 10)
    wire = ours.encrypt(data)
    got, pos = b"", 0
    while pos < len(wire):
        n = int.from_bytes(wire[pos : pos + 2], "big")
        assert n <= 65535
        got += bytes(theirs.decrypt(wire[pos + 2 : pos + 2 + n]))
        pos += 2 + n
    assert got == data


def test_deterministic_handshake_matches_oracle_bytes() -> None:
    """With fixed keys our initiator's messages equal the oracle's, byte for byte."""
    s_i, e_i, s_r, e_r = x25519(11), x25519(12), x25519(13), x25519(14)
    ours = NoiseHandshake(True, ALICE, static_key=s_i, ephemeral_key=e_i)
    ref = oracle(True, s_i, e_i)
    resp = oracle(False, s_r, e_r)
    msg1 = ours.data_to_send()
    assert unframe(msg1) == bytes(ref.write_message())
    resp.read_message(unframe(msg1))
    msg2 = bytes(resp.write_message(libp2p_payload(BOB, s_r.public_key().public_bytes_raw())))
    ref.read_message(msg2)
    ours.receive_data(frame(msg2))
    s_i_pub = s_i.public_key().public_bytes_raw()
    # Ed25519 signatures are deterministic, so the payloads are identical too.
    assert unframe(ours.data_to_send()) == bytes(ref.write_message(libp2p_payload(ALICE, s_i_pub)))


# --- full handshakes between two machines -------------------------------------------------


def pump(a: NoiseHandshake, b: NoiseHandshake, chunk: int = 1 << 20) -> None:
    """Exchange messages until both are finished, in chunks of ``chunk`` bytes."""
    for _ in range(10):
        for src, dst in ((a, b), (b, a)):
            out = src.data_to_send()
            for i in range(0, len(out), chunk):
                dst.receive_data(out[i : i + chunk])
        if a.is_finished and b.is_finished:
            return
    raise AssertionError("handshake did not finish")


def pair(
    *,
    i_muxers: tuple[str, ...] = ("/yamux/1.0.0",),
    r_muxers: tuple[str, ...] = ("/yamux/1.0.0",),
    expected_by_initiator: PeerId | None = None,
    expected_by_responder: PeerId | None = None,
) -> tuple[NoiseHandshake, NoiseHandshake]:
    i = NoiseHandshake(
        True, ALICE, expected_peer=expected_by_initiator or BOB.peer_id, muxers=i_muxers
    )
    r = NoiseHandshake(False, BOB, expected_peer=expected_by_responder, muxers=r_muxers)
    return i, r


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_full_handshake(chunk: int) -> None:
    i, r = pair(expected_by_responder=ALICE.peer_id)
    pump(i, r, chunk)
    ei, er = completed(i), completed(r)
    assert ei.remote_peer == BOB.peer_id and er.remote_peer == ALICE.peer_id
    assert ei.muxer == er.muxer == "/yamux/1.0.0"
    assert ei.trailing_data == er.trailing_data == b""
    assert er.transport.decrypt(ei.transport.encrypt(b"ping")) == b"ping"
    assert ei.transport.decrypt(er.transport.encrypt(b"pong")) == b"pong"
    with pytest.raises(LocalProtocolError):
        i.receive_data(b"x")


def test_handshake_message_sizes() -> None:
    """Sizes from libp2p-notes 2.3: 32 / 200+16 / 168+16 (one muxer) plus 2-byte prefixes."""
    i, r = pair()
    m1 = i.data_to_send()
    r.receive_data(m1)
    m2 = r.data_to_send()
    i.receive_data(m2)
    m3 = i.data_to_send()
    assert (len(m1), len(m2), len(m3)) == (2 + 32, 2 + 216, 2 + 184)


def test_first_transport_frame_pipelined_with_msg3() -> None:
    i, r = pair()
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    ei = completed(i)
    r.receive_data(i.data_to_send() + ei.transport.encrypt(b"hello") + b"\x00")
    er = completed(r)
    assert er.transport.decrypt(er.trailing_data) == b"hello"
    assert er.transport.buffered == 1


def test_trailing_garbage_after_msg3() -> None:
    """B-02: garbage after message 3 is handed over, and fails authentication."""
    i, r = pair()
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    r.receive_data(i.data_to_send() + frame(b"\x00" * 40))
    er = completed(r)
    with pytest.raises(DecryptionFailed):
        er.transport.decrypt(er.trailing_data)


# --- muxer negotiation (B-04) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("i_muxers", "r_muxers", "expected"),
    [
        (("/yamux/1.0.0",), ("/yamux/1.0.0",), "/yamux/1.0.0"),
        (("/yamux/1.0.0", "/mplex/6.7.0"), ("/mplex/6.7.0", "/yamux/1.0.0"), "/yamux/1.0.0"),
        (("/mplex/6.7.0", "/yamux/1.0.0"), ("/yamux/1.0.0", "/mplex/6.7.0"), "/mplex/6.7.0"),
        (("/yamux/1.0.0",), (), None),
        ((), ("/yamux/1.0.0",), None),
        ((), (), None),
    ],
)
def test_muxer_negotiation(
    i_muxers: tuple[str, ...], r_muxers: tuple[str, ...], expected: str | None
) -> None:
    i, r = pair(i_muxers=i_muxers, r_muxers=r_muxers)
    pump(i, r)
    assert completed(i).muxer == completed(r).muxer == expected


def test_disjoint_muxer_lists_fail_at_initiator() -> None:
    i, r = pair(i_muxers=("/yamux/1.0.0",), r_muxers=("/mplex/6.7.0",))
    r.receive_data(i.data_to_send())
    with pytest.raises(NegotiationFailed):
        i.receive_data(r.data_to_send())
    assert i.data_to_send() == b""  # message 3 is never sent


def test_disjoint_muxer_lists_fail_at_responder() -> None:
    """An initiator that skips its own check still fails at the responder."""
    i = NoiseHandshake(True, ALICE, muxers=())
    i._our_payload = lambda: libp2p_payload(ALICE, i._s_pub, ("/yamux/1.0.0",))  # type: ignore[method-assign]
    r = NoiseHandshake(False, BOB, muxers=("/mplex/6.7.0",))
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    assert completed(i).muxer is None
    with pytest.raises(NegotiationFailed):
        r.receive_data(i.data_to_send())


def test_muxer_list_over_100_is_ignored() -> None:
    """go ignores lists of more than 100 muxers: fall back to multistream (None)."""
    many = tuple(f"/m/{k}" for k in range(101))
    i, r = pair(i_muxers=("/yamux/1.0.0",), r_muxers=(*many, "/yamux/1.0.0"))
    pump(i, r)
    assert completed(i).muxer is None
    # Exactly 100 is still honoured.
    i, r = pair(i_muxers=("/yamux/1.0.0",), r_muxers=(*many[:99], "/yamux/1.0.0"))
    pump(i, r)
    assert completed(i).muxer == "/yamux/1.0.0"


# --- bad handshake input (B-02, B-03) -----------------------------------------------------


def responder_after_msg1() -> tuple[NoiseHandshake, NoiseHandshake]:
    i, r = pair()
    r.receive_data(i.data_to_send())
    return i, r


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_msg1_must_be_32_bytes(size: int) -> None:
    r = NoiseHandshake(False, BOB)
    with pytest.raises(RemoteProtocolError):
        r.receive_data(frame(os.urandom(size)))
    with pytest.raises(LocalProtocolError):
        r.receive_data(b"\x00")


def test_msg1_length_checked_on_prefix() -> None:
    r = NoiseHandshake(False, BOB)
    with pytest.raises(RemoteProtocolError):
        r.receive_data(b"\xff\xff")


def test_msg1_low_order_point() -> None:
    r = NoiseHandshake(False, BOB)
    with pytest.raises(RemoteProtocolError):
        r.receive_data(frame(bytes(32)))


@pytest.mark.parametrize("length", [0, 95, MAX_HANDSHAKE_MESSAGE + 1, 65535])
def test_msg2_length_bounds(length: int) -> None:
    i = NoiseHandshake(True, ALICE)
    i.data_to_send()
    with pytest.raises(RemoteProtocolError):
        i.receive_data(length.to_bytes(2, "big"))


def test_msg2_truncated_then_eof() -> None:
    i, r = responder_after_msg1()
    msg2 = r.data_to_send()
    i.receive_data(msg2[:-1])
    assert not i.is_finished and i.next_event() is None
    with pytest.raises(RemoteProtocolError):
        i.receive_data(b"")


@pytest.mark.parametrize("where", [40, 100, -1])
def test_msg2_tampered(where: int) -> None:
    """A flipped bit in the static key, the payload or the tag fails authentication."""
    i, r = responder_after_msg1()
    msg2 = bytearray(r.data_to_send())
    msg2[where] ^= 1
    with pytest.raises(DecryptionFailed):
        i.receive_data(bytes(msg2))


def test_msg2_shortened_body() -> None:
    """Truncated payload (length prefix adjusted): authentication fails."""
    i, r = responder_after_msg1()
    body = unframe(r.data_to_send())
    with pytest.raises(DecryptionFailed):
        i.receive_data(frame(body[:-5]))


def test_msg3_tampered() -> None:
    i, r = responder_after_msg1()
    i.receive_data(r.data_to_send())
    msg3 = bytearray(i.data_to_send())
    msg3[10] ^= 0x80
    with pytest.raises(DecryptionFailed):
        r.receive_data(bytes(msg3))


def test_msg3_too_short() -> None:
    i, r = responder_after_msg1()
    i.receive_data(r.data_to_send())
    with pytest.raises(RemoteProtocolError):
        r.receive_data(frame(b"\x00" * 63))


CraftPayload = Callable[[NoiseHandshake], bytes]


def _sig_payload(
    signer: PrivateKey, presented: PrivateKey, signed: Callable[[NoiseHandshake], bytes]
) -> CraftPayload:
    def craft(m: NoiseHandshake) -> bytes:
        return encode_payload(
            NoiseHandshakePayload(
                identity_key=presented.public_key.to_protobuf(),
                identity_sig=signer.sign(signed(m)),
            )
        )

    return craft


def _static(m: NoiseHandshake) -> bytes:
    return m._s_pub


BAD_PAYLOADS: dict[str, tuple[CraftPayload, type[Exception]]] = {
    "signature-by-other-key": (
        _sig_payload(MALLORY, BOB, lambda m: SIGNATURE_PREFIX + _static(m)),
        SecurityError,
    ),
    "signature-over-wrong-prefix": (
        _sig_payload(BOB, BOB, lambda m: b"noise-libp2p-static-kez:" + _static(m)),
        SecurityError,
    ),
    "signature-without-prefix": (_sig_payload(BOB, BOB, _static), SecurityError),
    "signature-over-identity-key": (
        _sig_payload(BOB, BOB, lambda _m: SIGNATURE_PREFIX + BOB.public_key.data),
        SecurityError,
    ),
    "signature-over-other-static-key": (
        _sig_payload(BOB, BOB, lambda _m: SIGNATURE_PREFIX + bytes(32)),
        SecurityError,
    ),
    "no-signature": (
        lambda _m: encode_payload(NoiseHandshakePayload(identity_key=BOB.public_key.to_protobuf())),
        SecurityError,
    ),
    "no-identity-key": (
        lambda m: encode_payload(
            NoiseHandshakePayload(identity_sig=BOB.sign(SIGNATURE_PREFIX + m._s_pub))
        ),
        RemoteProtocolError,
    ),
    "unsupported-key-type": (
        lambda m: encode_payload(
            NoiseHandshakePayload(
                identity_key=protobuf.field_varint(1, 9) + protobuf.field_bytes(2, b"k" * 32),
                identity_sig=BOB.sign(SIGNATURE_PREFIX + m._s_pub),
            )
        ),
        RemoteProtocolError,
    ),
    "not-protobuf": (lambda _m: b"\xff\xff\xff", RemoteProtocolError),
    "identity-key-wrong-wire-type": (lambda _m: protobuf.field_varint(1, 5), RemoteProtocolError),
    "oversized-identity-key": (
        lambda _m: protobuf.field_bytes(1, b"k" * 2000),
        RemoteProtocolError,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
def test_bad_responder_payload(case: str) -> None:
    """B-03: the initiator rejects message 2 and never sends message 3."""
    craft, exc = BAD_PAYLOADS[case]
    i = NoiseHandshake(True, ALICE, expected_peer=BOB.peer_id)
    r = NoiseHandshake(False, BOB)
    r._our_payload = lambda: craft(r)  # type: ignore[method-assign]
    r.receive_data(i.data_to_send())
    with pytest.raises(exc):
        i.receive_data(r.data_to_send())
    assert i.data_to_send() == b""
    assert i.next_event() is None


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
def test_bad_initiator_payload(case: str) -> None:
    craft, exc = BAD_PAYLOADS[case]
    i = NoiseHandshake(True, BOB)
    r = NoiseHandshake(False, ALICE)
    i._our_payload = lambda: craft(i)  # type: ignore[method-assign]
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    with pytest.raises(exc):
        r.receive_data(i.data_to_send())
    assert r.next_event() is None


def test_unknown_payload_fields_are_ignored() -> None:
    """B-04: unknown fields (and early-data field 3 of old drafts) are skipped."""
    i = NoiseHandshake(True, ALICE, expected_peer=BOB.peer_id)
    r = NoiseHandshake(False, BOB)
    r._our_payload = lambda: (  # type: ignore[method-assign]
        libp2p_payload(BOB, r._s_pub)
        + protobuf.field_bytes(3, b"early")
        + protobuf.field_varint(2000, 1)
    )
    pump(i, r)
    assert completed(i).remote_peer == BOB.peer_id


def test_wrong_peer_id_at_initiator() -> None:
    """B-03: the dialed peer ID must match (CVE-2022-24759, GHSA-rch7-f4h5-x9rj)."""
    i = NoiseHandshake(True, ALICE, expected_peer=MALLORY.peer_id)
    r = NoiseHandshake(False, BOB)
    r.receive_data(i.data_to_send())
    with pytest.raises(PeerIdMismatch) as info:
        i.receive_data(r.data_to_send())
    assert info.value.peer_id == BOB.peer_id
    assert i.data_to_send() == b""


def test_wrong_peer_id_at_responder() -> None:
    i, r = pair(expected_by_responder=MALLORY.peer_id)
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    with pytest.raises(PeerIdMismatch):
        r.receive_data(i.data_to_send())


def test_argument_checks() -> None:
    with pytest.raises(LocalProtocolError):
        NoiseHandshake(True, ALICE, muxers="/yamux/1.0.0")
    with pytest.raises(LocalProtocolError):
        NoiseHandshake(True, ALICE, muxers=("",))
    m = NoiseHandshake(True, ALICE)
    assert m.get_timer() is None
    m.handle_timer(1.0)


# --- transport (B-01, B-05) -----------------------------------------------------------------


def transports() -> tuple[NoiseTransport, NoiseTransport]:
    i, r = pair()
    pump(i, r)
    return completed(i).transport, completed(r).transport


def test_transport_multiframe_and_empty() -> None:
    a, b = transports()
    assert a.encrypt(b"") == b""
    data = os.urandom(2 * MAX_PLAINTEXT + 1)
    wire = a.encrypt(data)
    assert len(wire) == 3 * 18 + len(data)
    assert wire[:2] == b"\xff\xff"
    assert a.messages_sent == 3
    assert b.decrypt(wire) == data
    assert b.messages_received == 3
    # An empty frame (tag only) is valid and yields nothing.
    assert a.encrypt(memoryview(bytearray(b"x"))[:0]) == b""


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=70000), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=1, max_value=90000), max_size=8),
)
def test_transport_any_chunking(sizes: list[int], cuts: list[int]) -> None:
    a, b = transports()
    msgs = [os.urandom(n) for n in sizes]
    wire = b"".join(a.encrypt(m) for m in msgs)
    got = bytearray()
    pos = 0
    for c in [*cuts, len(wire)]:
        got += b.decrypt(wire[pos : pos + c])
        pos += c
        if pos >= len(wire):
            break
    assert bytes(got) == b"".join(msgs)
    assert b.buffered == 0


def test_transport_byte_at_a_time() -> None:
    a, b = transports()
    wire = a.encrypt(b"hello") + a.encrypt(b"world")
    got = b"".join(b.decrypt(wire[k : k + 1]) for k in range(len(wire)))
    assert got == b"helloworld"


def test_transport_accepts_memoryview_and_bytearray() -> None:
    a, b = transports()
    wire = a.encrypt(bytearray(b"abc")) + a.encrypt(memoryview(b"xdefx")[1:4])
    assert b.decrypt(memoryview(bytearray(wire))) == b"abcdef"


@pytest.mark.parametrize("where", [0, 1, 2, 10, -1])
def test_corrupted_frame_kills_transport(where: int) -> None:
    """B-05: one corrupted frame, then nothing ever decrypts again (GHSA-6cr6-fmvc-vw2p)."""
    a, b = transports()
    good = a.encrypt(b"first")
    bad = bytearray(a.encrypt(b"second"))
    bad[where] ^= 0x01
    after = a.encrypt(b"third")
    assert b.decrypt(good) == b"first"
    with pytest.raises(DecryptionFailed):
        # A corrupted length prefix either mis-frames (authentication fails) or leaves a
        # partial frame; feed the rest so that the frame completes.
        b.decrypt(bytes(bad) + after + bytes(70000))
    with pytest.raises(DecryptionFailed):
        b.decrypt(after)
    with pytest.raises(SecurityError):
        b.encrypt(b"reply")


def test_corrupted_frame_in_partial_path() -> None:
    a, b = transports()
    bad = bytearray(a.encrypt(b"x" * 100))
    bad[50] ^= 1
    b.decrypt(bytes(bad[:30]))
    with pytest.raises(DecryptionFailed):
        b.decrypt(bytes(bad[30:]))
    with pytest.raises(DecryptionFailed):
        b.decrypt(b"")


@pytest.mark.parametrize("length", [0, 1, 15])
def test_frame_shorter_than_tag(length: int) -> None:
    """B-01: zero-length and sub-tag frames fail authentication."""
    _, b = transports()
    with pytest.raises(DecryptionFailed):
        b.decrypt(frame(bytes(length)))


def test_replayed_frame_fails() -> None:
    a, b = transports()
    f = a.encrypt(b"once")
    assert b.decrypt(f) == b"once"
    with pytest.raises(DecryptionFailed):
        b.decrypt(f)


def test_partial_frame_is_buffered_not_decrypted() -> None:
    """B-01: a length prefix larger than the data waits (bounded by 65535 bytes)."""
    _, b = transports()
    assert b.decrypt(b"\xff\xff" + b"\x00" * 100) == b""
    assert b.buffered == 102


def test_send_nonce_exhaustion() -> None:
    a, b = transports()
    a._tx_n = b._rx_n = NONCE_LIMIT - 1
    wire = a.encrypt(b"last")
    assert b.decrypt(wire) == b"last"
    with pytest.raises(SecurityError):
        a.encrypt(b"one too many")
    with pytest.raises(SecurityError):
        a.encrypt(b"")


def test_send_nonce_exhaustion_multiframe() -> None:
    a, _ = transports()
    a._tx_n = NONCE_LIMIT - 2
    with pytest.raises(SecurityError):
        a.encrypt(bytes(3 * MAX_PLAINTEXT))


def test_receive_nonce_exhaustion() -> None:
    a, b = transports()
    a._tx_n = b._rx_n = NONCE_LIMIT - 2
    wire = a.encrypt(b"a") + a.encrypt(b"b")
    assert b.decrypt(wire) == b"ab"
    # The remote's nonce 2**64-1 is reserved: refuse it even with a valid frame.
    a._tx_n = NONCE_LIMIT - 1
    last = a.encrypt(b"c")
    with pytest.raises(SecurityError):
        b.decrypt(last)
    with pytest.raises(DecryptionFailed):
        b.decrypt(last)


# --- NoiseStaticKey: one static key and payload for many handshakes --------------------------


def test_static_key_reused_across_handshakes() -> None:
    static = NoiseStaticKey(ALICE)
    remotes = []
    for _ in range(3):
        i = NoiseHandshake(True, ALICE, expected_peer=BOB.peer_id, static=static)
        r = NoiseHandshake(False, BOB)
        pump(i, r)
        ei, er = completed(i), completed(r)
        assert er.remote_peer == ALICE.peer_id and ei.remote_peer == BOB.peer_id
        assert er.transport.decrypt(ei.transport.encrypt(b"x")) == b"x"
        remotes.append(r._re)  # the ephemeral keys differ per session
        assert i._s_pub == static.public and i.local_peer == ALICE.peer_id
    assert len(set(remotes)) == 3
    # The payload is encoded once per muxer list.
    assert static.payload(("/yamux/1.0.0",)) is static.payload(("/yamux/1.0.0",))
    assert static.payload(()) != static.payload(("/yamux/1.0.0",))


def test_static_key_as_responder_checks_out_with_the_oracle_signature() -> None:
    static = NoiseStaticKey(BOB)
    i = NoiseHandshake(True, ALICE, expected_peer=BOB.peer_id)
    r = NoiseHandshake(False, BOB, static=static)
    pump(i, r)
    assert completed(i).remote_public_key == BOB.public_key  # signature verified
    assert completed(r).remote_peer == ALICE.peer_id


def test_static_key_must_belong_to_the_identity() -> None:
    with pytest.raises(LocalProtocolError):
        NoiseHandshake(True, ALICE, static=NoiseStaticKey(BOB))
    static = NoiseStaticKey(ALICE)
    with pytest.raises(LocalProtocolError):
        NoiseHandshake(True, ALICE, static=static, static_key=x25519(1))


# --- decrypt_into / seal: the allocation-free data path ---------------------------------------

_OUT = bytearray(300_000)


def into(t: NoiseTransport, chunk: bytes | memoryview) -> bytes:
    """``decrypt_into`` a reused buffer, copy the result out, then scribble over the buffer."""
    view = memoryview(_OUT)
    n = t.decrypt_into(chunk, view)
    got = bytes(view[:n])
    _OUT[:] = b"\xee" * len(_OUT)
    return got


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=70000), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=1, max_value=90000), max_size=8),
)
def test_decrypt_into_any_chunking_matches_decrypt(sizes: list[int], cuts: list[int]) -> None:
    a, b = transports()
    _, b2 = transports()
    msgs = [os.urandom(n) for n in sizes]
    wire = b"".join(a.encrypt(m) for m in msgs)
    b2._dec = b._dec  # same keys, so both decode one wire
    b2._dec_into = b._dec_into
    got, ref = bytearray(), bytearray()
    pos = 0
    for c in [*cuts, len(wire)]:
        chunk = memoryview(bytearray(wire[pos : pos + c]))  # a lent, writable buffer
        got += into(b, chunk)
        ref += b2.decrypt(wire[pos : pos + c])
        pos += c
        if pos >= len(wire):
            break
    assert bytes(got) == bytes(ref) == b"".join(msgs)
    assert b.buffered == 0 and b.messages_received == b2.messages_received


def test_decrypt_into_byte_at_a_time() -> None:
    a, b = transports()
    wire = a.encrypt(b"hello") + a.encrypt(b"world")
    got = b"".join(into(b, wire[k : k + 1]) for k in range(len(wire)))
    assert got == b"helloworld"
    assert b.messages_received == 2


def test_decrypt_into_refuses_a_small_buffer() -> None:
    a, b = transports()
    wire = a.encrypt(b"x" * 100)
    with pytest.raises(ValueError, match="too small"):
        b.decrypt_into(wire, memoryview(bytearray(len(wire) - 1)))
    assert b.decrypt_into(wire, memoryview(bytearray(len(wire)))) == 100


@pytest.mark.parametrize("split", [None, 1, 30])
def test_decrypt_into_corrupted_frame_kills_transport(split: int | None) -> None:
    a, b = transports()
    assert into(b, a.encrypt(b"first")) == b"first"
    bad = bytearray(a.encrypt(b"x" * 100))
    bad[50] ^= 1
    with pytest.raises(DecryptionFailed):
        if split is None:
            into(b, bytes(bad))
        else:
            into(b, bytes(bad[:split]))
            into(b, bytes(bad[split:]))
    with pytest.raises(DecryptionFailed):
        into(b, a.encrypt(b"after"))


@pytest.mark.parametrize("length", [0, 1, 15])
@pytest.mark.parametrize("split", [False, True])
def test_decrypt_into_frame_shorter_than_tag(length: int, split: bool) -> None:
    _, b = transports()
    wire = frame(bytes(length))
    with pytest.raises(DecryptionFailed):
        if split:
            into(b, wire[:1])
            into(b, wire[1:])
        else:
            into(b, wire)
    with pytest.raises(DecryptionFailed):
        into(b, b"")


def test_decrypt_into_near_the_nonce_limit() -> None:
    a, b = transports()
    a._tx_n = b._rx_n = NONCE_LIMIT - 2
    assert into(b, a.encrypt(b"a") + a.encrypt(b"b")) == b"ab"
    a._tx_n = NONCE_LIMIT - 1
    with pytest.raises(SecurityError):
        into(b, a.encrypt(b"c"))


@pytest.mark.parametrize(
    "size", [0, 1, 1024, SEAL_IN_PLACE - 1, SEAL_IN_PLACE, MAX_PLAINTEXT, 3 * MAX_PLAINTEXT + 1]
)
def test_seal_equals_encrypt(size: int) -> None:
    a, b = transports()
    a2, _ = transports()
    a2._enc, a2._enc_into = a._enc, a._enc_into  # same key and nonce sequence
    data = os.urandom(size)
    sealed = a.seal(memoryview(data))
    assert bytes(sealed) == a2.encrypt(data)
    assert a.messages_sent == a2.messages_sent == -(-size // MAX_PLAINTEXT)
    assert b.decrypt(sealed) == data


# --- payload codec (wire/pb_noise.py) --------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    key=st.binary(max_size=64),
    sig=st.binary(max_size=128),
    ext=st.none()
    | st.builds(
        NoiseExtensions,
        webtransport_certhashes=st.lists(st.binary(max_size=64), max_size=16).map(tuple),
        stream_muxers=st.lists(st.text(max_size=20), max_size=100).map(tuple),
    ),
)
def test_payload_round_trip(key: bytes, sig: bytes, ext: NoiseExtensions | None) -> None:
    p = NoiseHandshakePayload(identity_key=key, identity_sig=sig, extensions=ext)
    assert decode_payload(encode_payload(p)) == p


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_payload_decode_raises_only_remote_errors(data: bytes) -> None:
    try:
        decode_payload(data)
    except RemoteProtocolError:
        pass


def test_payload_golden_bytes() -> None:
    """Field numbers and nesting as in the spec's proto2 schema."""
    p = NoiseHandshakePayload(
        identity_key=b"K", identity_sig=b"S", extensions=NoiseExtensions(stream_muxers=("/y",))
    )
    assert encode_payload(p) == b"\x0a\x01K\x12\x01S\x22\x04\x12\x02/y"


def test_payload_muxer_caps() -> None:
    many = [protobuf.field_str(2, f"/m/{k}") for k in range(150)]
    p = decode_payload(protobuf.field_bytes(4, b"".join(many)))
    assert p.extensions is not None
    assert p.extensions.muxers_overflow and len(p.extensions.stream_muxers) == 100
    # Overflow also counts across repeated (merged) extensions fields.
    half = protobuf.field_bytes(4, b"".join(many[:60]))
    p = decode_payload(half + half)
    assert p.extensions is not None and p.extensions.muxers_overflow
    # Non-UTF-8 or oversized entries are dropped, not fatal.
    ext = protobuf.field_bytes(2, b"\xff") + protobuf.field_str(2, "/x" * 600)
    p = decode_payload(protobuf.field_bytes(4, ext + protobuf.field_str(2, "/yamux/1.0.0")))
    assert p.extensions is not None and p.extensions.stream_muxers == ("/yamux/1.0.0",)


def test_payload_certhash_caps() -> None:
    hashes = b"".join(protobuf.field_bytes(1, bytes(34)) for _ in range(40))
    p = decode_payload(protobuf.field_bytes(4, hashes))
    assert p.extensions is not None and len(p.extensions.webtransport_certhashes) == 16
    with pytest.raises(RemoteProtocolError):
        decode_payload(protobuf.field_bytes(4, protobuf.field_bytes(1, bytes(200))))


@pytest.mark.parametrize(
    "bad",
    [
        protobuf.field_varint(2, 1),  # signature as a varint
        protobuf.field_varint(4, 1),  # extensions as a varint
        protobuf.field_bytes(4, protobuf.field_varint(2, 7)),  # muxer as a varint
        protobuf.field_bytes(2, bytes(2000)),  # oversized signature
        b"\x0a\x05abc",  # truncated
    ],
)
def test_payload_rejects(bad: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_payload(bad)
