"""Fuzz target: libp2p key protobufs, the DER key parsers, peer IDs and identity files.

Invariant: parsing raises nothing but ``RemoteProtocolError`` (``ConfigError`` for identity
files, which are local configuration); a parsed key re-encodes to the same bytes and
``verify`` returns a bool without raising.
"""

from __future__ import annotations

from glueberry.errors import ConfigError, RemoteProtocolError
from glueberry.wire.identity import PeerId, PublicKey, decode_identity_file
from glueberry.wire.keys_verify import EcdsaPublicKey, RsaPublicKey, Secp256k1PublicKey

SEEDS: list[bytes] = [
    bytes.fromhex(h)
    for h in (
        # libp2p/specs peer-ids.md public key vectors (RSA one shortened to its header).
        "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e",
        "08021221037777e994e452c21604f91de093ce415f5432f701dd8cd1a7a6fea0e630bfca99",
        "0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004de3d300fa36ae0e8f5d530"
        "899d83abab44abf3161f162a4bc901d8e6ecda020e8b6d5f8da30525e71d6851510c098e5c47c646a597"
        "fb4dcec034e9f77c409e62",
        "080012a60430820222300d06092a864886f70d01010105000382020f003082020a0282020100e1beab07",
        "30820222300d06092a864886f70d01010105000382020f003082020a0282020100",
        "3084ffffffff300d06092a864886f70d0101010500",
        "0024080112202ffa35a99d3a3cfbb17bb7c1dc5561b18a8dcca4df38dc613ea859c37eb1336b",
        "12209dff3b17d74cf4d38a50d8b6383e92d181a10395a5e73a726dcccbd21bf6f0b9",
    )
] + [b"bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe", b"QmYyQSo1c1Ym7"]


def _check_key(key: PublicKey) -> None:
    assert isinstance(key.verify(b"message", b"\x30\x06\x02\x01\x01\x02\x01\x01"), bool)
    assert isinstance(key.verify(b"message", bytes(64)), bool)


def TARGET(data: bytes) -> None:
    try:
        key = PublicKey.from_protobuf(data)
    except RemoteProtocolError:
        pass
    else:
        assert key.to_protobuf() == data
        _check_key(key)
    for cls in (RsaPublicKey, EcdsaPublicKey, Secp256k1PublicKey):
        try:
            _check_key(cls(data))
        except RemoteProtocolError:
            pass
    try:
        pid = PeerId.from_bytes(data)
    except RemoteProtocolError:
        pass
    else:
        assert PeerId.from_string(str(pid)) == pid
        pid.extract_public_key()
    try:
        decode_identity_file(data)
    except ConfigError:
        pass
    PeerId.from_string(data.decode("latin-1"))
