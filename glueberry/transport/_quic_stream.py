"""One QUIC stream as a :class:`glueberry.transport.base.Stream`.

See :mod:`glueberry.transport.quic` for the whole design.

Reads take from chunks aioquic delivered; what is taken is reported to the connection, which
is the only thing that re-opens the peer's flow-control window. Writes hand data to aioquic
while fewer than ``send_high_water`` bytes of the stream wait unsent. States per direction:
open, done (FIN), closed locally (read side only) and reset.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from glueberry.errors import LocalProtocolError, StreamClosed, StreamReset

if TYPE_CHECKING:
    from glueberry.transport._quic_connection import QuicConnection

PROTOCOL: Final = "quic-v1"

_OPEN: Final = 0
_DONE: Final = 1  # read: FIN received; write: FIN sent
_CLOSED: Final = 2  # read only: closed locally (STOP_SENDING sent)
_RESET: Final = 3


class QuicStream:
    """One bidirectional QUIC stream; implements :class:`glueberry.transport.base.Stream`.

    At most one task may read at a time; reads and writes may run in different tasks.
    ``read`` returns ``b""`` at end of stream, raises :class:`~glueberry.errors.StreamReset`
    after a reset (of either side, or of the connection) and
    :class:`~glueberry.errors.StreamClosed` after :meth:`close`.
    """

    __slots__ = (
        "__weakref__",
        "_buffered",
        "_chunks",
        "_conn",
        "_delivered",
        "_head_off",
        "_read_state",
        "_read_waiter",
        "_reset_remote",
        "_rx_finished",
        "_stop_on_data",
        "_write_state",
        "_write_waiters",
        "_written",
        "protocol",
        "reset_code",
        "stream_id",
    )

    def __init__(self, conn: QuicConnection, stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        #: Negotiated protocol ID ("" until multistream-select finishes on this stream).
        self.protocol = ""
        #: The application error code of the reset, once the stream was reset.
        self.reset_code: int | None = None
        self._chunks: deque[bytes] = deque()
        self._head_off = 0
        self._buffered = 0
        self._delivered = 0  # bytes aioquic delivered to this stream
        self._written = 0  # bytes handed to aioquic
        self._read_state = _OPEN
        self._write_state = _OPEN
        self._rx_finished = False  # aioquic's receive side is over (FIN or reset seen)
        self._stop_on_data = False  # closed locally: send STOP_SENDING if data still comes
        self._reset_remote = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return f"<QuicStream {self.stream_id} {self.protocol or '-'}>"

    @property
    def connection(self) -> QuicConnection:
        return self._conn

    @property
    def is_closed(self) -> bool:
        """Both directions are finished (closed, ended or reset)."""
        return _OPEN not in (self._read_state, self._write_state)

    # --- reading ----------------------------------------------------------------------------
    async def read(self, max_bytes: int = -1) -> bytes:
        """Up to ``max_bytes`` (everything buffered if -1); ``b""`` at end of stream.

        Raises:
            StreamReset: the stream (or its connection) was reset.
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

    def __aiter__(self) -> QuicStream:
        return self

    async def __anext__(self) -> bytes:
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
                raise LocalProtocolError("concurrent read() on a QUIC stream", protocol=PROTOCOL)
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
        self._conn._consumed(self.stream_id, n)
        return data

    def _drop_buffered(self) -> None:
        n = self._buffered
        self._chunks.clear()
        self._head_off = 0
        self._buffered = 0
        if n:
            self._conn._consumed(self.stream_id, n)

    def _read_error(self) -> StreamReset | StreamClosed:
        if self._read_state == _CLOSED:
            return StreamClosed(f"QUIC stream {self.stream_id} was closed")
        return self._reset_error()

    def _reset_error(self) -> StreamReset:
        who = "by the peer" if self._reset_remote else "locally"
        return StreamReset(
            f"QUIC stream {self.stream_id} was reset {who} (code {self.reset_code})",
            remote=self._reset_remote,
        )

    # --- writing ----------------------------------------------------------------------------
    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``; returns once aioquic holds all of it.

        Suspends while ``send_high_water`` bytes of this stream wait unsent (the peer's
        flow-control window or the congestion window is exhausted).

        Raises:
            StreamClosed: this side was closed (``close_write``/``close``).
            StreamReset: the stream was reset (by either side or the connection).
        """
        if self._write_state != _OPEN:
            raise self._write_error()
        n = len(data)
        if not n:
            return
        conn = self._conn
        high = conn._config.send_high_water
        pos = 0
        with memoryview(data) as view:
            while pos < n:
                room = high - conn._core.unsent(self.stream_id, self._written)
                if room <= 0:
                    await self._wait_writable()
                    if self._write_state != _OPEN:
                        raise self._write_error()
                    continue
                end = min(n, pos + room)
                conn._send(self, view[pos:end])
                pos = end

    async def _wait_writable(self) -> None:
        conn = self._conn
        fut = conn._loop.create_future()
        self._write_waiters.append(fut)
        conn._blocked.add(self)
        try:
            await fut
        finally:
            with contextlib.suppress(ValueError):
                self._write_waiters.remove(fut)

    def _write_error(self) -> StreamReset | StreamClosed:
        if self._write_state == _DONE:
            return StreamClosed(f"QUIC stream {self.stream_id} is closed for writing")
        return self._reset_error()

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
        self._conn._send_fin(self)
        self._conn._forget_if_done(self)

    async def close(self) -> None:
        """Close both directions: FIN, and stop reading. Never raises.

        Unread and later data is dropped. STOP_SENDING goes out only if the peer sends
        more after this call: a peer that was about to finish (the usual case: a reply
        already read, its FIN still in flight) can still close its side cleanly.
        """
        if self._write_state == _OPEN:
            await self.close_write()
        if self._read_state in (_OPEN, _DONE):
            self._stop_on_data = self._read_state == _OPEN and not self._rx_finished
            self._read_state = _CLOSED
            self._drop_buffered()
            self._wake_reader()
        self._conn._forget_if_done(self)

    def reset(self, code: int = 0) -> None:
        """Abort both directions (RESET_STREAM and STOP_SENDING carrying ``code``).

        A no-op when the stream is already finished.
        """
        if self.is_closed:
            return
        conn = self._conn
        write_open = self._write_state == _OPEN
        read_open = self._read_state == _OPEN
        self._on_reset(code, remote=False, read=True, write=True)
        if write_open:
            conn._reset_sending(self, code)
        if read_open and not self._rx_finished:
            conn._stop_sending(self, code)
        conn._forget_if_done(self)

    # --- driver callbacks -------------------------------------------------------------------
    def _feed(self, data: bytes, end: bool) -> None:
        n = len(data)
        self._delivered += n
        if self._read_state == _OPEN:
            if n:
                self._chunks.append(data)
                self._buffered += n
            if end:
                self._read_state = _DONE
            self._wake_reader()
        elif n:  # closed or reset locally: discard, but keep the peer's window open
            self._conn._consumed(self.stream_id, n)
            if self._stop_on_data and not end:
                self._stop_on_data = False
                self._conn._stop_sending(self, 0)
        if end:
            self._rx_finished = True

    def _on_reset(self, code: int, *, remote: bool, read: bool, write: bool) -> None:
        if (read and self._read_state == _OPEN) or (write and self._write_state == _OPEN):
            self.reset_code = code
            self._reset_remote = remote
        if write and self._write_state == _OPEN:
            self._write_state = _RESET
        if read and self._read_state == _OPEN:
            self._read_state = _RESET
            self._drop_buffered()
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


StreamCallback = Callable[[QuicStream], None]

__all__ = ["PROTOCOL", "QuicStream", "StreamCallback"]
