"""Identify and identify-push: sans-I/O reader, message builder, push rate limiter.

Spec: https://github.com/libp2p/specs/blob/master/identify/README.md (r1, 2021-08-09), with the
behaviour go-libp2p actually has (``p2p/protocol/identify/id.go``), which every interop peer
shares:

* ``/ipfs/id/1.0.0``: the side that opens the stream only reads; the other side writes its
  ``Identify`` message and closes. ``/ipfs/id/push/1.0.0``: the pusher writes and closes; a
  field missing from a push leaves what we knew unchanged.
* Framing: uvarint-delimited protobufs. A sender may split its message in parts (go sends the
  signed peer record in a second part once the message passes 2 KiB); the reader merges up to
  :data:`MAX_MESSAGES` parts until end of stream, each at most 8 KiB (B-20).

Theory of operation. :class:`IdentifyReader` buffers at most one part, parses each part as
soon as it is complete, merges it (:meth:`IdentifyFields.merge`), and at end of stream converts
the merged fields into an :class:`IdentifyInfo`: binary multiaddrs become
:class:`~glueberry.wire.multiaddr.Multiaddr` objects (unparseable ones are dropped and counted),
the public key is checked against the authenticated peer ID *before* it is parsed (a hostile
key cannot cost CPU: CVE-2026-110789), and a signed peer record is verified completely
(domain, payload type, signature, signer == peer == record's peer ID: RUSTSEC-2022-0009). An
invalid record is logged and ignored, never trusted; a key that does not match the peer is a
:class:`~glueberry.errors.RemoteProtocolError`.

:func:`build_identify` produces the bytes to write; :class:`PushRateLimiter` is the token
bucket the driver consults before applying a push (B-21, push storms).
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from glueberry._version import __version__
from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.wire import pb_identify, varint
from glueberry.wire.identity import (
    MAX_INLINE_KEY_LENGTH,
    MAX_PUBLIC_KEY_PROTOBUF,
    MH_IDENTITY,
    MH_SHA2_256,
    PeerId,
    PrivateKey,
    PublicKey,
)
from glueberry.wire.multiaddr import Multiaddr
from glueberry.wire.pb_identify import (
    MAX_IDENTIFY_MESSAGE,
    PEER_RECORD_DOMAIN,
    PEER_RECORD_PAYLOAD_TYPE,
    IdentifyFields,
)

logger = logging.getLogger(__name__)

IDENTIFY_PROTOCOL: Final = "/ipfs/id/1.0.0"
IDENTIFY_PUSH_PROTOCOL: Final = "/ipfs/id/push/1.0.0"
#: The ``protocolVersion`` every libp2p implementation sends.
PROTOCOL_VERSION: Final = "ipfs/0.1.0"
#: Our ``agentVersion``.
AGENT_VERSION: Final = f"glueberry-py/{__version__}"
#: Parts merged at most (go ``maxMessages``); one more is a protocol error.
MAX_MESSAGES: Final = 10
#: go-libp2p's identify timeout.
DEFAULT_IDENTIFY_TIMEOUT: Final = 5.0
#: go moves the signed record to a second part once a message passes this size.
_SPLIT_THRESHOLD: Final = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedPeerRecord:
    """A peer record whose envelope verified and whose signer is the identified peer."""

    peer_id: PeerId
    """The record's peer (equal to the connection's remote peer)."""
    seq: int
    """Sequence number; a newer record has a larger one."""
    addrs: tuple[Multiaddr, ...]
    """The certified addresses (unparseable ones dropped)."""
    envelope: bytes
    """The envelope as received, for storage or forwarding."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentifyInfo:
    """What a peer told us about itself. ``None`` fields were absent from the message(s)."""

    public_key: PublicKey | None
    """The peer's public key; already checked against its peer ID."""
    listen_addrs: tuple[Multiaddr, ...] | None
    """Addresses the peer listens on."""
    protocols: tuple[str, ...] | None
    """Protocols the peer accepts inbound."""
    observed_addr: Multiaddr | None
    """Our address as the peer sees it."""
    protocol_version: str | None
    """Usually ``ipfs/0.1.0``."""
    agent_version: str | None
    """Implementation and version, e.g. ``github.com/libp2p/go-libp2p``."""
    signed_peer_record: SignedPeerRecord | None
    """The verified peer record, or ``None`` (absent or rejected)."""
    dropped_addrs: int = 0
    """Binary multiaddrs (listen, observed, record) that did not parse and were dropped."""
    signed_record_rejected: bool = False
    """True when a signed peer record was present but failed verification."""


class IdentifyEvent:
    """Base of identify events. Events are not meant to be subclassed further."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentifyReceived(IdentifyEvent):
    """The peer finished writing (end of stream) and its message(s) were valid."""

    info: IdentifyInfo
    """The merged, converted, verified result."""
    push: bool
    """True for ``/ipfs/id/push/1.0.0``: absent fields mean "unchanged"."""
    parts: int
    """How many uvarint-delimited parts were merged."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentifyTimedOut(IdentifyEvent):
    """End of stream did not arrive before the deadline; the reader is finished."""


class IdentifyReader:
    """Reads one identify (or push) stream written by the remote peer.

    Call order: ``receive_data*`` then ``next_event``; ``receive_data(b"")`` (end of stream)
    yields :class:`IdentifyReceived`. Raises only :class:`RemoteProtocolError` (oversized
    part, too many parts, malformed protobuf, truncated final part, key/peer mismatch) or
    :class:`LocalProtocolError` (fed after finishing), and is finished afterwards.
    """

    def __init__(
        self,
        remote_peer: PeerId,
        *,
        push: bool = False,
        now: float = 0.0,
        timeout: float | None = DEFAULT_IDENTIFY_TIMEOUT,
    ) -> None:
        self._remote = remote_peer
        self._push = push
        self._proto = IDENTIFY_PUSH_PROTOCOL if push else IDENTIFY_PROTOCOL
        self._buf = bytearray()
        self._merged = IdentifyFields()
        self._parts = 0
        self._events: deque[IdentifyEvent] = deque()
        self._deadline = None if timeout is None else now + timeout
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the stream; ``b""`` means the writer closed it."""
        del now
        if self._finished:
            if data:
                raise LocalProtocolError("identify reader already finished", protocol=self._proto)
            return
        try:
            if not data:
                self._finish()
                return
            self._buf += data
            self._parse_parts()
        except RemoteProtocolError:
            self._finished = True
            self._buf.clear()
            raise

    def _parse_parts(self) -> None:
        pos = 0
        while pos < len(self._buf):
            res = varint.decode_length_prefixed(self._buf, MAX_IDENTIFY_MESSAGE, pos)
            if res is None:
                break
            body, pos = res
            self._parts += 1
            if self._parts > MAX_MESSAGES:
                raise RemoteProtocolError(
                    f"identify sent in more than {MAX_MESSAGES} parts", protocol=self._proto
                )
            self._merged.merge(pb_identify.decode_identify(body))
        if pos:
            del self._buf[:pos]

    def _finish(self) -> None:
        self._finished = True
        if self._buf:
            raise RemoteProtocolError(
                "identify stream ended inside a message", protocol=self._proto
            )
        info = convert_identify(self._merged, self._remote, protocol=self._proto)
        self._events.append(IdentifyReceived(info=info, push=self._push, parts=self._parts))

    def next_event(self) -> IdentifyEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[IdentifyEvent]:
        while self._events:
            yield self._events.popleft()

    def data_to_send(self) -> bytes:
        """The reader never writes."""
        return b""

    def get_timer(self) -> float | None:
        return None if self._finished else self._deadline

    def handle_timer(self, now: float) -> None:
        if self._finished or self._deadline is None or now < self._deadline:
            return
        self._finished = True
        self._buf.clear()
        self._events.append(IdentifyTimedOut())


# --- conversion and verification -------------------------------------------------------------


def _peer_id_of_serialized_key(raw: bytes) -> PeerId | None:
    """The peer ID that a serialized key would have, computed without parsing the key."""
    if len(raw) > MAX_PUBLIC_KEY_PROTOBUF:
        return None
    if len(raw) <= MAX_INLINE_KEY_LENGTH:
        return PeerId(bytes((MH_IDENTITY,)) + varint.encode(len(raw)) + raw)
    return PeerId(bytes((MH_SHA2_256, 32)) + hashlib.sha256(raw).digest())


def _addr(raw: bytes) -> Multiaddr | None:
    try:
        return Multiaddr.from_bytes(raw)
    except RemoteProtocolError:
        return None


def _addrs(raws: Iterable[bytes]) -> tuple[tuple[Multiaddr, ...], int]:
    out: list[Multiaddr] = []
    dropped = 0
    for raw in raws:
        ma = _addr(raw)
        if ma is None:
            dropped += 1
        else:
            out.append(ma)
    return tuple(out), dropped


def verify_signed_peer_record(envelope: bytes, remote_peer: PeerId) -> SignedPeerRecord:
    """Check a ``signedPeerRecord`` completely.

    Raises:
        RemoteProtocolError: malformed; wrong domain or payload type; bad signature; signed by
            another key than ``remote_peer``'s; or a record about another peer.
    """
    proto = "signed-envelope"
    env = pb_identify.decode_envelope(envelope)
    if env.payload_type != PEER_RECORD_PAYLOAD_TYPE:
        raise RemoteProtocolError("envelope is not a peer record", protocol=proto)
    if PeerId.from_public_key(env.public_key) != remote_peer:
        raise RemoteProtocolError("peer record signed by another key", protocol=proto)
    if not env.verify(PEER_RECORD_DOMAIN):
        raise RemoteProtocolError("peer record signature does not verify", protocol=proto)
    rec = pb_identify.decode_peer_record(env.payload)
    if rec.peer_id != remote_peer:
        raise RemoteProtocolError("peer record is about another peer", protocol=proto)
    addrs, _ = _addrs(rec.addrs)
    return SignedPeerRecord(peer_id=rec.peer_id, seq=rec.seq, addrs=addrs, envelope=envelope)


def convert_identify(
    fields: IdentifyFields, remote_peer: PeerId, *, protocol: str = IDENTIFY_PROTOCOL
) -> IdentifyInfo:
    """Turn merged raw fields into an :class:`IdentifyInfo`, verifying what can be verified.

    Raises:
        RemoteProtocolError: the public key does not belong to ``remote_peer`` or is malformed.
    """
    key: PublicKey | None = None
    if fields.public_key is not None:
        # Compare before parsing: a key that is not the peer's is refused at hash cost only.
        if _peer_id_of_serialized_key(fields.public_key) != remote_peer:
            logger.info("identify: public key does not match peer %s; rejected", remote_peer)
            raise RemoteProtocolError(
                "identify public key does not match peer ID", protocol=protocol
            )
        key = PublicKey.from_protobuf(fields.public_key)

    dropped = 0
    listen: tuple[Multiaddr, ...] | None = None
    if fields.listen_addrs is not None:
        listen, n = _addrs(fields.listen_addrs)
        dropped += n
    observed: Multiaddr | None = None
    if fields.observed_addr is not None:
        observed = _addr(fields.observed_addr)
        dropped += observed is None

    record: SignedPeerRecord | None = None
    rejected = False
    if fields.signed_peer_record is not None:
        try:
            record = verify_signed_peer_record(fields.signed_peer_record, remote_peer)
        except RemoteProtocolError as exc:
            rejected = True
            logger.info(
                "identify: ignoring invalid signed peer record from %s: %s", remote_peer, exc
            )
    if dropped:
        logger.debug("identify: dropped %d unparseable addresses from %s", dropped, remote_peer)
    return IdentifyInfo(
        public_key=key,
        listen_addrs=listen,
        protocols=None if fields.protocols is None else tuple(fields.protocols),
        observed_addr=observed,
        protocol_version=fields.protocol_version,
        agent_version=fields.agent_version,
        signed_peer_record=record,
        dropped_addrs=dropped,
        signed_record_rejected=rejected,
    )


# --- building -------------------------------------------------------------------------------


def make_signed_peer_record(key: PrivateKey, addrs: Iterable[Multiaddr], seq: int) -> bytes:
    """A signed envelope holding our peer record (what go puts in ``signedPeerRecord``)."""
    payload = pb_identify.encode_peer_record(key.peer_id, seq, [a.to_bytes() for a in addrs])
    return pb_identify.encode_envelope(key, PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, payload)


def build_identify(
    *,
    public_key: PublicKey | None,
    listen_addrs: Iterable[Multiaddr] | None,
    protocols: Iterable[str] | None,
    observed_addr: Multiaddr | None = None,
    protocol_version: str | None = PROTOCOL_VERSION,
    agent_version: str | None = AGENT_VERSION,
    signed_peer_record: bytes | None = None,
) -> bytes:
    """The bytes to write on an identify (or push) stream before closing it.

    One uvarint-delimited message, or two when a signed record makes it larger than 2 KiB (the
    second holds only the record), as go does. ``None`` arguments are left out (for a push,
    "unchanged").

    Raises:
        LocalProtocolError: a part would exceed what peers accept (8 KiB).
    """
    fields = IdentifyFields(
        public_key=None if public_key is None else public_key.to_protobuf(),
        listen_addrs=None if listen_addrs is None else [a.to_bytes() for a in listen_addrs],
        protocols=None if protocols is None else list(protocols),
        observed_addr=None if observed_addr is None else observed_addr.to_bytes(),
        protocol_version=protocol_version,
        agent_version=agent_version,
        signed_peer_record=signed_peer_record,
    )
    body = pb_identify.encode_identify(fields)
    parts = [body]
    if signed_peer_record is not None and len(body) > _SPLIT_THRESHOLD:
        fields.signed_peer_record = None
        parts = [
            pb_identify.encode_identify(fields),
            pb_identify.encode_identify(IdentifyFields(signed_peer_record=signed_peer_record)),
        ]
    for part in parts:
        if len(part) > MAX_IDENTIFY_MESSAGE:
            raise LocalProtocolError(
                "identify message too large to send", protocol=IDENTIFY_PROTOCOL
            )
        if len(part) > pb_identify.MAX_SENT_IDENTIFY_MESSAGE:
            logger.warning("identify message is %d bytes; rust-libp2p accepts 4096", len(part))
    return b"".join(varint.encode_length_prefixed(p) for p in parts)


# --- push rate limiting ----------------------------------------------------------------------


class PushRateLimiter:
    """Token bucket per peer for inbound identify pushes (B-21).

    A peer may push ``burst`` times at once and then ``rate`` times per second. Buckets that are
    full again are forgotten when the table grows past ``max_peers``, so memory stays bounded.
    """

    def __init__(self, *, rate: float = 1.0, burst: int = 5, max_peers: int = 4096) -> None:
        if rate <= 0 or burst < 1 or max_peers < 1:
            raise LocalProtocolError("invalid push rate limit", protocol=IDENTIFY_PUSH_PROTOCOL)
        self.rate = rate
        self.burst = burst
        self.max_peers = max_peers
        self._buckets: dict[Hashable, tuple[float, float]] = {}
        #: Pushes refused so far.
        self.refused = 0

    def allow(self, peer: Hashable, now: float) -> bool:
        """Spend one token of ``peer``'s bucket; False (counted) when it is empty."""
        tokens, last = self._buckets.get(peer, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[peer] = (tokens, now)
            self.refused += 1
            return False
        self._buckets[peer] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_peers:
            self._prune(now)
        return True

    def forget(self, peer: Hashable) -> None:
        self._buckets.pop(peer, None)

    def _prune(self, now: float) -> None:
        full = [
            p
            for p, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate >= self.burst
        ]
        for p in full:
            del self._buckets[p]
        # Still too many (every bucket busy): drop the oldest entries.
        excess = len(self._buckets) - self.max_peers
        if excess > 0:
            for p in sorted(self._buckets, key=lambda q: self._buckets[q][1])[:excess]:
                del self._buckets[p]


__all__ = [
    "AGENT_VERSION",
    "DEFAULT_IDENTIFY_TIMEOUT",
    "IDENTIFY_PROTOCOL",
    "IDENTIFY_PUSH_PROTOCOL",
    "MAX_MESSAGES",
    "PROTOCOL_VERSION",
    "IdentifyEvent",
    "IdentifyInfo",
    "IdentifyReader",
    "IdentifyReceived",
    "IdentifyTimedOut",
    "PushRateLimiter",
    "SignedPeerRecord",
    "build_identify",
    "convert_identify",
    "make_signed_peer_record",
    "verify_signed_peer_record",
]
