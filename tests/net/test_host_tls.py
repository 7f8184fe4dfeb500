"""The host's default security on TCP: Noise proposed first, TLS (``/tls/1.0.0``) accepted too.

Python peers with the defaults settle on Noise; a TLS-only peer gets TLS either way round
(as listener we accept it; as dialer we fall back to it after ``na``); a Noise-only peer
gets Noise. go-libp2p (TLS first) lands on TLS: ``tests/interop/test_host_tls_go.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import pytest

from glueberry.errors import PeerIdMismatch
from glueberry.net.host import Host, HostConfig
from glueberry.net.services import IdentifyService, PingService
from glueberry.net.testprotocols import ECHO_PROTOCOL, echo_pattern, register_test_protocols
from glueberry.net.tls import tls_security
from glueberry.net.transports import NOISE, TLS, default_security, tls_available
from glueberry.net.upgrader import SecureUpgrade, noise_security
from glueberry.wire.identity import PeerId, PrivateKey

TCP = "/ip4/127.0.0.1/tcp/0"
YAMUX = "/yamux/1.0.0"
PINGERS: dict[PeerId, PingService] = {}


@contextlib.asynccontextmanager
async def host(
    security: Mapping[str, SecureUpgrade] | None = None, *, listen: bool = True
) -> AsyncIterator[Host]:
    cfg = HostConfig(security=security)
    async with Host(PrivateKey.generate(), listen_addrs=[TCP] if listen else [], config=cfg) as h:
        register_test_protocols(h, bench=False)
        IdentifyService(h)
        PINGERS[h.peer_id] = PingService(h)
        yield h


def only(proto: str) -> dict[str, SecureUpgrade]:
    return {proto: tls_security() if proto == TLS else noise_security()}


async def exercise(dialer: Host, listener: Host) -> tuple[str, str]:
    """Connect, check both ends agree, ping and echo; return (security, muxer)."""
    conn = await dialer.connect(listener.peer_id, listener.addrs)
    assert conn.remote_peer == listener.peer_id
    for _ in range(1000):  # the listener finishes its side of the handshake a bit later
        if listener.connections(dialer.peer_id):
            break
        await asyncio.sleep(0.005)
    (inbound,) = listener.connections(dialer.peer_id)
    assert inbound.security_protocol == conn.security_protocol
    assert inbound.remote_peer == dialer.peer_id
    assert len(await PINGERS[dialer.peer_id].ping(listener.peer_id, 2)) == 2
    await echo_pattern(await dialer.new_stream(listener.peer_id, [ECHO_PROTOCOL]), 200_000)
    return conn.security_protocol, conn.muxer_protocol


def test_tls_extra_is_installed_here() -> None:
    # The dev dependencies include pyOpenSSL: TLS must be part of the defaults in this suite.
    assert tls_available()


def test_default_security_order() -> None:
    assert list(default_security()) == [NOISE, TLS]
    h = Host(PrivateKey.generate())
    assert list(h.upgrader.security) == [NOISE, TLS]
    explicit = Host(PrivateKey.generate(), config=HostConfig(security=only(NOISE)))
    assert list(explicit.upgrader.security) == [NOISE]


async def test_default_pair_lands_on_noise() -> None:
    async with host() as a, host() as b:
        assert await exercise(a, b) == (NOISE, YAMUX)


async def test_tls_only_dialer_gets_tls_from_a_default_listener() -> None:
    async with host(only(TLS), listen=False) as a, host() as b:
        assert await exercise(a, b) == (TLS, YAMUX)
        # identify works over it
        conn = a.connection_for(b.peer_id)
        assert conn is not None and conn.security_protocol == TLS


async def test_default_dialer_falls_back_to_tls() -> None:
    async with host() as a, host(only(TLS)) as b:
        assert await exercise(a, b) == (TLS, YAMUX)


@pytest.mark.parametrize("dialer_default", [True, False])
async def test_noise_only_peer_gets_noise(dialer_default: bool) -> None:
    async with (
        host(None if dialer_default else only(NOISE)) as a,
        host(only(NOISE) if dialer_default else None) as b,
    ):
        assert await exercise(a, b) == (NOISE, YAMUX)


async def test_wrong_peer_refused_through_the_tls_fallback() -> None:
    async with host() as a, host(only(TLS)) as b:
        with pytest.raises(PeerIdMismatch):
            async with asyncio.timeout(10):
                await a.connect(PrivateKey.generate().peer_id, b.addrs)
        assert not b.connections() or all(c.is_closed for c in b.connections())
