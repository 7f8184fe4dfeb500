"""DCUtR hole punching with our stack through the NAT lab (marker ``netns``).

A relay on the public segment, A behind r1, B behind r2. B dials A through the relay; A (the
inbound side) drives DCUtR; both punch from their listen port. Through port-preserving NATs
the punch gives a direct TCP connection and the relayed one is closed; through symmetric
NATs (``masquerade fully-random``) it fails after three attempts and the relayed connection
keeps working. Needs root, iproute2 and nftables; fails (never skips) without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.netlab import lab as L
from tests.netlab.labpeers import LabPeer

pytestmark = pytest.mark.netns

WAN = "11.99.0"


@pytest.fixture(autouse=True)
def _requirements() -> None:
    problems = L.missing_requirements()
    if problems:
        pytest.fail("NAT lab cannot run: " + "; ".join(problems), pytrace=False)


def nat_config(relay: LabPeer, lab: L.NatLab) -> dict[str, Any]:
    return {
        "relays": [f"/ip4/{lab.relay_ip}/tcp/4001/p2p/{relay.peer_id}"],
        "force_reachability": "private",
        "observed_addr_threshold": 1,  # one observer (the relay) in this small world
        "enable_autonat": False,
        "direct_dial_timeout": 1.0,
        "punch_timeout": 3.0,
        "relayed_close_grace": 1.0,
    }


class Trio:
    def __init__(self, lab: L.NatLab) -> None:
        self.relay = LabPeer(
            lab,
            "relay",
            name="relay",
            listen=f"/ip4/{lab.relay_ip}/tcp/4001",
            nat={
                "enable_relay_service": True,
                "enable_relay_client": False,
                "enable_hole_punching": False,
                "enable_autonat": False,
            },
        )
        nat = nat_config(self.relay, lab)
        self.a = LabPeer(lab, "h1", name="A", listen="/ip4/0.0.0.0/tcp/4001", nat=nat)
        self.b = LabPeer(lab, "h2", name="B", listen="/ip4/0.0.0.0/tcp/4001", nat=nat)

    def relayed_dial(self) -> None:
        a, b = self.a, self.b
        rsvp = a.wait_event("ReservationObtained")
        a.ok("wait_observed", timeout=20)  # A's observed address is known
        b.ok("wait_observed", timeout=20)  # and B's
        got = b.ok("connect", addr=f"{rsvp['addrs'][0]}/p2p/{a.peer_id}")
        assert got["transport"] == "circuit"

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
def trio_symmetric() -> Iterator[Trio]:
    with L.nat_lab(wan_prefix=WAN, symmetric=True) as lab:
        trio = Trio(lab)
        try:
            yield trio
        finally:
            trio.close()


def test_dcutr_upgrades_to_a_direct_connection(trio_port_preserving: Trio) -> None:
    t = trio_port_preserving
    a, b = t.a, t.b
    t.relayed_dial()
    direct = b.ok("wait_direct", peer=a.peer_id, timeout=20)
    # B's only connection to A is now a direct TCP one to A's router (its NAT mapping of
    # A's listen port), secured end to end; the relayed connection is gone.
    (conn,) = direct["conns"]
    assert conn["transport"] == "tcp" and conn["remote"] == [f"{WAN}.1", 4001]
    assert (conn["security"], conn["muxer"]) == ("/noise", "/yamux/1.0.0")
    (aconn,) = a.ok("wait_direct", peer=b.peer_id, timeout=10)["conns"]
    assert aconn["remote"] == [f"{WAN}.2", 4001]
    # Roles from DCUtR: B (dialed through the relay) is the client above TCP, A the server.
    assert (conn["direction"], aconn["direction"]) == ("outbound", "inbound")
    assert b.ok("echo", peer=a.peer_id, size=300_000)["transport"] == "tcp"  # no relay limit
    assert a.ok("echo", peer=b.peer_id, size=1000)["transport"] == "tcp"
    ev_a = a.wait_event("HolePunchSucceeded")
    ev_b = b.wait_event("HolePunchSucceeded")
    assert ev_a["peer"] == b.peer_id and ev_b["peer"] == a.peer_id
    assert ev_a["attempts"] == 1
    assert not a.events("HolePunchFailed")


def test_symmetric_nat_punch_fails_cleanly_and_relay_keeps_working(trio_symmetric: Trio) -> None:
    t = trio_symmetric
    a, b = t.a, t.b
    t.relayed_dial()
    # A's observed address has a random port: the NAT maps each flow anew.
    observed = a.ok("info")["observed"]
    assert observed and not observed[0].endswith("/tcp/4001"), observed
    failed = a.wait_event("HolePunchFailed", timeout=40)
    assert failed["peer"] == b.peer_id and failed["attempts"] == 3
    assert not a.events("HolePunchSucceeded") and not b.events("HolePunchSucceeded")
    # The relayed connection is untouched and still carries streams both ways.
    (conn,) = b.ok("conns", peer=a.peer_id)["conns"]
    assert conn["transport"] == "circuit"
    assert b.ok("echo", peer=a.peer_id, size=20_000)["transport"] == "circuit"
    assert a.ok("echo", peer=b.peer_id, size=20_000)["transport"] == "circuit"
