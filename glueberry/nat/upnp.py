"""UPnP IGD port mapping on asyncio: SSDP discovery and SOAP control, no extra dependency.

Spec: UPnP Device Architecture 1.1 and the IGD ``WANIPConnection`` service (see
:mod:`glueberry.proto.upnp`, which does all the parsing).

Theory of operation. :func:`discover` multicasts an ``M-SEARCH`` from a UDP socket and collects
unicast answers for ``timeout`` seconds. :meth:`UpnpIgdClient.discover` takes the first answer
whose description names a WAN connection service. Every control action is one plain
HTTP/1.1 POST (``Connection: close``) over ``asyncio.open_connection``, read to EOF with a size
cap and a timeout. The local address of that TCP connection is the LAN address the gateway
sees, which is what ``AddPortMapping`` needs as ``NewInternalClient``.

:class:`MiniupnpcIgdClient` offers the same three operations through the optional
``miniupnpc`` extension (``pip install glueberry[upnp]``), run in a worker thread because that
library blocks.

Errors: no gateway / no answer → :class:`~glueberry.errors.ConnectTimeout`; a SOAP fault or an
HTTP failure → :class:`~glueberry.errors.ConnectError` (the UPnP error code is in the
message); malformed answers → :class:`~glueberry.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any, Literal

from glueberry.errors import ConnectError, ConnectTimeout, RemoteProtocolError
from glueberry.proto import upnp as u

logger = logging.getLogger(__name__)

#: Bytes read from one HTTP response at most (description documents are the largest).
MAX_HTTP_RESPONSE = u.MAX_DESCRIPTION + u.MAX_HTTP_HEAD
#: Answers kept from one discovery round.
MAX_SSDP_ANSWERS = 16


class _SsdpProto(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: list[tuple[u.SsdpResponse, str]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(self.answers) >= MAX_SSDP_ANSWERS:
            return
        try:
            resp = u.parse_ssdp_response(data)
        except RemoteProtocolError as exc:
            logger.debug("ignoring SSDP datagram from %s: %s", addr[0], exc)
            return
        if all(r.location != resp.location for r, _ in self.answers):
            self.answers.append((resp, addr[0]))

    def error_received(self, exc: Exception) -> None:
        logger.debug("SSDP socket error: %s", exc)


async def discover(
    window: float = 2.0,
    *,
    st: str = u.IGD_V1,
    target: tuple[str, int] = (u.SSDP_ADDR, u.SSDP_PORT),
) -> list[u.SsdpResponse]:
    """M-SEARCH for ``st`` and return the answers received within ``window`` seconds.

    Only answers whose ``LOCATION`` host is the host that answered are kept (a device cannot
    point clients at a third party).
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
    sock.bind(("0.0.0.0", 0))
    sock.setblocking(False)
    transport, proto = await loop.create_datagram_endpoint(_SsdpProto, sock=sock)
    try:
        msg = u.build_msearch(st, mx=max(1, min(5, int(window))))
        transport.sendto(msg, target)
        await asyncio.sleep(window / 2)
        transport.sendto(msg, target)  # UDP: once more
        await asyncio.sleep(window / 2)
    finally:
        transport.close()
    out = []
    for resp, src in proto.answers:
        if urllib.parse.urlsplit(resp.location).hostname == src:
            out.append(resp)
    return out


async def http_request(
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    request_timeout: float = 5.0,
    max_body: int = u.MAX_DESCRIPTION,
) -> tuple[int, dict[str, str], bytes, str]:
    """One ``Connection: close`` request; returns ``(status, headers, body, local_ip)``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ConnectError(f"not an http URL: {url!r}")
    port = parts.port or 80
    try:
        async with asyncio.timeout(request_timeout):
            reader, writer = await asyncio.open_connection(parts.hostname, port)
            try:
                local_ip = writer.get_extra_info("sockname")[0]
                writer.write(u.build_http_request(method, url, body=body, headers=headers))
                await writer.drain()
                data = bytearray()
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    data += chunk
                    if len(data) > max_body + u.MAX_HTTP_HEAD:
                        raise RemoteProtocolError("HTTP response too large", protocol="upnp")
            finally:
                writer.close()
                try:
                    await writer.wait_closed()
                except OSError:
                    pass
    except TimeoutError as exc:
        raise ConnectTimeout(f"{method} {url} timed out") from exc
    except OSError as exc:
        raise ConnectError(f"{method} {url}: {exc}") from exc
    status, hdrs, payload = u.parse_http_response(bytes(data), max_body=max_body)
    return status, hdrs, payload, str(local_ip)


@dataclass(frozen=True, slots=True, kw_only=True)
class UpnpMapping:
    protocol: Literal["tcp", "udp"]
    external_port: int
    internal_port: int
    internal_client: str
    lease: int
    """Seconds (0 = the gateway's "permanent", which many gateways refuse)."""


class UpnpIgdClient:
    """Controls one IGD WAN connection service."""

    def __init__(self, service: u.IgdService, *, request_timeout: float = 5.0) -> None:
        self.service = service
        self.request_timeout = request_timeout
        self.local_ip: str | None = None

    @classmethod
    async def discover(cls, window: float = 2.0) -> UpnpIgdClient:
        """Find a gateway on the LAN (raises ConnectTimeout when none answers)."""
        answers = await discover(window)
        if not answers:
            answers = await discover(window, st=u.IGD_V2)
        for ans in answers:
            try:
                return await cls.from_location(ans.location)
            except (ConnectError, RemoteProtocolError) as exc:
                logger.debug("IGD candidate %s unusable: %s", ans.location, exc)
        raise ConnectTimeout("no UPnP Internet Gateway Device answered")

    @classmethod
    async def from_location(cls, location: str, *, request_timeout: float = 5.0) -> UpnpIgdClient:
        status, _, body, local_ip = await http_request(
            "GET", location, request_timeout=request_timeout
        )
        if status != 200:
            raise ConnectError(f"device description {location}: HTTP {status}")
        client = cls(u.parse_description(body, location), request_timeout=request_timeout)
        client.local_ip = local_ip
        return client

    async def _call(self, action: str, args: list[tuple[str, str]]) -> dict[str, str]:
        body, soap_action = u.build_soap_request(self.service.service_type, action, args)
        status, _, payload, local_ip = await http_request(
            "POST",
            self.service.control_url,
            body=body,
            headers=[
                ("Content-Type", 'text/xml; charset="utf-8"'),
                ("SOAPAction", soap_action),
            ],
            request_timeout=self.request_timeout,
            max_body=u.MAX_SOAP_RESPONSE,
        )
        self.local_ip = local_ip
        result = u.parse_soap_response(status, payload, action)
        if not result.ok:
            raise ConnectError(
                f"UPnP {action} failed: error {result.fault_code} ({result.fault_description})"
            )
        return result.values

    async def external_ip(self) -> ipaddress.IPv4Address:
        values = await self._call("GetExternalIPAddress", [])
        try:
            return ipaddress.IPv4Address(values.get("NewExternalIPAddress", ""))
        except ValueError as exc:
            raise RemoteProtocolError("gateway returned no external IPv4", protocol="upnp") from exc

    async def add_port_mapping(
        self,
        protocol: Literal["tcp", "udp"],
        external_port: int,
        internal_port: int,
        *,
        internal_client: str | None = None,
        description: str = "glueberry",
        lease: int = 3600,
    ) -> UpnpMapping:
        """Map ``external_port`` on the gateway to ``internal_client:internal_port``.

        ``internal_client`` defaults to this host's LAN address as the gateway sees it.
        """
        client = internal_client or self.local_ip
        if client is None:
            # A GetExternalIPAddress call teaches us our LAN address.
            await self.external_ip()
            client = self.local_ip
        assert client is not None
        await self._call(
            "AddPortMapping",
            u.add_port_mapping_args(
                protocol=protocol,
                external_port=external_port,
                internal_port=internal_port,
                internal_client=client,
                description=description,
                lease=lease,
            ),
        )
        return UpnpMapping(
            protocol=protocol,
            external_port=external_port,
            internal_port=internal_port,
            internal_client=client,
            lease=lease,
        )

    async def delete_port_mapping(
        self, protocol: Literal["tcp", "udp"], external_port: int
    ) -> None:
        await self._call(
            "DeletePortMapping",
            u.delete_port_mapping_args(protocol=protocol, external_port=external_port),
        )


class MiniupnpcIgdClient:
    """The same operations through the ``miniupnpc`` extension (optional extra ``upnp``)."""

    def __init__(self, upnp: Any) -> None:
        self._u = upnp

    @classmethod
    async def discover(cls, window: float = 2.0) -> MiniupnpcIgdClient:
        try:
            import miniupnpc
        except ImportError as exc:
            raise ConnectError("miniupnpc is not installed (pip install glueberry[upnp])") from exc

        def work() -> Any:
            upnp = miniupnpc.UPnP()
            upnp.discoverdelay = int(window * 1000)
            if upnp.discover() <= 0:
                raise ConnectTimeout("no UPnP device answered")
            upnp.selectigd()
            return upnp

        try:
            return cls(await asyncio.to_thread(work))
        except Exception as exc:  # miniupnpc raises bare Exception
            if isinstance(exc, ConnectError):
                raise
            raise ConnectError(f"miniupnpc: {exc}") from exc

    @property
    def local_ip(self) -> str:
        return str(self._u.lanaddr)

    async def external_ip(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(await asyncio.to_thread(self._u.externalipaddress))

    async def add_port_mapping(
        self,
        protocol: Literal["tcp", "udp"],
        external_port: int,
        internal_port: int,
        *,
        internal_client: str | None = None,
        description: str = "glueberry",
        lease: int = 3600,
    ) -> UpnpMapping:
        client = internal_client or self.local_ip

        def work() -> None:
            self._u.addportmapping(
                external_port, protocol.upper(), client, internal_port, description, "", lease
            )

        try:
            await asyncio.to_thread(work)
        except Exception as exc:
            raise ConnectError(f"miniupnpc AddPortMapping: {exc}") from exc
        return UpnpMapping(
            protocol=protocol,
            external_port=external_port,
            internal_port=internal_port,
            internal_client=client,
            lease=lease,
        )

    async def delete_port_mapping(
        self, protocol: Literal["tcp", "udp"], external_port: int
    ) -> None:
        try:
            await asyncio.to_thread(self._u.deleteportmapping, external_port, protocol.upper())
        except Exception as exc:
            raise ConnectError(f"miniupnpc DeletePortMapping: {exc}") from exc


__all__ = ["MiniupnpcIgdClient", "UpnpIgdClient", "UpnpMapping", "discover", "http_request"]
