"""Generic Stream conformance suite, run against every implementation in ``pairs.HARNESSES``.

Modelled on trio's ``check_two_way_stream`` and go-libp2p's muxer test suite (the stress
matrix conns x streams x messages with 2 KiB messages echoed back).
"""

from __future__ import annotations

import asyncio
import hashlib
import random

import pytest

from glueberry.errors import StreamClosed, StreamError, StreamReset
from glueberry.transport.base import Stream
from tests.conformance.pairs import BULK_HARNESSES, HARNESSES, Harness, HarnessFactory

TIMEOUT = 30
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=sorted(HARNESSES))
def make(request: pytest.FixtureRequest) -> HarnessFactory:
    return HARNESSES[request.param]


@pytest.fixture(params=sorted(BULK_HARNESSES))
def make_bulk(request: pytest.FixtureRequest) -> HarnessFactory:
    return BULK_HARNESSES[request.param]


async def read_all(stream: Stream) -> bytes:
    parts = []
    while chunk := await stream.read():
        parts.append(chunk)
    return b"".join(parts)


async def echo(stream: Stream) -> None:
    """Echo until EOF, then half-close."""
    async for chunk in stream:
        await stream.write(chunk)
    await stream.close_write()


async def test_implements_protocol(make: HarnessFactory) -> None:
    async with make() as h:
        local, remote = await h.open()
        assert isinstance(local, Stream)
        assert isinstance(remote, Stream)
        assert local.stream_id == remote.stream_id
        assert not local.is_closed


async def test_echo(make: HarnessFactory) -> None:
    async with asyncio.timeout(TIMEOUT), make() as h:
        local, remote = await h.open()
        task = asyncio.create_task(echo(remote))
        await local.write(b"hello ")
        await local.write(bytearray(b"yamux "))
        await local.write(memoryview(b"world"))
        assert await local.readexactly(17) == b"hello yamux world"
        await local.close_write()
        assert await local.read() == b""
        await task
        assert local.is_closed
        assert remote.is_closed


async def test_half_close(make: HarnessFactory) -> None:
    async with asyncio.timeout(TIMEOUT), make() as h:
        local, remote = await h.open()
        await local.write(b"request")
        await local.close_write()
        assert await read_all(remote) == b"request"
        assert await remote.read() == b""  # EOF is sticky
        await remote.write(b"response")  # the other direction is still open
        await remote.close_write()
        assert await read_all(local) == b"response"
        await local.close_write()  # idempotent


async def test_write_after_close_write_raises(make: HarnessFactory) -> None:
    async with asyncio.timeout(TIMEOUT), make() as h:
        local, _ = await h.open()
        await local.close_write()
        with pytest.raises(StreamClosed):
            await local.write(b"late")


async def test_write_and_read_after_close_raise(make: HarnessFactory) -> None:
    async with asyncio.timeout(TIMEOUT), make() as h:
        local, remote = await h.open()
        await remote.write(b"unread")
        await local.close()
        with pytest.raises(StreamClosed):
            await local.write(b"late")
        with pytest.raises(StreamClosed):
            await local.read()
        await local.close()  # idempotent
        assert await read_all(remote) == b""


@pytest.mark.parametrize("side", ["dialer", "listener"])
async def test_reset_is_seen_by_the_other_side(make: HarnessFactory, side: str) -> None:
    async with asyncio.timeout(TIMEOUT), make() as h:
        local, remote = await h.open()
        resetter, other = (local, remote) if side == "dialer" else (remote, local)
        reader = asyncio.create_task(other.read())
        await asyncio.sleep(0)
        resetter.reset()
        with pytest.raises(StreamReset) as info:
            await reader
        assert info.value.remote
        with pytest.raises(StreamReset):
            await other.write(b"x")
        with pytest.raises(StreamReset):
            await other.read()
        resetter.reset()  # idempotent


async def test_read_and_write_after_local_reset_raise(make: HarnessFactory) -> None:
    async with asyncio.timeout(TIMEOUT), make() as h:
        local, remote = await h.open()
        await remote.write(b"dropped")
        await asyncio.sleep(0.01)
        local.reset()
        with pytest.raises(StreamReset) as info:
            await local.read()
        assert not info.value.remote
        with pytest.raises(StreamReset):
            await local.write(b"x")
        with pytest.raises(StreamReset):
            await local.close_write()
        await local.close()  # never raises
        assert local.is_closed


async def test_reset_wakes_a_blocked_writer(make: HarnessFactory) -> None:
    async with asyncio.timeout(TIMEOUT), make() as h:
        local, remote = await h.open()
        writer = asyncio.create_task(local.write(bytes(8 * 1024 * 1024)))
        await asyncio.sleep(0.05)
        assert not writer.done()  # nobody reads: the window is exhausted
        remote.reset(7)
        with pytest.raises(StreamReset):
            await writer


async def test_async_iteration(make: HarnessFactory) -> None:
    async with asyncio.timeout(TIMEOUT), make() as h:
        local, remote = await h.open()
        for i in range(10):
            await local.write(bytes([i]) * 100)
        await local.close_write()
        chunks = [c async for c in remote]
        assert b"".join(chunks) == b"".join(bytes([i]) * 100 for i in range(10))


async def test_readexactly_at_eof(make: HarnessFactory) -> None:
    async with asyncio.timeout(TIMEOUT), make() as h:
        local, remote = await h.open()
        await local.write(b"abc")
        await local.close_write()
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await remote.readexactly(5)
        assert info.value.partial == b"abc"


async def test_read_max_bytes(make: HarnessFactory) -> None:
    async with asyncio.timeout(TIMEOUT), make() as h:
        local, remote = await h.open()
        await local.write(b"0123456789")
        await local.close_write()
        got = []
        while chunk := await remote.read(3):
            assert len(chunk) <= 3
            got.append(chunk)
        assert b"".join(got) == b"0123456789"


async def test_16mib_transfer_with_hash(make_bulk: HarnessFactory) -> None:
    rng = random.Random(16)
    payload = rng.randbytes(16 * 1024 * 1024)
    async with asyncio.timeout(TIMEOUT), make_bulk() as h:
        local, remote = await h.open()

        async def send() -> None:
            pos = 0
            while pos < len(payload):
                n = rng.choice([1, 100, 4096, 65536, 300_000, 1 << 20])
                await local.write(payload[pos : pos + n])
                pos += n
            await local.close_write()

        async def receive() -> str:
            digest = hashlib.sha256()
            while chunk := await remote.read():
                digest.update(chunk)
            return digest.hexdigest()

        _, got = await asyncio.gather(send(), receive())
        assert got == hashlib.sha256(payload).hexdigest()


async def test_1000_concurrent_streams(make_bulk: HarnessFactory) -> None:
    async with asyncio.timeout(TIMEOUT), make_bulk() as h:

        async def one(i: int) -> None:
            local, remote = await h.open()
            msg = i.to_bytes(4, "big") * 25
            await local.write(msg)
            await local.close_write()
            assert await read_all(remote) == msg
            await remote.write(msg[::-1])
            await remote.close_write()
            assert await read_all(local) == msg[::-1]
            assert local.is_closed
            assert remote.is_closed

        await asyncio.gather(*(one(i) for i in range(1000)))


@pytest.mark.parametrize(
    ("conns", "streams", "msgs"),
    [(1, 1, 1), (1, 1, 100), (1, 100, 100), (10, 10, 50), (1, 1000, 10)],
    ids=["1x1x1", "1x1x100", "1x100x100", "10x10x50", "1x1000x10"],
)
async def test_go_muxer_stress(
    make_bulk: HarnessFactory, conns: int, streams: int, msgs: int
) -> None:
    """go-libp2p's SubtestStress: echo servers, 2 KiB messages written while reading."""
    rng = random.Random(conns * 1000 + streams)
    pool = rng.randbytes(1 << 20)
    msg_size = 2048

    async def stream_rw(h: Harness) -> None:
        local, remote = await h.open()
        server = asyncio.create_task(echo(remote))
        sent = [
            pool[o : o + msg_size]
            for o in (rng.randrange(len(pool) - msg_size) for _ in range(msgs))
        ]

        async def writer() -> None:
            for m in sent:
                await local.write(m)

        wtask = asyncio.create_task(writer())
        for m in sent:
            assert await local.readexactly(msg_size) == m
        await wtask
        await local.close()
        await server

    async def conn_rw() -> None:
        async with make_bulk() as h:
            await asyncio.gather(*(stream_rw(h) for _ in range(streams)))

    async with asyncio.timeout(TIMEOUT * 2):
        await asyncio.gather(*(conn_rw() for _ in range(conns)))


async def test_backpressure_blocks_writer_until_read(make_bulk: HarnessFactory) -> None:
    async with asyncio.timeout(TIMEOUT), make_bulk() as h:
        local, remote = await h.open()
        total = 4 * 1024 * 1024
        writer = asyncio.create_task(local.write(bytes(total)))
        for _ in range(20):
            await asyncio.sleep(0)
        await asyncio.sleep(0.02)
        assert not writer.done()
        got = 0
        while got < total:
            got += len(await remote.read())
        await writer


async def test_left_open_streams_are_closed_by_connection_close(make: HarnessFactory) -> None:
    async with asyncio.timeout(TIMEOUT), make() as h:
        pairs = [await h.open() for _ in range(5)]
        readers = [asyncio.create_task(s.read()) for pair in pairs for s in pair]
        w_local, _ = await h.open()  # nobody reads its other end
        blocked_writer = asyncio.create_task(w_local.write(bytes(4 * 1024 * 1024)))
        await asyncio.sleep(0.01)
        await h.close_dialer()
        for task in [*readers, blocked_writer]:
            with pytest.raises(StreamError):
                await task
        for local, remote in pairs:
            with pytest.raises(StreamError):
                await local.write(b"x")
            with pytest.raises(StreamError):
                await remote.read()
