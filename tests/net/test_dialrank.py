"""Dial ranking (glueberry.net.dialrank): order and stagger delays of a peer's addresses."""

from __future__ import annotations

import pytest

from glueberry.net.dialrank import DialStep, Scope, address_scope, rank_addrs
from glueberry.wire.multiaddr import Multiaddr

RELAY = "/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq/p2p-circuit"


def ranked(*addrs: str, **kw: float) -> list[str]:
    return [str(s.addr) for s in rank_addrs([Multiaddr(a) for a in addrs], **kw)]


def delays(*addrs: str, **kw: float) -> list[float]:
    return [s.delay for s in rank_addrs([Multiaddr(a) for a in addrs], **kw)]


@pytest.mark.parametrize(
    ("addr", "scope"),
    [
        ("/ip4/127.0.0.1/tcp/1", Scope.LOOPBACK),
        ("/ip4/127.8.9.1/tcp/1", Scope.LOOPBACK),
        ("/ip6/::1/tcp/1", Scope.LOOPBACK),
        ("/ip6/::ffff:127.0.0.1/tcp/1", Scope.LOOPBACK),
        ("/ip4/10.1.2.3/tcp/1", Scope.PRIVATE),
        ("/ip4/172.16.0.1/tcp/1", Scope.PRIVATE),
        ("/ip4/192.168.1.5/udp/1/quic-v1", Scope.PRIVATE),
        ("/ip4/169.254.1.1/tcp/1", Scope.PRIVATE),
        ("/ip4/100.64.0.1/tcp/1", Scope.PRIVATE),
        ("/ip6/fd00::1/tcp/1", Scope.PRIVATE),
        ("/ip6/fe80::1/tcp/1", Scope.PRIVATE),
        ("/ip4/1.2.3.4/tcp/1", Scope.PUBLIC),
        ("/ip6/2606:4700::1/tcp/1", Scope.PUBLIC),
        ("/dns4/example.com/tcp/1", Scope.PUBLIC),
        ("/dns/localhost/tcp/1", Scope.PUBLIC),
    ],
)
def test_scope(addr: str, scope: Scope) -> None:
    assert address_scope(Multiaddr(addr)) is scope


def test_one_address_and_empty() -> None:
    assert rank_addrs([]) == []
    (step,) = rank_addrs([Multiaddr("/ip4/1.2.3.4/tcp/1")])
    assert step == DialStep(Multiaddr("/ip4/1.2.3.4/tcp/1"), 0.0)


def test_local_before_public_and_delays_follow_the_previous_scope() -> None:
    addrs = ("/ip4/1.2.3.4/tcp/4001", "/ip4/192.168.1.5/tcp/4001", "/ip4/127.0.0.1/tcp/4001")
    assert ranked(*addrs) == [
        "/ip4/127.0.0.1/tcp/4001",
        "/ip4/192.168.1.5/tcp/4001",
        "/ip4/1.2.3.4/tcp/4001",
    ]
    assert delays(*addrs) == [0.0, 0.03, 0.03]
    assert delays(*addrs, stagger_local=0.01) == [0.0, 0.01, 0.01]
    # after a public address, the public stagger
    pub = ("/ip4/1.2.3.4/tcp/1", "/ip4/5.6.7.8/tcp/1", "/ip4/9.9.9.9/tcp/1")
    assert delays(*pub) == [0.0, 0.25, 0.25]
    assert delays(*pub, stagger=0.1) == [0.0, 0.1, 0.1]


def test_quic_before_tcp_before_others_within_a_scope() -> None:
    assert ranked(
        "/ip4/1.2.3.4/tcp/1/ws",
        "/ip4/1.2.3.4/tcp/1",
        "/ip4/1.2.3.4/udp/1/quic",
        "/ip4/1.2.3.4/udp/1/quic-v1",
    ) == [
        "/ip4/1.2.3.4/udp/1/quic-v1",
        "/ip4/1.2.3.4/udp/1/quic",
        "/ip4/1.2.3.4/tcp/1",
        "/ip4/1.2.3.4/tcp/1/ws",
    ]
    # but scope comes first: a private TCP address before a public QUIC one
    assert ranked("/ip4/1.2.3.4/udp/1/quic-v1", "/ip4/10.0.0.1/tcp/1")[0] == "/ip4/10.0.0.1/tcp/1"


def test_happy_eyeballs_interleaving_ipv6_first_low_ports_first() -> None:
    assert ranked(
        "/ip4/1.1.1.1/tcp/9000",
        "/ip4/1.1.1.2/tcp/4001",
        "/ip4/1.1.1.3/tcp/5000",
        "/ip6/2606:4700::1/tcp/4001",
        "/dns6/example.com/tcp/1",
        "/dns/example.com/tcp/1",
        "/dns4/example.com/tcp/2",
    ) == [
        "/ip6/2606:4700::1/tcp/4001",
        "/ip4/1.1.1.2/tcp/4001",
        "/dns6/example.com/tcp/1",  # names after the addresses of their family
        "/ip4/1.1.1.3/tcp/5000",
        "/ip4/1.1.1.1/tcp/9000",
        "/dns4/example.com/tcp/2",
        "/dns/example.com/tcp/1",  # no fixed family: last
    ]


def test_relayed_last_after_the_relay_delay_ranked_by_relay() -> None:
    addrs = (
        f"/ip4/5.6.7.8/tcp/1{RELAY}",
        f"/ip4/127.0.0.1/tcp/1{RELAY}",
        "/ip4/1.2.3.4/tcp/1",
    )
    assert ranked(*addrs) == [
        "/ip4/1.2.3.4/tcp/1",
        f"/ip4/127.0.0.1/tcp/1{RELAY}",
        f"/ip4/5.6.7.8/tcp/1{RELAY}",
    ]
    assert delays(*addrs) == [0.0, 0.5, 0.03]
    assert delays(*addrs, relay_delay=1.0) == [0.0, 1.0, 0.03]
    # only relayed addresses: no relay delay
    assert delays(f"/ip4/5.6.7.8/tcp/1{RELAY}", f"/ip4/5.6.7.9/tcp/1{RELAY}") == [0.0, 0.25]


def test_duplicates_are_dialed_once() -> None:
    assert ranked("/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.4/tcp/2") == [
        "/ip4/1.2.3.4/tcp/1",
        "/ip4/1.2.3.4/tcp/2",
    ]


def test_every_address_is_kept() -> None:
    addrs = [
        "/ip4/1.2.3.4/tcp/1",
        "/ip6/::1/udp/2/quic-v1",
        "/ip4/10.0.0.1/tcp/3",
        f"/ip4/5.6.7.8/tcp/1{RELAY}",
        "/dns/x.example/tcp/4",
        "/ip6/fe80::1/tcp/5",
        "/ip4/1.2.3.4/udp/1/webrtc-direct",
    ]
    out = ranked(*addrs)
    assert sorted(out) == sorted(addrs)
    assert out[0] == "/ip6/::1/udp/2/quic-v1"
