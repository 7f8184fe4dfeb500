"""NAT-PMP asyncio client against a fake gateway on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections.abc import AsyncIterator

import pytest

from glueberry.errors import ConnectError, ConnectTimeout
from glueberry.nat.natpmp import NatPmpClient, default_gateway


class FakeGateway(asyncio.DatagramProtocol):
    """Answers like RFC 6886; drops the first ``drop`` requests; ``result`` for maps."""

    def __init__(self, drop: int = 0, result: int = 0) -> None:
        self.drop = drop
        self.result = result
        self.requests: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.requests.append(data)
        if self.drop > 0:
            self.drop -= 1
            return
        assert self.transport is not None
        if data == b"\x00\x00":
            self.transport.sendto(
                struct.pack("!BBHI4s", 0, 128, 0, 42, ipaddress.IPv4Address("203.0.113.9").packed),
                addr,
            )
            return
        _, op, _, iport, eport, life = struct.unpack("!BBHHHI", data)
        mapped = eport + 1 if life else 0
        self.transport.sendto(
            struct.pack("!BBHIHHI", 0, 128 + op, self.result, 42, iport, mapped, min(life, 3600)),
            addr,
        )


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[FakeGateway, int]]:
    loop = asyncio.get_running_loop()
    gw = FakeGateway()
    transport, _ = await loop.create_datagram_endpoint(lambda: gw, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        yield gw, port
    finally:
        transport.close()


async def test_external_address_map_renew_unmap(gateway: tuple[FakeGateway, int]) -> None:
    gw, port = gateway
    client = NatPmpClient("127.0.0.1", port=port)
    assert str(await client.external_address()) == "203.0.113.9"
    m = await client.map_port("tcp", 40001, lifetime=7200)
    assert (m.internal_port, m.external_port, m.lifetime, m.epoch) == (40001, 40002, 3600, 42)
    assert m.renew_at == pytest.approx(m.obtained_at + 1800)
    m2 = await client.renew(m)
    assert m2.external_port == 40003  # asked for 40002 again; the fake shifts by one
    await client.unmap_port("tcp", 40001)
    assert gw.requests[-1] == bytes.fromhex("000200009c4100000000" + "0000")
    u = await client.map_port("udp", 5000)
    assert u.protocol == "udp" and gw.requests[-1][1] == 1
    assert client.last_epoch == 42


async def test_retransmits_after_loss(gateway: tuple[FakeGateway, int]) -> None:
    gw, port = gateway
    gw.drop = 2
    client = NatPmpClient("127.0.0.1", port=port, initial_rto=0.02)
    await client.external_address()
    assert len(gw.requests) == 3


async def test_error_result_and_timeout(gateway: tuple[FakeGateway, int]) -> None:
    gw, port = gateway
    gw.result = 2
    client = NatPmpClient("127.0.0.1", port=port, initial_rto=0.02)
    with pytest.raises(ConnectError, match="NOT_AUTHORIZED"):
        await client.map_port("tcp", 1234)
    gw.drop = 100
    with pytest.raises(ConnectTimeout):
        await NatPmpClient("127.0.0.1", port=port, tries=3, initial_rto=0.02).external_address()
    assert len(gw.requests) == 1 + 3


def test_default_gateway_parses_proc() -> None:
    gw = default_gateway()
    assert gw is None or ipaddress.IPv4Address(gw)
