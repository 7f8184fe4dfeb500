"""QUIC hole punching for DCUtR: B's random UDP packets, from the port A's dial will reach.

Spec: https://github.com/libp2p/specs/blob/master/relay/DCUtR.md (r1, "QUIC": A dials, B
sends random UDP packets to A's addresses at random 10-200 ms intervals and ends up as the
QUIC server) and connections/hole-punching.md. Behaviour matched: go-libp2p
``p2p/transport/quic`` (64-byte random payloads; after packet *i* (0-based) it waits
``10 ms + rand(min(10 * (i+1)**2, 200)) ms``; libp2p-notes §2.11).

Theory of operation
-------------------
A UDP NAT mapping is keyed by the inside socket, so everything of one peer must use *one*
UDP socket: the QUIC listener bound to the wildcard address
(:meth:`~glueberry.transport.quic.QuicTransport.punch_endpoint`). The relay observed that
socket (we dial the relay from it, so identify's ``observedAddr`` is its public mapping),
A's QUIC dial leaves from it (the QUIC transport dials from a wildcard listener), and B's
packets leave from it too (:meth:`QuicPuncher.spray`, via
:meth:`~glueberry.transport._quic_endpoint.QuicEndpoint.send_datagram`).

* **A** (received SYNC) dials B's ``/quic-v1`` addresses as an ordinary QUIC client. Its
  Initial opens A's NAT towards B's public address.
* **B** (sent SYNC, RTT/2 later) sprays random 64-byte datagrams at A's ``/quic-v1``
  addresses until a direct connection to A exists or the punch times out. They open B's NAT
  towards A, so A's Initial - or its retransmission, should it have arrived first and been
  dropped - passes B's NAT and reaches B's *listener*: B accepts the connection and is the
  QUIC server, as the spec wants. Nothing else changes on B: the host admits the inbound
  QUIC connection like any other.

The datagrams carry no meaning. Once A's NAT lets them in, A's endpoint drops them before
any QUIC processing (too short for a short header, unknown connection ID) and counts them in
``endpoint.dropped``. They are at most one per 10 ms for at most ``duration`` seconds.

External addresses: :meth:`QuicPuncher.set_external_addrs` passes confirmed observed
``/quic-v1`` addresses to the QUIC transport, whose listeners then show them (identify
advertises them, DCUtR offers them).

This module imports neither aioquic nor the QUIC transport: it works on whatever QUIC
transport the host was given (a :class:`~glueberry.transport.quic.QuicTransport` or the
host's lazy default wrapper), and a host without QUIC simply has no puncher.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, cast

from glueberry.errors import ConnectError
from glueberry.wire.multiaddr import Multiaddr, MultiaddrError

if TYPE_CHECKING:
    from glueberry.transport._quic_endpoint import QuicEndpoint
    from glueberry.transport.quic import QuicTransport

logger = logging.getLogger(__name__)

QUIC_V1: Final = "quic-v1"
#: Size of each random datagram (go: 64 bytes).
PUNCH_PACKET_SIZE: Final = 64
#: go-libp2p's QUIC hole-punch timeout.
DEFAULT_SPRAY_DURATION: Final = 5.0


def spray_interval(i: int, rng: random.Random) -> float:
    """Seconds to wait after datagram ``i`` (0-based): 10 ms + rand(min(10 (i+1)^2, 200)) ms."""
    if i < 0:
        raise ValueError("packet index must be >= 0")
    return (10 + rng.randrange(min(10 * (i + 1) ** 2, 200))) / 1000.0


def quic_transport_of(transport: object) -> QuicTransport | None:
    """The real QUIC transport behind ``transport``: itself, the one a lazy wrapper has made
    (``LazyQuicTransport`` once started), or None."""
    quic = sys.modules.get("glueberry.transport.quic")
    if quic is None:  # aioquic was never imported: no QUIC transport can exist
        return None
    if isinstance(transport, quic.QuicTransport):
        return cast("QuicTransport", transport)
    if getattr(transport, "yields_muxed_connections", False) and getattr(
        transport, "started", False
    ):
        real = getattr(transport, "transport", None)
        if isinstance(real, quic.QuicTransport):
            return cast("QuicTransport", real)
    return None


def is_quic_transport(transport: object) -> bool:
    """``transport`` is QUIC (a :class:`QuicTransport` or a lazy wrapper of one)."""
    if quic_transport_of(transport) is not None:
        return True
    return bool(getattr(transport, "yields_muxed_connections", False)) and (
        getattr(transport, "name", None) == QUIC_V1
    )


def _family(addr: Multiaddr) -> int | None:
    ip = addr.ip
    if ip is None:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


class QuicPuncher:
    """The QUIC side of DCUtR for a host (see the module docstring).

    Args:
        transports: the host's transports (the QUIC one is found among them, also when it
            starts later).
        rng: randomness for the intervals (default: a fresh ``random.Random``).
        payload: ``payload(n)`` -> n random bytes (default ``os.urandom``).
    """

    def __init__(
        self,
        transports: Iterable[object],
        *,
        rng: random.Random | None = None,
        payload: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._transports = [t for t in transports if is_quic_transport(t)]
        self._rng = rng if rng is not None else random.Random()
        self._payload = payload
        self._external: list[Multiaddr] = []
        #: Datagrams sprayed in total.
        self.packets_sent = 0

    @property
    def available(self) -> bool:
        """The host has a QUIC transport at all."""
        return bool(self._transports)

    @property
    def transport(self) -> QuicTransport | None:
        """The host's QUIC transport, if it exists yet."""
        for t in self._transports:
            real = quic_transport_of(t)
            if real is not None:
                return real
        return None

    def endpoint_for(self, addr: Multiaddr) -> QuicEndpoint | None:
        """Our listening socket for punching to ``addr``'s IP family, or None."""
        real = self.transport
        family = _family(addr)
        if real is None or family is None:
            return None
        return real.punch_endpoint(family)

    def can_punch(self, addr: Multiaddr) -> bool:
        """``addr`` is an IP ``/quic-v1`` address and we listen on the wildcard address of
        its family (so our dial, our packets and our listener share the socket)."""
        if addr.is_relayed or addr.transport_kind() != QUIC_V1:
            return False
        return self.endpoint_for(addr) is not None

    def set_external_addrs(self, addrs: Iterable[Multiaddr]) -> None:
        """Our public ``/quic-v1`` addresses (others are ignored) for the listeners to show."""
        self._external = [a for a in addrs if a.transport_kind() == QUIC_V1]
        real = self.transport
        if real is not None:
            real.set_external_addrs(self._external)

    async def spray(self, addr: Multiaddr, *, duration: float = DEFAULT_SPRAY_DURATION) -> int:
        """Send random datagrams to ``addr`` from our listening socket for ``duration``
        seconds (or until cancelled: the caller stops it when the connection is up).

        Returns:
            How many datagrams were sent.

        Raises:
            ConnectError: no listening QUIC socket for ``addr``'s family, or ``addr`` has
                no IP and port.
        """
        endpoint = self.endpoint_for(addr)
        if endpoint is None:
            raise ConnectError(f"no listening QUIC socket to punch {addr} from")
        try:
            sa = addr.to_socket_address()
        except MultiaddrError as exc:
            raise ConnectError(f"cannot punch {addr}: {exc}") from exc
        dest = (sa.host, sa.port)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration
        sent = 0
        while not endpoint.is_closed:
            endpoint.send_datagram(self._payload(PUNCH_PACKET_SIZE), dest)
            sent += 1
            self.packets_sent += 1
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(spray_interval(sent - 1, self._rng), remaining))
        logger.debug("sprayed %d datagrams at %s from %s", sent, addr, endpoint.local_address)
        return sent


__all__ = [
    "DEFAULT_SPRAY_DURATION",
    "PUNCH_PACKET_SIZE",
    "QuicPuncher",
    "is_quic_transport",
    "quic_transport_of",
    "spray_interval",
]
