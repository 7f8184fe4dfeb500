"""Fuzz target: peer-supplied Ed25519 keys in the Glueberry encryption layer.

``validate_ed25519_public_key`` / ``ed25519_public_to_x25519`` / ``x25519_shared_secret`` take
the bytes a peer sent in its PubKey. Their typed rejection is SecurityError (mapped to the
runner's RemoteProtocolError). Invariant: a valid point converts and gives a 32-byte secret
(or is refused as a low-order point), anything else raises SecurityError; nothing else.
"""

from __future__ import annotations

from glueberry.errors import RemoteProtocolError, SecurityError
from glueberry.peers.crypto import (
    ed25519_private_to_x25519,
    ed25519_public_to_x25519,
    validate_ed25519_public_key,
    x25519_shared_secret,
)
from glueberry.wire.identity import PrivateKey

_KEY = PrivateKey.from_seed(b"\x07" * 32)
_X_PRIV = ed25519_private_to_x25519(_KEY)

SEEDS: list[bytes] = [
    _KEY.public_key.data,
    bytes(32),
    b"\x01" + bytes(31),  # the identity point
    b"\xff" * 32,
    b"\xec" + b"\xff" * 30 + b"\x7f",  # y = p - 1
    b"\x00" * 31,
]


def TARGET(data: bytes) -> None:
    try:
        validate_ed25519_public_key(data)
        u = ed25519_public_to_x25519(data)
        assert len(u) == 32
        secret = x25519_shared_secret(_X_PRIV, u)
        assert len(secret) == 32
    except SecurityError as exc:
        raise RemoteProtocolError(str(exc)) from exc
