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
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives.serialization import Encoding

from glueberry.errors import ConfigError, ConnectError, HandshakeTimeout
from glueberry.transport import _aioquic_hooks as hooks
from glueberry.transport._quic_connection import SECURITY, QuicConnection
from glueberry.transport._quic_endpoint import (
    CID_LENGTH,
    MIN_INITIAL_DATAGRAM,
    MIN_SHORT_PACKET,
    RECV_BATCH,
    AcceptFilter,
    ConnectionCallback,
    QuicEndpoint,
    to_multiaddr,
)
from glueberry.transport._quic_stream import PROTOCOL, QuicStream, StreamCallback
from glueberry.wire import tlscert
from glueberry.wire.identity import PeerId, PrivateKey, PublicKey
from glueberry.wire.multiaddr import Multiaddr, MultiaddrError

if TYPE_CHECKING:
    from cryptography import x509

    from glueberry.wire.tlscert import CertKeyType

logger = logging.getLogger(__name__)

#: Peer certificates whose verification :class:`QuicTransport` remembers.
VERIFIED_CERTIFICATES: Final = 256

_FAMILIES: Final = {
    "ip4": socket.AF_INET,
    "dns4": socket.AF_INET,
    "ip6": socket.AF_INET6,
    "dns6": socket.AF_INET6,
}


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
    """Largest UDP payload we send (no path MTU discovery: a size every path carries)."""
    loopback_datagram_size: int = 16383
    """Largest UDP payload we send to a loopback peer once the handshake is done (the
    loopback MTU is 64 KiB; capped by the peer's ``max_udp_payload_size``). aioquic's
    cost is per packet, so larger datagrams move more bytes per CPU second. Set it to
    ``max_datagram_size`` to keep one size everywhere."""
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
        # aioquic encodes frame lengths in two bytes: larger datagrams would be corrupt.
        top = hooks.MAX_DATAGRAM_SIZE
        for name in ("max_datagram_size", "loopback_datagram_size"):
            if not 1200 <= getattr(self, name) <= top:
                raise ConfigError(f"QuicConfig.{name} must be in 1200..{top}")


async def _resolve(host: str, port: int, family: int) -> list[Any]:
    """``getaddrinfo`` for a UDP destination; IP literals inline.

    ``loop.getaddrinfo`` always hops to the default thread pool (and back), which costs a
    dial a thread wake-up, milliseconds on a loaded machine; a numeric host with
    ``AI_NUMERICHOST`` never blocks, so it is resolved on the spot.
    """
    try:
        ipaddress.ip_address(host.split("%", maxsplit=1)[0])
    except ValueError:
        loop = asyncio.get_running_loop()
        return await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
    return socket.getaddrinfo(
        host, port, family=family, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
    )


class QuicListener:
    """A listening endpoint, as :meth:`QuicTransport.listen` returns it."""

    def __init__(self, endpoint: QuicEndpoint) -> None:
        self.endpoint = endpoint

    def __repr__(self) -> str:
        return f"<QuicListener {self.endpoint.local_address}>"

    @property
    def multiaddrs(self) -> list[Multiaddr]:
        """The bound address, then the transport's external addresses of the same IP
        family (:meth:`QuicTransport.set_external_addrs`)."""
        ep = self.endpoint
        out = [ep.multiaddr]
        v6 = ep.family == socket.AF_INET6
        for ext in ep._transport.external_addrs:
            ip = ext.ip
            if ip is not None and (ip.version == 6) == v6 and ext not in out:
                out.append(ext)
        return out

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
        self._external: list[Multiaddr] = []
        # DER of peer certificates that passed verification -> (identity key, valid from,
        # valid until); see verify_peer_certificate.
        self._verified: OrderedDict[bytes, tuple[PublicKey, float, float]] = OrderedDict()
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

    @property
    def external_addrs(self) -> list[Multiaddr]:
        """Addresses added with :meth:`set_external_addrs`."""
        return list(self._external)

    def set_external_addrs(self, addrs: Iterable[Multiaddr]) -> None:
        """Replace the external ``/quic-v1`` addresses (observed by peers, port-mapped) that
        every listener shows in ``multiaddrs``, hence that the host advertises. Others are
        ignored."""
        out: list[Multiaddr] = []
        for given in addrs:
            a = given.without_p2p()
            if a.transport_kind() == PROTOCOL and a.ip is not None and a not in out:
                out.append(a)
        self._external = out

    def verify_peer_certificate(self, certs: Sequence[x509.Certificate], now: float) -> PublicKey:
        """The identity key the peer's certificates authenticate (libp2p TLS spec).

        A certificate whose exact DER passed verification before is not checked again,
        only its validity window against ``now``: a reconnecting peer (one certificate
        per transport, as go-libp2p and this transport do) costs no signature checks,
        about 0.5 ms of CPU here. The cache holds :data:`VERIFIED_CERTIFICATES` entries.

        Raises:
            RemoteProtocolError: the certificates are refused.
        """
        der = [c.public_bytes(Encoding.DER) for c in certs]
        if len(der) == 1:
            hit = self._verified.get(der[0])
            if hit is not None and hit[1] <= now <= hit[2]:
                self._verified.move_to_end(der[0])
                return hit[0]
        key = tlscert.verify_certificate_chain(der, now)
        cert = certs[0]
        self._verified[der[0]] = (
            key,
            cert.not_valid_before_utc.timestamp(),
            cert.not_valid_after_utc.timestamp(),
        )
        if len(self._verified) > VERIFIED_CERTIFICATES:
            self._verified.popitem(last=False)
        return key

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
        return to_multiaddr(address)

    async def listen(
        self,
        addr: Multiaddr | str,
        on_connection: ConnectionCallback,
        *,
        accept: AcceptFilter | None = None,
    ) -> QuicListener:
        """Bind ``addr`` (port 0 picks one) and accept connections on it.

        ``on_connection(conn)`` runs synchronously on the loop for every inbound connection
        once its peer is authenticated, before any of its streams is delivered: set the
        stream handler there (:meth:`QuicConnection.set_stream_handler`), or ``abort()``
        the connection to refuse the peer (gater ``allow_secured``, per-peer limits).
        ``accept((host, port))`` (optional) runs before a new client's Initial is processed;
        returning False drops it (gater ``allow_accept``, per-IP limits).

        Raises:
            ConnectError: the address cannot be bound; MultiaddrError: not a QUIC address.
        """
        ma = Multiaddr(addr)
        if not self.can_listen(ma):
            raise MultiaddrError(f"cannot listen on {ma}: not an IP /udp/…/quic-v1 address")
        sa = ma.to_socket_address()
        endpoint = self._open_endpoint(sa.host, sa.port)
        endpoint._on_connection = on_connection
        endpoint._accept_filter = accept
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
            infos = await _resolve(sa.host, sa.port, family)
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

    def punch_endpoint(self, family: int) -> QuicEndpoint | None:
        """The listening endpoint that dials to public addresses of ``family`` leave from
        (bound to the wildcard address), or None. Hole punching needs it: the peer must see
        the same port for our dials, our raw packets and our listener."""
        for ep in self._listeners:
            if ep.family != family or ep.is_closed or not ep.listening:
                continue
            if ipaddress.ip_address(ep.local_address[0].split("%")[0]).is_unspecified:
                return ep
        return None

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
    "CID_LENGTH",
    "MIN_INITIAL_DATAGRAM",
    "MIN_SHORT_PACKET",
    "PROTOCOL",
    "RECV_BATCH",
    "SECURITY",
    "VERIFIED_CERTIFICATES",
    "AcceptFilter",
    "ConnectionCallback",
    "QuicConfig",
    "QuicConnection",
    "QuicEndpoint",
    "QuicListener",
    "QuicStream",
    "QuicTransport",
    "StreamCallback",
]
