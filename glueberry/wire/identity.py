"""libp2p identities: key protobufs, signatures and peer IDs.

Spec: https://github.com/libp2p/specs/blob/master/peer-ids/peer-ids.md

* ``PublicKey``/``PrivateKey`` protobufs: ``{KeyType Type = 1; bytes Data = 2}``, encoded
  deterministically (both fields present, in order, minimal varints). Decoding rejects
  anything else, because the peer ID is a hash of these exact bytes.
* Ed25519 keys sign and verify. Other key types (secp256k1, ECDSA, RSA) are verify-only;
  they live in :mod:`glueberry.wire.keys_verify`, which this module imports at the end so
  that :meth:`PublicKey.from_protobuf` understands all four types.
* A peer ID is the multihash of the serialized public key: the identity multihash when the
  serialization is at most 42 bytes (every Ed25519 key: ``12D3KooW…``), SHA-256 otherwise.
  Its text form is base58btc (``12D3KooW…``, ``Qm…``); the CIDv1 form (``bafz…``, codec
  ``libp2p-key``) is parsed too.
* Identity files (:func:`encode_identity_file` / :func:`decode_identity_file`) hold the
  ``PrivateKey`` protobuf, the format go-libp2p's ``crypto.MarshalPrivateKey`` writes. This
  module does no file I/O; callers read and write the bytes.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from glueberry.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from glueberry.wire import protobuf, varint

_PROTO: Final = "libp2p-key"

#: Serialized keys up to this size are inlined in the peer ID (identity multihash).
MAX_INLINE_KEY_LENGTH: Final = 42
#: Any serialized public key larger than this is refused before parsing (RSA 8192 + slack).
MAX_PUBLIC_KEY_PROTOBUF: Final = 1200

MH_IDENTITY: Final = 0x00
MH_SHA2_256: Final = 0x12
LIBP2P_KEY_CODEC: Final = 0x72


class KeyType(enum.IntEnum):
    RSA = 0
    ED25519 = 1
    SECP256K1 = 2
    ECDSA = 3


class PublicKey:
    """A libp2p public key. Subclasses implement :meth:`verify` for one key type."""

    key_type: KeyType

    def __init__(self, data: bytes) -> None:
        #: The key's ``Data`` field (raw 32 bytes for Ed25519; DER or compressed point else).
        self.data = bytes(data)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Return True iff ``signature`` is valid for ``message`` under this key."""
        raise NotImplementedError

    def to_protobuf(self) -> bytes:
        """The deterministic ``PublicKey`` protobuf (what peer IDs hash)."""
        return protobuf.field_varint(1, int(self.key_type)) + protobuf.field_bytes(2, self.data)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, PublicKey)
            and other.key_type == self.key_type
            and other.data == self.data
        )

    def __hash__(self) -> int:
        return hash((self.key_type, self.data))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.data.hex()})"

    @staticmethod
    def from_protobuf(buf: bytes) -> PublicKey:
        """Parse a serialized ``PublicKey``.

        Raises:
            RemoteProtocolError: malformed, non-deterministic encoding, or unsupported type.
        """
        key_type, data = _parse_key_protobuf(buf, max_size=MAX_PUBLIC_KEY_PROTOBUF)
        cls = _PUBLIC_KEY_TYPES.get(key_type)
        if cls is None:
            raise RemoteProtocolError(f"unsupported key type {key_type}", protocol=_PROTO)
        return cls.from_data(data)

    @classmethod
    def from_data(cls, data: bytes) -> PublicKey:
        raise NotImplementedError


class Ed25519PublicKey(PublicKey):
    key_type = KeyType.ED25519

    def __init__(self, data: bytes) -> None:
        if len(data) != 32:
            raise RemoteProtocolError("Ed25519 public key must be 32 bytes", protocol=_PROTO)
        super().__init__(data)
        self._key = ed25519.Ed25519PublicKey.from_public_bytes(self.data)

    @classmethod
    def from_data(cls, data: bytes) -> Ed25519PublicKey:
        return cls(data)

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


_PUBLIC_KEY_TYPES: dict[int, type[PublicKey]] = {KeyType.ED25519: Ed25519PublicKey}


def register_public_key_type(key_type: KeyType, cls: type[PublicKey]) -> None:
    """Register a verify-only key class (used by the secp256k1/ECDSA/RSA module)."""
    _PUBLIC_KEY_TYPES[int(key_type)] = cls


def _parse_key_protobuf(buf: bytes, *, max_size: int) -> tuple[int, bytes]:
    if len(buf) > max_size:
        raise RemoteProtocolError(f"key protobuf larger than {max_size} bytes", protocol=_PROTO)
    fields = list(protobuf.iter_fields(buf, max_fields=3))
    if len(fields) != 2 or fields[0][0] != 1 or fields[1][0] != 2:
        raise RemoteProtocolError("key protobuf must hold Type then Data", protocol=_PROTO)
    key_type = protobuf.expect_int(fields[0][1], fields[0][2], "Type")
    data = protobuf.expect_bytes(fields[1][1], fields[1][2], "Data")
    # Deterministic encoding: re-encoding must give the same bytes.
    if protobuf.field_varint(1, key_type) + protobuf.field_bytes(2, data) != bytes(buf):
        raise RemoteProtocolError("key protobuf is not deterministically encoded", protocol=_PROTO)
    return key_type, data


class PrivateKey:
    """An Ed25519 identity key: signs, and yields its public key and peer ID."""

    key_type = KeyType.ED25519

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = Ed25519PublicKey(key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> PrivateKey:
        """From the 32-byte seed."""
        if len(seed) != 32:
            raise LocalProtocolError("Ed25519 seed must be 32 bytes", protocol=_PROTO)
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(seed)))

    @classmethod
    def from_bytes(cls, raw: bytes) -> PrivateKey:
        """From a 32-byte seed, Go's 64-byte ``seed‖pub``, or the legacy 96-byte form.

        The public half, when present, must match the seed.
        """
        if len(raw) == 32:
            return cls.from_seed(raw)
        if len(raw) in (64, 96):
            key = cls.from_seed(raw[:32])
            pubs = [raw[32:64]] + ([raw[64:96]] if len(raw) == 96 else [])
            if any(p != key.public_key.data for p in pubs):
                raise LocalProtocolError(
                    "Ed25519 private key: public half does not match the seed", protocol=_PROTO
                )
            return key
        raise LocalProtocolError("Ed25519 private key must be 32, 64 or 96 bytes", protocol=_PROTO)

    @classmethod
    def from_protobuf(cls, buf: bytes) -> PrivateKey:
        key_type, data = _parse_key_protobuf(buf, max_size=256)
        if key_type != KeyType.ED25519:
            raise RemoteProtocolError("only Ed25519 private keys are supported", protocol=_PROTO)
        return cls.from_bytes(data)

    @property
    def seed(self) -> bytes:
        return self._key.private_bytes_raw()

    def to_bytes(self) -> bytes:
        """Go's 64-byte ``seed‖pub`` form."""
        return self.seed + self.public_key.data

    def to_protobuf(self) -> bytes:
        return protobuf.field_varint(1, int(KeyType.ED25519)) + protobuf.field_bytes(
            2, self.to_bytes()
        )

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    @property
    def cryptography_key(self) -> ed25519.Ed25519PrivateKey:
        return self._key

    @property
    def peer_id(self) -> PeerId:
        return PeerId.from_public_key(self.public_key)

    def __repr__(self) -> str:  # never print key material
        return f"PrivateKey(peer_id={self.peer_id})"


# --- base58btc -------------------------------------------------------------------------

_B58_ALPHABET: Final = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX: Final = {c: i for i, c in enumerate(_B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = bytearray()
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return (b"1" * pad + bytes(reversed(out))).decode("ascii")


def b58decode(text: str, *, max_length: int = 256) -> bytes:
    if len(text) > max_length:
        raise RemoteProtocolError("base58 string too long", protocol="base58")
    n = 0
    for ch in text.encode("ascii", "replace"):
        idx = _B58_INDEX.get(ch)
        if idx is None:
            raise RemoteProtocolError("invalid base58 character", protocol="base58")
        n = n * 58 + idx
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * pad + body


# --- peer IDs ------------------------------------------------------------------------


class PeerId:
    """A libp2p peer ID: the multihash of a serialized public key. Immutable and hashable.

    ``str(peer_id)`` is the base58btc form (``12D3KooW…`` for Ed25519).
    """

    __slots__ = ("_b58", "_bytes")

    def __init__(self, multihash: bytes) -> None:
        _check_multihash(multihash)
        self._bytes = bytes(multihash)
        self._b58: str | None = None

    @classmethod
    def from_public_key(cls, key: PublicKey) -> PeerId:
        ser = key.to_protobuf()
        if len(ser) <= MAX_INLINE_KEY_LENGTH:
            return cls(bytes((MH_IDENTITY,)) + varint.encode(len(ser)) + ser)
        return cls(bytes((MH_SHA2_256, 32)) + hashlib.sha256(ser).digest())

    @classmethod
    def from_bytes(cls, data: bytes) -> PeerId:
        return cls(data)

    @classmethod
    def from_string(cls, text: str) -> PeerId:
        """Parse a base58btc peer ID (``12D3KooW…``/``Qm…``) or its CIDv1 form."""
        if text.startswith(("1", "Q")):
            return cls(b58decode(text))
        return cls(_decode_cid(text))

    def to_cid(self) -> str:
        """The CIDv1 text form (``libp2p-key`` codec 0x72, multibase base32: ``bafz…``)."""
        raw = varint.encode(1) + varint.encode(LIBP2P_KEY_CODEC) + self._bytes
        return "b" + base64.b32encode(raw).decode("ascii").lower().rstrip("=")

    def to_bytes(self) -> bytes:
        return self._bytes

    def extract_public_key(self) -> PublicKey | None:
        """The public key inlined in an identity-multihash peer ID, else ``None``."""
        if self._bytes[0] != MH_IDENTITY:
            return None
        res = varint.decode(self._bytes, 1)
        assert res is not None  # checked in _check_multihash
        return PublicKey.from_protobuf(self._bytes[res[1] :])

    def matches(self, key: PublicKey) -> bool:
        return PeerId.from_public_key(key) == self

    def __str__(self) -> str:
        if self._b58 is None:
            self._b58 = b58encode(self._bytes)
        return self._b58

    def __repr__(self) -> str:
        return f"PeerId({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeerId) and other._bytes == self._bytes

    def __lt__(self, other: PeerId) -> bool:
        return self._bytes < other._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)


def _decode_cid(text: str) -> bytes:
    """Multihash from a CIDv1 peer ID.

    Multibases: base32 (``b``, the spec's default, and ``B``), base58btc (``z``), base16
    (``f``/``F``) and base64url (``u``).
    """
    if len(text) > 256 or len(text) < 2:
        raise RemoteProtocolError("peer ID is neither base58btc nor a CID", protocol=_PROTO)
    prefix, body = text[0], text[1:]
    try:
        if prefix in "bB":
            if body != (body.lower() if prefix == "b" else body.upper()) or "=" in body:
                raise ValueError("bad base32")
            body = body.upper()
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        elif prefix == "z":
            raw = b58decode(body)
        elif prefix in "fF":
            if body != (body.lower() if prefix == "f" else body.upper()):
                raise ValueError("bad base16")
            raw = bytes.fromhex(body)
        elif prefix == "u":
            if "=" in body or len(body) % 4 == 1:
                raise ValueError("bad base64url")
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        else:
            raise RemoteProtocolError("peer ID is neither base58btc nor a CID", protocol=_PROTO)
    except (ValueError, binascii.Error) as exc:
        raise RemoteProtocolError(
            f"invalid multibase in CID peer ID: {exc}", protocol=_PROTO
        ) from exc
    res = varint.decode(raw, 0)
    if res is None or res[0] != 1:
        raise RemoteProtocolError("CID peer ID must be CIDv1", protocol=_PROTO)
    res = varint.decode(raw, res[1])
    if res is None or res[0] != LIBP2P_KEY_CODEC:
        raise RemoteProtocolError("CID peer ID must use the libp2p-key codec", protocol=_PROTO)
    return raw[res[1] :]


def _check_multihash(mh: bytes) -> None:
    res = varint.decode(mh, 0)
    if res is None:
        raise RemoteProtocolError("truncated peer ID multihash", protocol=_PROTO)
    code, pos = res
    res = varint.decode(mh, pos)
    if res is None:
        raise RemoteProtocolError("truncated peer ID multihash", protocol=_PROTO)
    length, pos = res
    if len(mh) - pos != length:
        raise RemoteProtocolError("peer ID multihash length mismatch", protocol=_PROTO)
    if code == MH_IDENTITY:
        if length > MAX_INLINE_KEY_LENGTH:
            raise RemoteProtocolError("identity peer ID longer than 42 bytes", protocol=_PROTO)
    elif code == MH_SHA2_256:
        if length != 32:
            raise RemoteProtocolError("sha2-256 peer ID must be 32 bytes", protocol=_PROTO)
    else:
        raise RemoteProtocolError(f"unsupported peer ID multihash 0x{code:x}", protocol=_PROTO)


# --- identity files ----------------------------------------------------------------------

_ED25519_PROTOBUF_LENGTH: Final = 68  # 08 01 12 40 || seed(32) || public(32)


def encode_identity_file(key: PrivateKey) -> bytes:
    """The bytes of an identity file for ``key``: its ``PrivateKey`` protobuf.

    This is what go-libp2p's ``crypto.MarshalPrivateKey`` produces (68 bytes for Ed25519:
    ``08 01 12 40 || seed || public key``). Write it with mode 0600.
    """
    return key.to_protobuf()


def decode_identity_file(data: bytes | bytearray | memoryview) -> PrivateKey:
    """Read the identity-file bytes written by :func:`encode_identity_file`.

    Also accepted, for keys made elsewhere: the base64 text of the protobuf (kubo's
    ``Identity.PrivKey``, optional surrounding whitespace), the raw 64-byte ``seed || public``
    file the Go glueberry examples write, and a bare 32-byte seed. Lengths tell these apart.

    Raises:
        ConfigError: the bytes are none of these, or the key is not a valid Ed25519 key.
    """
    data = bytes(data)
    try:
        if len(data) == _ED25519_PROTOBUF_LENGTH:
            return PrivateKey.from_protobuf(data)
        if len(data) in (32, 64):
            return PrivateKey.from_bytes(data)
        text = data.strip()
        if text.startswith(b"CA") and len(text) <= 512:
            try:
                raw = base64.b64decode(text, validate=True)
            except (ValueError, binascii.Error) as exc:
                raise ConfigError("identity file: invalid base64") from exc
            return PrivateKey.from_protobuf(raw)
    except (LocalProtocolError, RemoteProtocolError) as exc:
        raise ConfigError(f"identity file: {exc}") from exc
    raise ConfigError(
        f"identity file: {len(data)} bytes is not a libp2p PrivateKey protobuf (68 bytes), "
        "a 64-byte seed||public key or a 32-byte seed"
    )


# Registers the verify-only key types (secp256k1, ECDSA, RSA) with PublicKey.from_protobuf.
from glueberry.wire import keys_verify as _keys_verify  # noqa: E402, F401
