"""QUIC transport over loopback: handshake, authentication, limits, hostile datagrams, lifecycle."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection as AioquicConnection

from glueberry.errors import (
    ConfigError,
    ConnectionLost,
    HandshakeTimeout,
    PeerIdMismatch,
    StreamError,
)
from glueberry.transport import _aioquic_hooks as hooks
from glueberry.transport.base import MuxedConnection, Stream
from glueberry.transport.quic import (
    MIN_SHORT_PACKET,
    QuicConfig,
    QuicConnection,
    QuicStream,
    QuicTransport,
)
from glueberry.wire import tlscert
from glueberry.wire.identity import PrivateKey
from glueberry.wire.multiaddr import Multiaddr

SERVER_KEY = PrivateKey.from_seed(b"\x21" * 32)
CLIENT_KEY = PrivateKey.from_seed(b"\x22" * 32)
LISTEN = "/ip4/127.0.0.1/udp/0/quic-v1"


class Server:
    """A listening transport that echoes every stream and records its connections."""

    def __init__(self, config: QuicConfig | None = None, key: PrivateKey = SERVER_KEY) -> None:
        self.transport = QuicTransport(key, config)
        self.connections: list[QuicConnection] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.addr: Multiaddr | None = None

    async def start(self) -> Multiaddr:
        lst = await self.transport.listen(LISTEN, self._on_connection)
        self.addr = lst.multiaddrs[0]
        return self.addr

    def _on_connection(self, conn: QuicConnection) -> None:
        self.connections.append(conn)
        conn.set_stream_handler(self._on_stream)

    def _on_stream(self, stream: QuicStream) -> None:
        task = asyncio.get_running_loop().create_task(self._echo(stream))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _echo(stream: QuicStream) -> None:
        try:
            while data := await stream.read():
                await stream.write(data)
            await stream.close_write()
        except StreamError:
            pass

    @property
    def endpoint(self) -> Any:
        return self.transport.endpoints[0]

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.transport.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


@pytest.fixture
async def client() -> AsyncIterator[QuicTransport]:
    transport = QuicTransport(CLIENT_KEY)
    try:
        yield transport
    finally:
        transport.close()


async def echo_once(conn: QuicConnection, payload: bytes) -> bytes:
    stream = await conn.open_stream()
    await stream.write(payload)
    await stream.close_write()
    parts = []
    while chunk := await stream.read():
        parts.append(chunk)
    return b"".join(parts)


# --- basics -----------------------------------------------------------------------------------


async def test_dial_listen_and_echo(server: Server, client: QuicTransport) -> None:
    assert server.addr is not None
    assert str(server.addr).startswith("/ip4/127.0.0.1/udp/")
    assert str(server.addr).endswith("/quic-v1")
    conn = await client.dial(server.addr.with_p2p(SERVER_KEY.peer_id))
    assert isinstance(conn, MuxedConnection)
    assert conn.remote_peer == SERVER_KEY.peer_id
    assert conn.local_peer == CLIENT_KEY.peer_id
    assert conn.remote_public_key == SERVER_KEY.public_key
    assert conn.direction == "outbound"
    assert conn.transport_name == "quic-v1"
    assert await echo_once(conn, b"ping over QUIC") == b"ping over QUIC"
    inbound = server.connections[0]
    assert inbound.remote_peer == CLIENT_KEY.peer_id
    assert inbound.direction == "inbound"
    assert inbound.remote_address[1] == conn.local_address[1]
    await conn.close()
    assert conn.is_closed
    await asyncio.wait_for(inbound.wait_closed(), 5)
    assert isinstance(inbound.error, ConnectionLost)


async def test_transport_claims_only_quic_v1() -> None:
    transport = QuicTransport(CLIENT_KEY)
    try:
        assert transport.can_dial(Multiaddr("/ip4/1.2.3.4/udp/1/quic-v1"))
        assert transport.can_dial(Multiaddr("/dns4/example.com/udp/1/quic-v1"))
        assert not transport.can_dial(Multiaddr("/ip4/1.2.3.4/udp/1/quic"))
        assert not transport.can_dial(Multiaddr("/ip4/1.2.3.4/tcp/1"))
        assert transport.can_listen(Multiaddr("/ip6/::1/udp/0/quic-v1"))
        assert not transport.can_listen(Multiaddr("/dns4/example.com/udp/1/quic-v1"))
        ma = transport.to_multiaddr(("127.0.0.1", 4001))
        assert str(ma) == "/ip4/127.0.0.1/udp/4001/quic-v1"
    finally:
        transport.close()


async def test_ipv6_loopback(client: QuicTransport) -> None:
    srv = Server()
    try:
        lst = await srv.transport.listen("/ip6/::1/udp/0/quic-v1", srv._on_connection)
        conn = await client.dial(lst.multiaddrs[0], SERVER_KEY.peer_id)
        assert await echo_once(conn, b"v6") == b"v6"
    finally:
        await srv.close()


async def test_streams_from_the_listener_side(server: Server, client: QuicTransport) -> None:
    assert server.addr is not None
    got: asyncio.Queue[QuicStream] = asyncio.Queue()
    conn = await client.dial(server.addr, SERVER_KEY.peer_id, on_stream=got.put_nowait)
    await echo_once(conn, b"x")
    inbound = server.connections[0]
    stream = await inbound.open_stream()
    await stream.write(b"from the listener")
    await stream.close_write()
    remote = await asyncio.wait_for(got.get(), 5)
    assert isinstance(remote, Stream)
    assert await remote.readexactly(17) == b"from the listener"
    assert remote.stream_id == stream.stream_id
    assert remote.stream_id % 4 == 1  # server-initiated bidirectional


async def test_many_connections_share_one_listener(server: Server) -> None:
    assert server.addr is not None
    clients = [QuicTransport(PrivateKey.generate()) for _ in range(5)]
    try:
        conns = await asyncio.gather(*(c.dial(server.addr, SERVER_KEY.peer_id) for c in clients))
        replies = await asyncio.gather(
            *(echo_once(c, bytes([i]) * 100) for i, c in enumerate(conns))
        )
        assert replies == [bytes([i]) * 100 for i in range(5)]
        assert len(server.endpoint.connections) == 5
    finally:
        for c in clients:
            c.close()


async def test_listen_and_dial_share_the_socket(client: QuicTransport) -> None:
    """A host that listens dials from its listening port (needed for hole punching)."""
    a = Server(key=SERVER_KEY)
    b = Server(key=PrivateKey.from_seed(b"\x23" * 32))
    try:
        addr_a = await a.start()
        addr_b = await b.start()
        conn = await a.transport.dial(addr_b)
        assert conn.local_address == a.endpoint.local_address
        assert b.connections[0].remote_address == a.endpoint.local_address
        assert await echo_once(conn, b"same port") == b"same port"
        # ... and the same socket still accepts.
        inbound = await client.dial(addr_a)
        assert await echo_once(inbound, b"still listening") == b"still listening"
        assert len(a.transport.endpoints) == 1
    finally:
        await a.close()
        await b.close()


@pytest.mark.slow
async def test_64mib_transfer(server: Server, client: QuicTransport) -> None:
    assert server.addr is not None
    conn = await client.dial(server.addr, SERVER_KEY.peer_id)
    stream = await conn.open_stream()
    payload = os.urandom(64 * 1024 * 1024)

    async def send() -> None:
        view = memoryview(payload)
        for off in range(0, len(payload), 1 << 20):
            await stream.write(view[off : off + (1 << 20)])
        await stream.close_write()

    async def receive() -> str:
        digest = hashlib.sha256()
        while chunk := await stream.read():
            digest.update(chunk)
        return digest.hexdigest()

    async with asyncio.timeout(240):
        _, got = await asyncio.gather(send(), receive())
    assert got == hashlib.sha256(payload).hexdigest()


# --- authentication ---------------------------------------------------------------------------


async def test_wrong_peer_is_refused(server: Server, client: QuicTransport) -> None:
    assert server.addr is not None
    other = PrivateKey.generate().peer_id
    with pytest.raises(PeerIdMismatch):
        await client.dial(server.addr, other)
    assert client.endpoints[0].connections == []
    await asyncio.sleep(0.2)
    assert server.connections == []  # our refusal reached the server before any stream


async def test_address_peer_id_must_agree(server: Server, client: QuicTransport) -> None:
    assert server.addr is not None
    with pytest.raises(PeerIdMismatch):
        await client.dial(server.addr.with_p2p(PrivateKey.generate().peer_id))


async def recvfrom(sock: socket.socket, size: int) -> tuple[bytes, tuple[str, int]]:
    """``sock.recvfrom`` on the running loop (uvloop has no ``loop.sock_recvfrom``)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[tuple[bytes, tuple[str, int]]] = loop.create_future()

    def ready() -> None:
        if fut.done():
            return
        try:
            fut.set_result(sock.recvfrom(size))
        except BlockingIOError:
            return
        except OSError as exc:
            fut.set_exception(exc)

    loop.add_reader(sock.fileno(), ready)
    try:
        return await fut
    finally:
        loop.remove_reader(sock.fileno())


class RawClient:
    """A bare aioquic client over its own UDP socket, for handshakes our transport refuses."""

    def __init__(self, config: QuicConfiguration) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", 0))
        self.conn = AioquicConnection(configuration=config)
        self.events: list[qe.QuicEvent] = []

    async def run(self, server: tuple[str, int], seconds: float = 2.0) -> list[qe.QuicEvent]:
        loop = asyncio.get_running_loop()
        self.conn.connect(server, now=loop.time())
        deadline = loop.time() + seconds
        try:
            while loop.time() < deadline:
                for data, addr in self.conn.datagrams_to_send(loop.time()):
                    self.sock.sendto(data, addr)
                while (ev := self.conn.next_event()) is not None:
                    self.events.append(ev)
                    if isinstance(ev, qe.ConnectionTerminated):
                        return self.events
                try:
                    async with asyncio.timeout(0.05):
                        data, addr = await recvfrom(self.sock, 65536)
                except TimeoutError:
                    timer = self.conn.get_timer()
                    if timer is not None and timer <= loop.time():
                        self.conn.handle_timer(loop.time())
                    continue
                self.conn.receive_datagram(data, addr, loop.time())
        finally:
            self.sock.close()
        return self.events


def raw_config(*, alpn: str = "libp2p", cert: bool = True) -> QuicConfiguration:
    local = tlscert.generate_certificate(CLIENT_KEY, time.time())
    config = hooks.make_configuration(
        is_client=True,
        alpn=alpn,
        local=local,
        idle_timeout=5,
        max_datagram_size=1350,
        stream_window=1 << 20,
        connection_window=1 << 22,
    )
    if not cert:
        config.certificate = None
        config.private_key = None
    return config


def _terminated(evs: list[qe.QuicEvent]) -> qe.ConnectionTerminated:
    ends = [e for e in evs if isinstance(e, qe.ConnectionTerminated)]
    assert ends, evs
    return ends[0]


async def test_client_without_certificate_is_refused(server: Server) -> None:
    events = await RawClient(raw_config(cert=False)).run(server.endpoint.local_address)
    # TLS 1.3: the client finishes before the server judged its (empty) certificate ...
    assert any(isinstance(e, qe.HandshakeCompleted) for e in events)
    # ... then the server closes with CRYPTO_ERROR(certificate_required).
    assert _terminated(events).error_code == 0x100 + 116
    assert server.connections == []
    assert server.endpoint.connections == []


async def test_wrong_alpn_is_refused(server: Server) -> None:
    events = await RawClient(raw_config(alpn="h3")).run(server.endpoint.local_address)
    assert _terminated(events).error_code == 0x100 + 120  # no_application_protocol
    assert not any(isinstance(e, qe.HandshakeCompleted) for e in events)
    assert server.connections == []


async def test_certificate_of_the_wrong_identity_is_refused(server: Server) -> None:
    """The SignedKey must cover the certificate key: a stolen extension does not verify."""
    config = raw_config()
    other = tlscert.generate_certificate(PrivateKey.generate(), time.time())
    config.private_key = other.private_key  # certificate and key no longer match
    events = await RawClient(config).run(server.endpoint.local_address)
    assert _terminated(events).error_code >= 0x100
    assert server.connections == []


# --- limits and timeouts --------------------------------------------------------------------


async def test_handshake_timeout() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    transport = QuicTransport(CLIENT_KEY, QuicConfig(handshake_timeout=0.3))
    try:
        port = silent.getsockname()[1]
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(HandshakeTimeout):
            await transport.dial(f"/ip4/127.0.0.1/udp/{port}/quic-v1")
        assert 0.25 < loop.time() - start < 2
        assert transport.endpoints[0].connections == []
    finally:
        transport.close()
        silent.close()


async def test_dial_timeout_argument(client: QuicTransport) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(HandshakeTimeout):
            await client.dial(f"/ip4/127.0.0.1/udp/{silent.getsockname()[1]}/quic-v1", timeout=0.2)
    finally:
        silent.close()


async def test_connection_cap() -> None:
    srv = Server(QuicConfig(max_connections=2))
    addr = await srv.start()
    clients = [
        QuicTransport(PrivateKey.generate(), QuicConfig(handshake_timeout=0.5)) for _ in range(3)
    ]
    try:
        await clients[0].dial(addr)
        await clients[1].dial(addr)
        with pytest.raises(HandshakeTimeout):
            await clients[2].dial(addr)
        assert srv.endpoint.dropped.get("full", 0) >= 1
        assert len(srv.connections) == 2
    finally:
        for c in clients:
            c.close()
        await srv.close()


async def test_idle_timeout_and_keepalive() -> None:
    srv = Server(QuicConfig(idle_timeout=0.6, keepalive_interval=0.15))
    addr = await srv.start()
    kept = QuicTransport(
        PrivateKey.generate(), QuicConfig(idle_timeout=0.6, keepalive_interval=0.15)
    )
    idle = QuicTransport(
        PrivateKey.generate(), QuicConfig(idle_timeout=0.6, keepalive_interval=None)
    )
    try:
        alive = await kept.dial(addr)
        await asyncio.sleep(1.5)  # keepalive PINGs both ways: the connection survives
        assert not alive.is_closed
        assert await echo_once(alive, b"still here") == b"still here"
        # Silence the server's socket: the client's idle timer ends the connection.
        doomed = await idle.dial(addr)
        loop = asyncio.get_running_loop()
        loop.remove_reader(srv.endpoint._sock.fileno())
        await asyncio.wait_for(doomed.wait_closed(), 5)
        assert isinstance(doomed.error, ConnectionLost)
        loop.add_reader(srv.endpoint._sock.fileno(), srv.endpoint._on_readable)
    finally:
        kept.close()
        idle.close()
        await srv.close()


async def test_unidirectional_streams_are_stopped(server: Server, client: QuicTransport) -> None:
    assert server.addr is not None
    conn = await client.dial(server.addr, SERVER_KEY.peer_id)
    core = conn._core
    sid = core.get_next_available_stream_id(is_unidirectional=True)
    core.send_stream_data(sid, b"libp2p does not use these", end_stream=False)
    conn._want_transmit()
    assert await echo_once(conn, b"bidi still works") == b"bidi still works"
    # The server never handed the unidirectional stream to the application.
    assert all(s.stream_id % 4 == 0 for s in server.connections[0].streams)


# --- hostile datagrams (B-31, B-34) ---------------------------------------------------------


async def test_malformed_datagrams_are_dropped_and_the_endpoint_keeps_serving(
    server: Server, client: QuicTransport
) -> None:
    assert server.addr is not None
    conn = await client.dial(server.addr, SERVER_KEY.peer_id)
    assert await echo_once(conn, b"before") == b"before"
    target = server.endpoint.local_address
    known_cid = next(iter(server.connections[0]._cids))
    rnd = random.Random(31)
    junk: list[bytes] = [
        b"",
        b"\x00",
        b"\x40" + known_cid + b"\x00" * 5,  # known CID, too short for header protection
        b"\x40" + known_cid + bytes(MIN_SHORT_PACKET - 1 - len(known_cid) - 1),
        b"\x00" + known_cid + bytes(40),  # fixed bit clear
        b"\xc0\x00\x00\x00\x01\xff" + bytes(60),  # DCID length 255
        b"\xc0\x00\x00\x00\x01\x08" + bytes(8) + b"\x30" + bytes(10),  # SCID length 48
        b"\xc0\x00\x00\x00\x01\x08" + bytes(8) + b"\x00" + bytes(200),  # small Initial
        b"\xc0\x0a\x0a\x0a\x0a\x08" + bytes(8) + b"\x00" + bytes(200),  # unknown version, small
        b"\x40" + os.urandom(8) + os.urandom(100),  # unknown CID
    ]
    junk += [rnd.randbytes(rnd.randrange(1, 1500)) for _ in range(300)]
    junk += [b"\x40" + known_cid + rnd.randbytes(rnd.randrange(20, 200)) for _ in range(100)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for data in junk:
            sender.sendto(data, target)
            if len(junk) % 50 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.3)
    finally:
        sender.close()
    dropped = server.endpoint.dropped
    assert dropped.get("short", 0) >= 2
    assert dropped.get("malformed", 0) >= 2
    assert dropped.get("unknown-cid", 0) >= 1
    assert dropped.get("small-initial", 0) >= 1
    # The connection and the endpoint are unharmed: old and new connections work.
    assert await echo_once(conn, b"after") == b"after"
    fresh = QuicTransport(PrivateKey.generate())
    try:
        conn2 = await fresh.dial(server.addr, SERVER_KEY.peer_id)
        assert await echo_once(conn2, b"new") == b"new"
    finally:
        fresh.close()


async def test_unsupported_version_gets_version_negotiation(server: Server) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        initial = b"\xc0\x0a\x1a\x2a\x3a\x08" + b"D" * 8 + b"\x08" + b"S" * 8 + bytes(1200)
        sock.sendto(initial, server.endpoint.local_address)
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 2)
        assert data[1:5] == b"\x00\x00\x00\x00"  # Version Negotiation
        assert data[6:14] == b"S" * 8  # addressed to the client's SCID
        assert b"\x00\x00\x00\x01" in data[15:]  # offers QUIC v1
    finally:
        sock.close()


# --- lifecycle --------------------------------------------------------------------------------


async def test_close_releases_everything() -> None:
    srv = Server()
    addr = await srv.start()
    cli = QuicTransport(CLIENT_KEY)
    conn = await cli.dial(addr)
    stream = await conn.open_stream()
    reader = asyncio.get_running_loop().create_task(stream.read())
    await asyncio.sleep(0.01)
    socks = [ep._sock for ep in srv.transport.endpoints + cli.endpoints]
    cli.close()
    await srv.close()
    with pytest.raises(StreamError):
        await reader
    assert srv.transport.endpoints == []
    assert cli.endpoints == []
    assert all(s.fileno() == -1 for s in socks)
    with pytest.raises(ConnectionLost):
        await conn.open_stream()


async def test_listener_close_keeps_connections_until_they_end(client: QuicTransport) -> None:
    srv = Server()
    lst_addr = await srv.start()
    try:
        conn = await client.dial(lst_addr)
        endpoint = srv.endpoint
        endpoint.stop_listening()
        assert not endpoint.listening
        assert await echo_once(conn, b"after stop") == b"after stop"
        await conn.close()
        await asyncio.wait_for(srv.connections[0].wait_closed(), 5)
        assert endpoint.is_closed  # last connection gone: the socket closed
        with pytest.raises(HandshakeTimeout):
            await client.dial(lst_addr, timeout=0.3)
    finally:
        await srv.close()


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        QuicConfig(handshake_timeout=0)
    with pytest.raises(ConfigError):
        QuicConfig(stream_receive_window=1024)
    with pytest.raises(ConfigError):
        QuicConfig(stream_receive_window=1 << 20, connection_receive_window=1 << 19)
    with pytest.raises(ConfigError):
        QuicConfig(max_datagram_size=1000)
    with pytest.raises(ConfigError):
        QuicConfig(keepalive_interval=0)


async def test_accept_filter_and_raw_datagrams(client: QuicTransport) -> None:
    srv = Server(QuicConfig(handshake_timeout=0.4))
    seen: list[tuple[str, int]] = []

    def accept(addr: tuple[str, int]) -> bool:
        seen.append(addr)
        return False

    lst = await srv.transport.listen(LISTEN, srv._on_connection, accept=accept)
    try:
        cli = QuicTransport(CLIENT_KEY, QuicConfig(handshake_timeout=0.4))
        try:
            with pytest.raises(HandshakeTimeout):
                await cli.dial(lst.multiaddrs[0])
            assert seen and seen[0][0] == "127.0.0.1"
            assert lst.endpoint.dropped.get("refused", 0) >= 1
            assert srv.connections == []
        finally:
            cli.close()
        # send_datagram: hole-punching packets leave from the listening port.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        probe.setblocking(False)
        try:
            lst.endpoint.send_datagram(b"punch", probe.getsockname())
            data, addr = await asyncio.wait_for(recvfrom(probe, 100), 2)
            assert data == b"punch" and addr[1] == lst.endpoint.local_address[1]
        finally:
            probe.close()
    finally:
        await srv.close()


async def test_incoming_stream_limit(client: QuicTransport) -> None:
    """B-33: at most ``max_incoming_streams`` peer streams at once; more wait for credit."""
    srv = Server(QuicConfig(max_incoming_streams=4))
    addr = await srv.start()
    try:
        conn = await client.dial(addr, SERVER_KEY.peer_id)
        streams = [await conn.open_stream() for _ in range(10)]
        for s in streams:
            await s.write(b"x")
        await asyncio.sleep(0.3)
        inbound = srv.connections[0]
        assert len(inbound.streams) == 4
        # Finishing the first four lets the others in.
        for s in streams[:4]:
            await s.close_write()
            assert await s.read() == b"x"
            assert await s.read() == b""
        async with asyncio.timeout(5):
            for s in streams[4:]:
                await s.close_write()
                assert await s.readexactly(1) == b"x"
    finally:
        await srv.close()
