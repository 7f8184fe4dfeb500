"""Helpers shared by the QUIC interop suites: a protocol stream on a raw QUIC connection and
the libp2p ping over it."""

from __future__ import annotations

import asyncio
import os

from glueberry.net.negotiate import select_protocol
from glueberry.net.upgrader import with_prefix
from glueberry.proto.ping import PING_PROTOCOL
from glueberry.transport.base import Stream
from glueberry.transport.quic import QuicConnection


async def open_protocol(conn: QuicConnection, protocol: str) -> Stream:
    """A new stream on ``conn`` with ``protocol`` negotiated (bytes read past the
    negotiation are kept)."""
    stream = await conn.open_stream()
    proto, trailing = await select_protocol(stream, [protocol])
    assert proto == protocol
    return with_prefix(stream, trailing)


async def quic_ping(conn: QuicConnection, count: int) -> list[float]:
    """``count`` pings on one stream; the round trips in seconds."""
    stream = await open_protocol(conn, PING_PROTOCOL)
    loop = asyncio.get_running_loop()
    rtts = []
    for _ in range(count):
        payload = os.urandom(32)
        start = loop.time()
        await stream.write(payload)
        assert await stream.readexactly(32) == payload
        rtts.append(loop.time() - start)
    await stream.close()
    return rtts
