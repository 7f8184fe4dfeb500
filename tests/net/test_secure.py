"""NoiseConnection and the Noise handshake driver over in-memory pipes and loopback TCP."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from glueberry.errors import (
    ConnectionLost,
    DecryptionFailed,
    HandshakeTimeout,
    LocalProtocolError,
    PeerIdMismatch,
    RemoteProtocolError,
)
from glueberry.net.secure import NoiseConnection, secure_inbound, secure_outbound
from glueberry.proto.noise import MAX_PLAINTEXT
from glueberry.transport import tcp
from glueberry.transport.base import RawConnection, SecureConnection
from glueberry.transport.memory import MemoryConnection, memory_pair
from glueberry.wire.identity import PrivateKey

ALICE = PrivateKey.from_seed(b"a" * 32)
BOB = PrivateKey.from_seed(b"b" * 32)
MALLORY = PrivateKey.from_seed(b"m" * 32)

RawPair = Callable[[], Awaitable[tuple[RawConnection, RawConnection]]]


async def mem_pair() -> tuple[RawConnection, RawConnection]:
    return memory_pair()


async def trickle_pair() -> tuple[RawConnection, RawConnection]:
    return memory_pair(max_chunk=7)


_tcp_listeners: list[tcp.TcpListener] = []


async def tcp_pair() -> tuple[RawConnection, RawConnection]:
    accepted: asyncio.Future[tcp.TcpConnection] = asyncio.get_running_loop().create_future()
    listener = await tcp.TcpListener.create("127.0.0.1", 0, accepted.set_result)
    _tcp_listeners.append(listener)
    host, port = listener.addresses[0]
    client = await tcp.dial(host, port, timeout=5)
    server = await asyncio.wait_for(accepted, 5)
    return client, server


PAIRS = pytest.mark.parametrize("make_pair", [mem_pair, trickle_pair, tcp_pair])


@pytest.fixture(autouse=True)
async def _close_listeners() -> AsyncIterator[None]:
    yield
    while _tcp_listeners:
        lst = _tcp_listeners.pop()
        lst.close()
        await lst.wait_closed()


async def secured(
    make_pair: RawPair = mem_pair, *, muxers: tuple[str, ...] = ("/yamux/1.0.0",)
) -> tuple[NoiseConnection, NoiseConnection]:
    a, b = await make_pair()
    return await asyncio.gather(
        secure_outbound(a, ALICE, BOB.peer_id, muxers, 5),
        secure_inbound(b, BOB, muxers, 5),
    )


async def close_both(*conns: NoiseConnection) -> None:
    for c in conns:
        c.abort()
    for c in conns:
        await asyncio.wait_for(c.wait_closed(), 5)


class Recorder:
    """A ByteReceiver that records its callbacks."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.eof = 0
        self.lost: list[BaseException | None] = []
        self.event = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        assert not self.lost and not self.eof
        self.chunks.append(data)
        self.event.set()

    def eof_received(self) -> None:
        assert not self.lost
        self.eof += 1
        self.event.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self.event.set()

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    async def wait_for(self, cond: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not cond():
                self.event.clear()
                await self.event.wait()


async def read_exactly(conn: NoiseConnection, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = await asyncio.wait_for(conn.read(), 5)
        assert chunk, "unexpected EOF"
        got += chunk
    return bytes(got)


@PAIRS
async def test_handshake_and_pull_mode(make_pair: RawPair) -> None:
    c, s = await secured(make_pair)
    assert isinstance(s, RawConnection)
    _static: SecureConnection = c  # structural check by mypy
    assert c.remote_peer == BOB.peer_id and s.remote_peer == ALICE.peer_id
    assert c.local_peer == ALICE.peer_id and s.local_peer == BOB.peer_id
    assert c.remote_public_key == BOB.public_key
    assert c.early_muxer == s.early_muxer == "/yamux/1.0.0"
    assert c.is_initiator and not s.is_initiator
    assert c.security_protocol == "/noise"
    assert c.transport_name == s.transport_name
    c.write(b"hello")
    assert await read_exactly(s, 5) == b"hello"
    s.write(b"world")
    assert await read_exactly(c, 5) == b"world"
    big = os.urandom(3 * MAX_PLAINTEXT + 123)
    c.write(big)
    assert await read_exactly(s, len(big)) == big
    await close_both(c, s)


async def test_no_early_muxer() -> None:
    c, s = await secured(muxers=())
    assert c.early_muxer is None and s.early_muxer is None
    await close_both(c, s)


@PAIRS
async def test_push_mode(make_pair: RawPair) -> None:
    c, s = await secured(make_pair)
    rec = Recorder()
    s.set_receiver(rec)
    payload = os.urandom(300_000)
    for k in range(0, len(payload), 1000):
        c.write(payload[k : k + 1000])
    await c.drain()
    await rec.wait_for(lambda: len(rec.data) == len(payload))
    assert rec.data == payload
    c.close()
    await rec.wait_for(lambda: bool(rec.lost))
    assert rec.eof <= 1 and len(rec.lost) == 1
    await close_both(c, s)


async def test_pull_then_push_keeps_order() -> None:
    """Plaintext decrypted in pull mode (and the raw pull buffer) reaches the receiver first."""
    c, s = await secured()
    c.write(b"first")
    assert await read_exactly(s, 5) == b"first"
    c.write(b"second")
    await asyncio.sleep(0.01)  # now buffered in the raw connection's pull buffer
    rec = Recorder()
    s.set_receiver(rec)
    c.write(b"third")
    await rec.wait_for(lambda: rec.data == b"secondthird")
    with pytest.raises(LocalProtocolError):
        await s.read()
    with pytest.raises(LocalProtocolError):
        s.set_receiver(Recorder())
    await close_both(c, s)


async def test_initiator_data_pipelined_with_msg3() -> None:
    """The initiator writes right away: its first frames may share a read with message 3."""
    a, b = memory_pair()
    server_task = asyncio.create_task(secure_inbound(b, BOB, ("/yamux/1.0.0",), 5))
    c = await secure_outbound(a, ALICE, BOB.peer_id, ("/yamux/1.0.0",), 5)
    c.write(b"early")
    s = await server_task
    assert await read_exactly(s, 5) == b"early"
    await close_both(c, s)


class CountingRaw:
    """Wraps a RawConnection and counts writes."""

    def __init__(self, raw: MemoryConnection) -> None:
        self.raw = raw
        self.writes: list[int] = []
        self.local_address = raw.local_address
        self.remote_address = raw.remote_address
        self.transport_name = raw.transport_name

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(len(data))
        self.raw.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.raw, name)


async def test_coalescing_small_writes() -> None:
    """performance.md 1: many writes in one loop iteration -> one frame, one raw write."""
    a, b = memory_pair()
    counted = CountingRaw(a)
    c, s = await asyncio.gather(
        secure_outbound(counted, ALICE, BOB.peer_id, (), 5),  # type: ignore[arg-type]
        secure_inbound(b, BOB, (), 5),
    )
    counted.writes.clear()
    frames_before = c._tx.messages_sent
    for _ in range(60):
        c.write(b"m" * 1024)
    assert counted.writes == []  # nothing goes out synchronously
    await asyncio.sleep(0)
    assert counted.writes == [60 * 1024 + 18]
    assert c._tx.messages_sent == frames_before + 1
    assert await read_exactly(s, 60 * 1024) == b"m" * 60 * 1024
    # A lone small write leaves on the next loop iteration.
    c.write(b"x")
    await asyncio.sleep(0)
    assert counted.writes[-1] == 1 + 18
    await close_both(c, s)


async def test_full_frames_sealed_at_once() -> None:
    a, b = memory_pair()
    counted = CountingRaw(a)
    c, s = await asyncio.gather(
        secure_outbound(counted, ALICE, BOB.peer_id, (), 5),  # type: ignore[arg-type]
        secure_inbound(b, BOB, (), 5),
    )
    counted.writes.clear()
    c.write(b"a" * 1000)
    c.write(b"b" * (2 * MAX_PLAINTEXT))  # crosses two frame boundaries
    # Two full frames at once: the topped-up buffer, then one straight from the caller's data.
    assert counted.writes == [65537, 65537]
    await asyncio.sleep(0)
    assert counted.writes[2] == 1000 + 18  # the tail, from the flush callback
    # Large write into an empty buffer: sealed straight from the caller's buffer.
    counted.writes.clear()
    c.write(memoryview(b"c" * (MAX_PLAINTEXT + 5)))
    assert counted.writes == [65537]
    await asyncio.sleep(0)
    assert counted.writes == [65537, 5 + 18]
    total = 1000 + 2 * MAX_PLAINTEXT + MAX_PLAINTEXT + 5
    got = await read_exactly(s, total)
    assert got == b"a" * 1000 + b"b" * (2 * MAX_PLAINTEXT) + b"c" * (MAX_PLAINTEXT + 5)
    await close_both(c, s)


async def test_close_flushes_tail() -> None:
    c, s = await secured()
    c.write(b"last words")
    c.close()
    assert c.is_closing()
    assert await read_exactly(s, 10) == b"last words"
    assert await asyncio.wait_for(s.read(), 5) == b""
    with pytest.raises(ConnectionLost):
        c.write(b"more")
    await close_both(c, s)


async def test_decryption_failure_push_mode(caplog: pytest.LogCaptureFixture) -> None:
    """B-05: a corrupted frame aborts the connection; the receiver learns why, once."""
    a, b = memory_pair()
    c, s = await asyncio.gather(
        secure_outbound(a, ALICE, BOB.peer_id, (), 5), secure_inbound(b, BOB, (), 5)
    )
    rec = Recorder()
    s.set_receiver(rec)
    c.write(b"fine")
    await rec.wait_for(lambda: rec.data == b"fine")
    frame = bytearray(c._tx.encrypt(b"tampered"))
    frame[5] ^= 1
    with caplog.at_level(logging.WARNING, logger="glueberry.net.secure"):
        a.write(bytes(frame) + c._tx.encrypt(b"after"))
        await rec.wait_for(lambda: bool(rec.lost))
    assert len(rec.lost) == 1 and isinstance(rec.lost[0], DecryptionFailed)
    assert rec.data == b"fine"  # nothing after the bad frame is delivered
    assert any("failed" in r.getMessage() for r in caplog.records)
    assert s.is_closing()
    with pytest.raises(ConnectionLost):
        s.write(b"reply")
    with pytest.raises(ConnectionLost):
        await s.drain()
    await asyncio.sleep(0.01)
    assert len(rec.lost) == 1
    # The peer sees the abort.
    assert await asyncio.wait_for(_read_until_error_or_eof(c), 5)
    await close_both(c, s)


async def _read_until_error_or_eof(conn: NoiseConnection) -> bool:
    try:
        while await conn.read():
            pass
    except ConnectionLost:
        pass
    return True


async def test_decryption_failure_pull_mode() -> None:
    a, b = memory_pair()
    c, s = await asyncio.gather(
        secure_outbound(a, ALICE, BOB.peer_id, (), 5), secure_inbound(b, BOB, (), 5)
    )
    a.write(b"\x00\x20" + b"\x00" * 32)
    with pytest.raises(DecryptionFailed):
        await asyncio.wait_for(s.read(), 5)
    with pytest.raises(DecryptionFailed):
        await s.read()
    rec = Recorder()
    s.set_receiver(rec)
    assert len(rec.lost) == 1 and isinstance(rec.lost[0], DecryptionFailed)
    await close_both(c, s)


async def test_trailing_garbage_after_msg3_fails_inbound() -> None:
    """B-02: garbage pipelined after message 3 fails the inbound handshake."""
    a, b = memory_pair()

    class Garbling(CountingRaw):
        def write(self, data: bytes | bytearray | memoryview) -> None:
            if len(self.writes) == 1:  # message 3
                data = bytes(data) + b"\x00\x11" + b"\x00" * 17
            super().write(data)

    garbling = Garbling(a)
    results = await asyncio.gather(
        secure_outbound(garbling, ALICE, BOB.peer_id, (), 5),  # type: ignore[arg-type]
        secure_inbound(b, BOB, (), 5),
        return_exceptions=True,
    )
    assert isinstance(results[1], DecryptionFailed)
    assert b.is_closing()
    if isinstance(results[0], NoiseConnection):
        results[0].abort()


async def test_peer_id_mismatch_aborts() -> None:
    a, b = memory_pair()
    results = await asyncio.gather(
        secure_outbound(a, ALICE, MALLORY.peer_id, (), 5),
        secure_inbound(b, BOB, (), 5),
        return_exceptions=True,
    )
    assert isinstance(results[0], PeerIdMismatch)
    assert a.is_closing()
    # The responder sees the abort during its handshake.
    assert isinstance(results[1], ConnectionLost | RemoteProtocolError)


async def test_handshake_timeout() -> None:
    a, b = memory_pair()
    with pytest.raises(HandshakeTimeout):
        await secure_outbound(a, ALICE, BOB.peer_id, (), 0.05)
    assert a.is_closing()
    b.abort()


async def test_handshake_eof() -> None:
    a, b = memory_pair()
    task = asyncio.create_task(secure_inbound(b, BOB, (), 5))
    a.write(b"\x00\x20" + b"\x01" * 10)
    a.close()
    with pytest.raises(ConnectionLost):
        await task


async def test_handshake_bad_msg1() -> None:
    a, b = memory_pair()
    task = asyncio.create_task(secure_inbound(b, BOB, (), 5))
    a.write(b"\x00\x21" + b"\x01" * 33)
    with pytest.raises(RemoteProtocolError):
        await task
    assert b.is_closing()
    a.abort()


async def test_pause_resume_and_eof() -> None:
    c, s = await secured()
    rec = Recorder()
    s.set_receiver(rec)
    s.pause_reading()
    c.write(b"held")
    await asyncio.sleep(0.02)
    assert rec.data == b""
    s.resume_reading()
    await rec.wait_for(lambda: rec.data == b"held")
    c.close()
    await rec.wait_for(lambda: bool(rec.lost))
    assert rec.eof == 1 and rec.lost == [None]
    await close_both(c, s)


async def test_drain_under_backpressure() -> None:
    """A writer that awaits drain() is held while the reader is paused."""
    c, s = await secured()
    rec = Recorder()
    s.set_receiver(rec)
    s.pause_reading()
    chunk = os.urandom(MAX_PLAINTEXT)
    written = 0

    async def writer() -> None:
        nonlocal written
        while True:
            c.write(chunk)
            written += len(chunk)
            await c.drain()

    task = asyncio.create_task(writer())
    await asyncio.sleep(0.05)
    assert 0 < written < 4 * 1024 * 1024  # bounded by the pipe's high-water marks
    held = written
    await asyncio.sleep(0.02)
    assert written == held
    task.cancel()
    s.resume_reading()
    await rec.wait_for(lambda: len(rec.data) >= held - len(chunk))
    await close_both(c, s)


async def test_abort_drops_queue_and_reports_once() -> None:
    c, s = await secured()
    rec = Recorder()
    c.set_receiver(rec)
    c.write(b"never sent")
    c.abort()
    await rec.wait_for(lambda: bool(rec.lost))
    assert rec.chunks == [] and len(rec.lost) == 1
    assert await asyncio.wait_for(_read_until_error_or_eof(s), 5)
    await close_both(c, s)


@pytest.mark.parametrize("seed", range(4))
async def test_random_write_sizes_preserve_the_stream(seed: int) -> None:
    """Any mix of write sizes, buffer states and flushes yields the same byte stream."""
    import random

    rng = random.Random(seed)
    c, s = await secured()
    rec = Recorder()
    s.set_receiver(rec)
    sent = bytearray()
    for _ in range(60):
        size = rng.choice([0, 1, 17, 1000, MAX_PLAINTEXT - 1, MAX_PLAINTEXT, 70000, 200_000])
        chunk = rng.randbytes(size)
        c.write(bytearray(chunk) if rng.random() < 0.3 else chunk)
        sent += chunk
        if rng.random() < 0.3:
            await asyncio.sleep(0)
        await c.drain()
    await rec.wait_for(lambda: len(rec.data) >= len(sent))
    assert rec.data == bytes(sent)
    await close_both(c, s)
