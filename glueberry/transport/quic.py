"""libp2p QUIC transport (``/quic-v1``) on aioquic's sans-I/O QUIC core.

Specs: https://github.com/libp2p/specs/blob/master/quic/README.md (QUIC v1, RFC 9000;
ALPN ``"libp2p"``; native streams, no security or muxer negotiation) and
https://github.com/libp2p/specs/blob/master/tls/tls.md (peer authentication, mutual).

Theory of operation
-------------------
:class:`QuicEndpoint` owns one UDP socket and serves any number of connections on it, both
ones it dialed and ones it accepted (hole punching needs both on one port). Datagrams are
read in batches from a reader callback (``loop.add_reader``; up to
:data:`RECV_BATCH` per wake-up), pre-filtered, and routed by destination connection ID:

* a short-header packet shorter than ``1 + cid + 4 + 16`` bytes (too short for header
  protection, aioquic#643, B-31), a packet without QUIC's fixed bit, a long header with
  connection IDs over 20 bytes: dropped before aioquic sees it;
* a known connection ID: fed to that connection (IDs issued and retired during the
  connection are tracked from aioquic's events, B-34);
* an unknown ID: dropped, unless the endpoint listens and it is a client Initial in a
  datagram of at least 1200 bytes (RFC 9000 §14.1), in which case a connection is created
  if the endpoint has fewer than ``max_connections`` and fewer than
  ``max_pending_handshakes`` handshaking inbound connections. An unsupported version gets
  a Version Negotiation packet (no amplification: the request was at least as large).

:class:`QuicConnection` (a :class:`~glueberry.transport.base.MuxedConnection`) drives one
:class:`~glueberry.transport._aioquic_hooks.GlueberryQuicConnection` without tasks: received
datagrams, timer callbacks (``loop.call_at`` at aioquic's ``get_timer()``) and application
calls each end with one pass over aioquic's events and, coalesced per loop iteration, one
``datagrams_to_send``. Security: aioquic runs TLS 1.3 with our certificate (from
:mod:`glueberry.wire.tlscert`), the server requests the client's certificate (hook H1),
and when aioquic reports ``HandshakeCompleted`` the peer's certificates are verified with
:func:`~glueberry.wire.tlscert.verify_certificate_chain` *before any stream event is
delivered*. A missing or invalid certificate, or another peer than the dialed one, closes
the connection with a TLS alert code and nothing of it reaches the application.

:class:`QuicStream` (a :class:`~glueberry.transport.base.Stream`) is one bidirectional QUIC
stream. Flow control is end to end (architecture C11): received bytes wait in the stream
until read, and only what the application consumed re-opens the peer's window (hook H3);
``write`` hands data to aioquic while fewer than ``send_high_water`` bytes of the stream
wait unsent, so a slow reader or a full congestion window slows the writer. ``reset`` sends
RESET_STREAM and STOP_SENDING (both directions, as go-libp2p's ``Reset``); ``close`` sends
FIN and STOP_SENDING for the read side (go-libp2p's ``Close``).

Timeouts: the handshake must finish within ``handshake_timeout`` (5 s, rust-libp2p's value),
idle connections close after ``idle_timeout`` (aioquic's idle timer, negotiated with the
peer) and a PING every ``keepalive_interval`` keeps NAT bindings and the idle timer alive.

Ownership (architecture C10): no task is created here. Timers belong to their connection;
connections to their endpoint; endpoints to the :class:`QuicTransport`, whose
:meth:`QuicTransport.close` closes every socket and cancels every timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from aioquic.quic import events as qe
from aioquic.quic.packet import QuicProtocolVersion, encode_quic_version_negotiation
from cryptography.hazmat.primitives.serialization import Encoding

from glueberry.errors import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    GlueberryError,
    HandshakeError,
    HandshakeTimeout,
    LocalProtocolError,
    PeerIdMismatch,
    RemoteProtocolError,
    SecurityError,
    StreamClosed,
    StreamReset,
)
from glueberry.transport import _aioquic_hooks as hooks
from glueberry.wire import tlscert
from glueberry.wire.identity import PeerId, PrivateKey, PublicKey
from glueberry.wire.multiaddr import Multiaddr, MultiaddrError

if TYPE_CHECKING:
    from glueberry.wire.tlscert import CertKeyType

logger = logging.getLogger(__name__)

PROTOCOL: Final = "quic-v1"
#: What :attr:`QuicConnection.security_protocol` reports: the libp2p TLS handshake.
SECURITY: Final = "/tls/1.0.0"
#: Datagrams read per reader wake-up before output is flushed.
RECV_BATCH: Final = 128
#: Length of the connection IDs we issue (aioquic's default).
CID_LENGTH: Final = 8
#: A short-header packet needs the flags byte, our CID, up to 4 packet-number bytes and a
#: 16-byte header-protection sample (RFC 9001 §5.4.2).
MIN_SHORT_PACKET: Final = 1 + CID_LENGTH + 4 + 16
#: RFC 9000 §14.1: a server discards client Initials in datagrams smaller than this.
MIN_INITIAL_DATAGRAM: Final = 1200
_MAX_CID: Final = 20
_SUPPORTED_VERSIONS: Final = (QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2)
# Long-header packet type of an Initial (RFC 9000 §17.2, RFC 9369 §3.2).
_INITIAL_TYPE: Final[dict[int, int]] = {
    QuicProtocolVersion.VERSION_1: 0,
    QuicProtocolVersion.VERSION_2: 1,
}
_FAMILIES: Final = {
    "ip4": socket.AF_INET,
    "dns4": socket.AF_INET,
    "ip6": socket.AF_INET6,
    "dns6": socket.AF_INET6,
}
# QUIC CRYPTO_ERROR (0x100) + TLS alert (RFC 9001 §4.8).
_CRYPTO_ERROR: Final = 0x100
_ALERT_BAD_CERTIFICATE: Final = 42
_ALERT_CERTIFICATE_REQUIRED: Final = 116
_CRYPTO_FRAME: Final = 0x06
_UNI: Final = 0x02


@dataclass(frozen=True, slots=True, kw_only=True)
class QuicConfig:
    """Settings of a :class:`QuicTransport` (times in seconds, sizes in bytes)."""

    handshake_timeout: float = 5.0
    """Whole handshake, dial or accept (rust-libp2p: 5 s)."""
    idle_timeout: float = 30.0
    """Close a connection that received nothing for this long (the peer's may be smaller)."""
    keepalive_interval: float | None = 10.0
    """Send a PING this often on established connections (None: never)."""
    max_connections: int = 256
    """Connections per endpoint (UDP socket), in any state."""
    max_pending_handshakes: int = 64
    """Inbound connections still handshaking, per endpoint."""
    max_incoming_streams: int = 256
    """Bidirectional streams the peer may have open at once (go: 256)."""
    stream_receive_window: int = 2 * 1024 * 1024
    """Unread bytes a stream may hold; the peer's per-stream flow-control window."""
    connection_receive_window: int = 8 * 1024 * 1024
    """Unread bytes all streams of a connection may hold together."""
    send_high_water: int = 256 * 1024
    """A stream's ``write`` waits while this many of its bytes wait unsent."""
    max_datagram_size: int = 1350
    """Largest UDP payload we send."""
    socket_buffer: int = 4 * 1024 * 1024
    """SO_RCVBUF/SO_SNDBUF requested for each socket (the kernel may grant less)."""
    cert_key_type: CertKeyType = "ecdsa-p256"
    """Certificate key (P-256 as go-libp2p and rust-libp2p, or Ed25519)."""

    def __post_init__(self) -> None:
        for name in ("handshake_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"QuicConfig.{name} must be > 0")
        if self.keepalive_interval is not None and not self.keepalive_interval > 0:
            raise ConfigError("QuicConfig.keepalive_interval must be > 0 or None")
        for name in ("max_connections", "max_pending_handshakes", "max_incoming_streams"):
            if getattr(self, name) < 1:
                raise ConfigError(f"QuicConfig.{name} must be >= 1")
        if self.stream_receive_window < 16 * 1024:
            raise ConfigError("QuicConfig.stream_receive_window must be >= 16 KiB")
        if self.connection_receive_window < self.stream_receive_window:
            raise ConfigError("QuicConfig.connection_receive_window must be >= the stream window")
        if self.send_high_water < 1024:
            raise ConfigError("QuicConfig.send_high_water must be >= 1 KiB")
        if not 1200 <= self.max_datagram_size <= 65527:
            raise ConfigError("QuicConfig.max_datagram_size must be in 1200..65527")


# --- streams -----------------------------------------------------------------------------------

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
ConnectionCallback = Callable[["QuicConnection"], None]


# --- connections -------------------------------------------------------------------------------


class QuicConnection:
    """A libp2p QUIC connection; implements :class:`~glueberry.transport.base.MuxedConnection`.

    Made by :meth:`QuicTransport.dial` / :meth:`QuicEndpoint.connect` (outbound) or handed
    to a listener's ``on_connection`` (inbound), always already authenticated.

    Inbound streams go to the ``on_stream`` callback (set at dial time or with
    :meth:`set_stream_handler`), synchronously from the event loop, already accepted;
    streams that arrive before a callback is set wait for it (at most
    ``max_incoming_streams``, the peer's limit).
    """

    transport_name: str = PROTOCOL
    security_protocol: str = SECURITY
    muxer_protocol: str = PROTOCOL

    def __init__(
        self,
        endpoint: QuicEndpoint,
        core: hooks.GlueberryQuicConnection,
        *,
        is_client: bool,
        remote_address: tuple[Any, ...],
        expected_peer: PeerId | None,
        on_stream: StreamCallback | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._loop = endpoint._loop
        self._config = endpoint._config
        self._core = core
        self.local_peer: PeerId = endpoint._identity.peer_id
        self.remote_peer: PeerId = expected_peer if expected_peer is not None else self.local_peer
        self.remote_public_key: PublicKey = self._endpoint._identity.public_key
        self.direction = "outbound" if is_client else "inbound"
        self.local_address: tuple[str, int] = endpoint.local_address
        self.remote_address: tuple[str, int] = (str(remote_address[0]), int(remote_address[1]))
        self._remote_sockaddr = remote_address
        self._is_client = is_client
        self._expected_peer = expected_peer
        self._on_stream = on_stream
        self._unclaimed: list[QuicStream] = []
        self._streams: dict[int, QuicStream] = {}
        self._blocked: set[QuicStream] = set()
        self._cids: set[bytes] = set()
        self._established = False
        self._closing = False  # close() was called
        self._terminated = False
        self._error: GlueberryError | None = None
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._flush_scheduled = False
        self._ping_id = 0
        self._keepalive: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = self._loop.call_later(
            self._config.handshake_timeout, self._handshake_timed_out
        )
        #: Datagrams sent and received (statistics).
        self.datagrams_sent = 0
        self.datagrams_received = 0

    def __repr__(self) -> str:
        return f"<QuicConnection {self.direction} {self.remote_peer} at {self.remote_address}>"

    # --- public API ---------------------------------------------------------------------------
    @property
    def is_closed(self) -> bool:
        return self._closing or self._terminated

    @property
    def is_established(self) -> bool:
        """The handshake finished and the peer's certificate was accepted."""
        return self._established

    @property
    def error(self) -> GlueberryError | None:
        """Why the connection ended, if it ended abnormally."""
        return self._error

    @property
    def streams(self) -> list[QuicStream]:
        return list(self._streams.values())

    @property
    def endpoint(self) -> QuicEndpoint:
        return self._endpoint

    def set_stream_handler(self, on_stream: StreamCallback) -> None:
        """Set the inbound-stream callback; streams that already arrived go to it now."""
        self._on_stream = on_stream
        pending, self._unclaimed = self._unclaimed, []
        for stream in pending:
            self._deliver(stream)

    async def open_stream(self) -> QuicStream:
        """Open a new bidirectional stream (the peer sees it once data or FIN is sent).

        Raises:
            ConnectionLost: the connection is closed or lost.
        """
        if self.is_closed or not self._established:
            raise ConnectionLost("QUIC connection is closed") from self._error
        core = self._core
        sid = core.get_next_available_stream_id()
        core.send_stream_data(sid, b"")  # creates the stream: the next call gets a new ID
        stream = QuicStream(self, sid)
        self._streams[sid] = stream
        return stream

    async def close(self) -> None:
        """Send CONNECTION_CLOSE (no error) and reset the streams left open.

        Returns once the close is sent; the connection drains in the background (three
        probe timeouts, RFC 9000 §10.2) and :meth:`wait_closed` waits for that.
        """
        if self._closing or self._terminated:
            return
        self._closing = True
        self._reset_all(remote=False)
        self._core.close(error_code=0, reason_phrase="")
        self._transmit()
        if not self._ready.done():
            self._ready.set_exception(ConnectionLost("connection closed during the handshake"))
            self._ready.exception()

    async def wait_closed(self) -> None:
        """Wait until the connection is gone (closed and drained, or lost)."""
        await asyncio.shield(self._closed)

    def abort(self) -> None:
        """Close at once: send CONNECTION_CLOSE once, forget the connection."""
        if self._terminated:
            return
        if not self._closing:
            self._closing = True
            with contextlib.suppress(Exception):
                self._core.close(error_code=0, reason_phrase="")
                self._transmit()
        self._terminate(ConnectionLost("QUIC connection aborted"))

    # --- datagrams and timers -------------------------------------------------------------
    def _datagram_received(self, data: bytes, addr: tuple[Any, ...], now: float) -> None:
        if self._terminated:
            return
        self.datagrams_received += 1
        self._core.receive_datagram(data, addr, now)
        self._process_events()

    def _transmit(self) -> None:
        self._flush_scheduled = False
        if self._terminated:
            return
        now = self._loop.time()
        sendto = self._endpoint._sendto
        n = 0
        for data, addr in self._core.datagrams_to_send(now):
            sendto(data, addr)
            n += 1
        self.datagrams_sent += n
        self._process_events()
        if self._blocked:
            self._wake_blocked()
        self._rearm_timer()

    def _want_transmit(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._transmit)

    def _rearm_timer(self) -> None:
        if self._terminated:
            return
        when = self._core.get_timer()
        if when is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        if self._timer is not None:
            if self._timer_at == when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._terminated:
            return
        self._core.handle_timer(self._loop.time())
        self._process_events()
        self._transmit()

    def _on_keepalive(self) -> None:
        self._keepalive = None
        if self._terminated or self._closing:
            return
        self._ping_id += 1
        self._core.send_ping(self._ping_id)
        self._want_transmit()
        interval = self._config.keepalive_interval
        if interval is not None:
            self._keepalive = self._loop.call_later(interval, self._on_keepalive)

    def _handshake_timed_out(self) -> None:
        self._deadline = None
        if self._established or self._terminated:
            return
        err = HandshakeTimeout(
            f"QUIC handshake with {self.remote_address} timed out after "
            f"{self._config.handshake_timeout} s",
            peer_id=self._expected_peer,
        )
        logger.debug("%s", err)
        self._fail(err, error_code=0)

    # --- events ---------------------------------------------------------------------------
    def _process_events(self) -> None:
        core = self._core
        streams = self._streams
        while (ev := core.next_event()) is not None:
            if self._terminated:
                continue  # drain aioquic's queue; nothing reaches the application any more
            if isinstance(ev, qe.StreamDataReceived):
                if not self._established:  # cannot happen: 1-RTT keys come with the handshake
                    continue
                st = streams.get(ev.stream_id)
                if st is None:
                    st = self._new_remote_stream(ev.stream_id)
                    if st is None:
                        core.consume(ev.stream_id, len(ev.data))
                        continue
                st._feed(ev.data, ev.end_stream)
                if ev.end_stream:
                    self._forget_if_done(st)
            else:
                self._rare_event(ev)

    def _rare_event(self, ev: qe.QuicEvent) -> None:
        streams = self._streams
        core = self._core
        if isinstance(ev, qe.HandshakeCompleted):
            self._on_handshake(ev)
        elif isinstance(ev, qe.StreamReset):
            st = streams.get(ev.stream_id)
            if st is not None:
                st._rx_finished = True
                core.stream_reset_by_peer(ev.stream_id, st._delivered)
                st._on_reset(ev.error_code, remote=True, read=True, write=False)
                self._forget_if_done(st)
        elif isinstance(ev, qe.StopSendingReceived):
            st = streams.get(ev.stream_id)
            if st is not None:
                st._on_reset(ev.error_code, remote=True, read=False, write=True)
                self._forget_if_done(st)
        elif isinstance(ev, qe.ConnectionIdIssued):
            self._cids.add(ev.connection_id)
            self._endpoint._routes[ev.connection_id] = self
        elif isinstance(ev, qe.ConnectionIdRetired):
            self._cids.discard(ev.connection_id)
            if self._endpoint._routes.get(ev.connection_id) is self:
                del self._endpoint._routes[ev.connection_id]
        elif isinstance(ev, qe.ConnectionTerminated):
            self._on_terminated(ev)
        # PingAcknowledged, ProtocolNegotiated, DatagramFrameReceived: nothing to do.

    def _on_handshake(self, ev: qe.HandshakeCompleted) -> None:
        if ev.alpn_protocol != tlscert.ALPN_LIBP2P:  # aioquic checks too; be explicit
            self._fail(
                SecurityError(f"QUIC peer negotiated ALPN {ev.alpn_protocol!r}, not libp2p"),
                error_code=_CRYPTO_ERROR + 120,
            )
            return
        certs = hooks.peer_certificates(self._core)
        if not certs:
            self._fail(
                SecurityError("QUIC peer sent no certificate"),
                error_code=_CRYPTO_ERROR + _ALERT_CERTIFICATE_REQUIRED,
            )
            return
        try:
            der = [c.public_bytes(Encoding.DER) for c in certs]
            key = tlscert.verify_certificate_chain(der, time.time())
        except RemoteProtocolError as exc:
            self._fail(
                SecurityError(f"QUIC peer certificate refused: {exc}"),
                error_code=_CRYPTO_ERROR + _ALERT_BAD_CERTIFICATE,
            )
            return
        peer = PeerId.from_public_key(key)
        if self._expected_peer is not None and peer != self._expected_peer:
            self._fail(
                PeerIdMismatch(f"dialed {self._expected_peer}, but {peer} answered", peer_id=peer),
                error_code=_CRYPTO_ERROR + _ALERT_BAD_CERTIFICATE,
            )
            return
        self.remote_peer = peer
        self.remote_public_key = key
        self._established = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        interval = self._config.keepalive_interval
        if interval is not None:
            self._keepalive = self._loop.call_later(interval, self._on_keepalive)
        logger.debug("QUIC %s connection with %s established", self.direction, peer)
        if not self._ready.done():
            self._ready.set_result(None)
        if not self._is_client:
            self._endpoint._accepted(self)

    def _on_terminated(self, ev: qe.ConnectionTerminated) -> None:
        code = ev.error_code
        if self._closing:
            err: GlueberryError = ConnectionLost("QUIC connection closed locally")
        elif not self._established:
            cls = SecurityError if _CRYPTO_ERROR <= code < _CRYPTO_ERROR + 256 else HandshakeError
            err = cls(
                f"QUIC handshake with {self.remote_address} failed: "
                f"code 0x{code:x} {ev.reason_phrase!r}",
                peer_id=self._expected_peer,
            )
        else:
            err = ConnectionLost(
                f"QUIC connection to {self.remote_peer} ended: code 0x{code:x} {ev.reason_phrase!r}"
            )
        self._terminate(err)

    def _fail(self, err: GlueberryError, *, error_code: int) -> None:
        """Refuse the connection (handshake failure, bad certificate): close, forget."""
        logger.debug("QUIC connection with %s refused: %s", self.remote_address, err)
        with contextlib.suppress(Exception):
            self._core.close(error_code=error_code, frame_type=_CRYPTO_FRAME, reason_phrase="")
            for data, addr in self._core.datagrams_to_send(self._loop.time()):
                self._endpoint._sendto(data, addr)
        self._terminate(err)

    def _terminate(self, err: GlueberryError) -> None:
        if self._terminated:
            return
        self._terminated = True
        if self._error is None and not self._closing:
            self._error = err
        for handle in (self._timer, self._keepalive, self._deadline):
            if handle is not None:
                handle.cancel()
        self._timer = self._keepalive = self._deadline = None
        self._reset_all(remote=not self._closing)
        for stream in self._unclaimed:
            stream._on_reset(0, remote=True, read=True, write=True)
        self._unclaimed.clear()
        if not self._ready.done():
            self._ready.set_exception(err)
            self._ready.exception()  # retrieved: nobody may be waiting (inbound)
        if not self._closed.done():
            self._closed.set_result(None)
        self._endpoint._forget(self)

    # --- streams --------------------------------------------------------------------------
    def _new_remote_stream(self, sid: int) -> QuicStream | None:
        if (sid & 1) == (0 if self._is_client else 1):
            return None  # one of ours, already forgotten: late data
        if sid & _UNI:
            # libp2p uses bidirectional streams only: ask the peer to stop, drop the data.
            with contextlib.suppress(ValueError):
                self._core.stop_stream(sid, 0)
                self._want_transmit()
            return None
        stream = QuicStream(self, sid)
        self._streams[sid] = stream
        if self._closing:
            stream.reset()
            return stream
        if self._on_stream is None:
            self._unclaimed.append(stream)
        else:
            self._deliver(stream)
        return stream

    def _deliver(self, stream: QuicStream) -> None:
        assert self._on_stream is not None
        try:
            self._on_stream(stream)
        except Exception:  # the application's callback must not break the receive path
            logger.exception("QUIC on_stream callback failed; resetting %d", stream.stream_id)
            stream.reset()

    def _send(self, stream: QuicStream, data: memoryview) -> None:
        try:
            self._core.send_stream_data(stream.stream_id, cast(bytes, data))
        except (RuntimeError, ValueError) as exc:  # reset under our feet
            raise StreamReset(f"QUIC stream {stream.stream_id}: {exc}") from exc
        stream._written += len(data)
        self._want_transmit()

    def _send_fin(self, stream: QuicStream) -> None:
        if self._terminated or self._closing:
            return
        with contextlib.suppress(RuntimeError, ValueError):
            self._core.send_stream_data(stream.stream_id, b"", end_stream=True)
            self._want_transmit()

    def _reset_sending(self, stream: QuicStream, code: int) -> None:
        if self._terminated or self._closing:
            return
        with contextlib.suppress(RuntimeError, ValueError):
            self._core.reset_stream(stream.stream_id, code)
            self._want_transmit()

    def _stop_sending(self, stream: QuicStream, code: int) -> None:
        if self._terminated or self._closing:
            return
        with contextlib.suppress(RuntimeError, ValueError):
            self._core.stop_stream(stream.stream_id, code)
            self._want_transmit()

    def _consumed(self, sid: int, n: int) -> None:
        if self._terminated:
            return
        if self._core.consume(sid, n):  # a window update is due
            self._want_transmit()

    def _forget_if_done(self, stream: QuicStream) -> None:
        # Keep a stream while its peer may still send: after STOP_SENDING the peer answers
        # with RESET_STREAM (or a FIN); until then its data must not look like a new stream.
        if stream._write_state != _OPEN and stream._rx_finished:
            sid = stream.stream_id
            if self._streams.get(sid) is stream:
                del self._streams[sid]
                self._core.forget_stream(sid)
            self._blocked.discard(stream)

    def _wake_blocked(self) -> None:
        low = self._config.send_high_water // 2
        unsent = self._core.unsent
        for stream in list(self._blocked):
            if stream._write_state != _OPEN or unsent(stream.stream_id, stream._written) <= low:
                self._blocked.discard(stream)
                stream._wake_writers()

    def _reset_all(self, *, remote: bool) -> None:
        streams = list(self._streams.values())
        for stream in streams:
            stream._on_reset(0, remote=remote, read=True, write=True)
        self._blocked.clear()


# --- endpoints -------------------------------------------------------------------------------


class QuicEndpoint:
    """One UDP socket serving QUIC connections, inbound and outbound (see the module doc).

    Not built directly: :meth:`QuicTransport.listen` makes listening endpoints and
    :meth:`QuicTransport.dial` picks one (a listener's, so that the peer sees our listen
    port, or a shared dial-only one).
    """

    def __init__(self, transport: QuicTransport, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._identity = transport._identity
        self._config = transport._config
        self._sock = sock
        self.family = sock.family
        host, port = sock.getsockname()[:2]
        #: ``(host, port)`` the socket is bound to.
        self.local_address: tuple[str, int] = (str(host), int(port))
        self._routes: dict[bytes, QuicConnection] = {}
        self._conns: set[QuicConnection] = set()
        self._on_connection: ConnectionCallback | None = None
        self._touched: set[QuicConnection] = set()
        self._closing = False
        self._closed = False
        #: Counters of what the pre-filter dropped, by reason (statistics and tests).
        self.dropped: dict[str, int] = {}
        #: Datagrams that could not be sent (socket buffer full: treated as loss).
        self.send_failures = 0
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def __repr__(self) -> str:
        return f"<QuicEndpoint {self.local_address} conns={len(self._conns)}>"

    @property
    def listening(self) -> bool:
        return self._on_connection is not None

    @property
    def connections(self) -> list[QuicConnection]:
        return list(self._conns)

    @property
    def multiaddr(self) -> Multiaddr:
        return _to_multiaddr(self.local_address)

    # --- dialing ------------------------------------------------------------------------------
    def connect(
        self,
        address: tuple[Any, ...],
        expected_peer: PeerId | None,
        *,
        on_stream: StreamCallback | None = None,
    ) -> QuicConnection:
        """Start a handshake with ``address`` from this socket; await :meth:`established`.

        Raises:
            ResourceLimitExceeded-like ConnectError: the endpoint is closed or full.
        """
        if self._closing:
            raise ConnectError("QUIC endpoint is closed")
        if len(self._conns) >= self._config.max_connections:
            raise ConnectError(
                f"QUIC endpoint {self.local_address} has {len(self._conns)} connections"
            )
        core = hooks.GlueberryQuicConnection(
            configuration=self._transport._configuration(is_client=True),
            max_incoming_streams=self._config.max_incoming_streams,
        )
        conn = QuicConnection(
            self,
            core,
            is_client=True,
            remote_address=address,
            expected_peer=expected_peer,
            on_stream=on_stream,
        )
        self._add(conn, core.host_cid)
        core.connect(address, now=self._loop.time())
        conn._process_events()
        conn._transmit()
        return conn

    # --- receiving ----------------------------------------------------------------------------
    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def _on_readable(self) -> None:
        sock = self._sock
        now = self._loop.time()
        for _ in range(RECV_BATCH):
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP errors surfacing on Linux: keep serving
                logger.debug("QUIC endpoint %s: recvfrom: %s", self.local_address, exc)
                continue
            try:
                self._datagram(data, addr, now)
            except Exception:  # never let one datagram take the endpoint down (B-31)
                logger.exception("QUIC endpoint: datagram from %s failed", addr)
        touched, self._touched = self._touched, set()
        for conn in touched:
            conn._transmit()

    def _datagram(self, data: bytes, addr: tuple[Any, ...], now: float) -> None:
        n = len(data)
        if n == 0:
            self._drop("empty")
            return
        first = data[0]
        if first & 0x80:  # long header
            if n < 7:
                self._drop("short")
                return
            version = int.from_bytes(data[1:5], "big")
            dlen = data[5]
            if dlen > _MAX_CID or n < 7 + dlen:
                self._drop("malformed")
                return
            dcid = data[6 : 6 + dlen]
            slen = data[6 + dlen]
            # Anything but Version Negotiation carries at least a 16-byte AEAD tag (or
            # Retry integrity tag) after the header.
            if slen > _MAX_CID or n < 7 + dlen + slen + (4 if version == 0 else 16):
                self._drop("short")
                return
            if version != 0 and not first & 0x40:
                self._drop("malformed")
                return
            conn = self._routes.get(dcid)
            if conn is not None:
                self._feed(conn, data, addr, now)
                return
            if self._on_connection is None or self._closing:
                self._drop("unknown-cid")
                return
            if version == 0:
                self._drop("unknown-cid")
                return
            if version not in _SUPPORTED_VERSIONS:
                if n >= MIN_INITIAL_DATAGRAM:
                    scid = data[7 + dlen : 7 + dlen + slen]
                    self._sendto(
                        encode_quic_version_negotiation(
                            source_cid=dcid,
                            destination_cid=scid,
                            supported_versions=list(_SUPPORTED_VERSIONS),
                        ),
                        addr,
                    )
                self._drop("version")
                return
            if (first & 0x30) >> 4 != _INITIAL_TYPE[version]:
                self._drop("unknown-cid")
                return
            if n < MIN_INITIAL_DATAGRAM:
                self._drop("small-initial")
                return
            self._accept(dcid, data, addr, now)
            return
        # short header
        if not first & 0x40:
            self._drop("malformed")
            return
        if n < MIN_SHORT_PACKET:
            self._drop("short")
            return
        conn = self._routes.get(data[1 : 1 + CID_LENGTH])
        if conn is None:
            self._drop("unknown-cid")
            return
        self._feed(conn, data, addr, now)

    def _feed(self, conn: QuicConnection, data: bytes, addr: tuple[Any, ...], now: float) -> None:
        conn._datagram_received(data, addr, now)
        if not conn._terminated:
            self._touched.add(conn)

    def _accept(self, dcid: bytes, data: bytes, addr: tuple[Any, ...], now: float) -> None:
        cfg = self._config
        if len(self._conns) >= cfg.max_connections:
            self._drop("full")
            return
        pending = sum(1 for c in self._conns if not c._established and not c._is_client)
        if pending >= cfg.max_pending_handshakes:
            self._drop("full")
            return
        core = hooks.GlueberryQuicConnection(
            configuration=self._transport._configuration(is_client=False),
            original_destination_connection_id=dcid,
            request_client_certificate=True,
            max_incoming_streams=cfg.max_incoming_streams,
        )
        conn = QuicConnection(self, core, is_client=False, remote_address=addr, expected_peer=None)
        self._add(conn, dcid)
        self._routes[core.host_cid] = conn
        conn._cids.add(core.host_cid)
        self._feed(conn, data, addr, now)

    def _accepted(self, conn: QuicConnection) -> None:
        callback = self._on_connection
        if callback is None:  # stopped listening meanwhile
            conn.abort()
            return
        try:
            callback(conn)
        except Exception:
            logger.exception("QUIC on_connection callback failed; closing the connection")
            conn.abort()

    # --- bookkeeping --------------------------------------------------------------------------
    def _add(self, conn: QuicConnection, cid: bytes) -> None:
        self._conns.add(conn)
        self._routes[cid] = conn
        conn._cids.add(cid)

    def _forget(self, conn: QuicConnection) -> None:
        self._conns.discard(conn)
        self._touched.discard(conn)
        for cid in conn._cids:
            if self._routes.get(cid) is conn:
                del self._routes[cid]
        conn._cids.clear()
        self._transport._endpoint_idle(self)

    def _sendto(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self._closed:
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.send_failures += 1  # a full socket buffer is loss; QUIC recovers
        except OSError as exc:
            self.send_failures += 1
            logger.debug("QUIC endpoint %s: sendto %s: %s", self.local_address, addr, exc)

    def stop_listening(self) -> None:
        """Stop accepting new connections (existing ones go on)."""
        self._on_connection = None
        self._transport._endpoint_idle(self)

    def close(self) -> None:
        """Close every connection at once (each sends CONNECTION_CLOSE), then the socket.

        Idempotent.
        """
        if self._closing:
            return
        self._closing = True
        self._on_connection = None
        for conn in list(self._conns):
            conn.abort()
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._routes.clear()
        self._transport._endpoint_closed(self)

    @property
    def is_closed(self) -> bool:
        return self._closing


class QuicListener:
    """A listening endpoint, as :meth:`QuicTransport.listen` returns it."""

    def __init__(self, endpoint: QuicEndpoint) -> None:
        self.endpoint = endpoint

    def __repr__(self) -> str:
        return f"<QuicListener {self.endpoint.local_address}>"

    @property
    def multiaddrs(self) -> list[Multiaddr]:
        return [self.endpoint.multiaddr]

    def close(self) -> None:
        """Stop accepting; connections already handed out go on (they own the socket
        until they end; :meth:`QuicTransport.close` ends everything)."""
        self.endpoint.stop_listening()

    async def wait_closed(self) -> None:
        self.close()

    async def __aenter__(self) -> QuicListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


# --- the transport ---------------------------------------------------------------------------


def _to_multiaddr(address: tuple[str, int]) -> Multiaddr:
    base = Multiaddr.from_socket_address(address[0], address[1], "udp")
    return base.encapsulate("/quic-v1")


class QuicTransport:
    """Dials and listens on ``/ip4|ip6|dns*/…/udp/<port>/quic-v1`` (see the module docstring).

    Args:
        identity: this host's identity key (it signs our TLS certificate).
        config: limits and timeouts.

    One certificate (fresh key) is made per transport and used for every connection, as
    go-libp2p does; the spec allows per-connection or shared certificates.
    """

    name = PROTOCOL

    def __init__(self, identity: PrivateKey, config: QuicConfig | None = None) -> None:
        self._identity = identity
        self._config = config or QuicConfig()
        self._local = tlscert.generate_certificate(
            identity, time.time(), key_type=self._config.cert_key_type
        )
        self._listeners: list[QuicEndpoint] = []
        self._dialers: dict[int, QuicEndpoint] = {}
        self._endpoints: set[QuicEndpoint] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<QuicTransport {self._identity.peer_id} endpoints={len(self._endpoints)}>"

    @property
    def config(self) -> QuicConfig:
        return self._config

    @property
    def certificate(self) -> tlscert.LocalCertificate:
        return self._local

    @property
    def endpoints(self) -> list[QuicEndpoint]:
        return list(self._endpoints)

    def _configuration(self, *, is_client: bool) -> Any:
        cfg = self._config
        return hooks.make_configuration(
            is_client=is_client,
            alpn=tlscert.ALPN_LIBP2P,
            local=self._local,
            idle_timeout=cfg.idle_timeout,
            max_datagram_size=cfg.max_datagram_size,
            stream_window=cfg.stream_receive_window,
            connection_window=cfg.connection_receive_window,
        )

    # --- Transport protocol (glueberry.net.host.Transport) --------------------------------------
    def can_dial(self, addr: Multiaddr) -> bool:
        return addr.transport_kind() == PROTOCOL and not addr.is_relayed

    def can_listen(self, addr: Multiaddr) -> bool:
        return self.can_dial(addr) and addr.ip is not None

    def to_multiaddr(self, address: tuple[str, int]) -> Multiaddr:
        """``/ip…/udp/<port>/quic-v1`` of a ``(host, port)``."""
        return _to_multiaddr(address)

    async def listen(
        self, addr: Multiaddr | str, on_connection: ConnectionCallback
    ) -> QuicListener:
        """Bind ``addr`` (port 0 picks one) and accept connections on it.

        ``on_connection(conn)`` runs synchronously on the loop for every inbound connection
        once its peer is authenticated, before any of its streams is delivered: set the
        stream handler there (:meth:`QuicConnection.set_stream_handler`).

        Raises:
            ConnectError: the address cannot be bound; MultiaddrError: not a QUIC address.
        """
        ma = Multiaddr(addr)
        if not self.can_listen(ma):
            raise MultiaddrError(f"cannot listen on {ma}: not an IP /udp/…/quic-v1 address")
        sa = ma.to_socket_address()
        endpoint = self._open_endpoint(sa.host, sa.port)
        endpoint._on_connection = on_connection
        self._listeners.append(endpoint)
        logger.info("QUIC listening on %s", endpoint.multiaddr)
        return QuicListener(endpoint)

    async def dial(
        self,
        addr: Multiaddr | str,
        expected_peer: PeerId | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per-address deadline, as for TCP
        on_stream: StreamCallback | None = None,
    ) -> QuicConnection:
        """Connect to ``addr`` and authenticate the peer.

        Args:
            addr: a ``/quic-v1`` multiaddr; a ``/p2p/<id>`` suffix names the peer.
            expected_peer: the peer to reach (checked; default: the address's ``/p2p``).
            timeout: overall deadline; the handshake deadline applies in any case.
            on_stream: callback for streams the peer opens (or set it later).

        Raises:
            HandshakeTimeout: no handshake within ``handshake_timeout`` (or ``timeout``).
            PeerIdMismatch: another peer answered.
            SecurityError: the peer's certificate was refused, or it refused ours.
            HandshakeError: the handshake failed otherwise (e.g. no common ALPN).
            ConnectError: the address cannot be resolved or dialed.
        """
        if self._closed:
            raise ConnectError("QUIC transport is closed")
        ma = Multiaddr(addr)
        if not self.can_dial(ma):
            raise MultiaddrError(f"cannot dial {ma}: not a /udp/…/quic-v1 address")
        if expected_peer is None:
            expected_peer = ma.peer_id
        elif ma.peer_id is not None and ma.peer_id != expected_peer:
            raise ConnectError(f"{ma} names another peer than {expected_peer}")
        sa = ma.to_socket_address()
        family = _FAMILIES.get(sa.family, 0)
        try:
            infos = await self._loop().getaddrinfo(
                sa.host, sa.port, family=family, type=socket.SOCK_DGRAM
            )
        except OSError as exc:
            raise ConnectError(f"cannot resolve {sa.host!r}: {exc}") from exc
        if not infos:
            raise ConnectError(f"cannot resolve {sa.host!r}")
        fam, _, _, _, sockaddr = infos[0]
        endpoint = self._endpoint_for(fam, str(sockaddr[0]))
        conn = endpoint.connect(sockaddr, expected_peer, on_stream=on_stream)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(conn._ready)
        except TimeoutError as exc:
            err = HandshakeTimeout(f"QUIC dial {ma} timed out", peer_id=expected_peer)
            conn._fail(err, error_code=0)
            raise err from exc
        except asyncio.CancelledError:
            conn.abort()
            raise
        return conn

    @staticmethod
    def _loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    # --- endpoints ------------------------------------------------------------------------
    def _open_endpoint(self, host: str, port: int) -> QuicEndpoint:
        if self._closed:
            raise ConnectError("QUIC transport is closed")
        try:
            ip = ipaddress.ip_address(host.split("%", maxsplit=1)[0])
        except ValueError as exc:
            raise ConnectError(f"QUIC needs an IP address to bind, not {host!r}") from exc
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, self._config.socket_buffer)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            hint = " (address in use)" if exc.errno == errno.EADDRINUSE else ""
            raise ConnectError(f"cannot bind QUIC socket {host}:{port}{hint}: {exc}") from exc
        endpoint = QuicEndpoint(self, sock)
        self._endpoints.add(endpoint)
        return endpoint

    def _endpoint_for(self, family: int, dest: str) -> QuicEndpoint:
        """A listening socket to dial from if one fits (same family; wildcard or loopback-
        to-loopback), else the shared dial-only socket of that family."""
        dest_loopback = ipaddress.ip_address(dest.split("%", maxsplit=1)[0]).is_loopback
        for ep in self._listeners:
            if ep.family != family or ep.is_closed:
                continue
            bound = ipaddress.ip_address(ep.local_address[0].split("%")[0])
            if bound.is_unspecified or (bound.is_loopback and dest_loopback):
                return ep
        shared = self._dialers.get(family)
        if shared is None or shared.is_closed:
            shared = self._open_endpoint("::" if family == socket.AF_INET6 else "0.0.0.0", 0)
            self._dialers[family] = shared
        return shared

    def _endpoint_idle(self, endpoint: QuicEndpoint) -> None:
        """Close a listener's socket once it neither listens nor carries connections."""
        if (
            endpoint.listening
            or endpoint._conns
            or endpoint._closing
            or endpoint in self._dialers.values()
        ):
            return
        endpoint.close()

    def _endpoint_closed(self, endpoint: QuicEndpoint) -> None:
        self._endpoints.discard(endpoint)
        if endpoint in self._listeners:
            self._listeners.remove(endpoint)
        for fam, ep in list(self._dialers.items()):
            if ep is endpoint:
                del self._dialers[fam]

    def close(self) -> None:
        """Close every endpoint and connection (idempotent)."""
        self._closed = True
        for endpoint in list(self._endpoints):
            endpoint.close()

    async def __aenter__(self) -> QuicTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "PROTOCOL",
    "QuicConfig",
    "QuicConnection",
    "QuicEndpoint",
    "QuicListener",
    "QuicStream",
    "QuicTransport",
]
