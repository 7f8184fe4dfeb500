"""The zero-copy receive path: TCP receive buffer -> Noise ``decrypt_into`` -> yamux.

performance.md 3: a socket read must not allocate per chunk. The TCP transport reads into one
buffer per thread and lends a ``memoryview`` of it to receivers that opt in
(``receives_memoryview = True``); the Noise layer decrypts into a second per-thread buffer and
lends that on to a receiver that opts in (the yamux driver). These tests check that nothing
downstream keeps such a view: every lent buffer is overwritten right after the call, and the
data must still arrive intact.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from glueberry.net import secure as secure_mod
from glueberry.net.muxer import YamuxConnection, YamuxStream
from glueberry.net.secure import NoiseConnection, secure_inbound, secure_outbound
from glueberry.proto.yamux import YamuxSession
from glueberry.transport import tcp
from glueberry.transport.memory import memory_pair
from glueberry.transport.tcp import TcpConnection, TcpListener
from glueberry.wire.identity import PrivateKey

ALICE = PrivateKey.from_seed(b"a" * 32)
BOB = PrivateKey.from_seed(b"b" * 32)


class Plain:
    """A receiver that did not opt in: must get ``bytes``."""

    def __init__(self) -> None:
        self.chunks: list[Any] = []
        self.eof = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def eof_received(self) -> None:
        self.eof.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.eof.done():
            self.eof.set_result(None)


class Borrower(Plain):
    """Opts in; copies what it gets, then scribbles over the lent buffer."""

    receives_memoryview = True

    def __init__(self) -> None:
        super().__init__()
        self.types: set[type] = set()
        #: Sizes of the plaintexts that came as ``bytes`` rather than borrowed.
        self.fresh: list[int] = []

    def data_received(self, data: bytes) -> None:
        self.types.add(type(data))
        if type(data) is bytes:
            self.fresh.append(len(data))
        self.chunks.append(bytes(data))
        if isinstance(data, memoryview) and not data.readonly:
            data[:] = b"\xee" * len(data)  # whoever kept a reference now sees garbage


@pytest.fixture
async def tcp_pair() -> AsyncIterator[tuple[TcpConnection, TcpConnection]]:
    accepted: asyncio.Future[TcpConnection] = asyncio.get_running_loop().create_future()
    listener = await TcpListener.create("127.0.0.1", 0, accepted.set_result)
    client = await tcp.dial("127.0.0.1", listener.addresses[0][1], timeout=5)
    server = await asyncio.wait_for(accepted, 5)
    try:
        yield client, server
    finally:
        for c in (client, server):
            c.abort()
        for c in (client, server):
            await asyncio.wait_for(c.wait_closed(), 5)
        await listener.wait_closed()
        gc.collect()


@pytest.mark.parametrize("receiver_type", [Plain, Borrower])
async def test_tcp_lends_views_only_to_receivers_that_opt_in(
    tcp_pair: tuple[TcpConnection, TcpConnection], receiver_type: type[Plain]
) -> None:
    a, b = tcp_pair
    rec = receiver_type()
    b.set_receiver(rec)
    payload = os.urandom(3 * tcp.RECV_BUFFER_SIZE + 12345)
    for i in range(0, len(payload), 50_000):
        a.write(payload[i : i + 50_000])
    a.close()
    await asyncio.wait_for(rec.eof, 10)
    assert b"".join(bytes(c) for c in rec.chunks) == payload
    if receiver_type is Plain:
        assert {type(c) for c in rec.chunks} == {bytes}
    else:
        # Borrowed, except the plaintext of a small read (SMALL_READ: a lone short frame).
        assert isinstance(rec, Borrower) and memoryview in rec.types
        assert all(n <= secure_mod.SMALL_READ for n in rec.fresh)


async def test_tcp_pull_mode_gets_owned_bytes(
    tcp_pair: tuple[TcpConnection, TcpConnection],
) -> None:
    a, b = tcp_pair
    a.write(b"first")
    first = await asyncio.wait_for(b.read(), 5)
    a.write(b"x" * 1000)  # reuses the receive buffer
    second = b""
    while len(second) < 1000:
        second += await asyncio.wait_for(b.read(), 5)
    assert type(first) is bytes and first == b"first"
    assert second == b"x" * 1000


async def _secured_tcp(
    pair: tuple[TcpConnection, TcpConnection],
) -> tuple[NoiseConnection, NoiseConnection]:
    a, b = pair
    return await asyncio.gather(
        secure_outbound(a, ALICE, BOB.peer_id, (), 5), secure_inbound(b, BOB, (), 5)
    )


@pytest.mark.parametrize("receiver_type", [Plain, Borrower])
async def test_noise_decrypts_in_place_for_receivers_that_opt_in(
    tcp_pair: tuple[TcpConnection, TcpConnection], receiver_type: type[Plain]
) -> None:
    c, s = await _secured_tcp(tcp_pair)
    rec = receiver_type()
    s.set_receiver(rec)
    # Small and large writes, so reads hold whole frames, several frames and frame pieces.
    sizes = [1, 1024, 70_000, 5, 300_000, 65_519, 17, 1_000_000]
    payload = b"".join(os.urandom(n) for n in sizes)
    pos = 0
    for n in sizes:
        c.write(payload[pos : pos + n])
        pos += n
        await asyncio.sleep(0)
    c.close()
    await asyncio.wait_for(rec.eof, 10)
    assert b"".join(bytes(x) for x in rec.chunks) == payload
    if receiver_type is Plain:
        assert {type(x) for x in rec.chunks} == {bytes}
    else:
        # Borrowed, except the plaintext of a small read (SMALL_READ: a lone short frame).
        assert isinstance(rec, Borrower) and memoryview in rec.types
        assert all(n <= secure_mod.SMALL_READ for n in rec.fresh)


async def test_noise_nested_delivery_does_not_reuse_the_busy_buffer() -> None:
    """A receiver that makes another connection deliver synchronously while it still reads
    the first chunk (an in-memory pipe could): the nested chunk gets its own memory."""
    a1, b1 = memory_pair()
    a2, b2 = memory_pair()
    c1, s1 = await asyncio.gather(
        secure_outbound(a1, ALICE, BOB.peer_id, (), 5), secure_inbound(b1, BOB, (), 5)
    )
    c2, s2 = await asyncio.gather(
        secure_outbound(a2, ALICE, BOB.peer_id, (), 5), secure_inbound(b2, BOB, (), 5)
    )
    inner = Borrower()
    inner_side = secure_mod._RawSide(s2, inner)  # s2's raw side, driven by hand below
    seen: list[tuple[bytes, bytes]] = []

    class Outer(Borrower):
        def data_received(self, data: bytes) -> None:
            before = bytes(data)
            inner_side.data_received(c2._tx.encrypt(b"nested"))
            seen.append((before, bytes(data)))

    outer = Outer()
    outer_side = secure_mod._RawSide(s1, outer)
    outer_side.data_received(c1._tx.encrypt(b"outer chunk"))
    assert seen == [(b"outer chunk", b"outer chunk")]  # not overwritten by the nested call
    assert inner.chunks == [b"nested"]
    assert inner.types == {bytes}  # the busy buffer was not lent twice
    for conn in (c1, s1, c2, s2):
        conn.abort()


async def test_yamux_over_tcp_and_noise_keeps_nothing_borrowed(
    tcp_pair: tuple[TcpConnection, TcpConnection],
) -> None:
    """The whole chain with the real yamux driver: many streams, odd write sizes, every lent
    buffer reused at once by later reads; each stream's bytes must arrive intact."""
    assert YamuxConnection.receives_memoryview is True
    c, s = await _secured_tcp(tcp_pair)
    inbound: asyncio.Queue[YamuxStream] = asyncio.Queue()
    client = YamuxConnection(c, is_client=True, on_stream=lambda st: None)
    server = YamuxConnection(s, is_client=False, on_stream=inbound.put_nowait)
    payloads = [os.urandom(n) for n in (1, 999, 64 * 1024 + 3, 400_000, 2_000_000)]

    async def send(data: bytes) -> None:
        st = await client.open_stream()
        for i in range(0, len(data), 7777):
            await st.write(data[i : i + 7777])
        await st.close_write()

    async def receive() -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for _ in payloads:
            st = await asyncio.wait_for(inbound.get(), 10)
            buf = bytearray()
            while chunk := await asyncio.wait_for(st.read(), 10):
                buf += chunk
            out[len(buf)] = bytes(buf)
        return out

    got, *_ = await asyncio.gather(receive(), *(send(p) for p in payloads))
    assert got == {len(p): p for p in payloads}
    await client.close()
    await server.close()


def test_yamux_session_copies_what_it_keeps() -> None:
    """Sans-I/O: frames fed from one reused buffer, overwritten after each call, 1 byte and
    then 5 bytes at a time (headers and bodies split everywhere)."""
    a = YamuxSession(True)
    b = YamuxSession(False)
    sid = a.open_stream()
    data = os.urandom(5000)
    a.send_data(sid, data)
    a.close_stream(sid)
    wire = a.data_to_send()
    buf = bytearray(8)
    got = bytearray()
    for step in (1, 5):
        b = YamuxSession(False)
        got.clear()
        for i in range(0, len(wire), step):
            piece = wire[i : i + step]
            buf[: len(piece)] = piece
            with memoryview(buf)[: len(piece)] as view:
                b.receive_data(view, now=0.0)
            buf[:] = b"\xee" * len(buf)
            for ev in b.events():
                chunk = getattr(ev, "data", None)
                if chunk is not None:
                    got += chunk
        assert bytes(got) == data


async def test_noise_chunk_larger_than_the_scratch_buffer_gets_fresh_memory() -> None:
    """Another raw transport may deliver more than one TCP read at once: that chunk is
    decrypted into fresh memory (bytes), and the data is intact either way."""
    a, b = memory_pair()
    c, s = await asyncio.gather(
        secure_outbound(a, ALICE, BOB.peer_id, (), 5), secure_inbound(b, BOB, (), 5)
    )
    rec = Borrower()
    side = secure_mod._RawSide(s, rec)  # the raw side, fed by hand with chosen chunk sizes
    medium, big = os.urandom(2 * secure_mod.SMALL_READ), os.urandom(2 * secure_mod.SCRATCH_SIZE)
    side.data_received(c._tx.encrypt(medium))
    assert rec.types == {memoryview}  # decrypted into the scratch buffer
    side.data_received(c._tx.encrypt(big))
    assert b"".join(rec.chunks) == medium + big
    assert rec.types == {memoryview, bytes}
    c.abort()
    s.abort()


async def test_noise_small_read_is_delivered_as_bytes() -> None:
    """A read of at most SMALL_READ bytes (a lone request or reply) is decrypted into a
    fresh ``bytes``, not into the scratch buffer; a larger one is borrowed."""
    a, b = memory_pair()
    c, s = await asyncio.gather(
        secure_outbound(a, ALICE, BOB.peer_id, (), 5), secure_inbound(b, BOB, (), 5)
    )
    rec = Borrower()
    side = secure_mod._RawSide(s, rec)
    small = os.urandom(secure_mod.SMALL_READ - 2 - 16)  # one frame of exactly SMALL_READ
    side.data_received(c._tx.encrypt(small))
    assert rec.types == {bytes}
    larger = os.urandom(secure_mod.SMALL_READ)
    side.data_received(c._tx.encrypt(larger))
    assert rec.types == {bytes, memoryview}
    assert b"".join(rec.chunks) == small + larger
    c.abort()
    s.abort()
