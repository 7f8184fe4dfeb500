"""The host over the in-memory transport, and its building blocks: limits, gater, peerstore."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from glueberry.errors import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    ErrorCode,
    NegotiationFailed,
    NodeStateError,
    PeerBlacklisted,
    PeerIdMismatch,
    PeerNotFound,
    ResourceLimitExceeded,
    StreamReset,
)
from glueberry.net.gater import AllowAll, BlockList
from glueberry.net.host import Host, HostConfig
from glueberry.net.limits import Direction, Limits, ResourceLimiter, StreamCounter
from glueberry.net.negotiate import select_protocol_lazy
from glueberry.net.peerstore import Peerstore
from glueberry.transport.base import Stream
from glueberry.transport.memory import MemoryNetwork, MemoryTransport
from glueberry.wire.identity import PeerId, PrivateKey
from glueberry.wire.multiaddr import Multiaddr


def _peer(i: int = 0) -> PeerId:
    return PrivateKey.from_seed(bytes([i + 1]) * 32).peer_id


# --- limits ----------------------------------------------------------------------------


def test_limits_validate() -> None:
    with pytest.raises(ConfigError):
        Limits(max_connections=-1)
    Limits(max_connections=None, max_streams_per_connection=0)


def test_connection_limits_total_and_direction() -> None:
    lim = ResourceLimiter(Limits(max_connections=3, max_inbound_connections=2))
    a = lim.reserve(Direction.INBOUND)
    lim.reserve(Direction.INBOUND)
    with pytest.raises(ResourceLimitExceeded) as info:
        lim.reserve(Direction.INBOUND)
    assert info.value.limit == "max_inbound_connections"
    assert info.value.remote is False
    lim.reserve(Direction.OUTBOUND)
    with pytest.raises(ResourceLimitExceeded) as info:
        lim.reserve(Direction.OUTBOUND)
    assert info.value.limit == "max_connections"
    assert lim.rejected == {"max_inbound_connections": 1, "max_connections": 1}
    a.release()
    a.release()  # idempotent
    assert lim.connections == 2
    lim.reserve(Direction.INBOUND)


def test_connection_limits_per_peer() -> None:
    lim = ResourceLimiter(Limits(max_connections_per_peer=2))
    p = _peer()
    rs = [lim.reserve(Direction.OUTBOUND) for _ in range(3)]
    rs[0].set_peer(p)
    rs[1].set_peer(p)
    with pytest.raises(ResourceLimitExceeded) as info:
        rs[2].set_peer(p)
    assert info.value.limit == "max_connections_per_peer"
    assert lim.peer_count(p) == 2
    rs[0].release()
    assert lim.peer_count(p) == 1
    rs[2].set_peer(p)
    for r in rs:
        r.release()
    assert lim.peer_count(p) == 0
    assert lim.connections == 0


def test_stream_counter() -> None:
    sc = StreamCounter(
        Limits(
            max_streams_per_connection=4,
            max_inbound_streams_per_connection=3,
            max_negotiating_streams=2,
        )
    )
    assert sc.try_open_inbound(0) is None
    assert sc.try_open_inbound(1) is None
    assert sc.try_open_inbound(2) == "max_negotiating_streams"
    sc.negotiated()
    assert sc.try_open_inbound(2) is None
    assert sc.try_open_inbound(3) == "max_inbound_streams_per_connection"
    sc.handled()
    assert sc.try_open_inbound(4) == "max_streams_per_connection"
    sc.check_outbound(3)
    with pytest.raises(ResourceLimitExceeded) as info:
        sc.check_outbound(4)
    assert info.value.limit == "max_streams_per_connection"
    assert not info.value.remote
    assert sc.rejected == 3
    assert (sc.handling, sc.negotiating) == (2, 2)


# --- gater -----------------------------------------------------------------------------


def test_blocklist_gater() -> None:
    p, q = _peer(0), _peer(1)
    g = BlockList(peers=[p], networks=["10.0.0.0/8"])
    ok = Multiaddr("/ip4/127.0.0.1/tcp/1")
    bad = Multiaddr("/ip4/10.1.2.3/tcp/1")
    assert not g.allow_dial(p, ok)
    assert g.allow_dial(q, ok)
    assert not g.allow_dial(None, bad)
    assert not g.allow_accept(bad)
    assert g.allow_accept(ok)
    assert not g.allow_accept(Multiaddr("/ip6/::ffff:10.0.0.1/tcp/1"))  # v4-mapped
    assert not g.allow_secured("inbound", p)
    g.unblock_peer(p)
    g.block_network("::1")
    assert g.allow_secured("outbound", p)
    assert not g.allow_accept(Multiaddr("/ip6/::1/tcp/1"))
    g.unblock_network("10.0.0.0/8")
    assert g.allow_accept(bad)
    assert g.allow_accept(Multiaddr("/dns/example.com/tcp/1"))
    a = AllowAll()
    assert a.allow_dial(p, bad) and a.allow_accept(bad) and a.allow_secured("inbound", p)


# --- peerstore ---------------------------------------------------------------------------


def test_peerstore_addrs_bounded_and_deduplicated() -> None:
    ps = Peerstore(max_addrs=3)
    p = _peer()
    ps.add_addrs(p, [f"/ip4/127.0.0.1/tcp/{i}" for i in range(5)])
    assert [str(a) for a in ps.addrs(p)] == [f"/ip4/127.0.0.1/tcp/{i}" for i in (2, 3, 4)]
    ps.add_addrs(p, [Multiaddr(f"/ip4/127.0.0.1/tcp/2/p2p/{p}")])  # p2p suffix stripped
    assert [str(a) for a in ps.addrs(p)] == [f"/ip4/127.0.0.1/tcp/{i}" for i in (3, 4, 2)]
    ps.set_addrs(p, ["/ip6/::1/tcp/9"])
    assert ps.addrs(p) == [Multiaddr("/ip6/::1/tcp/9")]
    assert ps.addrs(_peer(5)) == []


def test_peerstore_keys_protocols_versions() -> None:
    ps = Peerstore(max_protocols=2, max_string=5)
    key = PrivateKey.from_seed(b"\x07" * 32)
    p = key.peer_id
    assert ps.public_key(p) == key.public_key  # inlined in an Ed25519 peer ID
    with pytest.raises(PeerIdMismatch):
        ps.add_public_key(_peer(9), key.public_key)
    ps.add_public_key(p, key.public_key)
    ps.set_protocols(p, ["/a", "", "x" * 2000, "/b", "/c"])
    assert ps.protocols(p) == ["/a", "/b"]
    assert ps.supports(p, ["/c", "/b", "/a"]) == ["/b", "/a"]
    ps.remove_protocols(p, ["/a"])
    ps.add_protocols(p, ["/d"])
    assert ps.protocols(p) == ["/b", "/d"]
    ps.set_agent_version(p, "go-libp2p/0.48")
    ps.set_protocol_version(p, "ipfs/0.1.0")
    info = ps.get(p)
    assert info is not None
    assert info.agent_version == "go-li"
    assert info.protocol_version == "ipfs/"
    assert info.public_key == key.public_key
    assert ps.get(_peer(3)) is None


def test_peerstore_evicts_unprotected_lru() -> None:
    ps = Peerstore(max_peers=3)
    peers = [_peer(i) for i in range(5)]
    ps.protect(peers[0])
    for p in peers[:3]:
        ps.add_addrs(p, ["/ip4/127.0.0.1/tcp/1"])
    ps.add_addrs(peers[3], ["/ip4/127.0.0.1/tcp/1"])
    assert peers[0] in ps  # protected
    assert peers[1] not in ps  # least recently updated unprotected one
    assert ps.evicted == 1
    ps.add_protocols(peers[2], ["/x"])  # touch
    ps.add_addrs(peers[4], ["/ip4/127.0.0.1/tcp/1"])
    assert set(ps.peers()) == {peers[0], peers[2], peers[4]}
    ps.unprotect(peers[0])
    ps.remove_peer(peers[0])
    assert len(ps) == 2


# --- the host over the in-memory transport ----------------------------------------------------

ECHO = "/test/echo/1.0.0"


async def echo_handler(stream: Stream) -> None:
    async for chunk in stream:
        await stream.write(chunk)
    await stream.close()


def mem_host(net: MemoryNetwork, seed: int, *, listen: bool = True, **config: Any) -> Host:
    cfg = HostConfig(transports=[MemoryTransport(net)], **config)
    return Host(
        PrivateKey.from_seed(bytes([seed]) * 32),
        listen_addrs=["/ip4/127.0.0.1/tcp/0"] if listen else (),
        config=cfg,
    )


@contextlib.asynccontextmanager
async def two_hosts(
    *,
    net: MemoryNetwork | None = None,
    a: dict[str, Any] | None = None,
    b: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[Host, Host]]:
    net = net or MemoryNetwork()
    async with mem_host(net, 1, **(a or {})) as ha, mem_host(net, 2, **(b or {})) as hb:
        ha.set_stream_handler(ECHO, echo_handler)
        hb.set_stream_handler(ECHO, echo_handler)
        ha.peerstore.add_addrs(hb.peer_id, hb.addrs)
        hb.peerstore.add_addrs(ha.peer_id, ha.addrs)
        yield ha, hb


async def echo(stream: Stream, payload: bytes) -> bytes:
    await stream.write(payload)
    await stream.close_write()
    out = bytearray()
    async for chunk in stream:
        out += chunk
    return bytes(out)


def host_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_host_lifecycle_and_addrs() -> None:
    net = MemoryNetwork()
    host = mem_host(net, 1)
    with pytest.raises(NodeStateError):
        await host.connect(PrivateKey.from_seed(b"\x05" * 32).peer_id)
    async with host:
        assert host.peer_id == PrivateKey.from_seed(b"\x01" * 32).peer_id
        (addr,) = host.addrs
        assert addr.to_socket_address().port > 40000
        more = await host.listen("/ip4/127.0.0.1/tcp/0")
        assert len(host.addrs) == 2 and more[0] in host.addrs
        with pytest.raises(NodeStateError) as info:
            await host.start()
        assert info.value.code == ErrorCode.NODE_ALREADY_STARTED
        with pytest.raises(ConnectError):
            await host.listen("/ip4/127.0.0.1/udp/1/quic-v1")
    assert not host_tasks()
    with pytest.raises(NodeStateError) as info:
        await host.new_stream(PrivateKey.from_seed(b"\x05" * 32).peer_id, ECHO)
    assert info.value.code == ErrorCode.NODE_STOPPED
    await host.close()  # idempotent


async def test_connect_new_stream_echo_and_protocol() -> None:
    async with two_hosts() as (ha, hb):
        seen: list[tuple[str, Any]] = []
        hb.add_connection_listener(
            lambda c: seen.append(("up", c.remote_peer)),
            lambda c: seen.append(("down", c.remote_peer)),
        )
        stream = await ha.new_stream(hb.peer_id, ["/nope/1.0.0", ECHO])
        assert stream.protocol == ECHO
        assert await echo(stream, b"hello host") == b"hello host"
        (conn,) = ha.connections()
        assert conn.remote_peer == hb.peer_id
        assert ha.connections(hb.peer_id) == [conn]
        assert ha.connection_for(hb.peer_id) is conn
        assert await ha.connect(hb.peer_id) is conn  # reused
        assert len(hb.connections(ha.peer_id)) == 1
        assert seen == [("up", ha.peer_id)]
        assert hb.peerstore.public_key(ha.peer_id) == ha.identity.public_key
        assert ha.peerstore.addrs(hb.peer_id) == hb.addrs
        assert sorted(ha.protocols) == [ECHO]
        await conn.close()
        for _ in range(100):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.01)
        assert hb.connections() == [] and ha.connections() == []
        assert seen == [("up", ha.peer_id), ("down", ha.peer_id)]
        # a new stream dials again
        stream = await ha.new_stream(hb.peer_id, ECHO)
        assert await echo(stream, b"again") == b"again"


async def test_connect_by_address_only() -> None:
    async with two_hosts() as (ha, hb):
        conn = await ha.connect(None, hb.addrs)
        assert conn.remote_peer == hb.peer_id
        # /p2p suffix names the peer; a wrong one fails the handshake check
        with pytest.raises(PeerIdMismatch):
            await ha.connect(
                None, [hb.addrs[0].with_p2p(PrivateKey.from_seed(b"\x09" * 32).peer_id)]
            )


async def test_lazy_dialer_data_after_protocol_is_kept() -> None:
    """B-08 through the host: bytes pipelined behind the protocol line reach the handler."""
    async with two_hosts() as (ha, hb):
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def first_read(stream: Stream) -> None:
            got.set_result(await stream.readexactly(5))
            await stream.close()

        hb.set_stream_handler("/lazy/1.0.0", first_read)
        conn = await ha.connect(hb.peer_id)
        stream = await conn.open_stream()
        sel = await select_protocol_lazy(stream, "/lazy/1.0.0", b"early")
        assert await asyncio.wait_for(got, 5) == b"early"
        await sel.confirm()
        await stream.close()


async def test_unknown_protocol_fails_negotiation() -> None:
    async with two_hosts() as (ha, hb):
        with pytest.raises(NegotiationFailed):
            await ha.new_stream(hb.peer_id, ["/a/1", "/b/1"])
        # the connection survives
        assert await echo(await ha.new_stream(hb.peer_id, ECHO), b"ok") == b"ok"


async def test_handler_exception_resets_stream_not_host() -> None:
    async with two_hosts() as (ha, hb):

        async def broken(stream: Stream) -> None:
            await stream.read()
            raise RuntimeError("handler bug")

        hb.set_stream_handler("/broken/1.0.0", broken)
        stream = await ha.new_stream(hb.peer_id, "/broken/1.0.0")
        await stream.write(b"x")
        with pytest.raises(StreamReset):
            while await stream.read():
                pass
        assert await echo(await ha.new_stream(hb.peer_id, ECHO), b"still up") == b"still up"


async def test_concurrent_connects_share_one_dial() -> None:
    async with two_hosts() as (ha, hb):
        conns = await asyncio.gather(*(ha.connect(hb.peer_id) for _ in range(10)))
        assert len({id(c) for c in conns}) == 1
        assert len(ha.connections()) == 1
        assert len(hb.connections()) == 1


async def test_connect_errors() -> None:
    net = MemoryNetwork()
    async with mem_host(net, 1) as ha:
        other = PrivateKey.from_seed(b"\x07" * 32).peer_id
        with pytest.raises(PeerNotFound):
            await ha.connect(other)
        with pytest.raises(ConnectError):
            await ha.connect(ha.peer_id, ha.addrs)
        with pytest.raises(ConnectError):  # nothing listens there
            await ha.connect(other, ["/ip4/127.0.0.1/tcp/9"])
        with pytest.raises(ConnectError) as info:
            await ha.connect(other, ["/ip4/127.0.0.1/tcp/9", "/ip4/127.0.0.1/tcp/10"])
        assert len(info.value.errors) == 2
        with pytest.raises(ConnectError):
            await ha.connect(other, ["/ip4/127.0.0.1/udp/9/quic-v1"])


async def test_dial_timeout_and_cancellation_leave_nothing_behind() -> None:
    """C10: a dial to a peer that never answers times out; a cancelled dial stops."""
    net = MemoryNetwork()
    silent: list[Any] = []
    await net.listen(7, silent.append)  # accepts, never speaks
    async with mem_host(net, 1, listen=False, dial_address_timeout=0.2) as ha:
        before = host_tasks()
        other = PrivateKey.from_seed(b"\x07" * 32).peer_id
        with pytest.raises(ConnectTimeout):
            await ha.connect(other, ["/ip4/127.0.0.1/tcp/7"])
        task = asyncio.ensure_future(ha.connect(other, ["/ip4/127.0.0.1/tcp/7"]))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.01)
        assert host_tasks() == before
        assert ha.limiter.connections == 0
        for raw in silent:
            assert raw.is_closing()


async def test_cancel_one_waiter_keeps_shared_dial() -> None:
    async with two_hosts() as (ha, hb):
        first = asyncio.ensure_future(ha.connect(hb.peer_id))
        second = asyncio.ensure_future(ha.connect(hb.peer_id))
        await asyncio.sleep(0)
        first.cancel()
        conn = await asyncio.wait_for(second, 5)
        assert conn.remote_peer == hb.peer_id
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_cancel_during_handshake() -> None:
    """Cancel connect() while the Noise handshake is in flight (trickled bytes)."""
    net = MemoryNetwork(trickle=True)
    async with two_hosts(net=net) as (ha, hb):
        before = host_tasks()
        task = asyncio.ensure_future(ha.connect(hb.peer_id))
        for _ in range(200):
            await asyncio.sleep(0)
            if hb.upgrader.pending_inbound:
                break
        assert hb.upgrader.pending_inbound == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if host_tasks() == before and not hb.upgrader.pending_inbound:
                break
            await asyncio.sleep(0.01)
        assert host_tasks() == before
        assert not ha.connections() and not hb.connections()
        assert ha.limiter.connections == 0 and hb.limiter.connections == 0


async def test_gater_on_accept_dial_and_secured() -> None:
    gate_b = BlockList()
    gate_a = BlockList()
    async with two_hosts(a={"gater": gate_a}, b={"gater": gate_b}) as (ha, hb):
        # by peer, once secured (inbound side). The dialer finishes Noise one message
        # before the listener does, so its connect() may succeed; the connection then dies.
        gate_b.block_peer(ha.peer_id)
        try:
            conn = await ha.connect(hb.peer_id)
        except (ConnectionLost, ConnectError):
            pass
        else:
            await asyncio.wait_for(conn.wait_closed(), 5)
        assert not hb.connections()
        gate_b.unblock_peer(ha.peer_id)
        # by address, on accept (memory connections come from 127.0.0.1)
        gate_b.block_network("127.0.0.0/8")
        with pytest.raises(ConnectionLost):
            await ha.connect(hb.peer_id)
        assert hb.refused_inbound == {"gater": 1}
        gate_b.unblock_network("127.0.0.0/8")
        # dialing side
        gate_a.block_peer(hb.peer_id)
        with pytest.raises(PeerBlacklisted) as info:
            await ha.connect(hb.peer_id)
        assert info.value.permanent
        gate_a.unblock_peer(hb.peer_id)
        assert (await ha.connect(hb.peer_id)).remote_peer == hb.peer_id


async def test_connection_limits_typed_errors() -> None:
    net = MemoryNetwork()
    limits = Limits(max_connections=1)
    async with (
        mem_host(net, 1, limits=limits) as ha,
        mem_host(net, 2) as hb,
        mem_host(net, 3) as hc,
    ):
        await ha.connect(hb.peer_id, hb.addrs)
        with pytest.raises(ResourceLimitExceeded) as info:
            await ha.connect(hc.peer_id, hc.addrs)
        assert info.value.limit == "max_connections"
        assert info.value.remote is False
        # inbound over the limit is refused before the upgrade
        with pytest.raises((ConnectionLost, ConnectError)):
            await hc.connect(ha.peer_id, ha.addrs)
        assert ha.refused_inbound == {"max_connections": 1}


async def test_stream_limits_local_and_remote() -> None:
    hold = asyncio.Event()

    async def holding(stream: Stream) -> None:
        await hold.wait()
        await stream.close()

    async with two_hosts(
        a={"limits": Limits(max_streams_per_connection=3)},
        b={"limits": Limits(max_inbound_streams_per_connection=2)},
    ) as (ha, hb):
        hb.set_stream_handler("/hold/1.0.0", holding)
        s1 = await ha.new_stream(hb.peer_id, "/hold/1.0.0")
        s2 = await ha.new_stream(hb.peer_id, "/hold/1.0.0")
        # B refuses a third concurrent inbound stream: remote limit
        with pytest.raises(ResourceLimitExceeded) as info:
            await ha.new_stream(hb.peer_id, "/hold/1.0.0")
        assert info.value.remote is True
        s3 = await ha.connect(hb.peer_id)
        extra = await s3.open_stream()  # raw stream counts towards A's own limit
        with pytest.raises(ResourceLimitExceeded) as info:
            await ha.new_stream(hb.peer_id, ECHO)
        assert info.value.limit == "max_streams_per_connection"
        assert info.value.remote is False
        extra.reset()
        hold.set()
        for s in (s1, s2):
            await s.close()
        assert await echo(await ha.new_stream(hb.peer_id, ECHO), b"ok") == b"ok"


async def test_negotiation_timeout_on_inbound_stream() -> None:
    async with two_hosts(b={"negotiate_timeout": 0.1}) as (ha, hb):
        conn = await ha.connect(hb.peer_id)
        stream = await conn.open_stream()  # never negotiates
        with pytest.raises(StreamReset):
            while await asyncio.wait_for(stream.read(), 5):
                pass


async def test_close_with_live_streams_leaves_nothing() -> None:
    net = MemoryNetwork()
    before = host_tasks()
    ha, hb = mem_host(net, 1), mem_host(net, 2)
    await ha.start()
    await hb.start()
    hb.set_stream_handler(ECHO, echo_handler)
    streams = [await ha.new_stream(hb.peer_id, ECHO, addrs=hb.addrs) for _ in range(5)]
    await hb.close()  # handlers cancelled, GoAway, streams reset on A
    for s in streams:
        with pytest.raises(StreamReset):
            await s.write(b"x")
            await asyncio.wait_for(s.read(), 5)
    await ha.close()
    assert host_tasks() == before


async def test_close_cancelled_still_cleans_up() -> None:
    """C10: cancelling close() itself still leaves no task behind."""
    before = host_tasks()
    net = MemoryNetwork()
    ha, hb = mem_host(net, 1), mem_host(net, 2)
    await ha.start()
    await hb.start()
    hb.set_stream_handler(ECHO, echo_handler)
    await ha.new_stream(hb.peer_id, ECHO, addrs=hb.addrs)
    closing = asyncio.ensure_future(ha.close())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await hb.close()
    await ha.close()
    assert host_tasks() == before


async def test_spawn_is_owned_and_guarded() -> None:
    async with two_hosts() as (ha, _):

        async def boom() -> None:
            raise RuntimeError("service bug")

        forever = asyncio.Event()

        async def wait_forever() -> None:
            await forever.wait()

        t1 = ha.spawn(boom())
        t2 = ha.spawn(wait_forever())
        await asyncio.sleep(0.01)
        assert t1.done() and t1.exception() is None  # logged, not propagated
        assert not t2.done()
    assert t2.cancelled()


async def test_full_stack_one_byte_at_a_time() -> None:
    """Every layer (multistream, Noise, yamux, stream negotiation) fed 1 byte per read."""
    async with two_hosts(net=MemoryNetwork(trickle=True)) as (ha, hb):
        stream = await ha.new_stream(hb.peer_id, ["/nope/1.0.0", ECHO])
        assert await echo(stream, b"trickle" * 20) == b"trickle" * 20


async def test_dialing_own_address_is_refused() -> None:
    async with two_hosts() as (ha, _):
        with pytest.raises(ConnectError):
            await ha.connect(None, ha.addrs)
        assert not ha.connections()


def test_per_ip_cap_exemptions() -> None:
    lim = Limits()
    assert not lim.per_ip_capped("127.0.0.1")
    assert not lim.per_ip_capped("::1")
    assert not lim.per_ip_capped("::ffff:127.0.0.5")
    assert not lim.per_ip_capped("memory")
    assert lim.per_ip_capped("192.0.2.7")
    assert lim.per_ip_capped("fe80::1%eth0")
    assert Limits(per_ip_exempt=()).per_ip_capped("127.0.0.1")
    assert not Limits(per_ip_exempt=("192.0.2.0/24",)).per_ip_capped("192.0.2.7")
    with pytest.raises(ConfigError):
        Limits(per_ip_exempt=("not a network",))


async def test_spawned_task_cancelled_before_it_runs_leaves_no_unawaited_coroutine() -> None:
    # Warnings are errors in this suite: an unawaited coroutine would fail the test at GC.
    async with Host(PrivateKey.generate()) as host:

        async def work() -> None:
            await asyncio.sleep(10)

        task = host.spawn(work())
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    gc.collect()
