"""A relayed connection: a circuit relay v2 HOP or STOP stream used as a raw connection.

Spec: https://github.com/libp2p/specs/blob/master/relay/circuit-v2.md (r3), "the stream
becomes the relayed connection". Used by :mod:`glueberry.transport.circuit`.

Theory of operation
-------------------
After the relay answered OK, :class:`CircuitConnection` adapts the muxed stream to the
:class:`~glueberry.transport.base.RawConnection` interface, so the host upgrades it like a TCP
socket (multistream-select, Noise, yamux end to end; the relay sees ciphertext only).

* Reading: one task reads the stream (bounded chunks) and feeds the pull buffer or, in push
  mode, the receiver. ``pause_reading`` stops that task from reading, so the stream's yamux
  window closes and the far end slows down (backpressure crosses the relay).
* Writing: ``write`` never blocks; the bytes go to an outbox drained by a second task into
  ``stream.write`` (which waits for yamux window). ``drain`` waits while more than
  :data:`WRITE_HIGH_WATER` bytes are pending.
* Both tasks run in the owner's task group (``host.spawn``) and end with the connection.

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
runs. Nothing is lost silently.

Callback order for a receiver: ``data_received* [eof_received] connection_lost`` (once).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Literal

from glueberry.errors import (
    ConnectionLost,
    LocalProtocolError,
    NodeStateError,
    ResourceLimitExceeded,
    StreamError,
    TransportError,
)
from glueberry.wire import pb_nat as pb

if TYPE_CHECKING:
    from glueberry.transport.base import ByteReceiver, Stream
    from glueberry.wire.identity import PeerId
    from glueberry.wire.multiaddr import Multiaddr

logger = logging.getLogger(__name__)

#: ``local_address`` of every circuit connection.
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
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


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


__all__ = [
    "CIRCUIT",
    "DURATION_SLACK",
    "FLUSH_GRACE",
    "CircuitConnection",
    "LimitReason",
    "Spawn",
]
