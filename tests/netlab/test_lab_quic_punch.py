"""DCUtR hole punching over QUIC with our stack through the NAT lab (marker ``netns``).

A relay on the public segment listens on TCP and QUIC; A behind r1 and B behind r2 listen on
TCP and QUIC (``0.0.0.0``, port 4001 both) and reach the relay over QUIC, so the relay
observes their QUIC sockets (``r1:4001/udp``, ``r2:4001/udp``) and DCUtR offers those. B
dials A through the relay; A (the inbound side) drives DCUtR: B (received SYNC) dials QUIC
from its listening socket, A sprays random UDP packets from its listening socket and accepts
B's connection there. Through port-preserving NATs that gives a direct QUIC connection and
the relayed one is closed; through symmetric NATs (``masquerade fully-random``) the punch
fails after three attempts and the relayed connection keeps working. Needs root, iproute2 and
nftables; fails (never skips) without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.netlab import lab as L
from tests.netlab.labpeers import LabPeer

pytestmark = pytest.mark.netns

WAN = "11.99.0"
LISTEN = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]


@pytest.fixture(autouse=True)
def _requirements() -> None:
    problems = L.missing_requirements()
    if problems:
        pytest.fail("NAT lab cannot run: " + "; ".join(problems), pytrace=False)


def nat_config(relay: LabPeer, lab: L.NatLab, **extra: Any) -> dict[str, Any]:
    return {
        # Over QUIC: the relay then observes (and identify reports) our QUIC socket.
        "relays": [f"/ip4/{lab.relay_ip}/udp/4001/quic-v1/p2p/{relay.peer_id}"],
        "force_reachability": "private",
        "observed_addr_threshold": 1,  # one observer (the relay) in this small world
        "enable_autonat": False,
        "direct_dial_timeout": 1.0,
        "punch_timeout": 3.0,
        "relayed_close_grace": 1.0,
        **extra,
    }


class Trio:
    def __init__(self, lab: L.NatLab, **nat_extra: Any) -> None:
        self.relay = LabPeer(
            lab,
            "relay",
            name="relay",
            listen=[f"/ip4/{lab.relay_ip}/tcp/4001", f"/ip4/{lab.relay_ip}/udp/4001/quic-v1"],
            nat={
                "enable_relay_service": True,
                "enable_relay_client": False,
                "enable_hole_punching": False,
                "enable_autonat": False,
            },
        )
        nat = nat_config(self.relay, lab, **nat_extra)
        self.a = LabPeer(lab, "h1", name="A", listen=LISTEN, nat=nat)
        self.b = LabPeer(lab, "h2", name="B", listen=LISTEN, nat=nat)

    def relayed_dial(self) -> dict[str, Any]:
        """B dials A through the relay; returns A's info at that time."""
        a, b = self.a, self.b
        rsvp = a.wait_event("ReservationObtained")
        info = a.ok("wait_observed", timeout=20)  # A's observed QUIC address is known
        b.ok("wait_observed", timeout=20)  # and B's
        (relay_conn,) = a.ok("conns", peer=self.relay.peer_id)["conns"]
        assert relay_conn["transport"] == "quic-v1"
        circuit = next(x for x in rsvp["addrs"] if "/quic-v1/" in x)
        got = b.ok("connect", addr=f"{circuit}/p2p/{a.peer_id}")
        assert got["transport"] == "circuit"
        return info

    def close(self) -> None:
        for p in (self.b, self.a, self.relay):
            p.close()


@pytest.fixture
def trio_port_preserving() -> Iterator[Trio]:
    with L.nat_lab(wan_prefix=WAN) as lab:
        trio = Trio(lab)
        try:
            yield trio
        finally:
            trio.close()


@pytest.fixture
def trio_punch_only() -> Iterator[Trio]:
    with L.nat_lab(wan_prefix=WAN) as lab:
        trio = Trio(lab, direct_dial_first=False)
        try:
            yield trio
        finally:
            trio.close()


@pytest.fixture
def trio_symmetric() -> Iterator[Trio]:
    with L.nat_lab(wan_prefix=WAN, symmetric=True) as lab:
        trio = Trio(lab)
        try:
            yield trio
        finally:
            trio.close()


def test_dcutr_upgrades_to_a_direct_quic_connection(trio_port_preserving: Trio) -> None:
    t = trio_port_preserving
    a, b = t.a, t.b
    info = t.relayed_dial()
    # The relay saw A's QUIC socket through a port-preserving NAT, and A advertises it.
    assert info["observed"] == [f"/ip4/{WAN}.1/udp/4001/quic-v1"], info
    assert f"/ip4/{WAN}.1/udp/4001/quic-v1" in info["addrs"]
    direct = b.ok("wait_direct", peer=a.peer_id, timeout=20)
    # B's only connection to A is now a direct QUIC one to A's router (the NAT mapping of
    # A's listening socket); the relayed connection is gone.
    (conn,) = direct["conns"]
    assert conn["transport"] == "quic-v1" and conn["remote"] == [f"{WAN}.1", 4001], conn
    assert (conn["security"], conn["muxer"]) == ("/tls/1.0.0", "quic-v1")
    (aconn,) = a.ok("wait_direct", peer=b.peer_id, timeout=10)["conns"]
    assert aconn["transport"] == "quic-v1" and aconn["remote"] == [f"{WAN}.2", 4001], aconn
    # Roles from DCUtR: B (dialed through the relay, received SYNC) dials QUIC; A sprayed
    # and accepted the connection on its listening socket: it is the QUIC server.
    assert (conn["direction"], aconn["direction"]) == ("outbound", "inbound")
    # Streams both ways on the direct connection, beyond the relay's 128 KiB limit.
    assert b.ok("echo", peer=a.peer_id, size=300_000)["transport"] == "quic-v1"
    assert a.ok("echo", peer=b.peer_id, size=1000)["transport"] == "quic-v1"
    ev_a = a.wait_event("HolePunchSucceeded")
    ev_b = b.wait_event("HolePunchSucceeded")
    assert ev_a["peer"] == b.peer_id and ev_b["peer"] == a.peer_id
    assert ev_a["attempts"] == 1
    assert ev_a["addr"] == f"/ip4/{WAN}.2/udp/4001/quic-v1"
    assert not a.events("HolePunchFailed") and not b.events("HolePunchFailed")


def test_the_random_packets_alone_open_the_nat(trio_punch_only: Trio) -> None:
    """Without the direct dial that precedes punching, A (the inbound side) sends nothing to
    B's public address but its random datagrams: they alone let B's QUIC dial through r1."""
    t = trio_punch_only
    a, b = t.a, t.b
    t.relayed_dial()
    (conn,) = b.ok("wait_direct", peer=a.peer_id, timeout=20)["conns"]
    assert conn["transport"] == "quic-v1" and conn["remote"] == [f"{WAN}.1", 4001], conn
    assert conn["direction"] == "outbound"
    ev_a = a.wait_event("HolePunchSucceeded")
    assert ev_a["attempts"] == 1 and ev_a["elapsed"] < 3.0  # no direct-dial timeout first
    assert b.ok("echo", peer=a.peer_id, size=50_000)["transport"] == "quic-v1"


def test_symmetric_nat_quic_punch_fails_cleanly_and_relay_keeps_working(
    trio_symmetric: Trio,
) -> None:
    t = trio_symmetric
    a, b = t.a, t.b
    info = t.relayed_dial()
    # A's observed QUIC address has a random port: the NAT maps each flow anew.
    (observed,) = info["observed"]
    assert observed.endswith("/quic-v1") and "/udp/4001/" not in observed, observed
    failed = a.wait_event("HolePunchFailed", timeout=40)
    assert failed["peer"] == b.peer_id and failed["attempts"] == 3
    assert not a.events("HolePunchSucceeded") and not b.events("HolePunchSucceeded")
    # The relayed connection is untouched and still carries streams both ways.
    (conn,) = b.ok("conns", peer=a.peer_id)["conns"]
    assert conn["transport"] == "circuit"
    assert b.ok("echo", peer=a.peer_id, size=20_000)["transport"] == "circuit"
    assert a.ok("echo", peer=b.peer_id, size=20_000)["transport"] == "circuit"
