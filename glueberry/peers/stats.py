"""Per-peer and per-stream statistics: cheap mutable counters, immutable snapshots.

Reference: ``glueberry-go-v1.md`` §4.8 (Go ``stats.go``: ``PeerStats`` / ``StreamStats``, four
fields that were never set, and maps that grew without bound, §9.1).

Theory of operation
-------------------
The data path must not pay for statistics per message. A driver asks the recorder once for
the :class:`StreamCounters` of its ``(peer, stream)`` and keeps the object; after each batch it
does ``c.messages_received += n; c.bytes_received += nbytes; c.last_received_at = now`` —
plain attribute updates on a slotted object, no call, no lock, no allocation. Peer totals are
summed only when a snapshot is taken (:meth:`StatsRecorder.peer_statistics`), which returns
frozen :class:`PeerStats` / :class:`StreamStats` dataclasses with Go's fields.

Connection lifetime is recorded by the Node through :meth:`StatsRecorder.connection_started`,
:meth:`StatsRecorder.connection_ended` and :meth:`StatsRecorder.connection_failed`, so
``connected_at``, ``total_connect_time``, ``connection_count`` and ``failure_count`` are real.
Memory is bounded: at most ``max_streams_per_peer`` stream entries per peer (later names are
folded into ``"other"``), :meth:`StatsRecorder.remove` forgets a peer, and
:meth:`StatsRecorder.prune` drops peers idle for longer than a given age.

Timestamps are whatever the caller passes (the Node passes ``clock.wall()``, Unix seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Generic, Literal, TypeVar

__all__ = [
    "OTHER_STREAM",
    "ConnectionType",
    "PeerStats",
    "StatsRecorder",
    "StreamCounters",
    "StreamStats",
]

#: The stream name under which traffic beyond ``max_streams_per_peer`` names is counted.
OTHER_STREAM: Final = "other"

K = TypeVar("K")

#: How a peer is reached: a plain direct connection, through a circuit relay, or a direct
#: connection opened by hole punching (DCUtR) after a relayed one.
ConnectionType = Literal["direct", "relayed", "hole_punched"]


class StreamCounters:
    """Live counters of one ``(peer, stream)``; mutate the attributes directly."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "last_received_at",
        "last_sent_at",
        "messages_received",
        "messages_sent",
        "name",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages_sent = 0
        self.messages_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.last_sent_at: float | None = None
        self.last_received_at: float | None = None

    def sent(self, count: int, nbytes: int, now: float) -> None:
        """Record ``count`` messages of ``nbytes`` plaintext bytes in total, sent at ``now``."""
        self.messages_sent += count
        self.bytes_sent += nbytes
        self.last_sent_at = now

    def received(self, count: int, nbytes: int, now: float) -> None:
        """Record ``count`` messages of ``nbytes`` plaintext bytes in total, received at ``now``."""
        self.messages_received += count
        self.bytes_received += nbytes
        self.last_received_at = now

    def snapshot(self) -> StreamStats:
        return StreamStats(
            name=self.name,
            messages_sent=self.messages_sent,
            messages_received=self.messages_received,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            last_sent_at=self.last_sent_at,
            last_received_at=self.last_received_at,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamStats:
    """Traffic of one stream with one peer (Go ``StreamStats``)."""

    name: str
    messages_sent: int
    messages_received: int
    bytes_sent: int
    """Plaintext bytes (application data, before encryption)."""
    bytes_received: int
    last_sent_at: float | None
    last_received_at: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerStats:
    """A snapshot of one peer's statistics (Go ``PeerStats``)."""

    peer_id: object
    """The peer (a ``PeerId``)."""
    connected: bool
    """Whether the peer is established now."""
    is_outbound: bool
    connected_at: float | None
    """Start of the current connection, or ``None`` when not connected."""
    total_connect_time: float
    """Seconds connected over all connections, including the current one."""
    messages_sent: int
    messages_received: int
    bytes_sent: int
    bytes_received: int
    stream_stats: Mapping[str, StreamStats]
    last_message_at: float | None
    """The latest send or receive on any stream."""
    connection_count: int
    """Connections made (or accepted) so far."""
    failure_count: int
    """Failed connection attempts and handshakes."""
    connection_type: ConnectionType | None = None
    """How the peer is reached now: ``"direct"``, ``"relayed"`` (through a circuit relay)
    or ``"hole_punched"`` (direct, opened by DCUtR); ``None`` when not connected."""


class _PeerRecord:
    __slots__ = (
        "connected",
        "connected_at",
        "connection_count",
        "connection_type",
        "failure_count",
        "is_outbound",
        "last_activity",
        "streams",
        "total_connect_time",
    )

    def __init__(self, now: float) -> None:
        self.streams: dict[str, StreamCounters] = {}
        self.connected = False
        self.is_outbound = False
        self.connected_at: float | None = None
        self.total_connect_time = 0.0
        self.connection_count = 0
        self.failure_count = 0
        self.last_activity = now
        self.connection_type: ConnectionType | None = None


class StatsRecorder(Generic[K]):
    """Statistics of every peer, keyed by peer ID.

    Args:
        max_streams_per_peer: stream entries kept per peer before names fold into
            :data:`OTHER_STREAM`.
    """

    def __init__(self, *, max_streams_per_peer: int = 64) -> None:
        self._peers: dict[K, _PeerRecord] = {}
        self._max_streams = max_streams_per_peer

    def _record(self, peer_id: K, now: float) -> _PeerRecord:
        rec = self._peers.get(peer_id)
        if rec is None:
            rec = self._peers[peer_id] = _PeerRecord(now)
        return rec

    def stream_counters(self, peer_id: K, stream: str, now: float = 0.0) -> StreamCounters:
        """The live counters of ``(peer_id, stream)``, created on first use. Keep the object."""
        rec = self._record(peer_id, now)
        counters = rec.streams.get(stream)
        if counters is None:
            if len(rec.streams) >= self._max_streams and stream != OTHER_STREAM:
                return self.stream_counters(peer_id, OTHER_STREAM, now)
            counters = rec.streams[stream] = StreamCounters(stream)
        return counters

    def record_sent(self, peer_id: K, stream: str, count: int, nbytes: int, now: float) -> None:
        """Convenience: one batch sent (drivers keep :meth:`stream_counters` instead)."""
        self.stream_counters(peer_id, stream, now).sent(count, nbytes, now)

    def record_received(self, peer_id: K, stream: str, count: int, nbytes: int, now: float) -> None:
        """Convenience: one batch received."""
        self.stream_counters(peer_id, stream, now).received(count, nbytes, now)

    def connection_started(self, peer_id: K, now: float, *, outbound: bool) -> None:
        """A connection (and its handshake) began being usable: counts it, starts the clock."""
        rec = self._record(peer_id, now)
        if rec.connected_at is not None:  # a new session replaces the old one
            rec.total_connect_time += max(0.0, now - rec.connected_at)
        rec.connected_at = now
        rec.is_outbound = outbound
        rec.connection_count += 1
        rec.last_activity = now

    def connection_established(self, peer_id: K, established: bool = True) -> None:
        """Mark whether the peer is in the Established state (``PeerStats.connected``)."""
        rec = self._peers.get(peer_id)
        if rec is not None:
            rec.connected = established

    def connection_ended(self, peer_id: K, now: float) -> None:
        """The connection closed: adds its duration to ``total_connect_time``."""
        rec = self._peers.get(peer_id)
        if rec is None:
            return
        if rec.connected_at is not None:
            rec.total_connect_time += max(0.0, now - rec.connected_at)
        rec.connected_at = None
        rec.connected = False
        rec.connection_type = None
        rec.last_activity = now

    def set_connection_type(self, peer_id: K, connection_type: ConnectionType | None) -> None:
        """How the peer is reached now (``"direct"``, ``"relayed"``, ``"hole_punched"``)."""
        rec = self._peers.get(peer_id)
        if rec is not None:
            rec.connection_type = connection_type

    def connection_failed(self, peer_id: K, now: float) -> None:
        """A dial or handshake failed."""
        rec = self._record(peer_id, now)
        rec.failure_count += 1
        rec.last_activity = now

    def peer_statistics(self, peer_id: K, now: float | None = None) -> PeerStats | None:
        """A snapshot of one peer, or ``None`` if nothing was recorded for it.

        Args:
            now: when given, the current connection's duration so far is included in
                ``total_connect_time``.
        """
        rec = self._peers.get(peer_id)
        if rec is None:
            return None
        streams = {name: c.snapshot() for name, c in rec.streams.items()}
        last = [
            t
            for s in streams.values()
            for t in (s.last_sent_at, s.last_received_at)
            if t is not None
        ]
        total = rec.total_connect_time
        if now is not None and rec.connected_at is not None:
            total += max(0.0, now - rec.connected_at)
        return PeerStats(
            peer_id=peer_id,
            connected=rec.connected,
            is_outbound=rec.is_outbound,
            connected_at=rec.connected_at,
            total_connect_time=total,
            messages_sent=sum(s.messages_sent for s in streams.values()),
            messages_received=sum(s.messages_received for s in streams.values()),
            bytes_sent=sum(s.bytes_sent for s in streams.values()),
            bytes_received=sum(s.bytes_received for s in streams.values()),
            stream_stats=MappingProxyType(streams),
            last_message_at=max(last) if last else None,
            connection_count=rec.connection_count,
            failure_count=rec.failure_count,
            connection_type=rec.connection_type,
        )

    def all_peer_statistics(self, now: float | None = None) -> dict[K, PeerStats]:
        """Snapshots of every peer with statistics."""
        out: dict[K, PeerStats] = {}
        for pid in list(self._peers):
            stats = self.peer_statistics(pid, now)
            if stats is not None:
                out[pid] = stats
        return out

    def messages_sent(self, peer_id: K) -> int:
        """Messages sent to ``peer_id`` (0 if unknown)."""
        rec = self._peers.get(peer_id)
        return 0 if rec is None else sum(c.messages_sent for c in rec.streams.values())

    def remove(self, peer_id: K) -> None:
        """Forget a peer's statistics."""
        self._peers.pop(peer_id, None)

    def prune(self, now: float, max_idle: float, keep: Callable[[K], bool] | None = None) -> int:
        """Forget peers idle for more than ``max_idle`` seconds; returns how many.

        A peer is idle since its last message or connection change; peers for which
        ``keep(peer_id)`` is true (e.g. established ones) are kept. Go's equivalent runs hourly
        with a 24 h age.
        """
        dropped = 0
        for pid, rec in list(self._peers.items()):
            last = rec.last_activity
            for c in rec.streams.values():
                for t in (c.last_sent_at, c.last_received_at):
                    if t is not None and t > last:
                        last = t
            if rec.connected_at is None and now - last > max_idle and not (keep and keep(pid)):
                del self._peers[pid]
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers
