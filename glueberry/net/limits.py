"""Connection and stream limits, and the counters that enforce them.

A small, explicit stand-in for go-libp2p's resource manager (``p2p/host/resource-manager``,
defaults in ``limit_defaults.go``; see libp2p-notes §6.2). Every violation raises
:class:`glueberry.errors.ResourceLimitExceeded` whose ``limit`` names the field of
:class:`Limits` that was hit and whose ``remote`` says whose limit it was (``False``: ours;
``True``: the peer refused, e.g. it reset a new stream with go's code 0x1002).

Theory of operation
-------------------
:class:`ResourceLimiter` counts connections. A connection *reserves* its slot before any work
is done for it: inbound at accept time (before the upgrade, so half-open connections count,
B-40), outbound before the dial. The cap on connections *in the upgrade* at the same time is
enforced by :class:`glueberry.net.upgrader.Upgrader` (configured from
:attr:`Limits.max_pending_upgrades`). The :class:`ConnectionReservation` it gets back is released
exactly once when the connection ends, whatever the path (``release`` is idempotent). The peer
is attached to a reservation once the security handshake names it, which is when the per-peer
limit is checked.

:class:`StreamCounter` counts the streams of one connection, by direction; the host consults it
before opening a stream and when accepting one. All of this is plain synchronous bookkeeping on
the event loop thread: no locks, no tasks.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Final

from glueberry.errors import ConfigError, ResourceLimitExceeded

if TYPE_CHECKING:
    from glueberry.wire.identity import PeerId

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: go-libp2p stream reset code for "resource limit exceeded" (core/network/mux.go).
STREAM_RESOURCE_LIMIT_EXCEEDED: Final = 0x1002
#: go-libp2p connection close code for "resource limit exceeded" (core/network/conn.go).
CONN_RESOURCE_LIMIT_EXCEEDED: Final = 0x1001


class Direction(enum.StrEnum):
    """Who opened a connection or stream."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Limits of one host. ``None`` disables a limit.

    Defaults follow go-libp2p's resource manager on a small machine (system scope 128
    connections, 64 inbound; 8 per peer) and rust-libp2p's 128 negotiating inbound streams.
    """

    max_connections: int | None = 256
    """Established plus in-progress connections, both directions."""
    max_inbound_connections: int | None = 128
    """Inbound connections, counted from accept (before the upgrade)."""
    max_outbound_connections: int | None = 256
    """Outbound connections, counted from the start of the dial."""
    max_connections_per_peer: int | None = 8
    """Connections to one peer (checked once the handshake names the peer)."""
    max_pending_upgrades: int | None = 64
    """Inbound connections still in the upgrade (security + muxer) at the same time; over
    it, new connections are closed at once (enforced by the upgrader)."""
    max_pending_upgrades_per_ip: int | None = 8
    """The same, per remote IP address, so that one address flooding half-open connections
    cannot fill :attr:`max_pending_upgrades` for everyone (go-libp2p limits connections per
    IP to 8 the same way)."""
    per_ip_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    """Networks not subject to the per-IP cap (go-libp2p exempts loopback too). Addresses
    that are not IP addresses (the memory transport) are never capped per IP."""
    _exempt: tuple[IPNetwork, ...] = field(default=(), init=False, repr=False, compare=False)
    max_streams_per_connection: int | None = 1024
    """Open streams per connection, both directions (as the muxer counts them)."""
    max_inbound_streams_per_connection: int | None = 512
    """Streams of one connection that the peer opened and whose handler still runs."""
    max_negotiating_streams: int | None = 128
    """Inbound streams of one connection still in multistream-select at the same time."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in ("per_ip_exempt", "_exempt"):
                continue
            value = getattr(self, f.name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"Limits.{f.name} must be a non-negative int or None")
        try:
            nets = tuple(ipaddress.ip_network(n) for n in self.per_ip_exempt)
        except ValueError as exc:
            raise ConfigError(f"Limits.per_ip_exempt: {exc}") from exc
        object.__setattr__(self, "_exempt", nets)

    def per_ip_capped(self, host: str) -> bool:
        """Whether ``host`` (a remote address) is subject to the per-IP caps."""
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return not any(ip.version == n.version and ip in n for n in self._exempt)


def _over(limit: int | None, count: int) -> bool:
    return limit is not None and count >= limit


class ResourceLimiter:
    """Connection counters for one host; raises :class:`ResourceLimitExceeded` on a breach."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._by_direction: Counter[Direction] = Counter()
        self._by_peer: Counter[PeerId] = Counter()
        #: Rejections so far, by limit name (for metrics and tests).
        self.rejected: Counter[str] = Counter()

    @property
    def connections(self) -> int:
        return self._by_direction.total()

    def count(self, direction: Direction) -> int:
        return self._by_direction[direction]

    def peer_count(self, peer: PeerId) -> int:
        return self._by_peer[peer]

    def _reject(self, name: str, what: str) -> ResourceLimitExceeded:
        self.rejected[name] += 1
        value = getattr(self.limits, name)
        return ResourceLimitExceeded(f"local limit {name}={value} reached: {what}", limit=name)

    def reserve(self, direction: Direction) -> ConnectionReservation:
        """Reserve a connection slot: inbound at accept, outbound before dialing.

        Raises:
            ResourceLimitExceeded: the total or the per-direction limit is reached.
        """
        lim = self.limits
        if _over(lim.max_connections, self.connections):
            raise self._reject("max_connections", "too many connections")
        if direction is Direction.INBOUND:
            if _over(lim.max_inbound_connections, self._by_direction[direction]):
                raise self._reject("max_inbound_connections", "too many inbound connections")
        elif _over(lim.max_outbound_connections, self._by_direction[direction]):
            raise self._reject("max_outbound_connections", "too many outbound connections")
        self._by_direction[direction] += 1
        return ConnectionReservation(self, direction)

    def check_peer(self, peer: PeerId) -> None:
        """Raise if one more connection to ``peer`` would break the per-peer limit."""
        if _over(self.limits.max_connections_per_peer, self._by_peer[peer]):
            raise self._reject("max_connections_per_peer", f"too many connections to {peer}")


class ConnectionReservation:
    """One connection's slot in a :class:`ResourceLimiter`; release it exactly once."""

    __slots__ = ("_limiter", "_released", "direction", "peer")

    def __init__(self, limiter: ResourceLimiter, direction: Direction) -> None:
        self._limiter = limiter
        self.direction = direction
        self._released = False
        self.peer: PeerId | None = None

    def set_peer(self, peer: PeerId) -> None:
        """Attach the authenticated peer (checks the per-peer limit).

        Raises:
            ResourceLimitExceeded: ``max_connections_per_peer`` reached.
        """
        if self._released or self.peer is not None:
            return
        self._limiter.check_peer(peer)
        self.peer = peer
        self._limiter._by_peer[peer] += 1

    def release(self) -> None:
        """Give back every slot held (idempotent)."""
        if self._released:
            return
        self._released = True
        lim = self._limiter
        lim._by_direction[self.direction] -= 1
        if self.peer is not None:
            lim._by_peer[self.peer] -= 1
            if lim._by_peer[self.peer] <= 0:
                del lim._by_peer[self.peer]


class StreamCounter:
    """Stream bookkeeping of one connection.

    The muxer knows how many streams are open (``open_streams`` below comes from it); this
    counter adds what the muxer cannot know: inbound streams still in multistream-select and
    inbound streams whose handler still runs.
    """

    __slots__ = ("_limits", "handling", "negotiating", "rejected")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        #: Inbound streams negotiating or being handled.
        self.handling = 0
        #: Inbound streams in multistream-select.
        self.negotiating = 0
        #: Inbound streams refused (reset with code 0x1002).
        self.rejected = 0

    def check_outbound(self, open_streams: int) -> None:
        """Before opening a stream, with ``open_streams`` open on the connection.

        Raises:
            ResourceLimitExceeded: ``max_streams_per_connection`` reached (``remote=False``).
        """
        lim = self._limits.max_streams_per_connection
        if _over(lim, open_streams):
            raise ResourceLimitExceeded(
                f"local limit max_streams_per_connection={lim} reached",
                limit="max_streams_per_connection",
            )

    def try_open_inbound(self, open_streams: int) -> str | None:
        """Admit a stream the peer opened (``open_streams`` open, this one excluded).

        Returns:
            ``None`` when admitted (it then counts as negotiating and handled), else the
            name of the limit that refuses it.
        """
        lim = self._limits
        name: str | None = None
        if _over(lim.max_streams_per_connection, open_streams):
            name = "max_streams_per_connection"
        elif _over(lim.max_inbound_streams_per_connection, self.handling):
            name = "max_inbound_streams_per_connection"
        elif _over(lim.max_negotiating_streams, self.negotiating):
            name = "max_negotiating_streams"
        if name is not None:
            self.rejected += 1
            return name
        self.handling += 1
        self.negotiating += 1
        return None

    def negotiated(self) -> None:
        """The stream's negotiation ended (either way)."""
        self.negotiating -= 1

    def handled(self) -> None:
        """The stream's handler returned (or negotiation failed)."""
        self.handling -= 1


__all__ = [
    "CONN_RESOURCE_LIMIT_EXCEEDED",
    "STREAM_RESOURCE_LIMIT_EXCEEDED",
    "ConnectionReservation",
    "Direction",
    "Limits",
    "ResourceLimiter",
    "StreamCounter",
]
