"""A peer that sends but never reads (B-15, B-16): the replies it provokes must not pile up.

Every SYN gets an ACK or a RST, every ping a reply, every consumed window an update: written
from the receive path, they cannot wait for the peer. Without a guard, 12 bytes of SYN buy
24 bytes of our memory forever. The TCP transport aborts a connection whose queued bytes stop
reaching the kernel for ``write_stall_timeout`` seconds while over the high-water mark."""

from __future__ import annotations

import asyncio
import socket
from typing import cast

import pytest

from glueberry.errors import ConnectionLost
from glueberry.transport import tcp
from glueberry.transport.tcp import TcpConnection, TcpListener

from .conftest import Target, running_target, until
from .hostile import FLAG_SYN, TYPE_WINDOW_UPDATE, frame

MiB = 1 << 20


@pytest.fixture
def fast_stall(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(TcpConnection, "write_stall_timeout", 0.3)
    return 0.3


def _small_buffer(transport: asyncio.BaseTransport, which: int = socket.SO_RCVBUF) -> None:
    """So that the kernel does not absorb megabytes before our buffer is even used (keeps
    the tests fast; the logic is the same with large kernel buffers)."""
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, which, 32768)


async def _pair() -> tuple[TcpConnection, TcpConnection]:
    accepted: asyncio.Future[TcpConnection] = asyncio.get_running_loop().create_future()
    async with await TcpListener.create("127.0.0.1", 0, accepted.set_result) as listener:
        client = await tcp.dial("127.0.0.1", listener.addresses[0][1], timeout=5)
        server = await asyncio.wait_for(accepted, 5)
    assert client._transport is not None and server._transport is not None
    _small_buffer(client._transport)
    _small_buffer(server._transport, socket.SO_SNDBUF)
    return client, server


async def test_peer_that_never_reads_is_aborted(fast_stall: float) -> None:
    client, server = await _pair()
    client.pause_reading()  # the peer takes nothing
    try:
        chunk = b"r" * 65536
        async with asyncio.timeout(5):
            while not server.is_closing():
                server.write(chunk)  # replies written from a receive path: no drain
                await asyncio.sleep(0.001)
        await asyncio.wait_for(server.wait_closed(), 2)
        with pytest.raises(ConnectionLost):
            await server.drain()
    finally:
        client.abort()
        server.abort()
        await client.wait_closed()


async def test_slow_reader_is_not_aborted(fast_stall: float) -> None:
    """Over the high-water mark for many timeouts in a row, but always taking some bytes."""
    client, server = await _pair()
    got = 0
    try:

        async def slow_reader() -> None:
            nonlocal got
            while True:
                client.pause_reading()
                await asyncio.sleep(0.02)
                client.resume_reading()
                got += len(await client.read())

        reader = asyncio.ensure_future(slow_reader())
        loop = asyncio.get_running_loop()
        paused = 0.0  # seconds spent over the high-water mark
        for _ in range(100):  # 4 MiB, several stall timeouts to get through
            server.write(b"s" * 40960)
            t0 = loop.time()
            await server.drain()
            paused += loop.time() - t0
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        assert not server.is_closing()
        assert paused > 3 * fast_stall  # it did sit over the high-water mark that long
        assert got > 2 * MiB
    finally:
        client.abort()
        server.abort()
        await client.wait_closed()
        await server.wait_closed()


async def test_syn_reflection_from_a_peer_that_never_reads(fast_stall: float) -> None:
    """SYN after SYN while reading nothing: the host's buffered replies stay bounded and the
    connection is aborted with ConnectionLost; other peers are served."""
    async with running_target() as target:
        h = await target.secured()
        # A socket's transport reads too (uvloop's does not subclass asyncio.ReadTransport).
        transport = cast(asyncio.Transport, h.writer.transport)
        transport.pause_reading()
        _small_buffer(transport)
        await until(lambda: bool(target.host.connections()))
        (conn,) = target.host.connections()
        _small_buffer(conn._secure._raw._transport, socket.SO_SNDBUF)  # type: ignore[attr-defined]
        peak = 0
        sid = 1
        async with asyncio.timeout(10):
            while not target.ended:
                h.send(
                    b"".join(
                        frame(TYPE_WINDOW_UPDATE, FLAG_SYN, sid + 2 * j, 0) for j in range(200)
                    )
                )
                sid += 400
                await asyncio.sleep(0)
                peak = max(peak, _host_write_buffer(target))
        conn = await target.wait_ended()
        assert isinstance(getattr(conn, "error", None), ConnectionLost)
        assert peak < 8 * MiB
        await target.assert_serves_honest_peer()


def _host_write_buffer(target: Target) -> int:
    total = 0
    for conn in target.host.connections():
        raw = getattr(getattr(conn, "_secure", None), "_raw", None)
        transport = getattr(raw, "_transport", None)
        if transport is not None:
            total += transport.get_write_buffer_size()
    return total


async def test_default_stall_timeout_matches_go() -> None:
    assert TcpConnection.write_stall_timeout == tcp.WRITE_STALL_TIMEOUT == 10.0
    await until(lambda: True)
