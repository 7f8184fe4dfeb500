"""NatManager: runs the NAT-traversal behaviours on a host and executes their commands.

Specs: relay/circuit-v2.md, relay/DCUtR.md, autonat/autonat-v1.md, identify/README.md
(observed addresses), RFC 6886 / UPnP IGD (port mapping) in https://github.com/libp2p/specs.

Theory of operation (architecture C3)
-------------------------------------
The decisions live in the pure behaviours of :mod:`glueberry.nat.policy`: *when* to punch and
how often, which relays to hold reservations with and when to refresh them, which observed
addresses to believe, whether we are PUBLIC or PRIVATE. They consume events and return
commands. This class is the only place those commands are executed; it owns no policy of its
own beyond plumbing:

==========================  =========================================================
event (from the host)       fed to
==========================  =========================================================
relayed conn (+identify)    ``HolePunchBehaviour.on_relayed_connection``
direct conn                 ``HolePunchBehaviour.on_direct_connection``; identify's
                            ``observedAddr`` → ``ObservedAddrTracker.on_observed``
conn to a configured relay  ``AutoRelayBehaviour.on_relay_candidate``
last conn to a relay gone   ``AutoRelayBehaviour.on_relay_disconnected``
AutoNAT verdict             ``ReachabilityTracker.on_result``
==========================  =========================================================

==========================  =========================================================
command                     executed by
==========================  =========================================================
``Dial``                    ``host.connect`` without a peer ID (a new direct connection)
``StartHolePunch``          :meth:`HolePunchService.attempt` (one DCUtR attempt)
``CloseConnection``         close the relayed connection once its streams ended (grace)
``Reserve``                 :meth:`RelayClient.reserve`
``NotifyRelayAddrs``        the circuit listener's addresses (advertised by identify)
``NotifyObservedAddrs``     the TCP and QUIC transports' external addresses (advertised)
``ProbeReachability``       AutoNAT v2 (else v1) probe with a connected server
``NotifyReachability``      ``AutoRelayBehaviour.on_reachability`` + an event
==========================  =========================================================

Everything runs in the host's task group (``host.spawn``): one timer task sleeps until the
earliest behaviour timer (wall clock for reservations, loop time for the rest), and each
command that does I/O gets its own short task. :meth:`NatManager.close` removes port
mappings and detaches the services; closing the host ends the rest.

What happened is published as :mod:`glueberry.nat.events` through :meth:`subscribe` -
reservations, hole-punch results, reachability, external addresses, port mappings and,
importantly, relay limits that ended a relayed connection.

Setup: the host needs the port-reusing TCP transport (or QUIC) and the circuit transport::

    transports = nat_transports(key)      # reuseport TCP, QUIC (with aioquic), /p2p-circuit
    host = Host(key, listen_addrs=["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"],
                config=HostConfig(transports=transports))
    await host.start()
    nat = NatManager(host, NatConfig(relays=["/ip4/…/tcp/4001/p2p/12D3…"]))
    await nat.start()
    ...
    await nat.close(); await host.close(); close_transports(transports)

Hole punching uses every transport it can: TCP through the port-reusing transport, QUIC
when the host listens on QUIC on the wildcard address (:mod:`glueberry.nat.quic_punch`).
A QUIC address is learnt like a TCP one: from identify's ``observedAddr`` on a QUIC
connection (e.g. to a relay dialed over QUIC), confirmed by ``observed_addr_threshold``
observers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from glueberry.errors import ConfigError, GlueberryError
from glueberry.events import EventBroadcaster, EventSubscription
from glueberry.nat import policy as P
from glueberry.nat.autonat import AUTONAT_PROTOCOL, AUTONAT_V2_PROTOCOL, AutoNATService
from glueberry.nat.events import (
    ExternalAddrsChanged,
    HolePunchFailed,
    HolePunchSucceeded,
    NatEvent,
    ReachabilityChanged,
    RelayedConnectionLimited,
    ReservationFailed,
    ReservationObtained,
)
from glueberry.nat.holepunch import AttemptResult, HolePunchService, is_direct
from glueberry.nat.portmap import Method, PortMapper
from glueberry.nat.quic_punch import QuicPuncher
from glueberry.nat.relay_client import RelayClient
from glueberry.nat.relay_service import RelayService
from glueberry.net.services import IdentifyService
from glueberry.proto.relay import RelayLimits
from glueberry.transport.circuit import CircuitConnection, CircuitTransport, LimitReason
from glueberry.transport.tcp_reuse import ReuseportTcpTransport, ephemeral_dials
from glueberry.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from glueberry.net.host import Host, Transport
    from glueberry.net.transports import MuxedTransport
    from glueberry.transport.base import MuxedConnection
    from glueberry.transport.quic import QuicConfig
    from glueberry.wire.identity import PeerId, PrivateKey

logger = logging.getLogger(__name__)


def nat_transports(
    identity: PrivateKey | None = None, *, quic_config: QuicConfig | None = None
) -> list[Transport | MuxedTransport]:
    """The transports a NAT-traversing host needs: port-reusing TCP, QUIC (only with
    ``identity``, which signs its certificate, and when aioquic is installed), then
    ``/p2p-circuit``. The caller closes them after the host (:func:`close_transports`)."""
    out: list[Transport | MuxedTransport] = [ReuseportTcpTransport()]
    if identity is not None:
        try:
            from glueberry.transport.quic import QuicTransport
        except ImportError:
            logger.info("aioquic is not installed: no QUIC transport")
        else:
            out.append(QuicTransport(identity, quic_config))
    out.append(CircuitTransport())
    return out


def close_transports(transports: Sequence[object]) -> None:
    """Close the transports that hold resources of their own (QUIC: sockets, timers)."""
    for t in transports:
        close = getattr(t, "close", None)
        if callable(close):
            close()


@dataclass(frozen=True, slots=True, kw_only=True)
class NatConfig:
    """What the NAT layer does (times in seconds)."""

    relays: Sequence[str | Multiaddr] = ()
    """Static relays, ``<addr>/p2p/<relay id>``: reservations are made with them while we
    are not known to be public."""
    enable_relay_client: bool = True
    """Reserve with ``relays`` and accept relayed connections."""
    enable_relay_service: bool = False
    """Serve as a relay for others (off by default; a public node may turn it on)."""
    relay_limits: RelayLimits = field(default_factory=RelayLimits)
    """The relay service's limits (circuits: 2 min / 128 KiB per direction by default)."""
    enable_hole_punching: bool = True
    """Run DCUtR on relayed connections (both roles)."""
    enable_port_mapping: bool = False
    """Map the TCP listen ports on the gateway (NAT-PMP, then UPnP) and advertise them."""
    port_mapping_method: Method = "auto"
    gateway: str | None = None
    """NAT-PMP gateway; default: the default route's gateway."""
    port_mapping_lifetime: int = 3600
    """Seconds asked for each mapping; renewed at half of what the gateway granted."""
    enable_autonat: bool = True
    """Probe our reachability with AutoNAT servers (v2, else v1), and serve both."""
    force_reachability: Literal["public", "private"] | None = None
    """Skip AutoNAT's verdict (go's ``ForceReachability*``)."""
    allow_private_addrs: bool = False
    """Treat private addresses as usable (labs, LANs): offered, dialed, confirmed."""
    observed_addr_threshold: int = 4
    """Distinct observers needed to believe an observed address (go: 4)."""
    desired_relays: int = 2
    hole_punch_attempts: int = 3
    """DCUtR attempts per relayed connection (spec: retry twice)."""
    direct_dial_first: bool = True
    """Before punching, dial the peer's public addresses directly when it advertises any
    (the spec's and go's behaviour). False punches at once (tests, measurements)."""
    direct_dial_timeout: float = 5.0
    """The plain direct dial tried before punching when the peer has public addresses."""
    punch_timeout: float = 10.0
    """Seconds from the punch to a direct connection, per attempt."""
    relayed_close_grace: float = 5.0
    """After a direct connection exists, how long the relayed one may finish its streams."""
    identify_timeout: float = 10.0
    relay_retry_interval: float = 30.0
    """How often to reconnect to configured relays that are not connected."""
    autonat_boot_delay: float = 15.0
    autonat_retry_interval: float = 90.0
    """Seconds between probes while reachability is unknown or thinly supported (go: 90)."""
    autonat_dial_timeout: float = 10.0
    """Seconds our AutoNAT server spends dialing a requester back."""

    def __post_init__(self) -> None:
        for name in (
            "direct_dial_timeout",
            "punch_timeout",
            "identify_timeout",
            "relay_retry_interval",
            "autonat_dial_timeout",
            "autonat_retry_interval",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"NatConfig.{name} must be > 0")
        if self.port_mapping_lifetime < 1:
            raise ConfigError("NatConfig.port_mapping_lifetime must be >= 1")
        if self.hole_punch_attempts < 1 or self.desired_relays < 1:
            raise ConfigError("NatConfig.hole_punch_attempts and desired_relays must be >= 1")
        if self.observed_addr_threshold < 1:
            raise ConfigError("NatConfig.observed_addr_threshold must be >= 1")


@dataclass(slots=True)
class _Relayed:
    conn: MuxedConnection
    since: float


class NatManager:
    """Wires the NAT behaviours to ``host`` (see the module docstring).

    Args:
        host: a running host whose transports include :func:`nat_transports`.
        config: what to do.
        identify: the host's identify service; one is created (and owned) if omitted.

    Raises:
        ConfigError: the host lacks a transport the configuration needs.
    """

    def __init__(
        self,
        host: Host,
        config: NatConfig | None = None,
        *,
        identify: IdentifyService | None = None,
    ) -> None:
        self.host = host
        self.config = cfg = config or NatConfig()
        transports = list(host.config.transports or ())
        self.tcp = next((t for t in transports if isinstance(t, ReuseportTcpTransport)), None)
        self.circuit = next((t for t in transports if isinstance(t, CircuitTransport)), None)
        quic = QuicPuncher(transports)
        self.quic: QuicPuncher | None = quic if quic.available else None
        if cfg.enable_hole_punching and self.tcp is None and self.quic is None:
            raise ConfigError(
                "hole punching needs ReuseportTcpTransport or a QUIC transport in "
                "HostConfig.transports (use glueberry.nat.manager.nat_transports())"
            )
        if cfg.enable_relay_client and self.circuit is None:
            raise ConfigError(
                "the relay client needs CircuitTransport in HostConfig.transports "
                "(use glueberry.nat.manager.nat_transports())"
            )
        self.relays: dict[PeerId, Multiaddr] = {}
        for text in cfg.relays:
            ma = Multiaddr(text)
            if ma.peer_id is None or ma.is_relayed:
                raise ConfigError(f"relay address {ma} must be direct and end in /p2p/<id>")
            self.relays[ma.peer_id] = ma
        self._own_identify = identify is None
        self.identify = identify
        self.events: EventBroadcaster[NatEvent] = EventBroadcaster(capacity=256)
        loop_now = asyncio.get_running_loop().time()
        self.holepunch_policy = P.HolePunchBehaviour(
            max_attempts=cfg.hole_punch_attempts, allow_private=cfg.allow_private_addrs
        )
        self.autorelay = P.AutoRelayBehaviour(desired_relays=cfg.desired_relays)
        self.observed = P.ObservedAddrTracker(
            threshold=cfg.observed_addr_threshold, allow_private=cfg.allow_private_addrs
        )
        self.reachability = P.ReachabilityTracker(
            now=loop_now,
            boot_delay=cfg.autonat_boot_delay,
            retry_interval=cfg.autonat_retry_interval,
        )
        self.relay_client: RelayClient | None = None
        self.relay_service: RelayService | None = None
        self.holepunch: HolePunchService | None = None
        self.autonat: AutoNATService | None = None
        self.portmapper: PortMapper | None = None
        self._observed_addrs: list[Multiaddr] = []
        self._mapped_addrs: list[Multiaddr] = []
        #: Live relayed connections by ``id()`` (the policy's connection IDs).
        self._relayed: dict[int, _Relayed] = {}
        self._served: dict[PeerId, int] = {}
        self._attempts: dict[PeerId, int] = {}
        self._probed: dict[PeerId, float] = {}
        self._wake = asyncio.Event()
        self._next_relay_check = 0.0
        self._remove_listener: Callable[[], None] | None = None
        self._started = False
        self._closed = False

    # --- public ---------------------------------------------------------------------------

    def subscribe(
        self, filter: Callable[[NatEvent], bool] | None = None
    ) -> EventSubscription[NatEvent]:
        """A bounded subscription to NAT events (see :mod:`glueberry.nat.events`)."""
        return self.events.subscribe(filter)

    @property
    def reachability_state(self) -> P.Reachability:
        forced = self.config.force_reachability
        if forced is not None:
            return P.Reachability(forced)
        return self.reachability.state

    @property
    def observed_addrs(self) -> list[Multiaddr]:
        return list(self._observed_addrs)

    @property
    def mapped_addrs(self) -> list[Multiaddr]:
        return list(self._mapped_addrs)

    @property
    def relay_addrs(self) -> list[Multiaddr]:
        return self.circuit.relay_addrs if self.circuit is not None else []

    async def start(self) -> None:
        """Attach the services, listen on ``/p2p-circuit``, map ports, reach the relays.

        Raises:
            NodeStateError: the host is not running.
        """
        if self._started:
            return
        self._started = True
        host, cfg = self.host, self.config
        if self.identify is None:
            self.identify = IdentifyService(host)
        if self.circuit is not None:
            self.circuit.attach(host)
            self.circuit.on_limit = self._on_circuit_limit
            if cfg.enable_relay_client:
                await host.listen("/p2p-circuit")
                self.relay_client = RelayClient(host)
        if cfg.enable_relay_service:
            self.relay_service = RelayService(
                host,
                limits=cfg.relay_limits,
                publish=self._emit,
                allow_private_addrs=cfg.allow_private_addrs,
            )
        if cfg.enable_hole_punching and (self.tcp is not None or self.quic is not None):
            self.holepunch = HolePunchService(
                host,
                self.tcp,
                quic=self.quic,
                allow_private=cfg.allow_private_addrs,
                punch_timeout=cfg.punch_timeout,
                on_punched=self._on_punched,
            )
        if cfg.enable_autonat:
            self.autonat = AutoNATService(
                host, allow_private=cfg.allow_private_addrs, dial_timeout=cfg.autonat_dial_timeout
            )
        self._remove_listener = host.add_connection_listener(
            self._on_connected, self._on_disconnected
        )
        for conn in host.connections():
            self._on_connected(conn)
        if cfg.enable_port_mapping and self.tcp is not None:
            self.portmapper = PortMapper(
                method=cfg.port_mapping_method,
                gateway=cfg.gateway,
                lifetime=cfg.port_mapping_lifetime,
                publish=self._emit,
                on_change=self._on_mapped,
            )
            ports = [lst.port for lst in self.tcp.listeners]
            await self.portmapper.start(ports, spawn=host.spawn)
        if cfg.enable_relay_client:
            self._execute(self.autorelay.on_reachability(self.reachability_state, time.time()))
        host.spawn(self._timer_loop(), name="nat-timers")
        self._wake.set()

    async def close(self) -> None:
        """Remove port mappings, stop serving NAT protocols, close subscriptions."""
        if self._closed:
            return
        self._closed = True
        if self.portmapper is not None:
            await self.portmapper.stop()
        if self._remove_listener is not None:
            self._remove_listener()
        for svc in (self.holepunch, self.autonat, self.relay_service):
            if svc is not None:
                svc.close()
        if self.circuit is not None:
            self.circuit.on_limit = None
        if self._own_identify and self.identify is not None:
            self.identify.close()
        self.events.close()
        self._wake.set()  # the timer task sees _closed and ends

    # --- events ---------------------------------------------------------------------------

    def _emit(self, event: NatEvent) -> None:
        logger.debug("nat event %s", event)
        self.events.publish_nowait(event)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._closed:
            coro.close()
            return
        try:
            self.host.spawn(coro, name=name)
        except GlueberryError:
            pass  # the host is closing; spawn closed the coroutine

    def _on_connected(self, conn: MuxedConnection) -> None:
        if self._closed:
            return
        peer = conn.remote_peer
        now = asyncio.get_running_loop().time()
        if conn.transport_name == "circuit":
            self._relayed[id(conn)] = _Relayed(conn=conn, since=now)
            if self.holepunch is not None:
                self._spawn(self._after_identify_relayed(conn), "nat-relayed")
            return
        if self.holepunch is not None and any(
            r.conn.remote_peer == peer for r in self._relayed.values()
        ):
            self._execute(self.holepunch_policy.on_direct_connection(peer, now))
        self._spawn(self._learn_observed(conn), "nat-observed")
        if peer in self.relays and self.config.enable_relay_client:
            self._execute(self.autorelay.on_relay_candidate(peer, time.time()))

    def _on_disconnected(self, conn: MuxedConnection) -> None:
        if self._closed:
            return
        peer = conn.remote_peer
        now = asyncio.get_running_loop().time()
        relayed = self._relayed.pop(id(conn), None) is not None
        if relayed or not any(is_direct(c) for c in self.host.connections(peer)):
            self._execute(
                self.holepunch_policy.on_connection_closed(peer, id(conn), relayed=relayed, now=now)
            )
        if peer in self.relays and not self.host.connections(peer):
            self._execute(self.autorelay.on_relay_disconnected(peer, time.time()))

    async def _after_identify_relayed(self, conn: MuxedConnection) -> None:
        peer = conn.remote_peer
        assert self.identify is not None
        with contextlib.suppress(GlueberryError, TimeoutError):
            async with asyncio.timeout(self.config.identify_timeout):
                await self.identify.wait_identified(peer)
        if conn.is_closed or id(conn) not in self._relayed:
            return
        addrs = tuple(a.without_p2p().to_bytes() for a in self.host.peerstore.addrs(peer))
        now = asyncio.get_running_loop().time()
        self._execute(
            self.holepunch_policy.on_relayed_connection(
                peer, id(conn), inbound=conn.direction == "inbound", remote_addrs=addrs, now=now
            )
        )

    async def _learn_observed(self, conn: MuxedConnection) -> None:
        peer = conn.remote_peer
        assert self.identify is not None
        try:
            async with asyncio.timeout(self.config.identify_timeout):
                info = await self.identify.wait_identified(peer)
        except (GlueberryError, TimeoutError):
            return
        if info.observed_addr is None:
            return
        try:
            observer_ip = ipaddress.ip_address(conn.remote_address[0])
        except (ValueError, IndexError):
            observer_ip = None
        now = asyncio.get_running_loop().time()
        self._execute(
            self.observed.on_observed(peer, observer_ip, info.observed_addr.to_bytes(), now)
        )

    def _on_circuit_limit(self, conn: CircuitConnection, reason: LimitReason) -> None:
        self._emit(
            RelayedConnectionLimited(
                peer=conn.remote_multiaddr.peer_id,
                relay=conn.relay,
                reason=reason,
                sent=conn.sent,
                received=conn.received,
                limit=conn.limit,
            )
        )

    def _on_punched(self, peer: PeerId, result: AttemptResult) -> None:
        """The responder side (A) finished a DCUtR exchange."""
        self._served[peer] = self._served.get(peer, 0) + 1
        if result.ok:
            self._emit(
                HolePunchSucceeded(
                    peer=peer,
                    attempts=self._served.pop(peer),
                    elapsed=self._elapsed(peer),
                    addr=_remote_addr(result.connection),
                )
            )

    def _elapsed(self, peer: PeerId) -> float:
        now = asyncio.get_running_loop().time()
        since = [r.since for r in self._relayed.values() if r.conn.remote_peer == peer]
        return now - min(since) if since else 0.0

    def _on_mapped(self, addrs: list[Multiaddr]) -> None:
        self._mapped_addrs = list(addrs)
        self._update_external()

    def _update_external(self) -> None:
        external = [*self._observed_addrs, *self._mapped_addrs]
        if self.tcp is not None:
            self.tcp.set_external_addrs(external)
        if self.quic is not None:
            self.quic.set_external_addrs(external)
        self._emit(
            ExternalAddrsChanged(
                observed=tuple(self._observed_addrs),
                mapped=tuple(self._mapped_addrs),
                relayed=tuple(self.relay_addrs),
            )
        )

    # --- commands ---------------------------------------------------------------------------

    def _execute(self, commands: Sequence[P.Command]) -> None:
        for cmd in commands:
            match cmd:
                case P.Dial(peer=peer, reason="dcutr-direct-first") if (
                    not self.config.direct_dial_first
                ):
                    now = asyncio.get_running_loop().time()
                    self._execute(self.holepunch_policy.on_direct_dial_failed(peer, now))
                case P.Dial(peer=peer, addrs=addrs):
                    self._spawn(self._dial_direct(peer, addrs), "nat-dial")
                case P.StartHolePunch(peer=peer, attempt=attempt):
                    self._spawn(self._hole_punch(peer, attempt), "nat-punch")
                case P.CloseConnection(connection_id=conn_id):
                    self._spawn(self._close_relayed(conn_id), "nat-close-relayed")
                case P.NotifyHolePunchFailed(peer=peer, attempts=attempts):
                    self._emit(HolePunchFailed(peer=peer, attempts=attempts))
                case P.Reserve(relay=relay):
                    self._spawn(self._reserve(relay), "nat-reserve")
                case P.CancelReservation():
                    pass  # the addresses go with NotifyRelayAddrs; reservations just lapse
                case P.NotifyRelayAddrs(addrs=addrs):
                    if self.circuit is not None:
                        self.circuit.set_relay_addrs(Multiaddr(a) for a in addrs)
                    self._update_external()
                case P.NotifyObservedAddrs(addrs=addrs):
                    self._observed_addrs = [Multiaddr(a) for a in addrs]
                    self._update_external()
                case P.ProbeReachability():
                    if self.autonat is not None and self.config.force_reachability is None:
                        self._spawn(self._probe(), "nat-autonat")
                case P.NotifyReachability(reachability=state):
                    self._emit(ReachabilityChanged(reachability=state))
                    if self.config.enable_relay_client:
                        self._execute(self.autorelay.on_reachability(state, time.time()))
                case _:
                    logger.warning("unhandled NAT command %r", cmd)
        self._wake.set()

    async def _dial_direct(self, peer: PeerId, addrs: tuple[bytes, ...]) -> None:
        mas = [Multiaddr(a) for a in addrs]
        try:
            # From an ephemeral port: a failed SYN from the listen port would leave NAT state
            # that breaks the punch on the same port pair (see tcp_reuse.ephemeral_dials).
            async with asyncio.timeout(self.config.direct_dial_timeout):
                with ephemeral_dials():
                    conn = await self.host.connect(None, mas)
        except (GlueberryError, OSError, TimeoutError) as exc:
            logger.debug("direct dial to %s failed: %r", peer, exc)
            conn = None
        if conn is not None and conn.remote_peer != peer:
            await conn.close()
            conn = None
        if conn is None:
            now = asyncio.get_running_loop().time()
            self._execute(self.holepunch_policy.on_direct_dial_failed(peer, now))
        else:
            self._emit(
                HolePunchSucceeded(
                    peer=peer, attempts=0, elapsed=self._elapsed(peer), addr=_remote_addr(conn)
                )
            )

    async def _hole_punch(self, peer: PeerId, attempt: int) -> None:
        assert self.holepunch is not None
        result = await self.holepunch.attempt(peer)
        logger.info("hole punch %d with %s: %s", attempt, peer, result.reason)
        if result.ok:
            self._emit(
                HolePunchSucceeded(
                    peer=peer,
                    attempts=attempt,
                    elapsed=self._elapsed(peer),
                    addr=_remote_addr(result.connection),
                )
            )
            return
        now = asyncio.get_running_loop().time()
        self._execute(self.holepunch_policy.on_attempt_failed(peer, now))

    async def _close_relayed(self, conn_id: Hashable) -> None:
        rec = self._relayed.get(conn_id) if isinstance(conn_id, int) else None
        if rec is None or rec.conn.is_closed:
            return
        conn = rec.conn
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.relayed_close_grace
        # Let streams already running on the relayed connection finish; new ones go direct
        # once it is gone.
        while _open_streams(conn) and loop.time() < deadline and not conn.is_closed:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        logger.info("closing relayed connection to %s (direct connection up)", conn.remote_peer)
        with contextlib.suppress(GlueberryError, OSError):
            await conn.close()

    async def _reserve(self, relay: PeerId) -> None:
        assert self.relay_client is not None
        addr = self.relays.get(relay)
        try:
            rsvp = await self.relay_client.reserve(relay, [addr] if addr is not None else [])
        except (GlueberryError, OSError, TimeoutError) as exc:
            logger.info("reservation with relay %s failed: %r", relay, exc)
            self._emit(ReservationFailed(relay=relay, reason=repr(exc)))
            self._execute(self.autorelay.on_reservation_failed(relay, time.time()))
            return
        self._emit(
            ReservationObtained(
                relay=relay,
                expire=rsvp.expire,
                addrs=rsvp.addrs,
                limit=rsvp.limit,
                voucher_verified=rsvp.voucher is not None,
            )
        )
        self._execute(
            self.autorelay.on_reservation_accepted(
                relay,
                expire=float(rsvp.expire),
                addrs=[a.to_bytes() for a in rsvp.addrs],
                now=time.time(),
            )
        )

    def candidate_addrs(self) -> list[Multiaddr]:
        """Our direct TCP addresses worth testing/offering (public unless private allowed)."""
        out: list[Multiaddr] = []
        for a in self.host.addrs:
            if a.is_relayed or a.is_loopback or a.is_unspecified or a.transport_kind() != "tcp":
                continue
            if a.is_private and not self.config.allow_private_addrs:
                continue
            out.append(a)
        return out

    async def _probe(self) -> None:
        assert self.autonat is not None
        loop = asyncio.get_running_loop()
        now = loop.time()
        addrs = self.candidate_addrs()
        store = self.host.peerstore
        servers = [
            c.remote_peer
            for c in self.host.connections()
            if is_direct(c)
            and store.supports(c.remote_peer, [AUTONAT_V2_PROTOCOL, AUTONAT_PROTOCOL])
            and self._probed.get(c.remote_peer, -1e9) + 60.0 < now
        ]
        if not addrs or not servers:
            return
        server = servers[0]
        self._probed[server] = now
        try:
            # v2 when the server has it: its verdict needs our nonce back, v1's is trust.
            if store.supports(server, [AUTONAT_V2_PROTOCOL]):
                _, verdict = await self.autonat.probe_v2(server, addrs)
            else:
                verdict = await self.autonat.probe(server, addrs)
        except (GlueberryError, OSError) as exc:
            logger.debug("autonat probe via %s failed: %r", server, exc)
            return
        self._execute(self.reachability.on_result(server, verdict, loop.time()))

    # --- timers -------------------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            delay = self._next_delay(loop.time(), time.time())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            if self._closed:
                return
            self._on_timers(loop.time(), time.time())

    def _next_delay(self, mono: float, wall: float) -> float:
        delays = [self._next_relay_check - mono] if self.relays else []
        for t in (
            self.holepunch_policy.get_timer(),
            self.observed.get_timer(),
            self.reachability.get_timer() if self._autonat_active() else None,
        ):
            if t is not None:
                delays.append(t - mono)
        t = self.autorelay.get_timer()
        if t is not None:
            delays.append(t - wall)
        return max(0.0, min(delays, default=60.0))

    def _autonat_active(self) -> bool:
        return self.autonat is not None and self.config.force_reachability is None

    def _on_timers(self, mono: float, wall: float) -> None:
        t = self.holepunch_policy.get_timer()
        if t is not None and t <= mono:
            self._execute(self.holepunch_policy.handle_timer(mono))
        t = self.observed.get_timer()
        if t is not None and t <= mono:
            self._execute(self.observed.handle_timer(mono))
        if self._autonat_active():
            t = self.reachability.get_timer()
            if t is not None and t <= mono:
                self._execute(self.reachability.handle_timer(mono))
        t = self.autorelay.get_timer()
        if t is not None and t <= wall:
            self._execute(self.autorelay.handle_timer(wall))
        if self.relays and self._next_relay_check <= mono:
            self._next_relay_check = mono + self.config.relay_retry_interval
            for relay, addr in self.relays.items():
                if not self.host.connections(relay):
                    self._spawn(self._connect_relay(relay, addr), "nat-relay-connect")

    async def _connect_relay(self, relay: PeerId, addr: Multiaddr) -> None:
        try:
            await self.host.connect(relay, [addr])
        except (GlueberryError, OSError) as exc:
            logger.info("relay %s unreachable: %r", relay, exc)


def _open_streams(conn: MuxedConnection) -> int:
    streams = getattr(conn, "streams", None)
    return len(streams) if streams is not None else 0


def _remote_addr(conn: MuxedConnection | None) -> Multiaddr | None:
    if conn is None or conn.transport_name not in ("tcp", "quic-v1"):
        return None
    try:
        host, port = conn.remote_address[0], conn.remote_address[1]
        if conn.transport_name == "tcp":
            return Multiaddr.from_socket_address(host, port)
        return Multiaddr.from_socket_address(host, port, "udp").encapsulate("/quic-v1")
    except (ValueError, IndexError):
        return None


__all__ = ["NatConfig", "NatManager", "close_transports", "nat_transports"]
