"""Identify, push, ping and the test protocols between two real hosts on loopback TCP."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from glueberry.errors import NegotiationFailed, RemoteProtocolError, StreamReset
from glueberry.net.host import Host, HostConfig
from glueberry.net.limits import Limits
from glueberry.net.services import IdentifyService, PingService
from glueberry.net.testprotocols import (
    BENCH_PROTOCOL,
    CLOSE_PROTOCOL,
    ECHO_PROTOCOL,
    RESET_PROTOCOL,
    SINK_PROTOCOL,
    SOURCE_PROTOCOL,
    TEST_PROTOCOLS,
    echo_pattern,
    expect_close,
    expect_reset,
    feed_sink,
    pattern_chunk,
    pattern_matches,
    register_test_protocols,
    request_source,
)
from glueberry.proto.identify import (
    AGENT_VERSION,
    IDENTIFY_PROTOCOL,
    IDENTIFY_PUSH_PROTOCOL,
    build_identify,
)
from glueberry.proto.ping import PING_PROTOCOL
from glueberry.transport.base import Stream
from glueberry.wire.identity import PrivateKey
from glueberry.wire.multiaddr import Multiaddr

LOOP = "/ip4/127.0.0.1/tcp/0"


@dataclass
class Node:
    host: Host
    ident: IdentifyService
    ping: PingService


# Room for the many-streams test (the defaults follow go's small-machine limits).
ROOMY = HostConfig(
    limits=Limits(
        max_negotiating_streams=2048,
        max_inbound_streams_per_connection=4096,
        max_streams_per_connection=4096,
    )
)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Node, Node]]:
    nodes = []
    async with (
        Host(PrivateKey.generate(), listen_addrs=[LOOP], config=ROOMY) as a,
        Host(PrivateKey.generate(), listen_addrs=[LOOP], config=ROOMY) as b,
    ):
        for h in (a, b):
            nodes.append(Node(h, IdentifyService(h, watch_interval=0.05), PingService(h)))
            register_test_protocols(h)
        yield nodes[0], nodes[1]


async def _eventually(pred: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while True:
            if pred():
                return
            await asyncio.sleep(0.01)


async def _connect(a: Node, b: Node) -> None:
    async with asyncio.timeout(10):
        await a.host.connect(b.host.peer_id, b.host.addrs)


async def test_identify_both_ways(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await _connect(a, b)
    async with asyncio.timeout(10):
        info_b = await a.ident.wait_identified(b.host.peer_id)
        info_a = await b.ident.wait_identified(a.host.peer_id)
    for info, node in ((info_b, b), (info_a, a)):
        assert info.agent_version == AGENT_VERSION
        assert info.protocol_version == "ipfs/0.1.0"
        assert info.public_key == node.host.identity.public_key
        assert info.protocols is not None
        assert {IDENTIFY_PROTOCOL, IDENTIFY_PUSH_PROTOCOL, PING_PROTOCOL} <= set(info.protocols)
        assert set(TEST_PROTOCOLS) <= set(info.protocols)
        assert info.listen_addrs == tuple(node.host.addrs)
        assert info.signed_peer_record is not None
        assert info.signed_peer_record.addrs == tuple(node.host.addrs)
    # b saw a (the dialer) at its ephemeral port; a saw b at b's listen port.
    conn = a.host.connection_for(b.host.peer_id)
    assert conn is not None
    assert info_b.observed_addr == Multiaddr.from_socket_address(*conn.local_address)
    assert info_a.observed_addr == Multiaddr.from_socket_address(*conn.remote_address)
    # Stored in the peerstore.
    store = a.host.peerstore
    assert store.agent_version(b.host.peer_id) == AGENT_VERSION
    assert store.public_key(b.host.peer_id) == b.host.identity.public_key
    assert set(b.host.addrs) <= set(store.addrs(b.host.peer_id))
    assert store.supports(b.host.peer_id, [ECHO_PROTOCOL]) == [ECHO_PROTOCOL]
    assert a.ident.stats["identified"] >= 1


async def test_identify_with_a_foreign_key_is_rejected(pair: tuple[Node, Node]) -> None:
    a, b = pair
    imposter = PrivateKey.generate()

    async def lying(stream: Stream) -> None:
        await stream.write(
            build_identify(public_key=imposter.public_key, listen_addrs=[], protocols=[])
        )
        await stream.close()

    b.host.set_stream_handler(IDENTIFY_PROTOCOL, lying)
    await _connect(a, b)
    with pytest.raises(RemoteProtocolError):
        async with asyncio.timeout(10):
            await a.ident.wait_identified(b.host.peer_id)
    assert a.host.peerstore.public_key(b.host.peer_id) in (None, b.host.identity.public_key)
    # The connection survives a bad identify.
    assert await a.ping.ping(b.host.peer_id, 1)


async def test_peer_without_identify(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    async with Host(PrivateKey.generate(), listen_addrs=[LOOP]) as bare:
        await bare.connect(a.host.peer_id, a.host.addrs)
        with pytest.raises(NegotiationFailed):
            async with asyncio.timeout(10):
                await a.ident.wait_identified(bare.peer_id)
        assert a.ident.stats["failed"] >= 1


async def test_push_on_listen_address_change(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await _connect(a, b)
    async with asyncio.timeout(10):
        await a.ident.wait_identified(b.host.peer_id)
        await b.ident.wait_identified(a.host.peer_id)
    new = await b.host.listen(LOOP)
    async with asyncio.timeout(10):
        while True:
            info = a.ident.identified(b.host.peer_id)
            assert info is not None
            if info.listen_addrs is not None and set(new) <= set(info.listen_addrs):
                break
            await asyncio.sleep(0.02)
    assert info.agent_version == AGENT_VERSION  # absent from the push: kept
    assert b.ident.stats["pushes_sent"] >= 1
    assert set(new) <= set(a.host.peerstore.addrs(b.host.peer_id))


async def test_push_storm_is_rate_limited(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await _connect(a, b)
    msg = build_identify(public_key=None, listen_addrs=None, protocols=["/x/1.0.0"])
    outcomes = []
    for _ in range(20):
        try:
            s = await a.host.new_stream(b.host.peer_id, [IDENTIFY_PUSH_PROTOCOL])
            await s.write(msg)
            await s.close()
            outcomes.append(True)
        except StreamReset:
            outcomes.append(False)
    await _eventually(
        lambda: b.ident.stats["pushes_received"] + b.ident.stats["pushes_refused"] >= 20
    )
    assert b.ident.stats["pushes_received"] <= 6  # burst 5 (+1 refilled at most)
    assert b.ident.stats["pushes_refused"] >= 14


async def test_ping(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await _connect(a, b)
    rtts = await a.ping.ping(b.host.peer_id, 5)
    assert len(rtts) == 5
    assert all(0 < r < 1 for r in rtts)
    seqs = [seq async for seq, rtt in b.ping.ping_iter(a.host.peer_id, 3, interval=0.01)]
    assert seqs == [1, 2, 3]


async def test_third_concurrent_ping_stream_is_reset(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await _connect(a, b)
    streams = [await a.host.new_stream(b.host.peer_id, [PING_PROTOCOL]) for _ in range(2)]
    payload = bytes(range(32))
    for s in streams:
        await s.write(payload)
        assert await s.readexactly(32) == payload
    with pytest.raises((StreamReset, asyncio.IncompleteReadError)):
        third = await a.host.new_stream(b.host.peer_id, [PING_PROTOCOL])
        await third.write(payload)
        await third.readexactly(32)
    assert b.ping.limiter.refused == 1
    for s in streams:
        await s.close()
    await _eventually(lambda: b.ping.limiter.active(a.host.peer_id) == 0)


async def test_unknown_protocol_gets_na(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await _connect(a, b)
    with pytest.raises(NegotiationFailed):
        await a.host.new_stream(b.host.peer_id, ["/no/such/1.0.0"])
    assert await a.ping.ping(b.host.peer_id, 1)


# --- test protocols -----------------------------------------------------------------------------


def test_pattern() -> None:
    assert bytes(pattern_chunk(0, 5)) == bytes([0, 1, 2, 3, 4])
    assert bytes(pattern_chunk(250, 3)) == bytes([250, 0, 1])
    assert len(pattern_chunk(7, 1 << 20)) == 65536
    data = b"".join(bytes(pattern_chunk(o, 1000)) for o in range(0, 10000, 1000))
    assert pattern_matches(0, data)
    assert pattern_matches(500, data[500:])
    assert not pattern_matches(1, data)


async def test_test_protocols(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await _connect(a, b)
    peer = b.host.peer_id
    n = 3 * 65536 + 17
    await echo_pattern(await a.host.new_stream(peer, [ECHO_PROTOCOL]), n)
    assert await request_source(await a.host.new_stream(peer, [SOURCE_PROTOCOL]), n) == n
    await feed_sink(await a.host.new_stream(peer, [SINK_PROTOCOL]), n)
    exc = await expect_reset(await a.host.new_stream(peer, [RESET_PROTOCOL]))
    assert exc.remote
    assert await expect_close(await a.host.new_stream(peer, [CLOSE_PROTOCOL])) == b"bye"


async def test_many_concurrent_echo_streams(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await _connect(a, b)

    async def one() -> None:
        await echo_pattern(await a.host.new_stream(b.host.peer_id, [ECHO_PROTOCOL]), 4096)

    async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
        for _ in range(200):
            tg.create_task(one())


async def test_bench_modes(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await _connect(a, b)
    peer = b.host.peer_id
    s = await a.host.new_stream(peer, [BENCH_PROTOCOL])
    await s.write(b"E")
    assert await s.readexactly(1) == b"E"
    await s.write(b"hello")
    assert await s.readexactly(5) == b"hello"
    await s.close()
    s = await a.host.new_stream(peer, [BENCH_PROTOCOL])
    frame = struct.pack(">I", 100) + b"m" * 100
    # Frames split awkwardly across writes: the listener must still count them.
    blob = b"M" + struct.pack(">I", 50) + frame * 50
    for i in range(0, len(blob), 333):
        await s.write(blob[i : i + 333])
    assert await s.readexactly(1) == b"K"
    await s.close()
    s = await a.host.new_stream(peer, [BENCH_PROTOCOL])
    await s.write(b"B" + struct.pack(">Q", 200_000) + b"b" * 200_000)
    assert await s.readexactly(1) == b"K"
    await s.close()
    s = await a.host.new_stream(peer, [BENCH_PROTOCOL])
    await s.write(b"R")
    line = b""
    while chunk := await s.read():
        line += chunk
    rss, cpu = line.split()
    assert int(rss) > 0 and float(cpu) > 0
