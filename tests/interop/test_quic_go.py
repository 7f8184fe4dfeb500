"""QUIC (``/quic-v1``) interop against go-libp2p (quic-go), both directions.

Python dials a go listener (``peer listen --transport quic``): mutual TLS with the peer ID
checked, identify read from go (agent, key, observed ``/udp/…/quic-v1`` address), ping,
echo on 64 concurrent streams, 64 MiB each way with a hash check, go resetting and closing
streams, and a peer-ID mismatch refused.

The go peer dials a Python QUIC listener (``peer dial ADDR … --transport quic --eager``):
its own checks of connect, ping, echo, source and sink (64 MiB), reset and close run against
streams served here, with identify answered from Python.

A missing go peer is a failure, never a skip (see tests/interop/conftest.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from glueberry.errors import GlueberryError, PeerIdMismatch
from glueberry.net.negotiate import handle_protocol
from glueberry.net.testprotocols import (
    CLOSE_PROTOCOL,
    ECHO_PROTOCOL,
    RESET_PROTOCOL,
    SERVERS,
    SINK_PROTOCOL,
    SOURCE_PROTOCOL,
    echo_pattern,
    expect_close,
    expect_reset,
    feed_sink,
    request_source,
)
from glueberry.net.upgrader import with_prefix
from glueberry.proto.identify import (
    IDENTIFY_PROTOCOL,
    IdentifyReader,
    IdentifyReceived,
    build_identify,
)
from glueberry.proto.ping import PING_PROTOCOL
from glueberry.transport.quic import QuicConnection, QuicStream, QuicTransport
from glueberry.wire.identity import PeerId, PrivateKey
from glueberry.wire.multiaddr import Multiaddr
from tests.interop.conftest import DialerFactory, ListenerFactory
from tests.interop.quic_helpers import open_protocol, quic_ping

pytestmark = pytest.mark.interop

MIB = 1024 * 1024
TRANSFER = 64 * MIB


async def read_identify(conn: QuicConnection) -> IdentifyReceived:
    stream = await open_protocol(conn, IDENTIFY_PROTOCOL)
    reader = IdentifyReader(conn.remote_peer, timeout=None)
    while data := await stream.read():
        reader.receive_data(data, 0.0)
    reader.receive_data(b"", 0.0)
    event = reader.next_event()
    assert isinstance(event, IdentifyReceived), event
    return event


@pytest.fixture
async def transport() -> AsyncIterator[QuicTransport]:
    t = QuicTransport(PrivateKey.generate())
    try:
        yield t
    finally:
        t.close()


# --- Python dials go --------------------------------------------------------------------------


async def test_python_dials_go_over_quic(
    peer_listener: ListenerFactory, transport: QuicTransport
) -> None:
    listener = peer_listener("go", "--transport", "quic", "--events")
    addr = Multiaddr(listener.addr)
    assert addr.transport_kind() == "quic-v1"
    go_peer = PeerId.from_string(listener.peer_id)
    conn = await transport.dial(addr)
    try:
        assert conn.remote_peer == go_peer
        event = await listener.await_event(
            lambda e: e.get("event") == "connected", what="the go side's connected event"
        )
        assert event["transport"] == "quic-v1"
        assert event["remote_peer"] == str(transport._identity.peer_id)

        # identify, read from go
        info = (await read_identify(conn)).info
        assert info.agent_version is not None and "go-libp2p" in info.agent_version
        assert info.public_key is not None and PeerId.from_public_key(info.public_key) == go_peer
        assert info.observed_addr is not None
        assert str(info.observed_addr).endswith(f"/udp/{conn.local_address[1]}/quic-v1")
        assert info.listen_addrs and all(a.transport_kind() == "quic-v1" for a in info.listen_addrs)

        rtts = await quic_ping(conn, 5)
        assert len(rtts) == 5 and max(rtts) < 1.0

        async def echo(i: int) -> None:
            stream = await open_protocol(conn, ECHO_PROTOCOL)
            await echo_pattern(stream, 64 * 1024 + i)

        async with asyncio.timeout(60):
            await asyncio.gather(*(echo(i) for i in range(64)))

        async with asyncio.timeout(120):
            stream = await open_protocol(conn, SOURCE_PROTOCOL)
            assert await request_source(stream, TRANSFER) == TRANSFER
            stream = await open_protocol(conn, SINK_PROTOCOL)
            await feed_sink(stream, TRANSFER)

        stream = await open_protocol(conn, RESET_PROTOCOL)
        reset = await expect_reset(stream)
        assert reset.remote
        stream = await open_protocol(conn, CLOSE_PROTOCOL)
        assert await expect_close(stream) == b"bye"
    finally:
        await conn.close()
    await listener.await_event(
        lambda e: e.get("event") == "disconnected", what="go seeing the QUIC close"
    )


async def test_python_refuses_the_wrong_go_peer(
    peer_listener: ListenerFactory, transport: QuicTransport
) -> None:
    listener = peer_listener("go", "--transport", "quic")
    addr = Multiaddr(listener.addr).without_p2p()
    with pytest.raises(PeerIdMismatch):
        await transport.dial(addr, PrivateKey.generate().peer_id)
    # The go listener is unharmed: a correct dial works.
    conn = await transport.dial(listener.addr)
    assert (await quic_ping(conn, 1))[0] < 1.0
    await conn.close()


# --- go dials Python --------------------------------------------------------------------------


class PythonQuicServer:
    """Serves ping, identify and the glueberry test protocols on every inbound QUIC stream."""

    def __init__(self, key: PrivateKey) -> None:
        self.key = key
        self.transport = QuicTransport(key)
        self.tasks: set[asyncio.Task[None]] = set()
        self.connections: list[QuicConnection] = []
        self.served: dict[str, int] = {}
        self.errors: list[BaseException] = []
        self.addr: Multiaddr | None = None

    async def start(self) -> Multiaddr:
        lst = await self.transport.listen("/ip4/127.0.0.1/udp/0/quic-v1", self._on_connection)
        self.addr = lst.multiaddrs[0].with_p2p(self.key.peer_id)
        return self.addr

    def _on_connection(self, conn: QuicConnection) -> None:
        self.connections.append(conn)
        conn.set_stream_handler(lambda s: self._spawn(self._serve(conn, s)))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, conn: QuicConnection, raw: QuicStream) -> None:
        protocols = [PING_PROTOCOL, IDENTIFY_PROTOCOL, *SERVERS]
        try:
            proto, trailing = await handle_protocol(raw, protocols)
            stream = with_prefix(raw, trailing)
            self.served[proto] = self.served.get(proto, 0) + 1
            if proto == PING_PROTOCOL:
                while True:
                    try:
                        payload = await stream.readexactly(32)
                    except asyncio.IncompleteReadError:
                        break
                    await stream.write(payload)
                await stream.close()
            elif proto == IDENTIFY_PROTOCOL:
                assert self.addr is not None
                await stream.write(
                    build_identify(
                        public_key=self.key.public_key,
                        listen_addrs=[self.addr.without_p2p()],
                        protocols=protocols,
                        observed_addr=Multiaddr.from_socket_address(
                            *conn.remote_address, "udp"
                        ).encapsulate("/quic-v1"),
                    )
                )
                await stream.close()
            else:
                await SERVERS[proto](stream)
        except GlueberryError as exc:
            self.errors.append(exc)
            raw.reset()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.transport.close()


async def test_go_dials_python_over_quic(peer_dialer: DialerFactory) -> None:
    server = PythonQuicServer(PrivateKey.generate())
    addr = await server.start()
    try:
        result = await peer_dialer.arun(
            "go",
            str(addr),
            "connect",
            "identify",
            "ping",
            "echo",
            "source",
            "sink",
            "reset",
            "close",
            "--transport",
            "quic",
            "--eager",
            "--echo-streams",
            "32",
            "--echo-bytes",
            str(128 * 1024),
            "--transfer-mib",
            str(TRANSFER // MIB),
            seconds=240,
        )
        assert result.ok, result.describe()
        connect = result.test("connect")
        assert connect["transport"] == "quic-v1"
        assert connect["remote_peer"] == str(server.key.peer_id)
        assert result.test("identify")["public_key_matches"] is True
        assert result.test("source")["bytes"] == TRANSFER
        assert result.test("reset")["remote"] is True
        assert result.test("close")["received"] == "bye"
        for proto in (PING_PROTOCOL, ECHO_PROTOCOL, SOURCE_PROTOCOL, SINK_PROTOCOL):
            assert server.served.get(proto, 0) >= 1, server.served
        assert server.served[ECHO_PROTOCOL] >= 32
        assert server.connections and server.connections[0].remote_peer == PeerId.from_string(
            result.result["peer_id"]
        )
    finally:
        await server.close()
