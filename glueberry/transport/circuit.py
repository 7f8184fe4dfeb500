"""The ``/p2p-circuit`` transport: dial through a circuit relay v2, accept relayed connections.

Spec: https://github.com/libp2p/specs/blob/master/relay/circuit-v2.md (r3). The HOP/STOP
exchanges are the sans-I/O machines of :mod:`glueberry.proto.relay`; this module drives them
over host streams and turns the finished stream into a raw connection.

Theory of operation
-------------------
After a successful CONNECT (dialer, HOP stream) or STOP (target, STOP stream) the stream *is*
the relayed connection. :class:`CircuitConnection` adapts that muxed stream to the
:class:`~glueberry.transport.base.RawConnection` interface, and the host upgrades it exactly
like a TCP socket: multistream-select, Noise, yamux - end to end between the two peers; the
relay only sees ciphertext.

* Reading: one task reads the stream (bounded chunks) and feeds the pull buffer or, in push
  mode, the receiver. ``pause_reading`` stops that task from reading, so the stream's yamux
  window closes and the far end slows down (backpressure crosses the relay).
* Writing: ``write`` never blocks; the bytes go to an outbox drained by a second task into
  ``stream.write`` (which waits for yamux window). ``drain`` waits while more than
  :data:`WRITE_HIGH_WATER` bytes are pending.
* Both tasks run in the host's task group (``host.spawn``) and end with the connection.

Limits (circuit-v2 "Limit"; go/rust/js default 2 min and 128 KiB per direction). The relay
announces them and ends the circuit when one is used up. That end alone would look like a
random failure, and bytes written just before it would vanish without a word. So each end
enforces the announced limit itself: a write that would carry the connection past the data
limit sends only what still fits (what the relay would forward), is refused for the rest,
and is followed by a FIN; the duration limit has a local timer. In those cases, and when the
relay ends the stream (EOF or reset) while a budget is spent, the connection ends with
:class:`~glueberry.errors.ResourceLimitExceeded` (``limit="relay_circuit_data"`` or
``"relay_circuit_duration"``, ``remote=True``) as the cause of the
:class:`~glueberry.errors.ConnectionLost` the layers above see, and the ``on_limit`` callback
runs (the NAT manager publishes it as an event). Nothing is lost silently.

Listening: :meth:`CircuitTransport.listen` on ``/p2p-circuit`` registers the host's callback;
inbound STOP requests are accepted only while such a listener exists. The listener's
``multiaddrs`` are the relayed addresses of the current reservations
(``<relay addr>/p2p/<relay>/p2p-circuit``), set by the relay client
(:meth:`CircuitTransport.set_relay_addrs`); the host advertises them through identify.

Relayed connections are never used to reach a relay (no circuits over circuits), and
``remote_address`` of a circuit connection is ``(<circuit multiaddr text>, 0)`` -
:meth:`CircuitTransport.to_multiaddr` turns it back into the multiaddr.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from glueberry.errors import (
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    GlueberryError,
    LocalProtocolError,
    NodeStateError,
    RemoteProtocolError,
    ResourceLimitExceeded,
    StreamError,
    TransportError,
)
from glueberry.proto import relay as r
from glueberry.wire import pb_nat as pb
from glueberry.wire.multiaddr import Multiaddr, MultiaddrError

if TYPE_CHECKING:
    from glueberry.transport.base import ByteReceiver, MuxedConnection, Stream, StreamHandler
    from glueberry.wire.identity import PeerId

logger = logging.getLogger(__name__)

CIRCUIT: Final = "/p2p-circuit"
#: Largest chunk read from the relayed stream at once.
READ_CHUNK: Final = 64 * 1024
#: Pull mode: stop reading the stream while this many bytes wait unread.
PULL_BUFFER_LIMIT: Final = 256 * 1024
#: ``drain()`` waits while more than this many written bytes are not yet accepted.
WRITE_HIGH_WATER: Final = 256 * 1024
#: A relay reset within this many seconds of the duration limit is taken as that limit.
DURATION_SLACK: Final = 2.0
#: Seconds the last bytes of a spent data budget may take to reach the relay.
FLUSH_GRACE: Final = 2.0

LimitReason = Literal["data", "duration"]

#: The destination of a relayed dial whose address lost its ``/p2p/<peer>`` suffix on the
#: way to :meth:`CircuitTransport.dial` (see :func:`dial_target`).
_DIAL_TARGET: contextvars.ContextVar[PeerId | None] = contextvars.ContextVar(
    "glueberry_circuit_dial_target", default=None
)


@contextlib.contextmanager
def dial_target(peer: PeerId) -> Iterator[None]:
    """Name the destination of the relayed dials started inside this block.

    A host that strips the trailing ``/p2p/<peer>`` before calling the transport still lets
    :meth:`CircuitTransport.dial` know whom to CONNECT to: tasks started inside the block
    (the host's dial task) inherit this context.
    """
    token = _DIAL_TARGET.set(peer)
    try:
        yield
    finally:
        _DIAL_TARGET.reset(token)


Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class RelayHost(Protocol):
    """What the circuit transport needs from its host (:class:`glueberry.net.host.Host`).

    Structural, so this transport does not import the layer above it.
    """

    @property
    def peer_id(self) -> PeerId: ...

    async def connect(
        self, peer_id: PeerId | None = None, addrs: Iterable[str | Multiaddr] = ()
    ) -> MuxedConnection: ...

    async def new_stream(
        self,
        peer_id: PeerId,
        protocols: str | Sequence[str],
        *,
        addrs: Iterable[str | Multiaddr] | None = None,
    ) -> Stream: ...

    def spawn(
        self, coro: Coroutine[Any, Any, None], *, name: str | None = None
    ) -> asyncio.Task[None]: ...

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None: ...

    def remove_stream_handler(self, protocol: str) -> None: ...


class CircuitConnection:
    """A relayed connection: a HOP (dialer) or STOP (target) stream as a raw connection.

    Args:
        stream: the stream after the relay answered OK.
        spawn: starts a task in the owner's task group (``host.spawn``).
        limit: the limit the relay announced (``None``: unlimited).
        trailing: bytes that followed the relay's final message (the connection's first).
        relay: the relay's peer ID.
        remote_multiaddr: the far end's circuit address (``…/p2p-circuit/p2p/<peer>``).
        on_limit: called once with ``(connection, reason)`` when a limit ends it.
        enforce_limit: refuse writes past the data limit and end the connection when the
            duration is up (False: leave it to the relay; a reset is still classified).
        clock: monotonic seconds (for the duration limit).
    """

    transport_name = "circuit"

    def __init__(
        self,
        stream: Stream,
        *,
        spawn: Spawn,
        limit: pb.Limit | None,
        trailing: bytes,
        relay: PeerId,
        remote_multiaddr: Multiaddr,
        on_limit: Callable[[CircuitConnection, LimitReason], None] | None = None,
        enforce_limit: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self.limit = limit
        self.relay = relay
        self.remote_multiaddr = remote_multiaddr
        self.remote_address: tuple[str, int] = (str(remote_multiaddr), 0)
        self.local_address: tuple[str, int] = (CIRCUIT, 0)
        self._on_limit = on_limit
        self._clock = clock
        self.opened_at = clock()
        #: Bytes written to / read from the relayed stream so far.
        self.sent = 0
        self.received = 0
        #: Which limit ended the connection, if one did.
        self.limit_reached: LimitReason | None = None
        self._data_limit = (limit.data or 0) if limit is not None else 0
        self._duration = (limit.duration or 0) if limit is not None else 0
        self._enforce = enforce_limit
        # pull mode
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._receiver: ByteReceiver | None = None
        # reading control
        self._user_paused = False
        self._can_read = asyncio.Event()
        self._can_read.set()
        # writing
        self._outbox: collections.deque[bytes] = collections.deque()
        self._pending = 0
        self._writer_wake: asyncio.Event = asyncio.Event()
        self._drain_waiters: list[asyncio.Future[None]] = []
        # lifecycle
        self._closing = False
        self._finished = False
        self._reset_when_flushed: ResourceLimitExceeded | None = None
        self._error: BaseException | None = None
        self._closed_fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None
        if self._duration and enforce_limit:
            self._timer = asyncio.get_running_loop().call_later(
                self._duration, self._limit_hit, "duration"
            )
        if trailing:
            self._chunks.append(trailing)
            self._buffered = len(trailing)
            self.received += len(trailing)
        self._tasks: list[asyncio.Task[None]] = []
        try:
            self._tasks.append(spawn(self._read_loop()))
            self._tasks.append(spawn(self._write_loop()))
        except NodeStateError:
            self._finish(ConnectionLost("host is closing"), True)

    def __repr__(self) -> str:
        return f"<CircuitConnection to {self.remote_multiaddr} via {self.relay}>"

    # --- reading --------------------------------------------------------------------------

    async def read(self) -> bytes:
        """Pull mode: all buffered bytes (at least one), or ``b""`` at end of stream.

        Raises:
            ConnectionLost: the circuit failed (reset by the relay, a limit, ...).
            LocalProtocolError: called in push mode or concurrently.
        """
        if self._receiver is not None:
            raise LocalProtocolError("read() in push mode", protocol=CIRCUIT)
        if self._read_waiter is not None:
            raise LocalProtocolError("concurrent read()", protocol=CIRCUIT)
        while not self._chunks:
            if self._eof:
                return b""
            if self._finished:
                if self._error is not None:
                    raise ConnectionLost("relayed connection lost") from self._error
                return b""
            fut = asyncio.get_running_loop().create_future()
            self._read_waiter = fut
            try:
                await fut
            finally:
                self._read_waiter = None
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._apply_reading()
        return data

    def set_receiver(self, receiver: ByteReceiver) -> None:
        """Switch to push mode; buffered bytes, EOF and loss are replayed first."""
        if self._receiver is not None:
            raise LocalProtocolError("receiver already set", protocol=CIRCUIT)
        if self._read_waiter is not None:
            raise LocalProtocolError("set_receiver() while a read() is pending", protocol=CIRCUIT)
        self._receiver = receiver
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            receiver.data_received(data)
        self._apply_reading()
        if self._eof:
            receiver.eof_received()
        if self._finished:
            receiver.connection_lost(self._error)

    def pause_reading(self) -> None:
        self._user_paused = True
        self._apply_reading()

    def resume_reading(self) -> None:
        self._user_paused = False
        self._apply_reading()

    def _apply_reading(self) -> None:
        paused = self._user_paused or (
            self._receiver is None and self._buffered > PULL_BUFFER_LIMIT
        )
        if paused:
            self._can_read.clear()
        else:
            self._can_read.set()

    def _wake_reader(self) -> None:
        fut = self._read_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _read_loop(self) -> None:
        stream = self._stream
        try:
            while True:
                await self._can_read.wait()
                data = await stream.read(READ_CHUNK)
                if self._finished:
                    return
                if not data:
                    if self._classify(None) is not None:
                        # The relay closed the circuit because a budget is spent.
                        assert self.limit_reached is not None
                        self._finish(_limit_error(self.limit_reached, self.limit), True)
                        return
                    self._eof = True
                    if self._receiver is not None:
                        self._receiver.eof_received()
                    else:
                        self._wake_reader()
                    # libp2p never half-closes a connection: EOF ends it (as TCP does).
                    self.close()
                    return
                self.received += len(data)
                if self._receiver is not None:
                    self._receiver.data_received(data)
                else:
                    self._chunks.append(data)
                    self._buffered += len(data)
                    self._apply_reading()
                    self._wake_reader()
        except (StreamError, TransportError) as exc:
            self._finish(self._classify(exc) or exc, True)
        except asyncio.CancelledError:
            self._finish(ConnectionLost("relayed connection cancelled"), True)
            raise

    # --- writing --------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes for the relay; never blocks.

        Raises:
            ConnectionLost: the connection is closed, failed, or this write would exceed
                the relay's data limit (the cause is then ``ResourceLimitExceeded``). In the
                last case the part that still fits is sent - exactly what the relay would
                forward - so the relay and the far end see the budget spent and report the
                same cause; then the connection ends.
        """
        if self._closing or self._finished:
            raise ConnectionLost("write on a closed relayed connection") from self._error
        n = len(data)
        if not n:
            return
        if self._enforce and self._data_limit and self.sent + n > self._data_limit:
            room = self._data_limit - self.sent
            if room > 0:
                self._queue(bytes(data[:room]))
            err = self._limit_hit("data", flush=room > 0)
            raise ConnectionLost("relay circuit data limit reached") from err
        self._queue(bytes(data))

    def _queue(self, data: bytes) -> None:
        n = len(data)
        self.sent += n
        self._outbox.append(data)
        self._pending += n
        self._writer_wake.set()

    async def drain(self) -> None:
        """Wait while more than :data:`WRITE_HIGH_WATER` bytes are pending.

        Raises:
            ConnectionLost: the connection failed while (or before) waiting.
        """
        if self._finished and self._error is not None:
            raise ConnectionLost("relayed connection lost") from self._error
        if self._pending <= WRITE_HIGH_WATER:
            return
        fut = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        try:
            await fut
        finally:
            with contextlib.suppress(ValueError):
                self._drain_waiters.remove(fut)
        if self._finished and self._error is not None:
            raise ConnectionLost("relayed connection lost") from self._error

    def _wake_drainers(self) -> None:
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()

    async def _write_loop(self) -> None:
        stream = self._stream
        try:
            while True:
                while not self._outbox:
                    if self._reset_when_flushed is not None:
                        # The budget is spent: FIN after the last bytes (a reset would
                        # discard them at the relay). The relay closes; the reader ends.
                        await stream.close_write()
                        return
                    if self._closing:
                        await stream.close()
                        self._finish(None, False)
                        return
                    self._writer_wake.clear()
                    await self._writer_wake.wait()
                    if self._finished:
                        return
                data = self._outbox.popleft() if len(self._outbox) == 1 else b"".join(self._outbox)
                self._outbox.clear()
                await stream.write(data)
                self._pending -= len(data)
                if self._pending <= WRITE_HIGH_WATER:
                    self._wake_drainers()
        except (StreamError, TransportError) as exc:
            self._finish(self._classify(exc) or exc, True)
        except asyncio.CancelledError:
            self._finish(ConnectionLost("relayed connection cancelled"), True)
            raise

    # --- limits -----------------------------------------------------------------------------

    def _limit_hit(self, reason: LimitReason, *, flush: bool = False) -> ResourceLimitExceeded:
        """End the connection because ``reason`` is used up; returns the error.

        With ``flush`` the queued bytes go out first (the writer resets after them).
        """
        err = _limit_error(reason, self.limit)
        if self.limit_reached is None:
            self.limit_reached = reason
            logger.info("relayed connection %s hit the relay's %s limit", self, reason)
            if self._on_limit is not None:
                try:
                    self._on_limit(self, reason)
                except Exception:
                    logger.exception("circuit limit callback failed")
        if flush and not self._finished:
            self._closing = True
            self._reset_when_flushed = err
            self._writer_wake.set()
            # Should the relay never take the last bytes, end anyway.
            asyncio.get_running_loop().call_later(FLUSH_GRACE, self._finish, err, True)
        else:
            self._finish(err, True)
        return err

    def _classify(self, exc: BaseException | None) -> ResourceLimitExceeded | None:
        """Whether the stream ended (EOF, reset) because a budget is spent; ``None`` if not.

        The first time it is, the limit callback runs.
        """
        if self.limit_reached is not None:
            return _limit_error(self.limit_reached, self.limit)
        reason: LimitReason | None = None
        if self._data_limit and max(self.sent, self.received) >= self._data_limit:
            reason = "data"
        elif self._duration and self._clock() - self.opened_at >= self._duration - DURATION_SLACK:
            reason = "duration"
        if reason is None:
            return None
        self.limit_reached = reason
        if self._on_limit is not None:
            try:
                self._on_limit(self, reason)
            except Exception:
                logger.exception("circuit limit callback failed")
        return _limit_error(reason, self.limit)

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Flush queued bytes, then close the stream (idempotent)."""
        if self._closing or self._finished:
            return
        self._closing = True
        self._writer_wake.set()

    def abort(self) -> None:
        """Reset the relayed stream at once, dropping queued bytes (idempotent).

        Exception: the last bytes within a spent data budget still go out first.
        """
        if self._reset_when_flushed is not None:
            return
        self._finish(None, True)

    def is_closing(self) -> bool:
        return self._closing or self._finished

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)

    def _finish(self, exc: BaseException | None, reset: bool) -> None:
        if self._finished:
            return
        self._finished = True
        self._closing = True
        self._error = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if reset:
            self._stream.reset()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current and not task.done():
                task.cancel()
        self._outbox.clear()
        self._pending = 0
        self._writer_wake.set()
        self._can_read.set()
        self._wake_drainers()
        self._wake_reader()
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        if self._receiver is not None:
            self._receiver.connection_lost(exc)


def _limit_error(reason: LimitReason, limit: pb.Limit | None) -> ResourceLimitExceeded:
    if reason == "data":
        value = f"{limit.data} bytes per direction" if limit is not None else "data"
        return ResourceLimitExceeded(
            f"relay circuit limit reached: {value}", limit="relay_circuit_data", remote=True
        )
    value = f"{limit.duration} s" if limit is not None else "duration"
    return ResourceLimitExceeded(
        f"relay circuit limit reached: {value}", limit="relay_circuit_duration", remote=True
    )


class CircuitListener:
    """The ``/p2p-circuit`` listener: relayed addresses of the current reservations."""

    def __init__(self, transport: CircuitTransport, on_connection: Callable[[Any], None]) -> None:
        self._transport = transport
        self.on_connection = on_connection
        self._closed = False

    @property
    def multiaddrs(self) -> list[Multiaddr]:
        return [] if self._closed else list(self._transport.relay_addrs)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport._forget(self)

    async def wait_closed(self) -> None:
        self.close()


class CircuitTransport:
    """Dials ``…/p2p/<relay>/p2p-circuit/p2p/<peer>`` and accepts relayed connections.

    Put it in ``HostConfig.transports`` (after TCP) and call :meth:`attach` once the host
    exists (the NAT manager does both).

    Args:
        hop_timeout: seconds for the relay to answer CONNECT (go: 1 min; hop dial 5 s).
        stop_timeout: seconds for the relay's STOP request on an inbound stream.
        accept_stop: whether to accept relayed connections while listening (a switch for
            tests and for nodes that only dial through relays).
        enforce_limits: end relayed connections ourselves at the relay's announced limits
            (see :class:`CircuitConnection`).
    """

    name = "p2p-circuit"

    def __init__(
        self,
        *,
        hop_timeout: float = r.DEFAULT_HOP_TIMEOUT,
        stop_timeout: float = r.DEFAULT_STOP_TIMEOUT,
        accept_stop: bool = True,
        enforce_limits: bool = True,
    ) -> None:
        self.hop_timeout = hop_timeout
        self.enforce_limits = enforce_limits
        self.stop_timeout = stop_timeout
        self.accept_stop = accept_stop
        self._host: RelayHost | None = None
        self._listeners: list[CircuitListener] = []
        self._relay_addrs: list[Multiaddr] = []
        #: Called with ``(connection, reason)`` when a relay limit ends a connection.
        self.on_limit: Callable[[CircuitConnection, LimitReason], None] | None = None
        #: Inbound relayed connections refused (no listener, relayed relay, bad STOP).
        self.refused_stop = 0

    # --- wiring --------------------------------------------------------------------------

    def attach(self, host: RelayHost) -> None:
        """Bind to ``host``: its connections reach relays; it serves the STOP protocol."""
        if self._host is not None and self._host is not host:
            raise LocalProtocolError("circuit transport already attached", protocol=CIRCUIT)
        self._host = host
        host.set_stream_handler(r.STOP_PROTOCOL, self._serve_stop)

    def detach(self) -> None:
        if self._host is not None:
            self._host.remove_stream_handler(r.STOP_PROTOCOL)

    def _need_host(self) -> RelayHost:
        if self._host is None:
            raise ConnectError("the circuit transport is not attached to a host")
        return self._host

    @property
    def relay_addrs(self) -> list[Multiaddr]:
        """Our relayed addresses (``<relay addr>/p2p/<relay>/p2p-circuit``)."""
        return list(self._relay_addrs)

    def set_relay_addrs(self, addrs: Iterable[Multiaddr]) -> None:
        """Replace the relayed addresses the listener shows (reservations changed)."""
        self._relay_addrs = list(dict.fromkeys(addrs))

    @property
    def listening(self) -> bool:
        return bool(self._listeners)

    # --- host Transport protocol ----------------------------------------------------------

    def can_dial(self, addr: Multiaddr) -> bool:
        return addr.is_relayed

    def can_listen(self, addr: Multiaddr) -> bool:
        return addr.is_relayed

    def to_multiaddr(self, address: tuple[str, int]) -> Multiaddr:
        """The circuit multiaddr stored in a circuit connection's ``remote_address``."""
        return Multiaddr(address[0])

    async def listen(
        self, addr: Multiaddr, on_connection: Callable[[Any], None]
    ) -> CircuitListener:
        """Accept relayed connections (``addr`` is ``/p2p-circuit``)."""
        self._need_host()
        listener = CircuitListener(self, on_connection)
        self._listeners.append(listener)
        return listener

    def _forget(self, listener: CircuitListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def dial(self, addr: Multiaddr, *, timeout: float | None) -> CircuitConnection:  # noqa: ASYNC109
        """Open a relayed connection to the peer ``addr`` names.

        ``addr`` is ``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>``; the relay part may
        be a bare ``/p2p/<relay>`` when the host already knows how to reach the relay.

        Raises:
            ConnectError: malformed address, the relay refused (the status is named), or
                the relay could not be reached; ConnectTimeout: no answer in time.
        """
        host = self._need_host()
        split = addr.split_circuit()
        if split is None:
            raise ConnectError(f"{addr} is not a circuit address")
        relay_part, dest = split
        target = dest.peer_id or _DIAL_TARGET.get()
        relay = relay_part.peer_id
        if target is None or relay is None:
            raise ConnectError(f"{addr} must name the relay and the destination (/p2p/...)")
        if relay_part.is_relayed:
            raise ConnectError("circuits over circuits are not supported")
        if target == host.peer_id:
            raise ConnectError("cannot dial ourselves through a relay")
        direct = relay_part.without_p2p()
        relay_dial = [relay_part] if direct.transport_kind() is not None else []
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                relay_conn = await host.connect(relay, relay_dial)
                if relay_conn.transport_name == CIRCUIT_TRANSPORT:
                    raise ConnectError(f"the only connection to relay {relay} is itself relayed")
                stream = await host.new_stream(relay, [r.HOP_PROTOCOL])
                return await self._hop_connect(stream, relay, target, relay_conn)
        except TimeoutError as exc:
            raise ConnectTimeout(f"relayed dial to {target} via {relay} timed out") from exc

    async def _hop_connect(
        self, stream: Stream, relay: PeerId, target: PeerId, relay_conn: MuxedConnection
    ) -> CircuitConnection:
        host = self._need_host()
        machine = r.HopConnectClient(target=target, now=time.time(), timeout=self.hop_timeout)
        try:
            event = await run_relay_machine(stream, machine)
        except BaseException:
            stream.reset()
            raise
        if isinstance(event, r.CircuitEstablished):
            remote = _relay_multiaddr(relay_conn, relay).encapsulate(CIRCUIT).with_p2p(target)
            return CircuitConnection(
                stream,
                spawn=host.spawn,
                limit=event.limit,
                trailing=event.trailing_data,
                relay=relay,
                remote_multiaddr=remote,
                on_limit=self._limit_reached,
                enforce_limit=self.enforce_limits,
            )
        stream.reset()
        if isinstance(event, r.CircuitRefused):
            raise ConnectError(
                f"relay {relay} refused the circuit to {target}: {event.status.name}",
                peer_id=target,
            )
        raise ConnectTimeout(f"relay {relay} did not answer CONNECT", peer_id=target)

    def _limit_reached(self, conn: CircuitConnection, reason: LimitReason) -> None:
        if self.on_limit is not None:
            self.on_limit(conn, reason)

    # --- STOP (we are the target) -----------------------------------------------------------

    async def _serve_stop(self, stream: Stream) -> None:
        host = self._need_host()
        conn = stream.connection
        relay = conn.remote_peer
        relayed = conn.transport_name == CIRCUIT_TRANSPORT
        machine = r.StopServer(now=time.time(), relayed=relayed, timeout=self.stop_timeout)
        decided = False
        src: PeerId | None = None
        try:
            while True:
                event = await run_relay_machine(stream, machine)
                if isinstance(event, r.StopConnectRequested) and not decided:
                    decided = True
                    listener = self._listeners[0] if self._listeners else None
                    if listener is None or not self.accept_stop:
                        self.refused_stop += 1
                        machine.refuse(pb.RelayStatus.CONNECTION_FAILED)
                        await stream.write(machine.data_to_send())
                        await stream.close()
                        return
                    src = event.src
                    machine.accept()
                    await stream.write(machine.data_to_send())
                    continue
                if isinstance(event, r.CircuitEstablished):
                    listener = self._listeners[0] if self._listeners else None
                    if listener is None or src is None:
                        stream.reset()
                        return
                    remote = _relay_multiaddr(conn, relay).encapsulate(CIRCUIT).with_p2p(src)
                    circuit = CircuitConnection(
                        stream,
                        spawn=host.spawn,
                        limit=event.limit,
                        trailing=event.trailing_data,
                        relay=relay,
                        remote_multiaddr=remote,
                        on_limit=self._limit_reached,
                        enforce_limit=self.enforce_limits,
                    )
                    listener.on_connection(circuit)
                    return
                # RequestDenied (relayed relay) or a timeout: answer and stop.
                self.refused_stop += 1
                out = machine.data_to_send()
                if out:
                    await stream.write(out)
                await stream.close()
                return
        except (GlueberryError, OSError) as exc:
            logger.debug("STOP from %s failed: %r", relay, exc)
            with contextlib.suppress(GlueberryError, OSError):
                out = machine.data_to_send()
                if out:
                    await stream.write(out)
            stream.reset()


CIRCUIT_TRANSPORT: Final = "circuit"


def _relay_multiaddr(conn: MuxedConnection, relay: PeerId) -> Multiaddr:
    """``<relay address>/p2p/<relay>`` as seen on ``conn`` (or ``/p2p/<relay>`` alone)."""
    try:
        if conn.transport_name == "tcp":
            host, port = conn.remote_address[0], conn.remote_address[1]
            return Multiaddr.from_socket_address(host, port).with_p2p(relay)
    except (MultiaddrError, ValueError, IndexError, TypeError):
        pass
    return Multiaddr(f"/p2p/{relay}")


RelayMachine = r.HopConnectClient | r.HopReserveClient | r.HopServer | r.StopClient | r.StopServer


async def run_relay_machine(stream: Stream, machine: RelayMachine) -> r.RelayEvent:
    """Flush the machine's output and feed it the stream until it emits an event.

    The machine's own deadline (wall clock, :mod:`glueberry.proto.relay`) bounds the wait.

    Raises:
        RemoteProtocolError: the peer broke the protocol (a server's reply is queued).
        StreamError / TransportError: the stream failed.
    """
    while True:
        out = machine.data_to_send()
        if out:
            await stream.write(out)
        event = machine.next_event()
        if event is not None:
            return event
        deadline = machine.get_timer()
        if deadline is None:
            raise RemoteProtocolError("relay exchange ended without a result", protocol=CIRCUIT)
        remaining = deadline - time.time()
        if remaining <= 0:
            machine.handle_timer(max(time.time(), deadline))
            continue
        try:
            async with asyncio.timeout(remaining):
                data = await stream.read(pb.MAX_RELAY_MESSAGE)
        except TimeoutError:
            machine.handle_timer(max(time.time(), deadline))
            continue
        machine.receive_data(data, time.time())


__all__ = [
    "CIRCUIT",
    "CircuitConnection",
    "CircuitListener",
    "CircuitTransport",
    "LimitReason",
    "RelayHost",
    "RelayMachine",
    "dial_target",
    "run_relay_machine",
]
