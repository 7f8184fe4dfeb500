"""Fuzz target: the application handshake messages (Hello / PubKey / Complete) and machine.

Its typed rejections are :class:`~glueberry.errors.HandshakeError` (the application layer's
error) and :class:`~glueberry.errors.PeerIdMismatch` (a PubKey that is not the peer's), mapped
here to the runner's RemoteProtocolError. Invariant: a message decodes and
re-encodes to itself, or is refused with HandshakeError; the machine fed any payload returns
actions or raises one of those two; nothing else.
"""

from __future__ import annotations

from glueberry.errors import HandshakeError, PeerIdMismatch, RemoteProtocolError
from glueberry.handshake import (
    Complete,
    HandshakeMachine,
    Hello,
    PubKey,
    decode_message,
    encode_complete,
    encode_hello,
    encode_pubkey,
)
from glueberry.wire.identity import PrivateKey

_KEY = PrivateKey.from_seed(b"\x42" * 32)
_PEER = PrivateKey.from_seed(b"\x43" * 32)

SEEDS: list[bytes] = [
    encode_hello(),
    encode_pubkey(_PEER.public_key.data),
    encode_complete(True),
    encode_complete(False),
    encode_hello()[:-1],
    b"\x14\x80\x01\x10\x01\x00\x00\x00",
]


def TARGET(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except HandshakeError:
        msg = None
    if isinstance(msg, PubKey):
        assert decode_message(encode_pubkey(msg.public_key)) == msg
    elif isinstance(msg, Hello):
        assert decode_message(encode_hello(msg.version)) == msg
    elif isinstance(msg, Complete):
        assert decode_message(encode_complete(msg.success)) == msg
    machine = HandshakeMachine(_PEER.peer_id, _KEY.public_key.data)
    machine.start()
    try:
        machine.receive(encode_hello())
        machine.receive(data)
    except (HandshakeError, PeerIdMismatch) as exc:
        raise RemoteProtocolError(str(exc)) from exc
