"""Helpers for Node tests on loopback TCP: configs, node groups, waiting on conditions/events."""

# ruff: noqa: ASYNC109 - test helpers take a plain deadline

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import glueberry
from glueberry import ConnectionEvent, ConnectionState, EventsDropped, Node
from glueberry.clock import Clock
from glueberry.events import EventSubscription

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
S = ConnectionState


def key(i: int) -> glueberry.PrivateKey:
    return glueberry.PrivateKey.from_seed(bytes([i + 1]) * 32)


def make_config(
    i: int, *, clock: Clock | None = None, book: Path | None = None, **kw: Any
) -> glueberry.Config:
    extra: dict[str, Any] = dict(kw)
    if clock is not None:
        extra["clock"] = clock
    return glueberry.Config(key(i), book, [LOOPBACK], **extra)


@contextlib.asynccontextmanager
async def running_nodes(
    n: int,
    *,
    clock: Clock | None = None,
    books: Path | None = None,
    first_seed: int = 0,
    auto_connect: bool = False,
    **kw: Any,
) -> AsyncIterator[list[Node]]:
    """``n`` started nodes with deterministic identities; all stopped on exit."""
    nodes = [
        Node(
            make_config(
                first_seed + i,
                clock=clock,
                book=None if books is None else books / f"book{first_seed + i}.json",
                **kw,
            ),
            auto_connect=auto_connect,
            rng=lambda: 0.5,
        )
        for i in range(n)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            await stack.enter_async_context(node)
        yield nodes


async def wait_for(
    pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``pred`` (real time) until true; fail with ``what`` on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def next_event(
    sub: EventSubscription[ConnectionEvent], timeout: float = 10.0
) -> ConnectionEvent:
    """The next real event of a subscription (drop markers skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            ev = await sub.get()
            if not isinstance(ev, EventsDropped):
                return ev


async def wait_state(
    sub: EventSubscription[ConnectionEvent],
    peer: glueberry.PeerId,
    state: ConnectionState,
    timeout: float = 10.0,
) -> list[ConnectionEvent]:
    """Consume events of ``sub`` until ``peer`` enters ``state``; return the events seen."""
    seen: list[ConnectionEvent] = []
    async with asyncio.timeout(timeout):
        while True:
            ev = await next_event(sub, timeout)
            if ev.peer_id == peer:
                seen.append(ev)
                if ev.state is state:
                    return seen


def states(events: Sequence[ConnectionEvent]) -> list[ConnectionState]:
    return [e.state for e in events]


async def establish_pair(a: Node, b: Node, streams: Sequence[str] = ("messages",)) -> None:
    """Connect ``a`` -> ``b`` and run the ready-made handshake on both sides."""
    a.add_peer(b.peer_id, b.addrs)
    async with asyncio.timeout(15):
        await asyncio.gather(
            glueberry.handshake.establish(a, b.peer_id, streams),
            glueberry.handshake.establish(b, a.peer_id, streams, connect=False),
        )
    assert a.connection_state(b.peer_id) is S.ESTABLISHED
    assert b.connection_state(a.peer_id) is S.ESTABLISHED
