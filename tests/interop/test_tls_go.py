"""TCP + TLS 1.3 (``/tls/1.0.0``) + yamux interop against go-libp2p, both directions.

go-libp2p proposes ``/tls/1.0.0`` first. Here the Python host offers TLS (and Noise after
it, go's order), so both sides settle on TLS, with the muxer agreed early through ALPN
(``/yamux/1.0.0``). Checked: connect (security, early muxer), identify both ways, ping,
echo on many streams, 64 MiB each way with a hash check, resets and clean closes; a
peer-ID mismatch is refused during the handshake.

A missing go peer is a failure, never a skip (see tests/interop/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from glueberry.errors import ConnectError, PeerIdMismatch, StreamReset
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
    pattern_chunk,
    register_test_protocols,
    request_source,
)
from glueberry.net.tls import tls_security
from glueberry.net.upgrader import noise_security
from glueberry.wire.identity import PeerId, PrivateKey
from glueberry.wire.multiaddr import Multiaddr
from tests.interop.conftest import DialerFactory, ListenerFactory

pytestmark = pytest.mark.interop

TRANSFER = 64 << 20
ECHO_STREAMS = 200
TLS = "/tls/1.0.0"


def tls_config(*, noise: bool = True) -> HostConfig:
    security = {TLS: tls_security()}
    if noise:
        security["/noise"] = noise_security()
    return HostConfig(limits=TEST_LIMITS, security=security)


@dataclass
class Local:
    host: Host
    ident: IdentifyService
    ping: PingService


@contextlib.asynccontextmanager
async def local_node(*, listen: bool, noise: bool = True) -> AsyncIterator[Local]:
    addrs = ["/ip4/127.0.0.1/tcp/0"] if listen else []
    async with Host(PrivateKey.generate(), listen_addrs=addrs, config=tls_config(noise=noise)) as h:
        node = Local(h, IdentifyService(h), PingService(h))
        register_test_protocols(h)
        yield node


async def sink_with_hash(host: Host, peer: PeerId, n: int) -> None:
    stream = await host.new_stream(peer, [SINK_PROTOCOL])
    digest = hashlib.sha256()
    pos = 0
    while pos < n:
        chunk = pattern_chunk(pos, n - pos)
        digest.update(chunk)
        await stream.write(chunk)
        pos += len(chunk)
    await stream.close_write()
    reply = b""
    while data := await stream.read():
        reply += data
    assert len(reply) == 40
    assert int.from_bytes(reply[:8], "big") == n
    assert reply[8:] == digest.digest()


async def test_python_dials_go_over_tls(peer_listener: ListenerFactory) -> None:
    remote = peer_listener("go", "--security", "tls", "--events")
    target = Multiaddr(remote.addr)
    peer = target.peer_id
    assert peer is not None
    async with local_node(listen=False, noise=False) as me:
        host = me.host
        async with asyncio.timeout(15):
            conn = await host.connect(peer, [target.without_p2p()])
        assert conn.remote_peer == peer
        assert conn.security_protocol == TLS
        assert conn.muxer_protocol == "/yamux/1.0.0"
        ev = await remote.await_event(
            lambda e: e.get("event") == "connected", what="the go side's connected event"
        )
        assert ev["security"] == TLS
        assert ev["early_muxer"] is True  # agreed through ALPN, no multistream round trip

        async with asyncio.timeout(15):
            info = await me.ident.wait_identified(peer)
        assert info.agent_version is not None and info.agent_version.startswith(
            "glueberry-interop-go/"
        )
        assert info.public_key is not None and PeerId.from_public_key(info.public_key) == peer
        await remote.await_event(
            lambda e: e.get("event") == "identified" and e.get("remote_peer") == str(host.peer_id),
            what="go identifying us",
        )

        rtts = await me.ping.ping(peer, 5)
        assert len(rtts) == 5 and all(0 < r < 1 for r in rtts)

        async def echo_one() -> None:
            await echo_pattern(await host.new_stream(peer, [ECHO_PROTOCOL]), 4096)

        async with asyncio.timeout(120), asyncio.TaskGroup() as tg:
            for _ in range(ECHO_STREAMS):
                tg.create_task(echo_one())

        async with asyncio.timeout(120):
            got = await request_source(await host.new_stream(peer, [SOURCE_PROTOCOL]), TRANSFER)
        assert got == TRANSFER
        async with asyncio.timeout(120):
            await sink_with_hash(host, peer, TRANSFER)

        exc = await expect_reset(await host.new_stream(peer, [RESET_PROTOCOL]))
        assert isinstance(exc, StreamReset) and exc.remote
        assert await expect_close(await host.new_stream(peer, [CLOSE_PROTOCOL])) == b"bye"
        await conn.close()
        await remote.await_event(
            lambda e: (
                e.get("event") == "disconnected" and e.get("remote_peer") == str(host.peer_id)
            ),
            what="the disconnection",
        )


async def test_python_refuses_the_wrong_go_peer_over_tls(peer_listener: ListenerFactory) -> None:
    remote = peer_listener("go", "--security", "tls")
    target = Multiaddr(remote.addr).without_p2p()
    async with local_node(listen=False, noise=False) as me:
        with pytest.raises((PeerIdMismatch, ConnectError)) as info:
            await me.host.connect(PrivateKey.generate().peer_id, [target])
        err: BaseException | None = info.value
        while err is not None and not isinstance(err, PeerIdMismatch):
            err = err.__cause__
        assert isinstance(err, PeerIdMismatch)


async def test_go_dials_python_over_tls(peer_dialer: DialerFactory) -> None:
    async with local_node(listen=True) as me:
        addr = str(me.host.addrs[0].with_p2p(me.host.peer_id))
        run = await peer_dialer.arun(
            "go",
            addr,
            "all",
            "--security",
            "tls",
            "--echo-streams",
            str(ECHO_STREAMS),
            "--echo-bytes",
            "4096",
            "--transfer-mib",
            str(TRANSFER >> 20),
            seconds=240,
        )
        assert run.ok, run.describe()
        connect = run.test("connect")
        assert connect["security"] == TLS
        assert connect["muxer"] == "/yamux/1.0.0"
        assert connect["early_muxer"] is True
        assert run.test("identify").get("public_key_matches", True) is True
        assert run.test("source")["bytes"] == TRANSFER
        remote_peer = PeerId.from_string(run.result["peer_id"])
        agent = me.host.peerstore.agent_version(remote_peer)
        assert agent is not None and agent.startswith("glueberry-interop-go/")


async def test_go_default_order_picks_tls(peer_dialer: DialerFactory) -> None:
    """go's default (TLS, then Noise) against our TLS-first host: TLS in one round trip."""
    async with local_node(listen=True) as me:
        addr = str(me.host.addrs[0].with_p2p(me.host.peer_id))
        run = await peer_dialer.arun("go", addr, "connect", "ping", seconds=60)
        assert run.ok, run.describe()
        assert run.test("connect")["security"] == TLS
