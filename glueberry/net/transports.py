"""The host's default transports and security protocols, and transports that arrive muxed.

Specs: https://github.com/libp2p/specs/blob/master/connections/README.md (a transport either
needs the upgrade to a secured, multiplexed connection, or provides it natively, as QUIC
does: https://github.com/libp2p/specs/blob/master/quic/README.md).

Theory of operation
-------------------
:class:`~glueberry.net.host.Host` handles two kinds of transport:

* a *raw* transport (:class:`~glueberry.net.host.Transport`: TCP, memory, circuit) hands
  over byte pipes that the host's upgrader secures (Noise or TLS) and multiplexes (yamux);
* a *muxed* transport (:class:`MuxedTransport`: QUIC) hands over connections that are
  already authenticated and multiplexed (:class:`NativeMuxedConnection`). The host skips
  the upgrader for them and runs everything else the same way: gater, limits,
  registration, stream negotiation, notifications and close.

:func:`is_muxed_transport` tells them apart: a transport declares
``yields_muxed_connections = True``; :class:`~glueberry.transport.quic.QuicTransport` is
recognised as one as well (checked without importing aioquic: an instance can only exist if
its module is loaded).

Defaults (what ``HostConfig(transports=None, security=None)`` gives):

* transports: TCP always, then QUIC (``/quic-v1``) when aioquic (the ``quic`` extra) is
  installed. QUIC is :class:`LazyQuicTransport`: aioquic is imported and the TLS certificate
  made on first listen or dial, so a host that never uses QUIC pays nothing for it. A dial
  goes to the transport the address names (``/tcp/…`` or ``/udp/…/quic-v1``).
* security on TCP: ``/noise`` first, then ``/tls/1.0.0`` when pyOpenSSL (the ``tls`` extra)
  is installed. As listener we accept either (multistream-select takes the dialer's first
  proposal we support: go-libp2p proposes TLS first, so go lands on TLS; js-libp2p and we
  propose Noise first, so we land on Noise). As dialer we propose Noise first because it is
  cheaper for us: no OpenSSL context, X.509 parsing and certificate checks per connection
  (measured on loopback, both ends in one process: Noise connects in about 7 ms with 4 ms of
  CPU, TLS in about 13 ms with 8 ms). TLS stays available for peers that only speak TLS, and
  costs a TLS-only peer one extra round trip (``na`` for Noise).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from glueberry.errors import ConnectError
from glueberry.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from glueberry.net.host import Transport, TransportListener
    from glueberry.net.upgrader import SecureUpgrade
    from glueberry.transport.base import MuxedConnection, RawConnection, SecureConnection, Stream
    from glueberry.transport.quic import QuicConfig, QuicConnection, QuicTransport
    from glueberry.wire.identity import PeerId, PrivateKey

NOISE: Final = "/noise"
TLS: Final = "/tls/1.0.0"
QUIC_V1: Final = "quic-v1"


class NativeMuxedConnection(Protocol):
    """A connection a muxed transport hands over (QUIC): authenticated and multiplexed.

    Beyond :class:`~glueberry.transport.base.MuxedConnection`: the inbound-stream callback
    can be set after the fact (streams that arrive earlier wait), and it can be aborted.
    """

    @property
    def remote_peer(self) -> PeerId: ...

    def set_stream_handler(self, on_stream: Callable[[Any], None]) -> None: ...

    def abort(self) -> None: ...

    async def wait_closed(self) -> None: ...


#: ``accept((host, port)) -> bool``, run before a new inbound connection costs anything.
AcceptFilter = Callable[[tuple[str, int]], bool]


class MuxedTransport(Protocol):
    """A transport whose connections arrive secured and multiplexed (QUIC).

    ``on_connection(conn)`` runs synchronously once the peer is authenticated and before any
    of its streams is delivered; ``accept`` runs before a new inbound connection makes any
    state (False drops it). ``close()`` releases every socket.
    """

    name: str

    def can_dial(self, addr: Multiaddr) -> bool: ...

    def can_listen(self, addr: Multiaddr) -> bool: ...

    def to_multiaddr(self, address: tuple[str, int]) -> Multiaddr: ...

    async def dial(
        self,
        addr: Multiaddr,
        expected_peer: PeerId | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per-address deadline, as TCP's
        on_stream: Callable[[Stream], None] | None = None,
    ) -> MuxedConnection: ...

    async def listen(
        self,
        addr: Multiaddr,
        on_connection: Callable[[Any], None],
        *,
        accept: AcceptFilter | None = None,
    ) -> TransportListener: ...

    def close(self) -> None: ...


def is_muxed_transport(transport: object) -> bool:
    """Whether ``transport`` yields secured, multiplexed connections (see module docstring)."""
    marker = getattr(transport, "yields_muxed_connections", None)
    if marker is not None:
        return marker is True
    quic = sys.modules.get("glueberry.transport.quic")
    return quic is not None and isinstance(transport, quic.QuicTransport)


def quic_available() -> bool:
    """aioquic (the ``quic`` extra) is installed."""
    return importlib.util.find_spec("aioquic") is not None


def tls_available() -> bool:
    """pyOpenSSL (the ``tls`` extra) is installed."""
    return importlib.util.find_spec("OpenSSL") is not None


def _quic_multiaddr(address: tuple[str, int]) -> Multiaddr:
    return Multiaddr.from_socket_address(address[0], address[1], "udp").encapsulate("/quic-v1")


class LazyQuicTransport:
    """The host's default QUIC transport: a :class:`~glueberry.transport.quic.QuicTransport`
    made on first use (importing aioquic costs about 0.2 s, the certificate about 1 ms).

    Args:
        identity: the host's identity (it signs the TLS certificate).
        config: QUIC settings (default ``QuicConfig()``).
    """

    name = QUIC_V1
    yields_muxed_connections = True

    def __init__(self, identity: PrivateKey, config: QuicConfig | None = None) -> None:
        self._identity = identity
        self._config = config
        self._transport: QuicTransport | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "started" if self._transport else "unused"
        return f"<LazyQuicTransport {state}>"

    @property
    def started(self) -> bool:
        """The real transport exists (something listened or dialed)."""
        return self._transport is not None

    @property
    def current(self) -> QuicTransport | None:
        """The real transport if it was made (even once closed), else None."""
        return self._transport

    @property
    def transport(self) -> QuicTransport:
        """The real transport, made now if needed.

        Raises:
            ConnectError: closed, or aioquic cannot be imported.
        """
        if self._closed:
            raise ConnectError("QUIC transport is closed")
        if self._transport is None:
            try:
                from glueberry.transport.quic import QuicTransport
            except ImportError as exc:
                raise ConnectError(f"QUIC is unavailable: {exc}") from exc
            self._transport = QuicTransport(self._identity, self._config)
        return self._transport

    def can_dial(self, addr: Multiaddr) -> bool:
        return addr.transport_kind() == QUIC_V1 and not addr.is_relayed

    def can_listen(self, addr: Multiaddr) -> bool:
        return self.can_dial(addr) and addr.ip is not None

    def to_multiaddr(self, address: tuple[str, int]) -> Multiaddr:
        return _quic_multiaddr(address)

    async def dial(
        self,
        addr: Multiaddr,
        expected_peer: PeerId | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per-address deadline, as TCP's
        on_stream: Callable[[Stream], None] | None = None,
    ) -> QuicConnection:
        return await self.transport.dial(addr, expected_peer, timeout=timeout, on_stream=on_stream)

    async def listen(
        self,
        addr: Multiaddr,
        on_connection: Callable[[Any], None],
        *,
        accept: AcceptFilter | None = None,
    ) -> TransportListener:
        return await self.transport.listen(addr, on_connection, accept=accept)

    def close(self) -> None:
        """Close every socket and connection of the real transport (idempotent)."""
        self._closed = True
        if self._transport is not None:
            self._transport.close()


def default_transports(identity: PrivateKey) -> list[Transport | MuxedTransport]:
    """TCP, then QUIC when aioquic is installed (see the module docstring)."""
    from glueberry.transport.tcp import TcpTransport

    out: list[Transport | MuxedTransport] = [TcpTransport()]
    if quic_available():
        out.append(LazyQuicTransport(identity))
    return out


def _lazy_tls() -> SecureUpgrade:
    """``/tls/1.0.0`` whose module (and pyOpenSSL, about 0.1 s) loads on first use."""

    async def upgrade(
        raw: RawConnection,
        *,
        identity: PrivateKey,
        is_initiator: bool,
        expected_peer: PeerId | None,
        muxers: Sequence[str],
    ) -> SecureConnection:
        from glueberry.net.tls import tls_security

        return await tls_security()(
            raw,
            identity=identity,
            is_initiator=is_initiator,
            expected_peer=expected_peer,
            muxers=muxers,
        )

    return upgrade


def default_security() -> dict[str, SecureUpgrade]:
    """``/noise``, then ``/tls/1.0.0`` when pyOpenSSL is installed (order: module docstring)."""
    from glueberry.net.upgrader import noise_security

    out: dict[str, SecureUpgrade] = {NOISE: noise_security()}
    if tls_available():
        out[TLS] = _lazy_tls()
    return out


__all__ = [
    "NOISE",
    "QUIC_V1",
    "TLS",
    "AcceptFilter",
    "LazyQuicTransport",
    "MuxedTransport",
    "NativeMuxedConnection",
    "default_security",
    "default_transports",
    "is_muxed_transport",
    "quic_available",
    "tls_available",
]
