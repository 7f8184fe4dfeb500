"""The port-reusing TCP transport on loopback: dials leave from the listen port, fall back to
an ephemeral port when they must, adopted sockets are upgraded in the responder roles, and
external addresses show up in what the host advertises."""

from __future__ import annotations

import asyncio

import pytest

from glueberry.errors import ConnectError
from glueberry.net.host import Host, HostConfig
from glueberry.net.testprotocols import ECHO_PROTOCOL, echo_pattern, register_test_protocols
from glueberry.transport.tcp_reuse import ReuseportTcpTransport, ephemeral_dials
from glueberry.wire.identity import PrivateKey
from glueberry.wire.multiaddr import Multiaddr

LOOP = "/ip4/127.0.0.1/tcp/0"


async def make_host(tcp: ReuseportTcpTransport | None = None) -> tuple[Host, ReuseportTcpTransport]:
    tcp = tcp or ReuseportTcpTransport()
    host = Host(PrivateKey.generate(), listen_addrs=[LOOP], config=HostConfig(transports=[tcp]))
    await host.start()
    register_test_protocols(host, bench=False)
    return host, tcp


async def test_dials_leave_from_the_listen_port() -> None:
    a, ta = await make_host()
    b, _ = await make_host()
    try:
        conn = await a.connect(b.peer_id, b.listen_addrs)
        port = ta.listeners[0].port
        assert conn.local_address == ("127.0.0.1", port)  # what a NAT would map and relays see
        await echo_pattern(await a.new_stream(b.peer_id, [ECHO_PROTOCOL]), 1000)
        # B saw A at A's listen address: an observed address a peer can dial back.
        (bconn,) = b.connections(a.peer_id)
        assert bconn.remote_address == ("127.0.0.1", port)
        assert ta.fallback_dials == 0
    finally:
        await a.close()
        await b.close()


async def test_ephemeral_dials_and_fallback() -> None:
    a, ta = await make_host()
    b, _ = await make_host()
    try:
        port = ta.listeners[0].port
        with ephemeral_dials():
            conn = await a.connect(None, b.listen_addrs)
        assert conn.local_address[1] != port
        # The listen-port 4-tuple to B is free, but a second dial to the same address from
        # the same port is impossible: the transport falls back to an ephemeral port.
        first = await ta.dial(b.listen_addrs[0], timeout=5)
        assert first.local_address[1] == port
        second = await ta.dial(b.listen_addrs[0], timeout=5)
        assert second.local_address[1] != port and ta.fallback_dials == 1
        # A punch never falls back: an ephemeral port would be useless behind a NAT.
        with pytest.raises(ConnectError, match="cannot punch"):
            await ta.dial_punch(b.listen_addrs[0], timeout=5)
        for raw in (first, second):
            raw.abort()
    finally:
        await a.close()
        await b.close()


async def test_adopt_inbound_needs_a_listener() -> None:
    b, tb = await make_host()
    try:
        lonely = ReuseportTcpTransport()  # never listened
        raw = await tb.dial(b.listen_addrs[0], timeout=5)
        with pytest.raises(ConnectError, match="no listener"):
            lonely.adopt_inbound(raw)
        assert raw.is_closing()
    finally:
        await b.close()


async def test_adopt_inbound_roles_with_an_initiator_host() -> None:
    """B's raw socket, adopted, meets A's host dialing as initiator over the same bytes."""
    from glueberry.transport.memory import memory_pair

    b, tb = await make_host()
    a, _ = await make_host()
    try:
        # A memory pipe stands in for the punched TCP connection.
        a_end, b_end = memory_pair()
        tb.adopt_inbound(b_end)  # type: ignore[arg-type]
        muxed = await a.upgrader.upgrade_outbound(
            a_end, expected_peer=b.peer_id, on_stream=lambda s: s.reset()
        )
        assert muxed.remote_peer == b.peer_id
        async with asyncio.timeout(5):
            while not b.connections(a.peer_id):  # noqa: ASYNC110 - host registers it
                await asyncio.sleep(0.01)
        (conn,) = b.connections(a.peer_id)
        assert conn.direction == "inbound"  # B ran the responder side on it
        await muxed.close()
    finally:
        await a.close()
        await b.close()


async def test_external_addrs_are_advertised() -> None:
    host, tcp = await make_host()
    try:
        ext = Multiaddr("/ip4/198.51.100.7/tcp/4001")
        tcp.set_external_addrs([ext, Multiaddr("/ip4/198.51.100.7/udp/1/quic-v1")])
        assert ext in host.addrs
        assert not any(a.transport_kind() == "quic-v1" for a in host.addrs)
        tcp.set_external_addrs([])
        assert ext not in host.addrs
    finally:
        await host.close()
