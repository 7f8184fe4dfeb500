"""Identify messages, signed envelopes and peer records: protobuf codecs.

Specs:
  https://github.com/libp2p/specs/blob/master/identify/README.md
  https://github.com/libp2p/specs/blob/master/RFC/0002-signed-envelopes.md
  https://github.com/libp2p/specs/blob/master/RFC/0003-routing-records.md

Wire types (proto2)::

    Identify   { bytes publicKey = 1; repeated bytes listenAddrs = 2; repeated string protocols = 3;
                 bytes observedAddr = 4; string protocolVersion = 5; string agentVersion = 6;
                 bytes signedPeerRecord = 8; }
    Envelope   { PublicKey public_key = 1; bytes payload_type = 2; bytes payload = 3;
                 bytes signature = 5; }
    PeerRecord { bytes peer_id = 1; uint64 seq = 2; repeated AddressInfo addresses = 3; }
    AddressInfo{ bytes multiaddr = 1; }

This module only moves between bytes and plain field values; multiaddr parsing, peer-ID checks
and merge semantics live in :mod:`glueberry.proto.identify`. Every decoder bounds the number of
fields before iterating and every string and byte field before keeping it, so that a hostile
peer can neither make us allocate much nor loop long (B-20, B-29).

Identify fields absent from a message decode as ``None`` (scalars) or ``None`` (repeated fields
that never appeared): identify-push relies on "missing = unchanged", so "absent" and "empty"
must stay distinguishable. A message may repeat a scalar field; like protobuf's merge, the last
value wins. Repeated fields accumulate.

Peer records: go-libp2p (and every interop peer) signs them under the domain
``libp2p-peer-record`` with payload type bytes ``03 01``; the RFC's older names are not used on
the wire, so this module follows go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from glueberry.errors import RemoteProtocolError
from glueberry.wire import protobuf, varint
from glueberry.wire.identity import PeerId, PrivateKey, PublicKey

#: Largest identify message (one uvarint-delimited part) we accept; go and js use 8 KiB.
MAX_IDENTIFY_MESSAGE: Final = 8 * 1024
#: Largest identify message we send: rust-libp2p refuses more than 4096 bytes.
MAX_SENT_IDENTIFY_MESSAGE: Final = 4096
#: go-libp2p keeps at most this many listen addresses of a connected peer.
MAX_LISTEN_ADDRS: Final = 500
#: go-libp2p keeps at most this many protocols of a peer.
MAX_PROTOCOLS: Final = 1024
#: Bound on a protocol ID (multistream-select caps whole messages at 1024 bytes).
MAX_PROTOCOL_LENGTH: Final = 1024
#: Bound on protocolVersion / agentVersion.
MAX_VERSION_LENGTH: Final = 1024
#: Bound on one binary multiaddr.
MAX_MULTIADDR_LENGTH: Final = 1024
#: Bound on a signed envelope (its own size check happens before parsing).
MAX_ENVELOPE_LENGTH: Final = MAX_IDENTIFY_MESSAGE

PEER_RECORD_DOMAIN: Final = "libp2p-peer-record"
PEER_RECORD_PAYLOAD_TYPE: Final = b"\x03\x01"

_PROTO: Final = "/ipfs/id/1.0.0"
_ENV: Final = "signed-envelope"

# Identify has 7 known fields plus repeats; one message of 8 KiB cannot hold more than this
# many fields of at least 2 bytes, so the cap never bites a legitimate message.
_MAX_FIELDS_PER_MESSAGE: Final = MAX_IDENTIFY_MESSAGE // 2 + 1


def _err(msg: str, protocol: str = _PROTO) -> RemoteProtocolError:
    return RemoteProtocolError(msg, protocol=protocol)


@dataclass(slots=True)
class IdentifyFields:
    """The raw fields of one (or several merged) identify messages.

    ``None`` means the field never appeared. ``listen_addrs`` holds binary multiaddrs as sent.
    """

    public_key: bytes | None = None
    listen_addrs: list[bytes] | None = None
    protocols: list[str] | None = None
    observed_addr: bytes | None = None
    protocol_version: str | None = None
    agent_version: str | None = None
    signed_peer_record: bytes | None = None

    def merge(self, other: IdentifyFields) -> None:
        """Protobuf merge semantics: repeated fields append, set scalars overwrite.

        Raises:
            RemoteProtocolError: the merged result exceeds the address or protocol caps.
        """
        if other.listen_addrs is not None:
            self.listen_addrs = (self.listen_addrs or []) + other.listen_addrs
            _check_count(self.listen_addrs, MAX_LISTEN_ADDRS, "listenAddrs")
        if other.protocols is not None:
            self.protocols = (self.protocols or []) + other.protocols
            _check_count(self.protocols, MAX_PROTOCOLS, "protocols")
        for name in (
            "public_key",
            "observed_addr",
            "protocol_version",
            "agent_version",
            "signed_peer_record",
        ):
            value = getattr(other, name)
            if value is not None:
                setattr(self, name, value)


def _check_count(items: list[bytes] | list[str], cap: int, name: str) -> None:
    if len(items) > cap:
        raise _err(f"identify carries more than {cap} {name}")


def _bounded_bytes(wire_type: int, value: int | bytes, name: str, cap: int) -> bytes:
    raw = protobuf.expect_bytes(wire_type, value, name)
    if len(raw) > cap:
        raise _err(f"identify field {name} longer than {cap} bytes")
    return raw


def _bounded_str(wire_type: int, value: int | bytes, name: str, cap: int) -> str:
    _bounded_bytes(wire_type, value, name, cap)
    return protobuf.expect_str(wire_type, value, name)


def decode_identify(buf: bytes | bytearray | memoryview) -> IdentifyFields:
    """Decode one identify message body (without its length prefix).

    Unknown fields are skipped (forward compatibility, as protobuf requires).

    Raises:
        RemoteProtocolError: larger than :data:`MAX_IDENTIFY_MESSAGE`, malformed protobuf,
            a field of the wrong wire type, a string that is not UTF-8, a field over its bound,
            or more addresses/protocols than the caps.
    """
    if len(buf) > MAX_IDENTIFY_MESSAGE:
        raise _err(f"identify message larger than {MAX_IDENTIFY_MESSAGE} bytes")
    out = IdentifyFields()
    addrs: list[bytes] = []
    protos: list[str] = []
    for no, wt, val in protobuf.iter_fields(buf, max_fields=_MAX_FIELDS_PER_MESSAGE):
        if no == 1:
            out.public_key = _bounded_bytes(wt, val, "publicKey", MAX_ENVELOPE_LENGTH)
        elif no == 2:
            addrs.append(_bounded_bytes(wt, val, "listenAddrs", MAX_MULTIADDR_LENGTH))
            if out.listen_addrs is None:
                out.listen_addrs = addrs
            _check_count(addrs, MAX_LISTEN_ADDRS, "listenAddrs")
        elif no == 3:
            protos.append(_bounded_str(wt, val, "protocols", MAX_PROTOCOL_LENGTH))
            if out.protocols is None:
                out.protocols = protos
            _check_count(protos, MAX_PROTOCOLS, "protocols")
        elif no == 4:
            out.observed_addr = _bounded_bytes(wt, val, "observedAddr", MAX_MULTIADDR_LENGTH)
        elif no == 5:
            out.protocol_version = _bounded_str(wt, val, "protocolVersion", MAX_VERSION_LENGTH)
        elif no == 6:
            out.agent_version = _bounded_str(wt, val, "agentVersion", MAX_VERSION_LENGTH)
        elif no == 8:
            out.signed_peer_record = _bounded_bytes(
                wt, val, "signedPeerRecord", MAX_ENVELOPE_LENGTH
            )
        # Other field numbers: unknown to us, skipped.
    return out


def encode_identify(fields: IdentifyFields) -> bytes:
    """Encode ``fields`` as one identify message body (absent fields are omitted)."""
    parts: list[bytes] = []
    if fields.public_key is not None:
        parts.append(protobuf.field_bytes(1, fields.public_key))
    for addr in fields.listen_addrs or ():
        parts.append(protobuf.field_bytes(2, addr))
    for proto in fields.protocols or ():
        parts.append(protobuf.field_str(3, proto))
    if fields.observed_addr is not None:
        parts.append(protobuf.field_bytes(4, fields.observed_addr))
    if fields.protocol_version is not None:
        parts.append(protobuf.field_str(5, fields.protocol_version))
    if fields.agent_version is not None:
        parts.append(protobuf.field_str(6, fields.agent_version))
    if fields.signed_peer_record is not None:
        parts.append(protobuf.field_bytes(8, fields.signed_peer_record))
    return b"".join(parts)


# --- signed envelopes ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A decoded signed envelope. ``verify`` must be called before trusting ``payload``."""

    public_key: PublicKey
    """The signer's key."""
    payload_type: bytes
    """Multicodec of the payload (``03 01`` for a peer record)."""
    payload: bytes
    """The signed bytes."""
    signature: bytes
    """Signature over :func:`envelope_signing_bytes`."""

    def verify(self, domain: str) -> bool:
        """True iff the signature covers ``domain``, the payload type and the payload."""
        return self.public_key.verify(
            envelope_signing_bytes(domain, self.payload_type, self.payload), self.signature
        )


def envelope_signing_bytes(domain: str, payload_type: bytes, payload: bytes) -> bytes:
    """The bytes a signed envelope signs: each part prefixed with its uvarint length."""
    d = domain.encode("utf-8")
    return (
        varint.encode_length_prefixed(d)
        + varint.encode_length_prefixed(payload_type)
        + varint.encode_length_prefixed(payload)
    )


def encode_envelope(key: PrivateKey, domain: str, payload_type: bytes, payload: bytes) -> bytes:
    """Sign ``payload`` under ``domain`` and return the serialized envelope."""
    sig = key.sign(envelope_signing_bytes(domain, payload_type, payload))
    return (
        protobuf.field_bytes(1, key.public_key.to_protobuf())
        + protobuf.field_bytes(2, payload_type)
        + protobuf.field_bytes(3, payload)
        + protobuf.field_bytes(5, sig)
    )


def decode_envelope(buf: bytes | bytearray | memoryview) -> Envelope:
    """Parse (not verify) a serialized envelope.

    Raises:
        RemoteProtocolError: oversized, malformed, a required field missing, or an unsupported
            or malformed public key.
    """
    if len(buf) > MAX_ENVELOPE_LENGTH:
        raise _err("signed envelope too large", _ENV)
    key_pb = payload_type = payload = signature = None
    for no, wt, val in protobuf.iter_fields(buf, max_fields=16):
        if no == 1:
            key_pb = protobuf.expect_bytes(wt, val, "public_key")
        elif no == 2:
            payload_type = protobuf.expect_bytes(wt, val, "payload_type")
        elif no == 3:
            payload = protobuf.expect_bytes(wt, val, "payload")
        elif no == 5:
            signature = protobuf.expect_bytes(wt, val, "signature")
    if key_pb is None or payload_type is None or payload is None or signature is None:
        raise _err("signed envelope lacks a required field", _ENV)
    return Envelope(
        public_key=PublicKey.from_protobuf(key_pb),
        payload_type=payload_type,
        payload=payload,
        signature=signature,
    )


# --- peer records ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerRecordFields:
    """A decoded ``PeerRecord`` with binary multiaddrs."""

    peer_id: PeerId
    """Whose addresses these are."""
    seq: int
    """Monotonic sequence number (go uses a nanosecond timestamp)."""
    addrs: list[bytes] = field(default_factory=list)
    """Binary multiaddrs."""


def encode_peer_record(peer_id: PeerId, seq: int, addrs: list[bytes]) -> bytes:
    parts = [protobuf.field_bytes(1, peer_id.to_bytes()), protobuf.field_varint(2, seq)]
    parts.extend(protobuf.field_bytes(3, protobuf.field_bytes(1, a)) for a in addrs)
    return b"".join(parts)


def decode_peer_record(buf: bytes | bytearray | memoryview) -> PeerRecordFields:
    """Parse a ``PeerRecord`` payload.

    Raises:
        RemoteProtocolError: malformed, no peer ID, or more than :data:`MAX_LISTEN_ADDRS`
            addresses.
    """
    pid: PeerId | None = None
    seq = 0
    addrs: list[bytes] = []
    for no, wt, val in protobuf.iter_fields(buf, max_fields=MAX_LISTEN_ADDRS + 8):
        if no == 1:
            pid = PeerId.from_bytes(protobuf.expect_bytes(wt, val, "peer_id"))
        elif no == 2:
            seq = protobuf.expect_int(wt, val, "seq")
        elif no == 3:
            info = protobuf.expect_bytes(wt, val, "addresses")
            for ino, iwt, ival in protobuf.iter_fields(info, max_fields=4):
                if ino == 1:
                    addrs.append(_bounded_bytes(iwt, ival, "multiaddr", MAX_MULTIADDR_LENGTH))
                    _check_count(addrs, MAX_LISTEN_ADDRS, "peer record addresses")
    if pid is None:
        raise _err("peer record lacks a peer ID", _ENV)
    return PeerRecordFields(peer_id=pid, seq=seq, addrs=addrs)


__all__ = [
    "MAX_IDENTIFY_MESSAGE",
    "MAX_LISTEN_ADDRS",
    "MAX_PROTOCOLS",
    "MAX_SENT_IDENTIFY_MESSAGE",
    "PEER_RECORD_DOMAIN",
    "PEER_RECORD_PAYLOAD_TYPE",
    "Envelope",
    "IdentifyFields",
    "PeerRecordFields",
    "decode_envelope",
    "decode_identify",
    "decode_peer_record",
    "encode_envelope",
    "encode_identify",
    "encode_peer_record",
    "envelope_signing_bytes",
]
