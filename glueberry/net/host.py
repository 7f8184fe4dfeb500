"""The libp2p host: listeners, dialing, the connection pool and per-protocol stream handlers.

Spec: https://github.com/libp2p/specs/blob/master/connections/README.md (connection
establishment, protocol negotiation on streams). Behaviour matched: go-libp2p's
``basichost`` + ``swarm`` (libp2p-notes §2.14, §6.2, §6.3).

Theory of operation
-------------------
Ownership (architecture C10). :meth:`Host.start` opens one ``asyncio.TaskGroup``; every task
of the host lives in it, and :meth:`Host.close` cancels and awaits them all. Each connection
is *one* task of that group, from the first byte to teardown: it runs the upgrade, registers
the connection, then owns a child ``TaskGroup`` in which the stream negotiations and stream
handlers of that connection run. When the connection ends, its leftover handler tasks are
cancelled, its limit reservation is released and ``on_disconnected`` listeners run. No task
is ever created outside these groups, and every spawned coroutine is wrapped so that an
exception is logged rather than tearing down its siblings: a failing handler resets its
stream, never the host.

Inbound path. A listener's callback (synchronous, in the accept path) checks the gater's
``allow_accept``, the caps on connections in the upgrade (in total and per remote IP) and
reserves an inbound slot (:mod:`glueberry.net.limits`); a refused connection is aborted at
once and counted in :attr:`Host.refused_inbound`. The upgrade then runs under the 15 s
deadline (B-40): a flood of half-open connections from one address holds at most
``max_pending_upgrades_per_ip`` slots (loopback is exempt, as in go-libp2p), and never more
than ``max_pending_upgrades`` overall. Once the peer is authenticated, ``allow_secured`` and
the per-peer limit run before any muxer byte is read; a connection to ourselves is refused.

Outbound path. :meth:`Host.connect` reuses a live connection to the peer if there is one;
otherwise concurrent calls for one peer share one dial (go's dial sync). A caller cancelled
while waiting leaves the dial running for the others; the last waiter to go cancels it and
waits for it to end, so nothing half-open outlives its callers.

Staggered dialing (RFC 8305 Happy Eyeballs; go-libp2p's dial ranker and dial worker). The
addresses are ranked by :func:`~glueberry.net.dialrank.rank_addrs` (direct before relayed,
loopback and private before public, QUIC before TCP, IPv6 and IPv4 alternating, low ports
first). The first attempt starts at once; the next starts after the stagger delay of the
previous one (``dial_stagger_local``, 30 ms, after a loopback or private address;
``dial_stagger``, 250 ms, after a public one; twice ``dial_stagger`` before the first relayed
address), *at once* when an attempt fails, and not while an attempt whose TCP connection is
up is still upgrading (held for ``dial_stagger`` from the moment the socket connected, so a
working address is not raced by needless handshakes). At most ``dial_concurrency`` (4)
attempts run at once; each runs under ``dial_address_timeout`` (6 s) and all under
``dial_timeout`` (15 s). The first connection to come up wins: it is registered and its
attempt goes on as the connection's task; the other attempts are cancelled (their sockets
aborted, their slots released), and one that completed in the same loop iteration is closed
gracefully. Each attempt passes the gater and the limits before it starts; a
:class:`~glueberry.errors.ResourceLimitExceeded` starts no further attempt. When every
address fails, the error lists each of them (:meth:`Host._dial_error`).

Transports (:mod:`glueberry.net.transports`). An address goes to the first transport that
can dial it (``/tcp/…`` to TCP, ``/udp/…/quic-v1`` to QUIC); the defaults are TCP, plus QUIC
when aioquic is installed, and a host may listen on both at once (identify advertises every
listen address). A *muxed* transport (QUIC) hands over connections that are already
authenticated and multiplexed, so they skip the upgrader; the same checks run at its hooks
instead: ``allow_accept`` and the inbound limits in its accept filter (before any handshake
work), the reservation, ``allow_secured`` and the per-peer limit when it delivers the
authenticated connection (outbound: when ``dial`` returns). Its streams then take the same
path as yamux streams. Default security on TCP is Noise, then TLS when pyOpenSSL is
installed (the order is argued in :mod:`glueberry.net.transports`).

Streams. :meth:`Host.new_stream` opens a stream (yamux or QUIC) and runs multistream-select
as dialer. An inbound stream is negotiated as listener against the registered handlers
(10 s deadline, at most ``max_negotiating_streams`` at once per connection; over the limits
it is reset with go's code 0x1002), then handed to its handler in the connection's task
group. Bytes the other side pipelined behind the negotiation are served first by the stream
(B-08). The handler owns the stream: the host does not close it when the handler returns.

Simultaneous dials (both peers dial each other at once). Both connections are kept, as
go-libp2p does: neither side sees a failure. To converge, :meth:`Host.connection_for` (used
by :meth:`Host.connect` and :meth:`Host.new_stream`) prefers, among live connections to a
peer, a direct one over a relayed one (``/p2p-circuit``), then the one dialed by the peer
with the lower peer ID, then the oldest. Both ends compute the same choice, so new streams
flow over one connection and the other one idles.

Notifications. :meth:`Host.add_connection_listener` registers synchronous
``on_connected(conn)`` / ``on_disconnected(conn)`` callbacks, called on the loop in
connection order (a connected call always precedes the disconnected call for the same
connection). A service needing to do I/O in response starts a task with :meth:`Host.spawn`.

Connection manager (:mod:`glueberry.net.connmgr`, go's basic connmgr). With
``HostConfig.conn_manager`` set, each new connection checks whether the live connections
exceed the high watermark; if so, and no automatic trim ran within the silence period, the
policy picks the least valuable unprotected peers past their grace period and their
connections are closed gracefully in a host task (``on_disconnected`` runs for each as for
any other close; :meth:`Host.was_trimmed` tells them apart). While still above the high
watermark, a timer on the host's clock looks again after the silence period.
:meth:`Host.trim_connections` trims on demand. :meth:`Host.protect` / :meth:`Host.unprotect`
and :meth:`Host.tag_peer` feed the policy. Every trim is logged (info) and counted
(``host.conn_manager.trims`` / ``.trimmed``).

Close. :meth:`Host.close` stops the listeners, closes every connection gracefully (the muxer
sends its close/GoAway) within ``close_timeout``, then cancels whatever still runs and waits
for it. Nothing is left behind: no task, no socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from glueberry.clock import Clock, LoopClock
from glueberry.errors import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    ErrorCode,
    GlueberryError,
    NodeStateError,
    PeerBlacklisted,
    PeerNotFound,
    ResourceLimitExceeded,
    StreamError,
    StreamReset,
    TransportError,
)
from glueberry.net.connmgr import ConnManager, ConnManagerConfig, ConnRecord
from glueberry.net.dialrank import DEFAULT_STAGGER, DEFAULT_STAGGER_LOCAL, rank_addrs
from glueberry.net.gater import ConnectionGater
from glueberry.net.limits import (
    STREAM_RESOURCE_LIMIT_EXCEEDED,
    ConnectionReservation,
    Direction,
    Limits,
    ResourceLimiter,
    StreamCounter,
)
from glueberry.net.negotiate import handle_protocol, select_protocol
from glueberry.net.peerstore import Peerstore
from glueberry.net.transports import (
    MuxedTransport,
    NativeMuxedConnection,
    default_security,
    default_transports,
    is_muxed_transport,
)
from glueberry.net.upgrader import MuxerFactory, SecureUpgrade, Upgrader, with_prefix
from glueberry.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from glueberry.clock import TimerHandle
    from glueberry.transport.base import (
        MuxedConnection,
        RawConnection,
        SecureConnection,
        Stream,
        StreamHandler,
    )
    from glueberry.wire.identity import PeerId, PrivateKey

logger = logging.getLogger(__name__)

#: go-libp2p stream reset code when multistream-select finds no common protocol.
STREAM_PROTOCOL_NEGOTIATION_FAILED: Final = 0x1001
#: go-libp2p stream reset code on shutdown.
STREAM_SHUTDOWN: Final = 0x1007

RawCallback = Callable[["RawConnection"], None]


class TransportListener(Protocol):
    """A bound listener of some transport."""

    @property
    def multiaddrs(self) -> list[Multiaddr]: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class Transport(Protocol):
    """Dials and listens on the multiaddrs it claims (TCP, memory, later QUIC/circuit).

    The connections it produces are raw and get upgraded by the host.
    """

    name: str

    def can_dial(self, addr: Multiaddr) -> bool: ...

    def can_listen(self, addr: Multiaddr) -> bool: ...

    def to_multiaddr(self, address: tuple[str, int]) -> Multiaddr: ...

    async def dial(self, addr: Multiaddr, *, timeout: float | None) -> RawConnection: ...  # noqa: ASYNC109

    async def listen(self, addr: Multiaddr, on_connection: RawCallback) -> TransportListener: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    """Settings of a :class:`Host` (times in seconds)."""

    limits: Limits = field(default_factory=Limits)
    """Connection and stream limits."""
    gater: ConnectionGater | None = None
    """Connection gater; ``None`` allows everything."""
    transports: Sequence[Transport | MuxedTransport] | None = None
    """Transports; an address goes to the first that can dial it. ``None``: TCP, plus QUIC
    when aioquic is installed (:func:`~glueberry.net.transports.default_transports`; the host
    creates and closes them). Transports given here are the caller's to close."""
    security: Mapping[str, SecureUpgrade] | None = None
    """Security protocols by ID, in preference order; ``None``: Noise, plus TLS when
    pyOpenSSL is installed (:func:`~glueberry.net.transports.default_security`)."""
    muxers: Mapping[str, MuxerFactory] | None = None
    """Muxers by ID, in preference order; ``None``: yamux only."""
    dial_timeout: float = 15.0
    """Whole :meth:`Host.connect`, all addresses (go: 15 s)."""
    dial_address_timeout: float = 6.0
    """One address: TCP connect plus upgrade (js: 6 s)."""
    dial_stagger: float = DEFAULT_STAGGER
    """Seconds after starting a public address before the next address of the same dial is
    tried (RFC 8305, go: 250 ms); also how long an attempt whose TCP connection is up and
    upgrading holds the next one back; twice it delays relayed addresses
    (:mod:`glueberry.net.dialrank`)."""
    dial_stagger_local: float = DEFAULT_STAGGER_LOCAL
    """The same after a loopback or private address (go: 30 ms)."""
    dial_concurrency: int = 4
    """Attempts of one dial in flight at once (addresses of one peer)."""
    upgrade_timeout: float = 15.0
    """Whole inbound upgrade (go's accept timeout: 15 s)."""
    negotiate_timeout: float = 10.0
    """Multistream-select on one stream, either side (go, js: 10 s)."""
    close_timeout: float = 5.0
    """Graceful close of all connections in :meth:`Host.close`."""
    peerstore_max_peers: int = 1000
    """Bound on the peerstore (see :class:`~glueberry.net.peerstore.Peerstore`)."""
    conn_manager: ConnManagerConfig | None = None
    """Trim connections above a high watermark (:mod:`glueberry.net.connmgr`); ``None``: no
    trimming (protections and tags are still recorded)."""
    clock: Clock | None = None
    """Time source of the connection manager's grace and silence periods; ``None``: the
    event loop's."""

    def __post_init__(self) -> None:
        for name in (
            "dial_timeout",
            "dial_address_timeout",
            "upgrade_timeout",
            "negotiate_timeout",
            "close_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"HostConfig.{name} must be > 0")
        if not (self.dial_stagger >= 0 and self.dial_stagger_local >= 0):
            raise ConfigError("HostConfig.dial_stagger and dial_stagger_local must be >= 0")
        if self.dial_concurrency < 1:
            raise ConfigError("HostConfig.dial_concurrency must be >= 1")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class _Conn:
    """The host's record of one connection (upgrading or live)."""

    __slots__ = (
        "closed",
        "connected_at",
        "direction",
        "muxed",
        "opened_at",
        "pending_ip",
        "raw",
        "remote_addr",
        "reservation",
        "streams",
        "tasks",
        "tg",
        "transport",
    )

    def __init__(
        self,
        direction: Direction,
        reservation: ConnectionReservation,
        limits: Limits,
        remote_addr: Multiaddr | None,
    ) -> None:
        self.direction = direction
        self.reservation = reservation
        self.streams = StreamCounter(limits)
        self.remote_addr = remote_addr
        self.raw: RawConnection | None = None
        self.muxed: MuxedConnection | None = None
        self.tg: asyncio.TaskGroup | None = None
        self.transport: Transport | MuxedTransport | None = None
        self.pending_ip: str | None = None  # inbound, while counted as upgrading
        self.tasks: set[asyncio.Task[None]] = set()
        self.opened_at = time.monotonic()
        self.connected_at = 0.0  # registered, on the connection manager's clock
        self.closed = False


class _Dial:
    """One shared outbound dial to a peer."""

    __slots__ = ("future", "task", "waiters")

    def __init__(self) -> None:
        self.future: asyncio.Future[MuxedConnection] = asyncio.get_running_loop().create_future()
        # Mark failures as retrieved even when every waiter has gone.
        self.future.add_done_callback(_retrieve)
        self.task: asyncio.Task[None] | None = None
        self.waiters = 0


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


ConnectionCallback = Callable[["MuxedConnection"], None]


class Host:
    """A libp2p host on asyncio. See the module docstring for the behaviours.

    Args:
        identity: this host's Ed25519 identity key.
        listen_addrs: addresses to listen on at :meth:`start` (port 0 picks one).
        config: settings; defaults are go-libp2p's.

    Use ``async with Host(key, listen_addrs=["/ip4/127.0.0.1/tcp/0"]) as host:`` or
    ``await host.start()`` / ``await host.close()``. A host is single-use.
    """

    def __init__(
        self,
        identity: PrivateKey,
        *,
        listen_addrs: Sequence[str | Multiaddr] = (),
        config: HostConfig | None = None,
    ) -> None:
        self.identity = identity
        self._peer_id = identity.peer_id  # derived (protobuf + multihash) once, not per use
        self.config = config if config is not None else HostConfig()
        cfg = self.config
        self._listen_addrs = [Multiaddr(a) for a in listen_addrs]
        self._transports: list[Transport | MuxedTransport] = list(
            cfg.transports if cfg.transports is not None else default_transports(identity)
        )
        #: Transports this host made (the defaults); :meth:`close` closes them.
        self._owned_transports = list(self._transports) if cfg.transports is None else []
        self.upgrader = Upgrader(
            identity,
            security=cfg.security if cfg.security is not None else default_security(),
            muxers=cfg.muxers,
            inbound_timeout=cfg.upgrade_timeout,
            max_pending_inbound=cfg.limits.max_pending_upgrades,
        )
        self.limiter = ResourceLimiter(cfg.limits)
        self.gater = cfg.gater
        self.peerstore = Peerstore(max_peers=cfg.peerstore_max_peers)
        self._handlers: dict[str, StreamHandler] = {}
        self._state = _State.NEW
        self._closed_event = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._listeners: list[tuple[Transport | MuxedTransport, TransportListener]] = []
        self._conns: dict[MuxedConnection, _Conn] = {}
        self._by_peer: dict[PeerId, list[_Conn]] = {}
        self._dials: dict[PeerId, _Dial] = {}
        self._conn_listeners: list[tuple[ConnectionCallback | None, ConnectionCallback | None]] = []
        #: Inbound connections refused before the upgrade, by reason (gater, limit names).
        self.refused_inbound: dict[str, int] = {}
        self._pending_by_ip: dict[str, int] = {}
        #: The connection manager's policy: protections, tags, trim counters.
        self.conn_manager: ConnManager[PeerId] = ConnManager(cfg.conn_manager)
        self._clock: Clock = cfg.clock if cfg.clock is not None else LoopClock()
        self._trim_timer: TimerHandle | None = None
        #: Connections the connection manager closes, from the trim until their
        #: ``on_disconnected`` listeners have run.
        self._trimmed_closing: set[MuxedConnection] = set()

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    async def __aenter__(self) -> Host:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the task group and the listeners of ``listen_addrs``.

        Raises:
            NodeStateError: already started or closed.
            ConnectError: an address cannot be bound (nothing is left running).
        """
        if self._state is not _State.NEW:
            raise NodeStateError("host already started", code=ErrorCode.NODE_ALREADY_STARTED)
        self._state = _State.RUNNING
        self._tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        try:
            for addr in self._listen_addrs:
                await self.listen(addr)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close gracefully: listeners, then connections (muxer close), then tasks.

        Idempotent; a second caller waits for the first to finish. If cancelled, it still
        cancels and awaits everything before the ``CancelledError`` propagates.
        """
        if self._state is _State.CLOSING:
            await self._closed_event.wait()
            return
        if self._state is _State.CLOSED:
            return
        if self._state is _State.NEW:
            self._state = _State.CLOSED
            self._closed_event.set()
            return
        self._state = _State.CLOSING
        if self._trim_timer is not None:
            self._trim_timer.cancel()
            self._trim_timer = None
        try:
            for _, listener in self._listeners:
                listener.close()
            for _, listener in self._listeners:
                await listener.wait_closed()
            self._listeners.clear()
            for dial in list(self._dials.values()):
                if dial.task is not None:
                    dial.task.cancel()
            live = [rec.muxed for rec in self._conns.values() if rec.muxed is not None]
            if live:
                with contextlib.suppress(TimeoutError):
                    async with (
                        asyncio.timeout(self.config.close_timeout),
                        asyncio.TaskGroup() as tg,
                    ):
                        for muxed in live:
                            tg.create_task(self._close_muxed(muxed))
        finally:
            for task in list(self._tasks):
                task.cancel()
            try:
                await self._stack.aclose()
            finally:
                for transport in self._owned_transports:
                    close = getattr(transport, "close", None)
                    if close is not None:  # QUIC: its sockets, timers, drained connections
                        close()
                self._state = _State.CLOSED
                self._closed_event.set()
                self._tg = None
                # Let the transports run their connection_lost callbacks (sockets close).
                await asyncio.sleep(0)
                await asyncio.sleep(0)

    @staticmethod
    async def _close_muxed(muxed: MuxedConnection) -> None:
        try:
            await muxed.close()
        except (GlueberryError, OSError) as exc:
            logger.debug("error closing %r: %s", muxed, exc)

    def _check_running(self) -> asyncio.TaskGroup:
        if self._state is not _State.RUNNING or self._tg is None:
            if self._state is _State.NEW:
                raise NodeStateError("host is not started")
            raise NodeStateError("host is closed", code=ErrorCode.NODE_STOPPED)
        return self._tg

    def spawn(
        self, coro: Coroutine[Any, Any, object], *, name: str | None = None
    ) -> asyncio.Task[None]:
        """Run ``coro`` in the host's task group (cancelled by :meth:`close`).

        Its result is discarded; an exception it raises is logged, never propagated to the
        group.

        Raises:
            NodeStateError: the host is not running (``coro`` is closed).
        """
        try:
            tg = self._check_running()
        except NodeStateError:
            coro.close()
            raise
        task = tg.create_task(self._guard(coro), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A task cancelled before its first step never starts _guard, so ``coro`` would be
        # garbage-collected unawaited (a RuntimeWarning). Closing a finished coroutine is a
        # no-op, so this is safe in every case.
        task.add_done_callback(lambda _t: coro.close())
        return task

    @staticmethod
    async def _guard(coro: Awaitable[object]) -> None:
        try:
            await coro
        except Exception:
            # A task boundary: one connection's or service's failure must not cancel the
            # whole task group. asyncio.CancelledError (a BaseException) passes through.
            logger.exception("host task failed")

    # --- listening ---------------------------------------------------------------------------

    async def listen(self, addr: str | Multiaddr) -> list[Multiaddr]:
        """Listen on ``addr`` now (the host must be running).

        Returns:
            The bound addresses (with the real port).

        Raises:
            NodeStateError: the host is not running.
            ConnectError: no transport can listen on ``addr``, or it cannot be bound.
        """
        self._check_running()
        ma = Multiaddr(addr)
        for transport in self._transports:
            if transport.can_listen(ma):
                if is_muxed_transport(transport):
                    muxed_t = cast("MuxedTransport", transport)
                    listener = await muxed_t.listen(
                        ma,
                        functools.partial(self._on_muxed_inbound, muxed_t),
                        accept=functools.partial(self._accept_muxed, muxed_t),
                    )
                else:
                    raw_t = cast("Transport", transport)
                    listener = await raw_t.listen(
                        ma, functools.partial(self._on_raw_inbound, raw_t)
                    )
                self._listeners.append((transport, listener))
                logger.info("listening on %s", listener.multiaddrs)
                return list(listener.multiaddrs)
        raise ConnectError(f"no transport can listen on {ma}")

    @property
    def listen_addrs(self) -> list[Multiaddr]:
        """The bound addresses as the listeners report them (``0.0.0.0`` unexpanded)."""
        return [a for _, listener in self._listeners for a in listener.multiaddrs]

    @property
    def addrs(self) -> list[Multiaddr]:
        """Addresses to give to peers: bound addresses, with ``0.0.0.0``/``::`` expanded to
        the loopback address plus this machine's primary address of that family."""
        out: list[Multiaddr] = []
        for addr in self.listen_addrs:
            if not addr.is_unspecified:
                out.append(addr)
                continue
            sa = addr.to_socket_address()
            v6 = sa.family == "ip6"
            # Keep what follows the port (``/quic-v1``): only the IP is replaced.
            head = str(Multiaddr.from_socket_address(sa.host, sa.port, sa.transport))
            tail = str(addr)[len(head) :] if str(addr).startswith(head) else ""
            for host in _interface_addresses(v6):
                base = Multiaddr.from_socket_address(host, sa.port, sa.transport)
                out.append(base.encapsulate(tail) if tail else base)
        return list(dict.fromkeys(out))

    def _on_raw_inbound(self, transport: Transport, raw: RawConnection) -> None:
        """Listener callback (synchronous): gate, reserve, then hand to a task."""
        if self._state is not _State.RUNNING:
            raw.abort()
            return
        try:
            remote = transport.to_multiaddr(raw.remote_address)
        except ValueError:
            remote = None
        if remote is not None and self.gater is not None and not self.gater.allow_accept(remote):
            self._refuse("gater", raw)
            return
        if self.upgrader.inbound_full():
            self.upgrader.rejected_inbound += 1
            self._refuse("max_pending_upgrades", raw)
            return
        ip: str | None = raw.remote_address[0]
        limits = self.config.limits
        per_ip = limits.max_pending_upgrades_per_ip
        if per_ip is None or ip is None or not limits.per_ip_capped(ip):
            ip = None
        elif self._pending_by_ip.get(ip, 0) >= per_ip:
            self._refuse("max_pending_upgrades_per_ip", raw)
            return
        try:
            reservation = self.limiter.reserve(Direction.INBOUND)
        except ResourceLimitExceeded as exc:
            self._refuse(exc.limit, raw)
            return
        rec = _Conn(Direction.INBOUND, reservation, self.config.limits, remote)
        rec.raw = raw
        if ip is not None:
            rec.pending_ip = ip
            self._pending_by_ip[ip] = self._pending_by_ip.get(ip, 0) + 1
        try:
            self.spawn(self._inbound_main(rec), name="host-inbound")
        except NodeStateError:
            reservation.release()
            raw.abort()

    def _refuse(self, reason: str, raw: RawConnection) -> None:
        self.refused_inbound[reason] = self.refused_inbound.get(reason, 0) + 1
        logger.debug("refused inbound connection from %s: %s", raw.remote_address, reason)
        raw.abort()

    # Muxed transports (QUIC): no upgrade. The transport authenticates the peer itself, so
    # the checks run in two places: ``_accept_muxed`` before a new connection costs any
    # handshake work (gater ``allow_accept``, room for one more inbound connection), and
    # ``_on_muxed_inbound`` once the peer is known (reservation, ``allow_secured``, per-peer
    # limit). The transport bounds half-open handshakes itself (QUIC: per socket, 5 s).

    def _accept_muxed(self, transport: MuxedTransport, address: tuple[str, int]) -> bool:
        """Accept filter of a muxed transport (synchronous, before any state exists)."""
        if self._state is not _State.RUNNING:
            return False
        if self.gater is not None:
            try:
                remote = transport.to_multiaddr(address)
            except ValueError:
                remote = None
            if remote is not None and not self.gater.allow_accept(remote):
                self._count_refused("gater", address)
                return False
        try:
            self.limiter.reserve(Direction.INBOUND).release()  # room for one more?
        except ResourceLimitExceeded as exc:
            self._count_refused(exc.limit, address)
            return False
        return True

    def _on_muxed_inbound(self, transport: MuxedTransport, conn: NativeMuxedConnection) -> None:
        """A muxed transport's authenticated inbound connection (synchronous, before any of
        its streams is delivered): reserve, admit the peer, then hand it to a task."""
        if self._state is not _State.RUNNING:
            conn.abort()
            return
        muxed = cast("MuxedConnection", conn)
        try:
            remote: Multiaddr | None = transport.to_multiaddr(muxed.remote_address)
        except ValueError:
            remote = None
        try:
            reservation = self.limiter.reserve(Direction.INBOUND)
        except ResourceLimitExceeded as exc:
            self._count_refused(exc.limit, muxed.remote_address)
            conn.abort()
            return
        rec = _Conn(Direction.INBOUND, reservation, self.config.limits, remote)
        try:
            self._admit(rec, conn.remote_peer)
        except GlueberryError as exc:
            reservation.release()
            if isinstance(exc, ResourceLimitExceeded):
                reason = exc.limit or "limit"
            else:
                reason = "gater" if isinstance(exc, PeerBlacklisted) else "self"
            self._count_refused(reason, muxed.remote_address)
            conn.abort()
            return
        try:
            self.spawn(self._muxed_inbound_main(rec, conn), name="host-inbound")
        except NodeStateError:
            reservation.release()
            conn.abort()

    async def _muxed_inbound_main(self, rec: _Conn, conn: NativeMuxedConnection) -> None:
        try:
            await self._connection_main(rec, self._adopt_muxed(rec, conn), None)
        except (GlueberryError, OSError) as exc:
            logger.debug("inbound connection from %s failed: %r", rec.remote_addr, exc)

    async def _adopt_muxed(self, rec: _Conn, conn: NativeMuxedConnection) -> MuxedConnection:
        """Take over a muxed transport's connection: its streams now come to the host.

        Runs inside the connection's task (``rec.tg`` exists), so streams that arrived
        before (they waited in the transport) are served like later ones.
        """
        conn.set_stream_handler(functools.partial(self._on_stream, rec))
        return cast("MuxedConnection", conn)

    def _count_refused(self, reason: str, address: object) -> None:
        self.refused_inbound[reason] = self.refused_inbound.get(reason, 0) + 1
        logger.debug("refused inbound connection from %s: %s", address, reason)

    # --- stream handlers --------------------------------------------------------------------

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol``: ``await handler(stream)`` for each inbound stream of it.

        The handler runs in the connection's task group and owns the stream; an exception
        from it is logged and the stream reset. Replaces an existing handler.
        """
        if not protocol or len(protocol) > 1024 or "\n" in protocol:
            raise ValueError(f"invalid protocol ID {protocol!r}")
        self._handlers[protocol] = handler

    def remove_stream_handler(self, protocol: str) -> None:
        self._handlers.pop(protocol, None)

    @property
    def protocols(self) -> list[str]:
        """Protocols with a handler (what identify advertises)."""
        return list(self._handlers)

    # --- notifications ----------------------------------------------------------------------

    def add_connection_listener(
        self,
        on_connected: ConnectionCallback | None = None,
        on_disconnected: ConnectionCallback | None = None,
    ) -> Callable[[], None]:
        """Call ``on_connected(conn)`` / ``on_disconnected(conn)`` for every connection.

        Callbacks run synchronously on the loop; exceptions are logged. Returns a function
        that removes the listener.
        """
        entry = (on_connected, on_disconnected)
        self._conn_listeners.append(entry)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._conn_listeners.remove(entry)

        return remove

    def _notify(self, connected: bool, muxed: MuxedConnection) -> None:
        for on_connected, on_disconnected in list(self._conn_listeners):
            callback = on_connected if connected else on_disconnected
            if callback is None:
                continue
            try:
                callback(muxed)
            except Exception:
                logger.exception("connection listener failed")

    # --- connections ---------------------------------------------------------------------------

    def connections(self, peer_id: PeerId | None = None) -> list[MuxedConnection]:
        """Live connections (to ``peer_id`` only, if given), oldest first."""
        if peer_id is None:
            recs: Iterable[_Conn] = self._conns.values()
        else:
            recs = self._by_peer.get(peer_id, ())
        return [r.muxed for r in recs if r.muxed is not None and not r.muxed.is_closed]

    def connection_for(self, peer_id: PeerId) -> MuxedConnection | None:
        """The preferred live connection to ``peer_id`` (see "Simultaneous dials").

        A direct connection is preferred to a relayed one (``/p2p-circuit``, limited by the
        relay), as go-libp2p does: once a hole punch succeeds, new streams go direct.
        """
        best: _Conn | None = None
        best_key: tuple[bool, bool, float] | None = None
        for rec in self._by_peer.get(peer_id, ()):
            if rec.muxed is None or rec.muxed.is_closed:
                continue
            relayed = rec.muxed.transport_name == "circuit"
            # Dialed by the lower peer ID: outbound if we are lower, inbound if they are.
            dialer_is_us = rec.direction is Direction.OUTBOUND
            preferred = dialer_is_us == (self.peer_id < peer_id)
            key = (relayed, not preferred, rec.opened_at)
            if best_key is None or key < best_key:
                best, best_key = rec, key
        return best.muxed if best is not None else None

    async def connect(
        self, peer_id: PeerId | None = None, addrs: Iterable[str | Multiaddr] = ()
    ) -> MuxedConnection:
        """A live connection to the peer: an existing one, or a new dial.

        Args:
            peer_id: the peer; checked by the security handshake. ``None`` dials ``addrs``
                whoever answers (their ``/p2p/`` suffix, if any, names the peer).
            addrs: addresses to dial; if empty, the peerstore's addresses of ``peer_id``.

        Raises:
            NodeStateError: the host is not running.
            PeerNotFound: no address to dial.
            PeerBlacklisted: the gater refused (every address).
            ResourceLimitExceeded: a local connection limit (``remote=False``).
            ConnectTimeout: ``dial_timeout`` or ``dial_address_timeout`` ran out.
            ConnectError: several addresses failed (``.errors`` lists ``(addr, exc)``).
            SecurityError, PeerIdMismatch, NegotiationFailed, ...: the only address failed.
        """
        self._check_running()
        mas = [Multiaddr(a) for a in addrs]
        if peer_id is None:
            named = {ma.peer_id for ma in mas if ma.peer_id is not None}
            if len(named) == 1:
                peer_id = named.pop()
        if peer_id is not None:
            if peer_id == self.peer_id:
                raise ConnectError("cannot dial ourselves", peer_id=peer_id)
            conn = self.connection_for(peer_id)
            if conn is not None:
                return conn
            dial = self._dials.get(peer_id)
            if dial is None:
                if not mas:
                    mas = self.peerstore.addrs(peer_id)
                if not mas:
                    raise PeerNotFound(f"no addresses for {peer_id}", peer_id=peer_id)
                dial = self._start_dial(peer_id, mas)
        else:
            if not mas:
                raise PeerNotFound("no peer ID and no addresses to dial")
            dial = self._start_dial(None, mas)
        return await self._wait_dial(dial)

    def _start_dial(self, peer_id: PeerId | None, addrs: list[Multiaddr]) -> _Dial:
        dial = _Dial()
        dial.task = self.spawn(self._dial_main(dial, peer_id, addrs), name="host-dial")
        if peer_id is not None:
            self._dials[peer_id] = dial
        return dial

    async def _wait_dial(self, dial: _Dial) -> MuxedConnection:
        dial.waiters += 1
        try:
            return await asyncio.shield(dial.future)
        except asyncio.CancelledError:
            if dial.waiters == 1 and not dial.future.done() and dial.task is not None:
                dial.task.cancel()  # the last caller gave up: stop the dial, and wait
                await asyncio.wait({dial.task})  # until its attempts are gone (sockets, slots)
            raise
        finally:
            dial.waiters -= 1

    async def _dial_main(self, dial: _Dial, peer_id: PeerId | None, addrs: list[Multiaddr]) -> None:
        """Dial ``addrs`` ranked and staggered (see "Outbound path"): the first attempt to
        come up goes on as the connection's task, the others are cancelled."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.dial_timeout
        plan = collections.deque(
            rank_addrs(
                addrs,
                stagger=cfg.dial_stagger,
                stagger_local=cfg.dial_stagger_local,
                relay_delay=2 * cfg.dial_stagger,
            )
        )
        rank = {step.addr: i for i, step in enumerate(plan)}
        errors: list[tuple[Multiaddr, BaseException]] = []
        in_flight: dict[_Conn, asyncio.Task[None]] = {}
        holds: dict[_Conn, float] = {}  # transport up, upgrading: no new attempt before
        wake = asyncio.Event()
        next_at = loop.time()  # the next attempt may start (stagger, or at once)
        stopped = False  # a local limit: no further attempt
        winner: _Conn | None = None

        def ready(rec: _Conn) -> None:
            nonlocal winner
            winner = rec
            if peer_id is not None and self._dials.get(peer_id) is dial:
                del self._dials[peer_id]
            if not dial.future.done():
                assert rec.muxed is not None
                dial.future.set_result(rec.muxed)
            wake.set()

        def transport_up(rec: _Conn) -> None:
            # Its socket is connected and the upgrade runs: give the upgrade a stagger
            # period before starting another attempt (go-libp2p does this for public TCP).
            holds[rec] = loop.time() + cfg.dial_stagger
            wake.set()

        def start_at() -> float:
            return max([next_at, *holds.values()])

        def failed(rec: _Conn | None, addr: Multiaddr, exc: BaseException) -> None:
            nonlocal next_at, stopped
            logger.debug("dial %s failed: %r", addr, exc)
            errors.append((addr, exc))
            if rec is not None:
                in_flight.pop(rec, None)
                holds.pop(rec, None)
            next_at = loop.time()  # a failure starts the next address at once
            if isinstance(exc, ResourceLimitExceeded):
                stopped = True  # a local limit: the other addresses would hit it too
            wake.set()

        try:
            async with asyncio.TaskGroup() as tg:
                while not dial.future.done():
                    wake.clear()
                    now = loop.time()
                    if plan and now >= deadline:
                        for step in plan:
                            errors.append(
                                (
                                    step.addr,
                                    ConnectTimeout(
                                        f"{step.addr} not dialed: dial_timeout"
                                        f" ({cfg.dial_timeout} s) ran out"
                                    ),
                                )
                            )
                        plan.clear()
                    while (
                        plan
                        and not stopped
                        and len(in_flight) < cfg.dial_concurrency
                        and now >= start_at()
                    ):
                        step = plan.popleft()
                        try:
                            rec = self._prepare_dial(peer_id, step.addr)
                        except (GlueberryError, OSError) as exc:
                            failed(None, step.addr, exc)
                            continue
                        in_flight[rec] = tg.create_task(
                            self._dial_attempt(
                                rec,
                                step.addr,
                                peer_id=peer_id,
                                deadline=deadline,
                                won=dial.future,
                                ready=ready,
                                transport_up=transport_up,
                                failed=failed,
                            ),
                            name="host-dial-attempt",
                        )
                        next_at = now + (plan[0].delay if plan else 0.0)
                    if not in_flight and (not plan or stopped):
                        break  # every address failed
                    timeout: float | None = None
                    if plan and not stopped and len(in_flight) < cfg.dial_concurrency:
                        timeout = max(0.0, min(start_at(), deadline) - now)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await wake.wait()
                # Won (the winner serves its connection until it ends), or all failed.
                for rec, task in in_flight.items():
                    if rec is not winner:
                        task.cancel()
                if not dial.future.done():
                    errors.sort(key=lambda e: rank.get(e[0], len(rank)))
                    dial.future.set_exception(self._dial_error(peer_id, errors))
        finally:
            if peer_id is not None and self._dials.get(peer_id) is dial:
                del self._dials[peer_id]
            if not dial.future.done():  # cancelled: the host closes, or every caller left
                dial.future.set_exception(ConnectError("dial aborted", peer_id=peer_id))

    async def _dial_attempt(
        self,
        rec: _Conn,
        addr: Multiaddr,
        *,
        peer_id: PeerId | None,
        deadline: float,
        won: asyncio.Future[MuxedConnection],
        ready: Callable[[_Conn], None],
        transport_up: Callable[[_Conn], None],
        failed: Callable[[_Conn | None, Multiaddr, BaseException], None],
    ) -> None:
        """One address of a dial: establish it and, if it is the first up, serve it."""
        loop = asyncio.get_running_loop()

        async def establish() -> MuxedConnection:
            muxed = await self._establish_outbound(
                rec, peer_id, deadline - loop.time(), on_transport=lambda: transport_up(rec)
            )
            if won.done():
                # Another address came up in the same loop iteration: close this one.
                try:
                    async with asyncio.timeout(self.config.close_timeout):
                        await muxed.close()
                except (TimeoutError, GlueberryError, OSError) as exc:
                    logger.debug("closing the surplus connection %r: %r", muxed, exc)
                raise ConnectError(f"{addr}: another address connected first", peer_id=peer_id)
            return muxed

        try:
            await self._connection_main(rec, establish(), ready)
        except (GlueberryError, OSError) as exc:
            failed(rec, addr, exc)
        except Exception as exc:
            # A bug below: count the address as failed rather than end the whole dial.
            logger.exception("dial attempt to %s failed", addr)
            failed(rec, addr, exc)

    @staticmethod
    def _dial_error(
        peer_id: PeerId | None, errors: list[tuple[Multiaddr, BaseException]]
    ) -> BaseException:
        """The error of a dial whose every address failed (``errors`` in dial order).

        One address: its own error. Several: a ``ConnectError`` (or ``ConnectTimeout`` /
        ``PeerBlacklisted`` when every address failed that way) whose message names every
        address (the first 8) and whose ``.errors`` lists every ``(addr, exc)``.
        """
        if len(errors) == 1:
            return errors[0][1]
        kinds = {type(e) for _, e in errors}
        kind: type[ConnectError | PeerBlacklisted] = ConnectError
        if kinds == {PeerBlacklisted}:
            kind = PeerBlacklisted
        elif kinds == {ConnectTimeout}:
            kind = ConnectTimeout
        shown = "; ".join(f"{addr}: {exc!r}" for addr, exc in errors[:8])
        more = f"; and {len(errors) - 8} more" if len(errors) > 8 else ""
        message = f"all {len(errors)} addresses failed: {shown}{more}"
        err = kind(message, peer_id=peer_id, errors=errors)
        err.__cause__ = errors[-1][1]
        return err

    def _prepare_dial(self, peer_id: PeerId | None, addr: Multiaddr) -> _Conn:
        """Checks before dialing ``addr`` (transport, gater, limits); reserves a slot."""
        if addr.peer_id is not None:
            if peer_id is not None and addr.peer_id != peer_id:
                raise ConnectError(f"{addr} names another peer than {peer_id}", peer_id=peer_id)
            addr = addr.without_p2p()
        transport = next((t for t in self._transports if t.can_dial(addr)), None)
        if transport is None:
            raise ConnectError(f"no transport for {addr}", peer_id=peer_id)
        if self.gater is not None and not self.gater.allow_dial(peer_id, addr):
            raise PeerBlacklisted(f"gater refused dialing {addr}", peer_id=peer_id)
        if peer_id is not None:
            self.limiter.check_peer(peer_id)
        reservation = self.limiter.reserve(Direction.OUTBOUND)
        rec = _Conn(Direction.OUTBOUND, reservation, self.config.limits, addr)
        rec.transport = transport
        return rec

    async def _establish_outbound(
        self,
        rec: _Conn,
        peer_id: PeerId | None,
        remaining: float,
        on_transport: Callable[[], None] | None = None,
    ) -> MuxedConnection:
        """Dial ``rec.remote_addr`` and upgrade; ``on_transport()`` once a raw transport's
        connection is up (the upgrade begins)."""
        addr = rec.remote_addr
        assert addr is not None and rec.transport is not None
        if addr.peer_id is not None:
            peer_id = addr.peer_id
        timeout = min(self.config.dial_address_timeout, remaining)
        try:
            async with asyncio.timeout(timeout):
                dial_addr = addr.without_p2p()
                if dial_addr.is_relayed and peer_id is not None:
                    # A relayed address keeps its destination: the circuit transport
                    # CONNECTs to that peer through the relay.
                    dial_addr = dial_addr.with_p2p(peer_id)
                if is_muxed_transport(rec.transport):
                    # QUIC: authenticated and multiplexed by the transport; no upgrade.
                    muxed = await self._dial_muxed(rec, dial_addr, peer_id, timeout)
                    self.peerstore.add_addrs(muxed.remote_peer, [addr])
                    return muxed
                rec.raw = await cast("Transport", rec.transport).dial(dial_addr, timeout=timeout)
                if on_transport is not None:
                    on_transport()
                muxed = await self.upgrader.upgrade_outbound(
                    rec.raw,
                    expected_peer=peer_id,
                    on_stream=lambda s: self._on_stream(rec, s),
                    on_secured=lambda sec: self._on_secured(rec, sec),
                )
        except TimeoutError as exc:
            raise ConnectTimeout(f"dial {addr} timed out after {timeout:.3g} s") from exc
        self.peerstore.add_addrs(muxed.remote_peer, [addr])
        return muxed

    async def _establish_inbound(self, rec: _Conn) -> MuxedConnection:
        assert rec.raw is not None
        try:
            return await self.upgrader.upgrade_inbound(
                rec.raw,
                on_stream=lambda s: self._on_stream(rec, s),
                on_secured=lambda sec: self._on_secured(rec, sec),
            )
        finally:
            self._upgrade_done(rec)

    def _upgrade_done(self, rec: _Conn) -> None:
        """Give back the per-IP pending-upgrade slot (idempotent)."""
        ip, rec.pending_ip = rec.pending_ip, None
        if ip is not None:
            n = self._pending_by_ip[ip] - 1
            if n:
                self._pending_by_ip[ip] = n
            else:
                del self._pending_by_ip[ip]

    async def _inbound_main(self, rec: _Conn) -> None:
        try:
            await self._connection_main(rec, self._establish_inbound(rec), None)
        except (GlueberryError, OSError) as exc:
            logger.debug("inbound connection from %s failed: %r", rec.remote_addr, exc)

    async def _dial_muxed(
        self, rec: _Conn, addr: Multiaddr, peer_id: PeerId | None, seconds: float
    ) -> MuxedConnection:
        """Dial with a muxed transport, admit the peer, then take its streams."""
        transport = cast("MuxedTransport", rec.transport)
        # No stream callback yet: streams the peer opens at once wait in the transport
        # until the peer is admitted.
        muxed = await transport.dial(addr, peer_id, timeout=seconds)
        conn = cast("NativeMuxedConnection", muxed)
        try:
            self._admit(rec, muxed.remote_peer)
        except BaseException:
            conn.abort()
            raise
        return await self._adopt_muxed(rec, conn)

    def _on_secured(self, rec: _Conn, secure: SecureConnection) -> None:
        """After the handshake, before the muxer: gater and per-peer limit (may raise)."""
        self._admit(rec, secure.remote_peer)

    def _admit(self, rec: _Conn, peer: PeerId) -> None:
        """The peer is authenticated: refuse ourselves, ask the gater, count it (may raise)."""
        if peer == self.peer_id:
            raise ConnectError("connected to ourselves", peer_id=peer)
        if self.gater is not None and not self.gater.allow_secured(rec.direction.value, peer):
            raise PeerBlacklisted(f"gater refused secured connection with {peer}", peer_id=peer)
        rec.reservation.set_peer(peer)

    # --- connection lifetime --------------------------------------------------------------------

    async def _connection_main(
        self,
        rec: _Conn,
        establish: Coroutine[Any, Any, MuxedConnection],
        on_ready: Callable[[_Conn], None] | None,
    ) -> None:
        """The one task of a connection: establish it, serve it, tear it down.

        Raises:
            What ``establish`` raises (the connection never came up).
        """
        registered = False
        failure: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                rec.tg = tg  # exists before the muxer, which may call _on_stream at once
                try:
                    rec.muxed = await establish
                except (GlueberryError, OSError) as exc:
                    failure = exc
                else:
                    self._register(rec)
                    registered = True
                    if on_ready is not None:
                        on_ready(rec)
                    await _wait_muxed_closed(rec.muxed)
                for task in list(rec.tasks):
                    task.cancel()
        finally:
            establish.close()  # no-op if it ran; closes it if we were cancelled first
            self._upgrade_done(rec)
            rec.closed = True
            rec.tg = None
            _abort(rec)
            rec.reservation.release()
            if registered:
                self._unregister(rec)
        if failure is not None:
            raise failure

    # --- connection registry ------------------------------------------------------------------

    def _register(self, rec: _Conn) -> None:
        muxed = rec.muxed
        assert muxed is not None
        peer = muxed.remote_peer
        self._conns[muxed] = rec
        self._by_peer.setdefault(peer, []).append(rec)
        self.peerstore.protect(peer)
        with contextlib.suppress(GlueberryError):
            self.peerstore.add_public_key(peer, muxed.remote_public_key)
        rec.connected_at = self._clock.now()
        logger.debug("connected to %s (%s)", peer, rec.direction.value)
        self._notify(True, muxed)
        self._check_trim()

    def _unregister(self, rec: _Conn) -> None:
        muxed = rec.muxed
        assert muxed is not None
        peer = muxed.remote_peer
        self._conns.pop(muxed, None)
        recs = self._by_peer.get(peer)
        if recs is not None:
            with contextlib.suppress(ValueError):
                recs.remove(rec)
            if not recs:
                del self._by_peer[peer]
                self.conn_manager.forget(peer)
        self.peerstore.unprotect(peer)
        trimmed = muxed in self._trimmed_closing
        logger.debug("disconnected from %s%s", peer, " (trimmed)" if trimmed else "")
        self._notify(False, muxed)
        self._trimmed_closing.discard(muxed)

    # --- connection manager ---------------------------------------------------------------------

    def protect(self, peer: PeerId, tag: str) -> None:
        """Never trim connections to ``peer`` while ``tag`` is on it (go's ``Protect``)."""
        self.conn_manager.protect(peer, tag)

    def unprotect(self, peer: PeerId, tag: str) -> bool:
        """Remove one protection tag; returns whether ``peer`` is still protected."""
        return self.conn_manager.unprotect(peer, tag)

    def is_protected(self, peer: PeerId, tag: str | None = None) -> bool:
        """Whether ``peer`` is protected (by ``tag``, if given)."""
        return self.conn_manager.is_protected(peer, tag)

    def tag_peer(self, peer: PeerId, tag: str, value: int) -> None:
        """Give ``peer`` a value under ``tag``: peers of lower total value are trimmed first
        (go's ``TagPeer``). A peer's tags are dropped when its last connection closes."""
        self.conn_manager.tag_peer(peer, tag, value)

    def untag_peer(self, peer: PeerId, tag: str) -> None:
        """Remove ``tag`` from ``peer``."""
        self.conn_manager.untag_peer(peer, tag)

    def was_trimmed(self, conn: MuxedConnection) -> bool:
        """Whether ``conn`` was closed by the connection manager (true from the trim until
        the ``on_disconnected`` listeners of ``conn`` have run)."""
        return conn in self._trimmed_closing

    async def trim_connections(self) -> int:
        """Trim now (go's ``TrimOpenConns``): close the least valuable connections until
        ``low_watermark`` closable ones remain, ignoring the silence period and the high
        watermark (protections and grace period still apply). Waits until they are closed.

        Returns:
            The number of connections closed (0 without a connection manager).

        Raises:
            NodeStateError: the host is not running.
        """
        self._check_running()
        recs = self._trim(self._clock.now())
        if recs:
            await self._close_trimmed(recs)
        return len(recs)

    def _trimmable(self) -> list[_Conn]:
        """Live connections not already being closed."""
        return [
            rec
            for rec in self._conns.values()
            if rec.muxed is not None
            and not rec.muxed.is_closed
            and rec.muxed not in self._trimmed_closing
        ]

    def _check_trim(self) -> None:
        """After a new connection (or at the re-check timer): trim if due and allowed."""
        cm = self.conn_manager
        if (
            self._state is not _State.RUNNING
            or not cm.trim_due(len(self._conns))  # cheap upper bound first
            or not cm.trim_due(len(self._trimmable()))
        ):
            return
        now = self._clock.now()
        if cm.may_trim(now):
            recs = self._trim(now)
            if recs:
                self.spawn(self._close_trimmed(recs), name="host-trim")
            if not cm.trim_due(len(self._trimmable())):
                return
        # Still too many (protected or young connections), or in the silence period:
        # look again once the silence period is over, as go's background check does.
        at = cm.next_trim_at()
        if self._trim_timer is None and at is not None:
            self._trim_timer = self._clock.call_at(at, self._on_trim_timer)

    def _on_trim_timer(self) -> None:
        self._trim_timer = None
        self._check_trim()

    def _trim(self, now: float) -> list[_Conn]:
        """Run the policy over the live connections; mark and log what it selected."""
        cm = self.conn_manager
        if cm.config is None:
            return []
        live = self._trimmable()
        records = [
            ConnRecord(
                conn=rec,
                peer=rec.muxed.remote_peer,
                opened_at=rec.connected_at,
                inbound=rec.direction is Direction.INBOUND,
                streams=_open_streams(rec.muxed),
            )
            for rec in live
            if rec.muxed is not None
        ]
        selected = [r.conn for r in cm.select(now, records)]
        if not selected:
            logger.debug(
                "connection manager: %d connections, none to trim (protected, in their grace"
                " period, or at most low_watermark=%d closable)",
                len(records),
                cm.config.low_watermark,
            )
            return []
        logger.info(
            "connection manager: trimming %d of %d connections (high_watermark=%d,"
            " low_watermark=%d)",
            len(selected),
            len(records),
            cm.config.high_watermark,
            cm.config.low_watermark,
        )
        for rec in selected:
            assert rec.muxed is not None
            self._trimmed_closing.add(rec.muxed)
            logger.debug(
                "connection manager: closing %s connection to %s",
                rec.direction.value,
                rec.muxed.remote_peer,
            )
        return selected

    async def _close_trimmed(self, recs: list[_Conn]) -> None:
        async with asyncio.TaskGroup() as tg:
            for rec in recs:
                tg.create_task(self._close_rec(rec))

    async def _close_rec(self, rec: _Conn) -> None:
        """Close one connection gracefully (muxer close), else abort it at close_timeout."""
        muxed = rec.muxed
        if muxed is None:
            return
        try:
            async with asyncio.timeout(self.config.close_timeout):
                await muxed.close()
        except (TimeoutError, GlueberryError, OSError) as exc:
            logger.debug("closing %r failed (%r): aborting it", muxed, exc)
            _abort(rec)

    # --- streams --------------------------------------------------------------------------------

    async def new_stream(
        self,
        peer_id: PeerId,
        protocols: str | Sequence[str],
        *,
        addrs: Iterable[str | Multiaddr] | None = None,
    ) -> Stream:
        """Open a stream to ``peer_id`` speaking the first of ``protocols`` it accepts.

        Connects first if needed (``addrs``, else the peerstore). ``stream.protocol`` is set.

        Raises:
            NegotiationFailed: the peer supports none of ``protocols`` (stream reset).
            ResourceLimitExceeded: our ``max_streams_per_connection`` (``remote=False``), or
                the peer refused the stream for its limits (``remote=True``).
            HandshakeTimeout: negotiation took longer than ``negotiate_timeout``.
            and what :meth:`connect` raises.
        """
        protos = [protocols] if isinstance(protocols, str) else list(protocols)
        if not protos:
            raise ValueError("no protocol to negotiate")
        conn = await self.connect(peer_id, addrs or ())
        rec = self._conns.get(conn)
        if rec is None:  # closed between connect() and now
            raise ConnectionLost(f"connection to {peer_id} closed", peer_id=peer_id)
        rec.streams.check_outbound(_open_streams(conn))
        stream: Stream | None = None
        try:
            stream = await conn.open_stream()
            proto, trailing = await select_protocol(
                stream, protos, timeout=self.config.negotiate_timeout
            )
        except (GlueberryError, OSError) as exc:
            if stream is not None:
                code = getattr(stream, "reset_code", None)
                stream.reset(STREAM_PROTOCOL_NEGOTIATION_FAILED)
                if isinstance(exc, StreamReset) and code == STREAM_RESOURCE_LIMIT_EXCEEDED:
                    raise ResourceLimitExceeded(
                        f"{peer_id} refused the stream (its resource limit)",
                        limit="remote_stream_limit",
                        remote=True,
                        peer_id=peer_id,
                    ) from exc
            raise
        except BaseException:
            if stream is not None:
                stream.reset(STREAM_SHUTDOWN)
            raise
        stream.protocol = proto
        return with_prefix(stream, trailing)

    def _on_stream(self, rec: _Conn, stream: Stream) -> None:
        """Muxer callback for a stream the peer opened (synchronous)."""
        tg = rec.tg
        if tg is None or rec.closed or self._state is not _State.RUNNING:
            stream.reset(STREAM_SHUTDOWN)
            return
        muxed = rec.muxed
        open_now = _open_streams(muxed) - 1 if muxed is not None else rec.streams.handling
        refused = rec.streams.try_open_inbound(open_now)
        if refused is not None:
            logger.debug("refusing inbound stream: %s", refused)
            stream.reset(STREAM_RESOURCE_LIMIT_EXCEEDED)
            return
        task = tg.create_task(self._guard(self._serve_stream(rec, stream)))
        rec.tasks.add(task)
        task.add_done_callback(rec.tasks.discard)

    async def _serve_stream(self, rec: _Conn, stream: Stream) -> None:
        try:
            try:
                proto, trailing = await handle_protocol(
                    stream, self._handlers.keys(), timeout=self.config.negotiate_timeout
                )
            except (GlueberryError, OSError) as exc:
                logger.debug("inbound stream negotiation failed: %r", exc)
                stream.reset(STREAM_PROTOCOL_NEGOTIATION_FAILED)
                return
            finally:
                rec.streams.negotiated()
            handler = self._handlers.get(proto)
            if handler is None:  # removed while negotiating
                stream.reset(STREAM_PROTOCOL_NEGOTIATION_FAILED)
                return
            stream.protocol = proto
            try:
                await handler(with_prefix(stream, trailing))
            except asyncio.CancelledError:
                stream.reset(STREAM_SHUTDOWN)
                raise
            except (StreamError, TransportError) as exc:
                # The stream or connection went away under the handler: routine.
                logger.debug("handler for %s ended: %r", proto, exc)
                stream.reset()
            except Exception:
                logger.exception("handler for %s failed", proto)
                stream.reset()
        finally:
            rec.streams.handled()


# --- helpers -------------------------------------------------------------------------------


async def _wait_muxed_closed(muxed: MuxedConnection) -> None:
    """Until the muxed connection is gone, for any reason."""
    await muxed.wait_closed()


def _abort(rec: _Conn) -> None:
    """Drop a connection's transport at once (idempotent)."""
    if rec.raw is not None and not rec.raw.is_closing():
        rec.raw.abort()
    elif rec.raw is None and rec.muxed is not None:  # a muxed transport's (QUIC)
        cast("NativeMuxedConnection", rec.muxed).abort()  # no-op once it is gone


def _open_streams(muxed: MuxedConnection) -> int:
    """Streams the muxer tracks on ``muxed`` (yamux: ``streams``)."""
    streams = getattr(muxed, "streams", None)
    return len(streams) if streams is not None else 0


def _interface_addresses(v6: bool) -> list[str]:
    """Loopback plus the primary address of the family (no packet is sent)."""
    family = socket.AF_INET6 if v6 else socket.AF_INET
    out = ["::1" if v6 else "127.0.0.1"]
    probe = ("2001:db8::1", 9) if v6 else ("192.0.2.1", 9)  # documentation ranges
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(probe)  # UDP connect: picks a route, sends nothing
            host = s.getsockname()[0]
    except OSError:
        return out
    if host not in out:
        out.append(host)
    return out


__all__ = [
    "STREAM_PROTOCOL_NEGOTIATION_FAILED",
    "STREAM_SHUTDOWN",
    "Host",
    "HostConfig",
    "Transport",
    "TransportListener",
]
