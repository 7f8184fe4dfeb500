"""Circuit relay v2 end to end on loopback: reserve, dial through the relay, Noise+yamux over
the circuit, limits surfaced as errors and events, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from glueberry.errors import ConnectError, GlueberryError
from glueberry.nat.events import NatEvent, RelayCircuitLimitReached
from glueberry.nat.relay_client import RelayClient
from glueberry.nat.relay_service import RelayService
from glueberry.net.host import Host, HostConfig
from glueberry.net.muxer import YamuxConnection
from glueberry.net.testprotocols import (
    ECHO_PROTOCOL,
    SINK_PROTOCOL,
    echo_pattern,
    feed_sink,
    register_test_protocols,
)
from glueberry.proto.relay import RelayLimits
from glueberry.transport.circuit import CircuitConnection, CircuitTransport, dial_target
from glueberry.transport.tcp_reuse import ReuseportTcpTransport
from glueberry.wire.identity import PrivateKey
from glueberry.wire.multiaddr import Multiaddr

LOOP = "/ip4/127.0.0.1/tcp/0"


@dataclass
class Peer:
    host: Host
    circuit: CircuitTransport
    tcp: ReuseportTcpTransport
    limits_hit: list[tuple[CircuitConnection, str]] = field(default_factory=list)


def make_peer() -> Peer:
    tcp = ReuseportTcpTransport()
    circuit = CircuitTransport()
    host = Host(
        PrivateKey.generate(),
        listen_addrs=[LOOP],
        config=HostConfig(transports=[tcp, circuit]),
    )
    peer = Peer(host, circuit, tcp)
    circuit.on_limit = lambda c, reason: peer.limits_hit.append((c, reason))
    return peer


@dataclass
class Net:
    relay: Peer
    service: RelayService
    a: Peer
    b: Peer
    events: list[NatEvent]
    relay_addr: Multiaddr


MakeNet = Callable[..., Awaitable[Net]]
"""``await make_net(limits=None)``: a relay and two peers, started."""


@pytest.fixture
async def make_net() -> AsyncIterator[MakeNet]:
    stack: list[Host] = []

    async def build(limits: RelayLimits | None = None) -> Net:
        relay, a, b = make_peer(), make_peer(), make_peer()
        events: list[NatEvent] = []
        for p in (relay, a, b):
            await p.host.start()
            stack.append(p.host)
            p.circuit.attach(p.host)
            register_test_protocols(p.host, bench=False)
        service = RelayService(
            relay.host, limits=limits, publish=events.append, allow_private_addrs=True
        )
        relay_addr = relay.host.listen_addrs[0].with_p2p(relay.host.peer_id)
        return Net(relay, service, a, b, events, relay_addr)

    yield build
    for h in reversed(stack):
        await h.close()


async def until(cond: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not cond():  # noqa: ASYNC110 - polling state set by callbacks
            await asyncio.sleep(0.01)


async def reserve_and_listen(net: Net) -> Multiaddr:
    rsvp = await RelayClient(net.a.host).reserve(net.relay.host.peer_id, [net.relay_addr])
    assert rsvp.addrs, rsvp
    net.a.circuit.set_relay_addrs(rsvp.addrs)
    await net.a.host.listen("/p2p-circuit")
    return rsvp.addrs[0].with_p2p(net.a.host.peer_id)


async def test_reserve_then_dial_through_the_relay(make_net: MakeNet) -> None:
    net: Net = await make_net()
    target = await reserve_and_listen(net)
    assert target.is_relayed
    # The listener advertises the relayed address through the host's addresses.
    assert any(a.is_relayed for a in net.a.host.addrs)
    with dial_target(net.a.host.peer_id):
        conn = await net.b.host.connect(net.a.host.peer_id, [target])
    assert conn.transport_name == "circuit"
    assert conn.remote_peer == net.a.host.peer_id  # Noise authenticated end to end
    stream = await net.b.host.new_stream(net.a.host.peer_id, [ECHO_PROTOCOL])
    await echo_pattern(stream, 20_000)
    # Several streams at once over one circuit (yamux end to end).
    streams = [await net.b.host.new_stream(net.a.host.peer_id, [ECHO_PROTOCOL]) for _ in range(4)]
    await asyncio.gather(*(echo_pattern(s, 5000) for s in streams))
    # A sees a circuit connection from B.
    a_conns = net.a.host.connections(net.b.host.peer_id)
    assert [c.transport_name for c in a_conns] == ["circuit"]
    assert net.service.stats["circuits"] == 1 and net.service.stats["reservations"] == 1


async def test_plain_connect_with_a_circuit_address(make_net: MakeNet) -> None:
    """``host.connect`` alone (no ``dial_target``): the host keeps the destination."""
    net: Net = await make_net()
    target = await reserve_and_listen(net)
    conn = await net.b.host.connect(None, [target])
    assert conn.transport_name == "circuit" and conn.remote_peer == net.a.host.peer_id
    await echo_pattern(await net.b.host.new_stream(net.a.host.peer_id, [ECHO_PROTOCOL]), 100)


async def test_dial_without_reservation_is_refused(make_net: MakeNet) -> None:
    net: Net = await make_net()
    await net.a.host.connect(net.relay.host.peer_id, [net.relay_addr])
    addr = net.relay_addr.encapsulate("/p2p-circuit").with_p2p(net.a.host.peer_id)
    with dial_target(net.a.host.peer_id), pytest.raises(ConnectError, match="NO_RESERVATION"):
        await net.b.host.connect(net.a.host.peer_id, [addr])


async def test_target_not_listening_refuses_stop(make_net: MakeNet) -> None:
    net: Net = await make_net()
    rsvp = await RelayClient(net.a.host).reserve(net.relay.host.peer_id, [net.relay_addr])
    addr = rsvp.addrs[0].with_p2p(net.a.host.peer_id)  # A never listens on /p2p-circuit
    with dial_target(net.a.host.peer_id), pytest.raises(ConnectError, match="CONNECTION_FAILED"):
        await net.b.host.connect(net.a.host.peer_id, [addr])
    assert net.a.circuit.refused_stop == 1


async def test_data_limit_is_an_error_and_an_event(make_net: MakeNet) -> None:
    net: Net = await make_net(RelayLimits(circuit_data=16 * 1024, circuit_duration=0))
    target = await reserve_and_listen(net)
    with dial_target(net.a.host.peer_id):
        await net.b.host.connect(net.a.host.peer_id, [target])
    stream = await net.b.host.new_stream(net.a.host.peer_id, [SINK_PROTOCOL])
    with pytest.raises(GlueberryError) as info:
        async with asyncio.timeout(10):
            await feed_sink(stream, 200_000)
    assert info.value is not None
    # Our end refused to carry the connection past the announced limit, and said why.
    await until(lambda: bool(net.b.limits_hit))
    conn, reason = net.b.limits_hit[0]
    assert reason == "data" and conn.limit_reached == "data"
    assert conn.limit is not None and conn.limit.data == 16 * 1024
    assert conn.sent <= 16 * 1024
    assert not net.b.host.connections(net.a.host.peer_id)


async def test_duration_limit_is_an_error_and_an_event(make_net: MakeNet) -> None:
    net: Net = await make_net(RelayLimits(circuit_data=0, circuit_duration=1))
    target = await reserve_and_listen(net)
    with dial_target(net.a.host.peer_id):
        conn = await net.b.host.connect(net.a.host.peer_id, [target])
    stream = await net.b.host.new_stream(net.a.host.peer_id, [ECHO_PROTOCOL])
    await echo_pattern(stream, 1000)
    assert isinstance(conn, YamuxConnection)  # yamux over the circuit
    async with asyncio.timeout(5):
        await conn.wait_closed()
    await until(lambda: bool(net.a.limits_hit and net.b.limits_hit))
    assert net.b.limits_hit[0][1] == "duration"
    assert net.a.limits_hit[0][1] == "duration"


async def test_relay_resets_when_the_limit_is_spent(make_net: MakeNet) -> None:
    """The relay's own enforcement, seen from a peer that does not respect the limit."""
    net: Net = await make_net(RelayLimits(circuit_data=8192, circuit_duration=0))
    net.a.circuit.enforce_limits = False
    net.b.circuit.enforce_limits = False
    target = await reserve_and_listen(net)
    with dial_target(net.a.host.peer_id):
        await net.b.host.connect(net.a.host.peer_id, [target])
    stream = await net.b.host.new_stream(net.a.host.peer_id, [ECHO_PROTOCOL])
    with pytest.raises((GlueberryError, ExceptionGroup)):
        async with asyncio.timeout(10):
            for _ in range(100):
                await echo_pattern(stream, 500)
                stream = await net.b.host.new_stream(net.a.host.peer_id, [ECHO_PROTOCOL])
    await until(lambda: any(isinstance(e, RelayCircuitLimitReached) for e in net.events))
    hit = next(e for e in net.events if isinstance(e, RelayCircuitLimitReached))
    assert hit.reason == "data"
    assert max(hit.src_to_dst, hit.dst_to_src) == 8192
    # Both ends recognise the relay's reset as the data limit, not a random failure.
    await until(lambda: bool(net.a.limits_hit and net.b.limits_hit))
    assert {reason for _, reason in net.a.limits_hit + net.b.limits_hit} == {"data"}
