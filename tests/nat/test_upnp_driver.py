"""UPnP IGD asyncio driver against a fake SSDP responder and HTTP/SOAP gateway on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from glueberry.errors import ConnectError
from glueberry.nat import upnp
from glueberry.proto import upnp as u

DESC = """<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0"><device>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<controlURL>/ctl</controlURL></service></serviceList></device></root>"""

FAULT = """<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">
<s:Body><s:Fault><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0">
<errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription>
</UPnPError></detail></s:Fault></s:Body></s:Envelope>"""


class Gateway:
    def __init__(self) -> None:
        self.actions: list[tuple[str, bytes]] = []
        self.mappings: set[str] = set()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        action = ""
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(":")
            if k.lower() == "content-length":
                length = int(v)
            if k.lower() == "soapaction":
                action = v.strip().strip('"').split("#")[1]
        body = await reader.readexactly(length)
        status, payload = 200, DESC
        if head.startswith(b"POST"):
            self.actions.append((action, body))
            status, payload = self.soap(action, body)
        data = payload.encode()
        # Answer chunked, as some gateways do.
        writer.write(
            f"HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n{len(data):x}\r\n".encode()
            + data
            + b"\r\n0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    def soap(self, action: str, body: bytes) -> tuple[int, str]:
        if action == "AddPortMapping":
            port = body.split(b"<NewExternalPort>")[1].split(b"<")[0].decode()
            if port in self.mappings:
                return 500, FAULT
            self.mappings.add(port)
        elif action == "DeletePortMapping":
            self.mappings.discard(body.split(b"<NewExternalPort>")[1].split(b"<")[0].decode())
        out = ""
        if action == "GetExternalIPAddress":
            out = "<NewExternalIPAddress>203.0.113.7</NewExternalIPAddress>"
        return 200, (
            '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
            f'<u:{action}Response xmlns:u="x">{out}</u:{action}Response></s:Body></s:Envelope>'
        )


class Ssdp(asyncio.DatagramProtocol):
    def __init__(self, http_port: int) -> None:
        self.http_port = http_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert data.startswith(b"M-SEARCH * HTTP/1.1\r\n")
        for host in ("127.0.0.1", "203.0.113.99"):  # the second one lies about its host
            self.transport.sendto(  # type: ignore[attr-defined]
                f"HTTP/1.1 200 OK\r\nST: {u.IGD_V1}\r\n"
                f"LOCATION: http://{host}:{self.http_port}/desc.xml\r\n\r\n".encode(),
                addr,
            )


@pytest.fixture
async def fake() -> AsyncIterator[tuple[Gateway, int]]:
    gw = Gateway()
    server = await asyncio.start_server(gw.handle, "127.0.0.1", 0)
    http_port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: Ssdp(http_port), local_addr=("127.0.0.1", 0)
    )
    try:
        yield gw, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()
        server.close()
        await server.wait_closed()


async def test_discover_and_map(fake: tuple[Gateway, int]) -> None:
    gw, ssdp_port = fake
    answers = await upnp.discover(0.2, target=("127.0.0.1", ssdp_port))
    assert [a.location.split(":")[1] for a in answers] == ["//127.0.0.1"]
    client = await upnp.UpnpIgdClient.from_location(answers[0].location)
    assert client.service.service_type == u.WAN_IP_V1
    assert str(await client.external_ip()) == "203.0.113.7"
    m = await client.add_port_mapping("tcp", 45000, 40001)
    assert m.internal_client == "127.0.0.1"
    with pytest.raises(ConnectError, match="718"):
        await client.add_port_mapping("tcp", 45000, 40001)
    await client.delete_port_mapping("tcp", 45000)
    assert gw.mappings == set()
    assert [a for a, _ in gw.actions] == [
        "GetExternalIPAddress",
        "AddPortMapping",
        "AddPortMapping",
        "DeletePortMapping",
    ]


async def test_unreachable_gateway() -> None:
    with pytest.raises(ConnectError):
        await upnp.UpnpIgdClient.from_location("http://127.0.0.1:1/desc.xml")
