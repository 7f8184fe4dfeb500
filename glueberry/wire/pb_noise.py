"""The libp2p Noise handshake payload (protobuf, proto2).

Spec: https://github.com/libp2p/specs/blob/master/noise/README.md#the-libp2p-handshake-payload

::

    message NoiseExtensions {
        repeated bytes webtransport_certhashes = 1;
        repeated string stream_muxers = 2;
    }
    message NoiseHandshakePayload {
        optional bytes identity_key = 1;      // serialized libp2p PublicKey
        optional bytes identity_sig = 2;      // sig over "noise-libp2p-static-key:" || static
        optional NoiseExtensions extensions = 4;
    }

Decoding follows protobuf rules where they are harmless (unknown fields are skipped, a
repeated ``extensions`` field merges, the last scalar wins) and is strict where they are
not: a field of the wrong wire type, a truncated field or an oversized key/signature raises
:class:`~glueberry.errors.RemoteProtocolError`. Lists are bounded while decoding:

* ``stream_muxers``: entries beyond :data:`MAX_MUXERS` are not kept, and
  :attr:`NoiseExtensions.muxers_overflow` tells the caller the list was too long (go ignores
  such lists entirely); entries that are not UTF-8 are dropped (they cannot name a muxer);
* ``webtransport_certhashes``: at most :data:`MAX_CERTHASHES` kept, each at most
  :data:`MAX_CERTHASH_LENGTH` bytes (this stack does not use them; TCP peers send none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from glueberry.errors import RemoteProtocolError
from glueberry.wire import protobuf
from glueberry.wire.identity import MAX_PUBLIC_KEY_PROTOBUF

#: go-libp2p ignores muxer lists longer than this (``maxProtoNum``).
MAX_MUXERS: Final = 100
MAX_MUXER_LENGTH: Final = 1024
MAX_CERTHASHES: Final = 16
MAX_CERTHASH_LENGTH: Final = 128
#: RSA-8192 signatures are 1024 bytes; DER ECDSA at most 139; Ed25519 64.
MAX_SIGNATURE_LENGTH: Final = 1100
#: Field count cap for one message (bounds work on hostile input).
MAX_FIELDS: Final = 8192

_PROTO: Final = "/noise"


@dataclass(frozen=True, slots=True, kw_only=True)
class NoiseExtensions:
    """``NoiseExtensions``: early data of the libp2p Noise handshake."""

    webtransport_certhashes: tuple[bytes, ...] = ()
    """Multihashes of WebTransport certificates (unused over TCP)."""
    stream_muxers: tuple[str, ...] = ()
    """Supported muxers, in the sender's order of preference."""
    muxers_overflow: bool = False
    """True if the sender listed more than :data:`MAX_MUXERS` muxers (decode only)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NoiseHandshakePayload:
    """``NoiseHandshakePayload``: identity key, static-key signature, extensions."""

    identity_key: bytes = b""
    """Serialized libp2p ``PublicKey`` protobuf."""
    identity_sig: bytes = b""
    """Signature of ``"noise-libp2p-static-key:" || static public key``."""
    extensions: NoiseExtensions | None = None
    """Extensions, if the field was present."""


def encode_extensions(ext: NoiseExtensions) -> bytes:
    return b"".join(
        [protobuf.field_bytes(1, h) for h in ext.webtransport_certhashes]
        + [protobuf.field_str(2, m) for m in ext.stream_muxers]
    )


def encode_payload(payload: NoiseHandshakePayload) -> bytes:
    """Serialize a payload (fields in number order, absent fields omitted)."""
    out = b""
    if payload.identity_key:
        out += protobuf.field_bytes(1, payload.identity_key)
    if payload.identity_sig:
        out += protobuf.field_bytes(2, payload.identity_sig)
    if payload.extensions is not None:
        out += protobuf.field_bytes(4, encode_extensions(payload.extensions))
    return out


def _err(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg, protocol=_PROTO)


class _Extensions:
    """Accumulates (possibly repeated) ``extensions`` fields while decoding."""

    __slots__ = ("certhashes", "muxers", "n_muxers", "present")

    def __init__(self) -> None:
        self.present = False
        self.certhashes: list[bytes] = []
        self.muxers: list[str] = []
        self.n_muxers = 0

    def merge(self, buf: bytes) -> None:
        self.present = True
        for field_no, wire_type, value in protobuf.iter_fields(buf, max_fields=MAX_FIELDS):
            if field_no == 1:
                raw = protobuf.expect_bytes(wire_type, value, "webtransport_certhashes")
                if len(raw) > MAX_CERTHASH_LENGTH:
                    raise _err("webtransport certhash too long")
                if len(self.certhashes) < MAX_CERTHASHES:
                    self.certhashes.append(raw)
            elif field_no == 2:
                raw = protobuf.expect_bytes(wire_type, value, "stream_muxers")
                self.n_muxers += 1
                if self.n_muxers > MAX_MUXERS or len(raw) > MAX_MUXER_LENGTH:
                    continue
                try:
                    self.muxers.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    continue

    def result(self) -> NoiseExtensions | None:
        if not self.present:
            return None
        return NoiseExtensions(
            webtransport_certhashes=tuple(self.certhashes),
            stream_muxers=tuple(self.muxers),
            muxers_overflow=self.n_muxers > MAX_MUXERS,
        )


def decode_payload(buf: bytes | bytearray | memoryview) -> NoiseHandshakePayload:
    """Parse a ``NoiseHandshakePayload``.

    Raises:
        RemoteProtocolError: malformed protobuf, wrong wire types, or an identity key or
            signature above its size cap.
    """
    identity_key = b""
    identity_sig = b""
    ext = _Extensions()
    for field_no, wire_type, value in protobuf.iter_fields(buf, max_fields=MAX_FIELDS):
        if field_no == 1:
            identity_key = protobuf.expect_bytes(wire_type, value, "identity_key")
            if len(identity_key) > MAX_PUBLIC_KEY_PROTOBUF:
                raise _err("identity key too large")
        elif field_no == 2:
            identity_sig = protobuf.expect_bytes(wire_type, value, "identity_sig")
            if len(identity_sig) > MAX_SIGNATURE_LENGTH:
                raise _err("identity signature too large")
        elif field_no == 4:
            ext.merge(protobuf.expect_bytes(wire_type, value, "extensions"))
    return NoiseHandshakePayload(
        identity_key=identity_key, identity_sig=identity_sig, extensions=ext.result()
    )


__all__ = [
    "MAX_CERTHASHES",
    "MAX_MUXERS",
    "NoiseExtensions",
    "NoiseHandshakePayload",
    "decode_payload",
    "encode_extensions",
    "encode_payload",
]
