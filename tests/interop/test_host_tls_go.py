"""Our default host's TCP security against go-libp2p: the documented outcome each way.

Defaults (``glueberry.net.transports``): as listener we accept ``/noise`` and ``/tls/1.0.0``;
as dialer we propose ``/noise`` first, then ``/tls/1.0.0``. go-libp2p proposes TLS first, so:

| dialer | listener | lands on |
|---|---|---|
| go (default: tls, noise) | our default host | TLS (early muxer through ALPN) |
| go ``--security noise`` | our default host | Noise |
| our default host | go (default) | Noise |
| our default host | go ``--security tls`` | TLS (after ``na`` for Noise) |

A missing go peer is a failure, never a skip (see tests/interop/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from glueberry.net.host import Host, HostConfig
from glueberry.net.services import IdentifyService, PingService
from glueberry.net.testprotocols import (
    ECHO_PROTOCOL,
    TEST_LIMITS,
    echo_pattern,
    register_test_protocols,
)
from glueberry.wire.identity import PrivateKey
from glueberry.wire.multiaddr import Multiaddr
from tests.interop.conftest import DialerFactory, ListenerFactory

pytestmark = pytest.mark.interop

NOISE = "/noise"
TLS = "/tls/1.0.0"


@contextlib.asynccontextmanager
async def default_host(*, listen: bool) -> AsyncIterator[tuple[Host, PingService]]:
    addrs = ["/ip4/127.0.0.1/tcp/0"] if listen else []
    config = HostConfig(limits=TEST_LIMITS)  # default transports and security
    async with Host(PrivateKey.generate(), listen_addrs=addrs, config=config) as h:
        IdentifyService(h)
        ping = PingService(h)
        register_test_protocols(h)
        yield h, ping


@pytest.mark.parametrize(("go_security", "expected"), [(None, TLS), ("noise", NOISE)])
async def test_go_dials_default_host(
    peer_dialer: DialerFactory, go_security: str | None, expected: str
) -> None:
    async with default_host(listen=True) as (host, _):
        addr = str(host.addrs[0].with_p2p(host.peer_id))
        extra = ["--security", go_security] if go_security else []
        run = await peer_dialer.arun(
            "go",
            addr,
            "connect",
            "identify",
            "ping",
            "echo",
            "source",
            "sink",
            "reset",
            "close",
            "--echo-streams",
            "64",
            "--echo-bytes",
            "16384",
            "--transfer-mib",
            "8",
            *extra,
            seconds=120,
        )
        assert run.ok, run.describe()
        connect = run.test("connect")
        assert connect["security"] == expected
        assert connect["muxer"] == "/yamux/1.0.0"
        if expected == TLS:
            assert connect["early_muxer"] is True  # yamux agreed through ALPN
        assert run.test("identify").get("public_key_matches", True) is True


@pytest.mark.parametrize(("go_security", "expected"), [("both", NOISE), ("tls", TLS)])
async def test_default_host_dials_go(
    peer_listener: ListenerFactory, go_security: str, expected: str
) -> None:
    remote = peer_listener("go", "--security", go_security)
    target = Multiaddr(remote.addr)
    peer = target.peer_id
    assert peer is not None
    async with default_host(listen=False) as (host, ping):
        async with asyncio.timeout(15):
            conn = await host.connect(peer, [target.without_p2p()])
        assert conn.security_protocol == expected
        assert conn.muxer_protocol == "/yamux/1.0.0"
        assert len(await ping.ping(peer, 3)) == 3
        async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
            for i in range(32):
                tg.create_task(echo_pattern(await host.new_stream(peer, [ECHO_PROTOCOL]), 8192 + i))
