"""NAT policy behaviours (glueberry.nat.policy): events in, commands out."""

from __future__ import annotations

import ipaddress
import random

from glueberry.nat import policy as P
from glueberry.wire import pb_nat as pb
from glueberry.wire.identity import PeerId, PrivateKey

PEERS = [PrivateKey.from_seed(bytes([i + 1]) * 32).peer_id for i in range(12)]
PUB = pb.ip_tcp_multiaddr("8.8.8.8", 4001)
PRIV = pb.ip_tcp_multiaddr("192.168.1.10", 4001)


# --- hole punching ------------------------------------------------------------------------


def test_outbound_relayed_connection_does_nothing() -> None:
    hp = P.HolePunchBehaviour()
    assert hp.on_relayed_connection(PEERS[0], 1, inbound=False, remote_addrs=[PUB], now=0) == []


def test_direct_dial_first_then_punch_three_attempts_then_give_up() -> None:
    hp = P.HolePunchBehaviour(cooldown=100)
    peer = PEERS[0]
    assert hp.on_relayed_connection(peer, "c1", inbound=True, remote_addrs=[PRIV, PUB], now=0) == [
        P.Dial(peer=peer, addrs=(PUB,), reason="dcutr-direct-first")
    ]
    assert hp.on_direct_dial_failed(peer, 1) == [P.StartHolePunch(peer=peer, attempt=1)]
    assert hp.on_attempt_failed(peer, 2) == [P.StartHolePunch(peer=peer, attempt=2)]
    assert hp.on_attempt_failed(peer, 3) == [P.StartHolePunch(peer=peer, attempt=3)]
    assert hp.on_attempt_failed(peer, 4) == [P.NotifyHolePunchFailed(peer=peer, attempts=3)]
    assert not hp.in_progress(peer)
    # A 4th attempt is never started; cooldown blocks new tries.
    assert hp.on_attempt_failed(peer, 5) == []
    assert hp.on_relayed_connection(peer, "c2", inbound=True, remote_addrs=[], now=50) == []
    assert hp.get_timer() == 104
    hp.handle_timer(104)
    assert hp.on_relayed_connection(peer, "c3", inbound=True, remote_addrs=[], now=105) == [
        P.StartHolePunch(peer=peer, attempt=1)
    ]


def test_private_only_peer_goes_straight_to_punching_and_success_closes_relays() -> None:
    hp = P.HolePunchBehaviour()
    peer = PEERS[1]
    cmds = hp.on_relayed_connection(peer, "r1", inbound=True, remote_addrs=[PRIV], now=0)
    assert cmds == [P.StartHolePunch(peer=peer, attempt=1)]
    # Duplicate relayed connection while punching: no second punch.
    assert hp.on_relayed_connection(peer, "r2", inbound=True, remote_addrs=[PRIV], now=0) == []
    closes = hp.on_direct_connection(peer, 1)
    assert {c.connection_id for c in closes if isinstance(c, P.CloseConnection)} == {"r1", "r2"}
    # A later relayed connection to a directly connected peer is closed at once.
    assert hp.on_relayed_connection(peer, "r3", inbound=True, remote_addrs=[], now=2) == [
        P.CloseConnection(peer=peer, connection_id="r3", reason="have direct")
    ]


def test_allow_private_for_labs() -> None:
    hp = P.HolePunchBehaviour(allow_private=True)
    cmds = hp.on_relayed_connection(PEERS[2], 1, inbound=True, remote_addrs=[PRIV], now=0)
    assert cmds == [P.Dial(peer=PEERS[2], addrs=(PRIV,), reason="dcutr-direct-first")]


# --- autorelay ------------------------------------------------------------------------------

T = 1_700_000_000.0


def test_autorelay_reserves_refreshes_and_drops_when_public() -> None:
    ar = P.AutoRelayBehaviour(desired_relays=2)
    r1, r2, r3 = PEERS[3:6]
    assert ar.on_relay_candidate(r1, T) == []  # reachability unknown → not private yet
    cmds = ar.on_reachability(P.Reachability.PRIVATE, T)
    assert cmds == [P.Reserve(relay=r1, refresh=False)]
    assert ar.on_relay_candidate(r2, T) == [P.Reserve(relay=r2, refresh=False)]
    assert ar.on_relay_candidate(r3, T) == []  # two already pending
    a1 = pb.ip_tcp_multiaddr("8.8.8.1", 4001)
    out = ar.on_reservation_accepted(r1, expire=T + 3600, addrs=[a1], now=T)
    assert out == [P.NotifyRelayAddrs(addrs=(a1,))]
    assert ar.get_timer() == T + 2700  # 3/4 of the lifetime
    assert ar.handle_timer(T + 2700) == [P.Reserve(relay=r1, refresh=True)]
    ar.on_reservation_accepted(r1, expire=T + 2700 + 3600, addrs=[a1], now=T + 2700)
    assert ar.reserved == (r1,)
    cmds = ar.on_reachability(P.Reachability.PUBLIC, T + 2800)
    assert P.CancelReservation(relay=r1) in cmds and P.CancelReservation(relay=r2) in cmds
    assert cmds[-1] == P.NotifyRelayAddrs(addrs=())
    reserved: tuple[PeerId, ...] = ar.reserved  # a fresh read: mypy keeps the (r1,) from above
    assert reserved == ()


def test_autorelay_backoff_and_replacement() -> None:
    ar = P.AutoRelayBehaviour(desired_relays=1, backoff=60)
    r1, r2 = PEERS[6:8]
    ar.on_reachability(P.Reachability.PRIVATE, T)
    assert ar.on_relay_candidate(r1, T) == [P.Reserve(relay=r1, refresh=False)]
    ar.on_relay_candidate(r2, T)
    # r1 refuses → r2 is tried at once, r1 backs off 60 s then 120 s.
    assert ar.on_reservation_failed(r1, T) == [P.Reserve(relay=r2, refresh=False)]
    assert ar.on_reservation_failed(r2, T + 1) == []
    assert ar.get_timer() == T + 60
    assert ar.handle_timer(T + 60) == [P.Reserve(relay=r1, refresh=False)]
    assert ar.on_reservation_failed(r1, T + 61) == [P.Reserve(relay=r2, refresh=False)]
    ar.on_reservation_accepted(r2, expire=T + 3700, addrs=[], now=T + 100)
    # r2 disconnects → r1 (after its 120 s backoff) takes over.
    assert ar.on_relay_disconnected(r2, T + 150) == [P.NotifyRelayAddrs(addrs=())]
    assert ar.handle_timer(T + 181) == [P.Reserve(relay=r1, refresh=False)]


def test_autorelay_expiry_without_refresh_and_jitter() -> None:
    ar = P.AutoRelayBehaviour(desired_relays=1, rng=random.Random(1))
    r1 = PEERS[8]
    ar.on_reachability(P.Reachability.PRIVATE, T)
    ar.on_relay_candidate(r1, T)
    ar.on_reservation_accepted(r1, expire=T + 100, addrs=[PUB], now=T)
    refresh = ar.get_timer()
    assert refresh is not None and T + 67.5 <= refresh <= T + 75
    assert ar.handle_timer(refresh) == [P.Reserve(relay=r1, refresh=True)]
    # The refresh hangs; at expiry the addresses are withdrawn and a new reservation starts.
    assert ar.handle_timer(T + 100) == [
        P.NotifyRelayAddrs(addrs=()),
        P.Reserve(relay=r1, refresh=False),
    ]


# --- observed addresses ---------------------------------------------------------------------


def ip(s: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(s)


def test_observed_addr_confirmed_after_four_distinct_groups() -> None:
    tr = P.ObservedAddrTracker(threshold=4, ttl=100)
    # Many peers from the same /16 count once.
    for i in range(5):
        assert tr.on_observed(PEERS[i], ip(f"9.9.1.{i}"), PUB, now=0) == []
    assert tr.on_observed(PEERS[5], ip("9.10.0.1"), PUB, now=1) == []
    assert tr.on_observed(PEERS[6], ip("9.11.0.1"), PUB, now=2) == []
    assert tr.on_observed(PEERS[7], ip("9.12.0.1"), PUB, now=3) == [
        P.NotifyObservedAddrs(addrs=(PUB,))
    ]
    assert tr.confirmed == (PUB,)
    # Private / relayed observations are ignored.
    assert tr.on_observed(PEERS[8], ip("9.13.0.1"), PRIV, now=3) == []
    # Observations expire.
    assert tr.get_timer() == 100
    assert tr.handle_timer(101) == [P.NotifyObservedAddrs(addrs=())]


def test_observed_addr_memory_is_bounded() -> None:
    tr = P.ObservedAddrTracker(max_addrs=4)
    for port in range(100):
        tr.on_observed(PEERS[0], ip("9.9.9.9"), pb.ip_tcp_multiaddr("8.8.8.8", port + 1), now=port)
    assert len(tr._seen) == 4


# --- reachability ---------------------------------------------------------------------------


def test_reachability_needs_more_than_three_agreeing() -> None:
    rt = P.ReachabilityTracker(now=0)
    assert rt.get_timer() == 15
    assert rt.handle_timer(15) == [P.ProbeReachability()]
    assert rt.get_timer() == 15 + 90
    for i in range(3):
        assert rt.on_result(PEERS[i], True, 20 + i) == []
    # The same server again does not count twice.
    assert rt.on_result(PEERS[2], True, 30) == []
    assert rt.on_result(PEERS[3], None, 31) == []
    assert rt.on_result(PEERS[3], True, 32) == [
        P.NotifyReachability(reachability=P.Reachability.PUBLIC)
    ]
    # Flipping needs > 3 private verdicts that outnumber the public ones.
    for i in range(4, 8):
        rt.on_result(PEERS[i], False, 40 + i)
    assert rt.state is P.Reachability.PUBLIC  # 4 vs 4: keep
    assert rt.on_result(PEERS[0], False, 50) == [
        P.NotifyReachability(reachability=P.Reachability.PRIVATE)
    ]
    t = rt.get_timer()
    assert t is not None
    assert rt.handle_timer(t) == [P.ProbeReachability()]
    assert rt.get_timer() == t + 900  # verdict formed: refresh every 15 min
