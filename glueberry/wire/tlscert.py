"""libp2p TLS certificates: generation and strict verification (pure, no I/O).

Spec: https://github.com/libp2p/specs/blob/master/tls/tls.md (used by ``/tls/1.0.0`` over TCP
and by QUIC, https://github.com/libp2p/specs/blob/master/quic/README.md).

Theory of operation
-------------------
A libp2p peer does not sign its TLS certificate with its identity key. It makes a fresh key
(the *certificate key*, ECDSA P-256 as go-libp2p and rust-libp2p do, or Ed25519), a
self-signed X.509 v3 certificate for it, and proves ownership of the identity key through the
*libp2p Public Key Extension* (OID ``1.3.6.1.4.1.53594.1.1``)::

    SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature OCTET STRING }

``publicKey`` is the identity's ``PublicKey`` protobuf; ``signature`` is the identity key's
signature over ``"libp2p-tls-handshake:" || DER SubjectPublicKeyInfo(certificate key)``.

:func:`generate_certificate` builds such a certificate (valid from ``now - 1 h`` to
``now + 100 years``, like go-libp2p; the extension is marked critical by default as
rust-libp2p does; go-libp2p marks it non-critical; the spec allows both; no other
extension, so no BasicConstraints/KeyUsage that a strict peer could find critical and
unknown).

:func:`verify_certificate_chain` is what a handshake runs on the peer's certificates. In
order, and refusing at the first failure (every refusal raises
:class:`~glueberry.errors.RemoteProtocolError`, protocol ``/tls/1.0.0``):

1. exactly one certificate, at most :data:`MAX_CERTIFICATE_SIZE` bytes of DER;
2. it parses (cryptography's strict DER parser), is X.509 v3;
3. ``notBefore <= now <= notAfter`` (``now`` is passed in: Unix seconds);
4. every critical extension is one we understand (the libp2p one, BasicConstraints,
   KeyUsage, ExtendedKeyUsage, SubjectAltName, key identifiers); the libp2p extension is
   present exactly once; duplicate extensions are refused;
5. the certificate key is ECDSA P-256/P-384/P-521, Ed25519, Ed448 or RSA of
   2048-8192 bits (checked before any signature work: CVE-2023-39533), and the
   self-signature uses SHA-256 or stronger;
6. the self-signature is valid (issuer == subject, signature by the certificate key);
7. the ``SignedKey`` DER is walked by a bounded reader (definite, minimal lengths, exactly
   two OCTET STRINGs, nothing after), the identity key protobuf is parsed by
   :meth:`~glueberry.wire.identity.PublicKey.from_protobuf` (which bounds RSA keys too);
8. the identity signature over the prefix and the certificate's SubjectPublicKeyInfo is
   valid.

It returns the peer's identity :class:`~glueberry.wire.identity.PublicKey`; the caller
derives the :class:`~glueberry.wire.identity.PeerId` and compares it with the peer it meant
to reach (a mismatch is the caller's :class:`~glueberry.errors.PeerIdMismatch`).
"""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtensionOID, NameOID

from glueberry.errors import RemoteProtocolError
from glueberry.wire.identity import PeerId, PrivateKey, PublicKey

__all__ = [
    "ALPN_LIBP2P",
    "CERT_BACKDATE",
    "CERT_VALIDITY",
    "EXTENSION_OID",
    "MAX_CERTIFICATE_SIZE",
    "SIGNATURE_PREFIX",
    "CertKeyType",
    "LocalCertificate",
    "decode_signed_key",
    "encode_signed_key",
    "generate_certificate",
    "peer_id_of",
    "verify_certificate",
    "verify_certificate_chain",
]

_PROTO: Final = "/tls/1.0.0"

#: The libp2p Public Key Extension (allocated to libp2p by IANA).
EXTENSION_OID: Final = x509.ObjectIdentifier("1.3.6.1.4.1.53594.1.1")
#: What the identity key signs, followed by the certificate key's SubjectPublicKeyInfo.
SIGNATURE_PREFIX: Final = b"libp2p-tls-handshake:"
#: The ALPN protocol of libp2p TLS (and of libp2p QUIC).
ALPN_LIBP2P: Final = "libp2p"
#: A certificate larger than this is refused unparsed. An 8192-bit RSA certificate key with
#: an 8192-bit RSA identity key stays under 4.5 KiB.
MAX_CERTIFICATE_SIZE: Final = 8192
#: Largest ``SignedKey`` extension value accepted (RSA-8192 identity key and signature).
MAX_SIGNED_KEY_SIZE: Final = 4096
#: Generated certificates are valid from ``now - CERT_BACKDATE`` (clock skew, as go does)...
CERT_BACKDATE: Final = 3600.0
#: ...to ``now + CERT_VALIDITY`` (about 100 years, as go does).
CERT_VALIDITY: Final = 100 * 365 * 86400.0

#: Certificate key sizes (bits) accepted for RSA certificate keys.
_MIN_RSA_BITS: Final = 2048
_MAX_RSA_BITS: Final = 8192
_EC_CURVES: Final = frozenset({"secp256r1", "secp384r1", "secp521r1"})
_SIG_HASHES: Final = (hashes.SHA256, hashes.SHA384, hashes.SHA512)

#: Critical extensions this module understands (and so does not refuse when critical).
_KNOWN_CRITICAL: Final = frozenset(
    {
        EXTENSION_OID,
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }
)

CertKeyType = Literal["ecdsa-p256", "ed25519"]
CertPrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _err(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"TLS certificate: {msg}", protocol=_PROTO)


# --- DER: the SignedKey structure ---------------------------------------------------------

_SEQUENCE: Final = 0x30
_OCTET_STRING: Final = 0x04


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _der_tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _der_length(len(content)) + content


def encode_signed_key(public_key_protobuf: bytes, signature: bytes) -> bytes:
    """DER ``SignedKey{publicKey, signature}`` (the extension's value)."""
    return _der_tlv(
        _SEQUENCE, _der_tlv(_OCTET_STRING, public_key_protobuf) + _der_tlv(_OCTET_STRING, signature)
    )


def _der_read(buf: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """One TLV with ``tag`` in ``buf[pos:end]``: ``(content_start, content_end)``.

    Definite, minimal lengths of at most two length octets; every length is checked
    against what remains before anything is sliced.
    """
    if end - pos < 2:
        raise _err(f"truncated {what}")
    if buf[pos] != tag:
        raise _err(f"expected DER tag 0x{tag:02x} for {what}, got 0x{buf[pos]:02x}")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0:
            raise _err(f"indefinite length in {what}")
        if n > 2:
            raise _err(f"{n}-octet length in {what}")
        if end - pos < n:
            raise _err(f"truncated length of {what}")
        length = int.from_bytes(buf[pos : pos + n], "big")
        if length < 0x80 or buf[pos] == 0:
            raise _err(f"non-minimal DER length in {what}")
        pos += n
    if length > end - pos:
        raise _err(f"length of {what} runs past its container")
    return pos, pos + length


def decode_signed_key(value: bytes) -> tuple[bytes, bytes]:
    """Parse the extension's DER value into ``(public_key_protobuf, signature)``.

    Raises:
        RemoteProtocolError: anything but exactly ``SEQUENCE{OCTET STRING, OCTET STRING}``
            in DER, or larger than :data:`MAX_SIGNED_KEY_SIZE`.
    """
    value = bytes(value)
    if len(value) > MAX_SIGNED_KEY_SIZE:
        raise _err(f"SignedKey larger than {MAX_SIGNED_KEY_SIZE} bytes")
    start, end = _der_read(value, 0, len(value), _SEQUENCE, "SignedKey")
    if end != len(value):
        raise _err("trailing bytes after SignedKey")
    k_start, k_end = _der_read(value, start, end, _OCTET_STRING, "SignedKey.publicKey")
    s_start, s_end = _der_read(value, k_end, end, _OCTET_STRING, "SignedKey.signature")
    if s_end != end:
        # go-libp2p may add an optional network cookie; a peer using one signs another
        # prefix, which this side cannot verify either way.
        raise _err("SignedKey has fields after the signature")
    return value[k_start:k_end], value[s_start:s_end]


# --- generation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalCertificate:
    """Our certificate and its private key, as a TLS stack wants them."""

    certificate: x509.Certificate
    """The self-signed certificate carrying the libp2p extension."""
    private_key: CertPrivateKey
    """The certificate key (not the identity key)."""

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def _spki(key: object) -> bytes:
    if not isinstance(
        key,
        ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey
        | rsa.RSAPublicKey,
    ):
        raise _err("unsupported certificate key type")
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _datetime(ts: float) -> datetime.datetime:
    return _EPOCH + datetime.timedelta(seconds=ts)


def generate_certificate(
    identity: PrivateKey,
    now: float,
    *,
    key_type: CertKeyType = "ecdsa-p256",
    cert_key: CertPrivateKey | None = None,
    serial: int | None = None,
    critical: bool = True,
    not_before: float | None = None,
    not_after: float | None = None,
) -> LocalCertificate:
    """A fresh self-signed libp2p certificate for ``identity``.

    Args:
        identity: our identity key; it signs the certificate key.
        now: current time, Unix seconds.
        key_type: the certificate key to generate when ``cert_key`` is not given.
        cert_key: use this certificate key instead of generating one.
        serial: certificate serial number (default: 62 random bits, as go).
        critical: mark the libp2p extension critical (the spec allows either).
        not_before, not_after: override the validity window (tests).
    """
    if cert_key is None:
        if key_type == "ecdsa-p256":
            cert_key = ec.generate_private_key(ec.SECP256R1())
        elif key_type == "ed25519":
            cert_key = ed25519.Ed25519PrivateKey.generate()
        else:  # pragma: no cover - Literal type
            raise ValueError(f"unknown certificate key type {key_type!r}")
    if serial is None:
        serial = int.from_bytes(os.urandom(8), "big") >> 2 or 1
    signature = identity.sign(SIGNATURE_PREFIX + _spki(cert_key.public_key()))
    value = encode_signed_key(identity.public_key.to_protobuf(), signature)
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, str(serial))])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(cert_key.public_key())
        .serial_number(serial)
        .not_valid_before(_datetime(now - CERT_BACKDATE if not_before is None else not_before))
        .not_valid_after(_datetime(now + CERT_VALIDITY if not_after is None else not_after))
        .add_extension(x509.UnrecognizedExtension(EXTENSION_OID, value), critical=critical)
    )
    algorithm = None if isinstance(cert_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(cert_key, algorithm)
    return LocalCertificate(cert, cert_key)


# --- verification --------------------------------------------------------------------------


def _check_cert_key(cert: x509.Certificate) -> object:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _err(f"unsupported or invalid certificate key ({exc})") from None
    if isinstance(key, rsa.RSAPublicKey):
        if not _MIN_RSA_BITS <= key.key_size <= _MAX_RSA_BITS:
            raise _err(f"RSA certificate key of {key.key_size} bits is out of bounds")
        if key.public_numbers().e > 0x7FFFFFFF:
            raise _err("RSA certificate key exponent too large")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _EC_CURVES:
            raise _err(f"certificate key on unsupported curve {key.curve.name}")
    elif not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise _err(f"unsupported certificate key type {type(key).__name__}")
    return key


def _check_signature_algorithm(cert: x509.Certificate, key: object) -> None:
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return  # pure EdDSA: no separate hash
    try:
        algo = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise _err("unsupported certificate signature algorithm") from None
    if not isinstance(algo, _SIG_HASHES):
        name = algo.name if algo is not None else "none"
        raise _err(f"certificate signed with {name}; SHA-256 or stronger required")


def _libp2p_extension(cert: x509.Certificate) -> bytes:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            extensions = list(cert.extensions)
    except (
        ValueError,
        x509.DuplicateExtension,
        UnsupportedAlgorithm,
        CryptographyDeprecationWarning,
    ) as exc:
        raise _err(f"malformed extensions ({exc})") from None
    found: bytes | None = None
    for ext in extensions:
        if ext.oid == EXTENSION_OID:
            if found is not None:
                raise _err("libp2p extension present twice")
            value = ext.value
            if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover
                raise _err("libp2p extension has an unexpected type")
            found = value.value
        elif ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise _err(f"unknown critical extension {ext.oid.dotted_string}")
    if found is None:
        raise _err("libp2p public key extension missing")
    return found


def verify_certificate(der: bytes, now: float) -> PublicKey:
    """Verify one peer certificate (steps 2-8 of the module docstring).

    Args:
        der: the certificate, DER.
        now: current time, Unix seconds.

    Returns:
        The peer's identity public key.

    Raises:
        RemoteProtocolError: the certificate is refused (the message says why).
    """
    der = bytes(der)
    if len(der) > MAX_CERTIFICATE_SIZE:
        raise _err(f"larger than {MAX_CERTIFICATE_SIZE} bytes")
    try:
        with warnings.catch_warnings():
            # cryptography warns (for now) about what RFC 5280 forbids, e.g. a serial
            # number <= 0: refuse such certificates instead.
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion, CryptographyDeprecationWarning) as exc:
        raise _err(f"does not parse ({exc})") from None
    if cert.version != x509.Version.v3:
        raise _err("not an X.509 v3 certificate")
    if now < (cert.not_valid_before_utc - _EPOCH).total_seconds():
        raise _err("not yet valid")
    if now > (cert.not_valid_after_utc - _EPOCH).total_seconds():
        raise _err("expired")
    value = _libp2p_extension(cert)
    key = _check_cert_key(cert)
    _check_signature_algorithm(cert, key)
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise _err("self-signature is invalid") from None
    key_protobuf, signature = decode_signed_key(value)
    identity = PublicKey.from_protobuf(key_protobuf)
    if not identity.verify(SIGNATURE_PREFIX + _spki(key), signature):
        raise _err("identity signature over the certificate key is invalid")
    return identity


def verify_certificate_chain(chain: Sequence[bytes], now: float) -> PublicKey:
    """Verify the certificates a peer presented: exactly one, valid (see the module docstring).

    Returns:
        The peer's identity public key.

    Raises:
        RemoteProtocolError: no certificate, more than one, or the certificate is refused.
    """
    if len(chain) != 1:
        raise _err(f"expected exactly one certificate, got {len(chain)}")
    return verify_certificate(chain[0], now)


def peer_id_of(chain: Sequence[bytes], now: float) -> PeerId:
    """The peer ID a verified certificate chain authenticates."""
    return PeerId.from_public_key(verify_certificate_chain(chain, now))
