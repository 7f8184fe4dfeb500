"""The other direction: our Host dials a hostile listener (B-01, B-02, B-03, B-07 as dialer).

A dial to a peer that misbehaves must fail with a typed error within the dial deadline, free
its connection slot, and leave nothing running."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from glueberry.errors import (
    ConnectionLost,
    ConnectTimeout,
    DecryptionFailed,
    NegotiationFailed,
    RemoteProtocolError,
)
from glueberry.net.host import Host, HostConfig
from glueberry.proto.multistream import encode_message
from glueberry.wire.identity import PrivateKey

from .conftest import memory_growth
from .hostile import MSS

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
PEER = PrivateKey.from_seed(b"\x66" * 32).peer_id
MiB = 1 << 20


@contextlib.asynccontextmanager
async def hostile_listener(behaviour: Behaviour) -> AsyncIterator[str]:
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await behaviour(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"/ip4/127.0.0.1/tcp/{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for w in writers:
            w.close()
        await server.wait_closed()


async def agree_noise(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    want = encode_message(MSS) + encode_message("/noise")
    await reader.readexactly(len(want))
    writer.write(want)
    await reader.readexactly(2 + 32)  # Noise message 1


async def huge_msg2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await agree_noise(reader, writer)
    writer.write(b"\xff\xff" + os.urandom(100))
    await reader.read()


async def garbage_msg2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await agree_noise(reader, writer)
    writer.write(b"\x00\xc8" + os.urandom(200))
    await reader.read()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


async def refuse_everything(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(encode_message(MSS))
    await reader.readexactly(len(encode_message(MSS)))
    while True:
        await reader.readuntil(b"\n")
        writer.write(encode_message("na"))


async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    chunk = os.urandom(65536)
    for _ in range(160):  # 10 MiB of noise at once
        writer.write(chunk)
        await writer.drain()


async def wrong_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(encode_message(MSS) + encode_message("/something-else"))
    await reader.read()


@pytest.mark.parametrize(
    ("name", "behaviour", "error"),
    [
        ("msg2 announces 65535 bytes", huge_msg2, RemoteProtocolError),
        ("msg2 is garbage", garbage_msg2, DecryptionFailed),
        ("never answers", silent, ConnectTimeout),
        ("refuses every security protocol", refuse_everything, NegotiationFailed),
        ("answers another protocol", wrong_answer, RemoteProtocolError),
        ("floods 10 MiB of noise", flood, RemoteProtocolError),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_dialing_a_hostile_listener_fails_typed_and_clean(
    name: str, behaviour: Behaviour, error: type[Exception]
) -> None:
    cfg = HostConfig(dial_timeout=1.5, dial_address_timeout=0.8)
    async with hostile_listener(behaviour) as addr, Host(PrivateKey.generate(), config=cfg) as host:
        with memory_growth() as grown:
            with pytest.raises(error) as info:
                await host.connect(PEER, [addr])
            assert grown() < 4 * MiB, name
        assert not isinstance(info.value, ConnectionLost)
        assert host.limiter.connections == 0
        assert not host.connections()
