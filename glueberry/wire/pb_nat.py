"""Protobuf messages of the NAT-traversal protocols, decoded into typed dataclasses.

Specs:

* circuit relay v2: https://github.com/libp2p/specs/blob/master/relay/circuit-v2.md
  (``HopMessage``, ``StopMessage``, ``Peer``, ``Reservation``, ``Limit``, ``Status`` and the
  reservation voucher, a signed envelope with domain ``libp2p-relay-rsvp`` and payload type
  ``0x0302``);
* signed envelopes: https://github.com/libp2p/specs/blob/master/RFC/0002-signed-envelopes.md;
* DCUtR: https://github.com/libp2p/specs/blob/master/relay/DCUtR.md (``HolePunch``);
* AutoNAT v1 and v2: https://github.com/libp2p/specs/tree/master/autonat.

Theory of operation: every message has an ``encode_*`` function returning the protobuf body
and a ``decode_*`` function that parses a complete body (``bytes``) into a frozen dataclass,
raising :class:`~glueberry.errors.RemoteProtocolError` for anything malformed (wrong wire
type, unknown enum value, missing required field, too many repeated entries). Unknown field
numbers are skipped, as protobuf requires. Scalars that appear twice keep the last value.

Field presence follows the ``.proto`` files that go-libp2p ships: relay v2 and AutoNAT v2 are
proto3, so an implicit field holding its zero value is omitted on encode and an absent one
decodes as zero (go sends ``HopMessage{type: RESERVE}`` as zero bytes); DCUtR and AutoNAT v1
are proto2, so set fields are always written.

Messages travel uvarint-length-delimited. :class:`DelimitedReader` collects bytes and returns
whole messages, checking the declared length against the protocol's cap (4096 bytes for relay
and DCUtR, 8192 for AutoNAT v2) before keeping any body bytes.

Multiaddrs stay raw ``bytes`` here; :func:`multiaddr_components` splits them just enough to
find an IP address or a ``/p2p-circuit`` hop (what the NAT machines need to filter
addresses).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, TypeVar

from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.wire import protobuf, varint
from glueberry.wire.identity import PeerId, PrivateKey, PublicKey

#: Largest relay v2 message accepted (go and rust use 4096).
MAX_RELAY_MESSAGE: Final = 4096
#: Largest DCUtR message accepted (spec: "SHOULD refuse messages larger than 4 KiB").
MAX_DCUTR_MESSAGE: Final = 4096
#: Largest AutoNAT v1 message accepted (go: 4096).
MAX_AUTONAT_V1_MESSAGE: Final = 4096
#: Largest AutoNAT v2 message accepted (go: 8192).
MAX_AUTONAT_V2_MESSAGE: Final = 8192
#: Cap on repeated multiaddr entries in one message, whatever the protocol.
MAX_ADDRS: Final = 64
#: Cap on fields per message (a 4 KiB message of empty fields would otherwise be 2048 items).
MAX_FIELDS: Final = 256

#: Signed-envelope domain and payload type of relay reservation vouchers.
VOUCHER_DOMAIN: Final = "libp2p-relay-rsvp"
VOUCHER_PAYLOAD_TYPE: Final = b"\x03\x02"
#: Largest envelope accepted (an Ed25519 voucher is about 200 bytes).
MAX_ENVELOPE: Final = 2048

_E = TypeVar("_E", bound=enum.IntEnum)


def _err(msg: str, proto: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg, protocol=proto)


def _enum(cls: type[_E], value: int, proto: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        raise _err(f"unknown {cls.__name__} value {value}", proto) from None


def _fields(buf: bytes, proto: str) -> Iterator[tuple[int, int, int | bytes]]:
    return protobuf.iter_fields(buf, max_fields=MAX_FIELDS)


def _append_addr(addrs: list[bytes], value: bytes, proto: str) -> None:
    if len(addrs) >= MAX_ADDRS:
        raise _err(f"more than {MAX_ADDRS} addresses", proto)
    addrs.append(value)


def _peer_id(raw: bytes, proto: str) -> PeerId:
    try:
        return PeerId.from_bytes(raw)
    except RemoteProtocolError as exc:
        raise _err(f"invalid peer ID: {exc}", proto) from exc


# --- framing ---------------------------------------------------------------------------


def frame(body: bytes) -> bytes:
    """``uvarint(len(body)) || body``."""
    return varint.encode_length_prefixed(body)


class DelimitedReader:
    """Reassembles uvarint-length-delimited messages from a byte stream.

    The length prefix is checked against ``max_size`` as soon as it is complete, so a hostile
    prefix never makes the reader hold more than ``max_size + 9`` bytes. Bytes past the last
    whole message stay buffered; :meth:`take_rest` hands them over when the stream changes
    role (a relay circuit that becomes a raw connection).
    """

    __slots__ = ("_buf", "_max", "_proto")

    def __init__(self, max_size: int, protocol: str) -> None:
        self._buf = bytearray()
        self._max = max_size
        self._proto = protocol

    def feed(self, data: bytes) -> None:
        self._buf += data
        # Validate a complete prefix immediately, before more body bytes pile up.
        res = varint.decode(self._buf, 0)
        if res is not None and res[0] > self._max:
            raise _err(f"message length {res[0]} exceeds limit {self._max}", self._proto)
        if res is None and len(self._buf) >= varint.MAX_VARINT_BYTES:
            raise _err("unterminated length prefix", self._proto)

    def next_message(self) -> bytes | None:
        """The next whole message body, or ``None`` if more bytes are needed."""
        try:
            res = varint.decode_length_prefixed(self._buf, self._max)
        except RemoteProtocolError as exc:
            raise _err(str(exc), self._proto) from exc
        if res is None:
            return None
        body, end = res
        del self._buf[:end]
        if self._buf:  # validate the following prefix at once, too
            nxt = varint.decode(self._buf, 0)
            if nxt is not None and nxt[0] > self._max:
                raise _err(f"message length {nxt[0]} exceeds limit {self._max}", self._proto)
        return body

    def take_rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    def __len__(self) -> int:
        return len(self._buf)


# --- multiaddr inspection ----------------------------------------------------------------

#: Protocol code → fixed value size in bytes (-1 = varint-length-prefixed value).
_MA_SIZES: Final[dict[int, int]] = {
    4: 4,  # ip4
    6: 2,  # tcp
    33: 2,  # dccp
    41: 16,  # ip6
    42: -1,  # ip6zone
    43: 1,  # ipcidr
    53: -1,  # dns
    54: -1,  # dns4
    55: -1,  # dns6
    56: -1,  # dnsaddr
    132: 2,  # sctp
    273: 2,  # udp
    275: 0,  # p2p-webrtc-star
    276: 0,  # p2p-webrtc-direct
    277: 0,  # p2p-stardust
    280: 0,  # webrtc-direct
    281: 0,  # webrtc
    290: 0,  # p2p-circuit
    301: 0,  # udt
    302: 0,  # utp
    400: -1,  # unix
    421: -1,  # p2p
    443: 0,  # https
    444: 12,  # onion
    445: 37,  # onion3
    446: -1,  # garlic64
    447: -1,  # garlic32
    448: 0,  # tls
    449: -1,  # sni
    454: 0,  # noise
    460: 0,  # quic
    461: 0,  # quic-v1
    465: 0,  # webtransport
    466: -1,  # certhash
    477: 0,  # ws
    478: 0,  # wss
    479: 0,  # p2p-websocket-star
    480: 0,  # http
    481: -1,  # http-path
    777: -1,  # memory
}
P_IP4: Final = 4
P_IP6: Final = 41
P_TCP: Final = 6
P_UDP: Final = 273
P_CIRCUIT: Final = 290
P_P2P: Final = 421
P_QUIC_V1: Final = 461
#: Largest multiaddr inspected.
MAX_MULTIADDR: Final = 1024


def multiaddr_components(raw: bytes) -> list[tuple[int, bytes]]:
    """Split a binary multiaddr into ``(code, value)`` pairs.

    Raises:
        RemoteProtocolError: empty, truncated, over :data:`MAX_MULTIADDR`, or an unknown
            protocol code (whose value length cannot be known).
    """
    if not raw:
        raise _err("empty multiaddr", "multiaddr")
    if len(raw) > MAX_MULTIADDR:
        raise _err("multiaddr too long", "multiaddr")
    out: list[tuple[int, bytes]] = []
    pos = 0
    end = len(raw)
    while pos < end:
        try:
            res = varint.decode(raw, pos)
        except RemoteProtocolError as exc:
            raise _err(f"bad protocol code: {exc}", "multiaddr") from exc
        if res is None:
            raise _err("truncated protocol code", "multiaddr")
        code, pos = res
        size = _MA_SIZES.get(code)
        if size is None:
            raise _err(f"unknown multiaddr protocol {code}", "multiaddr")
        if size < 0:
            try:
                res = varint.decode(raw, pos)
            except RemoteProtocolError as exc:
                raise _err(f"bad value length: {exc}", "multiaddr") from exc
            if res is None:
                raise _err("truncated value length", "multiaddr")
            size, pos = res
        if pos + size > end:
            raise _err("truncated multiaddr value", "multiaddr")
        out.append((code, bytes(raw[pos : pos + size])))
        pos += size
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class AddrInfo:
    """What the NAT machines need to know about one multiaddr."""

    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    """The first ``/ip4`` or ``/ip6`` component, if any."""
    transport: str | None
    """``"tcp"``, ``"udp"``, ``"quic-v1"`` (or ``None``) for the first transport component."""
    port: int | None
    """The TCP/UDP port, if any."""
    relayed: bool
    """True when the address passes through a ``/p2p-circuit`` hop."""


def inspect_multiaddr(raw: bytes) -> AddrInfo:
    """Classify a binary multiaddr (raises RemoteProtocolError when malformed)."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    transport: str | None = None
    port: int | None = None
    relayed = False
    for code, value in multiaddr_components(raw):
        if code == P_IP4 and ip is None:
            ip = ipaddress.IPv4Address(value)
        elif code == P_IP6 and ip is None:
            ip = ipaddress.IPv6Address(value)
        elif code in (P_TCP, P_UDP) and transport is None:
            transport = "tcp" if code == P_TCP else "udp"
            port = int.from_bytes(value, "big")
        elif code == P_QUIC_V1 and transport == "udp":
            transport = "quic-v1"
        elif code == P_CIRCUIT:
            relayed = True
    return AddrInfo(ip=ip, transport=transport, port=port, relayed=relayed)


def ip_tcp_multiaddr(ip: str, port: int) -> bytes:
    """Binary ``/ip4|ip6/<ip>/tcp/<port>`` (a convenience for tests and drivers)."""
    addr = ipaddress.ip_address(ip)
    code = P_IP4 if addr.version == 4 else P_IP6
    return varint.encode(code) + addr.packed + varint.encode(P_TCP) + port.to_bytes(2, "big")


def ip_udp_multiaddr(ip: str, port: int, *, quic: bool = False) -> bytes:
    """Binary ``/ip4|ip6/<ip>/udp/<port>[/quic-v1]``."""
    addr = ipaddress.ip_address(ip)
    code = P_IP4 if addr.version == 4 else P_IP6
    out = varint.encode(code) + addr.packed + varint.encode(P_UDP) + port.to_bytes(2, "big")
    return out + (varint.encode(P_QUIC_V1) if quic else b"")


def is_public_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for globally routable unicast addresses (not private, loopback, link-local…)."""
    return bool(ip.is_global) and not ip.is_multicast


def public_direct_addr(raw: bytes, *, allow_private: bool = False) -> bool:
    """True for a well-formed, non-relayed IP address worth dialing directly.

    With ``allow_private`` (labs, LANs), private ranges pass too; loopback, unspecified,
    multicast and link-local never do.
    """
    try:
        info = inspect_multiaddr(raw)
    except RemoteProtocolError:
        return False
    if info.relayed or info.ip is None or info.transport is None:
        return False
    ip = info.ip
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local:
        return False
    return allow_private or is_public_ip(ip)


# --- signed envelopes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A signed envelope (RFC 0002). Only :func:`open_envelope` builds verified ones."""

    public_key: PublicKey
    """The signer's key (its peer ID is ``PeerId.from_public_key(public_key)``)."""
    payload_type: bytes
    """The multicodec type hint (``03 02`` for relay vouchers)."""
    payload: bytes
    """The signed contents."""
    signature: bytes
    """Signature over the domain-separated buffer."""

    @property
    def signer(self) -> PeerId:
        return PeerId.from_public_key(self.public_key)


def _signing_buffer(domain: str, payload_type: bytes, payload: bytes) -> bytes:
    d = domain.encode("utf-8")
    return (
        varint.encode_length_prefixed(d)
        + varint.encode_length_prefixed(payload_type)
        + varint.encode_length_prefixed(payload)
    )


def seal_envelope(key: PrivateKey, domain: str, payload_type: bytes, payload: bytes) -> bytes:
    """Sign ``payload`` and return the serialized ``Envelope``."""
    sig = key.sign(_signing_buffer(domain, payload_type, payload))
    return (
        protobuf.field_bytes(1, key.public_key.to_protobuf())
        + protobuf.field_bytes(2, payload_type)
        + protobuf.field_bytes(3, payload)
        + protobuf.field_bytes(5, sig)
    )


def open_envelope(buf: bytes, domain: str, payload_type: bytes) -> Envelope:
    """Parse an envelope and verify its signature for ``domain`` and ``payload_type``.

    Raises:
        RemoteProtocolError: malformed, unsupported key type, wrong payload type or bad
            signature.
    """
    proto = "signed-envelope"
    if len(buf) > MAX_ENVELOPE:
        raise _err("envelope too large", proto)
    key_raw = ptype = body = sig = None
    for no, wt, val in _fields(buf, proto):
        if no == 1:
            key_raw = protobuf.expect_bytes(wt, val, "public_key")
        elif no == 2:
            ptype = protobuf.expect_bytes(wt, val, "payload_type")
        elif no == 3:
            body = protobuf.expect_bytes(wt, val, "payload")
        elif no == 5:
            sig = protobuf.expect_bytes(wt, val, "signature")
    if key_raw is None or sig is None:
        raise _err("envelope lacks a public key or signature", proto)
    ptype = ptype or b""
    body = body or b""
    try:
        key = PublicKey.from_protobuf(key_raw)
    except RemoteProtocolError as exc:
        raise _err(f"envelope key: {exc}", proto) from exc
    if ptype != payload_type:
        raise _err(f"unexpected envelope payload type {ptype.hex()}", proto)
    if not key.verify(_signing_buffer(domain, ptype, body), sig):
        raise _err("envelope signature does not verify", proto)
    return Envelope(public_key=key, payload_type=ptype, payload=body, signature=sig)


# --- circuit relay v2 ----------------------------------------------------------------------

_RELAY: Final = "/libp2p/circuit/relay/0.2.0"


class RelayStatus(enum.IntEnum):
    UNUSED = 0
    OK = 100
    RESERVATION_REFUSED = 200
    RESOURCE_LIMIT_EXCEEDED = 201
    PERMISSION_DENIED = 202
    CONNECTION_FAILED = 203
    NO_RESERVATION = 204
    MALFORMED_MESSAGE = 400
    UNEXPECTED_MESSAGE = 401


class HopType(enum.IntEnum):
    RESERVE = 0
    CONNECT = 1
    STATUS = 2


class StopType(enum.IntEnum):
    CONNECT = 0
    STATUS = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    """``Peer{id, addrs}`` (relay v2) and ``PeerInfo`` (AutoNAT v1)."""

    peer_id: PeerId | None
    """The peer; ``None`` only when the field was absent."""
    addrs: tuple[bytes, ...] = ()
    """Binary multiaddrs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    """Per-circuit limits. ``None`` or 0 means "no limit" for that dimension."""

    duration: int | None = None
    """Seconds the circuit may live (uint32)."""
    data: int | None = None
    """Bytes that may be relayed in each direction (uint64)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    expire: int
    """Expiry, UTC seconds since the epoch."""
    addrs: tuple[bytes, ...] = ()
    """The relay's addresses for the reserving peer to advertise."""
    voucher: bytes | None = None
    """The serialized voucher envelope (verify with :func:`decode_voucher`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HopMessage:
    type: HopType
    peer: PeerInfo | None = None
    reservation: Reservation | None = None
    limit: Limit | None = None
    status: RelayStatus | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StopMessage:
    type: StopType
    peer: PeerInfo | None = None
    limit: Limit | None = None
    status: RelayStatus | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Voucher:
    relay: PeerId
    """The relay that granted the reservation."""
    peer: PeerId
    """The peer holding the reservation."""
    expiration: int
    """UTC seconds since the epoch."""


def encode_peer(p: PeerInfo) -> bytes:
    out = protobuf.field_bytes(1, p.peer_id.to_bytes()) if p.peer_id is not None else b""
    return out + b"".join(protobuf.field_bytes(2, a) for a in p.addrs)


def decode_peer(buf: bytes, proto: str = _RELAY) -> PeerInfo:
    pid: PeerId | None = None
    addrs: list[bytes] = []
    for no, wt, val in _fields(buf, proto):
        if no == 1:
            pid = _peer_id(protobuf.expect_bytes(wt, val, "id"), proto)
        elif no == 2:
            _append_addr(addrs, protobuf.expect_bytes(wt, val, "addrs"), proto)
    return PeerInfo(peer_id=pid, addrs=tuple(addrs))


def encode_limit(lim: Limit) -> bytes:
    out = b""
    if lim.duration is not None:
        out += protobuf.field_varint(1, lim.duration)
    if lim.data is not None:
        out += protobuf.field_varint(2, lim.data)
    return out


def decode_limit(buf: bytes) -> Limit:
    duration = data = None
    for no, wt, val in _fields(buf, _RELAY):
        if no == 1:
            duration = protobuf.expect_int(wt, val, "duration")
            if duration > 0xFFFFFFFF:
                raise _err("Limit.duration exceeds uint32", _RELAY)
        elif no == 2:
            data = protobuf.expect_int(wt, val, "data")
    return Limit(duration=duration, data=data)


def encode_reservation(r: Reservation) -> bytes:
    out = protobuf.field_varint(1, r.expire) if r.expire else b""
    out += b"".join(protobuf.field_bytes(2, a) for a in r.addrs)
    if r.voucher is not None:
        out += protobuf.field_bytes(3, r.voucher)
    return out


def decode_reservation(buf: bytes) -> Reservation:
    expire = 0
    addrs: list[bytes] = []
    voucher = None
    for no, wt, val in _fields(buf, _RELAY):
        if no == 1:
            expire = protobuf.expect_int(wt, val, "expire")
        elif no == 2:
            _append_addr(addrs, protobuf.expect_bytes(wt, val, "addrs"), _RELAY)
        elif no == 3:
            voucher = protobuf.expect_bytes(wt, val, "voucher")
    return Reservation(expire=expire, addrs=tuple(addrs), voucher=voucher)


def encode_hop(m: HopMessage) -> bytes:
    out = protobuf.field_varint(1, int(m.type)) if m.type else b""
    if m.peer is not None:
        out += protobuf.field_bytes(2, encode_peer(m.peer))
    if m.reservation is not None:
        out += protobuf.field_bytes(3, encode_reservation(m.reservation))
    if m.limit is not None:
        out += protobuf.field_bytes(4, encode_limit(m.limit))
    if m.status is not None:
        out += protobuf.field_varint(5, int(m.status))
    return out


def decode_hop(buf: bytes) -> HopMessage:
    typ = HopType.RESERVE
    peer = rsvp = lim = None
    status = None
    for no, wt, val in _fields(buf, _RELAY):
        if no == 1:
            typ = _enum(HopType, protobuf.expect_int(wt, val, "type"), _RELAY)
        elif no == 2:
            peer = decode_peer(protobuf.expect_bytes(wt, val, "peer"))
        elif no == 3:
            rsvp = decode_reservation(protobuf.expect_bytes(wt, val, "reservation"))
        elif no == 4:
            lim = decode_limit(protobuf.expect_bytes(wt, val, "limit"))
        elif no == 5:
            status = _enum(RelayStatus, protobuf.expect_int(wt, val, "status"), _RELAY)
    return HopMessage(type=typ, peer=peer, reservation=rsvp, limit=lim, status=status)


def encode_stop(m: StopMessage) -> bytes:
    out = protobuf.field_varint(1, int(m.type)) if m.type else b""
    if m.peer is not None:
        out += protobuf.field_bytes(2, encode_peer(m.peer))
    if m.limit is not None:
        out += protobuf.field_bytes(3, encode_limit(m.limit))
    if m.status is not None:
        out += protobuf.field_varint(4, int(m.status))
    return out


def decode_stop(buf: bytes) -> StopMessage:
    typ = StopType.CONNECT
    peer = lim = None
    status = None
    for no, wt, val in _fields(buf, _RELAY):
        if no == 1:
            typ = _enum(StopType, protobuf.expect_int(wt, val, "type"), _RELAY)
        elif no == 2:
            peer = decode_peer(protobuf.expect_bytes(wt, val, "peer"))
        elif no == 3:
            lim = decode_limit(protobuf.expect_bytes(wt, val, "limit"))
        elif no == 4:
            status = _enum(RelayStatus, protobuf.expect_int(wt, val, "status"), _RELAY)
    return StopMessage(type=typ, peer=peer, limit=lim, status=status)


def encode_voucher_payload(v: Voucher) -> bytes:
    return (
        protobuf.field_bytes(1, v.relay.to_bytes())
        + protobuf.field_bytes(2, v.peer.to_bytes())
        + (protobuf.field_varint(3, v.expiration) if v.expiration else b"")
    )


def decode_voucher_payload(buf: bytes) -> Voucher:
    relay = peer = None
    expiration = 0
    for no, wt, val in _fields(buf, "relay-voucher"):
        if no == 1:
            relay = _peer_id(protobuf.expect_bytes(wt, val, "relay"), "relay-voucher")
        elif no == 2:
            peer = _peer_id(protobuf.expect_bytes(wt, val, "peer"), "relay-voucher")
        elif no == 3:
            expiration = protobuf.expect_int(wt, val, "expiration")
    if relay is None or peer is None:
        raise _err("voucher lacks relay or peer", "relay-voucher")
    return Voucher(relay=relay, peer=peer, expiration=expiration)


def seal_voucher(relay_key: PrivateKey, v: Voucher) -> bytes:
    """The relay's signed voucher envelope."""
    if relay_key.peer_id != v.relay:
        raise LocalProtocolError("voucher must be signed by its relay", protocol=_RELAY)
    return seal_envelope(relay_key, VOUCHER_DOMAIN, VOUCHER_PAYLOAD_TYPE, encode_voucher_payload(v))


def decode_voucher(envelope: bytes) -> Voucher:
    """Verify a voucher envelope and return its payload.

    The envelope's signer must be the voucher's ``relay`` (otherwise anyone could vouch for
    any relay).

    Raises:
        RemoteProtocolError: malformed, wrong domain/type, bad signature, or signer ≠ relay.
    """
    env = open_envelope(envelope, VOUCHER_DOMAIN, VOUCHER_PAYLOAD_TYPE)
    v = decode_voucher_payload(env.payload)
    if not v.relay.matches(env.public_key):
        raise _err("voucher signed by a key other than the relay's", "relay-voucher")
    return v


# --- DCUtR ---------------------------------------------------------------------------------

_DCUTR: Final = "/libp2p/dcutr"


class HolePunchType(enum.IntEnum):
    CONNECT = 100
    SYNC = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class HolePunch:
    type: HolePunchType
    obs_addrs: tuple[bytes, ...] = ()


def encode_holepunch(m: HolePunch) -> bytes:
    return protobuf.field_varint(1, int(m.type)) + b"".join(
        protobuf.field_bytes(2, a) for a in m.obs_addrs
    )


def decode_holepunch(buf: bytes) -> HolePunch:
    typ = None
    addrs: list[bytes] = []
    for no, wt, val in _fields(buf, _DCUTR):
        if no == 1:
            typ = _enum(HolePunchType, protobuf.expect_int(wt, val, "type"), _DCUTR)
        elif no == 2:
            _append_addr(addrs, protobuf.expect_bytes(wt, val, "ObsAddrs"), _DCUTR)
    if typ is None:
        raise _err("HolePunch.type is required", _DCUTR)
    return HolePunch(type=typ, obs_addrs=tuple(addrs))


# --- AutoNAT v1 ----------------------------------------------------------------------------

_AUTONAT1: Final = "/libp2p/autonat/1.0.0"


class AutoNATMessageType(enum.IntEnum):
    DIAL = 0
    DIAL_RESPONSE = 1


class AutoNATStatus(enum.IntEnum):
    OK = 0
    E_DIAL_ERROR = 100
    E_DIAL_REFUSED = 101
    E_BAD_REQUEST = 200
    E_INTERNAL_ERROR = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoNATDialResponse:
    status: AutoNATStatus
    status_text: str | None = None
    addr: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoNATMessage:
    type: AutoNATMessageType
    dial: PeerInfo | None = None
    """``Dial.peer`` of a DIAL message (``None`` if ``Dial`` or its peer was absent)."""
    dial_response: AutoNATDialResponse | None = None


def encode_autonat(m: AutoNATMessage) -> bytes:
    out = protobuf.field_varint(1, int(m.type))
    if m.dial is not None:
        out += protobuf.field_bytes(2, protobuf.field_bytes(1, encode_peer(m.dial)))
    if m.dial_response is not None:
        r = m.dial_response
        body = protobuf.field_varint(1, int(r.status))
        if r.status_text is not None:
            body += protobuf.field_str(2, r.status_text)
        if r.addr is not None:
            body += protobuf.field_bytes(3, r.addr)
        out += protobuf.field_bytes(3, body)
    return out


def decode_autonat(buf: bytes) -> AutoNATMessage:
    p = _AUTONAT1
    typ = None
    dial = None
    resp = None
    for no, wt, val in _fields(buf, p):
        if no == 1:
            typ = _enum(AutoNATMessageType, protobuf.expect_int(wt, val, "type"), p)
        elif no == 2:
            for no2, wt2, val2 in _fields(protobuf.expect_bytes(wt, val, "dial"), p):
                if no2 == 1:
                    dial = decode_peer(protobuf.expect_bytes(wt2, val2, "peer"), p)
        elif no == 3:
            status = None
            text = None
            addr = None
            for no2, wt2, val2 in _fields(protobuf.expect_bytes(wt, val, "dialResponse"), p):
                if no2 == 1:
                    status = _enum(AutoNATStatus, protobuf.expect_int(wt2, val2, "status"), p)
                elif no2 == 2:
                    text = protobuf.expect_str(wt2, val2, "statusText")
                elif no2 == 3:
                    addr = protobuf.expect_bytes(wt2, val2, "addr")
            if status is None:
                raise _err("DialResponse.status missing", p)
            resp = AutoNATDialResponse(status=status, status_text=text, addr=addr)
    if typ is None:
        raise _err("Message.type missing", p)
    return AutoNATMessage(type=typ, dial=dial, dial_response=resp)


# --- AutoNAT v2 ----------------------------------------------------------------------------

_AUTONAT2: Final = "/libp2p/autonat/2"
#: Largest ``DialDataResponse.data`` chunk (spec: "limited to 4096 bytes").
MAX_DIAL_DATA_CHUNK: Final = 4096


class DialStatus(enum.IntEnum):
    UNUSED = 0
    E_DIAL_ERROR = 100
    E_DIAL_BACK_ERROR = 101
    OK = 200


class ResponseStatus(enum.IntEnum):
    E_INTERNAL_ERROR = 0
    E_REQUEST_REJECTED = 100
    E_DIAL_REFUSED = 101
    OK = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class DialRequest:
    addrs: tuple[bytes, ...]
    nonce: int
    """fixed64."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DialResponse:
    status: ResponseStatus
    addr_idx: int = 0
    dial_status: DialStatus = DialStatus.UNUSED


@dataclass(frozen=True, slots=True, kw_only=True)
class DialDataRequest:
    addr_idx: int
    num_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DialDataResponse:
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DialBack:
    nonce: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DialBackResponse:
    status: int = 0
    """Only ``OK = 0`` is defined."""


V2Message = DialRequest | DialResponse | DialDataRequest | DialDataResponse


def encode_v2(m: V2Message) -> bytes:
    """Encode a ``Message`` (the oneof wrapper used on the dial-request stream)."""
    if isinstance(m, DialRequest):
        body = b"".join(protobuf.field_bytes(1, a) for a in m.addrs)
        body += protobuf.field_fixed64(2, m.nonce) if m.nonce else b""
        return protobuf.field_bytes(1, body)
    if isinstance(m, DialResponse):
        body = protobuf.field_varint(1, int(m.status)) if m.status else b""
        body += protobuf.field_varint(2, m.addr_idx) if m.addr_idx else b""
        body += protobuf.field_varint(3, int(m.dial_status)) if m.dial_status else b""
        return protobuf.field_bytes(2, body)
    if isinstance(m, DialDataRequest):
        body = protobuf.field_varint(1, m.addr_idx) if m.addr_idx else b""
        body += protobuf.field_varint(2, m.num_bytes) if m.num_bytes else b""
        return protobuf.field_bytes(3, body)
    return protobuf.field_bytes(4, protobuf.field_bytes(1, m.data) if m.data else b"")


def _u32(v: int, name: str) -> int:
    if v > 0xFFFFFFFF:
        raise _err(f"{name} exceeds uint32", _AUTONAT2)
    return v


def _decode_v2_body(no: int, body: bytes) -> V2Message:
    p = _AUTONAT2
    if no == 1:
        addrs: list[bytes] = []
        nonce = 0
        for n, wt, val in _fields(body, p):
            if n == 1:
                _append_addr(addrs, protobuf.expect_bytes(wt, val, "addrs"), p)
            elif n == 2:
                if wt != protobuf.I64:
                    raise _err("DialRequest.nonce must be fixed64", p)
                nonce = protobuf.expect_int(wt, val, "nonce")
        return DialRequest(addrs=tuple(addrs), nonce=nonce)
    if no == 2:
        status = ResponseStatus.E_INTERNAL_ERROR
        idx = 0
        dstatus = DialStatus.UNUSED
        for n, wt, val in _fields(body, p):
            if n == 1:
                status = _enum(ResponseStatus, protobuf.expect_int(wt, val, "status"), p)
            elif n == 2:
                idx = _u32(protobuf.expect_int(wt, val, "addrIdx"), "addrIdx")
            elif n == 3:
                dstatus = _enum(DialStatus, protobuf.expect_int(wt, val, "dialStatus"), p)
        return DialResponse(status=status, addr_idx=idx, dial_status=dstatus)
    if no == 3:
        idx = 0
        num = 0
        for n, wt, val in _fields(body, p):
            if n == 1:
                idx = _u32(protobuf.expect_int(wt, val, "addrIdx"), "addrIdx")
            elif n == 2:
                num = protobuf.expect_int(wt, val, "numBytes")
        return DialDataRequest(addr_idx=idx, num_bytes=num)
    data = b""
    for n, wt, val in _fields(body, p):
        if n == 1:
            data = protobuf.expect_bytes(wt, val, "data")
    return DialDataResponse(data=data)


def decode_v2(buf: bytes) -> V2Message:
    """Decode a ``Message``; exactly one member of the oneof must be present."""
    found: V2Message | None = None
    for no, wt, val in _fields(buf, _AUTONAT2):
        if no in (1, 2, 3, 4):
            # oneof: the last member seen wins, as in protobuf.
            found = _decode_v2_body(no, protobuf.expect_bytes(wt, val, "msg"))
    if found is None:
        raise _err("Message carries no member of its oneof", _AUTONAT2)
    return found


def encode_dial_back(m: DialBack) -> bytes:
    return protobuf.field_fixed64(1, m.nonce) if m.nonce else b""


def decode_dial_back(buf: bytes) -> DialBack:
    nonce = 0
    for no, wt, val in _fields(buf, _AUTONAT2):
        if no == 1:
            if wt != protobuf.I64:
                raise _err("DialBack.nonce must be fixed64", _AUTONAT2)
            nonce = protobuf.expect_int(wt, val, "nonce")
    return DialBack(nonce=nonce)


def encode_dial_back_response(m: DialBackResponse) -> bytes:
    return protobuf.field_varint(1, m.status) if m.status else b""


def decode_dial_back_response(buf: bytes) -> DialBackResponse:
    status = 0
    for no, wt, val in _fields(buf, _AUTONAT2):
        if no == 1:
            status = protobuf.expect_int(wt, val, "status")
    if status != 0:
        raise _err(f"unknown DialBackStatus {status}", _AUTONAT2)
    return DialBackResponse(status=status)


__all__ = [
    "MAX_AUTONAT_V1_MESSAGE",
    "MAX_AUTONAT_V2_MESSAGE",
    "MAX_DCUTR_MESSAGE",
    "MAX_RELAY_MESSAGE",
    "VOUCHER_DOMAIN",
    "VOUCHER_PAYLOAD_TYPE",
    "AddrInfo",
    "AutoNATDialResponse",
    "AutoNATMessage",
    "AutoNATMessageType",
    "AutoNATStatus",
    "DelimitedReader",
    "DialBack",
    "DialBackResponse",
    "DialDataRequest",
    "DialDataResponse",
    "DialRequest",
    "DialResponse",
    "DialStatus",
    "Envelope",
    "HolePunch",
    "HolePunchType",
    "HopMessage",
    "HopType",
    "Limit",
    "PeerInfo",
    "RelayStatus",
    "Reservation",
    "ResponseStatus",
    "StopMessage",
    "StopType",
    "V2Message",
    "Voucher",
]
