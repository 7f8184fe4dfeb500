"""Raw transports: TCP (IPv4, IPv6) and the in-memory pipe, through one RawConnection suite."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from glueberry.errors import ConnectError, ConnectionLost, ConnectTimeout, LocalProtocolError
from glueberry.transport import tcp
from glueberry.transport.base import RawConnection
from glueberry.transport.memory import MemoryConnection, MemoryNetwork, memory_pair
from glueberry.transport.tcp import TcpConnection, TcpListener

Pair = tuple[Any, Any]


async def _tcp_pair(host: str) -> tuple[TcpConnection, TcpConnection, TcpListener]:
    accepted: asyncio.Future[TcpConnection] = asyncio.get_running_loop().create_future()
    listener = await TcpListener.create(host, 0, accepted.set_result)
    port = listener.addresses[0][1]
    client = await tcp.dial(host, port, timeout=5)
    server = await asyncio.wait_for(accepted, 5)
    return client, server, listener


@pytest.fixture(params=["tcp4", "tcp6", "memory"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    a: RawConnection
    b: RawConnection
    listener: TcpListener | None = None
    if request.param == "memory":
        a, b = memory_pair()
    else:
        a, b, listener = await _tcp_pair("127.0.0.1" if request.param == "tcp4" else "::1")
    try:
        yield a, b
    finally:
        for c in (a, b):
            c.abort()
        for c in (a, b):
            await asyncio.wait_for(c.wait_closed(), 5)
        if listener is not None:
            await listener.wait_closed()
        gc.collect()  # an unclosed socket would raise ResourceWarning (an error here)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.events.append(bytes(data))

    def eof_received(self) -> None:
        self.events.append("eof")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append(("lost", exc))
        self.lost.set_result(exc)

    @property
    def data(self) -> bytes:
        return b"".join(e for e in self.events if isinstance(e, bytes))


async def read_n(conn: RawConnection, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await asyncio.wait_for(conn.read(), 5)
        assert chunk, "unexpected EOF"
        buf += chunk
    return bytes(buf)


async def test_is_raw_connection(pair: Pair) -> None:
    a, b = pair
    assert isinstance(a, RawConnection)
    assert isinstance(b, RawConnection)
    assert a.local_address == b.remote_address
    assert a.remote_address == b.local_address
    assert a.transport_name in ("tcp", "memory")


async def test_pull_roundtrip(pair: Pair) -> None:
    a, b = pair
    a.write(b"hello ")
    a.write(memoryview(b"world"))
    await a.drain()
    assert await read_n(b, 11) == b"hello world"
    b.write(bytearray(b"back"))
    assert await read_n(a, 4) == b"back"


async def test_push_mode_replays_buffer_then_streams(pair: Pair) -> None:
    a, b = pair
    a.write(b"early")
    await asyncio.sleep(0.05)  # let it be buffered in pull mode
    rec = Recorder()
    b.set_receiver(rec)
    assert rec.data == b"early"
    a.write(b"late")
    a.close()
    await asyncio.wait_for(rec.lost, 5)
    assert rec.data == b"earlylate"
    assert rec.events[-2:] == ["eof", ("lost", None)]
    with pytest.raises(LocalProtocolError):
        await b.read()
    with pytest.raises(LocalProtocolError):
        b.set_receiver(Recorder())


async def test_receiver_set_after_eof_gets_everything_in_order(pair: Pair) -> None:
    a, b = pair
    a.write(b"bye")
    a.close()
    await asyncio.wait_for(b.wait_closed(), 5)
    rec = Recorder()
    b.set_receiver(rec)
    assert rec.events == [b"bye", "eof", ("lost", None)]


async def test_close_flushes_then_eof(pair: Pair) -> None:
    a, b = pair
    payload = bytes(range(256)) * 4096  # 1 MiB
    a.write(payload)
    a.close()
    assert a.is_closing()
    assert await read_n(b, len(payload)) == payload
    assert await asyncio.wait_for(b.read(), 5) == b""
    await asyncio.wait_for(a.wait_closed(), 5)
    with pytest.raises(ConnectionLost):
        a.write(b"x")
    # a locally closed connection reads as EOF
    assert await a.read() == b""


async def test_backpressure_reaches_drain(pair: Pair) -> None:
    a, b = pair
    b.pause_reading()
    chunk = b"\0" * (1 << 20)
    blocked = False
    written = 0
    for _ in range(64):
        a.write(chunk)
        written += len(chunk)
        try:
            await asyncio.wait_for(a.drain(), 0.05)
        except TimeoutError:
            blocked = True
            break
    assert blocked, "drain() never waited although the reader was paused"
    drain = asyncio.ensure_future(a.drain())
    await asyncio.sleep(0.02)
    assert not drain.done()
    b.resume_reading()
    got = 0
    while got < written:
        got += len(await asyncio.wait_for(b.read(), 5))
    await asyncio.wait_for(drain, 5)
    assert got == written


async def test_pause_reading_in_push_mode_stops_delivery(pair: Pair) -> None:
    a, b = pair
    rec = Recorder()
    b.set_receiver(rec)
    b.pause_reading()
    a.write(b"held")
    await asyncio.sleep(0.05)
    assert rec.data == b""
    b.resume_reading()
    for _ in range(100):
        if rec.data == b"held":
            break
        await asyncio.sleep(0.01)
    assert rec.data == b"held"


async def test_drain_raises_after_loss(pair: Pair) -> None:
    a, b = pair
    b.abort()
    await asyncio.wait_for(b.wait_closed(), 5)
    # the peer's loss is seen on the next read
    for _ in range(100):
        try:
            if await asyncio.wait_for(a.read(), 5) == b"":
                break
        except ConnectionLost:
            break
    await asyncio.wait_for(a.wait_closed(), 5)
    with pytest.raises(ConnectionLost):
        await a.drain()


async def test_concurrent_read_is_refused(pair: Pair) -> None:
    a, _ = pair
    first = asyncio.ensure_future(a.read())
    await asyncio.sleep(0)
    with pytest.raises(LocalProtocolError):
        await a.read()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    # a cancelled read leaves the connection usable
    # (nothing was consumed)


async def test_cancelled_read_keeps_data(pair: Pair) -> None:
    a, b = pair
    reader = asyncio.ensure_future(b.read())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    a.write(b"kept")
    assert await read_n(b, 4) == b"kept"


# --- TCP specifics ----------------------------------------------------------------------


async def test_tcp_nodelay_and_addresses() -> None:
    import socket

    client, server, listener = await _tcp_pair("127.0.0.1")
    try:
        sock = client._transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert client.remote_address == listener.addresses[0]
        assert server.local_address == listener.addresses[0]
    finally:
        client.abort()
        server.abort()
        await client.wait_closed()
        await server.wait_closed()
        await listener.wait_closed()


async def test_tcp_dial_refused() -> None:
    async with await TcpListener.create("127.0.0.1", 0, lambda c: c.abort()) as listener:
        port = listener.addresses[0][1]
    with pytest.raises(ConnectError) as info:
        await tcp.dial("127.0.0.1", port, timeout=5)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.retriable


async def test_tcp_dial_timeout() -> None:
    async with await TcpListener.create("127.0.0.1", 0, lambda c: c.abort()) as listener:
        with pytest.raises(ConnectTimeout):
            await tcp.dial("127.0.0.1", listener.addresses[0][1], timeout=0)
    gc.collect()


async def test_tcp_listen_in_use() -> None:
    async with await TcpListener.create("127.0.0.1", 0, lambda c: c.abort()) as listener:
        port = listener.addresses[0][1]
        with pytest.raises(ConnectError):
            # reuse_address does not allow two listeners on one port on Linux
            await TcpListener.create("127.0.0.1", port, lambda c: c.abort())


async def test_tcp_many_connections_close_cleanly() -> None:
    conns: list[TcpConnection] = []
    async with await TcpListener.create("127.0.0.1", 0, conns.append) as listener:
        port = listener.addresses[0][1]
        clients = [await tcp.dial("127.0.0.1", port, timeout=5) for _ in range(20)]
        for _ in range(100):
            if len(conns) == 20:
                break
            await asyncio.sleep(0.01)
        assert len(conns) == 20
        for c in clients:
            c.close()
        for s in conns:
            assert await asyncio.wait_for(s.read(), 5) == b""
            await asyncio.wait_for(s.wait_closed(), 5)
        for c in clients:
            await asyncio.wait_for(c.wait_closed(), 5)
    gc.collect()


# --- memory specifics -------------------------------------------------------------------


async def test_memory_trickle_delivers_one_byte_at_a_time() -> None:
    a, b = memory_pair(trickle=True)
    rec = Recorder()
    b.set_receiver(rec)
    a.write(b"abcdef")
    a.write(b"gh")
    a.close()
    await asyncio.wait_for(rec.lost, 5)
    chunks = [e for e in rec.events if isinstance(e, bytes)]
    assert chunks == [bytes([c]) for c in b"abcdefgh"]
    assert rec.events[-2:] == ["eof", ("lost", None)]


async def test_memory_drop_after() -> None:
    a, b = memory_pair(drop_after=10)
    a.write(b"0123456")
    assert await read_n(b, 7) == b"0123456"
    b.write(b"abcdef")  # 3 more bytes fit, then the pipe breaks
    assert await read_n(a, 3) == b"abc"
    with pytest.raises(ConnectionLost):
        await a.read()
    with pytest.raises(ConnectionLost):
        await b.read()
    with pytest.raises(ConnectionLost):
        a.write(b"x")


async def test_memory_abort_resets_peer() -> None:
    a, b = memory_pair()
    rec = Recorder()
    b.set_receiver(rec)
    a.write(b"never")
    a.abort()
    exc = await asyncio.wait_for(rec.lost, 5)
    assert isinstance(exc, ConnectionResetError)
    assert rec.data == b""


async def test_memory_network_listen_dial() -> None:
    net = MemoryNetwork()
    accepted: list[MemoryConnection] = []
    listener = await net.listen(0, accepted.append)
    port = listener.addresses[0][1]
    with pytest.raises(ConnectError):
        await net.listen(port, accepted.append)
    conn = await net.dial(port)
    assert len(accepted) == 1
    assert conn.remote_address == ("memory", port)
    assert accepted[0].local_address == ("memory", port)
    conn.write(b"ping")
    assert await read_n(accepted[0], 4) == b"ping"
    listener.close()
    with pytest.raises(ConnectError):
        await net.dial(port)
    assert net.refused == 1
    conn.close()
    assert await accepted[0].read() == b""


async def test_memory_network_knobs_apply_to_dials() -> None:
    net = MemoryNetwork(drop_after=4)
    accepted: list[MemoryConnection] = []
    listener = await net.listen(7, accepted.append)
    conn = await net.dial(7)
    conn.write(b"abcdef")
    assert await read_n(accepted[0], 4) == b"abcd"
    with pytest.raises(ConnectionLost):
        await accepted[0].read()
    listener.close()


# --- multiaddr front ends -----------------------------------------------------------------


async def test_tcp_transport_multiaddrs() -> None:
    from glueberry.transport.tcp import TcpTransport
    from glueberry.wire.multiaddr import Multiaddr

    t = TcpTransport()
    assert t.can_dial(
        Multiaddr("/ip4/127.0.0.1/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA")
    )
    assert t.can_dial(Multiaddr("/dns4/localhost/tcp/1"))
    assert not t.can_dial(Multiaddr("/ip4/127.0.0.1/udp/1/quic-v1"))
    assert not t.can_listen(Multiaddr("/dns4/localhost/tcp/1"))
    accepted: list[TcpConnection] = []
    for listen in ("/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0"):
        async with await t.listen(Multiaddr(listen), accepted.append) as listener:
            (ma,) = listener.multiaddrs
            assert ma.to_socket_address().port != 0
            conn = await t.dial(ma, timeout=5)
            assert t.to_multiaddr(conn.remote_address) == ma
            conn.close()
            await conn.wait_closed()
    # a /dns4 name resolves (to 127.0.0.1 here)
    async with await t.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), accepted.append) as listener:
        port = listener.multiaddrs[0].to_socket_address().port
        conn = await t.dial(Multiaddr(f"/dns4/localhost/tcp/{port}"), timeout=5)
        assert conn.remote_address == ("127.0.0.1", port)
        conn.close()
        await conn.wait_closed()
    for c in accepted:
        c.abort()
        await c.wait_closed()
    gc.collect()


async def test_memory_transport_multiaddrs() -> None:
    from glueberry.transport.memory import MemoryTransport
    from glueberry.wire.multiaddr import Multiaddr

    t = MemoryTransport(MemoryNetwork())
    accepted: list[MemoryConnection] = []
    listener = await t.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), accepted.append)
    (ma,) = listener.multiaddrs
    conn = await t.dial(ma, timeout=None)
    assert t.to_multiaddr(conn.remote_address) == ma
    assert conn.transport_name == "memory"
    conn.write(b"x")
    assert await read_n(accepted[0], 1) == b"x"
    listener.close()
