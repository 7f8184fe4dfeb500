"""TCP with port reuse: dial from the listen port, adopt punched sockets, advertise externals.

Spec: https://github.com/libp2p/specs/blob/master/connections/hole-punching.md ("port
reuse") and relay/DCUtR.md. Behaviour matched: go-libp2p's ``tcpreuse``/``reuseport``
transport, which every hole-punching peer relies on.

Theory of operation
-------------------
A NAT maps the *source* port of an outbound connection. A peer behind a port-preserving NAT
that dials a relay from an ephemeral port is observed at ``router:ephemeral``, an address
nobody can punch through later. So this transport:

* listens with ``SO_REUSEADDR`` + ``SO_REUSEPORT`` (Linux, BSD, macOS), and
* dials *from the listen port* of the same address family: the socket is bound to
  ``(listen IP or wildcard, listen port)`` before ``connect()``. Every outbound connection
  then leaves through the NAT mapping of the listen port, the address observed by relays and
  identify is the one a hole punch can reach, and the punch itself (a simultaneous
  ``connect()`` from both sides) reuses that very mapping.

When binding the listen port is impossible (no listener of that family, the same 4-tuple
already exists, the listener is bound to an address that cannot reach the destination) the
dial silently falls back to an ephemeral port, as go does.

Two extras serve the NAT layer (:mod:`glueberry.nat`), so it can drive the host by
composition:

* :meth:`ReuseportTcpTransport.adopt_inbound` hands a connection *we* dialed to the host's
  listener callback, so the host upgrades it as the **responder** (multistream listener,
  Noise responder, yamux server). DCUtR's "B" needs exactly that after a TCP simultaneous
  open (libp2p-notes §2.11: B is the server above TCP although its socket dialed).
* :meth:`ReuseportTcpTransport.set_external_addrs` adds addresses other peers can reach us at
  (confirmed observed addresses, port mappings) to the listeners' ``multiaddrs``, which is
  what the host advertises through identify.

Everything else - the connection object, pull/push modes, backpressure - is
:mod:`glueberry.transport.tcp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
import socket
from collections.abc import Iterable, Iterator
from typing import Final

from glueberry.errors import ConnectError, ConnectTimeout
from glueberry.transport import tcp as _tcp
from glueberry.transport.tcp import ConnectionCallback, TcpConnection, TcpListener, TcpTransport
from glueberry.wire.multiaddr import Multiaddr

logger = logging.getLogger(__name__)

#: errno values that mean "this local port cannot be used for that destination": fall back.
_FALLBACK_ERRNOS: Final = frozenset(
    {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EINVAL, errno.ENETUNREACH, errno.EHOSTUNREACH}
)


#: Inside :func:`ephemeral_dials`, dials use an ephemeral port (see there).
_EPHEMERAL: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "glueberry_tcp_ephemeral_dials", default=False
)


@contextlib.contextmanager
def ephemeral_dials() -> Iterator[None]:
    """Dials started inside this block (and tasks it starts) use an ephemeral source port.

    For a probe that must not touch the listen port's NAT mappings - DCUtR's "try a direct
    dial first": a failed SYN from the listen port leaves a conntrack entry for exactly the
    4-tuple the hole punch needs, and a NAT may then drop the punch's handshake.
    """
    token = _EPHEMERAL.set(True)
    try:
        yield
    finally:
        _EPHEMERAL.reset(token)


def reuseport_supported() -> bool:
    """Whether this OS has ``SO_REUSEPORT`` (port reuse is off without it)."""
    return hasattr(socket, "SO_REUSEPORT")


def _set_reuse(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport_supported():
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


class ReuseportListener:
    """A :class:`~glueberry.transport.tcp.TcpListener` plus the external addresses to show.

    ``multiaddrs`` lists the bound addresses, then the external ones (deduplicated).
    """

    def __init__(
        self,
        transport: ReuseportTcpTransport,
        inner: TcpListener,
        family: int,
        on_connection: ConnectionCallback,
    ) -> None:
        self._transport = transport
        self.inner = inner
        self.family = family
        #: The owner's callback for accepted connections (also used for adopted ones).
        self.on_connection = on_connection

    def __repr__(self) -> str:
        return f"<ReuseportListener {self.inner.addresses}>"

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return self.inner.addresses

    @property
    def port(self) -> int:
        return self.inner.addresses[0][1]

    @property
    def multiaddrs(self) -> list[Multiaddr]:
        out = list(self.inner.multiaddrs)
        for ext in self._transport.external_addrs:
            if ext not in out:
                out.append(ext)
        return out

    def close(self) -> None:
        self.inner.close()
        self._transport._forget(self)

    async def wait_closed(self) -> None:
        self.close()
        await self.inner.wait_closed()

    async def __aenter__(self) -> ReuseportListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.wait_closed()


class ReuseportTcpTransport(TcpTransport):
    """TCP transport that dials from its listen port (see the module docstring).

    Satisfies :class:`glueberry.net.host.Transport`; use it instead of
    :class:`~glueberry.transport.tcp.TcpTransport` in ``HostConfig.transports``.

    Args:
        reuse_port: dial from the listen port (False: behave like plain TCP for dials).
    """

    name = "tcp"

    def __init__(self, *, reuse_port: bool = True) -> None:
        self.reuse_port = reuse_port and reuseport_supported()
        self._listeners: list[ReuseportListener] = []
        self._external: list[Multiaddr] = []
        #: Dials that could not use the listen port and fell back to an ephemeral one.
        self.fallback_dials = 0

    # --- external addresses ---------------------------------------------------------------

    @property
    def external_addrs(self) -> list[Multiaddr]:
        """Addresses added with :meth:`set_external_addrs`."""
        return list(self._external)

    def set_external_addrs(self, addrs: Iterable[Multiaddr]) -> None:
        """Replace the external TCP addresses shown in every listener's ``multiaddrs``."""
        out: list[Multiaddr] = []
        for a in addrs:
            if a.transport_kind() == "tcp" and a not in out:
                out.append(a.without_p2p())
        self._external = out

    # --- listening --------------------------------------------------------------------------

    @property
    def listeners(self) -> list[ReuseportListener]:
        return list(self._listeners)

    def listen_port(self, family: int) -> tuple[str, int] | None:
        """``(bound host, port)`` of the first listener of ``family``, if any."""
        for lst in self._listeners:
            if lst.family == family:
                return lst.addresses[0]
        return None

    async def listen(self, addr: Multiaddr, on_connection: ConnectionCallback) -> ReuseportListener:  # type: ignore[override]
        """Listen on ``addr`` with ``SO_REUSEADDR`` and ``SO_REUSEPORT``.

        Raises:
            ConnectError: the address cannot be resolved or bound.
        """
        sa = addr.to_socket_address()
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                sa.host, sa.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            raise ConnectError(f"cannot resolve listen address {sa.host!r}") from exc
        if not infos:
            raise ConnectError(f"no address to listen on for {sa.host!r}")
        family, type_, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            _set_reuse(sock)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ConnectError(f"cannot listen on {sa.host}:{sa.port}: {exc.strerror}") from exc
        listener = ReuseportListener(
            self, TcpListener([sock], on_connection, 128), family, on_connection
        )
        self._listeners.append(listener)
        return listener

    def _forget(self, listener: ReuseportListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    # --- dialing ----------------------------------------------------------------------------

    async def dial(self, addr: Multiaddr, *, timeout: float | None) -> TcpConnection:  # noqa: ASYNC109
        """Dial ``addr`` from the listen port of its family (see the module docstring).

        Raises:
            ConnectError, ConnectTimeout: the connect failed or timed out.
        """
        sa = addr.to_socket_address()
        if not self.reuse_port or sa.family not in ("ip4", "ip6") or _EPHEMERAL.get():
            return await super().dial(addr, timeout=timeout)
        family = socket.AF_INET6 if sa.family == "ip6" else socket.AF_INET
        local = self.listen_port(family)
        if local is None:
            return await super().dial(addr, timeout=timeout)
        try:
            return await self.dial_from(local, sa.host, sa.port, family, timeout)
        except _Fallback as exc:
            self.fallback_dials += 1
            logger.debug(
                "dial %s from port %d impossible (%s); ephemeral port", addr, local[1], exc
            )
            return await super().dial(addr, timeout=timeout)

    async def dial_from(
        self,
        local: tuple[str, int],
        host: str,
        port: int,
        family: int,
        timeout: float | None,  # noqa: ASYNC109 - the connect deadline, as tcp.dial
    ) -> TcpConnection:
        """Connect to ``(host, port)`` from the local address ``local`` (reuse flags set).

        Raises:
            ConnectError, ConnectTimeout: the connect failed or timed out.
            _Fallback: ``local`` cannot be used for this destination.
        """
        loop = asyncio.get_running_loop()
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            _set_reuse(sock)
            sock.setblocking(False)
            bind_host = local[0]
            try:
                sock.bind((bind_host, local[1]))
            except OSError as exc:
                raise _Fallback(exc.strerror or str(exc)) from exc
            try:
                async with asyncio.timeout(timeout):
                    await loop.sock_connect(sock, (host, port))
            except TimeoutError as exc:
                raise ConnectTimeout(f"TCP connect to {host}:{port} timed out") from exc
            except OSError as exc:
                if exc.errno in _FALLBACK_ERRNOS:
                    raise _Fallback(exc.strerror or str(exc)) from exc
                raise ConnectError(f"TCP connect to {host}:{port} failed: {exc.strerror}") from exc
            _, proto = await loop.create_connection(TcpConnection, sock=sock)
        except BaseException:
            sock.close()
            raise
        return proto

    async def dial_punch(self, addr: Multiaddr, *, timeout: float | None) -> TcpConnection:  # noqa: ASYNC109
        """The hole-punch dial: from the listen port, never from an ephemeral port.

        An ephemeral port would leave through a NAT mapping the peer never saw, so a
        fallback would only waste the attempt.

        Raises:
            ConnectError: no listener of that family, the port cannot be used, or the
                connect failed; ConnectTimeout: nothing answered in time.
        """
        sa = addr.to_socket_address()
        if sa.family not in ("ip4", "ip6"):
            raise ConnectError(f"cannot punch to {addr}: not an IP address")
        family = socket.AF_INET6 if sa.family == "ip6" else socket.AF_INET
        local = self.listen_port(family)
        if local is None:
            raise ConnectError(f"cannot punch to {addr}: no {sa.family} listener")
        try:
            return await self.dial_from(local, sa.host, sa.port, family, timeout)
        except _Fallback as exc:
            raise ConnectError(f"cannot punch to {addr} from port {local[1]}: {exc}") from exc

    def adopt_inbound(self, conn: TcpConnection) -> None:
        """Hand ``conn`` (dialed by us) to the host as if a listener had accepted it.

        The host then upgrades it in the responder roles. Used after a TCP simultaneous
        open where we are the server above TCP.

        Raises:
            ConnectError: no listener of the connection's family (``conn`` is aborted).
        """
        host = conn.local_address[0]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for lst in self._listeners:
            if lst.family == family:
                lst.on_connection(conn)
                return
        conn.abort()
        raise ConnectError("no listener to hand the punched connection to")


class _Fallback(Exception):
    """The listen port cannot be used for this dial (internal)."""


# Keep the plain dial helper reachable for callers that want an ephemeral port explicitly.
dial_ephemeral = _tcp.dial

__all__ = [
    "ReuseportListener",
    "ReuseportTcpTransport",
    "dial_ephemeral",
    "ephemeral_dials",
    "reuseport_supported",
]
