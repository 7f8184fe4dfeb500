"""yamux driver: :class:`YamuxConnection` (a ``MuxedConnection``) and :class:`YamuxStream`.

Spec: https://github.com/libp2p/specs/blob/master/yamux/README.md; the protocol itself lives in
:mod:`glueberry.proto.yamux` (sans-I/O). This module only moves bytes and wakes tasks.

Theory of operation
-------------------
The connection puts the secured connection in push mode (``secure.set_receiver(self)``), so
every decrypted chunk arrives in :meth:`YamuxConnection.data_received` straight from the event
loop: ``session.receive_data`` -> dispatch the events to the streams -> one
``secure.write(session.data_to_send())`` for the whole batch -> re-arm the keepalive timer
(``loop.call_at``). No task runs per connection or per stream; there is nothing to leak.

Receive side: each stream keeps the chunks delivered to it (bounded by its yamux receive
window, so a slow reader holds at most one window, B-19) and reports what the application
takes to ``session.consume``; only that re-opens the window (end-to-end backpressure, C11).
``read()`` returns everything buffered at once. A reader may also take bytes as they arrive,
synchronously on the receive path (``set_data_callback`` + ``read_nowait``), which spares a
task wake-up per read.

Send side: ``write()`` hands the bytes to ``session.send_data`` (which accepts up to the send
window) and returns without suspending when the window allows; otherwise it waits for
``SendWindowAvailable``. Output is coalesced: the first write of a loop iteration schedules one
flush with ``loop.call_soon``; a queue over :data:`FLUSH_THRESHOLD` is flushed at once. A
latency-sensitive writer can have its bytes leave at once instead: ``flush()`` writes what is
queued now, ``write_nowait()`` sends a whole buffer now when the window allows. Every
:data:`DRAIN_INTERVAL` bytes written a writer awaits ``secure.drain()``, so a paused transport
pauses writers. The receive path never waits for anything, so window updates and ping replies
always get out (no deadlock under symmetric backpressure, B-17).

Closing: :meth:`YamuxConnection.close` sends GoAway(0), resets the streams left open (their
readers and writers get :class:`~glueberry.errors.StreamReset`) and closes the secured
connection. EOF or loss of the connection resets every open stream the same way.

Receiver callbacks arrive as ``data_received* [eof_received] connection_lost``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from glueberry.errors import (
    ConnectionLost,
    GlueberryError,
    LocalProtocolError,
    RemoteProtocolError,
    ResourceLimitExceeded,
    StreamClosed,
    StreamReset,
    TransportError,
)
from glueberry.proto import yamux as _yamux
from glueberry.proto.yamux import YamuxConfig, YamuxSession
from glueberry.proto.yamux_frames import PROTOCOL_ID

if TYPE_CHECKING:
    from glueberry.transport.base import SecureConnection
    from glueberry.wire.identity import PeerId, PublicKey

logger = logging.getLogger(__name__)

#: Queued output beyond this is written at once instead of at the end of the loop iteration.
FLUSH_THRESHOLD: Final = 256 * 1024
#: A writer awaits ``secure.drain()`` each time this many bytes went to the connection.
DRAIN_INTERVAL: Final = 512 * 1024

_DataReceived = _yamux.DataReceived
_SendWindowAvailable = _yamux.SendWindowAvailable

# Half-stream states.
_OPEN: Final = 0
_DONE: Final = 1  # read: FIN received; write: FIN sent
_CLOSED: Final = 2  # read only: closed locally, incoming data is discarded
_RESET: Final = 3


class YamuxStream:
    """One yamux stream; implements :class:`glueberry.transport.base.Stream`.

    ``read`` / ``write`` may be called from different tasks, but at most one task may read at
    a time. Reads return ``b""`` at end of stream; after a reset they raise
    :class:`~glueberry.errors.StreamReset` (data already buffered is dropped, unless the peer
    had finished sending first); after :meth:`close` they raise
    :class:`~glueberry.errors.StreamClosed`.
    """

    __slots__ = (
        "__weakref__",
        "_buffered",
        "_chunks",
        "_conn",
        "_head_off",
        "_on_data",
        "_read_state",
        "_read_waiter",
        "_reset_remote",
        "_write_state",
        "_write_waiters",
        "protocol",
        "reset_code",
        "stream_id",
    )

    def __init__(self, conn: YamuxConnection, stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        #: Negotiated protocol ID ("" until multistream-select finishes on this stream).
        self.protocol = ""
        #: The reset's application error code, once the stream was reset.
        self.reset_code: int | None = None
        self._chunks: deque[bytes] = deque()
        self._head_off = 0
        self._buffered = 0
        self._read_state = _OPEN
        self._write_state = _OPEN
        self._reset_remote = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiters: list[asyncio.Future[None]] = []
        self._on_data: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<YamuxStream {self.stream_id} {self.protocol or '-'}>"

    @property
    def connection(self) -> YamuxConnection:
        return self._conn

    @property
    def is_closed(self) -> bool:
        """Both directions are finished (closed, ended or reset)."""
        return _OPEN not in (self._read_state, self._write_state)

    # ------------------------------------------------------------------ reading
    async def read(self, max_bytes: int = -1) -> bytes:
        """Up to ``max_bytes`` (everything buffered if -1); ``b""`` at end of stream.

        Raises:
            StreamReset: the stream was reset (by either side or the connection).
            StreamClosed: :meth:`close` was called.
        """
        if max_bytes == 0:
            return b""
        if not self._buffered:
            await self._wait_readable()
            if not self._buffered:
                return b""
        return self._take(max_bytes)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes.

        Raises:
            asyncio.IncompleteReadError: the stream ended first (carries what was read).
        """
        if n <= self._buffered:
            return self._take(n) if n else b""
        parts: list[bytes] = []
        need = n
        while need:
            chunk = await self.read(need)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(chunk)
            need -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def set_data_callback(self, callback: Callable[[], None] | None) -> None:
        """Push delivery for the stream's reader (``None`` turns it off).

        ``callback()`` runs synchronously on the connection's receive path each time bytes
        were added to the buffer, and may take them with :meth:`read_nowait` (it must not
        raise). Bytes it leaves buffered wake a pending :meth:`read` as usual; end of stream
        and resets are reported by :meth:`read` only. A consumer that can take a batch at
        once thus gets it without a task being scheduled in between.
        """
        self._on_data = callback

    def read_nowait(self) -> bytes:
        """Everything buffered, or ``b""`` when nothing is (never waits, never raises)."""
        n = self._buffered
        if not n:
            return b""
        chunks = self._chunks
        if len(chunks) == 1 and not self._head_off:  # one read's worth: the push path
            self._buffered = 0
            data = chunks.popleft()
            conn = self._conn
            if conn._streams.get(self.stream_id) is self:  # _consumed(), inline
                session = conn._session
                session.consume(self.stream_id, n)
                if session.bytes_to_send:
                    conn._want_flush()
            return data
        return self._take(-1)

    def __aiter__(self) -> YamuxStream:
        return self

    async def __anext__(self) -> bytes:
        """Each buffered batch of bytes until end of stream (a reset raises)."""
        data = await self.read()
        if not data:
            raise StopAsyncIteration
        return data

    async def _wait_readable(self) -> None:
        while not self._buffered:
            state = self._read_state
            if state == _DONE:
                return
            if state != _OPEN:
                raise self._read_error()
            if self._read_waiter is not None:
                raise LocalProtocolError(
                    "concurrent read() on a yamux stream", protocol=PROTOCOL_ID
                )
            fut = self._conn._loop.create_future()
            self._read_waiter = fut
            try:
                await fut
            finally:
                self._read_waiter = None

    def _take(self, max_bytes: int) -> bytes:
        chunks = self._chunks
        off = self._head_off
        if max_bytes < 0 or max_bytes >= self._buffered:
            if len(chunks) == 1:
                data = chunks[0][off:] if off else chunks[0]
            else:
                parts: list[bytes | memoryview] = list(chunks)
                if off:
                    parts[0] = memoryview(chunks[0])[off:]
                data = b"".join(parts)
            chunks.clear()
            off = 0
        else:
            out: list[bytes] = []
            need = max_bytes
            while need:
                head = chunks[0]
                avail = len(head) - off
                if avail <= need:
                    out.append(head[off:] if off else head)
                    chunks.popleft()
                    off = 0
                    need -= avail
                else:
                    out.append(head[off : off + need])
                    off += need
                    need = 0
            data = out[0] if len(out) == 1 else b"".join(out)
        self._head_off = off
        n = len(data)
        self._buffered -= n
        self._conn._consumed(self, n)
        return data

    def _read_error(self) -> StreamReset | StreamClosed:
        if self._read_state == _CLOSED:
            return StreamClosed(f"yamux stream {self.stream_id} was closed")
        who = "by the peer" if self._reset_remote else "locally"
        return StreamReset(
            f"yamux stream {self.stream_id} was reset {who} (code {self.reset_code})",
            remote=self._reset_remote,
        )

    # ------------------------------------------------------------------ writing
    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``; returns once the muxer accepted all of it.

        Suspends only while the stream's send window is exhausted or the connection needs
        draining.

        Raises:
            StreamClosed: this side was closed (``close_write`` / ``close``).
            StreamReset: the stream was reset.
        """
        if self._write_state:  # not _OPEN
            raise self._write_error()
        conn = self._conn
        session = conn._session
        sent = session.send_data(self.stream_id, data)
        if session.bytes_to_send >= FLUSH_THRESHOLD:
            conn._flush()
        elif not conn._flush_scheduled:
            conn._flush_scheduled = True
            conn._loop.call_soon(conn._scheduled_flush)
        if sent != (len(data) if type(data) is not memoryview else data.nbytes):
            await self._write_rest(data, sent)
        if conn._since_drain >= DRAIN_INTERVAL:
            await conn._drain()

    def write_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Send all of ``data`` and write it to the socket now, if nothing has to wait.

        The synchronous fast path of :meth:`write` followed by :meth:`flush`, for a
        latency-sensitive writer: when the send window takes all of ``data`` and the
        connection needs no drain, the frame goes to the secured connection and out at once
        (no end-of-iteration flush is scheduled) and True is returned. Otherwise nothing is
        done and False is returned: use :meth:`write`.

        Raises:
            StreamClosed: this side was closed (``close_write`` / ``close``).
            StreamReset: the stream was reset.
        """
        if self._write_state:  # not _OPEN
            raise self._write_error()
        conn = self._conn
        if conn._since_drain >= DRAIN_INTERVAL:
            return False
        session = conn._session
        n = len(data) if type(data) is not memoryview else data.nbytes
        header = session.data_frame_now(self.stream_id, n) if not conn._lost else None
        if header is None:  # something queued, a short window, a large write: the long way
            if session.send_window(self.stream_id) < n:
                return False
            session.send_data(self.stream_id, data)
            conn._flush_now()
            return True
        # Latency path: one frame, nothing queued before it: header and payload go to the
        # secured connection in one piece, without the session's queue.
        conn._write_now(header + data)
        return True

    async def _write_rest(self, data: bytes | bytearray | memoryview, sent: int) -> None:
        """The part of a write beyond the send window: wait for credit, send, repeat."""
        conn = self._conn
        session = conn._session
        sid = self.stream_id
        view = memoryview(data)
        if view.itemsize != 1 or not view.c_contiguous:
            view = memoryview(bytes(view))  # slice by bytes, not items
        n = view.nbytes
        while sent < n:
            await self._wait_window()
            if self._write_state != _OPEN:
                raise self._write_error()
            sent += session.send_data(sid, view[sent:])
            conn._want_flush()

    async def _wait_window(self) -> None:
        conn = self._conn
        if conn._session.send_window(self.stream_id) > 0:
            return
        fut = conn._loop.create_future()
        self._write_waiters.append(fut)
        try:
            await fut
        finally:
            try:
                self._write_waiters.remove(fut)
            except ValueError:
                pass

    def _write_error(self) -> StreamReset | StreamClosed:
        if self._write_state == _DONE:
            return StreamClosed(f"yamux stream {self.stream_id} is closed for writing")
        who = "by the peer" if self._reset_remote else "locally"
        return StreamReset(
            f"yamux stream {self.stream_id} was reset {who} (code {self.reset_code})",
            remote=self._reset_remote,
        )

    def flush(self) -> None:
        """Send what is queued on the connection now, not at the end of the loop iteration.

        For a latency-sensitive writer (e.g. the tail of a burst): the queued frames go to the
        secured connection at once, and it writes them at once too (if it has ``write_now()``
        or ``flush()``). Later writes of the iteration are coalesced as usual.
        """
        self._conn._flush_now()

    async def close_write(self) -> None:
        """Half-close: send FIN. Reading continues until the peer closes.

        Raises:
            StreamReset: the stream was reset.
        """
        state = self._write_state
        if state == _DONE:
            return
        if state == _RESET:
            raise self._write_error()
        self._write_state = _DONE
        self._wake_writers()
        conn = self._conn
        conn._session.close_stream(self.stream_id)
        conn._want_flush()
        conn._forget_if_gone(self.stream_id)

    async def close(self) -> None:
        """Close both directions: FIN, then drop unread and later data. Never raises."""
        if self._write_state == _OPEN:
            await self.close_write()
        if self._read_state in (_OPEN, _DONE):
            self._read_state = _CLOSED
            n = self._buffered
            self._chunks.clear()
            self._head_off = 0
            self._buffered = 0
            if n:
                self._conn._consumed(self, n)
            self._wake_reader()

    def reset(self, code: int = 0) -> None:
        """Abort both directions (``WindowUpdate|RST`` carrying ``code``). No-op when the
        stream is already finished."""
        if self.is_closed:
            return
        conn = self._conn
        session = conn._session
        if session.has_stream(self.stream_id) and not session.is_terminated:
            session.reset_stream(self.stream_id, code)
            conn._want_flush()
        self._on_reset(code, remote=False)
        conn._forget(self.stream_id)

    # ------------------------------------------------------------------ driver callbacks
    def _feed(self, data: bytes) -> None:
        if self._read_state == _OPEN:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._on_data is not None:
                self._on_data()
                if not self._buffered:  # taken (or the stream was reset meanwhile)
                    return
            fut = self._read_waiter
            if fut is not None and not fut.done():
                fut.set_result(None)
        else:  # closed locally: discard, but keep the peer's window open
            self._conn._consumed(self, len(data))

    def _on_eof(self) -> None:
        if self._read_state == _OPEN:
            self._read_state = _DONE
            self._wake_reader()

    def _on_reset(self, code: int, remote: bool) -> None:
        if _OPEN in (self._write_state, self._read_state):
            self.reset_code = code
            self._reset_remote = remote
        if self._write_state == _OPEN:
            self._write_state = _RESET
        if self._read_state == _OPEN:
            self._read_state = _RESET
            self._chunks.clear()
            self._head_off = 0
            self._buffered = 0
        self._wake_reader()
        self._wake_writers()

    def _wake_reader(self) -> None:
        fut = self._read_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _wake_writers(self) -> None:
        for fut in self._write_waiters:
            if not fut.done():
                fut.set_result(None)


StreamCallback = Callable[[YamuxStream], None]


class YamuxConnection:
    """A yamux session over a secured connection; implements ``MuxedConnection``.

    Args:
        secure: the secured connection; it is switched to push mode here.
        is_client: True on the side that dialed (odd stream IDs).
        on_stream: called (synchronously, from the event loop) with every stream the peer
            opens, already accepted; typically it starts protocol negotiation in a task.
        config: yamux limits and tuning.
    """

    muxer_protocol: str = PROTOCOL_ID
    #: The secured connection may lend ``data_received`` a view of a reusable buffer:
    #: ``YamuxSession.receive_data`` copies everything it keeps (delivered data, a partial
    #: header) before returning.
    receives_memoryview = True

    def __init__(
        self,
        secure: SecureConnection,
        *,
        is_client: bool,
        on_stream: StreamCallback,
        config: YamuxConfig | None = None,
    ) -> None:
        self._loop = loop = asyncio.get_running_loop()
        # The loop's clock, read once per received chunk. asyncio's own loop reads
        # time.monotonic() through a Python method; calling that directly is the same clock
        # without the frame. Any other loop (uvloop, a test clock) keeps its own time().
        self._clock: Callable[[], float] = (
            time.monotonic
            if getattr(type(loop), "time", None) is asyncio.BaseEventLoop.time
            else loop.time
        )
        self._secure = secure
        self._secure_write_now: Callable[[bytes | bytearray], None] | None = getattr(
            secure, "write_now", None
        )
        # Every inbound stream goes to on_stream at once, so the session acknowledges it as
        # its SYN arrives: a burst of SYNs in one read is bounded by max_inbound_streams,
        # not by the accept backlog of streams nobody has looked at yet.
        self._config = cfg = dataclasses.replace(config or YamuxConfig(), auto_accept=True)
        self._session = YamuxSession(is_client, cfg, now=self._loop.time())
        self._on_stream = on_stream
        self._streams: dict[int, YamuxStream] = {}
        self.local_peer: PeerId = secure.local_peer
        self.remote_peer: PeerId = secure.remote_peer
        self.remote_public_key: PublicKey = secure.remote_public_key
        self.direction = "outbound" if secure.is_initiator else "inbound"
        self.transport_name = secure.transport_name
        self.security_protocol = secure.security_protocol
        self.local_address = secure.local_address
        self.remote_address = secure.remote_address
        self._flush_scheduled = False
        self._since_drain = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._open_waiters: list[asyncio.Future[None]] = []
        self._ping_waiters: list[asyncio.Future[float]] = []
        self._closing = False  # close() was called
        self._terminated = False  # the session ended (EOF, error, GoAway != 0, keepalive)
        self._lost = False  # the secured connection is gone
        self._error: GlueberryError | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        if cfg.window_growth == "rtt":
            self._session.ping(self._loop.time())  # go-yamux measures the RTT at once too
        # Last: this may deliver bytes read ahead during the upgrade right away.
        secure.set_receiver(self)
        self._flush()
        self._rearm_timer()

    def __repr__(self) -> str:
        return f"<YamuxConnection {self.direction} {self.remote_peer} streams={len(self._streams)}>"

    # ------------------------------------------------------------------ public API
    @property
    def is_closed(self) -> bool:
        return self._closing or self._terminated or self._lost

    @property
    def session(self) -> YamuxSession:
        """The sans-I/O session (read-only use: windows, RTT, counters)."""
        return self._session

    @property
    def streams(self) -> list[YamuxStream]:
        """Streams the session still tracks."""
        return list(self._streams.values())

    @property
    def error(self) -> GlueberryError | None:
        """Why the session ended, if it ended abnormally."""
        return self._error

    async def open_stream(self) -> YamuxStream:
        """Open an outbound stream (no protocol negotiated yet).

        Waits while the peer has 256 (``ack_backlog``) of our streams unacknowledged.

        Raises:
            ConnectionLost: the connection is closed, lost, or the peer sent GoAway.
            ResourceLimitExceeded: ``max_outbound_streams`` streams are open.
        """
        session = self._session
        while not session.can_open_stream:
            self._check_usable()
            if session.num_outbound_streams >= self._config.max_outbound_streams:
                raise ResourceLimitExceeded(
                    "too many outbound yamux streams", limit="yamux.max_outbound_streams"
                )
            if session.unacknowledged_outbound < self._config.ack_backlog:
                raise ConnectionLost("yamux stream IDs exhausted")
            fut = self._loop.create_future()
            self._open_waiters.append(fut)
            try:
                await fut
            finally:
                try:
                    self._open_waiters.remove(fut)
                except ValueError:
                    pass
        sid = session.open_stream()
        stream = YamuxStream(self, sid)
        self._streams[sid] = stream
        self._want_flush()
        return stream

    async def ping(self) -> float:
        """Send a yamux ping; returns the round-trip time in seconds.

        Raises:
            ConnectionLost: the connection ended before the answer (or the ping timed out).
        """
        self._check_usable()
        fut: asyncio.Future[float] = self._loop.create_future()
        self._ping_waiters.append(fut)
        try:
            self._session.ping(self._loop.time())
            self._want_flush()
            self._rearm_timer()
            return await fut
        finally:
            try:
                self._ping_waiters.remove(fut)
            except ValueError:
                pass

    async def close(self) -> None:
        """Send GoAway(0), reset the streams left open and close the secured connection."""
        if not self._closing:
            self._closing = True
            if not self._terminated and not self._lost:
                try:
                    self._session.go_away(0)
                except LocalProtocolError:
                    pass
                self._flush()
            self._reset_all(remote=False)
            self._shutdown(ConnectionLost("yamux connection closed locally"))
            self._secure.close()
        await self._secure.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the secured connection is gone."""
        await asyncio.shield(self._closed)

    # ------------------------------------------------------------------ ByteReceiver
    def data_received(self, data: bytes | memoryview) -> None:
        if self._terminated or self._lost:
            return
        session = self._session
        try:
            session.receive_data(data, self._clock())
        except RemoteProtocolError as exc:
            logger.debug("yamux protocol error from %s: %s", self.remote_peer, exc)
        self._dispatch()
        if session.bytes_to_send:
            self._flush()
        if self._timer is None:
            # Received bytes only move the keepalive deadline later (or start the clock);
            # an armed timer re-arms itself from the session when it fires.
            self._rearm_timer()

    def eof_received(self) -> None:
        if not self._terminated:
            self._session.receive_data(b"", self._loop.time())
            self._dispatch()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        if not self._terminated:
            self._session.receive_data(b"", self._loop.time())
            self._dispatch()
        if self._error is None and exc is not None:
            self._error = ConnectionLost(f"connection lost: {exc!r}")
        self._shutdown(self._error or ConnectionLost("connection closed"))
        if not self._closed.done():
            self._closed.set_result(None)

    # ------------------------------------------------------------------ internals
    def _dispatch(self) -> None:
        streams = self._streams
        session = self._session
        events = session.event_queue
        while events:
            ev = events.popleft()
            if type(ev) is _DataReceived:
                st = streams.get(ev.stream_id)
                if st is not None:
                    st._feed(ev.data)
                else:
                    session.consume(ev.stream_id, len(ev.data))
            elif isinstance(ev, _SendWindowAvailable):
                st = streams.get(ev.stream_id)
                if st is not None:
                    st._wake_writers()
            else:
                self._dispatch_rare(ev)

    def _dispatch_rare(self, ev: _yamux.YamuxEvent) -> None:
        streams = self._streams
        match ev:
            case _yamux.StreamOpened(stream_id=sid):
                self._on_inbound(sid)
            case _yamux.StreamEnded(stream_id=sid):
                st = streams.get(sid)
                if st is not None:
                    st._on_eof()
                    self._forget_if_gone(sid)
            case _yamux.StreamReset(stream_id=sid, code=code, remote=remote):
                st = streams.pop(sid, None)
                if st is not None:
                    st._on_reset(code, remote)
                self._wake_openers()
            case _yamux.StreamAcknowledged():
                self._wake_openers()
            case _yamux.PingAcknowledged(rtt=rtt):
                for fut in self._ping_waiters:
                    if not fut.done():
                        fut.set_result(rtt)
            case _yamux.GoAwayReceived(code=code):
                logger.debug("yamux GoAway(%d) from %s", code, self.remote_peer)
                self._wake_openers()
            case _yamux.ConnectionTerminated(error=error):
                self._on_terminated(error)
            case _:  # pragma: no cover - every event type is handled above
                raise AssertionError(ev)

    def _on_inbound(self, sid: int) -> None:
        session = self._session
        if self._closing:
            session.reset_stream(sid)
            return
        stream = YamuxStream(self, sid)
        self._streams[sid] = stream
        try:
            self._on_stream(stream)
        except Exception:  # the application's callback must not break the receive path
            logger.exception("yamux on_stream callback failed; resetting stream %d", sid)
            stream.reset()

    def _on_terminated(self, error: GlueberryError | None) -> None:
        self._terminated = True
        if self._error is None:
            self._error = error
        self._flush()  # a GoAway(1) after a protocol error
        self._shutdown(error or ConnectionLost("yamux session ended"))
        if not self._lost:
            self._secure.close()

    def _shutdown(self, error: GlueberryError) -> None:
        """Stop the timer and fail everything that waits on the connection."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fut in self._ping_waiters:
            if not fut.done():
                fut.set_exception(ConnectionLost(str(error)))
        self._wake_openers()

    def _reset_all(self, *, remote: bool) -> None:
        streams = list(self._streams.values())
        self._streams.clear()
        for st in streams:
            st._on_reset(0, remote)

    def _check_usable(self) -> None:
        if self._closing or self._terminated or self._lost:
            raise ConnectionLost("yamux connection is closed") from self._error
        if self._session.remote_go_away is not None:
            raise ConnectionLost(
                f"peer sent yamux GoAway({self._session.remote_go_away}); no new streams"
            )

    def _wake_openers(self) -> None:
        for fut in self._open_waiters:
            if not fut.done():
                fut.set_result(None)

    def _forget(self, sid: int) -> None:
        self._streams.pop(sid, None)
        self._wake_openers()

    def _forget_if_gone(self, sid: int) -> None:
        if not self._session.has_stream(sid):
            self._forget(sid)

    def _consumed(self, stream: YamuxStream, n: int) -> None:
        sid = stream.stream_id
        if self._streams.get(sid) is not stream:
            return  # gone (or, after a peer reused the ID, someone else's credit)
        session = self._session
        session.consume(sid, n)
        if session.bytes_to_send:
            self._want_flush()

    def _want_flush(self) -> None:
        if self._session.bytes_to_send >= FLUSH_THRESHOLD:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _flush_now(self) -> None:
        """:meth:`_flush`, and the secured connection writes it now (``write_now``, else
        ``write`` then ``flush``, when it has them) rather than at the end of the iteration."""
        data = self._session.data_to_send()
        if not data or self._lost:
            return
        self._write_now(data)

    def _write_now(self, data: bytes | bytearray) -> None:
        """Hand ``data`` (whole frames) to the secured connection, to be written now."""
        secure = self._secure
        try:
            write_now = self._secure_write_now
            if write_now is not None:
                write_now(data)
            else:
                secure.write(data)
                flush = getattr(secure, "flush", None)
                if flush is not None:
                    flush()
        except (TransportError, OSError) as exc:
            logger.debug("yamux write failed: %r", exc)
            secure.abort()
            self.connection_lost(exc)
            return
        self._since_drain += len(data)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        data = self._session.data_to_send()
        if not data or self._lost:
            return
        try:
            self._secure.write(data)
        except (TransportError, OSError) as exc:
            logger.debug("yamux write failed: %r", exc)
            self._secure.abort()
            self.connection_lost(exc)
            return
        self._since_drain += len(data)

    async def _drain(self) -> None:
        self._since_drain = 0
        try:
            await self._secure.drain()
        except (TransportError, OSError):
            pass  # the loss reaches us through connection_lost; writers see a reset there

    def _rearm_timer(self) -> None:
        when = self._session.get_timer()
        if when is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        if self._timer is not None:
            if self._timer_at <= when:
                return  # fires earlier; _on_timer re-arms
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._terminated or self._lost:
            return
        self._session.handle_timer(self._loop.time())
        self._dispatch()
        self._flush()
        self._rearm_timer()


__all__ = ["DRAIN_INTERVAL", "FLUSH_THRESHOLD", "StreamCallback", "YamuxConnection", "YamuxStream"]
