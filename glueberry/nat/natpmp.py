"""NAT-PMP client (RFC 6886) on asyncio: external address, map/unmap TCP/UDP, renew.

Spec: https://www.rfc-editor.org/rfc/rfc6886

Theory of operation: each call builds a :class:`~glueberry.proto.natpmp.NatPmpRequest`
(sans-I/O: datagrams and retransmission timer) and pumps it over a UDP socket connected to
``gateway:5351`` until it yields a result. The connected socket makes the kernel drop
datagrams from any other source; the machine checks the source again anyway.

Mappings last ``lifetime`` seconds (RFC default 7200); the RFC asks clients to renew at half
the lifetime, which :attr:`PortMapping.renew_at` gives (on the event loop's clock). A gateway
whose epoch went backwards rebooted and lost its mappings (RFC 6886 §3.6):
:meth:`NatPmpClient.renew` simply maps again, which covers that case.

Failures raise :class:`~glueberry.errors.ConnectError` (the gateway answered with an error
result, named in the message) or
:class:`~glueberry.errors.ConnectTimeout` (no answer after the retransmissions).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Literal

from glueberry.errors import ConnectError, ConnectTimeout
from glueberry.proto import natpmp as p

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class PortMapping:
    """A mapping the gateway granted."""

    protocol: Literal["tcp", "udp"]
    internal_port: int
    external_port: int
    """The port the gateway actually mapped (it may differ from the one suggested)."""
    lifetime: int
    """Seconds granted (may be shorter than requested)."""
    epoch: int
    """The gateway's seconds-since-start when it answered."""
    obtained_at: float
    """Event-loop time of the answer."""

    @property
    def renew_at(self) -> float:
        """RFC 6886 §3.3: renew when half the lifetime has passed."""
        return self.obtained_at + self.lifetime / 2


class _Proto(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue(maxsize=64)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.queue.full():
            self.queue.put_nowait((data, (addr[0], addr[1])))

    def error_received(self, exc: Exception) -> None:
        logger.debug("NAT-PMP socket error: %s", exc)


def _result_name(result: int) -> str:
    try:
        return p.ResultCode(result).name
    except ValueError:
        return "unknown"


def default_gateway() -> str | None:
    """The IPv4 default gateway from ``/proc/net/route`` (Linux), or ``None``."""
    try:
        with open("/proc/net/route", encoding="ascii") as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[1] == "00000000" and int(fields[3], 16) & 2:
            return str(ipaddress.IPv4Address(struct.pack("<I", int(fields[2], 16))))
    return None


class NatPmpClient:
    """Talks NAT-PMP to one gateway.

    Args:
        gateway: the gateway's IPv4 address (see :func:`default_gateway`).
        port: 5351 except in tests.
        tries: transmissions per request (250 ms, doubling).
    """

    def __init__(
        self,
        gateway: str,
        *,
        port: int = p.NATPMP_PORT,
        tries: int = p.DEFAULT_TRIES,
        initial_rto: float = p.INITIAL_RTO,
    ) -> None:
        self.gateway = str(ipaddress.IPv4Address(gateway))
        self.port = port
        self._tries = tries
        self._rto = initial_rto
        self.last_epoch: int | None = None

    async def _request(self, payload: bytes) -> p.Response:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            _Proto, remote_addr=(self.gateway, self.port), family=socket.AF_INET
        )
        try:
            req = p.NatPmpRequest(
                payload,
                gateway=(self.gateway, self.port),
                now=loop.time(),
                tries=self._tries,
                initial_rto=self._rto,
            )
            while True:
                now = loop.time()
                for data, _addr in req.datagrams_to_send(now):
                    transport.sendto(data)
                deadline = req.get_timer()
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    data, addr = await asyncio.wait_for(proto.queue.get(), timeout)
                except TimeoutError:
                    req.handle_timer(loop.time())
                else:
                    req.receive_datagram(data, addr, loop.time())
                for ev in req.events():
                    if isinstance(ev, p.NatPmpSucceeded):
                        self.last_epoch = ev.response.epoch
                        return ev.response
                    if isinstance(ev, p.NatPmpFailed):
                        raise ConnectError(
                            f"NAT-PMP gateway {self.gateway} answered result {ev.result}"
                            f" ({_result_name(ev.result)})"
                        )
                    if isinstance(ev, p.NatPmpTimedOut):
                        raise ConnectTimeout(
                            f"NAT-PMP gateway {self.gateway} did not answer ({ev.tries} tries)"
                        )
        finally:
            transport.close()

    async def external_address(self) -> ipaddress.IPv4Address:
        resp = await self._request(p.encode_external_address_request())
        assert isinstance(resp, p.ExternalAddressResponse)
        return resp.address

    async def map_port(
        self,
        protocol: Literal["tcp", "udp"],
        internal_port: int,
        *,
        external_port: int = 0,
        lifetime: int = p.DEFAULT_LIFETIME,
    ) -> PortMapping:
        """Ask for ``internal_port`` to be reachable from outside (``external_port`` is a hint)."""
        if lifetime <= 0:
            raise ValueError("lifetime must be positive (use unmap_port to delete)")
        resp = await self._request(
            p.encode_mapping_request(
                p.opcode_for(protocol), internal_port, external_port or internal_port, lifetime
            )
        )
        assert isinstance(resp, p.MappingResponse)
        return PortMapping(
            protocol=protocol,
            internal_port=resp.internal_port,
            external_port=resp.external_port,
            lifetime=resp.lifetime,
            epoch=resp.epoch,
            obtained_at=asyncio.get_running_loop().time(),
        )

    async def renew(self, mapping: PortMapping) -> PortMapping:
        """Refresh a mapping (asks for the same external port and lifetime)."""
        return await self.map_port(
            mapping.protocol,
            mapping.internal_port,
            external_port=mapping.external_port,
            lifetime=max(mapping.lifetime, 1),
        )

    async def unmap_port(self, protocol: Literal["tcp", "udp"], internal_port: int) -> None:
        """Delete the mapping of ``internal_port`` (``0``: all of ours for ``protocol``)."""
        await self._request(p.encode_mapping_request(p.opcode_for(protocol), internal_port, 0, 0))


__all__ = ["NatPmpClient", "PortMapping", "default_gateway"]
