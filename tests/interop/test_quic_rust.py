"""Interop against rust-libp2p (``interop/rust``, libp2p 0.56.0): QUIC both ways, and TCP +
Noise + yamux both ways.

The rust peer (docs/interop.md, "rust peer") serves identify, ping and the echo, source,
sink and close test protocols, and runs the same tests as a dialer (``peer dial``), printing
one JSON line. Over QUIC the Python side is a bare :class:`QuicTransport` node that serves
ping, identify (with a signed peer record) and the test protocols on every connection, in
both roles: rust-libp2p opens identify and ping streams to a peer that dialed it, too. Over
TCP it is a :class:`Host` with Noise and yamux.

What is checked, each direction: the peer IDs, identify both ways (agent, protocol version,
protocols, listen and observed addresses, public key, signed peer record), rust's ping
behaviour against our ping server and our pings against rust's, echo on many concurrent
streams, a transfer each way on one stream with a count and SHA-256 check, the close protocol,
and the connection close seen by the other side. rust-libp2p's multistream-select is run
eagerly (its default) and lazily (``--lazy``: the protocol and the first data in one write).

Sizes: 64 MiB each way on both transports. aioquic moves 10–20 MB/s here, so a QUIC test
takes about 15 s on an idle machine (TCP tests 1–3 s); on a busy one (load 6–10) about 3–5x
that, hence the generous timeouts.
A missing rust peer is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from glueberry.errors import GlueberryError, PeerIdMismatch
from glueberry.net.host import Host, HostConfig
from glueberry.net.negotiate import handle_protocol
from glueberry.net.services import IdentifyService, PingService
from glueberry.net.testprotocols import (
    CLOSE_PROTOCOL,
    ECHO_PROTOCOL,
    SERVERS,
    SINK_PROTOCOL,
    SOURCE_PROTOCOL,
    TEST_LIMITS,
    echo_pattern,
    expect_close,
    feed_sink,
    register_test_protocols,
    request_source,
)
from glueberry.net.upgrader import noise_security, with_prefix
from glueberry.proto.identify import (
    AGENT_VERSION,
    IDENTIFY_PROTOCOL,
    IdentifyInfo,
    IdentifyReader,
    IdentifyReceived,
    build_identify,
    make_signed_peer_record,
)
from glueberry.proto.ping import PING_PROTOCOL
from glueberry.transport.quic import QuicConnection, QuicStream, QuicTransport
from glueberry.wire import pb_identify, varint
from glueberry.wire.identity import PeerId, PrivateKey
from glueberry.wire.multiaddr import Multiaddr
from tests.interop.conftest import RUST_PEER, DialerFactory, Listener, ListenerFactory
from tests.interop.quic_helpers import open_protocol, quic_ping

pytestmark = pytest.mark.interop


MIB = 1024 * 1024
#: Bytes each way on one stream. aioquic moves 10-20 MB/s here (rust->Python ~20, Python->rust
#: ~10 on an idle machine; 3-5x less when the machine is busy): 64 MiB takes 3-7 s each way.
QUIC_TRANSFER = 64 * MIB
TCP_TRANSFER = 64 * MIB
RUST_AGENT_PREFIX = "glueberry-interop-rust/1.0 rust-libp2p/"
#: What the rust peer serves besides identify and ping (it has no stream reset: not served).
RUST_TEST_PROTOCOLS = {ECHO_PROTOCOL, SOURCE_PROTOCOL, SINK_PROTOCOL, CLOSE_PROTOCOL}
#: The Python QUIC node's protocols.
PY_PROTOCOLS = [PING_PROTOCOL, IDENTIFY_PROTOCOL, *SERVERS]


# --- the rust peer through the shared process fixtures -------------------------------------


@dataclass
class Rust:
    listeners: ListenerFactory
    dialers: DialerFactory

    def listen(self, *args: str) -> Listener:
        return self.listeners("rust", *args)

    async def dial(self, addr: object, *args: str, seconds: float = 120) -> Any:
        return await self.dialers.arun("rust", str(addr), *args, seconds=seconds)


@pytest.fixture
def rust(peer_listener: ListenerFactory, peer_dialer: DialerFactory) -> Iterator[Rust]:
    """The shared fixtures' factories for the ``"rust"`` peer (``RUST_PEER``)."""
    if not os.access(RUST_PEER, os.X_OK):
        pytest.fail(f"interop peer {RUST_PEER} is missing: run interop/build.sh (needs cargo)")
    yield Rust(peer_listener, peer_dialer)


def is_event(name: str, **fields: object) -> Any:
    return lambda e: e.get("event") == name and all(e.get(k) == v for k, v in fields.items())


def check_rust_identify(info: IdentifyInfo, rust_peer: PeerId, transport: str) -> None:
    """What rust-libp2p's identify told us."""
    assert info.agent_version is not None and info.agent_version.startswith(RUST_AGENT_PREFIX)
    assert info.protocol_version == "ipfs/0.1.0"
    assert info.public_key is not None and PeerId.from_public_key(info.public_key) == rust_peer
    assert info.protocols is not None
    assert {IDENTIFY_PROTOCOL, PING_PROTOCOL, *RUST_TEST_PROTOCOLS} <= set(info.protocols)
    # rust-libp2p 0.57 signs its peer record with its own legacy domain and payload type
    # (rust-libp2p#6204), so we, like go and js, refuse it (see check_rust_record)
    assert info.signed_peer_record is None and info.signed_record_rejected
    assert all(a.transport_kind() == transport for a in info.listen_addrs or ())


# --- the Python QUIC node -------------------------------------------------------------------


@dataclass
class QuicNode:
    """A QUIC transport serving ping, identify and the test protocols on every connection
    (inbound and dialed), recording what it served."""

    key: PrivateKey = field(default_factory=PrivateKey.generate)
    transport: QuicTransport = field(init=False)
    addr: Multiaddr | None = None
    connections: list[QuicConnection] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.transport = QuicTransport(self.key)

    @property
    def peer_id(self) -> PeerId:
        return self.key.peer_id

    async def listen(self) -> Multiaddr:
        lst = await self.transport.listen("/ip4/127.0.0.1/udp/0/quic-v1", self._on_connection)
        self.addr = lst.multiaddrs[0].with_p2p(self.peer_id)
        return self.addr

    async def dial(self, addr: Multiaddr | str, peer: PeerId | None = None) -> QuicConnection:
        # rust-libp2p opens identify and ping streams as soon as the connection is up
        conn = await self.transport.dial(
            addr, peer, on_stream=lambda s: self._spawn(self._serve(s.connection, s))
        )
        self.connections.append(conn)
        return conn

    def _on_connection(self, conn: QuicConnection) -> None:
        self.connections.append(conn)
        conn.set_stream_handler(lambda s: self._spawn(self._serve(conn, s)))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def identify_message(self, conn: QuicConnection) -> bytes:
        addrs = [] if self.addr is None else [self.addr.without_p2p()]
        observed = Multiaddr.from_socket_address(*conn.remote_address, "udp").encapsulate(
            "/quic-v1"
        )
        return build_identify(
            public_key=self.key.public_key,
            listen_addrs=addrs,
            protocols=PY_PROTOCOLS,
            observed_addr=observed,
            signed_peer_record=make_signed_peer_record(self.key, addrs, time.time_ns()),
        )

    async def _serve(self, conn: QuicConnection, raw: QuicStream) -> None:
        try:
            proto, trailing = await handle_protocol(raw, PY_PROTOCOLS)
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
                await stream.write(self.identify_message(conn))
                await stream.close()
            else:
                await SERVERS[proto](stream)
        except (GlueberryError, asyncio.IncompleteReadError) as exc:
            self.errors.append(exc)
            raw.reset()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.transport.close()


@contextlib.asynccontextmanager
async def quic_node() -> AsyncIterator[QuicNode]:
    node = QuicNode()
    try:
        yield node
    finally:
        await node.close()


async def quic_identify(conn: QuicConnection) -> tuple[IdentifyInfo, bytes]:
    """The remote's identify as our reader sees it, and the raw stream bytes."""
    stream = await open_protocol(conn, IDENTIFY_PROTOCOL)
    reader = IdentifyReader(conn.remote_peer, timeout=None)
    raw = b""
    while data := await stream.read():
        raw += data
        reader.receive_data(data, 0.0)
    reader.receive_data(b"", 0.0)
    event = reader.next_event()
    assert isinstance(event, IdentifyReceived), event
    return event.info, raw


def check_rust_record(raw: bytes, rust_peer: PeerId, listen: Multiaddr) -> None:
    """rust's signed peer record is well formed and correctly signed, under rust-libp2p's
    legacy constants (domain ``libp2p-routing-state``, payload type
    ``/libp2p/routing-state-record``) instead of the spec's ``libp2p-peer-record`` and
    multicodec 0x0301 that go, js and we use: that, and only that, is why we refuse it."""
    length, off = varint.decode(raw) or (0, 0)
    fields = pb_identify.decode_identify(raw[off : off + length])
    assert fields.signed_peer_record is not None
    env = pb_identify.decode_envelope(fields.signed_peer_record)
    assert env.payload_type == b"/libp2p/routing-state-record"
    assert pb_identify.PEER_RECORD_PAYLOAD_TYPE == b"\x03\x01"  # the spec's, go's and ours
    assert env.verify("libp2p-routing-state")
    assert not env.verify(pb_identify.PEER_RECORD_DOMAIN)
    assert PeerId.from_public_key(env.public_key) == rust_peer
    record = pb_identify.decode_peer_record(env.payload)
    assert record.peer_id == rust_peer
    assert record.addrs == [listen.to_bytes()]


def check_rust_served(listener: Listener, peer: PeerId, echo_streams: int, transfer: int) -> None:
    """The rust listener's stream events: every echo stream and both transfers ended well."""
    mine = [e for e in listener.events if e.get("event") == "stream" and e["peer"] == str(peer)]
    assert all(e["ok"] for e in mine), [e for e in mine if not e["ok"]]
    by_proto: dict[str, list[dict[str, Any]]] = {}
    for e in mine:
        by_proto.setdefault(e["protocol"], []).append(e)
    assert len(by_proto[ECHO_PROTOCOL]) == echo_streams
    assert [e["bytes"] for e in by_proto[SOURCE_PROTOCOL]] == [transfer]
    assert [e["bytes"] for e in by_proto[SINK_PROTOCOL]] == [transfer]
    assert [e["bytes"] for e in by_proto[CLOSE_PROTOCOL]] == [3]


def check_rust_dial(
    result: Any, python_peer: PeerId, transport: str, echo_streams: int, transfer: int
) -> None:
    """The rust dialer's JSON line: every test passed, with the expected details."""
    assert result.ok, result.describe()
    connect = result.test("connect")
    assert connect["transport"] == transport
    assert connect["remote_peer"] == str(python_peer)
    ident = result.test("identify")
    assert ident["agent_version"] == AGENT_VERSION
    assert ident["protocol_version"] == "ipfs/0.1.0"
    assert ident["public_key_matches"] is True
    assert ident["signed_peer_record"] is False  # ours is spec format: rust ignores it
    assert {IDENTIFY_PROTOCOL, PING_PROTOCOL, *RUST_TEST_PROTOCOLS} <= set(ident["protocols"])
    assert len(result.test("ping")["rtts_us"]) == 5
    assert result.test("echo")["streams"] == echo_streams
    assert result.test("source")["bytes"] == transfer
    assert result.test("sink")["bytes"] == transfer
    assert result.test("close")["received"] == "bye"


# --- QUIC: Python dials rust ----------------------------------------------------------------


async def test_python_dials_rust_over_quic(rust: Rust) -> None:
    listener = rust.listen("--transport", "quic", "--events")
    addr = Multiaddr(listener.addr)
    assert addr.transport_kind() == "quic-v1"
    rust_peer = PeerId.from_string(listener.peer_id)
    async with quic_node() as node:
        conn = await node.dial(addr)
        assert conn.remote_peer == rust_peer
        me = str(node.peer_id)
        ev = await listener.await_event(is_event("connected", remote_peer=me))
        assert ev["transport"] == "quic-v1" and ev["direction"] == "inbound"

        # identify, read from rust: its observed address for us is our UDP port
        info, raw = await quic_identify(conn)
        check_rust_identify(info, rust_peer, "quic-v1")
        check_rust_record(raw, rust_peer, addr.without_p2p())
        assert info.observed_addr is not None
        assert str(info.observed_addr).endswith(f"/udp/{conn.local_address[1]}/quic-v1")

        # identify, rust's side: it identified us on the connection we dialed
        ev = await listener.await_event(is_event("identified", remote_peer=me), what="identify")
        assert ev["agent_version"] == AGENT_VERSION
        # rust (0.57) ignores a spec-format signed peer record, as we ignore its legacy one
        assert ev["public_key_matches"] is True and ev["signed_peer_record"] is False
        assert ev["observed_addr"] == str(addr.without_p2p())
        # rust's ping behaviour pinged us at once
        ev = await listener.await_event(is_event("ping", remote_peer=me), what="a ping")
        assert ev["ok"] is True, ev

        # One ping per stream. rust-libp2p's ping handler (libp2p-ping 0.48) answers the first
        # ping on a stream at once, but then sets up the read of the next one without polling
        # it; over QUIC, where only that stream's waker would fire, a second ping on the same
        # stream waits for the handler's next 15 s ping timer (seen: 2.6 ms, 14.9 s, 4.5 ms).
        # Over yamux every frame wakes the connection, which hides it (the TCP test below
        # pings five times on one stream).
        rtts = [(await quic_ping(conn, 1))[0] for _ in range(5)]
        assert max(rtts) < 1.0, rtts

        async def echo(i: int) -> None:
            await echo_pattern(await open_protocol(conn, ECHO_PROTOCOL), 64 * 1024 + i)

        async with asyncio.timeout(60):
            await asyncio.gather(*(echo(i) for i in range(64)))
        async with asyncio.timeout(60):
            stream = await open_protocol(conn, SOURCE_PROTOCOL)
            assert await request_source(stream, QUIC_TRANSFER) == QUIC_TRANSFER
        async with asyncio.timeout(60):
            await feed_sink(await open_protocol(conn, SINK_PROTOCOL), QUIC_TRANSFER)
        assert await expect_close(await open_protocol(conn, CLOSE_PROTOCOL)) == b"bye"

        await listener.await_event(
            lambda e: e.get("event") == "stream" and e.get("protocol") == CLOSE_PROTOCOL
        )
        check_rust_served(listener, node.peer_id, 64, QUIC_TRANSFER)
        assert node.served.get(IDENTIFY_PROTOCOL) == 1 and node.served.get(PING_PROTOCOL)
        assert not node.errors, node.errors
        await conn.close()
        await listener.await_event(is_event("disconnected", remote_peer=me), what="the close")


async def test_python_refuses_the_wrong_rust_peer_over_quic(rust: Rust) -> None:
    listener = rust.listen("--transport", "quic")
    async with quic_node() as node:
        with pytest.raises(PeerIdMismatch):
            await node.dial(Multiaddr(listener.addr).without_p2p(), PrivateKey.generate().peer_id)
        conn = await node.dial(listener.addr)  # the rust listener is unharmed
        await echo_pattern(await open_protocol(conn, ECHO_PROTOCOL), 1000)
        await conn.close()


# --- QUIC: rust dials Python ----------------------------------------------------------------


async def test_rust_dials_python_over_quic(rust: Rust) -> None:
    async with quic_node() as node:
        addr = await node.listen()
        result = await rust.dial(
            addr,
            "all",
            "--echo-streams",
            "64",
            "--echo-bytes",
            str(64 * 1024),
            "--transfer-mib",
            str(QUIC_TRANSFER // MIB),
        )
        check_rust_dial(result, node.peer_id, "quic-v1", 64, QUIC_TRANSFER)
        assert result.test("identify")["observed_addr"].endswith("/quic-v1")
        assert result.test("identify")["listen_addrs"] == [str(addr.without_p2p())]
        assert node.served[ECHO_PROTOCOL] == 64
        assert node.served[SOURCE_PROTOCOL] == node.served[SINK_PROTOCOL] == 1
        assert node.served[PING_PROTOCOL] >= 1 and node.served[IDENTIFY_PROTOCOL] == 1
        assert not node.errors, node.errors
        assert node.connections[0].remote_peer == PeerId.from_string(result.result["peer_id"])


async def test_rust_dials_python_over_quic_lazily(rust: Rust) -> None:
    """rust's V1Lazy multistream-select: header, protocol and first data in one go."""
    async with quic_node() as node:
        addr = await node.listen()
        result = await rust.dial(
            addr, "echo", "transfer", "close", "--lazy", "--echo-streams", "16",
            "--transfer-mib", "4",
        )  # fmt: skip
        assert result.ok, result.describe()
        assert node.served[ECHO_PROTOCOL] == 16 and not node.errors


# --- TCP + Noise + yamux --------------------------------------------------------------------

TCP_CONFIG = HostConfig(limits=TEST_LIMITS, security={"/noise": noise_security()})
TCP_ECHO_STREAMS = 256


@dataclass
class TcpNode:
    host: Host
    ident: IdentifyService
    ping: PingService


@contextlib.asynccontextmanager
async def tcp_node(*, listen: bool) -> AsyncIterator[TcpNode]:
    addrs = ["/ip4/127.0.0.1/tcp/0"] if listen else []
    async with Host(PrivateKey.generate(), listen_addrs=addrs, config=TCP_CONFIG) as host:
        node = TcpNode(host, IdentifyService(host), PingService(host))
        register_test_protocols(host)
        yield node


async def test_python_dials_rust_over_tcp(rust: Rust) -> None:
    listener = rust.listen("--events")
    target = Multiaddr(listener.addr)
    peer = target.peer_id
    assert peer is not None
    async with tcp_node(listen=False) as me:
        host = me.host
        async with asyncio.timeout(15):
            conn = await host.connect(peer, [target.without_p2p()])
        assert conn.security_protocol == "/noise" and conn.muxer_protocol == "/yamux/1.0.0"
        async with asyncio.timeout(15):
            info = await me.ident.wait_identified(peer)
        check_rust_identify(info, peer, "tcp")
        assert info.observed_addr == Multiaddr.from_socket_address(*conn.local_address)
        mine = str(host.peer_id)
        ev = await listener.await_event(is_event("identified", remote_peer=mine))
        assert ev["agent_version"] == AGENT_VERSION and ev["signed_peer_record"] is False
        assert ev["observed_addr"] == str(target.without_p2p())
        ev = await listener.await_event(is_event("ping", remote_peer=mine), what="a ping")
        assert ev["ok"] is True, ev

        rtts = await me.ping.ping(peer, 5)
        assert len(rtts) == 5 and all(0 < r < 1 for r in rtts)

        async def echo_one(i: int) -> None:
            await echo_pattern(await host.new_stream(peer, [ECHO_PROTOCOL]), 16 * 1024 + i)

        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            for i in range(TCP_ECHO_STREAMS):
                tg.create_task(echo_one(i))
        async with asyncio.timeout(60):
            stream = await host.new_stream(peer, [SOURCE_PROTOCOL])
            assert await request_source(stream, TCP_TRANSFER) == TCP_TRANSFER
        async with asyncio.timeout(60):
            await feed_sink(await host.new_stream(peer, [SINK_PROTOCOL]), TCP_TRANSFER)
        assert await expect_close(await host.new_stream(peer, [CLOSE_PROTOCOL])) == b"bye"
        await listener.await_event(
            lambda e: e.get("event") == "stream" and e.get("protocol") == CLOSE_PROTOCOL
        )
        check_rust_served(listener, host.peer_id, TCP_ECHO_STREAMS, TCP_TRANSFER)

        # we close the connection under open streams; rust sees it and accepts a new one
        open_streams = [await host.new_stream(peer, [ECHO_PROTOCOL]) for _ in range(4)]
        for s in open_streams:
            await s.write(b"ping")
            assert await s.readexactly(4) == b"ping"
        await conn.close()
        for s in open_streams:
            with pytest.raises((GlueberryError, asyncio.IncompleteReadError)):
                async with asyncio.timeout(5):
                    await s.readexactly(1)
        await listener.await_event(is_event("disconnected", remote_peer=mine))
        async with asyncio.timeout(15):
            await host.connect(peer, [target.without_p2p()])
        await echo_pattern(await host.new_stream(peer, [ECHO_PROTOCOL]), 1024)


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
async def test_rust_dials_python_over_tcp(rust: Rust, lazy: bool) -> None:
    seed = os.urandom(32)  # the rust dialer's identity, so we can watch for it
    rust_peer = PrivateKey.from_seed(seed).peer_id
    async with tcp_node(listen=True) as me:
        identified = asyncio.create_task(me.ident.wait_identified(rust_peer))
        addr = me.host.addrs[0].with_p2p(me.host.peer_id)
        flags = ["--seed", seed.hex(), *(["--lazy"] if lazy else [])]
        result = await rust.dial(
            addr, "all", "--echo-streams", "128", "--transfer-mib", str(TCP_TRANSFER // MIB), *flags
        )
        check_rust_dial(result, me.host.peer_id, "tcp", 128, TCP_TRANSFER)
        assert result.result["peer_id"] == str(rust_peer)
        # we identified the rust dialer on the inbound connection
        async with asyncio.timeout(5):
            check_rust_identify(await identified, rust_peer, "tcp")
