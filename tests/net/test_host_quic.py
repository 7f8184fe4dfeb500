"""The host over real loopback QUIC: muxed connections bypass the upgrader, everything else
(gater, limits, stream negotiation, identify, ping, notifications, close) works unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from glueberry.errors import (
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    HandshakeTimeout,
    PeerBlacklisted,
    PeerIdMismatch,
    ResourceLimitExceeded,
    StreamReset,
)
from glueberry.net.gater import BlockList
from glueberry.net.host import Host, HostConfig
from glueberry.net.limits import Limits
from glueberry.net.services import IdentifyService, PingService
from glueberry.net.testprotocols import (
    ECHO_PROTOCOL,
    TEST_LIMITS,
    echo_pattern,
    register_test_protocols,
)
from glueberry.net.transports import (
    LazyQuicTransport,
    is_muxed_transport,
)
from glueberry.transport.base import Stream
from glueberry.transport.quic import QuicConnection, QuicTransport
from glueberry.transport.tcp import TcpTransport
from glueberry.wire.identity import PrivateKey
from glueberry.wire.multiaddr import Multiaddr

TCP = "/ip4/127.0.0.1/tcp/0"
QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"
HOLD = "/hold/1.0.0"


def host_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


def quic_addrs(host: Host) -> list[Multiaddr]:
    return [a for a in host.addrs if a.transport_kind() == "quic-v1"]


def tcp_addrs(host: Host) -> list[Multiaddr]:
    return [a for a in host.addrs if a.transport_kind() == "tcp"]


def lazy_quic(host: Host) -> LazyQuicTransport:
    (quic,) = [t for t in host._transports if isinstance(t, LazyQuicTransport)]
    return quic


def make_host(*, listen: tuple[str, ...] = (TCP, QUIC), **config: Any) -> Host:
    return Host(PrivateKey.generate(), listen_addrs=list(listen), config=HostConfig(**config))


@contextlib.asynccontextmanager
async def pair(
    a: dict[str, Any] | None = None, b: dict[str, Any] | None = None
) -> AsyncIterator[tuple[Host, Host]]:
    async with make_host(**(a or {})) as ha, make_host(**(b or {})) as hb:
        for h in (ha, hb):
            register_test_protocols(h, bench=False)
        yield ha, hb


async def wait_until(pred: Any, what: str, seconds: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not pred():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


# --- defaults --------------------------------------------------------------------------------


async def test_default_transports_tcp_then_lazy_quic() -> None:
    async with make_host(listen=(TCP,)) as host:
        kinds = [type(t) for t in host._transports]
        assert kinds == [TcpTransport, LazyQuicTransport]
        assert is_muxed_transport(host._transports[1])
        assert not is_muxed_transport(host._transports[0])
        quic = lazy_quic(host)
        assert not quic.started  # TCP only so far: no aioquic state, no certificate
        await host.listen(QUIC)
        assert quic.started
        assert [a.transport_kind() for a in host.addrs] == ["tcp", "quic-v1"]
    with pytest.raises(ConnectError):
        _ = quic.transport  # the host closed its own transport
    assert quic.current is not None and not quic.current.endpoints


def test_explicit_quic_transport_is_recognised() -> None:
    t = QuicTransport(PrivateKey.generate())
    try:
        assert is_muxed_transport(t)
        assert not is_muxed_transport(TcpTransport())
    finally:
        t.close()


# --- connect, streams, identify, ping ---------------------------------------------------------


async def test_connect_over_quic_identify_advertises_both_and_ping() -> None:
    async with pair() as (ha, hb):
        ia, ib = IdentifyService(ha), IdentifyService(hb)
        pa, _ = PingService(ha), PingService(hb)
        events: list[tuple[str, str]] = []
        hb.add_connection_listener(
            lambda c: events.append(("up", c.transport_name)),
            lambda c: events.append(("down", c.transport_name)),
        )
        assert len(quic_addrs(hb)) == 1 and len(tcp_addrs(hb)) == 1
        conn = await ha.connect(hb.peer_id, quic_addrs(hb))
        assert isinstance(conn, QuicConnection)
        assert (conn.transport_name, conn.security_protocol, conn.muxer_protocol) == (
            "quic-v1",
            "/tls/1.0.0",
            "quic-v1",
        )
        assert conn.remote_peer == hb.peer_id
        assert ha.connection_for(hb.peer_id) is conn
        assert await ha.connect(hb.peer_id) is conn  # reused
        # identify both ways (each side identifies the new connection at once)
        async with asyncio.timeout(5):
            info_b = await ia.wait_identified(hb.peer_id)
            info_a = await ib.wait_identified(ha.peer_id)
        assert set(info_b.listen_addrs or ()) == set(hb.addrs)  # TCP and QUIC
        assert {a.transport_kind() for a in info_b.listen_addrs or ()} == {"tcp", "quic-v1"}
        assert info_b.observed_addr is not None
        assert info_b.observed_addr.transport_kind() == "quic-v1"
        assert info_b.observed_addr.to_socket_address().port == conn.local_address[1]
        assert info_a.public_key == ha.identity.public_key
        assert set(ha.peerstore.addrs(hb.peer_id)) >= set(hb.addrs)
        rtts = await pa.ping(hb.peer_id, 3)
        assert len(rtts) == 3 and all(0 < r < 1 for r in rtts)
        (inbound,) = hb.connections(ha.peer_id)
        assert inbound.direction == "inbound" and inbound.transport_name == "quic-v1"
        assert events == [("up", "quic-v1")]
        await conn.close()
        assert not ha.connections()
        # The listener notices once its side of the connection has drained (RFC 9000 §10.2).
        await wait_until(lambda: len(events) == 2, "the listener to see the close")
        assert events == [("up", "quic-v1"), ("down", "quic-v1")]
        assert not hb.connections()
        await wait_until(lambda: ha.limiter.connections == 0, "the dialer's slot released")
        assert hb.limiter.connections == 0


async def test_dial_follows_the_address_transport() -> None:
    async with pair() as (ha, hb), make_host() as hc:
        register_test_protocols(hc, bench=False)
        tcp_conn = await ha.connect(hb.peer_id, tcp_addrs(hb))
        quic_conn = await ha.connect(hc.peer_id, quic_addrs(hc))
        assert tcp_conn.transport_name == "tcp" and tcp_conn.security_protocol == "/noise"
        assert tcp_conn.muxer_protocol == "/yamux/1.0.0"
        assert quic_conn.transport_name == "quic-v1"
        # another peer than the one we dial is refused by the TLS handshake
        with pytest.raises(PeerIdMismatch):
            await ha.connect(PrivateKey.generate().peer_id, quic_addrs(hb))
        assert len(ha.connections()) == 2


async def test_echo_200_streams_both_directions() -> None:
    # QUIC delivers a burst of new streams at once: more than the default 128 may be in
    # multistream-select together (test limits, as the interop suites use).
    limits = {"limits": TEST_LIMITS}
    async with pair(a=limits, b=limits) as (ha, hb):
        await ha.connect(hb.peer_id, quic_addrs(hb))

        async def one(src: Host, dst: Host, n: int) -> None:
            stream = await src.new_stream(dst.peer_id, [ECHO_PROTOCOL])
            assert stream.protocol == ECHO_PROTOCOL
            await echo_pattern(stream, n)

        async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
            for i in range(200):
                tg.create_task(one(ha, hb, 1000 + i))
            for i in range(20):  # the listener opens streams back over the same connection
                tg.create_task(one(hb, ha, 5000 + i))
        assert len(ha.connections()) == 1 and len(hb.connections()) == 1
        # a larger transfer
        await one(ha, hb, 1 << 20)


async def test_unknown_protocol_and_handler_failure_reset_the_stream() -> None:
    async with pair() as (ha, hb):

        async def failing(stream: Stream) -> None:
            await stream.readexactly(1)
            raise RuntimeError("handler bug")

        hb.set_stream_handler("/fails/1.0.0", failing)
        await ha.connect(hb.peer_id, quic_addrs(hb))
        with pytest.raises(Exception) as info:
            await ha.new_stream(hb.peer_id, ["/nope/1.0.0"])
        assert type(info.value).__name__ == "NegotiationFailed"
        stream = await ha.new_stream(hb.peer_id, "/fails/1.0.0")
        await stream.write(b"x")
        with pytest.raises(StreamReset):
            async with asyncio.timeout(5):
                while await stream.read():
                    pass
        # the connection survives
        await echo_pattern(await ha.new_stream(hb.peer_id, [ECHO_PROTOCOL]), 100)


async def test_wildcard_quic_listen_expands_keeping_quic() -> None:
    async with make_host(listen=("/ip4/0.0.0.0/udp/0/quic-v1",)) as host:
        (bound,) = host.listen_addrs
        assert bound.is_unspecified and bound.transport_kind() == "quic-v1"
        assert host.addrs, host.addrs
        for addr in host.addrs:
            assert addr.transport_kind() == "quic-v1"
            assert addr.to_socket_address().port == bound.to_socket_address().port
        assert Multiaddr(f"/ip4/127.0.0.1/udp/{bound.to_socket_address().port}/quic-v1") in (
            host.addrs
        )
        async with make_host(listen=()) as other:
            conn = await other.connect(host.peer_id, host.addrs[:1])
            assert conn.transport_name == "quic-v1"


async def test_dialing_our_own_quic_address_is_refused() -> None:
    async with make_host(listen=(QUIC,)) as host:
        with pytest.raises(ConnectError):
            await host.connect(None, quic_addrs(host))
        await wait_until(lambda: not host.connections(), "no connection to ourselves")
        assert host.limiter.connections == 0


# --- gater and limits ----------------------------------------------------------------------------


async def test_gater_accept_secured_and_dial_over_quic() -> None:
    gate_a, gate_b = BlockList(), BlockList()
    async with pair(a={"gater": gate_a, "dial_address_timeout": 0.5}, b={"gater": gate_b}) as (
        ha,
        hb,
    ):
        # on accept, by address: the Initial is dropped, the dialer times out
        gate_b.block_network("127.0.0.0/8")
        with pytest.raises((ConnectTimeout, HandshakeTimeout)):
            await ha.connect(hb.peer_id, quic_addrs(hb))
        assert hb.refused_inbound.get("gater", 0) >= 1
        assert not hb.connections()
        gate_b.unblock_network("127.0.0.0/8")
        # once secured, by peer (inbound side): the dialer's connection dies at once
        before = hb.refused_inbound.get("gater", 0)
        gate_b.block_peer(ha.peer_id)
        try:
            conn = await ha.connect(hb.peer_id, quic_addrs(hb))
        except (ConnectionLost, ConnectError):
            pass
        else:
            async with asyncio.timeout(5):
                await conn.wait_closed()
        assert hb.refused_inbound["gater"] == before + 1
        assert not hb.connections() and hb.limiter.connections == 0
        gate_b.unblock_peer(ha.peer_id)
        # dialing side: refused before any packet, and after the handshake
        gate_a.block_network("127.0.0.0/8")
        with pytest.raises(PeerBlacklisted):
            await ha.connect(hb.peer_id, quic_addrs(hb))
        gate_a.unblock_network("127.0.0.0/8")
        gate_a.block_peer(hb.peer_id)
        with pytest.raises(PeerBlacklisted):  # allow_secured, once TLS named the peer
            await ha.connect(None, quic_addrs(hb))
        gate_a.unblock_peer(hb.peer_id)
        await wait_until(lambda: not hb.connections(), "the refused connection to end")
        assert ha.limiter.connections == 0
        conn = await ha.connect(hb.peer_id, quic_addrs(hb))
        assert conn.remote_peer == hb.peer_id


async def test_connection_limits_over_quic() -> None:
    async with (
        make_host(limits=Limits(max_inbound_connections=1)) as hb,
        make_host(listen=(), dial_address_timeout=0.5) as h1,
        make_host(listen=(), dial_address_timeout=0.5) as h2,
        make_host(listen=(), limits=Limits(max_outbound_connections=0)) as h3,
    ):
        await h1.connect(hb.peer_id, quic_addrs(hb))
        # the listener is full: the second client's Initial is dropped
        with pytest.raises((ConnectTimeout, HandshakeTimeout)):
            await h2.connect(hb.peer_id, quic_addrs(hb))
        assert hb.refused_inbound.get("max_inbound_connections", 0) >= 1
        assert len(hb.connections()) == 1
        # our own outbound limit: typed, before any packet
        with pytest.raises(ResourceLimitExceeded) as info:
            await h3.connect(hb.peer_id, quic_addrs(hb))
        assert info.value.limit == "max_outbound_connections" and info.value.remote is False


async def test_per_peer_limit_over_quic() -> None:
    async with pair(b={"limits": Limits(max_connections_per_peer=1)}) as (ha, hb):
        await ha.connect(hb.peer_id, tcp_addrs(hb))
        # a second connection from the same peer (over QUIC this time) is refused once
        # the peer is known
        extra = await lazy_quic(ha).dial(quic_addrs(hb)[0], hb.peer_id)
        async with asyncio.timeout(5):
            await extra.wait_closed()
        assert hb.refused_inbound.get("max_connections_per_peer") == 1
        assert len(hb.connections()) == 1


async def test_stream_limits_over_quic() -> None:
    hold = asyncio.Event()

    async def holding(stream: Stream) -> None:
        await hold.wait()
        await stream.close()

    async with pair(b={"limits": Limits(max_inbound_streams_per_connection=2)}) as (ha, hb):
        hb.set_stream_handler(HOLD, holding)
        await ha.connect(hb.peer_id, quic_addrs(hb))
        s1 = await ha.new_stream(hb.peer_id, HOLD)
        s2 = await ha.new_stream(hb.peer_id, HOLD)
        with pytest.raises(ResourceLimitExceeded) as info:
            await ha.new_stream(hb.peer_id, HOLD)
        assert info.value.remote is True
        hold.set()
        for s in (s1, s2):
            await s.close()
        # The peer frees the slots once it has seen both ends close, which may be after our
        # next stream reaches it (the order of its callbacks differs between event loops).
        async with asyncio.timeout(5):
            while True:
                try:
                    stream = await ha.new_stream(hb.peer_id, [ECHO_PROTOCOL])
                    break
                except ResourceLimitExceeded:
                    await asyncio.sleep(0.01)
        await echo_pattern(stream, 10)


# --- close ---------------------------------------------------------------------------------------


def open_udp_sockets() -> int:
    gc.collect()
    return sum(
        1
        for obj in gc.get_objects()
        if isinstance(obj, socket.socket) and obj.type == socket.SOCK_DGRAM and obj.fileno() >= 0
    )


async def test_close_leaves_nothing_behind() -> None:
    before_tasks = host_tasks()
    before_udp = open_udp_sockets()
    ha, hb = make_host(), make_host()
    await ha.start()
    await hb.start()
    register_test_protocols(hb, bench=False)
    IdentifyService(ha)
    IdentifyService(hb)
    streams = [
        await ha.new_stream(hb.peer_id, ECHO_PROTOCOL, addrs=quic_addrs(hb)) for _ in range(5)
    ]
    for s in streams:
        await s.write(b"x")
        assert await s.readexactly(1) == b"x"
    assert open_udp_sockets() > before_udp
    await hb.close()  # handlers cancelled, CONNECTION_CLOSE, streams reset on A
    for s in streams:
        with pytest.raises((StreamReset, ConnectionLost)):
            async with asyncio.timeout(5):
                await s.write(b"x")
                while await s.read():
                    pass
    await wait_until(lambda: ha.limiter.connections == 0, "the dialer to see the close")
    assert not ha.connections()
    await ha.close()
    quic = lazy_quic(ha).current
    assert quic is not None and not quic.endpoints
    assert host_tasks() == before_tasks
    assert open_udp_sockets() == before_udp


async def test_close_while_quic_dial_in_flight() -> None:
    before = host_tasks()
    # a UDP socket that never answers: the dial hangs in the handshake
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        host = make_host(listen=())
        await host.start()
        other = PrivateKey.generate().peer_id
        dial = asyncio.ensure_future(host.connect(other, [f"/ip4/127.0.0.1/udp/{port}/quic-v1"]))
        await asyncio.sleep(0.05)
        await host.close()
        with pytest.raises(ConnectError):
            await dial
    assert host_tasks() == before
