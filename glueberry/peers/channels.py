"""Glueberry named streams: one libp2p stream per (peer, name), framed and (except the
handshake stream) sealed with the peer's stream key.

Reference: ``glueberry-go-v1.md`` §1.3 (who opens which stream, inbound acceptance), §1.4-1.5
(framing, encrypted layout), §2.6-2.7 (failure handling, size limits) and the fixes of §9.2
(items 4, 6, 7); architecture C11 (backpressure end to end). The codec is
:mod:`glueberry.proto.gb_framing`, the cipher :class:`glueberry.peers.crypto.StreamCipher`.

Theory of operation
-------------------
*Streams.* ``/glueberry/stream/<name>/1.0.0`` carries every message of ``name`` between two
peers, in both directions. Whichever side sends first opens it (lazily, on the first
:meth:`ChannelManager.send`); the other side accepts it and writes its own messages on it too.
``"handshake"`` is the same, unencrypted, and accepted from any connected peer; every other
name is accepted only from a peer for which :meth:`ChannelManager.prepare` granted it (else
the stream is reset — or, when no peer has that name, multistream answers ``na``).

*Duplicates.* Go resets a second inbound stream for a name it holds. Here a second stream
never destroys data: every accepted stream keeps a reader until it ends. One of them is the
*primary*, used for sending. Between two live streams the tie-break is deterministic, so both
peers pick the same one: the stream opened by the peer with the lower peer ID wins; between
two streams opened by the same side, the newer wins (that side only opens a new one when it
gave up on the old). When our own stream loses, we half-close it (FIN) so the peer's reader
ends; a losing remote stream is read until the peer closes it. At most
:data:`MAX_SECONDARY_STREAMS` non-primary streams are kept per name; older ones are reset.
When the primary ends, the newest stream we can still write to takes over; if none is left
the next send opens a new one (as Go does after EOF).

*Reading* (C11). Each stream has one reader: the host's handler task for inbound streams, a
task in the host's task group for streams we opened. A reader takes everything buffered (one
``read()``), decodes and decrypts the whole batch (:meth:`FrameDecoder.receive_encrypted`)
and hands the batch to a bounded :class:`MessageQueue` in one call. Once it has read once, a
stream that offers push delivery (yamux ``set_data_callback``) hands new bytes to the reader
synchronously on the connection's receive path, and while the queue has room the batch is
queued right there: a waiting consumer runs on the next loop iteration, with no reader task
scheduled in between. While the queue is full the reader declines, waits and reads nothing,
so the yamux window is not reopened and the remote sender blocks: nothing is dropped, ever.
Received plaintexts are limited to ``max_message_size`` (checked on the length prefix,
before buffering; the limit applies to the plaintext, i.e. the blob minus 28 bytes, matching
what a Go sender enforces).

*Failures.* A malformed frame (zero length, over the limit, bad or truncated varint, end of
stream inside a frame) resets that stream: it is counted (``protocol_error("glueberry")``) and
logged. A frame that fails authentication is counted (``decryption_error``), logged, reported
to ``on_decryption_error`` and handled by ``decryption_error_policy``: ``"reset_stream"``
(default) resets the stream, ``"disconnect"`` also asks the node to drop the peer. Frames of
the same read that did authenticate are still delivered; nothing that failed is. Other peers
and other streams are unaffected.

*Writing.* A message is framed and sealed into the channel's pending buffer (``seal_into``),
synchronously (:meth:`ChannelManager.submit`; ``Node.send`` awaits only what must be awaited).
The first message of a loop iteration is written to the socket at once (yamux
``write_nowait``: framed, sealed by Noise and written inside the call, when the window allows;
else ``stream.write`` then ``flush``); the messages after it in the same iteration are
coalesced and written at 64 KiB or at the end of the iteration. ``send`` returns once the
muxer accepted the bytes; it waits while the stream's send window is exhausted. Concurrent
senders on one stream never interleave: while a write is suspended, later messages are
appended to one pending buffer that the suspended writer flushes next, and their senders wait
for that flush (``disable_backpressure``: they return at once instead, and memory is the
limit).

*Migration* (relayed -> direct). When a direct connection to a peer appears while the
peer's encrypted streams run over a relayed (``/p2p-circuit``) connection - a hole punch
succeeded - those streams are retired: each side half-closes the relayed streams it opened
(after a write in progress), stops writing on the others, and keeps reading all of them
until they end, so nothing in flight is lost. New messages go on new streams, which the
host opens on the direct connection (it prefers direct connections), and a stream on a
direct connection always wins the tie-break against a relayed one, on both peers. Order is
kept per name across the move: a direct stream's reader holds its messages back until the
relayed streams of the same name have ended (at most :data:`MIGRATION_DRAIN_TIMEOUT`). A
stream whose peer half-closed it while we are writing is closed only after that write. The
handshake stream is not moved (a new handshake stream would start a new session).

*Relay limits.* Every message written on a relayed connection with limits is first charged
to that connection's budget (``relay_budget``, :class:`glueberry.peers.traversal.RelayBudget`):
a message that does not fit into what the relay still forwards is refused with
:class:`~glueberry.errors.ResourceLimitExceeded` before any byte is written. A write that
fails because a relay limit ended the connection raises ``ResourceLimitExceeded`` too.

Nothing here blocks the event loop or spawns a task per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from glueberry.clock import LoopClock
from glueberry.errors import (
    ConnectionLost,
    DecryptionFailed,
    GlueberryError,
    LocalProtocolError,
    MessageTooLarge,
    RemoteProtocolError,
    StreamClosed,
    StreamError,
    StreamReset,
    TransportError,
)
from glueberry.events import IncomingMessage
from glueberry.peers.metrics import Metrics, NopMetrics
from glueberry.proto.gb_framing import (
    ENCRYPTION_OVERHEAD,
    HANDSHAKE_STREAM,
    PROTOCOL,
    FrameDecoder,
    encode_frame_header,
    stream_protocol_id,
    validate_stream_name,
)

if TYPE_CHECKING:
    from glueberry.clock import Clock
    from glueberry.errors import ResourceLimitExceeded
    from glueberry.net.host import Host
    from glueberry.peers.crypto import StreamCipher
    from glueberry.peers.metrics import Tracer
    from glueberry.peers.stats import StatsRecorder, StreamCounters
    from glueberry.transport.base import MuxedConnection, Stream
    from glueberry.wire.identity import PeerId

__all__ = [
    "HANDSHAKE_PROTOCOL_ID",
    "MAX_SECONDARY_STREAMS",
    "ChannelManager",
    "MessageQueue",
    "spawn_in",
]

#: ``/glueberry/stream/handshake/1.0.0`` (what Go really uses; its ``HandshakeProtocolID``
#: constant ``/glueberry/handshake/1.0.0`` is never used on the wire).
HANDSHAKE_PROTOCOL_ID: Final = stream_protocol_id(HANDSHAKE_STREAM)
#: Non-primary streams kept per (peer, name) before the oldest is reset (stream floods).
MAX_SECONDARY_STREAMS: Final = 2
#: Reset code for streams we refuse (go-libp2p's "protocol negotiation failed").
_REFUSED: Final = 0x1001
#: Seconds a direct stream's messages wait for the relayed streams of its name to end.
MIGRATION_DRAIN_TIMEOUT: Final = 30.0
#: ``transport_name`` of relayed connections.
_RELAYED: Final = "circuit"


class RelayBudgetLike(Protocol):
    """What the channels need of a relayed connection's budget
    (:class:`glueberry.peers.traversal.RelayBudget`)."""

    def charge(self, frame: int, peer: PeerId, stream: str) -> None: ...

    def error(self, peer: PeerId, stream: str) -> ResourceLimitExceeded | None: ...


DecryptionPolicy = Literal["reset_stream", "disconnect"]


#: Pending frames of one stream are written at once beyond this many bytes.
COALESCE_BYTES: Final = 64 * 1024

# Frame headers by payload length, for the common sizes (bounded).
_HEADERS: dict[int, bytes] = {}


def _header(size: int) -> bytes:
    header = encode_frame_header(size)
    if len(_HEADERS) >= 4096:
        _HEADERS.clear()
    _HEADERS[size] = header
    return header


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _fail(fut: asyncio.Future[None] | None, exc: BaseException) -> None:
    if fut is not None and not fut.done():
        fut.set_exception(exc)


def spawn_in(host: Host, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
    """``host.spawn(coro)``, closing ``coro`` if the task is cancelled before it started
    (so no "coroutine was never awaited" warning is left behind).

    Raises:
        GlueberryError: the host is not running (``coro`` is closed).
    """
    task = host.spawn(coro, name=name)
    task.add_done_callback(lambda _t: coro.close())
    return task


# --- the bounded message queue ---------------------------------------------------------


class MessageQueue:
    """A bounded queue of :class:`~glueberry.events.IncomingMessage`, filled in batches.

    Producers (stream readers) call :meth:`put_batch`, which waits while the queue holds
    ``capacity`` messages or more and then appends the whole batch (so the queue can exceed
    its capacity by at most one batch per reader; a batch is bounded by one yamux window).
    Consumers iterate: ``async for msg in queue``. Iteration ends after :meth:`close` once
    the queue is drained. Several consumers split the messages between them.

    Like :class:`asyncio.Queue`, a queue is bound to the event loop of its first wait
    (asking asyncio for the running loop costs a ``getpid`` system call per wait).
    """

    __slots__ = ("_buf", "_capacity", "_closed", "_getters", "_loop", "_on_close", "_putters")

    def __init__(
        self, capacity: int, *, on_close: Callable[[MessageQueue], None] | None = None
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._buf: deque[IncomingMessage] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._on_close = on_close
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def capacity(self) -> int:
        return self._capacity

    def _future(self) -> asyncio.Future[None]:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.create_future()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting_producers(self) -> int:
        """Readers currently held back because the queue is full."""
        return sum(1 for f in self._putters if not f.done())

    def __len__(self) -> int:
        return len(self._buf)

    def __bool__(self) -> bool:  # a queue is an object, not an empty container
        return True

    async def put_batch(self, items: list[IncomingMessage]) -> bool:
        """Append ``items``, waiting while the queue is full. False if the queue is closed."""
        buf = self._buf
        while len(buf) >= self._capacity:
            if self._closed:
                return False
            fut = self._future()
            self._putters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake_putter()  # pass the turn on
                raise
        if self._closed:
            return False
        buf.extend(items)
        getters = self._getters
        while getters:
            g = getters.popleft()
            if not g.done():
                g.set_result(None)
                break
        if len(buf) < self._capacity and self._putters:
            self._wake_putter()
        return True

    def put_nowait(self, items: list[IncomingMessage]) -> bool:
        """Append a batch at once (the push path checks for room first; like
        :meth:`put_batch`, the batch may take the queue past its capacity). False if closed."""
        if self._closed:
            return False
        self._buf.extend(items)
        getters = self._getters
        while getters:
            g = getters.popleft()
            if not g.done():
                g.set_result(None)
                break
        return True

    def _wake_putter(self) -> None:
        putters = self._putters
        while putters:
            p = putters.popleft()
            if not p.done():
                p.set_result(None)
                return

    def push_nowait(self, items: list[IncomingMessage]) -> bool:
        """Append without waiting, beyond the capacity if need be (hand-backs only, never
        the data path). False if the queue is closed."""
        if self._closed:
            return False
        self._buf.extend(items)
        for g in self._getters:
            if not g.done():
                g.set_result(None)
                break
        return True

    def get_nowait(self) -> IncomingMessage:
        """The next message.

        Raises:
            asyncio.QueueEmpty: nothing queued.
            StreamClosed: closed and drained.
        """
        buf = self._buf
        if buf:
            item = buf.popleft()
            if self._putters and len(buf) < self._capacity:
                self._wake_putter()
            return item
        if self._closed:
            raise StreamClosed("message queue is closed")
        raise asyncio.QueueEmpty

    async def get(self) -> IncomingMessage:
        """Wait for the next message.

        Raises:
            StreamClosed: closed and drained.
        """
        buf = self._buf
        while not buf:
            if self._closed:
                raise StreamClosed("message queue is closed")
            fut = self._future()
            self._getters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                self._pass_on(fut)
                raise
        item = buf.popleft()
        if self._putters and len(buf) < self._capacity:
            self._wake_putter()
        return item

    def _pass_on(self, fut: asyncio.Future[None]) -> None:
        """A consumer was cancelled: if it had been woken for a batch it will not take,
        wake another one."""
        if fut.done() and not fut.cancelled() and self._buf:
            for g in self._getters:
                if not g.done():
                    g.set_result(None)
                    break

    def __aiter__(self) -> MessageQueue:
        return self

    async def __anext__(self) -> IncomingMessage:
        # get() inlined (one coroutine less per wait), StopAsyncIteration at the end.
        buf = self._buf
        while not buf:
            if self._closed:
                raise StopAsyncIteration
            fut = self._future()
            self._getters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                self._pass_on(fut)
                raise
        item = buf.popleft()
        if self._putters and len(buf) < self._capacity:
            self._wake_putter()
        return item

    def steal(self, predicate: Callable[[IncomingMessage], bool]) -> list[IncomingMessage]:
        """Remove and return the queued messages matching ``predicate`` (in order)."""
        taken = [m for m in self._buf if predicate(m)]
        if taken:
            keep = [m for m in self._buf if not predicate(m)]
            self._buf.clear()  # in place: a producer may hold a reference
            self._buf.extend(keep)
            if self._putters and len(self._buf) < self._capacity:
                self._wake_putter()
        return taken

    def close(self) -> None:
        """No more messages: consumers drain what is queued, then iteration ends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for waiters in (self._getters, self._putters):
            while waiters:
                f = waiters.popleft()
                if not f.done():
                    f.set_result(None)
        if self._on_close is not None:
            self._on_close(self)

    unsubscribe = close

    async def __aenter__(self) -> MessageQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MessageQueue(queued={len(self._buf)}, capacity={self._capacity})"


# --- bookkeeping records --------------------------------------------------------------


class _StreamRec:
    """One accepted or opened stream of a channel, with a reader running on it."""

    __slots__ = (
        "budget",
        "close_after_write",
        "flush",
        "local",
        "read_done",
        "relayed",
        "retired",
        "stream",
        "writable",
        "write_nowait",
        "writing",
    )

    def __init__(self, stream: Stream, local: bool, budget: RelayBudgetLike | None = None) -> None:
        self.stream = stream
        #: Writes what the connection queued to the socket now (yamux ``flush``), if offered.
        self.flush: Callable[[], None] | None = getattr(stream, "flush", None)
        #: Writes a whole batch to the socket now if nothing has to wait (yamux), if offered.
        self.write_nowait: Callable[[bytearray], bool] | None = getattr(
            stream, "write_nowait", None
        )
        #: We opened it.
        self.local = local
        #: It runs over a relayed connection.
        self.relayed = stream.connection.transport_name == _RELAYED
        #: The relayed connection's budget (relay limits), if it has one.
        self.budget = budget
        #: The peer half-closed it (our reader saw the end).
        self.read_done = False
        #: Our write side is still open.
        self.writable = True
        #: No longer the primary (lost a tie-break or was replaced).
        self.retired = False
        #: A write on it is suspended (half-close waits for it).
        self.writing = False
        self.close_after_write = False


class _Channel:
    """All streams of one (peer, name)."""

    __slots__ = (
        "burst",
        "counters",
        "drained",
        "draining",
        "encrypted",
        "name",
        "opening",
        "pending",
        "pending_count",
        "pending_fut",
        "primary",
        "protocol_id",
        "streams",
        "writing",
    )

    def __init__(self, name: str, counters: StreamCounters) -> None:
        self.name = name
        self.protocol_id = stream_protocol_id(name)
        self.encrypted = name != HANDSHAKE_STREAM
        self.counters = counters
        self.primary: _StreamRec | None = None
        self.streams: list[_StreamRec] = []
        self.opening: asyncio.Future[None] | None = None
        self.writing = False
        self.burst = False
        self.pending = bytearray()
        self.pending_count = 0
        self.pending_fut: asyncio.Future[None] | None = None
        #: Relayed streams retired by a move to a direct connection, still being read.
        self.draining: list[_StreamRec] = []
        #: Done when ``draining`` empties (direct streams' readers wait for it).
        self.drained: asyncio.Future[None] | None = None


class _PeerChannels:
    __slots__ = ("allowed", "channels", "cipher", "public_key")

    def __init__(self) -> None:
        self.cipher: StreamCipher | None = None
        self.public_key: bytes | None = None
        self.allowed: set[str] = set()
        self.channels: dict[str, _Channel] = {}


# --- the manager ----------------------------------------------------------------------


class ChannelManager:
    """The named streams of every peer of one node.

    Args:
        host: the libp2p host (stream handlers, ``new_stream``, ``spawn``).
        messages: where received messages go (unless a handshake tap takes them).
        stats: per-(peer, stream) counters.
        clock: timestamps (``wall()``).
        max_message_size: largest plaintext sent or accepted.
        decryption_policy: ``"reset_stream"`` or ``"disconnect"``.
        on_decryption_error: the application's callback ``(peer_id, error)``.
        on_inbound_handshake: called with the peer once an inbound handshake stream is stored
            and before anything is read from it (the node's state machine: Connected);
            returning False refuses (resets) the stream.
        on_handshake_opened: called with the peer when we opened a handshake stream to it.
        tracer: ``glueberry.stream_setup`` spans around opening streams.
        on_peer_error: called with ``(peer_id, error)`` when the policy says to drop the peer.
        disable_backpressure: senders do not wait for a suspended write (see module docs).
        relay_budget: the budget of a relayed connection (relay limits), or ``None``.
    """

    def __init__(
        self,
        host: Host,
        *,
        messages: MessageQueue,
        stats: StatsRecorder[PeerId],
        clock: Clock,
        max_message_size: int,
        max_stream_name_length: int = 64,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
        decryption_policy: DecryptionPolicy = "reset_stream",
        on_decryption_error: Callable[[PeerId, BaseException], None] | None = None,
        on_inbound_handshake: Callable[[PeerId], bool] | None = None,
        on_handshake_opened: Callable[[PeerId], None] | None = None,
        tracer: Tracer | None = None,
        on_peer_error: Callable[[PeerId, BaseException], None] | None = None,
        disable_backpressure: bool = False,
        relay_budget: Callable[[MuxedConnection], RelayBudgetLike | None] | None = None,
    ) -> None:
        self.host = host
        self.messages = messages
        self._stats = stats
        self._clock = clock
        #: ``clock.wall``; ``time.time`` itself for the real clock (one call less per send).
        self._wall: Callable[[], float] = time.time if type(clock) is LoopClock else clock.wall
        self._max = max_message_size
        self._max_name = max_stream_name_length
        self._metrics: Metrics = metrics if metrics is not None else NopMetrics()
        self._metrics_on = type(self._metrics) is not NopMetrics
        self._log = logger if logger is not None else logging.getLogger(__name__)
        self._policy = decryption_policy
        self._on_decryption_error = on_decryption_error
        self._on_inbound_handshake = on_inbound_handshake
        self._on_handshake_opened = on_handshake_opened
        self._tracer = tracer
        self._on_peer_error = on_peer_error
        self._no_backpressure = disable_backpressure
        self._relay_budget = relay_budget
        self._remove_listener: Callable[[], None] | None = None
        self._local = host.peer_id
        self._loop = asyncio.get_running_loop()
        self._peers: dict[PeerId, _PeerChannels] = {}
        self._last_peer: PeerId | None = None
        self._last_pc: _PeerChannels | None = None
        self._taps: dict[PeerId | None, MessageQueue] = {}
        self._handlers: dict[str, int] = {}  # protocol ID -> peers granting it
        self._closed = False
        #: Counters of refused or failed input, by kind (also logged and sent to metrics).
        self.counters: dict[str, int] = {
            "streams_refused": 0,
            "streams_replaced": 0,
            "streams_reset_flood": 0,
            "protocol_errors": 0,
            "decryption_failures": 0,
            "send_failures": 0,
            "streams_migrated": 0,
        }

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Serve the handshake protocol; watch for direct connections (migration)."""
        self.host.set_stream_handler(HANDSHAKE_PROTOCOL_ID, self._serve_handshake)
        self._remove_listener = self.host.add_connection_listener(self._on_connected)

    def close(self) -> None:
        """Forget every peer (streams reset, keys zeroed) and close the taps."""
        self._closed = True
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        for peer in list(self._peers):
            self.forget(peer)
        for tap in list(self._taps.values()):
            tap.close()
        self._taps.clear()

    # --- peers and keys ----------------------------------------------------------------

    def _peer(self, peer: PeerId) -> _PeerChannels:
        pc = self._peers.get(peer)
        if pc is None:
            pc = self._peers[peer] = _PeerChannels()
            self._last_peer = None
        return pc

    def _channel(self, peer: PeerId, pc: _PeerChannels, name: str) -> _Channel:
        ch = pc.channels.get(name)
        if ch is None:
            counters = self._stats.stream_counters(peer, name, self._clock.wall())
            ch = pc.channels[name] = _Channel(name, counters)
        return ch

    def prepare(
        self, peer: PeerId, public_key: bytes, names: list[str], cipher: StreamCipher
    ) -> None:
        """Grant ``names`` to ``peer`` (added to earlier grants) under ``cipher``.

        ``names`` must already be validated. Registers a handler for each name. When the
        peer already has a cipher under the same key, it is kept (streams in use go on) and
        ``cipher`` is closed.
        """
        pc = self._peer(peer)
        key = bytes(public_key)
        if pc.cipher is not None and pc.public_key == key:
            if cipher is not pc.cipher:
                cipher.close()
        else:
            if pc.cipher is not None:
                pc.cipher.close()
            pc.cipher = cipher
            pc.public_key = key
        for name in names:
            if name in pc.allowed:
                continue
            pc.allowed.add(name)
            pid = stream_protocol_id(name)
            count = self._handlers.get(pid, 0)
            if count == 0:
                self.host.set_stream_handler(pid, self._handler_for(name))
            self._handlers[pid] = count + 1

    def has_key(self, peer: PeerId) -> bool:
        pc = self._peers.get(peer)
        return pc is not None and pc.cipher is not None

    def allowed(self, peer: PeerId) -> frozenset[str]:
        pc = self._peers.get(peer)
        return frozenset(pc.allowed) if pc is not None else frozenset()

    def public_key(self, peer: PeerId) -> bytes | None:
        pc = self._peers.get(peer)
        return pc.public_key if pc is not None else None

    def forget(self, peer: PeerId) -> None:
        """Drop everything of ``peer``: reset its streams, zero its key, revoke its names."""
        pc = self._peers.pop(peer, None)
        self._last_peer = self._last_pc = None
        if pc is None:
            return
        for ch in pc.channels.values():
            for rec in list(ch.streams):
                rec.stream.reset()
            ch.streams.clear()
            ch.primary = None
            if ch.opening is not None and not ch.opening.done():
                ch.opening.set_exception(ConnectionLost("peer forgotten", peer_id=peer))
                ch.opening.add_done_callback(_retrieve)
            self._fail_pending(ch, ConnectionLost("peer disconnected", peer_id=peer))
            ch.draining.clear()
            self._set_drained(ch)
        if pc.cipher is not None:
            pc.cipher.close()
        for name in pc.allowed:
            pid = stream_protocol_id(name)
            count = self._handlers.get(pid, 0) - 1
            if count <= 0:
                self._handlers.pop(pid, None)
                self.host.remove_stream_handler(pid)
            else:
                self._handlers[pid] = count

    def stream_count(self, peer: PeerId, name: str | None = None) -> int:
        """Live streams with ``peer`` (of ``name`` only, if given); for tests and debugging."""
        pc = self._peers.get(peer)
        if pc is None:
            return 0
        chans = pc.channels.values() if name is None else [pc.channels.get(name)]
        return sum(len(ch.streams) for ch in chans if ch is not None)

    # --- handshake taps ------------------------------------------------------------------

    def intercept_handshake(self, peer: PeerId | None, capacity: int) -> MessageQueue:
        """Route handshake-stream messages (of ``peer``, or of every peer without a tap of
        its own when ``None``) to a new queue instead of :attr:`messages`.

        Handshake messages of that peer already waiting in :attr:`messages` move to the new
        queue, so nothing that arrived just before the tap is lost to it; messages still in the
        tap when it is closed move back to :attr:`messages`.

        Raises:
            LocalProtocolError: a tap for ``peer`` exists already.
        """
        if self._taps.get(peer) is not None:
            raise LocalProtocolError(
                "handshake messages of this peer are already intercepted", protocol=PROTOCOL
            )

        def on_close(q: MessageQueue) -> None:
            if self._taps.get(peer) is q:
                del self._taps[peer]
            if q._buf:  # not consumed: back to normal delivery, never dropped
                self.messages.push_nowait(list(q._buf))
                q._buf.clear()

        q = MessageQueue(capacity, on_close=on_close)
        self._taps[peer] = q
        if peer is None:
            taken = self.messages.steal(
                lambda m: m.stream_name == HANDSHAKE_STREAM and m.peer_id not in self._taps
            )
        else:
            taken = self.messages.steal(
                lambda m: m.stream_name == HANDSHAKE_STREAM and m.peer_id == peer
            )
        if taken:
            q._buf.extend(taken)
        return q

    def _route(self, peer: PeerId) -> MessageQueue:
        taps = self._taps
        if taps:
            q = taps.get(peer)
            if q is None:
                q = taps.get(None)
            if q is not None and not q.closed:
                return q
        return self.messages

    # --- sending -------------------------------------------------------------------------

    async def send(self, peer: PeerId, name: str, data: bytes | bytearray | memoryview) -> None:
        """Frame (and seal) ``data`` and hand it to the stream of ``(peer, name)``.

        See the module docstring ("Writing") for when this waits.

        Raises:
            MessageTooLarge: ``len(data) > max_message_size``.
            LocalProtocolError: invalid name, or ``name`` not prepared for ``peer``.
            ConnectionLost: not connected to ``peer``.
            StreamReset / StreamClosed: the stream failed during the write.
            NegotiationFailed: the peer refused the stream's protocol.
        """
        pending = self.submit(peer, name, data)
        if pending is not None:
            await pending

    def submit(
        self, peer: PeerId, name: str, data: bytes | bytearray | memoryview
    ) -> Coroutine[Any, Any, None] | None:
        """:meth:`send` without its coroutine: check, frame, seal and queue ``data`` now.

        Returns ``None`` when nothing remains to wait for (a later message of a loop
        iteration, coalesced), else a coroutine the caller must await at once: opening the
        stream first, writing the first message of a burst, or waiting for a suspended
        write. ``Node.send`` uses this so that a coalesced message costs no coroutine here.

        Raises:
            as :meth:`send`, for what is known before any I/O.
        """
        n = len(data)
        if n > self._max:
            raise MessageTooLarge(
                f"message size {n} exceeds maximum {self._max}", peer_id=peer, stream=name
            )
        # One-entry cache: PeerId hashing is a Python call, and a sender usually repeats.
        if peer is self._last_peer:
            pc = self._last_pc
        else:
            pc = self._peers.get(peer)
            self._last_peer, self._last_pc = peer, pc
        ch = pc.channels.get(name) if pc is not None else None
        if ch is None or pc is None or ch.primary is None:
            return self._open_then_send(peer, name, data)
        budget = ch.primary.budget if ch.primary is not None else None
        buf = ch.pending
        if ch.encrypted:
            cipher = pc.cipher
            if cipher is None:
                raise LocalProtocolError(
                    f"no stream key for peer {peer}", protocol=PROTOCOL, peer_id=peer, stream=name
                )
            size = n + ENCRYPTION_OVERHEAD
            header = _HEADERS.get(size)
            if header is None:
                header = _header(size)
            if budget is not None:  # a relayed connection with limits: refuse what won't fit
                budget.charge(size + len(header), peer, name)
            buf += header
            cipher.seal_into(buf, data)
        else:
            header = encode_frame_header(n)
            if budget is not None:
                budget.charge(n + len(header), peer, name)
            buf += header
            buf += data
        ch.pending_count += 1
        c = ch.counters
        c.messages_sent += 1
        c.bytes_sent += n
        c.last_sent_at = self._wall()
        if self._metrics_on:
            self._metrics.message_sent(name, n)
        if ch.writing:  # a write is suspended (back-pressure): wait for our batch
            return self._wait_flushed(ch)
        if self._no_backpressure:  # never wait: a task flushes at the end of the iteration
            if not ch.burst:
                ch.burst = True
                self._loop.call_soon(self._end_burst, peer, ch)
            return None
        if not ch.burst:  # first message of this loop iteration: out at once
            ch.burst = True
            rec = ch.primary
            if rec is not None and rec.write_nowait is not None:
                # The whole batch (this message) to the socket now, if nothing has to wait.
                # The end-of-iteration callback is scheduled after the write: it is not on
                # the way of a reply.
                data = ch.pending
                try:
                    written = rec.write_nowait(data)
                except (StreamError, TransportError, LocalProtocolError) as exc:
                    self._loop.call_soon(self._end_burst, peer, ch)
                    self._drop_stream(ch, rec, reset=True)
                    err = _as_stream_error(exc, peer, ch.name)
                    if rec.budget is not None:  # a relay limit ended the connection?
                        err = rec.budget.error(peer, ch.name) or err
                    self._fail_pending(ch, err)
                    raise err from exc
                self._loop.call_soon(self._end_burst, peer, ch)
                if written:
                    ch.pending = bytearray()
                    ch.pending_count = 0
                    if rec.close_after_write:
                        self._after_write(rec)
                    return None
            else:
                self._loop.call_soon(self._end_burst, peer, ch)
            return self._flush(peer, ch, True)
        if len(buf) >= COALESCE_BYTES:
            return self._flush(peer, ch)
        return None  # more messages of this iteration; flushed at its end (_end_burst)

    async def _open_then_send(
        self, peer: PeerId, name: str, data: bytes | bytearray | memoryview
    ) -> None:
        """The first send on a channel (or after its stream ended): open, then send."""
        await self._ensure_open(peer, name)
        pending = self.submit(peer, name, data)
        if pending is not None:
            await pending

    async def _flush(self, peer: PeerId, ch: _Channel, now: bool = False) -> None:
        """Write the channel's pending frames (and whatever is added meanwhile) to its
        primary stream. Only one flush runs per channel (``ch.writing``).

        ``now``: the first message or the tail of a burst: the connection writes it to the
        socket at once (``stream.flush()``) instead of at the end of the loop iteration."""
        ch.writing = True
        try:
            while ch.pending:
                rec = ch.primary
                if rec is None:  # the stream ended: open a new one (as Go does)
                    _, ch2 = await self._ensure_open(peer, ch.name)
                    if ch2 is not ch or ch.primary is None:
                        raise ConnectionLost(f"peer {peer} disconnected", peer_id=peer)
                    continue
                data, fut = ch.pending, ch.pending_fut
                ch.pending = bytearray()
                ch.pending_fut = None
                ch.pending_count = 0
                rec.writing = True
                try:
                    await rec.stream.write(data)
                    if now and rec.flush is not None:
                        rec.flush()
                except asyncio.CancelledError:
                    # A frame may be half written: this stream's framing cannot be trusted.
                    self._drop_stream(ch, rec, reset=True)
                    err: BaseException = StreamReset("send cancelled", peer_id=peer, stream=ch.name)
                    _fail(fut, err)
                    self._fail_pending(ch, err)
                    raise
                except (StreamError, TransportError, LocalProtocolError) as exc:
                    self._drop_stream(ch, rec, reset=True)
                    err = _as_stream_error(exc, peer, ch.name)
                    if rec.budget is not None:  # a relay limit ended the connection?
                        err = rec.budget.error(peer, ch.name) or err
                    _fail(fut, err)
                    self._fail_pending(ch, err)
                    raise err from exc
                finally:
                    rec.writing = False
                    self._after_write(rec)
                if fut is not None and not fut.done():
                    fut.set_result(None)
        finally:
            ch.writing = False

    def _end_burst(self, peer: PeerId, ch: _Channel) -> None:
        """End of the loop iteration that sent on ``ch``: flush what is left."""
        ch.burst = False
        if ch.pending and not ch.writing:
            try:
                spawn_in(self.host, self._flush_later(peer, ch), name="glueberry-flush")
            except GlueberryError:
                self._fail_pending(ch, ConnectionLost("node stopping", peer_id=peer))

    async def _flush_later(self, peer: PeerId, ch: _Channel) -> None:
        if ch.writing:
            return  # a writer took over; it flushes everything
        try:
            await self._flush(peer, ch, True)
        except (GlueberryError, OSError) as exc:
            self.counters["send_failures"] += 1
            self._log.warning("sending to %s on stream %r failed: %s", peer, ch.name, exc)

    async def _wait_flushed(self, ch: _Channel) -> None:
        """Wait until the batch just appended is handed to the stream."""
        fut = ch.pending_fut
        if fut is None:
            fut = ch.pending_fut = self._loop.create_future()
            fut.add_done_callback(_retrieve)
            if self._metrics_on:
                self._metrics.backpressure_engaged(ch.name)
        if self._metrics_on:
            self._metrics.pending_messages(ch.name, ch.pending_count)
        if self._no_backpressure:
            return
        start = self._clock.now()
        await asyncio.shield(fut)
        if self._metrics_on:
            self._metrics.backpressure_wait(ch.name, self._clock.now() - start)

    def _fail_pending(self, ch: _Channel, exc: BaseException) -> None:
        fut = ch.pending_fut
        ch.pending = bytearray()
        ch.pending_fut = None
        ch.pending_count = 0
        _fail(fut, exc)

    def _after_write(self, rec: _StreamRec) -> None:
        if not rec.close_after_write:
            return
        if rec.writable:
            rec.close_after_write = False
            self._half_close(rec)
        elif rec.read_done:  # the peer ended it while we wrote: finish our side now
            rec.close_after_write = False
            try:
                spawn_in(self.host, _close_write(rec.stream), name="glueberry-fin")
            except GlueberryError:
                rec.stream.reset()

    async def _ensure_open(self, peer: PeerId, name: str) -> tuple[_PeerChannels, _Channel]:
        """The channel of ``(peer, name)`` with a primary stream, opening one if needed."""
        if name == HANDSHAKE_STREAM:
            pc = self._peer(peer)
        else:
            pc_or_none = self._peers.get(peer)
            if pc_or_none is None or pc_or_none.cipher is None or name not in pc_or_none.allowed:
                validate_stream_name(name, self._max_name)
                raise LocalProtocolError(
                    f"stream {name!r} is not prepared for peer {peer} (call prepare_streams first)",
                    protocol=PROTOCOL,
                    peer_id=peer,
                    stream=name,
                )
            pc = pc_or_none
        ch = self._channel(peer, pc, name)
        while ch.primary is None:
            if self._closed or self._peers.get(peer) is not pc:
                raise ConnectionLost(f"not connected to peer {peer}", peer_id=peer, stream=name)
            if ch.opening is not None:
                await asyncio.shield(ch.opening)
                continue
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.add_done_callback(_retrieve)
            ch.opening = fut
            try:
                stream = await self._open_stream(peer, ch.protocol_id, name)
            except BaseException as exc:
                ch.opening = None
                fut.set_exception(
                    exc if isinstance(exc, GlueberryError) else ConnectionLost(repr(exc))
                )
                raise
            ch.opening = None
            if self._peers.get(peer) is not pc:  # forgotten while we were opening
                stream.reset()
                fut.set_exception(ConnectionLost("peer disconnected", peer_id=peer))
                raise ConnectionLost(f"peer {peer} disconnected", peer_id=peer, stream=name)
            rec = _StreamRec(stream, local=True, budget=self._budget(stream))
            self._install(pc, ch, rec)
            try:
                spawn_in(self.host, self._read_loop(peer, pc, ch, rec), name="glueberry-reader")
            except GlueberryError:
                self._drop_stream(ch, rec, reset=True)
                fut.set_exception(ConnectionLost("node is stopping"))
                raise
            fut.set_result(None)
        return pc, ch

    async def _open_stream(self, peer: PeerId, protocol_id: str, name: str) -> Stream:
        if self.host.connection_for(peer) is None:
            raise ConnectionLost(f"not connected to peer {peer}", peer_id=peer, stream=name)
        if self._tracer is not None:
            with self._tracer.stream_setup(peer, name):
                stream = await self.host.new_stream(peer, [protocol_id])
        else:
            stream = await self.host.new_stream(peer, [protocol_id])
        if self._metrics_on:
            self._metrics.stream_opened(name)
        if name == HANDSHAKE_STREAM and self._on_handshake_opened is not None:
            self._on_handshake_opened(peer)
        return stream

    # --- accepting -------------------------------------------------------------------------

    def _handler_for(self, name: str) -> Callable[[Stream], Coroutine[Any, Any, None]]:
        async def handler(stream: Stream) -> None:
            await self._serve(stream, name)

        return handler

    async def _serve(self, stream: Stream, name: str) -> None:
        peer = stream.connection.remote_peer
        pc = self._peers.get(peer)
        if pc is None or pc.cipher is None or name not in pc.allowed:
            self.counters["streams_refused"] += 1
            self._log.info("refusing stream %r from %s: not prepared for this peer", name, peer)
            if self._metrics_on:
                self._metrics.stream_reset(name)
            stream.reset(_REFUSED)
            return
        ch = self._channel(peer, pc, name)
        rec = _StreamRec(stream, local=False, budget=self._budget(stream))
        self._install(pc, ch, rec)
        if self._metrics_on:
            self._metrics.stream_opened(name)
        await self._read_loop(peer, pc, ch, rec)

    async def _serve_handshake(self, stream: Stream) -> None:
        peer = stream.connection.remote_peer
        pc = self._peer(peer)
        ch = self._channel(peer, pc, HANDSHAKE_STREAM)
        rec = _StreamRec(stream, local=False, budget=self._budget(stream))
        # Store the stream before anyone hears of the peer (reference §1.3 race): a reply
        # sent in reaction to the Connected event must go out on this very stream.
        self._install(pc, ch, rec)
        if self._metrics_on:
            self._metrics.stream_opened(HANDSHAKE_STREAM)
        if self._on_inbound_handshake is not None and not self._on_inbound_handshake(peer):
            self.counters["streams_refused"] += 1
            self._drop_stream(ch, rec, reset=True)
            return
        await self._read_loop(peer, pc, ch, rec)

    def _install(self, pc: _PeerChannels, ch: _Channel, rec: _StreamRec) -> None:
        """Add ``rec`` to the channel and settle which stream is the primary."""
        if not rec.relayed and ch.encrypted and any(r.relayed for r in ch.streams):
            # A direct stream before we heard of its connection: move off the relay first.
            self._migrate(pc)
        ch.streams.append(rec)
        cur = ch.primary
        if cur is None:
            ch.primary = rec
        else:
            self.counters["streams_replaced"] += 1
            if self._prefer(rec, cur):
                ch.primary = rec
                self._retire(rec=cur)
            else:
                self._retire(rec=rec)
        secondary = [r for r in ch.streams if r is not ch.primary]
        while len(secondary) > MAX_SECONDARY_STREAMS:
            old = secondary.pop(0)
            self.counters["streams_reset_flood"] += 1
            self._log.info("too many %r streams with one peer: resetting the oldest", ch.name)
            self._drop_stream(ch, old, reset=True)

    def _prefer(self, new: _StreamRec, old: _StreamRec) -> bool:
        """Whether ``new`` should replace ``old`` as the primary (same rule on both peers)."""
        if new.relayed != old.relayed:  # direct beats relayed
            return old.relayed
        if new.local != old.local:
            remote = new.stream.connection.remote_peer
            local_is_lower = self._local < remote
            return new.local == local_is_lower
        return True  # opened by the same side: it gave up on the older one

    def _retire(self, *, rec: _StreamRec) -> None:
        rec.retired = True
        if rec.local:  # tell the peer we will not write on it any more
            if rec.writing:
                rec.close_after_write = True
            else:
                self._half_close(rec)

    def _half_close(self, rec: _StreamRec) -> None:
        if not rec.writable:
            return
        rec.writable = False
        try:
            spawn_in(self.host, _close_write(rec.stream), name="glueberry-fin")
        except GlueberryError:
            rec.stream.reset()

    def _drop_stream(self, ch: _Channel, rec: _StreamRec, *, reset: bool) -> None:
        if reset:
            rec.stream.reset()
            if self._metrics_on:
                self._metrics.stream_reset(ch.name)
        rec.writable = False
        with contextlib.suppress(ValueError):
            ch.streams.remove(rec)
        if ch.draining:
            with contextlib.suppress(ValueError):
                ch.draining.remove(rec)
            if not ch.draining:
                self._set_drained(ch)
        if ch.primary is rec:
            ch.primary = None
            for other in reversed(ch.streams):
                if other.writable and other not in ch.draining:
                    ch.primary = other
                    break

    # --- migration (relayed -> direct) --------------------------------------------------------

    def _budget(self, stream: Stream) -> RelayBudgetLike | None:
        if self._relay_budget is None:
            return None
        conn = stream.connection
        return self._relay_budget(conn) if conn.transport_name == _RELAYED else None

    def _on_connected(self, conn: MuxedConnection) -> None:
        """Host notification: a direct connection moves the peer's streams off the relay."""
        if conn.transport_name != _RELAYED and not self._closed:
            pc = self._peers.get(conn.remote_peer)
            if pc is not None:
                self._migrate(pc)

    def _migrate(self, pc: _PeerChannels) -> None:
        """Retire every relayed stream of the peer's encrypted channels (module docstring)."""
        for ch in pc.channels.values():
            if not ch.encrypted:
                continue
            moved = [r for r in ch.streams if r.relayed and r not in ch.draining]
            if not moved:
                continue
            self.counters["streams_migrated"] += len(moved)
            ch.draining.extend(moved)
            if ch.drained is None:
                ch.drained = self._loop.create_future()
            for rec in moved:
                if rec.local:
                    self._retire(rec=rec)  # FIN after a write under way; read on
                else:
                    rec.retired = True  # its opener closes it; we only read it
            if ch.primary is not None and ch.primary in ch.draining:
                ch.primary = None
                for other in reversed(ch.streams):
                    if other.writable and other not in ch.draining:
                        ch.primary = other
                        break
            self._log.info("moving %d %r stream(s) off the relayed connection", len(moved), ch.name)

    @staticmethod
    def _set_drained(ch: _Channel) -> None:
        fut = ch.drained
        ch.drained = None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _wait_drained(self, ch: _Channel) -> None:
        fut = ch.drained
        if fut is None:
            return
        try:
            async with asyncio.timeout(MIGRATION_DRAIN_TIMEOUT):
                await asyncio.shield(fut)
        except TimeoutError:
            self._log.warning(
                "relayed %r streams still open after %.0f s: delivering direct messages",
                ch.name,
                MIGRATION_DRAIN_TIMEOUT,
            )
            if ch.drained is fut:
                ch.draining.clear()
                self._set_drained(ch)

    async def close_handshake(self, peer: PeerId) -> None:
        """Half-close our handshake stream with ``peer`` (after ``finalize_handshake``).

        Its reader goes on until the peer closes too; a later handshake send opens a new one.
        """
        pc = self._peers.get(peer)
        ch = pc.channels.get(HANDSHAKE_STREAM) if pc is not None else None
        if ch is None:
            return
        for rec in list(ch.streams):
            rec.retired = True
            if rec.writing:
                rec.close_after_write = True
            elif rec.writable:
                rec.writable = False
                with contextlib.suppress(StreamError, TransportError):
                    await rec.stream.close_write()
        ch.primary = None

    # --- reading ---------------------------------------------------------------------------

    async def _read_loop(
        self, peer: PeerId, pc: _PeerChannels, ch: _Channel, rec: _StreamRec
    ) -> None:
        stream = rec.stream
        if ch.encrypted and pc.cipher is None:  # pragma: no cover - _serve checks it
            stream.reset(_REFUSED)
            self._drop_stream(ch, rec, reset=False)
            return
        reader = _Reader(self, peer, pc, ch, rec)
        reset = False
        try:
            reset = await reader.run()
        except RemoteProtocolError as exc:
            reset = True
            self._protocol_error(peer, ch.name, exc)
        except (StreamReset, StreamClosed, TransportError):
            pass  # reset by the peer, closed by us, or the connection went away
        except LocalProtocolError:  # the cipher was closed under us: the peer was dropped
            reset = True
        finally:
            reader.stop()
            rec.read_done = True
            self._drop_stream(ch, rec, reset=reset)
        # End of stream: the peer finished with it (Go abandons a stream after EOF).
        if rec.writing:  # a write of ours is under way on it: close once it is done
            rec.close_after_write = True
        else:
            with contextlib.suppress(StreamError, TransportError):
                await stream.close()
        if self._metrics_on:
            self._metrics.stream_closed(ch.name)

    def _protocol_error(self, peer: PeerId, name: str, exc: RemoteProtocolError) -> None:
        self.counters["protocol_errors"] += 1
        if self._metrics_on:
            self._metrics.protocol_error(PROTOCOL)
        self._log.warning(
            "bad frame from %s on stream %r: %s; resetting the stream", peer, name, exc
        )

    def _decryption_failed(
        self, peer: PeerId, name: str, failures: int, error: DecryptionFailed
    ) -> None:
        self.counters["decryption_failures"] += failures
        if self._metrics_on:
            for _ in range(failures):
                self._metrics.decryption_error()
            self._metrics.message_dropped("decryption_failed", failures)
        error.peer_id = peer
        error.stream = name
        self._log.warning(
            "%d frame(s) from %s on stream %r failed to authenticate (%s); policy: %s",
            failures,
            peer,
            name,
            error,
            self._policy,
        )
        cb = self._on_decryption_error
        if cb is not None:
            try:
                cb(peer, error)
            except Exception:
                self._log.exception("on_decryption_error callback failed")
        if self._policy == "disconnect" and self._on_peer_error is not None:
            self._on_peer_error(peer, error)


_new = tuple.__new__  # IncomingMessage without its Python-level __new__
_NO_MESSAGES: Final[list[IncomingMessage]] = []  # shared, never mutated


class _Reader:
    """The receive side of one stream: decode, decrypt, count and queue what arrives.

    Two ways in, one state. The reader task (:meth:`run`) reads with ``await stream.read()``.
    A stream that offers push delivery (yamux: ``set_data_callback`` / ``read_nowait``) also
    calls :meth:`on_data` synchronously from the connection's receive path once the task has
    read from it once (so bytes a negotiation read ahead come first). While the destination
    queue has room, :meth:`on_data` takes the bytes there and then, and a waiting consumer
    gets the batch without the reader task being scheduled in between. What it declines (the
    queue is full, a relayed predecessor still drains, the task is busy with a batch) stays
    buffered in the stream and wakes the task, which waits for room; the yamux window stays
    closed meanwhile (C11). :meth:`on_data` never raises: a bad frame or a failed decryption
    resets the stream there, and the task then sees the reset.
    """

    __slots__ = (
        "busy",
        "ch",
        "cipher",
        "counters",
        "decoder",
        "encrypted",
        "mgr",
        "name",
        "peer",
        "pushing",
        "rec",
        "stream",
        "take",
        "wall",
    )

    def __init__(
        self, mgr: ChannelManager, peer: PeerId, pc: _PeerChannels, ch: _Channel, rec: _StreamRec
    ) -> None:
        self.mgr = mgr
        self.peer = peer
        self.ch = ch
        self.rec = rec
        self.stream = rec.stream
        self.name = ch.name
        self.encrypted = ch.encrypted
        self.cipher = pc.cipher
        self.decoder = (
            FrameDecoder.for_encrypted(mgr._max)
            if ch.encrypted
            else FrameDecoder.for_handshake(mgr._max)
        )
        self.counters = ch.counters
        self.wall = mgr._wall
        #: The task is handling a batch (the push path keeps out).
        self.busy = False
        #: Push delivery was requested from the stream (whether or not it offers it).
        self.pushing = False
        self.take: Callable[[], bytes] | None = None

    def _queue(self) -> MessageQueue:
        return self.mgr.messages if self.encrypted else self.mgr._route(self.peer)

    def _decode(
        self, data: bytes | bytearray | memoryview
    ) -> tuple[list[IncomingMessage], int, DecryptionFailed | None]:
        """Decode (and decrypt) one read and count it.

        Raises:
            RemoteProtocolError: a malformed frame.
        """
        if self.encrypted:
            msgs, failures, error = self.decoder.receive_encrypted(data, self.cipher)  # type: ignore[arg-type]
        else:
            msgs = self.decoder.receive_data(data)
            failures, error = 0, None
        if not msgs:
            return _NO_MESSAGES, failures, error
        now = self.wall()
        count = len(msgs)
        nbytes = len(msgs[0]) if count == 1 else sum(map(len, msgs))
        c = self.counters
        c.messages_received += count
        c.bytes_received += nbytes
        c.last_received_at = now
        mgr = self.mgr
        if mgr._metrics_on:
            mgr._metrics.message_received(self.name, nbytes, count)
        peer, name, im = self.peer, self.name, IncomingMessage
        if count == 1:  # a lone message (request/response traffic): no comprehension frame
            return [_new(im, (peer, name, msgs[0], now))], failures, error
        return [_new(im, (peer, name, m, now)) for m in msgs], failures, error

    async def run(self) -> bool:
        """The reader task: until end of stream. Returns whether to reset the stream.

        Raises:
            RemoteProtocolError: a malformed frame, or end of stream inside a frame.
        """
        read = self.stream.read
        mgr, ch, rec = self.mgr, self.ch, self.rec
        while True:
            data = await read()
            if not data:
                self.decoder.receive_data(b"")  # raises if the stream ended inside a frame
                return False
            self.busy = True
            try:
                items, failures, error = self._decode(data)
                if items:
                    if ch.drained is not None and not rec.relayed:
                        await mgr._wait_drained(ch)  # order across a move off the relay
                    await self._queue().put_batch(items)
            finally:
                self.busy = False
            if failures:
                assert error is not None
                mgr._decryption_failed(self.peer, self.name, failures, error)
                return True
            if not self.pushing:
                self._start_push()

    def _start_push(self) -> None:
        self.pushing = True
        stream = self.stream
        setter = getattr(stream, "set_data_callback", None)
        take = getattr(stream, "read_nowait", None)
        if setter is not None and take is not None:
            self.take = take
            setter(self.on_data)

    def stop(self) -> None:
        """No more push delivery (the reader is ending)."""
        if self.take is not None:
            self.take = None
            with contextlib.suppress(Exception):
                self.stream.set_data_callback(None)  # type: ignore[attr-defined]

    def on_data(self) -> None:
        """Push delivery: the stream has new bytes (called from its receive path)."""
        take = self.take
        if self.busy or take is None:
            return
        mgr = self.mgr
        queue = mgr.messages if self.encrypted else mgr._route(self.peer)
        if len(queue._buf) >= queue._capacity or queue._closed:
            return  # the task waits for room
        if self.ch.drained is not None and not self.rec.relayed:
            return  # the task waits for the relayed streams to end
        try:
            data = take()
            if not data:
                return
            items, failures, error = self._decode(data)
        except RemoteProtocolError as exc:
            mgr._protocol_error(self.peer, self.name, exc)
            self._abort()
            return
        except Exception:  # a closed cipher or decoder: the peer is being dropped
            self._abort()
            return
        if items:
            queue.put_nowait(items)
        if failures:
            assert error is not None
            mgr._decryption_failed(self.peer, self.name, failures, error)
            self._abort()

    def _abort(self) -> None:
        self.stop()
        self.mgr._drop_stream(self.ch, self.rec, reset=True)  # the task sees the reset


async def _close_write(stream: Stream) -> None:
    with contextlib.suppress(StreamError, TransportError):
        await stream.close_write()


def _as_stream_error(exc: BaseException, peer: PeerId, name: str) -> GlueberryError:
    if isinstance(exc, StreamError | TransportError):
        if exc.peer_id is None:
            exc.peer_id = peer
        if exc.stream is None:
            exc.stream = name
        return exc
    return StreamReset(f"write failed: {exc!r}", peer_id=peer, stream=name)
