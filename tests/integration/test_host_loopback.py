"""Two (or three) hosts on loopback TCP: the whole stack with real sockets.

TCP -> multistream -> Noise (early yamux) -> yamux -> per-stream multistream, both IPv4 and
IPv6, plus what only shows with many streams or real sockets: 1000 concurrent echo streams,
simultaneous dials, gating and limits with typed errors (B-41), and shutdown leaving no task,
socket or ResourceWarning behind (B-42, C10).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from glueberry.errors import (
    ConnectionLost,
    ConnectTimeout,
    PeerBlacklisted,
    PeerIdMismatch,
    ResourceLimitExceeded,
)
from glueberry.net.gater import BlockList
from glueberry.net.host import Host, HostConfig
from glueberry.net.limits import Limits
from glueberry.net.negotiate import select_protocol
from glueberry.net.upgrader import Upgrader
from glueberry.transport import tcp
from glueberry.transport.base import MuxedConnection, Stream
from glueberry.transport.tcp import TcpConnection, TcpListener
from glueberry.wire.identity import PrivateKey
from tests.resources import open_sockets

ECHO = "/test/echo/1.0.0"


async def echo_handler(stream: Stream) -> None:
    async for chunk in stream:
        await stream.write(chunk)
    await stream.close()


async def echo(stream: Stream, payload: bytes) -> bytes:
    await stream.write(payload)
    await stream.close_write()
    out = bytearray()
    async for chunk in stream:
        out += chunk
    return bytes(out)


def make_host(seed: int, listen: str = "/ip4/127.0.0.1/tcp/0", **config: Any) -> Host:
    return Host(
        PrivateKey.from_seed(bytes([seed]) * 32),
        listen_addrs=[listen] if listen else [],
        config=HostConfig(**config),
    )


def open_fds() -> int:
    return open_sockets()


def other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


@contextlib.asynccontextmanager
async def pair(
    listen: str = "/ip4/127.0.0.1/tcp/0", a: dict[str, Any] | None = None, **b: Any
) -> AsyncIterator[tuple[Host, Host]]:
    async with make_host(1, listen, **(a or {})) as ha, make_host(2, listen, **b) as hb:
        for h in (ha, hb):
            h.set_stream_handler(ECHO, echo_handler)
        ha.peerstore.add_addrs(hb.peer_id, hb.addrs)
        hb.peerstore.add_addrs(ha.peer_id, ha.addrs)
        yield ha, hb


@pytest.fixture(autouse=True)
async def nothing_left_behind() -> AsyncIterator[None]:
    """B-42: every test ends with the tasks and file descriptors it started with."""
    tasks, fds = other_tasks(), open_fds()
    yield
    for _ in range(50):
        gc.collect()  # an unclosed socket raises ResourceWarning here (an error)
        if other_tasks() <= tasks and open_fds() <= fds:
            break
        await asyncio.sleep(0.02)
    assert other_tasks() <= tasks
    assert open_fds() <= fds


@pytest.mark.parametrize("listen", ["/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0"])
async def test_connect_and_echo(listen: str) -> None:
    async with pair(listen) as (ha, hb):
        (addr,) = hb.addrs
        assert addr.to_socket_address().port != 0
        stream = await ha.new_stream(hb.peer_id, ECHO)
        assert stream.protocol == ECHO
        payload = os.urandom(300_000)
        assert await echo(stream, payload) == payload
        (conn,) = ha.connections(hb.peer_id)
        assert conn.transport_name == "tcp"
        assert conn.security_protocol == "/noise"
        assert conn.muxer_protocol == "/yamux/1.0.0"
        assert conn.remote_address == addr.to_socket_address()[:2]
        # and the other way over the same connection
        back = await hb.new_stream(ha.peer_id, ECHO)
        assert await echo(back, b"reverse") == b"reverse"
        assert len(hb.connections()) == 1


async def test_wrong_peer_id_is_refused() -> None:
    async with pair() as (ha, hb):
        impostor = PrivateKey.from_seed(b"\x33" * 32).peer_id
        with pytest.raises(PeerIdMismatch):
            await ha.connect(impostor, hb.addrs)
        assert not ha.connections()


async def test_thousand_concurrent_streams() -> None:
    big = Limits(
        max_streams_per_connection=4096,
        max_inbound_streams_per_connection=4096,
        max_negotiating_streams=4096,
    )
    async with pair(a={"limits": big}, limits=big) as (ha, hb):
        await ha.connect(hb.peer_id)

        async def one(i: int) -> None:
            stream = await ha.new_stream(hb.peer_id, ECHO)
            data = i.to_bytes(4, "big") * 64
            assert await echo(stream, data) == data

        async with asyncio.timeout(60):
            await asyncio.gather(*(one(i) for i in range(1000)))
        assert len(ha.connections()) == 1


async def test_simultaneous_dial_ends_with_working_connections() -> None:
    async with pair() as (ha, hb):
        ca, cb = await asyncio.gather(ha.connect(hb.peer_id), hb.connect(ha.peer_id))
        assert ca.remote_peer == hb.peer_id and cb.remote_peer == ha.peer_id
        # both ends agree on the preferred connection (dialed by the lower peer ID)
        pa, pb = ha.connection_for(hb.peer_id), hb.connection_for(ha.peer_id)
        assert pa is not None and pb is not None
        assert pa.local_address == pb.remote_address
        assert pa.remote_address == pb.local_address
        lower_dialed = min(ha.peer_id, hb.peer_id) == ha.peer_id
        assert (pa.direction == "outbound") == lower_dialed
        for h, peer in ((ha, hb.peer_id), (hb, ha.peer_id)):
            stream = await h.new_stream(peer, ECHO)
            assert await echo(stream, b"simultaneous") == b"simultaneous"


async def test_gater_by_address_over_tcp() -> None:
    gate = BlockList(networks=["127.0.0.0/8"])
    async with pair(gater=gate) as (ha, hb):
        with pytest.raises(ConnectionLost):
            await ha.connect(hb.peer_id)
        assert hb.refused_inbound == {"gater": 1}
        with pytest.raises(PeerBlacklisted):
            await hb.connect(ha.peer_id)  # our own gater refuses the dial too


async def test_limits_are_typed_and_local_or_remote() -> None:
    """B-41: totals bounded, each refusal says which limit and whose."""
    hold = asyncio.Event()

    async def holding(stream: Stream) -> None:
        await hold.wait()
        await stream.close()

    async with (
        make_host(1, limits=Limits(max_connections_per_peer=1)) as ha,
        make_host(2, limits=Limits(max_inbound_streams_per_connection=3)) as hb,
        make_host(3, limits=Limits(max_inbound_connections=1)) as hc,
    ):
        hb.set_stream_handler("/hold/1.0.0", holding)
        streams = [await ha.new_stream(hb.peer_id, "/hold/1.0.0", addrs=hb.addrs) for _ in range(3)]
        with pytest.raises(ResourceLimitExceeded) as info:
            await ha.new_stream(hb.peer_id, "/hold/1.0.0")
        assert info.value.remote is True
        # per-peer connection limit, checked before dialing
        with pytest.raises(ResourceLimitExceeded) as info:
            await ha.connect(None, hb.addrs)
        assert (info.value.limit, info.value.remote) == ("max_connections_per_peer", False)
        # the remote's inbound limit closes our second connection attempt
        await hb.connect(hc.peer_id, hc.addrs)
        with pytest.raises(ConnectionLost):
            await ha.connect(hc.peer_id, hc.addrs)
        assert hc.refused_inbound == {"max_inbound_connections": 1}
        hold.set()
        for s in streams:
            await s.close()


async def test_half_open_flood_does_not_block_other_peers() -> None:
    """B-40 through the host: 30 silent sockets from 127.0.0.1 hold at most 4 upgrade slots
    (the per-IP cap), the rest are closed at once, the 4 at the upgrade deadline; a peer on
    another address (127.0.0.2) is served during the flood."""
    limits = Limits(max_pending_upgrades=16, max_pending_upgrades_per_ip=4, per_ip_exempt=())
    async with make_host(2, upgrade_timeout=0.5, limits=limits) as hb:
        hb.set_stream_handler(ECHO, echo_handler)
        port = hb.addrs[0].to_socket_address().port
        silent = [await tcp.dial("127.0.0.1", port, 5) for _ in range(30)]
        honest = await tcp.dial("127.0.0.1", port, 5, local_addr=("127.0.0.2", 0))
        conn = await Upgrader(PrivateKey.from_seed(b"\x01" * 32)).upgrade_outbound(
            honest, expected_peer=hb.peer_id, on_stream=lambda s: s.reset(), timeout=5
        )
        stream = await conn.open_stream()
        assert (await select_protocol(stream, [ECHO]))[0] == ECHO
        assert await echo(stream, b"served") == b"served"
        await conn.close()
        async with asyncio.timeout(5):
            for sock in silent:
                with contextlib.suppress(ConnectionLost):
                    while await sock.read():
                        pass
        assert hb.refused_inbound == {"max_pending_upgrades_per_ip": 26}
        assert hb.upgrader.timed_out_inbound == 4
        for sock in silent:
            sock.abort()
            await sock.wait_closed()


async def test_cancellation_during_dial_handshake_and_close() -> None:
    """C10: cancel during the TCP dial, during the Noise handshake, and during close()."""
    silent: list[TcpConnection] = []
    async with await TcpListener.create("127.0.0.1", 0, silent.append) as listener:
        port = listener.addresses[0][1]
        async with make_host(1, "", dial_address_timeout=0.3) as ha:
            other = PrivateKey.from_seed(b"\x44" * 32).peer_id
            # the listener accepts and never speaks: the dial hangs in the handshake
            task = asyncio.ensure_future(ha.connect(other, [f"/ip4/127.0.0.1/tcp/{port}"]))
            for _ in range(100):
                if silent:
                    break
                await asyncio.sleep(0.01)
            assert silent
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert ha.limiter.connections == 0
            assert await asyncio.wait_for(silent[0].read(), 5) in (
                b"",
                b"\x13/multistream/1.0.0\n\x07/noise\n",
            )
            # left alone, the dial gives up at dial_address_timeout
            with pytest.raises(ConnectTimeout):
                await ha.connect(other, [f"/ip4/127.0.0.1/tcp/{port}"])
        for conn in silent:
            conn.abort()
            await conn.wait_closed()
    # cancel close() while connections with open streams are shutting down
    ha, hb = make_host(1), make_host(2)
    await ha.start()
    await hb.start()
    hb.set_stream_handler(ECHO, echo_handler)
    streams = [await ha.new_stream(hb.peer_id, ECHO, addrs=hb.addrs) for _ in range(10)]
    closing = asyncio.ensure_future(ha.close())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await hb.close()
    await ha.close()
    assert all(s.is_closed for s in streams)


async def test_connection_listeners_over_tcp() -> None:
    events: list[tuple[str, MuxedConnection]] = []
    async with pair() as (ha, hb):
        remove = hb.add_connection_listener(
            lambda c: events.append(("up", c)), lambda c: events.append(("down", c))
        )
        conn = await ha.connect(hb.peer_id)
        await conn.close()
        async with asyncio.timeout(5):
            while len(events) < 2:  # noqa: ASYNC110 - plain callbacks, nothing to await
                await asyncio.sleep(0.01)
        assert [e for e, _ in events] == ["up", "down"]
        assert events[0][1] is events[1][1]
        assert events[0][1].remote_peer == ha.peer_id
        remove()
        await ha.connect(hb.peer_id)
        await asyncio.sleep(0.05)
        assert len(events) == 2


@pytest.mark.parametrize(("wildcard", "loopback"), [("0.0.0.0", "127.0.0.1"), ("::", "::1")])
async def test_wildcard_listen_addresses_are_expanded(wildcard: str, loopback: str) -> None:
    family = "ip6" if ":" in wildcard else "ip4"
    async with make_host(2, f"/{family}/{wildcard}/tcp/0") as hb, make_host(1, "") as ha:
        hb.set_stream_handler(ECHO, echo_handler)
        (bound,) = hb.listen_addrs
        assert bound.is_unspecified
        port = bound.to_socket_address().port
        assert port != 0
        assert all(a.to_socket_address().port == port for a in hb.addrs)
        assert all(not a.is_unspecified for a in hb.addrs)
        local = [a for a in hb.addrs if a.is_loopback]
        assert [a.to_socket_address().host for a in local] == [loopback]
        stream = await ha.new_stream(hb.peer_id, ECHO, addrs=local)
        assert await echo(stream, b"wildcard") == b"wildcard"
