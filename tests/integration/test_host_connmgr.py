"""The host's connection manager on loopback TCP: automatic trims, protections, tags, the
re-check timer, explicit trims; trimmed connections are reported like any other close and
nothing is left behind."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from glueberry.net.connmgr import ConnManagerConfig
from glueberry.net.host import Host, HostConfig
from glueberry.testing import FakeClock
from glueberry.transport.base import MuxedConnection
from glueberry.wire.identity import PeerId, PrivateKey
from tests.resources import nothing_left_behind  # noqa: F401 (an autouse fixture)

from .node_harness import wait_for


def make_host(seed: int, listen: bool = False, **config: Any) -> Host:
    return Host(
        PrivateKey.from_seed(bytes([seed]) * 32),
        listen_addrs=["/ip4/127.0.0.1/tcp/0"] if listen else [],
        config=HostConfig(**config),
    )


class Hub:
    """A listening host with a connection manager, and the spokes that dial it."""

    def __init__(self, hub: Host, spokes: list[Host]) -> None:
        self.host = hub
        self.spokes = spokes
        self.up: list[PeerId] = []
        self.down: list[tuple[PeerId, bool]] = []  # (peer, was_trimmed)
        hub.add_connection_listener(self._up, self._down)

    def _up(self, conn: MuxedConnection) -> None:
        self.up.append(conn.remote_peer)

    def _down(self, conn: MuxedConnection) -> None:
        self.down.append((conn.remote_peer, self.host.was_trimmed(conn)))

    async def connect(self, i: int) -> None:
        """Spoke ``i`` dials the hub; returns once the hub has registered it."""
        n = len(self.up)
        await self.spokes[i].connect(self.host.peer_id, self.host.addrs)
        await wait_for(lambda: len(self.up) > n, what="hub registers the spoke")

    def peers(self) -> set[int]:
        """Spokes the hub is connected to now (by index)."""
        live = {c.remote_peer for c in self.host.connections()}
        return {i for i, s in enumerate(self.spokes) if s.peer_id in live}

    def trimmed(self) -> set[int]:
        ids = {p for p, trimmed in self.down if trimmed}
        return {i for i, s in enumerate(self.spokes) if s.peer_id in ids}


@contextlib.asynccontextmanager
async def hub(n: int = 6, clock: FakeClock | None = None, **cm: Any) -> AsyncIterator[Hub]:
    cfg = ConnManagerConfig(**{"high_watermark": 4, "low_watermark": 2, **cm})
    async with contextlib.AsyncExitStack() as stack:
        h = await stack.enter_async_context(
            make_host(1, listen=True, conn_manager=cfg, clock=clock)
        )
        spokes = [await stack.enter_async_context(make_host(10 + i)) for i in range(n)]
        yield Hub(h, spokes)


async def test_trims_to_the_low_watermark_when_above_the_high_one() -> None:
    async with hub(grace_period=0.0) as h:
        for i in range(4):
            await h.connect(i)
        assert h.peers() == {0, 1, 2, 3} and h.host.conn_manager.trims == 0
        await h.connect(4)  # 5 > 4: trim to 2, newest first
        await wait_for(lambda: len(h.down) == 3, what="three trimmed connections closed")
        assert h.peers() == {0, 1}
        assert h.trimmed() == {2, 3, 4}
        assert (h.host.conn_manager.trims, h.host.conn_manager.trimmed) == (1, 3)
        # the dialers see their connections end too (graceful close, GoAway)
        await wait_for(
            lambda: all(not h.spokes[i].connections() for i in (2, 3, 4)),
            what="spokes see the close",
        )
        await h.connect(5)  # 3 connections: under the high watermark, nothing happens
        assert h.peers() == {0, 1, 5} and h.host.conn_manager.trims == 1
        # an explicit trim goes to the low watermark whatever the high one says
        assert await h.host.trim_connections() == 1
        assert h.peers() == {0, 1} and h.trimmed() == {2, 3, 4, 5}
        assert await h.host.trim_connections() == 0
        assert (h.host.conn_manager.trims, h.host.conn_manager.trimmed) == (3, 4)


async def test_protected_and_valuable_peers_stay() -> None:
    async with hub(grace_period=0.0) as h:
        h.host.protect(h.spokes[0].peer_id, "app")
        h.host.tag_peer(h.spokes[4].peer_id, "useful", 100)
        assert h.host.is_protected(h.spokes[0].peer_id, "app")
        for i in range(5):
            await h.connect(i)
        await wait_for(lambda: len(h.down) == 2, what="two trimmed connections closed")
        # closable: 1..4 (0 is protected); keep 2: the value-0 peers go, newest first
        assert h.trimmed() == {2, 3}
        assert h.peers() == {0, 1, 4}
        # without its protection the peer is trimmed like the others
        assert h.host.unprotect(h.spokes[0].peer_id, "app") is False
        assert await h.host.trim_connections() == 1
        # 0 and 1 now both have value 0 and no streams: 1, connected later, goes first
        assert h.peers() == {0, 4}


async def test_young_connections_are_trimmed_later_by_the_timer() -> None:
    """Above the high watermark but everything is in its grace period: nothing is closed
    at once; the host looks again after each silence period (its clock), without any new
    connection, and trims once the grace period is over."""
    clock = FakeClock()
    async with hub(grace_period=1.0, silence_period=0.4, clock=clock) as h:
        for i in range(6):
            await h.connect(i)
            await clock.advance(0.01)  # distinct connection times
        assert len(h.host.connections()) == 6
        assert h.host.conn_manager.trims == 1  # at the 5th (t=0.04): nothing closable yet
        assert h.host.conn_manager.next_trim_at() == pytest.approx(0.44)
        await clock.advance(0.44)  # re-check at 0.44: all still young; next at 0.84
        assert len(h.host.connections()) == 6 and h.host.conn_manager.trims == 2
        await clock.advance(0.5)  # 0.84: young; next at 1.24
        assert len(h.host.connections()) == 6 and h.host.conn_manager.trims == 3
        await clock.advance(0.5)  # 1.24: past the grace period, trim to 2, newest first
        await wait_for(lambda: len(h.down) == 4, what="four trimmed connections closed")
        assert h.host.conn_manager.trimmed == 4 and h.host.conn_manager.trims == 4
        assert h.trimmed() == {2, 3, 4, 5} and h.peers() == {0, 1}
        assert h.host._trim_timer is None  # under the high watermark: no more checks


async def test_no_manager_no_trim_and_close_cancels_the_timer() -> None:
    async with make_host(1, listen=True) as plain, make_host(2) as a, make_host(3) as b:
        for s in (a, b):
            await s.connect(plain.peer_id, plain.addrs)
        await wait_for(lambda: len(plain.connections()) == 2, what="both registered")
        assert await plain.trim_connections() == 0
        assert len(plain.connections()) == 2 and plain.conn_manager.trims == 0
    # a host closed while a re-check is scheduled leaves no timer behind
    async with hub(grace_period=30.0, silence_period=30.0, clock=FakeClock()) as h:
        for i in range(5):
            await h.connect(i)
        assert h.host._trim_timer is not None
    assert h.host._trim_timer is None
