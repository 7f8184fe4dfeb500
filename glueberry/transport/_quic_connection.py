"""One libp2p QUIC connection (see :mod:`glueberry.transport.quic` for the theory).

:class:`QuicConnection` drives an aioquic core
(:class:`~glueberry.transport._aioquic_hooks.GlueberryQuicConnection`) from datagrams,
timers and application calls, verifies the peer's certificate when the handshake completes,
and maps aioquic's stream events onto :class:`QuicStream` objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Any, Final, cast

from aioquic.quic import events as qe

from glueberry.errors import (
    ConnectionLost,
    GlueberryError,
    HandshakeError,
    HandshakeTimeout,
    PeerIdMismatch,
    RemoteProtocolError,
    SecurityError,
    StreamReset,
)
from glueberry.transport import _aioquic_hooks as hooks
from glueberry.transport._quic_stream import (
    _OPEN,
    PROTOCOL,
    QuicStream,
    StreamCallback,
)
from glueberry.wire import tlscert
from glueberry.wire.identity import PeerId, PublicKey

if TYPE_CHECKING:
    from glueberry.transport._quic_endpoint import QuicEndpoint

logger = logging.getLogger("glueberry.transport.quic")

#: What :attr:`QuicConnection.security_protocol` reports: the libp2p TLS handshake.
SECURITY: Final = "/tls/1.0.0"
# QUIC CRYPTO_ERROR (0x100) + TLS alert (RFC 9001 §4.8).
_CRYPTO_ERROR: Final = 0x100
_ALERT_BAD_CERTIFICATE: Final = 42
_ALERT_CERTIFICATE_REQUIRED: Final = 116
_CRYPTO_FRAME: Final = 0x06
_UNI: Final = 0x02


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
        self._data_queued = False  # application data handed to aioquic since the last flush
        self._flush_now = False  # the handshake just completed: flush without delay
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
        core = self._core
        if self._data_queued:  # the pending ACK rides on the data (hook H6)
            self._data_queued = False
            core.ack_with_data(now)
        sendto = self._endpoint._sendto
        n = 0
        for data, addr in core.datagrams_to_send(now):
            if not sendto(data, addr):  # too large for the path: back to the safe size
                self._datagrams_too_large()
            n += 1
        self.datagrams_sent += n
        self._process_events()
        if self._blocked:
            self._wake_blocked()
        self._rearm_timer()

    def _after_receive(self) -> None:
        """Flush after a batch of datagrams: at once while handshaking (and for the batch
        that completed it: the client's Finished goes out before ``dial`` returns);
        otherwise on the next loop iteration, since the application usually reacts to
        what was just delivered (a reply, a read that re-opens a window) in that
        iteration, and one flush then carries its data and the ACKs together."""
        if self._flush_now or not self._established:
            self._flush_now = False
            self._transmit()
        else:
            self._want_transmit()

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
            key = self._endpoint._transport.verify_peer_certificate(certs, time.time())
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
        self._flush_now = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        interval = self._config.keepalive_interval
        if interval is not None:
            self._keepalive = self._loop.call_later(interval, self._on_keepalive)
        self._loopback_datagrams()
        logger.debug("QUIC %s connection with %s established", self.direction, peer)
        if not self._ready.done():
            self._ready.set_result(None)
        if not self._is_client:
            self._endpoint._accepted(self)

    def _loopback_datagrams(self) -> None:
        """Use ``loopback_datagram_size`` with a loopback peer (its MTU is 64 KiB; aioquic's
        cost is per packet), within the peer's ``max_udp_payload_size``."""
        size = self._config.loopback_datagram_size
        if size <= self._core.max_datagram_size:
            return
        try:
            ip = ipaddress.ip_address(self.remote_address[0].split("%", maxsplit=1)[0])
        except ValueError:
            return
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback:
            used = self._core.set_max_datagram_size(size)
            logger.debug("QUIC connection with %s: %d-byte datagrams", self.remote_peer, used)

    def _datagrams_too_large(self) -> None:
        base = self._config.max_datagram_size
        if self._core.max_datagram_size > base:
            logger.debug("QUIC path to %s refused large datagrams", self.remote_address)
            self._core.set_max_datagram_size(base)

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
        self._data_queued = True
        self._want_transmit()

    def _send_fin(self, stream: QuicStream) -> None:
        if self._terminated or self._closing:
            return
        with contextlib.suppress(RuntimeError, ValueError):
            self._core.send_stream_data(stream.stream_id, b"", end_stream=True)
            self._data_queued = True
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


__all__ = ["SECURITY", "QuicConnection"]
