"""QUIC costs over loopback: datagram sizes, fallbacks, packet economy, set-up work.

The transport's own work per packet is small next to aioquic's, so these tests pin down how
many packets, datagrams and checks the driver asks for, and that every shortcut keeps the
bytes intact and the peers authenticated.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from glueberry.errors import ConfigError
from glueberry.transport import _aioquic_hooks as hooks
from glueberry.transport import quic
from glueberry.transport.quic import QuicConfig, QuicConnection, QuicStream, QuicTransport
from glueberry.wire import tlscert
from glueberry.wire.identity import PrivateKey

SERVER_KEY = PrivateKey.from_seed(b"\x41" * 32)
CLIENT_KEY = PrivateKey.from_seed(b"\x42" * 32)


class Echo:
    """A listening transport that echoes every stream."""

    def __init__(self, config: QuicConfig | None = None) -> None:
        self.transport = QuicTransport(SERVER_KEY, config)
        self.connections: list[QuicConnection] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, listen: str = "/ip4/127.0.0.1/udp/0/quic-v1") -> str:
        lst = await self.transport.listen(listen, self._on_connection)
        return str(lst.multiaddrs[0])

    def _on_connection(self, conn: QuicConnection) -> None:
        self.connections.append(conn)
        conn.set_stream_handler(self._on_stream)

    def _on_stream(self, stream: QuicStream) -> None:
        task = asyncio.get_running_loop().create_task(self._echo(stream))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _echo(self, stream: QuicStream) -> None:
        try:
            while data := await stream.read():
                await stream.write(data)
            await stream.close_write()
        except Exception:  # the client may reset: nothing to do
            stream.reset()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server = Echo()
    yield server
    server.transport.close()


@pytest.fixture
async def client() -> AsyncIterator[QuicTransport]:
    transport = QuicTransport(CLIENT_KEY)
    yield transport
    transport.close()


async def round_trip(conn: QuicConnection, payload: bytes) -> bytes:
    stream = await conn.open_stream()

    async def send() -> None:
        await stream.write(payload)
        await stream.close_write()

    sender = asyncio.get_running_loop().create_task(send())
    parts = []
    while data := await stream.read():
        parts.append(data)
    await sender
    await stream.close()
    return b"".join(parts)


def spy_sizes(conn: QuicConnection) -> list[int]:
    """Record the size of every datagram the connection's endpoint sends."""
    sizes: list[int] = []
    endpoint = conn.endpoint
    send = endpoint._sendto

    def sendto(data: bytes, addr: tuple[Any, ...]) -> bool:
        sizes.append(len(data))
        return send(data, addr)

    endpoint._sendto = sendto  # type: ignore[method-assign]
    return sizes


async def test_loopback_peers_use_large_datagrams(echo: Echo, client: QuicTransport) -> None:
    addr = await echo.start()
    conn = await client.dial(addr, SERVER_KEY.peer_id)
    sizes = spy_sizes(conn)
    payload = os.urandom(1 << 20)
    got = await round_trip(conn, payload)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    size = QuicConfig().loopback_datagram_size
    assert conn._core.max_datagram_size == size
    assert echo.connections[0]._core.max_datagram_size == size
    assert max(sizes) > 8 * 1024
    assert max(sizes) <= size
    # 1 MiB in datagrams of ~16 KiB: a few dozen data packets, not ~800.
    assert len(sizes) < 300


async def test_ipv6_loopback_uses_large_datagrams(client: QuicTransport) -> None:
    server = Echo()
    try:
        addr = await server.start("/ip6/::1/udp/0/quic-v1")
        conn = await client.dial(addr, SERVER_KEY.peer_id)
        assert await round_trip(conn, b"x" * 100_000) == b"x" * 100_000
        assert conn._core.max_datagram_size == QuicConfig().loopback_datagram_size
    finally:
        server.transport.close()


async def test_loopback_size_can_be_turned_off() -> None:
    config = QuicConfig(loopback_datagram_size=1350)
    server = Echo(config)
    client = QuicTransport(CLIENT_KEY, config)
    try:
        addr = await server.start()
        conn = await client.dial(addr, SERVER_KEY.peer_id)
        sizes = spy_sizes(conn)
        assert await round_trip(conn, b"y" * 200_000) == b"y" * 200_000
        assert conn._core.max_datagram_size == 1350
        assert max(sizes) <= 1350
    finally:
        client.close()
        server.transport.close()


class TooLargeSocket:
    """A socket proxy whose path refuses datagrams over 1350 bytes (EMSGSIZE)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.refused = 0

    def sendto(self, data: bytes, addr: Any) -> int:
        if len(data) > 1350:
            self.refused += 1
            raise OSError(errno.EMSGSIZE, "Message too long")
        return int(self._sock.sendto(data, addr))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


async def test_a_path_refusing_large_datagrams_falls_back(client: QuicTransport) -> None:
    server = Echo()
    try:
        addr = await server.start()
        conn = await client.dial(addr, SERVER_KEY.peer_id)
        proxy = TooLargeSocket(conn.endpoint._sock)
        conn.endpoint._sock = proxy  # type: ignore[assignment]
        payload = os.urandom(300_000)
        async with asyncio.timeout(20):
            got = await round_trip(conn, payload)
        assert got == payload
        assert proxy.refused >= 1
        assert conn._core.max_datagram_size == QuicConfig().max_datagram_size
    finally:
        server.transport.close()


def test_datagram_sizes_are_bounded_by_aioquic_frames() -> None:
    assert QuicConfig().loopback_datagram_size == hooks.MAX_DATAGRAM_SIZE
    for bad in (1199, hooks.MAX_DATAGRAM_SIZE + 1):
        with pytest.raises(ConfigError):
            QuicConfig(max_datagram_size=bad)
        with pytest.raises(ConfigError):
            QuicConfig(loopback_datagram_size=bad)


async def test_replies_carry_the_acks(echo: Echo, client: QuicTransport) -> None:
    """Request/response: each data packet carries the ACK of the one before (hook H6),
    instead of a separate ACK-only packet a millisecond later on each side."""
    addr = await echo.start()
    conn = await client.dial(addr, SERVER_KEY.peer_id)
    stream = await conn.open_stream()
    msg = b"q" * 1000
    for _ in range(20):
        await stream.write(msg)
        assert await stream.readexactly(len(msg)) == msg
    server_conn = echo.connections[0]
    sent = conn.datagrams_sent, server_conn.datagrams_sent
    rounds = 200
    for _ in range(rounds):
        await stream.write(msg)
        assert await stream.readexactly(len(msg)) == msg
    per_round = (
        (conn.datagrams_sent - sent[0]) / rounds,
        (server_conn.datagrams_sent - sent[1]) / rounds,
    )
    # One datagram each way per round; a loaded machine may let a delayed ACK fire
    # before the reply now and then (aioquic alone: about 1.6 per side).
    assert max(per_round) < 1.3, per_round
    await stream.close()


async def test_a_reconnecting_peer_is_not_verified_again(
    echo: Echo, client: QuicTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    verify = tlscert.verify_certificate_chain

    def counting(chain: Any, now: float) -> Any:
        calls.append(len(chain))
        return verify(chain, now)

    monkeypatch.setattr(tlscert, "verify_certificate_chain", counting)
    addr = await echo.start()
    first = await client.dial(addr, SERVER_KEY.peer_id)
    assert await round_trip(first, b"one") == b"one"
    assert len(calls) == 2  # each side checked the other's certificate once
    await first.close()
    second = await client.dial(addr, SERVER_KEY.peer_id)
    assert await round_trip(second, b"two") == b"two"
    assert len(calls) == 2  # same certificates (same DER): nothing checked again
    assert echo.connections[-1].remote_peer == CLIENT_KEY.peer_id
    # Outside its validity window a remembered certificate is checked in full again.
    der, (key, _, until) = next(iter(client._verified.items()))
    client._verified[der] = (key, until + 1, until + 2)
    third = await client.dial(addr, SERVER_KEY.peer_id)
    assert len(calls) == 3
    await third.close()


async def test_the_verified_certificate_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(quic, "VERIFIED_CERTIFICATES", 2)
    transport = QuicTransport(CLIENT_KEY)
    now = time.time()
    certs = [
        tlscert.generate_certificate(PrivateKey.from_seed(bytes([i]) * 32), now).certificate
        for i in (1, 2, 3)
    ]
    for i, cert in enumerate(certs, start=1):
        key = transport.verify_peer_certificate([cert], now)
        assert key == PrivateKey.from_seed(bytes([i]) * 32).public_key
    assert len(transport._verified) == 2
    transport.close()
