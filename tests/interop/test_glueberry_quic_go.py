"""Glueberry (Python) <-> the Glueberry-Go v1 wire peer (interop/go/gbpeer) over QUIC.

The same application traffic as ``test_glueberry_go.py`` (TCP), with both sides on
``/quic-v1`` (``gbpeer … --transport quic``): the Go integration test's handshake, the
tagged exchange (queries up to 1 MiB both ways, on streams either side opens, the
listener's verdict) and the echo of 0 … 1 MiB messages on two streams. The Python node
only gets a ``/quic-v1`` listen address or a peer address: nothing else changes.

A missing gbpeer binary is a failure, not a skip (``peer_binary`` in conftest).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest

import glueberry
from glueberry import ConnectionState, Multiaddr, Node
from tests.interop.conftest import DialerFactory, ListenerFactory
from tests.interop.test_glueberry_go import (
    DIALER_QUERIES,
    ECHO_SIZES,
    LISTENER_QUERIES,
    STREAMS,
    TaggedApp,
    pattern,
)

pytestmark = pytest.mark.interop

S = ConnectionState
QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"


@contextlib.asynccontextmanager
async def quic_node(**kw: Any) -> AsyncIterator[Node]:
    cfg = glueberry.Config(glueberry.generate_identity(), None, [QUIC], **kw)
    async with Node(cfg) as node:
        assert all(a.transport_kind() == "quic-v1" for a in node.addrs)
        yield node


def quic_target(addr: str) -> tuple[glueberry.PeerId, Multiaddr]:
    ma = Multiaddr(addr)
    assert ma.peer_id is not None and ma.transport_kind() == "quic-v1", addr
    return ma.peer_id, ma.without_p2p()


def only_quic(node: Node) -> None:
    conns = node.host.connections()
    assert conns and all(c.transport_name == "quic-v1" for c in conns), conns


async def test_python_dials_go_over_quic_handshake_and_exchange(
    peer_listener: ListenerFactory,
) -> None:
    lis = peer_listener("gbpeer", "--events", "--transport", "quic")
    peer, addr = quic_target(lis.addr)
    async with quic_node() as node:
        app = TaggedApp(node)
        node.add_peer(peer, [addr])
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            serve = tg.create_task(app.serve())
            await glueberry.handshake.establish(node, peer, STREAMS, timeout=20)
            assert node.connection_state(peer) is S.ESTABLISHED and node.is_outbound(peer)
            only_quic(node)
            by_stream: dict[str, list[int]] = defaultdict(list)
            for stream, n in DIALER_QUERIES:
                by_stream[stream].append(n)
            await asyncio.gather(*(app.ask(peer, s, sizes) for s, sizes in by_stream.items()))
            verdict = await asyncio.wait_for(app.verdicts.get(), 30)
            assert verdict == b"Vok", verdict
            assert app.answered == [("events", n) for n in LISTENER_QUERIES]
            serve.cancel()
        stats = node.peer_statistics(peer)
        assert stats is not None and stats.stream_stats["bulk"].bytes_received == 3 * 1048576
        assert node.input_errors["decryption_failures"] == 0


async def test_python_dials_go_over_quic_echo(peer_listener: ListenerFactory) -> None:
    lis = peer_listener("gbpeer", "--echo", "--transport", "quic")
    peer, addr = quic_target(lis.addr)
    async with quic_node(max_message_size=1 << 20) as node:
        node.add_peer(peer, [addr])
        await glueberry.handshake.establish(node, peer, STREAMS, timeout=20)
        only_quic(node)

        async def send_all(stream: str) -> None:
            for n in ECHO_SIZES:
                await node.send(peer, stream, pattern(n))

        async with asyncio.timeout(60):
            await asyncio.gather(send_all("messages"), send_all("bulk"))
            got: dict[str, list[bytes]] = defaultdict(list)
            for _ in range(2 * len(ECHO_SIZES)):
                m = await node.messages().get()
                got[m.stream_name].append(m.data)
        for stream in ("messages", "bulk"):
            assert got[stream] == [pattern(n) for n in ECHO_SIZES]


async def test_go_dials_python_over_quic_handshake_and_exchange(
    peer_dialer: DialerFactory,
) -> None:
    async with quic_node() as node:
        app = TaggedApp(node)
        established: asyncio.Queue[glueberry.PeerId] = asyncio.Queue()
        events = node.subscribe_events()

        async def originate() -> None:
            # As the listener: once established, query on "events" (a stream we open) and
            # send the verdict.
            peer = await established.get()
            only_quic(node)
            try:
                await app.ask(peer, "events", LISTENER_QUERIES)
            except AssertionError as exc:
                await node.send(peer, "events", b"Vfail: " + str(exc).encode())
                raise
            await node.send(peer, "events", b"Vok")

        async with (
            glueberry.handshake.auto(node, STREAMS, on_established=established.put_nowait),
            asyncio.TaskGroup() as tg,
        ):
            serve = tg.create_task(app.serve())
            orig = tg.create_task(originate())
            run = await peer_dialer.arun(
                "gbpeer",
                str(node.addrs[0].with_p2p(node.peer_id)),
                "handshake",
                "exchange",
                "--transport",
                "quic",
                "--timeout",
                "60",
                seconds=120,
            )
            assert run.ok, run.describe()
            assert run.test("exchange")["ok"]
            await asyncio.wait_for(orig, 10)
            serve.cancel()
        assert sorted(app.answered) == sorted(DIALER_QUERIES)
        # gbpeer closed its QUIC connection when it exited: we notice.
        (go_peer,) = set(node.all_peer_statistics())
        async with asyncio.timeout(10):
            async for ev in events:
                if isinstance(ev, glueberry.ConnectionEvent) and ev.state is S.DISCONNECTED:
                    assert ev.peer_id == go_peer
                    break
        assert node.connection_state(go_peer) is S.DISCONNECTED
        assert node.input_errors["decryption_failures"] == 0
