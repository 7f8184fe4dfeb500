"""Verify-only libp2p public keys: secp256k1, ECDSA and RSA.

Spec: https://github.com/libp2p/specs/blob/master/peer-ids/peer-ids.md#key-types

Glueberry signs only with Ed25519, but peers with other key types must still be recognised:
their keys arrive in Noise/TLS handshakes, identify and signed peer records, and their
signatures must verify. Each class here parses the key protobuf's ``Data`` field:

* ``Secp256k1`` (type 2): the 33-byte compressed SEC1 point. Signature: DER ECDSA over
  SHA-256(message) (Bitcoin style; high-S values are accepted, as go-libp2p does).
* ``ECDSA`` (type 3): a DER ``SubjectPublicKeyInfo`` for P-256, P-384 or P-521. Signature:
  DER ECDSA over SHA-256(message), whatever the curve.
* ``RSA`` (type 0): a DER ``SubjectPublicKeyInfo`` (PKIX). Signature: RSASSA-PKCS1-v1_5
  with SHA-256. The modulus must have 2048 to 8192 bits (go-libp2p's bounds; keys above
  8192 bits are CVE-2023-39533's CPU burn).

Theory of operation: hostile DER is walked first by a small bounded reader (definite
lengths only, minimal long-form lengths of at most two bytes, every length checked against
the bytes that remain; a long-form length larger than the buffer is CVE-2026-110789's
hang). Only then, and only when the RSA modulus size is within bounds, is the key handed to
``cryptography``. A key must re-encode to exactly the bytes it came from, because the peer
ID is a hash of those bytes. Parsing failures raise
:class:`~glueberry.errors.RemoteProtocolError`; ``verify`` returns ``False`` for any bad
signature and never raises.

Importing :mod:`glueberry.wire.identity` registers these classes with
``PublicKey.from_protobuf``.
"""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from glueberry.errors import RemoteProtocolError
from glueberry.wire.identity import KeyType, PublicKey, register_public_key_type

__all__ = [
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "EcdsaPublicKey",
    "RsaPublicKey",
    "Secp256k1PublicKey",
]

_PROTO: Final = "libp2p-key"

#: go-libp2p's ``MinRsaKeyBits``: smaller RSA keys are refused.
MIN_RSA_BITS: Final = 2048
#: go-libp2p's ``maxRsaKeyBits`` (CVE-2023-39533): larger RSA keys are refused unparsed.
MAX_RSA_BITS: Final = 8192
#: An 8192-bit RSA SubjectPublicKeyInfo is ~1060 bytes; anything larger is refused.
MAX_RSA_DER: Final = 1100
#: A P-521 SubjectPublicKeyInfo is 158 bytes.
MAX_ECDSA_DER: Final = 200
#: Largest DER ECDSA signature: P-521, two 66-byte integers plus a sign byte each.
MAX_ECDSA_SIGNATURE: Final = 139
MAX_SECP256K1_SIGNATURE: Final = 72

_SHA256: Final = hashes.SHA256()
_ECDSA_SHA256: Final = ec.ECDSA(_SHA256)
_EC_CURVES: Final = frozenset({"secp256r1", "secp384r1", "secp521r1"})

# DER tags and OIDs (content octets) used below.
_SEQUENCE: Final = 0x30
_INTEGER: Final = 0x02
_BIT_STRING: Final = 0x03
_NULL: Final = 0x05
_OID: Final = 0x06
_OID_RSA_ENCRYPTION: Final = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1
_OID_EC_PUBLIC_KEY: Final = bytes.fromhex("2a8648ce3d0201")  # 1.2.840.10045.2.1


def _err(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg, protocol=_PROTO)


# --- a bounded DER reader ----------------------------------------------------------------


def _der_read(buf: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """Read one TLV with ``tag`` at ``buf[pos:end]``; return ``(content_start, content_end)``.

    DER only: single-byte tags, definite lengths, minimal length encodings. A length field
    of more than two bytes cannot be right for anything this module reads (keys are capped
    far below 64 KiB), so it is refused without being evaluated.
    """
    if end - pos < 2:
        raise _err(f"DER: truncated {what}")
    if buf[pos] != tag:
        raise _err(f"DER: expected tag 0x{tag:02x} for {what}, got 0x{buf[pos]:02x}")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0:
            raise _err(f"DER: indefinite length in {what}")
        if n > 2:
            raise _err(f"DER: {n}-byte length field in {what}")
        if end - pos < n:
            raise _err(f"DER: truncated length of {what}")
        length = int.from_bytes(buf[pos : pos + n], "big")
        if length < 0x80 or buf[pos] == 0:
            raise _err(f"DER: non-minimal length in {what}")
        pos += n
    if length > end - pos:
        raise _err(f"DER: length of {what} runs past the end of its container")
    return pos, pos + length


def _der_spki(data: bytes, expected_oid: bytes) -> tuple[int, int, int, int]:
    """Walk ``SubjectPublicKeyInfo``; return (params start, params end, key start, key end).

    The key range is the BIT STRING content after its "unused bits" octet.
    """
    start, end = _der_read(data, 0, len(data), _SEQUENCE, "SubjectPublicKeyInfo")
    if end != len(data):
        raise _err("DER: trailing bytes after SubjectPublicKeyInfo")
    alg_start, alg_end = _der_read(data, start, end, _SEQUENCE, "AlgorithmIdentifier")
    oid_start, oid_end = _der_read(data, alg_start, alg_end, _OID, "algorithm OID")
    if data[oid_start:oid_end] != expected_oid:
        raise _err("SubjectPublicKeyInfo has an unexpected algorithm")
    bits_start, bits_end = _der_read(data, alg_end, end, _BIT_STRING, "subjectPublicKey")
    if bits_end != end:
        raise _err("DER: trailing bytes in SubjectPublicKeyInfo")
    if bits_end - bits_start < 1 or data[bits_start] != 0:
        raise _err("DER: subjectPublicKey must have no unused bits")
    return oid_end, alg_end, bits_start + 1, bits_end


def _check_canonical(original: bytes, key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> None:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if der != original:
        raise _err("public key is not in canonical DER form")


# --- secp256k1 ---------------------------------------------------------------------------


class Secp256k1PublicKey(PublicKey):
    """A secp256k1 public key (33-byte compressed point); verify-only."""

    key_type = KeyType.SECP256K1

    def __init__(self, data: bytes) -> None:
        data = bytes(data)
        # The spec and go-libp2p's Raw() use the compressed form; the peer ID hashes these
        # exact bytes, so an uncompressed point would name a different peer.
        if len(data) != 33 or data[0] not in (2, 3):
            raise _err("secp256k1 public key must be a 33-byte compressed point")
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), data)
        except ValueError:
            raise _err("secp256k1 public key is not a point on the curve") from None
        super().__init__(data)
        self._key = key

    @classmethod
    def from_data(cls, data: bytes) -> Secp256k1PublicKey:
        return cls(data)

    @property
    def cryptography_key(self) -> ec.EllipticCurvePublicKey:
        return self._key

    def verify(self, message: bytes, signature: bytes) -> bool:
        if not 8 <= len(signature) <= MAX_SECP256K1_SIGNATURE:
            return False
        try:
            self._key.verify(bytes(signature), bytes(message), _ECDSA_SHA256)
        except (InvalidSignature, ValueError):
            return False
        return True


# --- ECDSA (NIST curves) -----------------------------------------------------------------


class EcdsaPublicKey(PublicKey):
    """An ECDSA public key on P-256, P-384 or P-521 (DER SubjectPublicKeyInfo); verify-only."""

    key_type = KeyType.ECDSA

    def __init__(self, data: bytes) -> None:
        data = bytes(data)
        if len(data) > MAX_ECDSA_DER:
            raise _err(f"ECDSA public key larger than {MAX_ECDSA_DER} bytes")
        _der_spki(data, _OID_EC_PUBLIC_KEY)
        try:
            key = serialization.load_der_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise _err("invalid ECDSA public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _EC_CURVES:
            raise _err("ECDSA public key must be on P-256, P-384 or P-521")
        _check_canonical(data, key)
        super().__init__(data)
        self._key = key

    @classmethod
    def from_data(cls, data: bytes) -> EcdsaPublicKey:
        return cls(data)

    @property
    def cryptography_key(self) -> ec.EllipticCurvePublicKey:
        return self._key

    @property
    def curve(self) -> str:
        """The curve's SEC name (``"secp256r1"`` for P-256)."""
        return self._key.curve.name

    def verify(self, message: bytes, signature: bytes) -> bool:
        if not 8 <= len(signature) <= MAX_ECDSA_SIGNATURE:
            return False
        try:
            self._key.verify(bytes(signature), bytes(message), _ECDSA_SHA256)
        except (InvalidSignature, ValueError):
            return False
        return True


# --- RSA ---------------------------------------------------------------------------------


def _rsa_modulus_bits(data: bytes) -> int:
    """Bit length of the modulus in an RSA SubjectPublicKeyInfo, read without bignum work."""
    params_start, params_end, key_start, key_end = _der_spki(data, _OID_RSA_ENCRYPTION)
    # rsaEncryption parameters MUST be NULL (RFC 3279 §2.3.1).
    if data[params_start:params_end] != bytes((_NULL, 0)):
        raise _err("RSA AlgorithmIdentifier parameters must be NULL")
    seq_start, seq_end = _der_read(data, key_start, key_end, _SEQUENCE, "RSAPublicKey")
    if seq_end != key_end:
        raise _err("DER: trailing bytes after RSAPublicKey")
    n_start, n_end = _der_read(data, seq_start, seq_end, _INTEGER, "RSA modulus")
    e_start, e_end = _der_read(data, n_end, seq_end, _INTEGER, "RSA exponent")
    if e_end != seq_end:
        raise _err("DER: trailing bytes in RSAPublicKey")
    if n_start == n_end or data[n_start] & 0x80:
        raise _err("RSA modulus must be positive")
    if n_end - n_start > 1 and data[n_start] == 0 and not data[n_start + 1] & 0x80:
        raise _err("RSA modulus is not minimally encoded")
    if e_end - e_start > 4:  # go-libp2p and Go's x509 cap the exponent at 31 bits
        raise _err("RSA public exponent too large")
    exponent = int.from_bytes(data[e_start:e_end], "big", signed=True)
    if exponent < 3 or exponent % 2 == 0:
        raise _err("RSA public exponent must be odd and at least 3")
    if not data[n_end - 1] & 1:
        raise _err("RSA modulus must be odd")
    while n_start < n_end and data[n_start] == 0:
        n_start += 1
    if n_start == n_end:
        return 0
    return (n_end - n_start - 1) * 8 + data[n_start].bit_length()


class RsaPublicKey(PublicKey):
    """An RSA public key (DER SubjectPublicKeyInfo, 2048-8192 bits); verify-only."""

    key_type = KeyType.RSA

    def __init__(self, data: bytes) -> None:
        data = bytes(data)
        if len(data) > MAX_RSA_DER:
            raise _err(f"RSA public key larger than {MAX_RSA_DER} bytes")
        bits = _rsa_modulus_bits(data)  # before any bignum work
        if bits > MAX_RSA_BITS:
            raise _err(f"RSA key of {bits} bits exceeds the {MAX_RSA_BITS}-bit limit")
        if bits < MIN_RSA_BITS:
            raise _err(f"RSA key of {bits} bits is below the {MIN_RSA_BITS}-bit minimum")
        try:
            key = serialization.load_der_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise _err("invalid RSA public key") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise _err("not an RSA public key")
        _check_canonical(data, key)
        super().__init__(data)
        self._key = key
        self._size = (key.key_size + 7) // 8

    @classmethod
    def from_data(cls, data: bytes) -> RsaPublicKey:
        return cls(data)

    @property
    def cryptography_key(self) -> rsa.RSAPublicKey:
        return self._key

    @property
    def key_size(self) -> int:
        """Modulus size in bits."""
        return self._key.key_size

    def verify(self, message: bytes, signature: bytes) -> bool:
        # RFC 8017 §8.2.2 step 1: the signature is exactly as long as the modulus.
        if len(signature) != self._size:
            return False
        try:
            self._key.verify(bytes(signature), bytes(message), padding.PKCS1v15(), _SHA256)
        except (InvalidSignature, ValueError):
            return False
        return True


register_public_key_type(KeyType.SECP256K1, Secp256k1PublicKey)
register_public_key_type(KeyType.ECDSA, EcdsaPublicKey)
register_public_key_type(KeyType.RSA, RsaPublicKey)
