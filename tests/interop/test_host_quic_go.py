"""Our default :class:`~glueberry.net.host.Host` against go-libp2p over QUIC, both directions.

Unlike ``test_quic_go.py`` (the bare QUIC transport), everything here goes through the host
with its default transports (TCP + QUIC): the address picks QUIC, the host's identify and
ping services and its multistream dispatch serve the streams, the host's gater/limits/
notifications see the connection.

Python dials go (``peer listen --transport quic``): identify both ways, ping, 200 concurrent
echo streams, 8 MiB each way, reset, close. go dials our host on its QUIC address with go's
default (lazy) stream negotiation and runs its whole suite, including closing the connection
with and without an error code; go's identify shows both our TCP and QUIC addresses.

A missing go peer is a failure, never a skip (see tests/interop/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from glueberry.errors import StreamReset
from glueberry.net.host import Host, HostConfig
from glueberry.net.services import IdentifyService, PingService
from glueberry.net.testprotocols import (
    CLOSE_PROTOCOL,
    ECHO_PROTOCOL,
    RESET_PROTOCOL,
    SINK_PROTOCOL,
    SOURCE_PROTOCOL,
    TEST_LIMITS,
    echo_pattern,
    expect_close,
    expect_reset,
    feed_sink,
    register_test_protocols,
    request_source,
)
from glueberry.transport.base import MuxedConnection
from glueberry.wire.identity import PeerId, PrivateKey
from glueberry.wire.multiaddr import Multiaddr
from tests.interop.conftest import DialerFactory, ListenerFactory

pytestmark = pytest.mark.interop

TRANSFER = 8 << 20
ECHO_STREAMS = 200
LISTEN = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"]


@dataclass
class Local:
    host: Host
    ident: IdentifyService
    ping: PingService
    up: list[MuxedConnection] = field(default_factory=list)
    down: list[MuxedConnection] = field(default_factory=list)


@contextlib.asynccontextmanager
async def local_node(*, listen: bool) -> AsyncIterator[Local]:
    key = PrivateKey.generate()
    config = HostConfig(limits=TEST_LIMITS)  # default transports and security
    async with Host(key, listen_addrs=LISTEN if listen else [], config=config) as h:
        node = Local(h, IdentifyService(h), PingService(h))
        h.add_connection_listener(node.up.append, node.down.append)
        register_test_protocols(h)
        yield node


def quic_addr(host: Host) -> Multiaddr:
    (addr,) = [a for a in host.addrs if a.transport_kind() == "quic-v1"]
    return addr


async def test_host_dials_go_over_quic(peer_listener: ListenerFactory) -> None:
    remote = peer_listener("go", "--transport", "quic", "--events")
    target = Multiaddr(remote.addr)
    assert target.transport_kind() == "quic-v1"
    peer = target.peer_id
    assert peer is not None
    async with local_node(listen=True) as me:
        host = me.host
        async with asyncio.timeout(15):
            conn = await host.connect(peer, [target.without_p2p()])
        assert (conn.transport_name, conn.security_protocol) == ("quic-v1", "/tls/1.0.0")
        assert [c.transport_name for c in me.up] == ["quic-v1"]
        ev = await remote.await_event(
            lambda e: e.get("event") == "connected", what="the go side's connected event"
        )
        assert ev["transport"] == "quic-v1" and ev["remote_peer"] == str(host.peer_id)

        # identify both ways, through the host's identify service
        async with asyncio.timeout(15):
            info = await me.ident.wait_identified(peer)
        assert info.agent_version is not None and info.agent_version.startswith(
            "glueberry-interop-go/"
        )
        assert info.public_key is not None and PeerId.from_public_key(info.public_key) == peer
        assert info.observed_addr is not None
        assert str(info.observed_addr).endswith(f"/udp/{conn.local_address[1]}/quic-v1")
        ident = await remote.await_event(
            lambda e: e.get("event") == "identified" and e.get("remote_peer") == str(host.peer_id),
            what="go identifying us",
        )
        assert set(ident["listen_addrs"]) == {str(a) for a in host.addrs}  # TCP and QUIC

        rtts = await me.ping.ping(peer, 5)
        assert len(rtts) == 5 and all(0 < r < 1 for r in rtts)

        async def echo_one(i: int) -> None:
            await echo_pattern(await host.new_stream(peer, [ECHO_PROTOCOL]), 4096 + i)

        async with asyncio.timeout(120), asyncio.TaskGroup() as tg:
            for i in range(ECHO_STREAMS):
                tg.create_task(echo_one(i))

        async with asyncio.timeout(120):
            got = await request_source(await host.new_stream(peer, [SOURCE_PROTOCOL]), TRANSFER)
            assert got == TRANSFER
            await feed_sink(await host.new_stream(peer, [SINK_PROTOCOL]), TRANSFER)

        exc = await expect_reset(await host.new_stream(peer, [RESET_PROTOCOL]))
        assert isinstance(exc, StreamReset) and exc.remote
        assert await expect_close(await host.new_stream(peer, [CLOSE_PROTOCOL])) == b"bye"
        assert len(host.connections(peer)) == 1  # everything went over the one connection
    await remote.await_event(
        lambda e: e.get("event") == "disconnected", what="go seeing our host close"
    )


async def test_go_dials_host_over_quic(peer_dialer: DialerFactory) -> None:
    async with local_node(listen=True) as me:
        addr = str(quic_addr(me.host).with_p2p(me.host.peer_id))
        run = await peer_dialer.arun(
            "go",
            addr,
            "all",
            "--transport",
            "quic",
            "--echo-streams",
            "64",
            "--echo-bytes",
            str(64 * 1024),
            "--transfer-mib",
            str(TRANSFER >> 20),
            seconds=240,
        )
        assert run.ok, run.describe()
        tests = run.result["tests"]
        assert {"goaway", "disconnect"} <= set(tests)
        connect = run.test("connect")
        assert connect["transport"] == "quic-v1"
        assert connect["remote_peer"] == str(me.host.peer_id)
        ident = run.test("identify")
        assert ident.get("public_key_matches", True) is True
        assert set(ident["listen_addrs"]) == {str(a) for a in me.host.addrs}
        assert Multiaddr(ident["observed_addr"]).transport_kind() == "quic-v1"
        assert run.test("source")["bytes"] == TRANSFER
        assert run.test("reset")["remote"] is True
        assert run.test("close")["received"] == "bye"
        # Our side: connections came in over QUIC, were identified, and all ended.
        assert me.up and all(c.transport_name == "quic-v1" for c in me.up)
        remote_peer = PeerId.from_string(run.result["peer_id"])
        agent = me.host.peerstore.agent_version(remote_peer)
        assert agent is not None and agent.startswith("glueberry-interop-go/")
        for _ in range(1000):  # go's last connection may still be draining
            if len(me.down) == len(me.up):
                break
            await asyncio.sleep(0.01)
        assert len(me.down) == len(me.up), (me.up, me.down)
        assert me.host.limiter.connections == 0
