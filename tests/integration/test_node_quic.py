"""The Glueberry node over QUIC (``/quic-v1``): nothing in the node knows the transport.

``Config.listen_addrs`` with a ``/quic-v1`` address reaches the host, whose default
transports include QUIC; the address book's addresses decide how a peer is dialed. The
handshake, encrypted named streams (both directions, several names, 1 MiB messages),
ordering and disconnect detection then behave as over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import glueberry
from glueberry import ConnectionState, Node
from tests.integration.node_harness import (
    establish_pair,
    key,
    wait_for,
    wait_state,
)

S = ConnectionState
QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"
TCP = "/ip4/127.0.0.1/tcp/0"


@contextlib.asynccontextmanager
async def nodes(*listen: Sequence[str], **kw: Any) -> AsyncIterator[list[Node]]:
    """One started node per ``listen`` list; all stopped on exit."""
    made = [
        Node(glueberry.Config(key(20 + i), None, list(addrs), **kw), rng=lambda: 0.5)
        for i, addrs in enumerate(listen)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for node in made:
            await stack.enter_async_context(node)
        yield made


def transports(node: Node) -> list[str]:
    return [c.transport_name for c in node.host.connections()]


async def test_listen_addrs_with_quic_reach_the_host() -> None:
    async with nodes([TCP, QUIC]) as (a,):
        kinds = [addr.transport_kind() for addr in a.addrs]
        assert kinds == ["tcp", "quic-v1"]
        assert [addr.transport_kind() for addr in a.host.listen_addrs] == kinds


async def test_handshake_and_messages_over_quic_only() -> None:
    async with nodes([QUIC], [QUIC], max_message_size=2 << 20) as (a, b):
        assert all(addr.transport_kind() == "quic-v1" for addr in b.addrs)
        await establish_pair(a, b, ["alpha", "beta"])
        assert transports(a) == ["quic-v1"] and transports(b) == ["quic-v1"]
        big = bytes(range(256)) * 4096  # 1 MiB
        await a.send(b.peer_id, "alpha", b"over quic")
        await a.send(b.peer_id, "beta", big)
        await b.send(a.peer_id, "alpha", big)
        await b.send(a.peer_id, "beta", b"")
        got_b = {(m.stream_name, m.data) for m in [await b.messages().get() for _ in range(2)]}
        assert got_b == {("alpha", b"over quic"), ("beta", big)}
        got_a = {(m.stream_name, m.data) for m in [await a.messages().get() for _ in range(2)]}
        assert got_a == {("alpha", big), ("beta", b"")}
        stats = b.peer_statistics(a.peer_id)
        assert stats is not None and stats.connected and not stats.is_outbound
        assert stats.stream_stats["beta"].bytes_received == len(big)


async def test_order_under_concurrent_senders_over_quic() -> None:
    async with nodes([QUIC], [QUIC]) as (a, b):
        await establish_pair(a, b)
        n = 500

        async def sender(tag: int) -> None:
            for i in range(n):
                await a.send(b.peer_id, "messages", b"%d:%d" % (tag, i))

        await asyncio.gather(*(sender(t) for t in range(4)))
        last = dict.fromkeys(range(4), -1)
        for _ in range(4 * n):
            m = await b.messages().get()
            tag, i = map(int, m.data.split(b":"))
            assert i == last[tag] + 1
            last[tag] = i


async def test_address_book_picks_quic_when_both_are_listened() -> None:
    async with nodes([TCP, QUIC], [TCP, QUIC]) as (a, b):
        quic_only = [addr for addr in b.addrs if addr.transport_kind() == "quic-v1"]
        a.add_peer(b.peer_id, quic_only)
        async with asyncio.timeout(15):
            await asyncio.gather(
                glueberry.handshake.establish(a, b.peer_id, ["messages"]),
                glueberry.handshake.establish(b, a.peer_id, ["messages"], connect=False),
            )
        assert transports(a) == ["quic-v1"]
        await a.send(b.peer_id, "messages", b"ping")
        assert (await b.messages().get()).data == b"ping"
        # identify told b both of a's addresses
        assert set(b.host.peerstore.addrs(a.peer_id)) >= set(a.addrs)


async def test_disconnect_over_quic_is_seen_by_the_remote() -> None:
    async with nodes([QUIC], [QUIC]) as (a, b):
        await establish_pair(a, b)
        eb = b.subscribe_events()
        await a.disconnect(b.peer_id)
        seen = await wait_state(eb, a.peer_id, S.DISCONNECTED)
        assert seen[-1].state is S.DISCONNECTED
        await wait_for(lambda: not b.host.connections(), what="b's connection to end")
        assert a.connection_state(b.peer_id) is S.DISCONNECTED
        # and the pair can start over, over QUIC again
        await establish_pair(a, b)
        await b.send(a.peer_id, "messages", b"again")
        assert (await a.messages().get()).data == b"again"
        assert transports(a) == ["quic-v1"]
