"""NatManager on loopback: relay service switch, automatic reservations, relayed dials, limit
events, AutoNAT v1 verdicts, configuration errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from glueberry.errors import ConfigError
from glueberry.nat.events import (
    ExternalAddrsChanged,
    NatEvent,
    RelayCircuitOpened,
    RelayedConnectionLimited,
    ReservationObtained,
)
from glueberry.nat.manager import NatConfig, NatManager, nat_transports
from glueberry.nat.relay_service import relay_addr_of
from glueberry.net.host import Host, HostConfig
from glueberry.net.testprotocols import (
    ECHO_PROTOCOL,
    SINK_PROTOCOL,
    echo_pattern,
    feed_sink,
    register_test_protocols,
)
from glueberry.proto.relay import HOP_PROTOCOL, RelayLimits
from glueberry.transport.circuit import dial_target
from glueberry.wire.identity import PrivateKey

LOOP = "/ip4/127.0.0.1/tcp/0"
E = TypeVar("E", bound=NatEvent)


class Node:
    def __init__(self, host: Host, nat: NatManager) -> None:
        self.host = host
        self.nat = nat
        self.events: list[NatEvent] = []
        self._sub = nat.subscribe()
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        async for ev in self._sub:
            if isinstance(ev, NatEvent):
                self.events.append(ev)

    async def until(self, cond: Callable[[], bool], seconds: float = 10.0) -> None:
        async with asyncio.timeout(seconds):
            while not cond():  # noqa: ASYNC110 - state filled by the collector task
                await asyncio.sleep(0.01)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    async def close(self) -> None:
        await self.nat.close()
        await self.host.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


NodeFactory = Callable[..., Awaitable[Node]]
"""``await node_factory(**NatConfig options)``: a started host with a NatManager."""


@pytest.fixture
async def node_factory() -> AsyncIterator[NodeFactory]:
    nodes: list[Node] = []

    async def make(**kw: Any) -> Node:
        host = Host(
            PrivateKey.generate(),
            listen_addrs=[LOOP],
            config=HostConfig(transports=nat_transports()),
        )
        await host.start()
        register_test_protocols(host, bench=False)
        kw.setdefault("enable_autonat", False)
        nat = NatManager(host, NatConfig(**kw))
        await nat.start()
        node = Node(host, nat)
        nodes.append(node)
        return node

    yield make
    for n in reversed(nodes):
        await n.close()


async def test_relay_service_is_off_by_default(node_factory: NodeFactory) -> None:
    plain: Node = await node_factory()
    assert HOP_PROTOCOL not in plain.host.protocols
    relay: Node = await node_factory(enable_relay_service=True, enable_relay_client=False)
    assert HOP_PROTOCOL in relay.host.protocols


async def test_reservation_relayed_dial_and_limit_event(node_factory: NodeFactory) -> None:
    relay: Node = await node_factory(
        enable_relay_service=True,
        enable_relay_client=False,
        relay_limits=RelayLimits(circuit_data=32 * 1024, circuit_duration=0),
    )
    (raddr,) = relay_addr_of(relay.host)
    a: Node = await node_factory(relays=[raddr], enable_hole_punching=False)
    await a.until(lambda: bool(a.of(ReservationObtained)))
    rsvp = a.of(ReservationObtained)[0]
    assert isinstance(rsvp, ReservationObtained)
    assert rsvp.relay == relay.host.peer_id
    assert rsvp.limit is not None and rsvp.limit.data == 32 * 1024
    # The relayed address is advertised: in the host's addresses and an event.
    assert a.nat.relay_addrs and set(a.nat.relay_addrs) <= set(a.host.addrs)
    await a.until(lambda: any(e.relayed for e in a.of(ExternalAddrsChanged)))

    b: Node = await node_factory(enable_hole_punching=False, enable_relay_client=True)
    target = a.nat.relay_addrs[0].with_p2p(a.host.peer_id)
    with dial_target(a.host.peer_id):
        conn = await b.host.connect(a.host.peer_id, [target])
    assert conn.transport_name == "circuit"
    stream = await b.host.new_stream(a.host.peer_id, [ECHO_PROTOCOL])
    await echo_pattern(stream, 4000)
    await relay.until(lambda: bool(relay.of(RelayCircuitOpened)))
    # Past the limit: the application gets an error and both ends an event.
    sink = await b.host.new_stream(a.host.peer_id, [SINK_PROTOCOL])
    with pytest.raises(Exception):  # noqa: B017 - an error, whichever layer raises it
        async with asyncio.timeout(10):
            await feed_sink(sink, 100_000)
    await b.until(lambda: bool(b.of(RelayedConnectionLimited)))
    await a.until(lambda: bool(a.of(RelayedConnectionLimited)))
    ev = b.of(RelayedConnectionLimited)[0]
    assert isinstance(ev, RelayedConnectionLimited)
    assert ev.reason == "data" and ev.relay == relay.host.peer_id
    assert ev.peer == a.host.peer_id and ev.sent <= 32 * 1024


async def test_config_errors() -> None:
    with pytest.raises(ConfigError):
        NatConfig(punch_timeout=0)
    host = Host(PrivateKey.generate(), listen_addrs=[LOOP])  # plain TCP, no circuit
    await host.start()
    try:
        with pytest.raises(ConfigError, match="ReuseportTcpTransport"):
            NatManager(host, NatConfig())
        with pytest.raises(ConfigError, match="/p2p/"):
            NatManager(
                Host(
                    PrivateKey.generate(),
                    config=HostConfig(transports=nat_transports()),
                ),
                NatConfig(relays=["/ip4/127.0.0.1/tcp/1"]),
            )
    finally:
        await host.close()
