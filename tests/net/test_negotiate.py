"""multistream-select drivers over raw connections, secured connections and stream-like objects."""

from __future__ import annotations

import asyncio

import pytest

from glueberry.errors import (
    ConnectionLost,
    HandshakeTimeout,
    NegotiationFailed,
    RemoteProtocolError,
)
from glueberry.net.negotiate import (
    LazyConnection,
    handle_protocol,
    select_protocol,
    select_protocol_lazy,
)
from glueberry.net.secure import secure_inbound, secure_outbound
from glueberry.proto.multistream import MAX_FAILED_PROPOSALS, encode_message
from glueberry.transport.memory import MemoryConnection, memory_pair
from glueberry.wire.identity import PrivateKey

HEADER = encode_message("/multistream/1.0.0")


@pytest.mark.parametrize("trickle", [False, True])
async def test_select_and_handle(trickle: bool) -> None:
    a, b = memory_pair(trickle=trickle)
    (d_proto, d_trail), (l_proto, l_trail) = await asyncio.gather(
        select_protocol(a, ["/tls/1.0.0", "/noise"], timeout=5),
        handle_protocol(b, {"/noise"}, timeout=5),
    )
    assert d_proto == l_proto == "/noise"
    assert d_trail == l_trail == b""
    a.abort()


async def test_trailing_bytes_are_returned() -> None:
    """B-08: data pipelined right after the proposal comes back as trailing bytes."""
    a, b = memory_pair()
    a.write(HEADER + encode_message("/echo/1.0.0") + b"app data")
    proto, trailing = await handle_protocol(b, ["/echo/1.0.0"], timeout=5)
    assert proto == "/echo/1.0.0"
    assert trailing == b"app data"
    expected = HEADER + encode_message("/echo/1.0.0")
    got = b""
    while len(got) < len(expected):
        got += await a.read()
    assert got == expected
    a.abort()


async def test_listener_trailing_data_from_dialer() -> None:
    """The listener's echo and its first protocol bytes reach the dialer in one chunk."""
    a, b = memory_pair()
    b.write(HEADER + encode_message("/x") + b"hello")
    proto, trailing = await select_protocol(a, ["/x"], timeout=5)
    assert (proto, trailing) == ("/x", b"hello")
    a.abort()


async def test_no_common_protocol() -> None:
    a, b = memory_pair()
    listener = asyncio.create_task(handle_protocol(b, {"/noise"}, timeout=5))
    with pytest.raises(NegotiationFailed):
        await select_protocol(a, ["/tls/1.0.0", "/plaintext/2.0.0"], timeout=5)
    a.abort()
    with pytest.raises(ConnectionLost):
        await listener


async def test_refusal_cap() -> None:
    a, b = memory_pair()
    a.write(HEADER + b"".join(encode_message(f"/p/{k}") for k in range(100)))
    with pytest.raises(RemoteProtocolError):
        await handle_protocol(b, {"/noise"}, timeout=5)
    reply = await a.read()
    assert reply.count(b"\x03na\n") <= MAX_FAILED_PROPOSALS
    a.abort()


async def test_timeout() -> None:
    a, b = memory_pair()
    with pytest.raises(HandshakeTimeout):
        await select_protocol(a, ["/noise"], timeout=0.05)
    a.abort()
    a, b = memory_pair()
    a.write(HEADER)
    with pytest.raises(HandshakeTimeout):
        await handle_protocol(b, ["/noise"], timeout=0.05)
    a.abort()


async def test_eof_during_negotiation() -> None:
    a, b = memory_pair()
    a.write(HEADER)
    a.close()
    with pytest.raises(ConnectionLost):
        await handle_protocol(b, ["/noise"], timeout=5)


async def test_garbage_is_a_protocol_error() -> None:
    a, b = memory_pair()
    a.write(b"\xff\xff\xff\xff")
    with pytest.raises(RemoteProtocolError):
        await handle_protocol(b, ["/noise"], timeout=5)
    a.abort()


class StreamLike:
    """A muxed-stream stand-in: ``async write``, ``read(max_bytes=-1)``."""

    def __init__(self, conn: MemoryConnection) -> None:
        self.conn = conn
        self.writes = 0

    async def read(self, max_bytes: int = -1) -> bytes:
        return await self.conn.read()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        self.conn.write(data)
        await asyncio.sleep(0)


async def test_stream_with_async_write() -> None:
    a, b = memory_pair()
    sa, sb = StreamLike(a), StreamLike(b)
    (p1, _), (p2, _) = await asyncio.gather(
        select_protocol(sa, ["/ipfs/id/1.0.0"], timeout=5),
        handle_protocol(sb, lambda p: p.startswith("/ipfs/"), timeout=5),
    )
    assert p1 == p2 == "/ipfs/id/1.0.0"
    assert sa.writes == 1  # header and proposal in one write
    a.abort()


async def test_lazy_selection() -> None:
    a, b = memory_pair()
    sel = await select_protocol_lazy(a, "/echo/1.0.0", b"ping")
    a.write(b" and more")
    proto, trailing = await handle_protocol(b, ["/echo/1.0.0"], timeout=5)
    assert proto == "/echo/1.0.0"
    while len(trailing) < len(b"ping and more"):
        trailing += await b.read()
    assert trailing == b"ping and more"
    b.write(b"pong")
    reply = await sel.confirm(timeout=5)
    while len(reply) < 4:
        reply += await a.read()
    assert reply == b"pong"
    assert sel.protocol == "/echo/1.0.0"
    a.abort()


async def test_lazy_selection_refused() -> None:
    a, b = memory_pair()
    sel = await select_protocol_lazy(a, "/echo/1.0.0", b"ping")
    listener = asyncio.create_task(handle_protocol(b, ["/other"], timeout=5))
    with pytest.raises(NegotiationFailed):
        await sel.confirm(timeout=5)
    a.abort()
    # The listener took "ping" for a malformed message, or saw the connection end.
    with pytest.raises((RemoteProtocolError, ConnectionLost)):
        await listener


async def test_full_upgrade_pipeline() -> None:
    """mss (security) -> Noise without early muxer -> mss (muxer) over the secured channel."""
    alice, bob = PrivateKey.from_seed(b"A" * 32), PrivateKey.from_seed(b"B" * 32)
    a, b = memory_pair(max_chunk=5)

    async def dialer() -> tuple[str, bytes]:
        proto, trailing = await select_protocol(a, ["/tls/1.0.0", "/noise"], timeout=5)
        assert proto == "/noise" and trailing == b""
        conn = await secure_outbound(a, alice, bob.peer_id, (), 5)
        assert conn.early_muxer is None
        result = await select_protocol(conn, ["/yamux/1.0.0"], timeout=5)
        conn.write(b"muxed data")
        return result

    async def listener() -> tuple[str, bytes]:
        proto, trailing = await handle_protocol(b, ["/noise"], timeout=5)
        assert proto == "/noise" and trailing == b""
        conn = await secure_inbound(b, bob, (), 5)
        proto, trailing = await handle_protocol(conn, ["/yamux/1.0.0"], timeout=5)
        while len(trailing) < 10:
            trailing += await conn.read()
        return proto, trailing

    d, lst = await asyncio.gather(dialer(), listener())
    assert d == ("/yamux/1.0.0", b"")
    assert lst == ("/yamux/1.0.0", b"muxed data")
    a.abort()


# --- LazyConnection: 0-RTT selection of the protocol that runs on a raw connection -----------


@pytest.mark.parametrize("trickle", [False, True])
async def test_lazy_connection_pipelines_and_confirms(trickle: bool) -> None:
    a, b = memory_pair(trickle=trickle)
    lazy = LazyConnection(a, "/noise")
    lazy.write(b"hello")  # the proposal rides in front of the first write
    proto, trailing = await handle_protocol(b, ["/noise"], timeout=5)
    assert proto == "/noise"
    got = trailing
    while len(got) < 5:
        got += await asyncio.wait_for(b.read(), 5)
    assert got == b"hello"
    b.write(b"world")  # the listener's answer and its first bytes
    reply = b""
    while len(reply) < 5:
        reply += await asyncio.wait_for(lazy.read(), 5)
    assert reply == b"world"
    # Confirmed: reads and writes go straight to the inner connection.
    assert lazy.read == a.read and lazy.write == a.write and lazy.abort == a.abort
    a.abort()


async def test_lazy_connection_reading_first_sends_the_proposal() -> None:
    a, b = memory_pair()
    lazy = LazyConnection(a, "/tls/1.0.0")
    reader = asyncio.ensure_future(lazy.read())
    proto, _ = await handle_protocol(b, ["/tls/1.0.0"], timeout=5)
    assert proto == "/tls/1.0.0"
    b.write(b"server speaks first")
    assert await asyncio.wait_for(reader, 5) == b"server speaks first"
    a.abort()


async def test_lazy_connection_refused() -> None:
    a, b = memory_pair()
    lazy = LazyConnection(a, "/noise")
    lazy.write(b"\x00\x20" + bytes(32))
    b.write(HEADER + encode_message("na"))
    with pytest.raises(NegotiationFailed):
        await asyncio.wait_for(lazy.read(), 5)
    a.abort()


async def test_lazy_connection_dropped_before_the_answer() -> None:
    a, b = memory_pair()
    lazy = LazyConnection(a, "/noise")
    lazy.write(b"x")
    b.abort()
    with pytest.raises(ConnectionLost, match="0-RTT proposal"):
        await asyncio.wait_for(lazy.read(), 5)
