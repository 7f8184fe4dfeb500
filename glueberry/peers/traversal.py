"""The Glueberry node across NATs: the NAT layer on the node's host, how each peer is
reached, and the budgets of relayed connections.

Specs: relay/circuit-v2.md (limits), relay/DCUtR.md (hole punching) in
https://github.com/libp2p/specs; the NAT layer itself is :mod:`glueberry.nat.manager`
(``docs/nat.md``). Architecture C3 (the manager decides, this module only reports), C11
(nothing is lost silently).

Theory of operation
-------------------
:class:`NodeTraversal` is built by the node when its configuration asks for NAT traversal
(``Config.nat_enabled``). It

* makes the host's transports (:func:`node_transports`: port-reusing TCP, QUIC, and a
  ``/p2p-circuit`` transport that remembers its live circuits) and runs a
  :class:`~glueberry.nat.manager.NatManager` on the node's host with the node's identify
  service;
* keeps, for every peer with a session (``Connected`` or ``Established``), the *kind* of the
  connection the node uses for it - the host's preferred one (direct before relayed):
  ``"relayed"`` (``/p2p-circuit``), ``"hole_punched"`` (a direct connection the NAT layer
  reported as a DCUtR success, ``HolePunchSucceeded`` with at least one attempt) or
  ``"direct"``. A change is written to the peer's statistics and published as
  :class:`~glueberry.events.PeerConnectionChanged`. When a direct connection appears next
  to a relayed one and hole punching runs, the verdict waits (at most
  :data:`PUNCH_VERDICT_WAIT` seconds) for the NAT layer's event, so the kind goes from
  relayed to hole-punched in one step;
* turns the NAT layer's ``RelayedConnectionLimited`` into
  :class:`~glueberry.events.RelayLimitReached`, and gives the connection manager the error
  of a relayed connection a relay limit ended (``ConnectionLost`` caused by
  ``ResourceLimitExceeded``);
* hands out :class:`RelayBudget` objects: the channel layer asks one for every message it
  writes on a relayed connection, and the budget refuses (``ResourceLimitExceeded``, before
  any byte is written) a message that would not fit into what the relay still forwards,
  counting the connection's real bytes (Noise, yamux and other protocols included) plus a
  conservative estimate of the message's overhead. So a message is either refused or fits:
  it is never cut off by the relay's data limit. Near the duration limit messages are
  refused too (:data:`DURATION_MARGIN`), since the relay may end the circuit before they
  arrive.

Moving the node's streams from a relayed connection to a direct one is the channel layer's
job (:meth:`glueberry.peers.channels.ChannelManager` "Migration"); new streams go direct
because the host prefers direct connections.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from glueberry.errors import ConnectionLost, GlueberryError, ResourceLimitExceeded
from glueberry.events import (
    ConnectionChange,
    EventsDropped,
    PeerConnectionChanged,
    RelayLimitReached,
)
from glueberry.nat.events import HolePunchSucceeded, RelayedConnectionLimited
from glueberry.nat.manager import NatConfig, NatManager, close_transports, nat_transports
from glueberry.transport.circuit import CircuitConnection, CircuitTransport
from glueberry.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from glueberry.clock import Clock
    from glueberry.config import Config
    from glueberry.net.host import Host, Transport
    from glueberry.net.services import IdentifyService
    from glueberry.net.transports import MuxedTransport
    from glueberry.peers.stats import ConnectionType, StatsRecorder
    from glueberry.transport.base import MuxedConnection
    from glueberry.wire.identity import PeerId, PrivateKey

__all__ = [
    "BUDGET_RESERVE",
    "DURATION_MARGIN",
    "PUNCH_VERDICT_WAIT",
    "NodeTraversal",
    "RelayBudget",
    "TrackingCircuitTransport",
    "node_transports",
    "wire_estimate",
]

logger = logging.getLogger(__name__)

#: Bytes of a relayed connection's data budget kept for traffic other than our messages
#: (yamux window updates and pings, identify pushes).
BUDGET_RESERVE: Final = 4096
#: Messages are refused this many seconds before the relay's duration limit.
DURATION_MARGIN: Final = 1.0
#: Seconds a new direct connection next to a relayed one waits for the NAT layer's verdict
#: (hole-punched or plain direct) before it is reported as ``"direct"``.
PUNCH_VERDICT_WAIT: Final = 2.0

_CIRCUIT: Final = "circuit"


def wire_estimate(frame: int) -> int:
    """An upper bound of the bytes a ``frame``-byte write costs on a relayed connection:
    the frame, a yamux header per 16 KiB (frames are cut at the send window) and Noise's
    length and tag per 64 KiB message, plus one of each for rounding."""
    return frame + 12 * (frame // 16384 + 2) + 18 * (frame // 65519 + 2)


class TrackingCircuitTransport(CircuitTransport):
    """A :class:`~glueberry.transport.circuit.CircuitTransport` that remembers its live
    circuits, so the node can find the circuit under a relayed connection (its budget, and
    whether a relay limit ended it)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._circuits: list[tuple[str, CircuitConnection]] = []

    async def dial(self, addr: Multiaddr, *, timeout: float | None) -> CircuitConnection:  # noqa: ASYNC109
        conn = await super().dial(addr, timeout=timeout)
        self._track("outbound", conn)
        return conn

    async def listen(self, addr: Multiaddr, on_connection: Callable[[Any], None]) -> Any:
        def accept(raw: Any) -> None:
            if isinstance(raw, CircuitConnection):
                self._track("inbound", raw)
            on_connection(raw)

        return await super().listen(addr, accept)

    def _track(self, direction: str, conn: CircuitConnection) -> None:
        self._circuits = [(d, c) for d, c in self._circuits if not c.is_closing()]
        self._circuits.append((direction, conn))

    def circuit_for(self, conn: MuxedConnection) -> CircuitConnection | None:
        """The circuit under the relayed connection ``conn`` (``None`` if unknown).

        Matched by remote address and direction (both travel up through the security and
        muxer layers); the newest live match wins.
        """
        found: CircuitConnection | None = None
        for direction, circuit in self._circuits:
            if (
                direction == conn.direction
                and circuit.remote_address == conn.remote_address
                and (found is None or not circuit.is_closing() or found.is_closing())
            ):
                found = circuit
        return found


def node_transports(identity: PrivateKey) -> list[Transport | MuxedTransport]:
    """:func:`~glueberry.nat.manager.nat_transports` with a :class:`TrackingCircuitTransport`."""
    out = nat_transports(identity)
    return [TrackingCircuitTransport() if isinstance(t, CircuitTransport) else t for t in out]


class RelayBudget:
    """What may still be written on one relayed connection (see the module docstring)."""

    __slots__ = ("circuit", "committed", "data", "duration")

    def __init__(self, circuit: CircuitConnection) -> None:
        self.circuit = circuit
        limit = circuit.limit
        self.data = (limit.data or 0) if limit is not None else 0
        self.duration = (limit.duration or 0) if limit is not None else 0
        #: Bytes written so far plus those of messages accepted and perhaps not yet written.
        self.committed = 0

    def remaining(self) -> int | None:
        """Bytes our messages may still use (``None``: no data limit)."""
        if not self.data:
            return None
        return max(0, self.data - BUDGET_RESERVE - max(self.committed, self.circuit.sent))

    def charge(self, frame: int, peer: PeerId, stream: str) -> None:
        """Account for a ``frame``-byte write, or refuse it.

        Raises:
            ResourceLimitExceeded: the message does not fit into the data the relay still
                forwards (``limit="relay_circuit_data"``), the duration limit is (nearly)
                up or a limit already ended the connection (``"relay_circuit_duration"``).
        """
        circuit = self.circuit
        ended = self.error(peer, stream)
        if ended is not None:
            raise ended
        if self.duration:
            left = self.duration - (time.monotonic() - circuit.opened_at)
            if left < DURATION_MARGIN:
                raise ResourceLimitExceeded(
                    f"the relayed connection to {peer} reaches the relay's {self.duration} s"
                    " limit now: message refused",
                    limit="relay_circuit_duration",
                    remote=True,
                    peer_id=peer,
                    stream=stream,
                )
        if self.data:
            need = wire_estimate(frame)
            used = max(self.committed, circuit.sent)
            if used + need > self.data - BUDGET_RESERVE:
                left = max(0, self.data - BUDGET_RESERVE - used)
                raise ResourceLimitExceeded(
                    f"message of {frame} bytes refused: the relayed connection to {peer}"
                    f" has about {left} of the relay's {self.data} bytes left",
                    limit="relay_circuit_data",
                    remote=True,
                    peer_id=peer,
                    stream=stream,
                )
            self.committed = used + need

    def error(self, peer: PeerId, stream: str) -> ResourceLimitExceeded | None:
        """The error for a write that failed because a relay limit ended the connection."""
        reason = self.circuit.limit_reached
        if reason is None:
            return None
        return ResourceLimitExceeded(
            f"the relay's {reason} limit ended the relayed connection to {peer}",
            limit=f"relay_circuit_{reason}",
            remote=True,
            peer_id=peer,
            stream=stream,
        )


def _address(conn: MuxedConnection) -> Multiaddr | None:
    try:
        if conn.transport_name == _CIRCUIT:
            return Multiaddr(conn.remote_address[0])
        host, port = conn.remote_address[0], conn.remote_address[1]
        if conn.transport_name == "tcp":
            return Multiaddr.from_socket_address(host, port)
        if conn.transport_name == "quic-v1":
            return Multiaddr.from_socket_address(host, port, "udp").encapsulate("/quic-v1")
    except (ValueError, IndexError, TypeError):
        pass
    return None


class NodeTraversal:
    """The node's NAT layer and connection kinds (see the module docstring).

    Args:
        config: the node's configuration (``nat_enabled`` is true).
        transports: what :func:`node_transports` made for the node's host.
        stats: the node's statistics (connection kind per peer).
        clock: timestamps (``wall()``).
        publish: delivers a :data:`~glueberry.events.ConnectionChange`.
        in_session: whether a peer is ``Connected`` or ``Established``.
    """

    def __init__(
        self,
        config: Config,
        transports: list[Transport | MuxedTransport],
        *,
        stats: StatsRecorder[PeerId],
        clock: Clock,
        publish: Callable[[ConnectionChange], None],
        in_session: Callable[[PeerId], bool],
    ) -> None:
        self.config = config
        self.transports = transports
        self.circuit = next(t for t in transports if isinstance(t, TrackingCircuitTransport))
        self._stats = stats
        self._clock = clock
        self._publish = publish
        self._in_session = in_session
        self.nat_config = dataclasses.replace(
            config.nat_config or NatConfig(),
            relays=config.relay_addresses,
            enable_relay_service=config.enable_relay_service,
            enable_hole_punching=config.hole_punching,
            enable_port_mapping=config.enable_port_mapping,
            enable_autonat=config.enable_autonat,
        )
        self.manager: NatManager | None = None
        self._host: Host | None = None
        self._kinds: dict[PeerId, ConnectionType] = {}
        self._punched: set[MuxedConnection] = set()
        #: One budget per relayed connection, shared by all its streams.
        self._budgets: dict[MuxedConnection, RelayBudget] = {}
        self._deferred: dict[PeerId, asyncio.TimerHandle] = {}
        self._remove_listener: Callable[[], None] | None = None
        self._closed = False

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, host: Host, identify: IdentifyService) -> None:
        """Run the NAT layer on the started ``host``.

        Raises:
            ConfigError: the host lacks a transport the NAT configuration needs.
        """
        self._host = host
        manager = NatManager(host, self.nat_config, identify=identify)
        self.manager = manager
        events = manager.subscribe(
            lambda ev: isinstance(ev, HolePunchSucceeded | RelayedConnectionLimited)
        )
        host.spawn(self._pump(events), name="glueberry-nat-events")
        self._remove_listener = host.add_connection_listener(
            self._on_connected, self._on_disconnected
        )
        await manager.start()

    async def close(self) -> None:
        """Stop the NAT layer (port mappings removed); the host closes after this."""
        if self._closed:
            return
        self._closed = True
        if self._remove_listener is not None:
            self._remove_listener()
        for handle in self._deferred.values():
            handle.cancel()
        self._deferred.clear()
        if self.manager is not None:
            await self.manager.close()

    def close_transports(self) -> None:
        """Release the transports' own resources (after the host closed)."""
        close_transports(self.transports)

    # --- queries and hooks -------------------------------------------------------------------

    def connection_type(self, peer: PeerId) -> ConnectionType | None:
        """How ``peer`` is reached now (its current session), ``None`` if not connected."""
        host = self._host
        if host is None:
            return None
        conn = host.connection_for(peer)
        return None if conn is None else self._kind(conn)

    def budget_for(self, conn: MuxedConnection) -> RelayBudget | None:
        """The budget of a relayed connection with a data or duration limit, else ``None``
        (the same object for every stream of the connection)."""
        if conn.transport_name != _CIRCUIT:
            return None
        budget = self._budgets.get(conn)
        if budget is not None:
            return budget
        circuit = self.circuit.circuit_for(conn)
        if circuit is None or circuit.limit is None or conn.is_closed:
            return None
        budget = RelayBudget(circuit)
        if not (budget.data or budget.duration):
            return None
        self._budgets[conn] = budget
        return budget

    def connection_error(self, conn: MuxedConnection) -> BaseException | None:
        """Why a relayed connection ended, when a relay limit ended it (else ``None``)."""
        if conn.transport_name != _CIRCUIT:
            return None
        budget = self._budgets.get(conn)
        circuit = budget.circuit if budget is not None else self.circuit.circuit_for(conn)
        if circuit is None or circuit.limit_reached is None:
            return None
        cause = RelayBudget(circuit).error(conn.remote_peer, "")
        err = ConnectionLost(
            f"the relay's {circuit.limit_reached} limit ended the relayed connection to"
            f" {conn.remote_peer}",
            peer_id=conn.remote_peer,
        )
        err.__cause__ = cause
        return err

    # --- sessions --------------------------------------------------------------------------

    def session_started(self, peer: PeerId) -> None:
        """The peer entered ``Connected``: publish how it is reached."""
        self._refresh(peer)

    def session_ended(self, peer: PeerId) -> None:
        """The peer left its session (``Disconnected`` or ``Cooldown``)."""
        self._kinds.pop(peer, None)
        handle = self._deferred.pop(peer, None)
        if handle is not None:
            handle.cancel()

    # --- internals ---------------------------------------------------------------------------

    def _kind(self, conn: MuxedConnection) -> ConnectionType:
        if conn.transport_name == _CIRCUIT:
            return "relayed"
        return "hole_punched" if conn in self._punched else "direct"

    def _refresh(self, peer: PeerId) -> None:
        host = self._host
        if host is None or self._closed or peer in self._deferred or not self._in_session(peer):
            return
        conn = host.connection_for(peer)
        if conn is None:
            return  # the connection manager reports the disconnect
        kind = self._kind(conn)
        previous = self._kinds.get(peer)
        if kind == previous:
            return
        self._kinds[peer] = kind
        self._stats.set_connection_type(peer, kind)
        logger.info("peer %s is now reached %s (was %s)", peer, kind, previous)
        self._publish(
            PeerConnectionChanged(
                peer_id=peer,
                connection_type=kind,
                previous=previous,
                address=_address(conn),
                timestamp=self._clock.wall(),
            )
        )

    def _on_connected(self, conn: MuxedConnection) -> None:
        host = self._host
        if host is None or self._closed:
            return
        peer = conn.remote_peer
        if (
            conn.transport_name != _CIRCUIT
            and self.nat_config.enable_hole_punching
            and peer not in self._deferred
            and any(c.transport_name == _CIRCUIT for c in host.connections(peer))
        ):
            # Probably a hole punch: wait for the NAT layer's verdict before reporting.
            loop = asyncio.get_running_loop()
            self._deferred[peer] = loop.call_later(PUNCH_VERDICT_WAIT, self._undefer, peer)
            return
        self._refresh(peer)

    def _on_disconnected(self, conn: MuxedConnection) -> None:
        self._punched.discard(conn)
        self._budgets.pop(conn, None)
        if not self._closed:
            self._refresh(conn.remote_peer)

    def _undefer(self, peer: PeerId) -> None:
        handle = self._deferred.pop(peer, None)
        if handle is not None:
            handle.cancel()
        self._refresh(peer)

    async def _pump(self, events: Any) -> None:
        async with events:
            async for ev in events:
                if isinstance(ev, EventsDropped):
                    continue
                try:
                    self._on_nat_event(ev)
                except GlueberryError:
                    logger.exception("handling NAT event %r failed", ev)

    def _on_nat_event(self, ev: object) -> None:
        host = self._host
        if host is None or self._closed:
            return
        if isinstance(ev, HolePunchSucceeded):
            direct = [c for c in host.connections(ev.peer) if c.transport_name != _CIRCUIT]
            match = [c for c in direct if ev.addr is not None and _address(c) == ev.addr]
            candidates = match or direct
            if candidates and ev.attempts >= 1:
                self._punched.add(candidates[-1])
            self._undefer(ev.peer)
        elif isinstance(ev, RelayedConnectionLimited) and ev.peer is not None:
            limit = ev.limit
            self._publish(
                RelayLimitReached(
                    peer_id=ev.peer,
                    relay=ev.relay,
                    reason=ev.reason,
                    sent=ev.sent,
                    received=ev.received,
                    data_limit=(limit.data or None) if limit is not None else None,
                    duration_limit=(limit.duration or None) if limit is not None else None,
                    timestamp=self._clock.wall(),
                )
            )
