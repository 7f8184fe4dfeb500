"""Fuzz target: Noise handshake messages, handshake payloads and transport frames.

Invariant: every input is accepted, or raises RemoteProtocolError or a SecurityError
(DecryptionFailed, PeerIdMismatch, bad signature) or NegotiationFailed (disjoint muxer
lists); nothing else, and never a hang. Payload parsing is fuzzed directly as well, since
on the wire it sits behind the AEAD and random bytes would never reach it.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from glueberry.errors import NegotiationFailed, RemoteProtocolError, SecurityError
from glueberry.proto.noise import SIGNATURE_PREFIX, NoiseHandshake, NoiseTransport
from glueberry.wire.identity import PrivateKey
from glueberry.wire.pb_noise import (
    NoiseExtensions,
    NoiseHandshakePayload,
    decode_payload,
    encode_payload,
)

_ALICE = PrivateKey.from_seed(bytes(range(32)))
_BOB = PrivateKey.from_seed(bytes(range(1, 33)))


def _x(seed: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def _initiator() -> NoiseHandshake:
    return NoiseHandshake(
        True, _ALICE, expected_peer=_BOB.peer_id, static_key=_x(1), ephemeral_key=_x(2)
    )


def _responder() -> NoiseHandshake:
    return NoiseHandshake(False, _BOB, static_key=_x(3), ephemeral_key=_x(4))


def _transcript() -> tuple[bytes, bytes, bytes]:
    i, r = _initiator(), _responder()
    m1 = i.data_to_send()
    r.receive_data(m1)
    m2 = r.data_to_send()
    i.receive_data(m2)
    return m1, m2, i.data_to_send()


_M1, _M2, _M3 = _transcript()
_PAYLOAD = encode_payload(
    NoiseHandshakePayload(
        identity_key=_BOB.public_key.to_protobuf(),
        identity_sig=_BOB.sign(SIGNATURE_PREFIX + bytes(32)),
        extensions=NoiseExtensions(stream_muxers=("/yamux/1.0.0", "/mplex/6.7.0")),
    )
)
_SEND, _RECV = bytes(range(32)), bytes(range(32, 64))
_FRAMES = NoiseTransport(_SEND, _RECV).encrypt(b"hello") + NoiseTransport(_SEND, _RECV).encrypt(
    b"x" * 70000
)

SEEDS = [_M1, _M2, _M3, _M1 + b"\x00", _M2[:50], _PAYLOAD, _FRAMES, b"\x00\x00", b"\xff\xff"]

_ALLOWED = (RemoteProtocolError, SecurityError, NegotiationFailed)


def TARGET(data: bytes) -> None:
    # Message 1 (and anything after it) into a responder.
    try:
        _responder().receive_data(data)
    except _ALLOWED:
        pass
    # A valid message 1, then the input as message 3.
    try:
        r = _responder()
        r.receive_data(_M1)
        r.receive_data(data)
    except _ALLOWED:
        pass
    # The input as message 2, whole and one byte at a time.
    for step in (len(data) or 1, 1):
        try:
            i = _initiator()
            for k in range(0, len(data), step):
                if i.is_finished:
                    break
                i.receive_data(data[k : k + step])
        except _ALLOWED:
            pass
    # The decrypted payload parser and the checks run on it.
    try:
        payload = decode_payload(data)
        ext = payload.extensions
        if ext is not None:
            assert len(ext.stream_muxers) <= 100
        _initiator()._verify(data, bytes(32))
    except _ALLOWED:
        pass
    # Transport frames.
    try:
        t = NoiseTransport(_RECV, _SEND)
        t.decrypt(data)
        t.decrypt(data)
    except _ALLOWED:
        pass
    # The same through decrypt_into, in two pieces (the buffer always fits: plaintext never
    # exceeds the ciphertext it completes).
    try:
        t = NoiseTransport(_RECV, _SEND)
        out = memoryview(bytearray(2 * len(data) + 2))
        half = len(data) // 2
        n = t.decrypt_into(data[:half], out)
        n += t.decrypt_into(data[half:], out[n:])
        assert n <= len(data)
    except _ALLOWED:
        pass
