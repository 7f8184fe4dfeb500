"""In-process transport: connected ``RawConnection`` pairs and a listener/dialer network.

For tests of the full stack without sockets (architecture C12; rust-libp2p ``MemoryTransport``,
trio ``memory_stream_pump``). Addresses are ``("memory", port)``; the multiaddr form is
``/memory/<port>``.

Theory of operation
-------------------
:func:`memory_pair` returns two :class:`MemoryConnection` ends sharing one pipe. ``write``
appends to the writer's outbox and schedules a *pump* with ``loop.call_soon``; the pump moves
bytes to the other end, which either buffers them (pull mode, bounded) or hands them to its
receiver (push mode). Delivery is therefore never synchronous with ``write`` (no re-entrancy),
and it stops while the reader is paused or its pull buffer is full: the writer's outbox then
grows past :data:`WRITE_HIGH_WATER` and ``drain()`` waits, exactly like a socket.

Knobs (per pipe):

* ``max_chunk``: at most this many bytes per delivery; ``trickle=True`` means 1 byte per
  loop iteration, to exercise every parser's "need more data" path end to end.
* ``drop_after``: after this many bytes in total (both directions) have been delivered, the
  pipe breaks: both ends see ``connection_lost(ConnectionResetError)``.

Close semantics follow TCP as :mod:`glueberry.transport.tcp` exposes it: ``close()`` flushes
the outbox, then the peer sees EOF and closes its side; ``abort()`` drops the outbox and the
peer sees a reset. Callback order for a receiver: ``data_received* [eof_received]
connection_lost`` (exactly once).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from glueberry.errors import ConnectError, ConnectionLost, LocalProtocolError
from glueberry.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from glueberry.transport.base import ByteReceiver

logger = logging.getLogger(__name__)

PULL_BUFFER_LIMIT: Final = 256 * 1024
WRITE_HIGH_WATER: Final = 256 * 1024
WRITE_LOW_WATER: Final = 64 * 1024
#: Largest chunk moved per pump step when no ``max_chunk`` is set.
DEFAULT_CHUNK: Final = 64 * 1024


class _Pipe:
    """State shared by the two ends: knobs and the drop budget."""

    def __init__(self, max_chunk: int | None, drop_after: int | None) -> None:
        if max_chunk is not None and max_chunk < 1:
            raise ValueError("max_chunk must be >= 1")
        if drop_after is not None and drop_after < 0:
            raise ValueError("drop_after must be >= 0")
        self.max_chunk = max_chunk or DEFAULT_CHUNK
        self.budget = drop_after  # bytes left before the pipe breaks; None = unlimited
        self.broken = False


class MemoryConnection:
    """One end of an in-memory byte pipe; implements ``RawConnection``."""

    transport_name = "memory"

    def __init__(
        self,
        pipe: _Pipe,
        local_address: tuple[str, int],
        remote_address: tuple[str, int],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._pipe = pipe
        self._peer: MemoryConnection | None = None
        self.local_address = local_address
        self.remote_address = remote_address
        # inbound side
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._receiver: ByteReceiver | None = None
        self._paused = False
        # outbound side
        self._outbox: collections.deque[bytes] = collections.deque()
        self._outbox_size = 0
        self._pump_scheduled = False
        self._closing = False
        self._write_paused = False
        self._drain_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # lifecycle
        self._lost = False
        self._lost_exc: BaseException | None = None
        self._closed_fut: asyncio.Future[None] = self._loop.create_future()

    def __repr__(self) -> str:
        return f"<MemoryConnection {self.local_address} -> {self.remote_address}>"

    # --- RawConnection --------------------------------------------------------------------

    async def read(self) -> bytes:
        """Pull mode: all buffered bytes (at least one), or ``b""`` at EOF / local close.

        Raises:
            ConnectionLost: the pipe was reset (peer abort or ``drop_after``).
        """
        if self._receiver is not None:
            raise LocalProtocolError("read() in push mode", protocol="memory")
        if self._read_waiter is not None:
            raise LocalProtocolError("concurrent read()", protocol="memory")
        while not self._chunks:
            if self._eof:
                return b""
            if self._lost:
                if self._lost_exc is not None:
                    raise ConnectionLost("memory connection reset") from self._lost_exc
                return b""
            fut = self._loop.create_future()
            self._read_waiter = fut
            try:
                await fut
            finally:
                self._read_waiter = None
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._peer_pump()
        return data

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` for the peer; never blocks.

        Raises:
            ConnectionLost: this end is closed or the pipe is broken.
        """
        if self._lost or self._closing:
            raise ConnectionLost("write on a closed memory connection")
        if not data:
            return
        chunk = bytes(data)
        self._outbox.append(chunk)
        self._outbox_size += len(chunk)
        if self._outbox_size > WRITE_HIGH_WATER:
            self._write_paused = True
        self._schedule_pump()

    async def drain(self) -> None:
        """Wait while more than the high-water mark is queued for the peer.

        Raises:
            ConnectionLost: the connection was lost while (or before) waiting.
        """
        if self._lost:
            raise ConnectionLost("memory connection lost") from self._lost_exc
        if not self._write_paused:
            return
        fut = self._loop.create_future()
        self._drain_waiters.append(fut)
        try:
            await fut
        finally:
            try:
                self._drain_waiters.remove(fut)
            except ValueError:
                pass
        if self._lost:
            raise ConnectionLost("memory connection lost") from self._lost_exc

    def set_receiver(self, receiver: ByteReceiver) -> None:
        """Switch to push mode; replays buffered bytes, EOF and loss to ``receiver`` first."""
        if self._receiver is not None:
            raise LocalProtocolError("receiver already set", protocol="memory")
        if self._read_waiter is not None:
            raise LocalProtocolError("set_receiver() while a read() is pending", protocol="memory")
        self._receiver = receiver
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            receiver.data_received(data)
        if self._eof:
            receiver.eof_received()
        if self._lost:
            receiver.connection_lost(self._lost_exc)
        else:
            self._peer_pump()

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._peer_pump()

    def close(self) -> None:
        """Flush the outbox, then send EOF and close (idempotent)."""
        if self._lost or self._closing:
            return
        self._closing = True
        self._schedule_pump()

    def abort(self) -> None:
        """Close at once, dropping queued bytes; the peer sees a reset (idempotent)."""
        if self._lost:
            return
        self._outbox.clear()
        self._outbox_size = 0
        peer = self._peer
        self._connection_lost(None)
        if peer is not None and not peer._lost:
            self._loop.call_soon(peer._connection_lost, ConnectionResetError("peer aborted"))

    def is_closing(self) -> bool:
        return self._lost or self._closing

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)

    # --- pipe internals ------------------------------------------------------------------

    def _accepting(self) -> bool:
        """Can this end take more inbound bytes now?"""
        if self._lost or self._paused:
            return False
        return self._receiver is not None or self._buffered < PULL_BUFFER_LIMIT

    def _peer_pump(self) -> None:
        """Our inbound side freed up: let the peer's pump run."""
        if self._peer is not None:
            self._peer._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and not self._lost:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        peer = self._peer
        if self._lost or peer is None:
            return
        pipe = self._pipe
        trickle = pipe.max_chunk == 1
        while self._outbox and peer._accepting():
            head = self._outbox[0]
            n = min(len(head), pipe.max_chunk)
            if pipe.budget is not None:
                n = min(n, pipe.budget)
            if n < len(head):
                chunk = head[:n]
                self._outbox[0] = head[n:]
            else:
                chunk = self._outbox.popleft()
            self._outbox_size -= n
            if pipe.budget is not None:
                pipe.budget -= n
            if n:
                peer._incoming(chunk)
            if pipe.budget == 0:
                self._break()
                return
            if trickle:
                break
        if self._write_paused and self._outbox_size <= WRITE_LOW_WATER:
            self._write_paused = False
            self._wake_drainers()
        if self._outbox:
            if trickle and peer._accepting():
                self._schedule_pump()
            return
        if self._closing and not peer._paused:
            # Everything flushed: EOF to the peer, then we are closed.
            self._connection_lost(None)
            if not peer._lost:
                peer._eof_received()

    def _incoming(self, chunk: bytes) -> None:
        receiver = self._receiver
        if receiver is not None:
            receiver.data_received(chunk)
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._wake_reader()

    def _eof_received(self) -> None:
        self._eof = True
        if self._receiver is not None:
            self._receiver.eof_received()
        else:
            self._wake_reader()
        # As on TCP: after EOF this end closes itself, flushing what it queued (the peer is
        # gone, so the flush only matters for ordering; nothing more is delivered).
        self._outbox.clear()
        self._outbox_size = 0
        self._connection_lost(None)

    def _break(self) -> None:
        self._pipe.broken = True
        peer = self._peer
        reset = ConnectionResetError("memory pipe dropped (drop_after reached)")
        self._connection_lost(reset)
        if peer is not None:
            peer._connection_lost(reset)

    def _connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._lost_exc = exc
        self._outbox.clear()
        self._outbox_size = 0
        self._write_paused = False
        self._wake_reader()
        self._wake_drainers()
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        if self._receiver is not None:
            self._receiver.connection_lost(exc)

    def _wake_reader(self) -> None:
        fut = self._read_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _wake_drainers(self) -> None:
        while self._drain_waiters:
            fut = self._drain_waiters.popleft()
            if not fut.done():
                fut.set_result(None)


def memory_pair(
    *,
    trickle: bool = False,
    max_chunk: int | None = None,
    drop_after: int | None = None,
    addresses: tuple[tuple[str, int], tuple[str, int]] = (("memory", 1), ("memory", 2)),
) -> tuple[MemoryConnection, MemoryConnection]:
    """Two connected ends. Must be called with a running event loop.

    Args:
        trickle: deliver one byte per loop iteration (same as ``max_chunk=1``).
        max_chunk: at most this many bytes per delivery.
        drop_after: reset the pipe after this many bytes (both directions together).
        addresses: the local addresses of the first and second end.
    """
    pipe = _Pipe(1 if trickle else max_chunk, drop_after)
    a = MemoryConnection(pipe, addresses[0], addresses[1])
    b = MemoryConnection(pipe, addresses[1], addresses[0])
    a._peer = b
    b._peer = a
    return a, b


MemoryConnectionCallback = Callable[[MemoryConnection], None]


class MemoryListener:
    """A listener on a :class:`MemoryNetwork` port; calls ``on_connection(conn)`` per dial."""

    def __init__(self, network: MemoryNetwork, port: int, on_connection: MemoryConnectionCallback):
        self._network = network
        self.port = port
        self._on_connection = on_connection
        self._closed = False

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("memory", self.port)]

    @property
    def multiaddrs(self) -> list[Multiaddr]:
        """How :class:`MemoryTransport` spells this listener's address."""
        return [Multiaddr.from_socket_address(MemoryTransport.HOST, self.port)]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._network._unbind(self)

    async def wait_closed(self) -> None:
        self.close()

    async def __aenter__(self) -> MemoryListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class MemoryNetwork:
    """A namespace of in-memory ports: :meth:`listen` binds one, :meth:`dial` connects.

    The knobs given here apply to every pipe it creates unless :meth:`dial` overrides them.
    """

    def __init__(
        self,
        *,
        trickle: bool = False,
        max_chunk: int | None = None,
        drop_after: int | None = None,
    ) -> None:
        self.trickle = trickle
        self.max_chunk = max_chunk
        self.drop_after = drop_after
        self._listeners: dict[int, MemoryListener] = {}
        self._ports = itertools.count(1)
        #: Dials that found no listener (for tests).
        self.refused = 0

    def _free_port(self) -> int:
        while True:
            port = 40000 + next(self._ports)
            if port not in self._listeners:
                return port

    async def listen(self, port: int, on_connection: MemoryConnectionCallback) -> MemoryListener:
        """Bind ``port`` (0 picks a free one).

        Raises:
            ConnectError: the port is taken.
        """
        if port == 0:
            port = self._free_port()
        if port in self._listeners:
            raise ConnectError(f"memory port {port} in use")
        listener = MemoryListener(self, port, on_connection)
        self._listeners[port] = listener
        return listener

    def _unbind(self, listener: MemoryListener) -> None:
        if self._listeners.get(listener.port) is listener:
            del self._listeners[listener.port]

    async def dial(
        self,
        port: int,
        *,
        trickle: bool | None = None,
        max_chunk: int | None = None,
        drop_after: int | None = None,
    ) -> MemoryConnection:
        """Connect to ``port``; the listener's callback gets the other end.

        Raises:
            ConnectError: nothing listens on ``port``.
        """
        await asyncio.sleep(0)  # a dial is never synchronous, as with sockets
        listener = self._listeners.get(port)
        if listener is None:
            self.refused += 1
            raise ConnectError(f"nothing listens on memory port {port}")
        ours, theirs = memory_pair(
            trickle=self.trickle if trickle is None else trickle,
            max_chunk=max_chunk if max_chunk is not None else self.max_chunk,
            drop_after=drop_after if drop_after is not None else self.drop_after,
            addresses=(("memory", self._free_port()), ("memory", port)),
        )
        listener._on_connection(theirs)
        return ours


class MemoryTransport:
    """Multiaddr front end of a :class:`MemoryNetwork`, a stand-in for TCP in tests.

    The multiaddr table has no ``/memory`` protocol yet, so memory ports are spelled as
    loopback TCP addresses: ``/ip4/<any>/tcp/<port>`` dials memory port ``<port>``, and
    connections report ``/ip4/127.0.0.1/tcp/<port>``. A host given only this transport
    therefore runs its whole stack without a socket. Satisfies
    :class:`glueberry.net.host.Transport`.
    """

    name = "memory"
    HOST: Final = "127.0.0.1"

    def __init__(self, network: MemoryNetwork) -> None:
        self.network = network

    def can_dial(self, addr: Multiaddr) -> bool:
        return addr.transport_kind() == "tcp" and addr.ip is not None

    def can_listen(self, addr: Multiaddr) -> bool:
        return self.can_dial(addr)

    def to_multiaddr(self, address: tuple[str, int]) -> Multiaddr:
        return Multiaddr.from_socket_address(self.HOST, address[1])

    async def dial(self, addr: Multiaddr, *, timeout: float | None) -> MemoryConnection:  # noqa: ASYNC109
        return await self.network.dial(addr.to_socket_address().port)

    async def listen(
        self, addr: Multiaddr, on_connection: MemoryConnectionCallback
    ) -> MemoryListener:
        return await self.network.listen(addr.to_socket_address().port, on_connection)
