"""The Glueberry node: encrypted, named peer-to-peer streams over libp2p, on asyncio.

Reference: ``glueberry-go-v1.md`` §4 (the Go ``Node`` API, whose shape this follows in
snake_case, ``api.md``), §0-§1 (the wire contract kept for Go interoperability) and §9.2 (the
Go bugs deliberately not copied); architecture C9 (public API), C10 (ownership).

Theory of operation
-------------------
A :class:`Node` composes small parts and executes nothing itself on the data path:

* a :class:`~glueberry.net.host.Host` (TCP + Noise + yamux, identify, ping) whose connection
  gater enforces the blacklist (:class:`~glueberry.peers.manager.BlacklistGater`);
* the address book (:class:`~glueberry.peers.addressbook.AddressBook`, Go's JSON format);
* a :class:`~glueberry.peers.manager.ConnectionManager`: one state machine per peer, the
  handshake deadline, cooldown and reconnection on the injected clock;
* a :class:`~glueberry.peers.channels.ChannelManager`: the handshake stream and the encrypted
  named streams, with end-to-end backpressure;
* an :class:`~glueberry.events.EventBroadcaster` of connection events and one bounded
  :class:`~glueberry.peers.channels.MessageQueue` of received messages.

Lifecycle: ``Node(config)`` does no I/O. :meth:`Node.start` (or ``async with``) opens the
address book, starts listening and auto-connects to the book's peers; :meth:`Node.stop`
closes every connection, cancels every task and timer, closes the subscriptions (their
iteration ends) and the address book (pending ``last_seen`` updates are written). A node is
single-use: starting it again raises :class:`~glueberry.errors.NodeStateError`. The caller's
private key is never modified (Go zeroes it on ``Stop``).

The application handshake (reference §1.6) is the application's: the dialer's
``Connected`` event (after :meth:`Node.connect`) and the listener's ``Connected`` event (when
the remote opens the handshake stream) start it; messages go over
``send(peer, HANDSHAKE_STREAM, ...)`` and arrive in :meth:`Node.messages` (or in a
:meth:`Node.intercept_handshake` queue); :meth:`Node.prepare_streams` derives the stream key
(checking that it belongs to the peer ID) and accepts the named streams;
:meth:`Node.finalize_handshake` marks the peer ``Established``. :mod:`glueberry.handshake`
implements the Go integration test's exchange on top of these.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from cryptography.hazmat.primitives.asymmetric import ed25519 as _ed25519

from glueberry._version import PROTOCOL_VERSION
from glueberry.config import Config
from glueberry.errors import (
    Backpressure,
    ConfigError,
    ConnectionLost,
    ErrorCode,
    GlueberryError,
    LocalProtocolError,
    NodeStateError,
    PeerIdMismatch,
    SecurityError,
)
from glueberry.events import (
    ConnectionChange,
    ConnectionEvent,
    EventBroadcaster,
    EventFilter,
    EventSubscription,
)
from glueberry.net.connmgr import ConnManagerConfig
from glueberry.net.host import Host, HostConfig
from glueberry.net.services import IdentifyService, PingService
from glueberry.peers.addressbook import AddressBook, PeerEntry
from glueberry.peers.channels import ChannelManager, MessageQueue, spawn_in
from glueberry.peers.crypto import KeyCache, StreamCipher
from glueberry.peers.manager import BlacklistGater, ConnectionManager
from glueberry.peers.metrics import NopMetrics
from glueberry.peers.state import ConnectionState
from glueberry.peers.stats import ConnectionType, PeerStats, StatsRecorder
from glueberry.proto.gb_framing import HANDSHAKE_STREAM, validate_stream_name
from glueberry.wire.identity import (
    Ed25519PublicKey,
    PeerId,
    PrivateKey,
    PublicKey,
    decode_identity_file,
    encode_identity_file,
)
from glueberry.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from glueberry.nat.manager import NatManager
    from glueberry.peers.traversal import NodeTraversal
    from glueberry.transport.base import MuxedConnection

__all__ = [
    "HANDSHAKE_STREAM",
    "HealthCheck",
    "HealthStatus",
    "Node",
    "ProtocolVersion",
    "current_version",
    "generate_identity",
    "load_identity",
    "save_identity",
]

#: Seconds between writes of batched address-book changes (``last_seen``), as in Go.
BOOK_FLUSH_INTERVAL: Final = 5.0
#: The host's connection-manager protection of peers in the handshake or Established.
_CONNMGR_TAG: Final = "glueberry-session"
#: Statistics of peers idle this long (and not established) are forgotten (Go: 24 h).
STATS_MAX_IDLE: Final = 24 * 3600.0
_STATS_PRUNE_EVERY: Final = 3600.0

PeerIdLike = PeerId | str
PublicKeyLike = bytes | bytearray | memoryview | PublicKey | _ed25519.Ed25519PublicKey


# --- versions and identities ----------------------------------------------------------


class ProtocolVersion(NamedTuple):
    """The Glueberry protocol version (Go ``ProtocolVersion``). Never sent on the wire."""

    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def compatible(self, other: ProtocolVersion) -> bool:
        """Same major version and ``other.minor <= self.minor`` (Go ``Compatible``)."""
        return self.major == other.major and other.minor <= self.minor

    @classmethod
    def parse(cls, text: str) -> ProtocolVersion:
        """``"1.2.9"`` -> ``ProtocolVersion(1, 2, 9)``.

        Raises:
            ValueError: not three dot-separated non-negative integers.
        """
        parts = text.strip().split(".")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"not a version: {text!r} (expected MAJOR.MINOR.PATCH)")
        return cls(int(parts[0]), int(parts[1]), int(parts[2]))


def current_version() -> ProtocolVersion:
    """The protocol version this library speaks (Go ``CurrentVersion()``)."""
    return ProtocolVersion(*PROTOCOL_VERSION)


def generate_identity() -> PrivateKey:
    """A new random Ed25519 identity."""
    return PrivateKey.generate()


def save_identity(key: PrivateKey, path: str | os.PathLike[str]) -> None:
    """Write ``key`` to ``path`` (libp2p ``PrivateKey`` protobuf, mode 0600, atomically).

    Raises:
        FileExistsError: ``path`` exists (identities are never overwritten).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(encode_identity_file(key))
        f.flush()
        os.fsync(f.fileno())


def load_identity(path: str | os.PathLike[str]) -> PrivateKey:
    """Read an identity written by :func:`save_identity` (or go-libp2p's
    ``crypto.MarshalPrivateKey``).

    Raises:
        ConfigError: the file does not hold an Ed25519 identity.
        OSError: it cannot be read.
    """
    return decode_identity_file(Path(path).read_bytes())


# --- health --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    """One readiness check (Go ``HealthCheck``)."""

    name: str
    healthy: bool
    message: str = ""
    duration: float = 0.0
    """Seconds the check took."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthStatus:
    """The node's readiness (Go ``ReadinessChecks()``)."""

    healthy: bool
    checks: tuple[HealthCheck, ...]
    timestamp: float
    """Unix seconds."""

    def to_dict(self) -> dict[str, Any]:
        """The Go JSON shape: ``{"healthy", "checks": [{"name", "healthy", "message",
        "duration_ns"}], "timestamp"}`` (timestamp as RFC 3339)."""
        import datetime as _dt

        return {
            "healthy": self.healthy,
            "checks": [
                {
                    "name": c.name,
                    "healthy": c.healthy,
                    **({"message": c.message} if c.message else {}),
                    **({"duration_ns": int(c.duration * 1e9)} if c.duration else {}),
                }
                for c in self.checks
            ],
            "timestamp": _dt.datetime.fromtimestamp(self.timestamp, _dt.UTC).isoformat(),
        }


# --- helpers -------------------------------------------------------------------------


def _pid(peer: PeerIdLike) -> PeerId:
    if isinstance(peer, PeerId):
        return peer
    if isinstance(peer, str):
        try:
            return PeerId.from_string(peer)
        except (GlueberryError, ValueError) as exc:
            raise ConfigError(f"not a peer ID: {peer!r}") from exc
    raise TypeError(f"peer ID must be a PeerId or a string, got {type(peer).__name__}")


def _public_key_bytes(key: PublicKeyLike) -> bytes:
    if isinstance(key, PublicKey):
        if not isinstance(key, Ed25519PublicKey):
            raise SecurityError("glueberry needs the peer's Ed25519 public key")
        return key.data
    if isinstance(key, _ed25519.Ed25519PublicKey):
        return key.public_bytes_raw()
    if isinstance(key, bytes | bytearray | memoryview):
        raw = bytes(key)
        if len(raw) != 32:
            raise SecurityError(f"Ed25519 public key must be 32 bytes, got {len(raw)}")
        return raw
    raise TypeError(f"unsupported public key type {type(key).__name__}")


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


# --- the node ------------------------------------------------------------------------


class Node:
    """A Glueberry node. See the module docstring; every method is documented below.

    Args:
        config: the validated :class:`~glueberry.config.Config`.
        auto_connect: dial every non-blacklisted address-book peer at start, and peers
            added with :meth:`add_peer` while running (the Go behaviour). Dial failures
            only show as events (and start reconnection).
        rng: uniform ``[0, 1)`` source for reconnection jitter (tests).

    Use ``async with Node(config) as node:`` or ``await node.start()`` /
    ``await node.stop()``.
    """

    #: The unencrypted stream the application handshake runs on.
    HANDSHAKE_STREAM: Final = HANDSHAKE_STREAM

    def __init__(
        self,
        config: Config,
        *,
        auto_connect: bool = True,
        rng: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(config, Config):
            raise ConfigError("Node needs a glueberry.Config")
        self._config = config
        self._identity = config.identity
        self._peer_id = self._identity.peer_id
        self._auto_connect = auto_connect
        self._rng = rng if rng is not None else random.random
        self._clock = config.clock
        self._log = config.logger
        self._metrics = config.metrics
        self._state = _State.NEW
        self._stats: StatsRecorder[PeerId] = StatsRecorder()
        self._messages = MessageQueue(config.message_buffer_size)
        self._events: EventBroadcaster[ConnectionEvent] = EventBroadcaster(
            capacity=config.event_buffer_size,
            overflow=config.event_overflow,
            on_drop=self._metrics.event_dropped,
        )
        # The shared default subscription behind events(), open from the start (Go creates
        # its Events() channel in New), so no event is missed before the first iteration. It
        # drops its oldest events (with a marker) rather than block: an application that never
        # reads it must not stall the subscriptions it does read.
        self._default_events = self._events.subscribe(overflow="drop_oldest")
        # NAT traversal: connection kinds and relay limits (connection_changes()).
        self._changes: EventBroadcaster[ConnectionChange] = EventBroadcaster(
            capacity=config.event_buffer_size,
            overflow="drop_oldest",
            on_drop=self._metrics.event_dropped,
        )
        self._traversal: NodeTraversal | None = None
        self._backlog: deque[ConnectionEvent] = deque()
        self._pump: asyncio.Task[None] | None = None
        self._book: AddressBook | None = None
        self._keys: KeyCache | None = None
        self._host: Host | None = None
        self._identify: IdentifyService | None = None
        self._ping: PingService | None = None
        self._channels: ChannelManager | None = None
        self._manager: ConnectionManager | None = None

    def __repr__(self) -> str:
        return f"<glueberry.Node {self.peer_id} {self._state.value}>"

    # --- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def is_running(self) -> bool:
        return self._state is _State.RUNNING

    async def start(self) -> None:
        """Open the address book, listen, serve, and auto-connect.

        Raises:
            NodeStateError: already started, or stopped (a node is single-use).
            AddressBookError: the address book cannot be read (nothing is left running).
            ConnectError: a listen address cannot be bound (nothing is left running).
        """
        if self._state is not _State.NEW:
            if self._state in (_State.STOPPING, _State.STOPPED):
                raise NodeStateError(
                    "this node was stopped; a node is single-use: create a new Node",
                    code=ErrorCode.NODE_STOPPED,
                )
            raise NodeStateError("node already started", code=ErrorCode.NODE_ALREADY_STARTED)
        self._state = _State.STARTING
        cfg = self._config
        try:
            self._book = AddressBook(
                cfg.book_path,
                on_corrupt=cfg.address_book_on_corrupt,
                max_metadata_size=cfg.max_metadata_size,
            )
            metrics = self._metrics
            self._keys = KeyCache(
                self._identity,
                on_derive=None if type(metrics) is NopMetrics else metrics.key_derivation,
            )
            traversal: NodeTraversal | None = None
            if cfg.nat_enabled:
                from glueberry.peers.traversal import NodeTraversal, node_transports

                traversal = NodeTraversal(
                    cfg,
                    node_transports(self._identity),
                    stats=self._stats,
                    clock=self._clock,
                    publish=self._publish_change,
                    in_session=self._in_session,
                )
                self._traversal = traversal
            host_config = HostConfig(
                gater=BlacklistGater(self._book),
                transports=list(traversal.transports) if traversal is not None else None,
                # Trimming never touches a peer in the handshake or Established: _publish
                # protects them (_CONNMGR_TAG) for as long as they are in those states.
                conn_manager=ConnManagerConfig(
                    high_watermark=cfg.conn_mgr_high_watermark,
                    low_watermark=cfg.conn_mgr_low_watermark,
                ),
                clock=self._clock,
            )
            host = Host(self._identity, listen_addrs=cfg.addresses, config=host_config)
            self._host = host
            await host.start()
            self._identify = IdentifyService(host)
            self._ping = PingService(host)
            self._channels = ChannelManager(
                host,
                messages=self._messages,
                stats=self._stats,
                clock=self._clock,
                max_message_size=cfg.max_message_size,
                max_stream_name_length=cfg.max_stream_name_length,
                metrics=metrics,
                logger=self._log,
                decryption_policy=cfg.decryption_error_policy,
                on_decryption_error=cfg.on_decryption_error,
                on_inbound_handshake=self._on_inbound_handshake,
                on_handshake_opened=self._on_handshake_opened,
                tracer=cfg.tracer,
                on_peer_error=self._on_peer_error,
                disable_backpressure=cfg.disable_backpressure,
                relay_budget=traversal.budget_for if traversal is not None else None,
            )
            self._manager = ConnectionManager(
                host,
                self._book,
                self._channels,
                publish=self._publish,
                clock=self._clock,
                policy=cfg.backoff_policy,
                handshake_timeout=cfg.handshake_timeout,
                cooldown=cfg.failed_handshake_cooldown,
                stats=self._stats,
                metrics=metrics,
                tracer=cfg.tracer,
                logger=self._log,
                rng=self._rng,
                connection_error=self._connection_error,
            )
            self._channels.start()
            spawn_in(host, self._housekeeping(), name="glueberry-housekeeping")
            if traversal is not None:
                await traversal.start(host, self._identify)
        except BaseException:
            await self._teardown()
            raise
        self._state = _State.RUNNING
        self._log.info("node started: peer_id=%s listen_addrs=%s", self.peer_id, self.addrs)
        if self._auto_connect:
            for entry in self._book.list_peers():
                if entry.addrs():
                    self._spawn_connect(entry.peer_id)

    async def stop(self) -> None:
        """Close every connection, task, timer and subscription; flush the address book.

        Idempotent. Iterations of :meth:`messages` and of event subscriptions end once they
        have drained what was queued.
        """
        if self._state in (_State.STOPPING, _State.STOPPED):
            return
        if self._state is _State.NEW:
            self._state = _State.STOPPED
            self._events.close()
            self._changes.close()
            self._messages.close()
            return
        self._state = _State.STOPPING
        self._log.info("node stopping: peer_id=%s", self.peer_id)
        await self._teardown()
        self._log.info("node stopped: peer_id=%s", self.peer_id)

    async def _teardown(self) -> None:
        try:
            if self._manager is not None:
                self._manager.close()
            if self._channels is not None:
                self._channels.close()
            if self._pump is not None:
                self._pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._pump
                self._pump = None
            self._events.close()
            self._changes.close()
            self._messages.close()
            if self._traversal is not None:
                await self._traversal.close()
            if self._identify is not None:
                self._identify.close()
            if self._ping is not None:
                self._ping.close()
            if self._host is not None:
                await self._host.close()
        finally:
            if self._traversal is not None:
                self._traversal.close_transports()
            if self._keys is not None:
                self._keys.close()
            if self._book is not None:
                try:
                    self._book.close()
                except GlueberryError as exc:
                    self._log.error("closing the address book failed: %s", exc)
            self._state = _State.STOPPED

    def _running(self) -> tuple[Host, ConnectionManager, ChannelManager, AddressBook]:
        if (
            self._state is not _State.RUNNING
            or self._host is None
            or self._manager is None
            or self._channels is None
            or self._book is None
        ):
            raise self._state_error()
        return self._host, self._manager, self._channels, self._book

    def _state_error(self) -> NodeStateError:
        if self._state in (_State.STOPPING, _State.STOPPED):
            return NodeStateError("node stopped", code=ErrorCode.NODE_STOPPED)
        return NodeStateError("node not started", code=ErrorCode.NODE_NOT_STARTED)

    def _book_or_raise(self) -> AddressBook:
        if self._book is None or self._state is not _State.RUNNING:
            raise self._state_error()
        return self._book

    async def _housekeeping(self) -> None:
        """Write batched address-book changes every few seconds; prune idle statistics."""
        since_prune = 0.0
        while True:
            await self._clock.sleep(BOOK_FLUSH_INTERVAL)
            if self._book is not None:
                try:
                    self._book.flush()
                except GlueberryError as exc:
                    self._log.warning("address book flush failed: %s", exc)
            since_prune += BOOK_FLUSH_INTERVAL
            if since_prune >= _STATS_PRUNE_EVERY:
                since_prune = 0.0
                self._stats.prune(
                    self._clock.wall(),
                    STATS_MAX_IDLE,
                    keep=lambda p: self.connection_state(p) is ConnectionState.ESTABLISHED,
                )

    # --- identity and information ------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config

    @property
    def peer_id(self) -> PeerId:
        """This node's peer ID (``str()`` gives the ``12D3KooW…`` form)."""
        return self._peer_id

    @property
    def public_key(self) -> bytes:
        """This node's Ed25519 public key (32 bytes) — what peers pass to
        :meth:`prepare_streams`."""
        return self._identity.public_key.data

    @property
    def addrs(self) -> list[Multiaddr]:
        """Addresses peers can dial (``0.0.0.0`` expanded); empty before :meth:`start`."""
        return self._host.addrs if self._host is not None and self.is_running else []

    @property
    def version(self) -> ProtocolVersion:
        return current_version()

    @property
    def host(self) -> Host:
        """The underlying libp2p host (advanced use: extra protocols, ping)."""
        host, _, _, _ = self._running()
        return host

    def peer_addrs(self, peer_id: PeerIdLike) -> list[Multiaddr]:
        """Addresses known for ``peer_id`` (peerstore: dialled, identified or configured)."""
        host, _, _, _ = self._running()
        return host.peerstore.addrs(_pid(peer_id))

    # --- peers (address book) ------------------------------------------------------------

    def add_peer(
        self,
        peer_id: PeerIdLike,
        addrs: Iterable[Multiaddr | str],
        metadata: Mapping[str, str] | None = None,
    ) -> PeerEntry:
        """Add or update a peer in the address book (saved at once); auto-connect if enabled.

        Raises:
            PeerBlacklisted: the peer is blacklisted.
            ResourceLimitExceeded: metadata over ``max_metadata_size``.
            ValueError: an address does not parse.
        """
        pid = _pid(peer_id)
        host, manager, _, book = self._running()
        mas = [Multiaddr(a) for a in addrs]
        entry = book.add_peer(pid, mas, metadata)
        host.peerstore.add_addrs(pid, [a.without_p2p() if a.peer_id else a for a in mas])
        if self._auto_connect and manager.state(pid) in (
            ConnectionState.DISCONNECTED,
            ConnectionState.RECONNECTING,
        ):
            self._spawn_connect(pid)
        return entry

    def remove_peer(self, peer_id: PeerIdLike) -> None:
        """Forget a peer and disconnect from it (the connections close in the background).

        Raises:
            PeerNotFound: not in the address book.
        """
        pid = _pid(peer_id)
        _, manager, _, book = self._running()
        entry = book.get_peer(pid)
        book.remove_peer(pid)
        manager.drop(pid)
        if entry.public_key is not None and self._keys is not None:
            self._keys.remove(entry.public_key)

    def blacklist_peer(self, peer_id: PeerIdLike) -> PeerEntry:
        """Blacklist a peer (known or not): its connections close in any state, dials and
        inbound connections are refused, reconnection stops. Saved at once."""
        pid = _pid(peer_id)
        _, manager, channels, book = self._running()
        key = channels.public_key(pid)
        entry = book.blacklist_peer(pid)
        self._log.warning("peer blacklisted: %s", pid)
        manager.blacklisted(pid)
        if key is not None and self._keys is not None:
            self._keys.remove(key)
        return entry

    def unblacklist_peer(self, peer_id: PeerIdLike) -> PeerEntry:
        """Clear the blacklist flag (nothing is dialled).

        Raises:
            PeerNotFound: not in the address book.
        """
        return self._book_or_raise().unblacklist_peer(_pid(peer_id))

    def get_peer(self, peer_id: PeerIdLike) -> PeerEntry:
        """The address-book entry of a peer (blacklisted or not).

        Raises:
            PeerNotFound: not in the address book.
        """
        return self._book_or_raise().get_peer(_pid(peer_id))

    def list_peers(self) -> list[PeerEntry]:
        """Address-book entries that are not blacklisted, sorted by peer ID."""
        return self._book_or_raise().list_peers()

    # --- connections -----------------------------------------------------------------------

    async def connect(
        self, peer_id: PeerIdLike, addrs: Iterable[Multiaddr | str] | None = None
    ) -> None:
        """Connect to a peer; returns once the connection is up (state ``Connected``).

        Addresses: ``addrs`` if given, else the address book's, else the peerstore's. Already
        connected: returns at once; a dial in progress: waits for it. A failed dial to a peer
        of the address book starts reconnection (as in Go). Bound the wait with
        ``asyncio.timeout``; cancelling gives up this dial.

        Raises:
            PeerBlacklisted: the peer is blacklisted.
            PeerNotFound: no address known.
            ConnectError: in cooldown after a failed handshake, or the dial failed
                (``ConnectTimeout``, ``PeerIdMismatch``, … for the particular reason).
            ConnectionLost: the connection closed while connecting, or is closing.
        """
        _, manager, _, _ = self._running()
        await manager.connect(_pid(peer_id), addrs)

    async def disconnect(self, peer_id: PeerIdLike) -> None:
        """Close every connection to a peer, stop reconnecting, drop its streams and key.

        Publishes ``Disconnected`` if the peer was not already disconnected. Idempotent.
        """
        _, manager, _, _ = self._running()
        await manager.disconnect(_pid(peer_id))

    def connection_state(self, peer_id: PeerIdLike) -> ConnectionState:
        """The peer's state (``DISCONNECTED`` for unknown peers, and before start)."""
        if self._manager is None:
            return ConnectionState.DISCONNECTED
        return self._manager.state(_pid(peer_id))

    def is_outbound(self, peer_id: PeerIdLike) -> bool:
        """Whether the current (or last) connection with the peer was our dial.

        Raises:
            PeerNotFound: no connection with the peer is known.
        """
        _, manager, _, _ = self._running()
        return manager.is_outbound(_pid(peer_id))

    def cancel_reconnection(self, peer_id: PeerIdLike) -> bool:
        """Stop reconnecting to a peer, including a dial in flight; publishes
        ``Disconnected``. Returns False if no reconnection was running."""
        _, manager, _, _ = self._running()
        return manager.cancel_reconnection(_pid(peer_id))

    # --- handshake -------------------------------------------------------------------------

    async def prepare_streams(
        self, peer_id: PeerIdLike, peer_public_key: PublicKeyLike, names: Sequence[str]
    ) -> None:
        """Derive the stream key with a peer and accept its encrypted streams ``names``.

        Call it before the peer sends on those streams (reference §0.13). Names add to
        earlier calls. The key must be the one of the peer's identity (the peer ID is its
        hash): a mismatch is refused, so a man in the middle of the application handshake
        cannot substitute its own key.

        Raises:
            LocalProtocolError: no names, an invalid name, or ``"handshake"`` (reserved).
            PeerIdMismatch: the key is not the peer's identity key.
            SecurityError: the key is malformed, not on the curve, or of low order.
        """
        pid = _pid(peer_id)
        _, _, channels, book = self._running()
        if isinstance(names, str):
            raise TypeError("names must be a list of stream names, not one string")
        wanted = list(dict.fromkeys(names))
        if not wanted:
            raise LocalProtocolError("no stream names requested", protocol="glueberry")
        for name in wanted:
            validate_stream_name(name, self._config.max_stream_name_length)
        pk = _public_key_bytes(peer_public_key)
        if PeerId.from_public_key(Ed25519PublicKey(pk)) != pid:
            raise PeerIdMismatch(
                f"the public key given for {pid} belongs to another peer ID", peer_id=pid
            )
        assert self._keys is not None
        cipher = StreamCipher(self._keys.shared_key(pk))
        channels.prepare(pid, pk, wanted, cipher)
        with contextlib.suppress(GlueberryError):
            book.update_public_key(pid, pk)
        self._log.debug("prepared streams %s for %s", wanted, pid)

    async def finalize_handshake(self, peer_id: PeerIdLike) -> None:
        """Mark the handshake with a peer complete: ``Connected`` -> ``Established``.

        Cancels the handshake deadline and half-closes our handshake stream (a later
        handshake message opens a new one, as Go does).

        Raises:
            InvalidTransition: the peer is not ``Connected``.
            HandshakeError: :meth:`prepare_streams` was not called for the peer.
        """
        pid = _pid(peer_id)
        _, manager, _, _ = self._running()
        await manager.finalize(pid)
        self._log.info("handshake complete with %s", pid)

    async def complete_handshake(
        self, peer_id: PeerIdLike, peer_public_key: PublicKeyLike, names: Sequence[str]
    ) -> None:
        """:meth:`prepare_streams` then :meth:`finalize_handshake`."""
        await self.prepare_streams(peer_id, peer_public_key, names)
        await self.finalize_handshake(peer_id)

    # --- messaging -------------------------------------------------------------------------

    async def send(
        self, peer_id: PeerIdLike, stream_name: str, data: bytes | bytearray | memoryview
    ) -> None:
        """Send one message on a named stream (``HANDSHAKE_STREAM`` is unencrypted).

        Returns once the frame is handed to the connection; waits while the stream is
        back-pressured (the peer is not reading). The stream is opened on first use.

        Raises:
            MessageTooLarge: ``len(data) > max_message_size``.
            LocalProtocolError: invalid name, or not prepared for this peer.
            ConnectionLost: not connected to the peer.
            StreamReset: the stream failed during the write.
            ResourceLimitExceeded: the peer is reached through a relay and the message does
                not fit into what the relay still forwards (``limit="relay_circuit_data"``)
                or its time is (nearly) up (``"relay_circuit_duration"``); nothing of it was
                sent. Also when a relay limit ended the connection during the write.
            NodeStateError: the node is not running.
        """
        channels = self._channels
        if self._state is not _State.RUNNING or channels is None:
            raise self._state_error()
        if peer_id.__class__ is not PeerId:
            peer_id = _pid(peer_id)
        pending = channels.submit(peer_id, stream_name, data)  # no coroutine when coalesced
        if pending is not None:
            await pending

    def messages(self) -> MessageQueue:
        """Received messages, across peers and streams: ``async for msg in node.messages()``.

        Every call returns the same bounded queue (several consumers split the messages).
        A consumer that stops iterating back-pressures the senders; nothing is dropped.
        Iteration ends after :meth:`stop`, once the queue is drained.
        """
        return self._messages

    def intercept_handshake(self, peer_id: PeerIdLike | None = None) -> MessageQueue:
        """Receive the handshake-stream messages of ``peer_id`` (or of every peer without a
        queue of its own, when ``None``) in a separate queue, not in :meth:`messages`.

        Messages of that peer already waiting in :meth:`messages` move over. Close the queue
        (``async with`` / ``close()``) to restore normal delivery; messages it still holds
        then go back to :meth:`messages`. :mod:`glueberry.handshake` uses this.

        Raises:
            LocalProtocolError: that peer's handshake is already intercepted.
        """
        _, _, channels, _ = self._running()
        return channels.intercept_handshake(
            None if peer_id is None else _pid(peer_id), self._config.message_buffer_size
        )

    # --- events ------------------------------------------------------------------------------

    def events(self) -> EventSubscription[ConnectionEvent]:
        """The node's shared event subscription (Go ``Events()``): open since the node was
        created, so nothing is missed; several consumers split the events. It never blocks
        the node: when full it drops its oldest event and yields an ``EventsDropped`` marker.
        For a private copy of every event (``event_overflow`` applies) use
        :meth:`subscribe_events`."""
        return self._default_events

    def subscribe_events(self) -> EventSubscription[ConnectionEvent]:
        """A new subscription receiving every later event (``async with`` / ``async for``;
        ``unsubscribe()``).

        Raises:
            NodeStateError: the node is stopped.
        """
        return self._events.subscribe()

    def filtered_events(self, event_filter: EventFilter) -> EventSubscription[ConnectionEvent]:
        """A new subscription receiving the later events that pass ``event_filter``."""
        return self._events.subscribe(event_filter)

    def events_for_peer(self, peer_id: PeerIdLike) -> EventSubscription[ConnectionEvent]:
        """A new subscription for the events of one peer."""
        return self.filtered_events(EventFilter(peer_ids=[_pid(peer_id)]))

    def events_for_states(self, *states: ConnectionState) -> EventSubscription[ConnectionEvent]:
        """A new subscription for events into the given states."""
        return self.filtered_events(EventFilter(states=states))

    def connection_changes(
        self, peer_id: PeerIdLike | None = None
    ) -> EventSubscription[ConnectionChange]:
        """A new subscription to how peers are connected (NAT traversal): a
        :class:`~glueberry.events.PeerConnectionChanged` when a session begins and whenever
        the peer's connection changes kind (relayed, hole-punched, direct), and a
        :class:`~glueberry.events.RelayLimitReached` when a relay limit ended a relayed
        connection. Of ``peer_id`` only, if given. These are not connection *states*: they
        never appear in :meth:`events`. A full subscription drops its oldest event (with an
        ``EventsDropped`` marker). Nothing is published unless the NAT layer runs.

        Raises:
            NodeStateError: the node is stopped.
        """
        if peer_id is None:
            return self._changes.subscribe()
        pid = _pid(peer_id)
        return self._changes.subscribe(lambda ev: ev.peer_id == pid)

    def connection_type(self, peer_id: PeerIdLike) -> ConnectionType | None:
        """How a peer is reached now: ``"direct"``, ``"relayed"`` (a circuit relay) or
        ``"hole_punched"`` (direct, opened by DCUtR); ``None`` without a connection.

        Without the NAT layer every connection is ``"direct"``.
        """
        host = self._host
        if host is None or not self.is_running:
            return None
        pid = _pid(peer_id)
        if self._traversal is not None:
            return self._traversal.connection_type(pid)
        return "direct" if host.connection_for(pid) is not None else None

    @property
    def nat(self) -> NatManager | None:
        """The NAT layer (``glueberry.nat.manager.NatManager``: its own events with
        ``subscribe()``, reachability, observed/relayed addresses), ``None`` when the
        configuration asks for no NAT traversal or before :meth:`start`."""
        return self._traversal.manager if self._traversal is not None else None

    def _publish(self, event: ConnectionEvent) -> None:
        host = self._host
        if host is not None:
            if event.state in (ConnectionState.CONNECTED, ConnectionState.ESTABLISHED):
                host.protect(event.peer_id, _CONNMGR_TAG)
            else:
                host.unprotect(event.peer_id, _CONNMGR_TAG)
        traversal = self._traversal
        if traversal is not None:
            if event.state is ConnectionState.CONNECTED:
                traversal.session_started(event.peer_id)
            elif event.state in (ConnectionState.DISCONNECTED, ConnectionState.COOLDOWN):
                traversal.session_ended(event.peer_id)
        elif event.state is ConnectionState.CONNECTED:
            self._stats.set_connection_type(event.peer_id, "direct")
        if self._backlog:
            self._backlog.append(event)
            return
        try:
            self._events.publish_nowait(event)
        except Backpressure:
            # A "block" subscription is full: keep order, deliver from a task that waits.
            self._backlog.append(event)
            if self._pump is None and self._host is not None:
                loop = asyncio.get_running_loop()
                self._pump = loop.create_task(self._pump_events())

    async def _pump_events(self) -> None:
        try:
            while self._backlog:
                await self._events.publish(self._backlog[0])
                self._backlog.popleft()
        finally:
            self._pump = None

    def _connection_error(self, conn: MuxedConnection) -> BaseException | None:
        """Why a connection ended, when the node knows better than the connection."""
        if self._host is not None and self._host.was_trimmed(conn):
            return ConnectionLost(
                "closed by the connection manager (over conn_mgr_high_watermark)",
                peer_id=conn.remote_peer,
            )
        if self._traversal is not None:
            return self._traversal.connection_error(conn)
        return None

    def _publish_change(self, change: ConnectionChange) -> None:
        self._changes.publish_nowait(change)  # drop_oldest subscriptions never refuse

    def _in_session(self, peer: PeerId) -> bool:
        return self.connection_state(peer) in (
            ConnectionState.CONNECTED,
            ConnectionState.ESTABLISHED,
        )

    def _on_inbound_handshake(self, peer: PeerId) -> bool:
        manager = self._manager
        return manager is not None and manager.inbound_handshake(peer)

    def _on_handshake_opened(self, peer: PeerId) -> None:
        if self._manager is not None:
            self._manager.handshake_opened(peer)

    def _on_peer_error(self, peer: PeerId, error: BaseException) -> None:
        if self._manager is not None:
            self._manager.drop(peer, error)

    def _spawn_connect(self, peer: PeerId) -> None:
        async def run() -> None:
            try:
                if self._manager is not None:
                    await self._manager.connect(peer)
            except (GlueberryError, OSError) as exc:
                self._log.debug("auto-connect to %s failed: %r", peer, exc)

        if self._host is not None:
            with contextlib.suppress(GlueberryError):
                spawn_in(self._host, run(), name="glueberry-autoconnect")

    # --- statistics and health --------------------------------------------------------------

    def peer_statistics(self, peer_id: PeerIdLike) -> PeerStats | None:
        """Traffic and connection statistics of one peer, or ``None`` if none were recorded."""
        return self._stats.peer_statistics(_pid(peer_id), self._clock.wall())

    def all_peer_statistics(self) -> dict[PeerId, PeerStats]:
        """Statistics of every peer that has some."""
        return self._stats.all_peer_statistics(self._clock.wall())

    def messages_sent(self, peer_id: PeerIdLike) -> int:
        """Messages sent to a peer (0 if none)."""
        return self._stats.messages_sent(_pid(peer_id))

    @property
    def input_errors(self) -> dict[str, int]:
        """Counters of refused or malformed input (streams refused, replaced or reset as a
        flood, bad frames, decryption failures)."""
        return dict(self._channels.counters) if self._channels is not None else {}

    def health(self) -> HealthStatus:
        """Readiness checks: node started, host running, address book, connections."""
        checks: list[HealthCheck] = []

        def check(name: str, fn: Callable[[], tuple[bool, str]]) -> None:
            t0 = time.perf_counter()
            ok, msg = fn()
            checks.append(
                HealthCheck(name=name, healthy=ok, message=msg, duration=time.perf_counter() - t0)
            )

        running = self._state is _State.RUNNING
        check(
            "node_started",
            lambda: (running, "running" if running else f"node is {self._state.value}"),
        )
        check(
            "host_running",
            lambda: (
                (True, f"listening on {len(self._host.listen_addrs)} address(es)")
                if running and self._host is not None and self._host.listen_addrs
                else (False, "host is not listening")
            ),
        )
        check(
            "address_book",
            lambda: (
                (True, f"{len(self._book)} peer(s)")
                if self._book is not None and running
                else (False, "address book is not open")
            ),
        )

        def connections() -> tuple[bool, str]:
            n = len(self._host.connections()) if running and self._host is not None else 0
            return True, (f"{n} active connection(s)" if n else "no active connections")

        check("connections", connections)
        return HealthStatus(
            healthy=all(c.healthy for c in checks),
            checks=tuple(checks),
            timestamp=self._clock.wall(),
        )
