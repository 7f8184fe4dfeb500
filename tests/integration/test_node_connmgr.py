"""The node's connection manager (Config.conn_mgr_*): peers in the handshake or Established
are protected and survive a trim; other connections are closed, and a trimmed session is
reported like any other lost connection."""

from __future__ import annotations

import asyncio
import contextlib

import glueberry
import glueberry.testing
from glueberry.net.host import Host
from glueberry.node import _CONNMGR_TAG
from glueberry.wire.identity import PrivateKey

from .node_harness import S, establish_pair, running_nodes, wait_for, wait_state


async def test_established_and_handshaking_peers_survive_trimming() -> None:
    clock = glueberry.testing.FakeClock()
    async with (
        running_nodes(
            4,
            clock=clock,
            conn_mgr_high_watermark=3,
            conn_mgr_low_watermark=0,
            handshake_timeout=600.0,
        ) as (a, b, c, d),
        contextlib.AsyncExitStack() as stack,
    ):
        await establish_pair(b, a)  # b dials a; Established on both sides
        for n in (c, d):  # connected, handshake begun (not in their address books)
            await n.connect(a.peer_id, a.addrs)
            await n.send(a.peer_id, glueberry.HANDSHAKE_STREAM, b"hello")
            pid = n.peer_id
            await wait_for(lambda: a.connection_state(pid) is S.CONNECTED)  # noqa: B023
        for p in (b, c, d):
            assert a.host.is_protected(p.peer_id, _CONNMGR_TAG)
        # plain libp2p hosts that never start the Glueberry handshake
        plain = [
            await stack.enter_async_context(Host(PrivateKey.from_seed(bytes([60 + i]) * 32)))
            for i in range(3)
        ]
        for h in plain:
            await h.connect(a.peer_id, a.addrs)
            await clock.advance(0.01)
        await wait_for(lambda: len(a.host.connections()) == 6, what="six connections")
        assert a.host.conn_manager.trims >= 1  # over the high watermark, all young
        assert a.host.conn_manager.trimmed == 0
        # the application withdraws d's protection: it is trimmed like the plain hosts
        a.host.unprotect(d.peer_id, _CONNMGR_TAG)
        events = a.events_for_peer(d.peer_id)
        # Re-checks every 10 s (silence period) from the first trim at t=0: at t=60 d and
        # the first plain host are past the 60 s grace period, at t=70 all are.
        await clock.advance(71.0)
        await wait_for(
            lambda: {x.remote_peer for x in a.host.connections()} == {b.peer_id, c.peer_id},
            what="the trim",
        )
        assert a.host.conn_manager.trimmed == 4
        assert a.connection_state(b.peer_id) is S.ESTABLISHED
        assert a.connection_state(c.peer_id) is S.CONNECTED
        (lost,) = await wait_state(events, d.peer_id, S.DISCONNECTED)
        assert isinstance(lost.error, glueberry.ConnectionLost)
        assert "connection manager" in str(lost.error)
        assert not a.host.is_protected(d.peer_id)
        await wait_for(lambda: all(not h.connections() for h in plain), what="plain closed")
        # the established session still carries messages both ways
        await b.send(a.peer_id, "messages", b"still here")
        msg = await asyncio.wait_for(_next_not_handshake(a), 10)
        assert (msg.peer_id, msg.data) == (b.peer_id, b"still here")
        await a.send(b.peer_id, "messages", b"yes")
        assert (await asyncio.wait_for(b.messages().get(), 10)).data == b"yes"
        # leaving Established removes the protection
        await b.disconnect(a.peer_id)
        await wait_for(lambda: a.connection_state(b.peer_id) is S.DISCONNECTED)
        assert not a.host.is_protected(b.peer_id)


async def _next_not_handshake(node: glueberry.Node) -> glueberry.IncomingMessage:
    while True:
        msg = await node.messages().get()
        if msg.stream_name != glueberry.HANDSHAKE_STREAM:
            return msg
