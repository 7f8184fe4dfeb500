"""A UDP socket serving QUIC connections, inbound and outbound.

See :mod:`glueberry.transport.quic` for the whole design.

Datagrams are read in batches, pre-filtered (malformed and too-short packets are dropped
before aioquic sees them, B-31) and routed by destination connection ID; unknown IDs are
dropped unless they open a new inbound connection.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from aioquic.quic.packet import QuicProtocolVersion, encode_quic_version_negotiation

from glueberry.errors import ConnectError
from glueberry.transport import _aioquic_hooks as hooks
from glueberry.transport._quic_connection import QuicConnection
from glueberry.transport._quic_stream import StreamCallback
from glueberry.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from glueberry.transport.quic import QuicTransport
    from glueberry.wire.identity import PeerId

logger = logging.getLogger("glueberry.transport.quic")

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

ConnectionCallback = Callable[[QuicConnection], None]
#: ``accept((host, port)) -> bool``: called for a new inbound connection before any state is
#: made for it (gater, per-IP limits); False drops the client's Initial.
AcceptFilter = Callable[[tuple[str, int]], bool]


def to_multiaddr(address: tuple[str, int]) -> Multiaddr:
    """``/ip…/udp/<port>/quic-v1`` of a ``(host, port)``."""
    base = Multiaddr.from_socket_address(address[0], address[1], "udp")
    return base.encapsulate("/quic-v1")


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
        self._accept_filter: AcceptFilter | None = None
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
        return to_multiaddr(self.local_address)

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
            conn._after_receive()

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
        accept = self._accept_filter
        if accept is not None and not accept((str(addr[0]), int(addr[1]))):
            self._drop("refused")
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

    def _sendto(self, data: bytes, addr: tuple[Any, ...]) -> bool:
        """Send one datagram; False only when it is too large for the path (EMSGSIZE)."""
        if self._closed:
            return True
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.send_failures += 1  # a full socket buffer is loss; QUIC recovers
        except OSError as exc:
            self.send_failures += 1
            logger.debug("QUIC endpoint %s: sendto %s: %s", self.local_address, addr, exc)
            return exc.errno != errno.EMSGSIZE
        return True

    def send_datagram(self, data: bytes, address: tuple[Any, ...]) -> None:
        """Send one raw UDP datagram from this socket (hole punching: DCUtR's random
        packets that open the NAT binding before the peer dials this port)."""
        self._sendto(bytes(data), address)

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


__all__ = [
    "CID_LENGTH",
    "MIN_INITIAL_DATAGRAM",
    "MIN_SHORT_PACKET",
    "AcceptFilter",
    "ConnectionCallback",
    "QuicEndpoint",
    "to_multiaddr",
]
