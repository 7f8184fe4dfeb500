"""yamux (``/yamux/1.0.0``): a sans-I/O session machine for one muxed connection.

Spec: https://github.com/libp2p/specs/blob/master/yamux/README.md (r0, 2023-02-17). Peer
behaviour matched: go-yamux v5 (go-libp2p), js-libp2p yamux 8, rust yamux 0.13.

Theory of operation
-------------------
:class:`YamuxSession` owns the per-stream flow-control state of one connection. The driver
feeds it plaintext with :meth:`~YamuxSession.receive_data` (``b""`` is EOF), drains typed
events with :meth:`~YamuxSession.events`, writes :meth:`~YamuxSession.data_to_send` and runs
the keepalive through :meth:`~YamuxSession.get_timer` / :meth:`~YamuxSession.handle_timer`.
Commands (:meth:`~YamuxSession.open_stream`, :meth:`~YamuxSession.send_data`, ...) append
frames to the same outbound buffer.

*Receive path* (batch-oriented, performance.md §3): one ``receive_data`` call may carry
hundreds of frames. Headers are read with ``struct.unpack_from`` at an offset; a Data body is
never reassembled: the bytes present are handed on as a ``memoryview`` slice, and consecutive
slices for the same stream become one :class:`DataReceived` (one join). A header is validated
before its body is looked at: the declared length must fit the stream's remaining receive
window (CVE-2026-73568, B-10; a ``Data|SYN`` must fit the 256 KiB every stream starts with,
B-11), so nothing is ever buffered for an attacker's 4 GiB length.

*Flow control* (end to end, architecture C11): the receive window only re-opens when the
application reports consumption with :meth:`~YamuxSession.consume`. Like go-yamux
(``util.go``), an update is sent once the credit to hand back reaches half the window, and the
window grows (doubling, up to ``max_window``, within a per-connection budget) each time an
update is sent: always in ``"eager"`` mode, only when the half window was consumed within 4
RTTs in ``"rtt"`` mode (go's auto-tuning). performance.md: a fixed 256 KiB window halves
loopback throughput.

*Send path*: frames are queued as a list of chunks (headers and references to the caller's
immutable payloads) and joined once per :meth:`~YamuxSession.data_to_send`, so a payload is
copied once. Large writes are split into frames of ``max_frame_payload`` bytes (go and js:
64 KiB including the header); consecutive writes to the same stream while its frame is still
the last one queued are merged into that frame by patching the header's length, so many small
writes cost one header. FIN always goes in its own frame (see :meth:`~YamuxSession.close_stream`).

*Wire quirks accepted* (go-yamux v5): ``WindowUpdate|RST`` carries the reset's error code in
the length (never added to a window, B-13) and a normal close is just EOF without GoAway.
A GoAway with code 0 only stops new streams; any other code ends the session at once (go and
js end the session on every GoAway).

Errors: a protocol violation queues ``GoAway(1)``, emits a :class:`StreamReset` per stream and
:class:`ConnectionTerminated`, puts the session in its terminal state and raises
:class:`~glueberry.errors.RemoteProtocolError` (``wire_code=1``). Command misuse raises
:class:`~glueberry.errors.LocalProtocolError`; misuse scoped to one stream (writing after
FIN, an unknown stream ID) leaves the session usable.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Iterator
from typing import Final, NoReturn

from glueberry.errors import (
    ConnectionLost,
    GlueberryError,
    LocalProtocolError,
    RemoteProtocolError,
)
from glueberry.proto.yamux_events import (
    ConnectionTerminated,
    DataReceived,
    GoAwayReceived,
    PingAcknowledged,
    SendWindowAvailable,
    StreamAcknowledged,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowGrowth,
    YamuxConfig,
    YamuxEvent,
)
from glueberry.proto.yamux_frames import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    HEADER,
    HEADER_SIZE,
    INITIAL_STREAM_WINDOW,
    MAX_U32,
    PROTOCOL_ID,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    check_header,
)

logger = logging.getLogger(__name__)

_pack_len = struct.Struct(">I").pack_into
# DataReceived is built once per read on the data path: the slots are filled through their
# descriptors, which a frozen dataclass's __setattr__ does not guard (no Python frame).
_new_object = object.__new__
_set_stream_id = vars(DataReceived)["stream_id"].__set__
_set_data = vars(DataReceived)["data"].__set__
_pack = HEADER.pack
_unpack_from = HEADER.unpack_from


# --------------------------------------------------------------------------- stream state
class _Stream:
    """Flow-control state of one stream (the session's private bookkeeping)."""

    __slots__ = (
        "accepted",
        "acked",
        "epoch",
        "inbound",
        "local_fin",
        "recv_buffered",
        "recv_credit",
        "recv_window",
        "remote_fin",
        "send_blocked",
        "send_window",
        "sid",
        "writable",
    )

    def __init__(self, sid: int, inbound: bool, recv_window: int, now: float) -> None:
        self.sid = sid
        self.inbound = inbound
        self.accepted = not inbound  # inbound: ACK sent?
        self.acked = inbound  # outbound: ACK received?
        self.local_fin = False
        self.writable = not inbound  # accepted and not local_fin: the send fast path
        self.remote_fin = False
        self.send_window = INITIAL_STREAM_WINDOW
        self.send_blocked = False
        self.recv_window = recv_window  # the window we aim to keep open
        self.recv_credit = INITIAL_STREAM_WINDOW  # what the peer may still send
        self.recv_buffered = 0  # delivered but not yet consumed
        self.epoch = now  # time of the last window update (rtt growth)


_NO_STREAM: Final = 0


class YamuxSession:
    """One yamux session (sans-I/O). See the module docstring for the theory of operation.

    Call order: any interleaving of commands and ``receive_data``; after each, drain
    ``events()`` and write ``data_to_send()``; re-arm a timer at ``get_timer()`` and call
    ``handle_timer(now)`` when it fires. After :class:`ConnectionTerminated`, the session
    ignores input and refuses commands.
    """

    def __init__(
        self, is_client: bool, config: YamuxConfig | None = None, *, now: float | None = None
    ) -> None:
        """Args:
        is_client: True on the side that dialed (odd stream IDs).
        config: limits and tuning; defaults to :class:`YamuxConfig()`.
        now: the current time, to start the keepalive clock (else the first ``now`` seen).
        """
        self.config = cfg = config or YamuxConfig()
        self.is_client = is_client
        self._parity = 1 if is_client else 0  # our own stream IDs have this parity
        self._next_id = 1 if is_client else 2
        self._streams: dict[int, _Stream] = {}
        self._events: deque[YamuxEvent] = deque()
        #: The pending events themselves, oldest first, for a driver that pops them in a
        #: loop (no generator per read). Popping from it is the same as :meth:`events`.
        self.event_queue = self._events
        # Outbound frames as chunks (headers, payload references), joined once per
        # data_to_send(): one copy of the payload in all, and no large buffer regrown and
        # freed per batch.
        self._out: list[bytes | bytearray | memoryview] = []
        #: Size of the outbound queue (what :meth:`data_to_send` would return); read-only.
        self.bytes_to_send = 0
        self._terminated = False
        self._local_go_away: int | None = None
        self._remote_go_away: int | None = None
        # counters
        self._num_inbound = 0
        self._num_outbound = 0
        self._unaccepted = 0
        self._unacked = 0
        self._budget_used = 0
        self._growth_initial = cfg.initial_window
        # receive parser state
        self._rx_partial = b""  # incomplete header bytes (< 12)
        self._rx_left = 0  # Data body bytes still to come
        self._rx_sid = _NO_STREAM
        self._rx_deliver = False  # deliver (True) or discard the rest of the body
        self._rx_fin = False  # FIN to apply once the body is complete
        # coalesced DataReceived
        self._pend_sid = _NO_STREAM
        self._pend: list[memoryview] = []
        # send coalescing: the last frame queued is Data for _tail_sid; _tail_hdr is its
        # header (a bytearray in _out, patched as writes are merged into the frame)
        self._tail_sid = _NO_STREAM
        self._tail_hdr = bytearray(HEADER_SIZE)
        self._tail_len = 0
        self._max_payload = cfg.max_frame_payload
        # time, pings, keepalive
        self._now = now if now is not None else 0.0
        self._clock_started = now is not None
        self._last_rx = self._now
        self._ping_seq = 1
        self._ping_id: int | None = None
        self._ping_sent = 0.0
        self._pongs_queued = 0
        self._rtt: float | None = None

    # ------------------------------------------------------------------ introspection
    @property
    def is_terminated(self) -> bool:
        return self._terminated

    @property
    def rtt(self) -> float | None:
        """Smoothed ping round-trip time in seconds, once a ping was answered."""
        return self._rtt

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    @property
    def num_outbound_streams(self) -> int:
        return self._num_outbound

    @property
    def num_inbound_streams(self) -> int:
        return self._num_inbound

    @property
    def unacknowledged_outbound(self) -> int:
        """Our streams the peer has not ACKed yet (the spec's ACK backlog)."""
        return self._unacked

    @property
    def window_budget_used(self) -> int:
        """Bytes of window growth (beyond ``initial_window``) currently granted."""
        return self._budget_used

    @property
    def can_open_stream(self) -> bool:
        """Whether :meth:`open_stream` may be called now without exceeding a limit."""
        cfg = self.config
        return (
            not self._terminated
            and self._local_go_away is None
            and self._remote_go_away is None
            and self._num_outbound < cfg.max_outbound_streams
            and self._unacked < cfg.ack_backlog
            and self._next_id <= MAX_U32
        )

    @property
    def remote_go_away(self) -> int | None:
        return self._remote_go_away

    def has_stream(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def send_window(self, stream_id: int) -> int:
        """Bytes :meth:`send_data` would accept on the stream now (0 if unknown)."""
        st = self._streams.get(stream_id)
        return st.send_window if st is not None and not st.local_fin else 0

    def receive_window(self, stream_id: int) -> int:
        """Bytes the peer may still send on the stream before a window update (0 if unknown)."""
        st = self._streams.get(stream_id)
        return st.recv_credit if st is not None else 0

    def receive_window_size(self, stream_id: int) -> int:
        """The stream's current target receive window (grows from ``initial_window``)."""
        st = self._streams.get(stream_id)
        return st.recv_window if st is not None else 0

    def buffered(self, stream_id: int) -> int:
        """Bytes delivered on the stream and not yet reported with :meth:`consume`."""
        st = self._streams.get(stream_id)
        return st.recv_buffered if st is not None else 0

    # ------------------------------------------------------------------ C2 contract
    def next_event(self) -> YamuxEvent | None:
        """The next event, or None when there is none."""
        events = self._events
        return events.popleft() if events else None

    def events(self) -> Iterator[YamuxEvent]:
        """Drain every pending event, oldest first."""
        events = self._events
        while events:
            yield events.popleft()

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call (``b""`` if nothing)."""
        out = self._out
        self._tail_sid = _NO_STREAM
        self._pongs_queued = 0
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        self.bytes_to_send = 0
        return data

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run (keepalive or ping deadline), or None."""
        if self._terminated or not self._clock_started:
            return None
        if self._ping_id is not None:
            return self._ping_sent + self.config.ping_timeout
        interval = self.config.keepalive_interval
        if interval is None:
            return None
        return self._last_rx + interval

    def handle_timer(self, now: float) -> None:
        """Run the keepalive: ping after ``keepalive_interval`` of silence; end the session
        when a ping stays unanswered for ``ping_timeout`` (go closes without GoAway)."""
        self._touch(now)
        if self._terminated:
            return
        if self._ping_id is not None:
            if now >= self._ping_sent + self.config.ping_timeout:
                self._terminate(ConnectionLost("yamux ping timed out", retriable=True))
            return
        interval = self.config.keepalive_interval
        if interval is not None and now >= self._last_rx + interval:
            self.ping(now)

    def receive_data(self, data: bytes | bytearray | memoryview, now: float | None = None) -> None:
        """Feed bytes from the peer; ``b""`` means EOF.

        Raises:
            RemoteProtocolError: the peer broke the protocol; GoAway(1) is queued, the
                session is terminated and its final events are queued.
        """
        if now is not None:
            if self._clock_started:
                self._now = now
            else:
                self._touch(now)
        if self._terminated:
            return
        if not data:
            self._on_eof()
            return
        self._last_rx = self._now
        n = len(data)
        if n > HEADER_SIZE and type(data) is bytes and not (self._rx_left or self._rx_partial):
            # The read is one plain Data frame (a lone message): _parse's fast path, inline.
            version, ftype, flags, sid, length = _unpack_from(data, 0)
            if ftype == TYPE_DATA and flags == 0 and version == 0 and length + HEADER_SIZE == n:
                st = self._streams.get(sid)
                if st is not None and length <= st.recv_credit and not st.remote_fin:
                    st.recv_credit -= length
                    st.recv_buffered += length
                    ev = _new_object(DataReceived)
                    _set_stream_id(ev, sid)
                    _set_data(ev, data[HEADER_SIZE:])
                    self._events.append(ev)
                    return
        try:
            self._parse(data)
        finally:
            if self._pend:
                self._flush_pending()

    # ------------------------------------------------------------------ commands
    def open_stream(self) -> int:
        """Open a stream: queue ``WindowUpdate|SYN`` (carrying any window beyond 256 KiB).

        Data may be sent at once, before the peer's ACK. Returns the new stream ID.

        Raises:
            LocalProtocolError: the session is over or going away, or IDs are exhausted.
        """
        self._check_open()
        if self._local_go_away is not None or self._remote_go_away is not None:
            raise LocalProtocolError("yamux session is going away", protocol=PROTOCOL_ID)
        sid = self._next_id
        if sid > MAX_U32:
            raise LocalProtocolError("yamux stream IDs exhausted", protocol=PROTOCOL_ID)
        self._next_id = sid + 2
        st = _Stream(sid, False, self.config.initial_window, self._now)
        self._streams[sid] = st
        self._num_outbound += 1
        self._unacked += 1
        delta = st.recv_window - st.recv_credit
        st.recv_credit += delta
        self._queue(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, delta)
        return sid

    def accept_stream(self, stream_id: int) -> None:
        """Acknowledge an inbound stream (``WindowUpdate|ACK`` with any extra window).

        Sending data or FIN on a stream accepts it implicitly. No-op for a stream that is
        gone or already accepted.
        """
        self._check_open()
        st = self._streams.get(stream_id)
        if st is not None and not st.accepted:
            self._accept(st)

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue up to the stream's send window of ``data``; returns how many bytes.

        When fewer than ``len(data)`` are taken, a :class:`SendWindowAvailable` follows once
        the peer grants more credit.

        Raises:
            LocalProtocolError: unknown or reset stream, or already half-closed (FIN).
        """
        st = self._streams.get(stream_id)
        if st is not None and st.writable and type(data) is bytes and self._tail_sid == stream_id:
            # Fast path: a small write merged into the stream's frame that is still last.
            n = len(data)
            tail = self._tail_len + n
            if 0 < n <= st.send_window and tail <= self._max_payload:
                st.send_window -= n
                self._out.append(data)
                self.bytes_to_send += n
                self._tail_len = tail
                _pack_len(self._tail_hdr, 8, tail)
                return n
        return self._send_data(st, stream_id, data)

    def data_frame_now(self, stream_id: int, n: int) -> bytes | None:
        """The header of a Data frame of ``n`` bytes the caller sends itself, right now.

        The latency path of :meth:`send_data`: when nothing else is queued for the peer, the
        stream is open for writing and its send window takes all ``n`` (``0 < n`` and at
        most one frame), the window is charged and the 12-byte header is returned; the
        caller must put ``header ‖ payload`` on the wire before anything else. Otherwise
        nothing changes and ``None`` is returned: use :meth:`send_data`.
        """
        st = self._streams.get(stream_id)
        if (
            st is None
            or not st.writable
            or self._out
            or not 0 < n <= st.send_window
            or n > self._max_payload
        ):
            return None
        st.send_window -= n
        return _pack(0, TYPE_DATA, 0, stream_id, n)

    def _send_data(
        self, st: _Stream | None, stream_id: int, data: bytes | bytearray | memoryview
    ) -> int:
        if st is None or not st.writable:
            st = self._writable(stream_id)
            if not st.accepted:
                self._accept(st)
        if type(data) is memoryview:
            if data.itemsize != 1 or not data.c_contiguous:
                data = memoryview(bytes(data))  # count bytes, not items
            immutable = type(data.obj) is bytes
        else:
            immutable = type(data) is bytes
        n = len(data)
        window = st.send_window
        if n > window:
            st.send_blocked = True
            n = window
            if n == 0:
                return 0
        elif n == 0:
            return 0
        if not immutable:
            data = bytes(memoryview(data)[:n])  # the caller may reuse its buffer afterwards
        elif n < len(data):
            data = memoryview(data)[:n]
        st.send_window = window - n
        out = self._out
        self.bytes_to_send += n
        limit = self._max_payload
        off = 0
        if self._tail_sid == stream_id:
            # Merge into the Data frame that is still the last one queued.
            tail = self._tail_len
            if tail + n <= limit:  # the common case: it all fits
                out.append(data)
                self._tail_len = tail = tail + n
                _pack_len(self._tail_hdr, 8, tail)
                return n
            off = limit - tail
            if off:
                out.append(memoryview(data)[:off])
                self._tail_len = limit
                _pack_len(self._tail_hdr, 8, limit)
        while off < n:
            take = min(n - off, limit)
            self._tail_hdr = hdr = bytearray(_pack(0, TYPE_DATA, 0, stream_id, take))
            out.append(hdr)
            out.append(data if take == n else memoryview(data)[off : off + take])
            self.bytes_to_send += HEADER_SIZE
            off += take
            self._tail_sid = stream_id
            self._tail_len = take
        return n

    def close_stream(self, stream_id: int) -> None:
        """Half-close our side (FIN). Idempotent on a stream already half-closed or gone."""
        self._check_open()
        st = self._streams.get(stream_id)
        if st is None or st.local_fin:
            return
        if not st.accepted:
            self._accept(st)
        st.local_fin = True
        st.writable = False
        # FIN always travels in its own WindowUpdate frame, never piggy-backed on the last
        # Data frame: the spec allows Data|FIN, but go-yamux applies the FIN flag before it
        # buffers that frame's body, so a go reader that is already waiting sees EOF and
        # loses the last frame's bytes. go-yamux itself never sends Data|FIN.
        self._tail_sid = _NO_STREAM
        self._queue(TYPE_WINDOW_UPDATE, FLAG_FIN, stream_id, 0)
        if st.remote_fin:
            self._remove(st)

    def reset_stream(self, stream_id: int, code: int = 0) -> None:
        """Abort the stream: queue ``WindowUpdate|RST`` with ``code`` in the length (go v5).

        No event follows (the caller knows). No-op for a stream that is already gone.
        """
        if not 0 <= code <= MAX_U32:
            raise LocalProtocolError("yamux reset code must fit in u32", protocol=PROTOCOL_ID)
        self._check_open()
        st = self._streams.get(stream_id)
        if st is None:
            return
        self._queue(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, code)
        self._remove(st)

    def consume(self, stream_id: int, n: int, now: float | None = None) -> None:
        """The application consumed ``n`` delivered bytes: re-open that much window.

        A window update goes out once the credit to hand back reaches half the window
        (go-yamux ``GrowTo``); the window may grow at the same time (see ``window_growth``).
        No-op for streams that are gone.

        Raises:
            LocalProtocolError: more bytes reported than were delivered.
        """
        if now is not None:
            self._touch(now)
        st = self._streams.get(stream_id)
        if st is None or self._terminated:
            return
        if not 0 <= n <= st.recv_buffered:
            raise LocalProtocolError(
                f"consume({n}) with {st.recv_buffered} bytes delivered", protocol=PROTOCOL_ID
            )
        st.recv_buffered -= n
        if st.remote_fin:
            return  # nothing more can arrive: no credit to hand back
        window = st.recv_window
        delta = window - st.recv_credit - st.recv_buffered
        if delta < (window >> 1):
            return
        now_ = self._now
        cfg = self.config
        growth = cfg.window_growth
        if window < cfg.max_window and (
            growth == "eager"
            or (growth == "rtt" and self._rtt is not None and now_ - st.epoch < 4 * self._rtt)
        ):
            grown = min(window * 2, cfg.max_window)
            extra = grown - window
            room = cfg.connection_window_budget - self._budget_used
            if extra > room:
                extra = max(room, 0)
            if extra:
                self._budget_used += extra
                st.recv_window = window + extra
                delta += extra
        st.epoch = now_
        st.recv_credit += delta
        self._queue(TYPE_WINDOW_UPDATE, 0, stream_id, delta)

    def ping(self, now: float) -> int:
        """Send a ping (or join the outstanding one); returns its opaque ID.

        :class:`PingAcknowledged` follows with the round-trip time; no answer within
        ``ping_timeout`` ends the session.
        """
        self._touch(now)
        self._check_open()
        if self._ping_id is not None:
            return self._ping_id
        pid = self._ping_seq
        self._ping_seq = (pid + 1) & MAX_U32 or 1
        self._ping_id = pid
        self._ping_sent = now
        self._queue(TYPE_PING, FLAG_SYN, 0, pid)
        return pid

    def go_away(self, code: int = GO_AWAY_NORMAL) -> None:
        """Queue GoAway: from now on inbound SYNs are reset and no stream may be opened.

        The session stays usable for existing streams; the driver closes the connection.
        """
        if not 0 <= code <= MAX_U32:
            raise LocalProtocolError("yamux GoAway code must fit in u32", protocol=PROTOCOL_ID)
        self._check_open()
        if self._local_go_away is None:
            self._local_go_away = code
            self._queue(TYPE_GO_AWAY, 0, 0, code)

    # ------------------------------------------------------------------ receive internals
    def _parse(self, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data)
        n = len(mv)
        pos = 0
        if self._rx_left:
            pos = min(self._rx_left, n)
            self._body_more(mv[:pos])
            if self._rx_left:
                return
        if self._rx_partial:
            need = HEADER_SIZE - len(self._rx_partial)
            if n - pos < need:
                self._rx_partial += mv[pos:]
                return
            hdr = self._rx_partial + mv[pos : pos + need]
            self._rx_partial = b""
            pos = self._frame(hdr, 0, mv, pos + need, n)
            if self._terminated:
                return
        streams = self._streams
        pend = self._pend
        while n - pos >= HEADER_SIZE:
            version, ftype, flags, sid, length = _unpack_from(mv, pos)
            if ftype == TYPE_DATA and flags == 0 and version == 0:
                # Fast path: a plain Data frame on an open stream, within its window.
                st = streams.get(sid)
                if st is not None and length <= st.recv_credit and not st.remote_fin:
                    st.recv_credit -= length
                    st.recv_buffered += length
                    start = pos + HEADER_SIZE
                    end = start + length
                    if end > n:
                        end = n
                        self._rx_left = length - (n - start)
                        self._rx_sid = sid
                        self._rx_deliver = True
                        self._rx_fin = False
                    if end > start:
                        if sid != self._pend_sid:
                            if pend:
                                self._flush_pending()
                            self._pend_sid = sid
                        pend.append(mv[start:end])
                    pos = end
                    continue
            pos = self._frame(mv, pos, mv, pos + HEADER_SIZE, n)
            if self._terminated:
                return
        if pos < n:
            self._rx_partial = bytes(mv[pos:])

    def _frame(
        self,
        hbuf: bytes | memoryview,
        hoff: int,
        mv: memoryview,
        pos: int,
        n: int,
    ) -> int:
        """Handle the header at ``hbuf[hoff:]``; its body (if any) starts at ``mv[pos]``.
        Returns the position after what was consumed."""
        version, ftype, flags, sid, length = _unpack_from(hbuf, hoff)
        try:
            check_header(version, ftype, flags)
        except RemoteProtocolError as exc:
            self._fail(str(exc))
        if ftype == TYPE_DATA:
            return self._data_frame(flags, sid, length, mv, pos)
        if ftype == TYPE_WINDOW_UPDATE:
            self._window_frame(flags, sid, length)
        elif ftype == TYPE_PING:
            self._ping_frame(flags, length)
        else:
            self._go_away_frame(length)
        return pos

    def _data_frame(self, flags: int, sid: int, length: int, mv: memoryview, pos: int) -> int:
        n = len(mv)
        if sid == 0:
            self._fail("yamux Data frame on stream 0")
        st = self._streams.get(sid)
        if flags & FLAG_SYN:
            if length > INITIAL_STREAM_WINDOW:
                # Checked before any stream state exists (rust yamux CVE-2026-32314, B-11).
                self._fail(f"yamux Data|SYN of {length} bytes exceeds the initial window")
            st = self._incoming(sid, st)
        elif st is None:
            self._check_unknown(sid)
        deliver = False
        if st is not None:
            if length > st.recv_credit:
                self._fail(
                    f"yamux stream {sid}: {length} bytes exceed the receive window "
                    f"({st.recv_credit})"
                )
            if flags & FLAG_ACK:
                self._on_ack(st)
            if length and st.remote_fin:
                self._fail(f"yamux stream {sid}: data after FIN")
            st.recv_credit -= length
            if flags & FLAG_RST:
                self._on_reset(st, 0)
                st = None
            else:
                deliver = True
                st.recv_buffered += length
        elif length > self.config.max_window:
            # Frames for streams already gone are skipped as they arrive, but no peer can
            # have had more credit than our largest window.
            self._fail(f"yamux {length}-byte Data frame on unknown stream {sid}")
        end = pos + length
        fin = bool(flags & FLAG_FIN) and st is not None
        if end > n:
            self._rx_left = end - n
            self._rx_sid = sid
            self._rx_deliver = deliver
            self._rx_fin = fin
            end = n
        if deliver and end > pos:
            if sid != self._pend_sid:
                if self._pend:
                    self._flush_pending()
                self._pend_sid = sid
            self._pend.append(mv[pos:end])
        if fin and not self._rx_left and st is not None:
            self._on_remote_fin(st)
        return end

    def _body_more(self, chunk: memoryview) -> None:
        """The continuation of a Data body that began in an earlier ``receive_data``."""
        self._rx_left -= len(chunk)
        sid = self._rx_sid
        if self._rx_deliver and sid in self._streams:
            if sid != self._pend_sid:
                if self._pend:
                    self._flush_pending()
                self._pend_sid = sid
            self._pend.append(chunk)
        if not self._rx_left and self._rx_fin:
            self._rx_fin = False
            st = self._streams.get(sid)
            if st is not None:
                self._on_remote_fin(st)

    def _window_frame(self, flags: int, sid: int, length: int) -> None:
        if sid == 0:
            self._fail("yamux WindowUpdate on stream 0")
        st = self._streams.get(sid)
        if flags & FLAG_SYN:
            st = self._incoming(sid, st)
        elif st is None:
            self._check_unknown(sid)
        if st is None:
            return
        if flags & FLAG_ACK:
            self._on_ack(st)
        if flags & FLAG_RST:
            # go-yamux v5: the length is the application error code, never a delta (B-13).
            self._on_reset(st, length)
            return
        if length:
            window = st.send_window + length
            if window > MAX_U32:
                self._fail(f"yamux stream {sid}: window update overflows u32 (B-12)")
            st.send_window = window
            if st.send_blocked:
                st.send_blocked = False
                self._emit(SendWindowAvailable(stream_id=sid))
        if flags & FLAG_FIN:
            self._on_remote_fin(st)

    def _ping_frame(self, flags: int, opaque: int) -> None:
        if flags & FLAG_SYN:
            if self._pongs_queued < self.config.ping_backlog:
                self._pongs_queued += 1
                self._queue(TYPE_PING, FLAG_ACK, 0, opaque)
            return  # beyond the backlog a flood's replies are dropped (go does the same)
        if flags & FLAG_ACK and opaque == self._ping_id:
            rtt = max(self._now - self._ping_sent, 0.0)
            self._ping_id = None
            prev = self._rtt
            self._rtt = rtt if prev is None else (prev + rtt) / 2
            self._emit(PingAcknowledged(rtt=rtt))
        # An ACK nobody asked for is ignored (B-16).

    def _go_away_frame(self, code: int) -> None:
        self._remote_go_away = code
        self._emit(GoAwayReceived(code=code))
        if code != GO_AWAY_NORMAL:
            self._terminate(ConnectionLost(f"peer sent yamux GoAway with code {code}"))

    def _incoming(self, sid: int, existing: _Stream | None) -> _Stream | None:
        """A SYN for ``sid``: create the stream, or reset it when a limit says no."""
        if sid & 1 == self._parity:
            self._fail(f"yamux SYN for stream {sid} with our own ID parity")
        if existing is not None:
            self._fail(f"yamux SYN for stream {sid}, which is already open")
        cfg = self.config
        if (
            self._local_go_away is not None
            or self._num_inbound >= cfg.max_inbound_streams
            or self._unaccepted >= cfg.accept_backlog
        ):
            logger.debug("yamux: refusing inbound stream %d", sid)
            self._queue(TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0)
            return None
        st = _Stream(sid, True, cfg.initial_window, self._now)
        self._streams[sid] = st
        self._num_inbound += 1
        self._unaccepted += 1
        self._emit(StreamOpened(stream_id=sid))
        if cfg.auto_accept:
            self._accept(st)
        return st

    def _check_unknown(self, sid: int) -> None:
        """A frame without SYN for a stream we do not know: late frames for streams that
        are gone are ignored (go, js); an ID of ours we never used is a violation."""
        if sid & 1 == self._parity and sid >= self._next_id:
            self._fail(f"yamux frame for stream {sid}, which was never opened")

    def _on_ack(self, st: _Stream) -> None:
        if not st.acked:
            st.acked = True
            self._unacked -= 1
            self._emit(StreamAcknowledged(stream_id=st.sid))

    def _on_remote_fin(self, st: _Stream) -> None:
        if st.remote_fin:
            return
        st.remote_fin = True
        self._emit(StreamEnded(stream_id=st.sid))
        if st.local_fin:
            self._remove(st)

    def _on_reset(self, st: _Stream, code: int) -> None:
        self._remove(st)
        self._emit(StreamReset(stream_id=st.sid, code=code, remote=True))

    def _on_eof(self) -> None:
        error: GlueberryError | None = None
        if self._rx_left or self._rx_partial:
            error = ConnectionLost("yamux: EOF in the middle of a frame")
        self._terminate(error)

    # ------------------------------------------------------------------ helpers
    def _touch(self, now: float) -> None:
        self._now = now
        if not self._clock_started:
            self._clock_started = True
            self._last_rx = now

    def _check_open(self) -> None:
        if self._terminated:
            raise LocalProtocolError("yamux session is terminated", protocol=PROTOCOL_ID)

    def _writable(self, stream_id: int) -> _Stream:
        self._check_open()
        st = self._streams.get(stream_id)
        if st is None:
            raise LocalProtocolError(f"yamux stream {stream_id} is not open", protocol=PROTOCOL_ID)
        if st.local_fin:
            raise LocalProtocolError(
                f"yamux stream {stream_id} is closed for writing", protocol=PROTOCOL_ID
            )
        return st

    def _accept(self, st: _Stream) -> None:
        st.accepted = True
        st.writable = not st.local_fin
        self._unaccepted -= 1
        delta = max(st.recv_window - st.recv_credit - st.recv_buffered, 0)
        st.recv_credit += delta
        self._queue(TYPE_WINDOW_UPDATE, FLAG_ACK, st.sid, delta)

    def _queue(self, ftype: int, flags: int, sid: int, length: int) -> None:
        self._out.append(_pack(0, ftype, flags, sid, length))
        self.bytes_to_send += HEADER_SIZE
        self._tail_sid = _NO_STREAM

    def _remove(self, st: _Stream) -> None:
        del self._streams[st.sid]
        if st.inbound:
            self._num_inbound -= 1
            if not st.accepted:
                self._unaccepted -= 1
        else:
            self._num_outbound -= 1
            if not st.acked:
                self._unacked -= 1
        self._budget_used -= st.recv_window - self._growth_initial
        if self._tail_sid == st.sid:
            self._tail_sid = _NO_STREAM

    def _emit(self, event: YamuxEvent) -> None:
        if self._pend:
            self._flush_pending()
        self._events.append(event)

    def _flush_pending(self) -> None:
        pend = self._pend
        data = bytes(pend[0]) if len(pend) == 1 else b"".join(pend)
        pend.clear()
        ev = _new_object(DataReceived)  # the frozen dataclass without its Python __init__
        _set_stream_id(ev, self._pend_sid)
        _set_data(ev, data)
        self._events.append(ev)

    def _fail(self, message: str) -> NoReturn:
        """A protocol violation: GoAway(1), terminate, raise."""
        exc = RemoteProtocolError(message, protocol=PROTOCOL_ID, wire_code=GO_AWAY_PROTOCOL_ERROR)
        if not self._terminated:
            logger.debug("yamux protocol error: %s", message)
            self._queue(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR)
            self._terminate(exc)
        raise exc

    def _terminate(self, error: GlueberryError | None) -> None:
        if self._terminated:
            return
        if self._pend:
            self._flush_pending()
        self._terminated = True
        self._rx_left = 0
        self._rx_partial = b""
        for st in list(self._streams.values()):
            self._remove(st)
            self._events.append(StreamReset(stream_id=st.sid, code=0, remote=True))
        self._ping_id = None
        self._events.append(ConnectionTerminated(error=error))


__all__ = [
    "ConnectionTerminated",
    "DataReceived",
    "GoAwayReceived",
    "PingAcknowledged",
    "SendWindowAvailable",
    "StreamAcknowledged",
    "StreamEnded",
    "StreamOpened",
    "StreamReset",
    "WindowGrowth",
    "YamuxConfig",
    "YamuxEvent",
    "YamuxSession",
]
