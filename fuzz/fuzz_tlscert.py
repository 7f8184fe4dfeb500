"""Fuzz target: libp2p TLS certificates and the SignedKey extension value.

Invariant: :func:`glueberry.wire.tlscert.verify_certificate` and
:func:`~glueberry.wire.tlscert.decode_signed_key` either accept or raise
``RemoteProtocolError``, nothing else; an accepted certificate authenticates a peer ID.
Seeds: the libp2p/specs TLS test vectors and a certificate made here (valid in 2030).
"""

from __future__ import annotations

from glueberry.errors import RemoteProtocolError
from glueberry.wire import tlscert
from glueberry.wire.identity import PeerId, PrivateKey

NOW = 1_900_000_000.0

_VECTORS = (
    # libp2p/specs tls/tls.md: valid ECDSA-identity certificate, then the invalid one.
    "308201f63082019da0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c"
    "69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f3430393630"
    "3130313133303030305a302031123010060355040a13096c69627032702e696f310a30080603550405130131"
    "3059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba13272"
    "1bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e3"
    "81569ea381c23081bf3081bc060a2b0601040183a25a01010481ad3081aa045f0803125b3059301306072a86"
    "48ce3d020106082a8648ce3d03010703420004bf30511f909414ebdd3242178fd290f093a551cf75c973155d"
    "e0bb5a96fedf6cb5d52da7563e794b512f66e60c7f55ba8a3acf3dd72a801980d205e8a1ad29f20447304502"
    "20064ea8124774caf8f50e57f436aa62350ce652418c019df5d98a3ac666c9386a022100aa59d704a931b5f7"
    "2fb9222cb6cc51f954d04a4e2e5450f8805fe8918f71eaae300a06082a8648ce3d0403020347003044022079"
    "9395b0b6c1e940a7e4484705f610ab51ed376f19ff9d7c16757cfbf61b8d4302206205c03fbb0f95205c779b"
    "e86581d3e31c01871ad5d1f3435bcf375cb0e5088a",
)

SEEDS: list[bytes] = [
    *(bytes.fromhex(h) for h in _VECTORS),
    tlscert.generate_certificate(PrivateKey.from_seed(b"\x01" * 32), NOW, serial=7).der,
    tlscert.generate_certificate(
        PrivateKey.from_seed(b"\x02" * 32), NOW, key_type="ed25519", serial=8
    ).der,
    tlscert.encode_signed_key(b"\x08\x01\x12\x20" + b"\x00" * 32, b"\x01" * 64),
    bytes.fromhex("3080040004000000"),
]


def TARGET(data: bytes) -> None:
    try:
        key = tlscert.verify_certificate(data, NOW)
    except RemoteProtocolError:
        pass
    else:
        assert isinstance(PeerId.from_public_key(key), PeerId)
    tlscert.decode_signed_key(data)
