"""QUIC hole punching on loopback: the packet schedule, spraying from the listening socket,
which addresses are punchable, external QUIC addresses, and the whole punch between two hosts
(B sprays and accepts, A dials from its listening socket) without the NATs of the lab
(those are in tests/netlab/test_lab_quic_punch.py)."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Sequence

import pytest

from glueberry.errors import ConfigError, ConnectError
from glueberry.nat import policy as P
from glueberry.nat.holepunch import HolePunchService
from glueberry.nat.manager import NatConfig, NatManager, close_transports, nat_transports
from glueberry.nat.quic_punch import (
    PUNCH_PACKET_SIZE,
    QuicPuncher,
    quic_transport_of,
    spray_interval,
)
from glueberry.net.host import Host, HostConfig
from glueberry.net.testprotocols import ECHO_PROTOCOL, echo_pattern, register_test_protocols
from glueberry.transport.circuit import CircuitTransport
from glueberry.transport.quic import QuicTransport
from glueberry.transport.tcp_reuse import ReuseportTcpTransport
from glueberry.wire.identity import PrivateKey
from glueberry.wire.multiaddr import Multiaddr

WILD = "/ip4/0.0.0.0/udp/0/quic-v1"


def _on_connection(conn: object) -> None:
    pass


def test_spray_interval_follows_go_schedule() -> None:
    rng = random.Random(7)
    for i in range(40):
        cap = min(10 * (i + 1) ** 2, 200)
        for _ in range(50):
            d = spray_interval(i, rng)
            assert 0.010 <= d < 0.010 + cap / 1000 + 1e-9
    # The first gaps are short (10-20 ms), later ones spread up to 210 ms.
    assert max(spray_interval(0, rng) for _ in range(200)) < 0.020
    assert max(spray_interval(10, rng) for _ in range(500)) > 0.150
    with pytest.raises(ValueError):
        spray_interval(-1, rng)


async def test_spray_sends_random_datagrams_from_the_listening_port() -> None:
    key = PrivateKey.generate()
    async with QuicTransport(key) as quic:
        listener = await quic.listen(WILD, _on_connection)
        port = listener.endpoint.local_address[1]
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        try:
            target = Multiaddr(f"/ip4/127.0.0.1/udp/{sink.getsockname()[1]}/quic-v1")
            puncher = QuicPuncher([quic], rng=random.Random(1))
            assert puncher.transport is quic and puncher.can_punch(target)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            sent = await puncher.spray(target, duration=0.2)
            elapsed = loop.time() - t0
            assert 0.2 <= elapsed < 0.5
            got: list[tuple[bytes, int]] = []
            await asyncio.sleep(0.02)
            while True:
                try:
                    data, addr = sink.recvfrom(2048)
                except BlockingIOError:
                    break
                got.append((data, addr[1]))
            # Every datagram: 64 random bytes from our listening port.
            assert len(got) == sent >= 3 and puncher.packets_sent == sent
            assert all(len(d) == PUNCH_PACKET_SIZE and p == port for d, p in got)
            assert len({d for d, _ in got}) == sent
        finally:
            sink.close()


async def test_spray_stops_when_cancelled() -> None:
    async with QuicTransport(PrivateKey.generate()) as quic:
        await quic.listen(WILD, _on_connection)
        puncher = QuicPuncher([quic])
        target = Multiaddr("/ip4/127.0.0.1/udp/9/quic-v1")
        task = asyncio.get_running_loop().create_task(puncher.spray(target, duration=30))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        n = puncher.packets_sent
        await asyncio.sleep(0.3)
        assert n >= 2 and puncher.packets_sent == n


async def test_punchable_needs_a_wildcard_quic_listener_of_the_family() -> None:
    v4 = Multiaddr("/ip4/198.51.100.1/udp/4001/quic-v1")
    v6 = Multiaddr("/ip6/2001:db8::1/udp/4001/quic-v1")
    async with QuicTransport(PrivateKey.generate()) as quic:
        puncher = QuicPuncher([ReuseportTcpTransport(), quic, CircuitTransport()])
        assert puncher.available and not puncher.can_punch(v4)  # not listening yet
        with pytest.raises(ConnectError):
            await puncher.spray(v4, duration=0.1)
        await quic.listen("/ip4/127.0.0.1/udp/0/quic-v1", _on_connection)
        assert not puncher.can_punch(v4)  # dials to public addresses would not use it
        await quic.listen(WILD, _on_connection)
        assert puncher.can_punch(v4) and not puncher.can_punch(v6)
        assert not puncher.can_punch(Multiaddr("/ip4/198.51.100.1/tcp/4001"))
        assert not puncher.can_punch(
            Multiaddr(
                f"/ip4/198.51.100.1/udp/4001/quic-v1/p2p/{PrivateKey.generate().peer_id}"
            ).encapsulate("/p2p-circuit")
        )
    assert not QuicPuncher([ReuseportTcpTransport()]).available
    assert quic_transport_of(object()) is None


async def test_external_quic_addrs_are_shown_by_the_listeners() -> None:
    async with QuicTransport(PrivateKey.generate()) as quic:
        listener = await quic.listen(WILD, _on_connection)
        puncher = QuicPuncher([quic])
        ext4 = Multiaddr("/ip4/198.51.100.7/udp/4001/quic-v1")
        ext6 = Multiaddr("/ip6/2001:db8::7/udp/4001/quic-v1")
        puncher.set_external_addrs([Multiaddr("/ip4/198.51.100.7/tcp/4001"), ext4, ext6])
        assert quic.external_addrs == [ext4, ext6]
        assert listener.multiaddrs == [listener.endpoint.multiaddr, ext4]  # same family only
        puncher.set_external_addrs([])
        assert listener.multiaddrs == [listener.endpoint.multiaddr]


# --- two hosts ------------------------------------------------------------------------------


class Peer:
    def __init__(self, host: Host, transports: Sequence[object], svc: HolePunchService) -> None:
        self.host = host
        self.transports = transports
        self.svc = svc

    @property
    def quic_addr(self) -> Multiaddr:
        (addr,) = [a for a in self.host.listen_addrs if a.transport_kind() == "quic-v1"]
        return Multiaddr(str(addr).replace("0.0.0.0", "127.0.0.1"))


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Peer, Peer]]:
    peers: list[Peer] = []
    for _ in range(2):
        key = PrivateKey.generate()
        transports = nat_transports(key)
        host = Host(key, listen_addrs=[WILD], config=HostConfig(transports=transports))
        await host.start()
        register_test_protocols(host, bench=False)
        quic = QuicPuncher(transports)
        svc = HolePunchService(host, None, quic=quic, allow_private=True, punch_timeout=3.0)
        peers.append(Peer(host, transports, svc))
    try:
        yield peers[0], peers[1]
    finally:
        for p in peers:
            p.svc.close()
            await p.host.close()
            close_transports(p.transports)


async def test_punch_roles_b_sprays_and_accepts_a_dials(pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    assert b.svc.quic is not None
    a_ep = quic_transport_of(a.transports[1])
    assert a_ep is not None
    endpoint = a_ep.punch_endpoint(socket.AF_INET)
    assert endpoint is not None
    # B sprays at A's listening socket a little before A dials, as after DCUtR's SYNC.
    spray = asyncio.get_running_loop().create_task(
        b.svc.punch(a.host.peer_id, [a.quic_addr], server=True)
    )
    await asyncio.sleep(0.05)
    a_conn = await a.svc.punch(b.host.peer_id, [b.quic_addr], server=False)
    b_conn = await spray
    assert a_conn is not None and b_conn is not None
    # One connection: A's outbound (client) is B's inbound (server), on both listen ports.
    assert (a_conn.transport_name, a_conn.direction) == ("quic-v1", "outbound")
    assert (b_conn.transport_name, b_conn.direction) == ("quic-v1", "inbound")
    assert a_conn.remote_address[1] == b.quic_addr.to_socket_address().port
    assert b_conn.remote_address[1] == a.quic_addr.to_socket_address().port
    # B's datagrams reached A's socket, which dropped them before QUIC saw them; B stopped
    # sending once the connection was up.
    sent = b.svc.quic.packets_sent
    assert sent >= 1 and sum(endpoint.dropped.values()) >= 1
    await asyncio.sleep(0.25)
    assert b.svc.quic.packets_sent == sent
    stream = await b.host.new_stream(a.host.peer_id, [ECHO_PROTOCOL])
    assert stream.connection is b_conn
    await echo_pattern(stream, 100_000)


async def test_punch_without_a_peer_times_out(pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    b.svc.punch_timeout = 0.3
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await b.svc.punch(a.host.peer_id, [a.quic_addr], server=True) is None
    assert 0.3 <= loop.time() - t0 < 1.0
    assert b.svc.quic is not None and b.svc.quic.packets_sent >= 2
    assert not b.host.connections(a.host.peer_id)
    # Only addresses we can punch are tried: a TCP address without the TCP transport.
    assert (
        await b.svc.punch(a.host.peer_id, [Multiaddr("/ip4/127.0.0.1/tcp/9")], server=True) is None
    )


async def test_offered_addresses_include_external_quic_addrs(pair: tuple[Peer, Peer]) -> None:
    a, _ = pair
    assert a.svc.quic is not None
    ext = Multiaddr("/ip4/198.51.100.7/udp/4001/quic-v1")
    assert ext not in a.svc.local_addrs()
    a.svc.quic.set_external_addrs([ext])
    assert ext in a.host.addrs and ext in a.svc.local_addrs()
    assert all(x.transport_kind() == "quic-v1" for x in a.svc.local_addrs())


# --- the manager --------------------------------------------------------------------------


async def test_manager_punches_with_quic_only_and_advertises_quic_observations() -> None:
    key = PrivateKey.generate()
    transports = [t for t in nat_transports(key) if not isinstance(t, ReuseportTcpTransport)]
    host = Host(key, listen_addrs=[WILD], config=HostConfig(transports=transports))
    await host.start()
    nat = NatManager(
        host,
        NatConfig(enable_relay_client=False, enable_autonat=False, allow_private_addrs=True),
    )
    try:
        await nat.start()
        assert nat.tcp is None and nat.quic is not None and nat.holepunch is not None
        obs_quic = Multiaddr("/ip4/198.51.100.9/udp/4001/quic-v1")
        obs_tcp = Multiaddr("/ip4/198.51.100.9/tcp/4001")
        nat._execute([P.NotifyObservedAddrs(addrs=(obs_quic.to_bytes(), obs_tcp.to_bytes()))])
        assert obs_quic in host.addrs and obs_tcp not in host.addrs
        offered = nat.holepunch.local_addrs()
        assert obs_quic in offered and all(a.transport_kind() == "quic-v1" for a in offered)
        await asyncio.sleep(0.01)  # let the manager's timer task start before closing
    finally:
        await nat.close()
        await host.close()
        close_transports(transports)


async def test_manager_needs_a_transport_to_punch_with() -> None:
    key = PrivateKey.generate()
    host = Host(key, config=HostConfig(transports=[CircuitTransport()]))
    await host.start()
    try:
        with pytest.raises(ConfigError, match="QUIC"):
            NatManager(host, NatConfig())
    finally:
        await host.close()
