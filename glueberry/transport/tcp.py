"""TCP transport on ``asyncio.BufferedProtocol`` (IPv4 and IPv6).

Spec: libp2p connections over TCP carry an upgrade pipeline (multistream-select, a security
handshake, a muxer), https://github.com/libp2p/specs/blob/master/connections/README.md. This
module only moves bytes; the upgrade lives in :mod:`glueberry.net.upgrader`.

Theory of operation
-------------------
:class:`TcpConnection` *is* the ``asyncio.BufferedProtocol`` of its socket, so a received
chunk costs one callback and no task switch (performance.md: a ``StreamReader`` adds about
0.5 µs per message). The socket is read with ``recv_into`` into one receive buffer per thread
(:data:`RECV_BUFFER_SIZE`), shared by every connection of the thread's event loop: a chunk is
consumed synchronously in ``buffer_updated`` before the loop reads any other socket. A plain
``Protocol`` would have asyncio allocate a 256 KiB ``bytes`` per read and shrink it to the
bytes received; above glibc's mmap threshold that is an ``mmap``/``mremap``/``munmap`` per
read, tens of microseconds per small message. It implements
:class:`glueberry.transport.base.RawConnection` in two modes:

* pull mode (connection set-up): chunks are buffered and ``await read()`` returns everything
  buffered so far. When more than :data:`PULL_BUFFER_LIMIT` bytes are waiting the socket is
  paused, so a peer that floods a half-finished handshake cannot grow memory.
* push mode (data path): after :meth:`TcpConnection.set_receiver` every chunk goes straight to
  the receiver's ``data_received`` from the loop callback. Bytes buffered in pull mode, and an
  EOF or loss already seen, are replayed synchronously inside ``set_receiver`` first. A
  receiver whose class sets ``receives_memoryview = True`` gets a ``memoryview`` of the shared
  receive buffer, valid only during the call (the Noise layer decrypts it at once and keeps
  copies of partial frames); any other receiver gets ``bytes``.

Writes never block; ``await drain()`` waits while the transport is above its write high-water
mark (``pause_writing``/``resume_writing``), which is how backpressure reaches the socket.
Not every write can wait, though: protocol replies (yamux ACK/RST for a peer's SYNs, ping
replies, window updates) are written from the receive path. A peer that sends such frames
but never reads would make those replies pile up in our buffer without bound, so while the
buffer is over its high-water mark the connection must keep *moving* bytes to the kernel:
if the peer acknowledges none of our bytes for :data:`WRITE_STALL_TIMEOUT` seconds (go-yamux's
``ConnectionWriteTimeout``), the connection is aborted and its owner sees
:class:`~glueberry.errors.ConnectionLost` (bad-input list B-15/B-16, a peer that never reads).

Protocol callback order (asyncio's): ``connection_made -> data_received* -> eof_received? ->
connection_lost``. On EOF the transport is closed (queued writes are flushed first): libp2p
never half-closes TCP, and closing at once means a dead peer cannot pin a socket.

Listeners (:class:`TcpListener`) call a plain synchronous ``on_connection(conn)`` callback for
every accepted socket and create no tasks themselves: the owner (the upgrader) decides which
task group runs the connection, so nothing outlives its owner (architecture C10).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import logging
import socket
import struct
import termios
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, cast

from glueberry.errors import ConnectError, ConnectionLost, ConnectTimeout, LocalProtocolError
from glueberry.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from glueberry.transport.base import ByteReceiver

logger = logging.getLogger(__name__)

#: In pull mode, stop reading from the socket while this many bytes wait unread.
PULL_BUFFER_LIMIT: Final = 256 * 1024
#: Transport write buffer high-water mark; ``drain()`` waits above it.
WRITE_HIGH_WATER: Final = 1024 * 1024
WRITE_LOW_WATER: Final = 256 * 1024
#: Abort when no queued byte reaches the kernel for this long while over the high-water mark.
WRITE_STALL_TIMEOUT: Final = 10.0
#: Bytes one ``recv_into`` may fill. Half of asyncio's 256 KiB: every transient buffer of the
#: receive path (decrypted batch, the muxer's per-read chunk) scales with it, and the
#: listener's peak RSS drops by about 0.7 MB, for a few percent more receive calls in bulk.
RECV_BUFFER_SIZE: Final = 128 * 1024


class _RecvBuffer(threading.local):
    """The receive buffer of one thread's event loop (allocated on first use there)."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(RECV_BUFFER_SIZE))


_recv_buffer = _RecvBuffer()

ConnectionCallback = Callable[["TcpConnection"], None]


def _kernel_unacked(transport: asyncio.Transport) -> int:
    """Bytes in the socket's send queue the peer has not acknowledged (Linux ``TIOCOUTQ``;
    0 where it is not available)."""
    sock = transport.get_extra_info("socket")
    try:
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (AttributeError, OSError, ValueError):
        return 0
    return int(struct.unpack("i", out)[0])


def _addr2(addr: object) -> tuple[str, int]:
    """``(host, port)`` from a sockname/peername (IPv6 gives four fields; keep two)."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return ("", 0)


class TcpConnection(asyncio.BufferedProtocol):
    """One TCP connection: an ``asyncio.BufferedProtocol`` that implements ``RawConnection``.

    Not constructed directly: use :func:`dial` or :class:`TcpListener`.
    """

    transport_name = "tcp"
    #: See :data:`WRITE_STALL_TIMEOUT`; ``None`` disables the check.
    write_stall_timeout: float | None = WRITE_STALL_TIMEOUT

    def __init__(self, on_made: ConnectionCallback | None = None) -> None:
        self._on_made = on_made
        self._transport: asyncio.Transport | None = None
        self.local_address: tuple[str, int] = ("", 0)
        self.remote_address: tuple[str, int] = ("", 0)
        # pull mode state
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._receiver: ByteReceiver | None = None
        self._borrow = False  # the receiver takes a memoryview of the receive buffer
        # flow control
        self._user_paused = False
        self._pull_paused = False
        self._write_paused = False
        self._drain_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._written = 0  # bytes handed to the transport, ever
        self._stall_sent = 0  # bytes that had left the buffer at the last stall check
        self._stall_timer: asyncio.TimerHandle | None = None
        self._stalled = False
        # lifecycle
        self._lost = False
        self._lost_exc: BaseException | None = None
        self._closed_fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<TcpConnection {self.local_address} -> {self.remote_address}>"

    # --- asyncio.Protocol callbacks -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Duck-typed: uvloop's TCP transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio already sets this on TCP sockets; be explicit, it matters for latency.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local_address = _addr2(transport.get_extra_info("sockname"))
        self.remote_address = _addr2(transport.get_extra_info("peername"))
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        if self._on_made is not None:
            on_made, self._on_made = self._on_made, None
            on_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _recv_buffer.view

    def buffer_updated(self, nbytes: int) -> None:
        # recv_into() filled _recv_buffer.view[:nbytes]; nothing else reads the buffer before
        # this returns (one loop per thread, and the loop reads one socket at a time).
        data = _recv_buffer.view[:nbytes]
        receiver = self._receiver
        if receiver is not None and self._borrow:
            receiver.data_received(data)  # type: ignore[arg-type]  # see receives_memoryview
        else:
            self.data_received(bytes(data))

    def data_received(self, data: bytes) -> None:
        receiver = self._receiver
        if receiver is not None:
            receiver.data_received(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > PULL_BUFFER_LIMIT and not self._pull_paused:
            self._pull_paused = True
            self._apply_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        if self._receiver is not None:
            self._receiver.eof_received()
        else:
            self._wake_reader()
        return False  # let asyncio close the transport (after flushing writes)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._cancel_stall_timer()
        if exc is None and self._stalled:
            exc = ConnectionLost("the peer stopped reading: our writes stalled")
        self._lost_exc = exc
        self._transport = None
        self._wake_reader()
        while self._drain_waiters:
            fut = self._drain_waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        if self._receiver is not None:
            self._receiver.connection_lost(exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        transport = self._transport
        timeout = self.write_stall_timeout
        if transport is not None and timeout is not None and self._stall_timer is None:
            self._stall_sent = self._delivered(transport)
            self._stall_timer = asyncio.get_running_loop().call_later(timeout, self._check_stall)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._cancel_stall_timer()
        while self._drain_waiters:
            fut = self._drain_waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    # --- RawConnection --------------------------------------------------------------------

    async def read(self) -> bytes:
        """Pull mode: all buffered bytes (at least one), or ``b""`` at EOF.

        A connection closed locally also reads as ``b""``.

        Raises:
            ConnectionLost: the connection broke (reset by the peer or the OS).
            LocalProtocolError: called in push mode or concurrently with another read.
        """
        if self._receiver is not None:
            raise LocalProtocolError("read() in push mode", protocol="tcp")
        if self._read_waiter is not None:
            raise LocalProtocolError("concurrent read()", protocol="tcp")
        while not self._chunks:
            if self._eof:
                return b""
            if self._lost:
                if self._lost_exc is not None:
                    raise ConnectionLost("connection lost") from self._lost_exc
                return b""
            fut = asyncio.get_running_loop().create_future()
            self._read_waiter = fut
            try:
                await fut
            finally:
                self._read_waiter = None
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._pull_paused:
            self._pull_paused = False
            self._apply_reading()
        return data

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` on the socket; never blocks.

        Raises:
            ConnectionLost: the connection is already closed or lost.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionLost("write on a closed TCP connection")
        transport.write(data)
        self._written += len(data)

    async def drain(self) -> None:
        """Wait while the socket's write buffer is above its high-water mark.

        Raises:
            ConnectionLost: the connection was lost while (or before) waiting.
        """
        if self._lost:
            raise ConnectionLost("TCP connection lost") from self._lost_exc
        if not self._write_paused:
            return
        fut = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        try:
            await fut
        finally:
            # Cancelled waiters leave the deque here; completed ones were popped already.
            with contextlib.suppress(ValueError):
                self._drain_waiters.remove(fut)
        if self._lost:
            raise ConnectionLost("TCP connection lost") from self._lost_exc

    def set_receiver(self, receiver: ByteReceiver) -> None:
        """Switch to push mode; replays buffered bytes, EOF and loss to ``receiver`` first."""
        if self._receiver is not None:
            raise LocalProtocolError("receiver already set", protocol="tcp")
        if self._read_waiter is not None:
            raise LocalProtocolError("set_receiver() while a read() is pending", protocol="tcp")
        self._receiver = receiver
        self._borrow = getattr(type(receiver), "receives_memoryview", False) is True
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            receiver.data_received(data)
        if self._pull_paused:
            self._pull_paused = False
            self._apply_reading()
        if self._eof:
            receiver.eof_received()
        if self._lost:
            receiver.connection_lost(self._lost_exc)

    def pause_reading(self) -> None:
        self._user_paused = True
        self._apply_reading()

    def resume_reading(self) -> None:
        self._user_paused = False
        self._apply_reading()

    def close(self) -> None:
        """Flush queued bytes, then close the socket (idempotent)."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close the socket at once, dropping queued bytes (idempotent)."""
        if self._transport is not None:
            self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    async def wait_closed(self) -> None:
        """Wait until the socket is closed (``connection_lost`` has run)."""
        await asyncio.shield(self._closed_fut)

    # --- internals ------------------------------------------------------------------------

    def _check_stall(self) -> None:
        """Timer while over the high-water mark: abort if no byte left the buffer since the
        last check (the peer reads nothing), else check again later."""
        self._stall_timer = None
        transport = self._transport
        timeout = self.write_stall_timeout
        if transport is None or not self._write_paused or timeout is None:
            return
        sent = self._delivered(transport)
        if sent > self._stall_sent:
            self._stall_sent = sent
            self._stall_timer = asyncio.get_running_loop().call_later(timeout, self._check_stall)
            return
        logger.warning(
            "TCP peer %s acknowledged none of %d queued bytes for %.3g s: aborting",
            self.remote_address,
            self._written - sent,
            timeout,
        )
        self._stalled = True
        transport.abort()

    def _delivered(self, transport: asyncio.Transport) -> int:
        """Bytes written so far that the peer's TCP stack acknowledged."""
        return self._written - transport.get_write_buffer_size() - _kernel_unacked(transport)

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _wake_reader(self) -> None:
        fut = self._read_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _apply_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        want_paused = self._user_paused or self._pull_paused
        if want_paused and transport.is_reading():
            transport.pause_reading()
        elif not want_paused and not transport.is_reading():
            transport.resume_reading()


_AddrInfo = tuple[int, int, int, str, tuple[object, ...]]


async def _resolve_passive(host: str, port: int) -> Sequence[_AddrInfo]:
    """``getaddrinfo`` for a listen address; IP literals without the executor.

    ``loop.getaddrinfo`` always runs in the default thread pool, and a ``str`` host is
    encoded with the ``idna`` codec: the first listen would start a thread and import
    ``unicodedata`` (together about 2 MB of resident memory) just to parse ``127.0.0.1``.
    A numeric host as ASCII bytes with ``AI_NUMERICHOST`` never blocks, so it runs inline.
    """
    flags = socket.AI_PASSIVE
    try:
        numeric = host.encode("ascii")
    except UnicodeEncodeError:
        numeric = None
    if numeric is not None:
        try:
            return socket.getaddrinfo(
                numeric, port, type=socket.SOCK_STREAM, flags=flags | socket.AI_NUMERICHOST
            )
        except socket.gaierror:
            pass  # a name: resolve it the usual way
    loop = asyncio.get_running_loop()
    return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)


# A timeout argument (not only asyncio.timeout) because the upgrader passes per-address
# connect deadlines down, as go-libp2p does with its dial timeout.
async def dial(
    host: str,
    port: int,
    timeout: float | None = None,  # noqa: ASYNC109
    *,
    family: int = 0,
    local_addr: tuple[str, int] | None = None,
) -> TcpConnection:
    """Open a TCP connection to ``(host, port)``.

    Args:
        host: an IPv4 or IPv6 literal (or a name the OS resolves).
        port: the TCP port.
        timeout: seconds for the whole connect, ``None`` for the OS default.
        family: restrict name resolution to ``AF_INET``/``AF_INET6`` (``/dns4``, ``/dns6``).
        local_addr: bind the socket to this ``(host, port)`` first.

    Raises:
        ConnectTimeout: the connect did not finish within ``timeout``.
        ConnectError: the OS refused or failed the connect.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            _, proto = await loop.create_connection(
                TcpConnection, host, port, family=family, local_addr=local_addr
            )
    except TimeoutError as exc:
        raise ConnectTimeout(f"TCP connect to {host}:{port} timed out") from exc
    except OSError as exc:
        raise ConnectError(f"TCP connect to {host}:{port} failed: {exc.strerror}") from exc
    return proto


class TcpListener:
    """Listening TCP sockets; calls ``on_connection(conn)`` for each accepted connection.

    ``on_connection`` runs synchronously in the loop's callback (from ``connection_made``) and
    must not block; it typically hands the connection to a task group. Use as an async
    context manager, or call :meth:`close` and ``await`` :meth:`wait_closed`. Closing stops
    accepting; connections already handed out belong to their owner.

    Accepting is done here rather than by ``loop.create_server``: sockets are accepted in a
    synchronous reader callback into a queue this object owns, and one accept task owned by
    this object (cancelled and awaited by :meth:`wait_closed`) wraps them in transports. So a
    socket accepted just as the listener closes is closed, never leaked (with
    ``create_server`` on 3.11 such a socket is dropped unclosed).
    """

    def __init__(
        self, socks: list[socket.socket], on_connection: ConnectionCallback, backlog: int
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._socks = socks
        self._on_connection = on_connection
        self._backlog = backlog
        self._queue: collections.deque[socket.socket] = collections.deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._closed = False
        #: Accepted sockets that failed before becoming connections (for diagnostics).
        self.accept_errors = 0
        self.addresses: list[tuple[str, int]] = [_addr2(s.getsockname()) for s in socks]
        #: :attr:`addresses` as multiaddrs.
        self.multiaddrs: list[Multiaddr] = [
            Multiaddr.from_socket_address(h, p) for h, p in self.addresses
        ]
        for sock in socks:
            self._loop.add_reader(sock.fileno(), self._on_readable, sock)
        self._task = self._loop.create_task(self._accept_loop(), name=f"tcp-accept {self}")

    def __repr__(self) -> str:
        return f"<TcpListener {self.addresses}>"

    @classmethod
    async def create(
        cls,
        host: str,
        port: int,
        on_connection: ConnectionCallback,
        *,
        backlog: int = 128,
    ) -> TcpListener:
        """Bind and listen on ``(host, port)`` (port 0 picks a free port).

        ``host`` may resolve to several addresses (one socket each); ``"::"`` is bound
        IPv6-only, so listen on ``"0.0.0.0"`` as well for both families.

        Raises:
            ConnectError: the address cannot be resolved or bound.
        """
        try:
            infos = await _resolve_passive(host, port)
        except OSError as exc:
            raise ConnectError(f"cannot resolve listen address {host!r}") from exc
        socks: list[socket.socket] = []
        try:
            seen: set[tuple[object, ...]] = set()
            for family, type_, proto, _, sockaddr in infos:
                if (family, sockaddr) in seen:
                    continue
                seen.add((family, sockaddr))
                sock = socket.socket(family, type_, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(sockaddr)
                sock.listen(backlog)
                sock.setblocking(False)
        except OSError as exc:
            for sock in socks:
                sock.close()
            hint = " (address in use)" if exc.errno == errno.EADDRINUSE else ""
            raise ConnectError(f"cannot listen on {host}:{port}{hint}: {exc.strerror}") from exc
        if not socks:
            raise ConnectError(f"no address to listen on for {host!r}")
        return cls(socks, on_connection, backlog)

    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(self._backlog):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # EMFILE/ENFILE/ECONNABORTED...: log and keep serving; the kernel keeps the
                # pending connection queued for the next readiness event.
                self.accept_errors += 1
                logger.warning("accept() failed on %s: %s", self.addresses, exc)
                break
            conn.setblocking(False)
            self._queue.append(conn)
        if self._queue and self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _accept_loop(self) -> None:
        def factory() -> TcpConnection:
            return TcpConnection(self._on_connection)

        while True:
            while self._queue:
                conn = self._queue.popleft()
                try:
                    await self._loop.connect_accepted_socket(factory, conn)
                except OSError as exc:
                    self.accept_errors += 1
                    logger.debug("accepted socket failed: %s", exc)
                    conn.close()
            self._wakeup = self._loop.create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    def close(self) -> None:
        """Stop accepting and close the listening sockets (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for sock in self._socks:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._task.cancel()

    async def wait_closed(self) -> None:
        """Close, and wait until the accept task is gone; sockets not yet handed out close."""
        self.close()
        try:
            # wait() never raises the task's own CancelledError, only ours.
            await asyncio.wait({self._task})
        finally:
            while self._queue:
                self._queue.popleft().close()

    async def __aenter__(self) -> TcpListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.wait_closed()


class TcpTransport:
    """Multiaddr front end of this module: dials and listens on ``/ip4|ip6|dns*/…/tcp/<port>``.

    Satisfies :class:`glueberry.net.host.Transport`.
    """

    name = "tcp"

    def can_dial(self, addr: Multiaddr) -> bool:
        return addr.transport_kind() == "tcp"

    def can_listen(self, addr: Multiaddr) -> bool:
        return addr.transport_kind() == "tcp" and addr.ip is not None

    def to_multiaddr(self, address: tuple[str, int]) -> Multiaddr:
        """The multiaddr of a ``(host, port)`` this transport reported."""
        return Multiaddr.from_socket_address(address[0], address[1])

    async def dial(self, addr: Multiaddr, *, timeout: float | None) -> TcpConnection:  # noqa: ASYNC109
        """Dial ``addr``.

        Raises:
            ConnectError, ConnectTimeout: as :func:`dial`; ``MultiaddrError`` if ``addr`` is
            not a TCP address.
        """
        sa = addr.to_socket_address()
        family = {"dns4": socket.AF_INET, "dns6": socket.AF_INET6}.get(sa.family, 0)
        return await dial(sa.host, sa.port, timeout, family=family)

    async def listen(self, addr: Multiaddr, on_connection: ConnectionCallback) -> TcpListener:
        """Listen on ``addr`` (an IP address; port 0 picks one).

        Raises:
            ConnectError: the address cannot be bound.
        """
        sa = addr.to_socket_address()
        return await TcpListener.create(sa.host, sa.port, on_connection)
