"""Public events, filters, subscriptions with visible overflow, and the broadcaster."""

from __future__ import annotations

import asyncio

import pytest

from glueberry.errors import Backpressure, NodeStateError, StreamClosed
from glueberry.events import (
    ConnectionEvent,
    EventBroadcaster,
    EventFilter,
    EventsDropped,
    EventSubscription,
    IncomingMessage,
)
from glueberry.peers.state import ConnectionState
from glueberry.wire.identity import PrivateKey

A = PrivateKey.from_seed(b"\x01" * 32).peer_id
B = PrivateKey.from_seed(b"\x02" * 32).peer_id
S = ConnectionState


def ev(peer: object = A, state: ConnectionState = S.CONNECTED, t: float = 0.0) -> ConnectionEvent:
    return ConnectionEvent(peer_id=peer, state=state, timestamp=t)  # type: ignore[arg-type]


def test_event_types() -> None:
    e = ev()
    assert not e.is_error()
    assert ConnectionEvent(
        peer_id=A, state=S.COOLDOWN, error=TimeoutError(), timestamp=1
    ).is_error()
    with pytest.raises(AttributeError):
        e.state = S.DISCONNECTED  # type: ignore[misc]
    msg = IncomingMessage(A, "chat", b"hi", 1.5)
    assert msg.stream_name == "chat" and msg.data == b"hi"
    match msg:
        case IncomingMessage(peer_id=p, data=d):
            assert p == A and d == b"hi"
    assert EventsDropped(count=3).count == 3


def test_filter() -> None:
    anything = EventFilter()
    assert anything.peer_ids is None and anything.states is None
    assert EventFilter(peer_ids=[], states=[]) == anything
    f = EventFilter(peer_ids=[A], states=[S.ESTABLISHED, S.DISCONNECTED])
    assert f(ev(A, S.ESTABLISHED))
    assert not f(ev(B, S.ESTABLISHED))
    assert not f(ev(A, S.CONNECTED))
    assert anything.matches(ev(B))
    assert EventFilter(states=[S.CONNECTED])(ev(B))


async def test_drop_oldest_delivers_marker_at_the_gap() -> None:
    dropped: list[int] = []
    sub: EventSubscription[int] = EventSubscription(3, on_drop=dropped.append)
    for i in range(5):
        assert sub.offer(i)
    assert len(sub) == 3 and sub.dropped == 2 and dropped == [1, 1]
    assert await sub.get() == EventsDropped(count=2)
    assert [sub.get_nowait(), sub.get_nowait()] == [2, 3]
    sub.offer(5)
    sub.offer(6)
    sub.offer(7)  # drops 4
    assert sub.get_nowait() == EventsDropped(count=1)
    assert [sub.get_nowait() for _ in range(3)] == [5, 6, 7]
    with pytest.raises(asyncio.QueueEmpty):
        sub.get_nowait()


async def test_iteration_ends_after_unsubscribe_and_drain() -> None:
    sub: EventSubscription[int] = EventSubscription(10)
    got: list[object] = []

    async def consume() -> None:
        async with sub:
            async for e in sub:
                got.append(e)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    sub.offer(1)
    sub.offer(2)
    await asyncio.sleep(0)
    sub.offer(3)
    sub.unsubscribe()
    sub.unsubscribe()
    await asyncio.wait_for(task, 1)
    assert got == [1, 2, 3]
    assert sub.closed and sub.offer(4)  # discarded
    with pytest.raises(StreamClosed):
        await sub.get()
    assert "closed=True" in repr(sub)


async def test_block_policy_waits_for_the_consumer() -> None:
    sub: EventSubscription[int] = EventSubscription(1, "block")
    await sub.put(1)
    assert not sub.offer(2) and sub.full
    putter = asyncio.create_task(sub.put(2))
    await asyncio.sleep(0)
    assert not putter.done()
    assert await sub.get() == 1
    await asyncio.wait_for(putter, 1)
    assert sub.get_nowait() == 2 and sub.dropped == 0
    # A blocked putter is released (its event discarded) when the subscription closes.
    await sub.put(3)
    putter = asyncio.create_task(sub.put(4))
    await asyncio.sleep(0)
    sub.unsubscribe()
    await asyncio.wait_for(putter, 1)


async def test_cancelled_waiters_do_not_lose_wakeups() -> None:
    sub: EventSubscription[int] = EventSubscription(5)
    g1 = asyncio.create_task(sub.get())
    g2 = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    sub.offer(1)
    g1.cancel()
    results = await asyncio.gather(g1, g2, return_exceptions=True)
    # g1 was woken but cancelled before it ran: it passed the wake-up on to g2.
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1] == 1


def test_bad_subscription_arguments() -> None:
    for cap in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            EventSubscription(cap)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        EventSubscription(1, "drop_newest")  # type: ignore[arg-type]


async def test_broadcaster_fans_out_with_filters() -> None:
    drops: list[int] = []
    bus: EventBroadcaster[ConnectionEvent] = EventBroadcaster(capacity=2, on_drop=drops.append)
    all_sub = bus.subscribe()
    a_only = bus.subscribe(EventFilter(peer_ids=[A]), capacity=10)
    assert bus.subscriber_count == 2
    for i in range(3):
        bus.publish_nowait(ev(A, t=i))
    bus.publish_nowait(ev(B, t=9))
    assert drops == [1, 1]
    assert all_sub.get_nowait() == EventsDropped(count=2)
    assert [all_sub.get_nowait().timestamp for _ in range(2)] == [2, 9]  # type: ignore[union-attr]
    assert len(a_only) == 3
    a_only.unsubscribe()
    assert bus.subscriber_count == 1
    bus.close()
    assert bus.closed and all_sub.closed
    with pytest.raises(NodeStateError):
        bus.subscribe()


async def test_broadcaster_block_policy() -> None:
    bus: EventBroadcaster[int] = EventBroadcaster(capacity=1, overflow="block")
    slow = bus.subscribe()
    lossy = bus.subscribe(overflow="drop_oldest")
    bus.publish_nowait(1)
    with pytest.raises(Backpressure):
        bus.publish_nowait(2)
    assert len(lossy) == 1 and lossy.get_nowait() == 1  # nobody got event 2
    pub = asyncio.create_task(bus.publish(2))
    await asyncio.sleep(0)
    assert not pub.done()
    assert await slow.get() == 1
    await asyncio.wait_for(pub, 1)
    assert slow.get_nowait() == 2 and lossy.get_nowait() == 2
