"""Glueberry nodes through a circuit relay on loopback: relayed handshake and encrypted
messages, connection kinds in statistics and events, streams moving to a direct connection
without loss or reordering, and relay limits reported to the application (refused sends,
``RelayLimitReached``, the disconnect's cause). Hole punching itself needs NATs: see
``tests/netlab/test_lab_node.py``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import glueberry
from glueberry import (
    ConnectionLost,
    ConnectionState,
    EventsDropped,
    Node,
    PeerConnectionChanged,
    RelayLimitReached,
    ResourceLimitExceeded,
)
from glueberry.events import ConnectionChange, EventSubscription
from glueberry.nat.manager import NatConfig
from glueberry.proto.relay import RelayLimits
from tests.integration.node_harness import key, wait_for, wait_state

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
S = ConnectionState
STREAMS = ["chat", "news"]


def relay_config(i: int, **limits: Any) -> glueberry.Config:
    return glueberry.Config(
        key(i),
        None,
        [LOOPBACK],
        enable_relay_service=True,
        enable_hole_punching=False,
        nat_config=NatConfig(relay_limits=RelayLimits(**limits)),
    )


@contextlib.asynccontextmanager
async def trio(**limits: Any) -> AsyncIterator[tuple[Node, Node, Node]]:
    """A relay (with ``limits``), A holding a reservation with it, B able to dial relayed
    addresses; all on loopback."""
    async with contextlib.AsyncExitStack() as stack:
        relay = await stack.enter_async_context(Node(relay_config(20, **limits)))
        relay_addr = next(a for a in relay.addrs if not a.is_relayed).with_p2p(relay.peer_id)
        a = await stack.enter_async_context(
            Node(glueberry.Config(key(21), None, [LOOPBACK], relays=[relay_addr]))
        )
        b = await stack.enter_async_context(
            Node(glueberry.Config(key(22), None, [LOOPBACK], enable_hole_punching=True))
        )
        await wait_for(lambda: any(x.is_relayed for x in a.addrs), what="A's relayed address")
        yield relay, a, b


def relayed_addr(node: Node) -> glueberry.Multiaddr:
    return next(x for x in node.addrs if x.is_relayed).with_p2p(node.peer_id)


async def relayed_session(a: Node, b: Node) -> None:
    """B dials A through the relay; both run the ready-made handshake."""
    b.add_peer(a.peer_id, [relayed_addr(a)])
    async with asyncio.timeout(15):
        await asyncio.gather(
            glueberry.handshake.establish(b, a.peer_id, STREAMS),
            glueberry.handshake.establish(a, b.peer_id, STREAMS, connect=False),
        )


def only_direct(x: Node, y: Node) -> bool:
    return [c.transport_name for c in x.host.connections(y.peer_id)] == ["tcp"]


async def changes_until(
    sub: EventSubscription[ConnectionChange],
    pred: Callable[[ConnectionChange], bool],
    timeout: float = 10.0,  # noqa: ASYNC109 - a test helper deadline
) -> list[ConnectionChange]:
    seen: list[ConnectionChange] = []
    async with asyncio.timeout(timeout):
        while True:
            ev = await sub.get()
            if isinstance(ev, EventsDropped):
                continue
            seen.append(ev)
            if pred(ev):
                return seen


async def test_relayed_handshake_messages_stats_and_events() -> None:
    async with trio() as (_relay, a, b):
        changes_a, changes_b = a.connection_changes(), b.connection_changes(a.peer_id)
        await relayed_session(a, b)
        for x, y in ((a, b), (b, a)):
            (conn,) = x.host.connections(y.peer_id)
            assert conn.transport_name == "circuit"
            assert x.connection_type(y.peer_id) == "relayed"
            stats = x.peer_statistics(y.peer_id)
            assert stats is not None and stats.connection_type == "relayed"
        await b.send(a.peer_id, "chat", b"hello through the relay")
        await a.send(b.peer_id, "chat", b"and back")
        assert (await a.messages().get()).data == b"hello through the relay"
        assert (await b.messages().get()).data == b"and back"
        for sub, peer in ((changes_a, b.peer_id), (changes_b, a.peer_id)):
            (ev,) = await changes_until(sub, lambda e: isinstance(e, PeerConnectionChanged))
            assert isinstance(ev, PeerConnectionChanged)
            assert (ev.peer_id, ev.connection_type, ev.previous) == (peer, "relayed", None)
            assert ev.address is not None and ev.address.is_relayed


async def test_streams_move_to_a_direct_connection_without_loss_or_reordering() -> None:
    async with trio(circuit_data=4 << 20, circuit_duration=0) as (_relay, a, b):
        await relayed_session(a, b)
        changes_a, changes_b = a.connection_changes(), b.connection_changes()
        events_a, events_b = a.subscribe_events(), b.subscribe_events()
        n = 600
        sending = asyncio.Event()

        async def sender(src: Node, dst: Node, tag: bytes) -> None:
            for i in range(n):
                await src.send(dst.peer_id, "chat", b"%s:%d" % (tag, i))
                if i == 100:
                    sending.set()
                await asyncio.sleep(0.001)

        async def receive(node: Node) -> list[bytes]:
            return [(await node.messages().get()).data for _ in range(n)]

        senders = [
            asyncio.ensure_future(sender(b, a, b"b")),
            asyncio.ensure_future(sender(a, b, b"a")),
        ]
        receivers = [asyncio.ensure_future(receive(a)), asyncio.ensure_future(receive(b))]
        await sending.wait()
        # A direct connection appears while messages flow both ways (what a hole punch or
        # the direct dial before it does).
        direct = [x.without_p2p() for x in a.addrs if not x.is_relayed]
        conn = await b.host.connect(None, direct)
        assert conn.transport_name == "tcp" and conn.remote_peer == a.peer_id
        await asyncio.gather(*senders)
        got_a, got_b = await asyncio.gather(*receivers)
        assert got_a == [b"b:%d" % i for i in range(n)]  # nothing lost, nothing reordered
        assert got_b == [b"a:%d" % i for i in range(n)]
        # The relayed connection is closed (the NAT layer does it once its streams ended)
        # and that is not a disconnect: both peers stay Established on the direct one.
        for x, y in ((a, b), (b, a)):
            await wait_for(functools.partial(only_direct, x, y), what="only the direct conn")
            assert x.connection_state(y.peer_id) is S.ESTABLISHED
            assert x.input_errors["streams_migrated"] >= 1
        for events in (events_a, events_b):
            assert len(events) == 0, [events.get_nowait() for _ in range(len(events))]
        # Kinds: relayed -> direct (a plain direct connection, no hole punch reported).
        for sub in (changes_a, changes_b):
            (ev,) = await changes_until(sub, lambda e: isinstance(e, PeerConnectionChanged))
            assert isinstance(ev, PeerConnectionChanged)
            assert (ev.previous, ev.connection_type) == ("relayed", "direct")
        stats = a.peer_statistics(b.peer_id)
        assert stats is not None and stats.connection_type == "direct"
        # New messages use the direct connection.
        await a.send(b.peer_id, "chat", b"direct")
        assert (await b.messages().get()).data == b"direct"
        assert a._channels is not None and a._channels.stream_count(b.peer_id, "chat") == 1


async def test_relay_data_budget_refuses_what_does_not_fit_and_loses_nothing() -> None:
    budget = 48 * 1024
    async with trio(circuit_data=budget, circuit_duration=0) as (_relay, a, b):
        await relayed_session(a, b)
        # Too large for what the relay still forwards: refused before anything is written.
        with pytest.raises(ResourceLimitExceeded) as info:
            await b.send(a.peer_id, "chat", bytes(budget))
        assert info.value.limit == "relay_circuit_data" and info.value.remote
        assert info.value.peer_id == a.peer_id and info.value.stream == "chat"
        # The connection is intact; fill the budget with 1 KiB messages on two streams (they
        # share the connection's budget) until refused.
        accepted = 0

        async def fill(name: str) -> None:
            nonlocal accepted
            for i in range(budget // 1024 + 1):
                await b.send(a.peer_id, name, name.encode() + i.to_bytes(4, "big") * 255)
                accepted += 1

        results = await asyncio.gather(fill("chat"), fill("news"), return_exceptions=True)
        assert all(isinstance(r, ResourceLimitExceeded) for r in results), results
        assert accepted > budget // 1024 // 2
        # Every accepted message arrives, in order per stream: none was cut off by the relay.
        got = [await a.messages().get() for _ in range(accepted)]
        for name in ("chat", "news"):
            mine = [m.data for m in got if m.stream_name == name]
            assert mine == [name.encode() + i.to_bytes(4, "big") * 255 for i in range(len(mine))]
        assert [c.transport_name for c in b.host.connections(a.peer_id)] == ["circuit"]
        assert b.connection_state(a.peer_id) is S.ESTABLISHED
        # The other direction has its own budget.
        await a.send(b.peer_id, "chat", b"x" * 10_000)
        assert len((await b.messages().get()).data) == 10_000


async def test_relay_duration_limit_tells_the_application() -> None:
    async with trio(circuit_data=0, circuit_duration=3) as (_relay, a, b):
        changes_a, changes_b = a.connection_changes(), b.connection_changes()
        events_b = b.events_for_peer(a.peer_id)
        await relayed_session(a, b)
        await b.send(a.peer_id, "chat", b"early")
        assert (await a.messages().get()).data == b"early"
        # Within the last second before the relay's deadline messages are refused...
        assert b._traversal is not None
        (conn,) = b.host.connections(a.peer_id)
        circuit = b._traversal.circuit.circuit_for(conn)
        assert circuit is not None
        await asyncio.sleep(max(0.0, circuit.opened_at + 2.2 - time.monotonic()))
        with pytest.raises(ResourceLimitExceeded) as info:
            await b.send(a.peer_id, "chat", b"late")
        assert info.value.limit == "relay_circuit_duration"
        # ...and when it passes both ends are told, and the peer is disconnected because of it.
        for sub, peer in ((changes_a, b.peer_id), (changes_b, a.peer_id)):
            seen = await changes_until(sub, lambda e: isinstance(e, RelayLimitReached))
            ev = seen[-1]
            assert isinstance(ev, RelayLimitReached)
            assert ev.peer_id == peer and ev.reason == "duration" and ev.duration_limit == 3
        seen_states = await wait_state(events_b, a.peer_id, S.DISCONNECTED)
        error = seen_states[-1].error
        assert isinstance(error, ConnectionLost)
        assert isinstance(error.__cause__, ResourceLimitExceeded)
        assert error.__cause__.limit == "relay_circuit_duration"
        assert b.connection_type(a.peer_id) is None


async def test_without_nat_traversal_every_peer_is_direct_and_no_changes_are_published() -> None:
    from tests.integration.node_harness import establish_pair, running_nodes

    async with running_nodes(2, first_seed=30) as (a, b):
        assert not a.config.nat_enabled and a.nat is None
        changes = a.connection_changes()
        await establish_pair(a, b)
        assert a.connection_type(b.peer_id) == "direct"
        stats = a.peer_statistics(b.peer_id)
        assert stats is not None and stats.connection_type == "direct"
        assert len(changes) == 0


async def test_nat_nodes_stop_cleanly_and_a_failed_start_leaves_nothing() -> None:
    before = set(asyncio.all_tasks())
    async with trio() as (_relay, a, b):
        await relayed_session(a, b)
        assert a.nat is not None and a.nat.relay_addrs
    await asyncio.sleep(0)
    assert set(asyncio.all_tasks()) <= before
    # A listen address that cannot be bound: start fails, transports and tasks are released.
    bad = Node(glueberry.Config(key(24), None, ["/ip4/203.0.113.1/tcp/0"], enable_autonat=True))
    with pytest.raises(glueberry.ConnectError):
        await bad.start()
    assert not bad.is_running and bad.nat is None
    await asyncio.sleep(0)
    assert set(asyncio.all_tasks()) <= before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gc.collect()
