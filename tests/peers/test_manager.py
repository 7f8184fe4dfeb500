"""The connection manager driven by real connections on loopback TCP, time by a FakeClock:
handshake timeout, cooldown, backoff, blacklisting in every state, re-handshakes, metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

import glueberry
import glueberry.testing
from glueberry import ConnectionState, NopMetrics
from tests.integration.node_harness import (
    establish_pair,
    key,
    next_event,
    running_nodes,
    states,
    wait_for,
    wait_state,
)

S = ConnectionState


class RecordingMetrics(NopMetrics):
    """Counts the hooks the tests look at."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def _rec(self, name: str, *args: object) -> None:
        self.calls.append((name, args))

    def names(self, name: str) -> list[tuple[object, ...]]:
        return [a for n, a in self.calls if n == name]

    def connection_opened(self, direction: str) -> None:
        self._rec("connection_opened", direction)

    def connection_closed(self, direction: str) -> None:
        self._rec("connection_closed", direction)

    def connection_attempt(self, result: str) -> None:
        self._rec("connection_attempt", result)

    def handshake_duration(self, seconds: float) -> None:
        self._rec("handshake_duration", seconds)

    def handshake_result(self, result: str) -> None:
        self._rec("handshake_result", result)

    def reconnect_attempt(self, result: str) -> None:
        self._rec("reconnect_attempt", result)

    def peers_in_state(self, state: str, count: int) -> None:
        self._rec("peers_in_state", state, count)

    def event_emitted(self, state: str) -> None:
        self._rec("event_emitted", state)

    def message_sent(self, stream: str, nbytes: int, count: int = 1) -> None:
        self._rec("message_sent", stream, nbytes, count)

    def message_received(self, stream: str, nbytes: int, count: int = 1) -> None:
        self._rec("message_received", stream, nbytes, count)

    def stream_opened(self, stream: str) -> None:
        self._rec("stream_opened", stream)

    def key_derivation(self, cached: bool) -> None:
        self._rec("key_derivation", cached)


@contextlib.asynccontextmanager
async def silent_listener() -> AsyncIterator[str]:
    """A TCP port that accepts and then never answers (a dial hangs in the handshake)."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"/ip4/127.0.0.1/tcp/{port}"
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


async def test_handshake_timeout_cooldown_then_reconnect() -> None:
    clock = glueberry.testing.FakeClock()
    async with running_nodes(
        2, clock=clock, handshake_timeout=30.0, failed_handshake_cooldown=60.0
    ) as (a, b):
        ea, eb = a.subscribe_events(), b.subscribe_events()
        a.add_peer(b.peer_id, b.addrs)
        await a.connect(b.peer_id)  # a's deadline: t = 30
        await clock.advance(1.0)
        await a.send(b.peer_id, "handshake", b"hello")  # b's deadline: t = 31
        await wait_state(eb, a.peer_id, S.CONNECTED)
        await clock.advance(28.9)
        assert a.connection_state(b.peer_id) is S.CONNECTED
        await clock.advance(0.2)
        seen = await wait_state(ea, b.peer_id, S.COOLDOWN)
        assert isinstance(seen[-1].error, glueberry.HandshakeTimeout)
        assert seen[-1].error.code is glueberry.ErrorCode.HANDSHAKE_TIMEOUT
        # Entering cooldown closes the connections: b sees the loss before its own deadline.
        lost = (await wait_state(eb, a.peer_id, S.DISCONNECTED))[-1]
        assert isinstance(lost.error, glueberry.ConnectionLost)
        await wait_for(lambda: not a.host.connections(b.peer_id), what="connections closed")
        await asyncio.sleep(0.05)
        assert a.connection_state(b.peer_id) is S.COOLDOWN  # the close changed nothing
        with pytest.raises(glueberry.ConnectError, match="cooldown"):
            await a.connect(b.peer_id)
        # After the cooldown: Disconnected; the dialer (b is in its book) reconnects.
        await clock.advance(60.0)
        assert states(await wait_state(ea, b.peer_id, S.RECONNECTING)) == [
            S.DISCONNECTED,
            S.RECONNECTING,
        ]
        await clock.advance(1.0)
        await wait_state(ea, b.peer_id, S.CONNECTED)
        assert b.connection_state(a.peer_id) is S.DISCONNECTED  # nothing sent yet
        await clock.advance(25.0)
        assert len(eb) == 0  # the listener never dials
        stats = a.peer_statistics(b.peer_id)
        assert stats is not None and stats.failure_count == 1 and stats.connection_count == 2


async def test_listener_times_out_too() -> None:
    clock = glueberry.testing.FakeClock()
    async with running_nodes(2, clock=clock, handshake_timeout=10.0) as (a, b):
        ea, eb = a.subscribe_events(), b.subscribe_events()
        a.add_peer(b.peer_id, b.addrs)
        await a.connect(b.peer_id)
        await a.prepare_streams(b.peer_id, b.public_key, ["m"])
        await a.send(b.peer_id, "handshake", b"hello")
        await wait_state(eb, a.peer_id, S.CONNECTED)
        await a.finalize_handshake(b.peer_id)  # only a finishes
        await clock.advance(10.0)
        ev = (await wait_state(eb, a.peer_id, S.COOLDOWN))[-1]
        assert isinstance(ev.error, glueberry.HandshakeTimeout)
        assert (await wait_state(ea, b.peer_id, S.DISCONNECTED))[-1].is_error()


async def test_finalize_cancels_the_deadline() -> None:
    clock = glueberry.testing.FakeClock()
    async with running_nodes(2, clock=clock, handshake_timeout=5.0) as (a, b):
        await establish_pair(a, b)
        await clock.advance(3600.0)
        assert a.connection_state(b.peer_id) is S.ESTABLISHED
        assert b.connection_state(a.peer_id) is S.ESTABLISHED


async def test_backoff_schedule_on_the_clock() -> None:
    clock = glueberry.testing.FakeClock()
    metrics = RecordingMetrics()
    async with running_nodes(
        1,
        clock=clock,
        metrics=metrics,
        reconnect_initial_backoff=1.0,
        reconnect_max_backoff=4.0,
        reconnect_max_attempts=None,
    ) as (a,):
        ghost = key(7).peer_id
        a.add_peer(ghost, ["/ip4/127.0.0.1/tcp/9"])
        with pytest.raises(glueberry.ConnectError):
            await a.connect(ghost)
        assert a.connection_state(ghost) is S.RECONNECTING

        async def after(seconds: float) -> int:
            await clock.advance(seconds)
            await asyncio.sleep(0.05)  # the dial to a closed port fails at once
            return len(metrics.names("reconnect_attempt"))

        assert await after(0.99) == 0
        assert await after(0.02) == 1  # t = 1 (jitter is 0 with rng 0.5)
        assert await after(1.9) == 1
        assert await after(0.2) == 2  # t = 3 (+2)
        assert await after(4.0) == 3  # t = 7 (+4)
        assert await after(4.0) == 4  # t = 11 (capped at 4)
        assert a.connection_state(ghost) is S.RECONNECTING  # unlimited attempts


async def test_cancel_reconnection_stops_a_dial_in_flight() -> None:
    clock = glueberry.testing.FakeClock()
    async with silent_listener() as hang, running_nodes(1, clock=clock) as (a,):
        ghost = key(7).peer_id
        a.add_peer(ghost, ["/ip4/127.0.0.1/tcp/9"])
        ea = a.subscribe_events()
        with pytest.raises(glueberry.ConnectError):
            await a.connect(ghost)
        await wait_state(ea, ghost, S.RECONNECTING)
        a.add_peer(ghost, [hang])  # the next attempt hangs in the security handshake
        await clock.advance(1.0)
        await wait_for(lambda: bool(a.host._dials), what="dial in flight")
        assert a.cancel_reconnection(ghost)
        assert (await next_event(ea)).state is S.DISCONNECTED
        await wait_for(lambda: not a.host._dials, what="dial cancelled")


async def test_connect_cancelled_and_concurrent_connects() -> None:
    async with silent_listener() as hang, running_nodes(2) as (a, b):
        ghost = key(7).peer_id
        a.add_peer(ghost, [hang])
        ea = a.subscribe_events()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await a.connect(ghost)
        assert states([await next_event(ea) for _ in range(2)]) == [S.CONNECTING, S.DISCONNECTED]
        assert a.connection_state(ghost) is S.DISCONNECTED  # no reconnection after a cancel
        # Concurrent connects to one peer share one dial.
        a.add_peer(b.peer_id, b.addrs)
        await asyncio.gather(*(a.connect(b.peer_id) for _ in range(5)))
        assert len(a.host.connections(b.peer_id)) == 1
        assert states(await wait_state(ea, b.peer_id, S.CONNECTED)) == [S.CONNECTING, S.CONNECTED]


@pytest.mark.parametrize("state", ["established", "connected", "reconnecting", "cooldown"])
async def test_blacklist_closes_in_every_state(state: str) -> None:
    clock = glueberry.testing.FakeClock()
    async with running_nodes(2, clock=clock, handshake_timeout=5.0) as (a, b):
        ea = a.subscribe_events()
        a.add_peer(b.peer_id, b.addrs)
        if state == "established":
            await establish_pair(a, b)
        elif state == "connected":
            await a.connect(b.peer_id)
        elif state == "cooldown":
            await a.connect(b.peer_id)
            await clock.advance(5.0)
            await wait_state(ea, b.peer_id, S.COOLDOWN)
        else:
            await establish_pair(a, b)
            await b.disconnect(a.peer_id)
            await wait_state(ea, b.peer_id, S.RECONNECTING)
        want = {
            "established": S.ESTABLISHED,
            "connected": S.CONNECTED,
            "reconnecting": S.RECONNECTING,
            "cooldown": S.COOLDOWN,
        }[state]
        assert a.connection_state(b.peer_id) is want
        while len(ea):
            ea.get_nowait()
        a.blacklist_peer(b.peer_id)
        ev = await next_event(ea)
        assert ev.state is S.DISCONNECTED
        assert isinstance(ev.error, glueberry.PeerBlacklisted)
        await wait_for(lambda: not a.host.connections(b.peer_id), what="connections closed")
        # Nothing comes back: no reconnection, and the gater refuses both directions.
        await clock.advance(600.0)
        assert a.connection_state(b.peer_id) is S.DISCONNECTED
        with pytest.raises(glueberry.PeerBlacklisted):
            await a.connect(b.peer_id)
        b.add_peer(a.peer_id, a.addrs)
        with contextlib.suppress(glueberry.GlueberryError):
            # a refuses right after the security handshake; b may or may not have finished
            # its side by then, but the connection never survives.
            await b.connect(a.peer_id)
        await wait_for(lambda: not b.host.connections(a.peer_id), what="refused connection")
        assert not a.host.connections(b.peer_id)
        assert a.connection_state(b.peer_id) is S.DISCONNECTED
        a.unblacklist_peer(b.peer_id)
        await b.disconnect(a.peer_id)
        await b.connect(a.peer_id)


async def test_rehandshake_from_established_and_inbound_during_reconnect() -> None:
    clock = glueberry.testing.FakeClock()
    async with running_nodes(2, clock=clock) as (a, b):
        await establish_pair(a, b)
        ea = a.subscribe_events()
        # The remote starts a new handshake (e.g. a Go peer after it restarted its session):
        # Established -> Connected, a new deadline runs (Go ignores this, §3.9.3).
        await b.send(a.peer_id, "handshake", b"again")
        assert states([await next_event(ea)]) == [S.CONNECTED]
        assert (await a.messages().get()).data == b"again"
        # While a waits to reconnect, b dials in and handshakes: the loop stops.
        await a.disconnect(b.peer_id)
        await next_event(ea)
        await wait_for(lambda: b.connection_state(a.peer_id) is S.DISCONNECTED)
        a._manager._start_reconnect(b.peer_id)  # type: ignore[union-attr]
        assert (await next_event(ea)).state is S.RECONNECTING
        b.add_peer(a.peer_id, a.addrs)
        async with glueberry.handshake.auto(a, ["m"]):
            await glueberry.handshake.establish(b, a.peer_id, ["m"], timeout=10)
            # b is done once a's Complete arrived; a finishes on b's Complete, maybe later.
            await wait_for(lambda: a.connection_state(b.peer_id) is S.ESTABLISHED)
        assert states([await next_event(ea) for _ in range(2)]) == [S.CONNECTED, S.ESTABLISHED]
        assert not a._manager.is_reconnecting(b.peer_id)  # type: ignore[union-attr]
        assert not a.is_outbound(b.peer_id)


async def test_metrics_hooks_fire() -> None:
    ma, mb = RecordingMetrics(), RecordingMetrics()
    async with (
        running_nodes(1, metrics=ma) as (a,),
        running_nodes(1, metrics=mb, first_seed=1) as (b,),
    ):
        await establish_pair(a, b)
        await a.send(b.peer_id, "messages", b"12345")
        await b.messages().get()
        assert ("outbound",) in ma.names("connection_opened")
        assert ("inbound",) in mb.names("connection_opened")
        assert ma.names("connection_attempt") == [("success",)]
        assert ma.names("handshake_result") == [("success",)]
        assert len(ma.names("handshake_duration")) == 1
        assert ("established",) in ma.names("event_emitted")
        assert ("messages", 5, 1) in ma.names("message_sent")
        assert ("messages", 5, 1) in mb.names("message_received")
        assert ("established", 1) in ma.names("peers_in_state")
        assert ("messages",) in ma.names("stream_opened")
        assert ma.names("key_derivation") == [(False,)]


async def test_stop_with_timers_and_loops_pending_leaves_nothing() -> None:
    clock = glueberry.testing.FakeClock()
    before = set(asyncio.all_tasks())
    async with running_nodes(3, clock=clock) as (a, b, c):
        a.add_peer(key(9).peer_id, ["/ip4/127.0.0.1/tcp/9"])
        with pytest.raises(glueberry.ConnectError):
            await a.connect(key(9).peer_id)  # a reconnection loop waits
        a.add_peer(b.peer_id, b.addrs)
        await a.connect(b.peer_id)  # a handshake deadline is armed
        await establish_pair(a, c)
    await asyncio.sleep(0)
    assert set(asyncio.all_tasks()) <= before
    assert clock.pending <= 3  # only cancelled-on-fire timers may remain, never live tasks
