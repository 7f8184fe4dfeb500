"""NAT traversal interop with go-libp2p in the namespace NAT lab (markers ``interop``, ``netns``).

The go side is ``interop/go/bin/natpeer`` (go-libp2p with the circuit v2 relay service and
client, hole punching on; built by ``interop/build.sh``); it speaks the Python lab peer's
line protocol, so both are driven by :class:`tests.netlab.labpeers.LabPeer`. Topology: relay
on the public segment, A behind r1, B behind r2 (tests/netlab/lab.py).

Proven here:

* a go-libp2p relay serves our clients (reservation with a voucher our code verifies,
  circuit, Noise+yamux end to end, DCUtR between our peers through it, its data limit
  reported at both of our ends);
* our relay serves go-libp2p clients (go verifies our voucher, circuits both ways);
* DCUtR between our peer and a go-libp2p peer: with ours as the initiating (inbound) side
  through the default strict NATs, and with go initiating through NATs with liberal TCP
  window tracking (see the test's docstring for why not strict);
* our AutoNAT v2 client against go's AutoNAT v2 server.

Needs root, iproute2, nftables and the built go peer; fails (never skips) without them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import lab as L
from tests.netlab.labpeers import LabPeer

pytestmark = [pytest.mark.interop, pytest.mark.netns]

NATPEER = Path(__file__).resolve().parents[2] / "interop" / "go" / "bin" / "natpeer"
WAN = "11.99.0"


@pytest.fixture(autouse=True)
def _requirements() -> None:
    problems = L.missing_requirements()
    if not os.access(NATPEER, os.X_OK):
        problems.append(f"{NATPEER} is missing: run interop/build.sh (needs Go >= 1.26)")
    if problems:
        pytest.fail("NAT interop cannot run: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def lab() -> Iterator[L.NatLab]:
    with L.nat_lab(wan_prefix=WAN) as built:
        yield built


def relay_addr(lab: L.NatLab, relay: LabPeer) -> str:
    return f"/ip4/{lab.relay_ip}/tcp/4001/p2p/{relay.peer_id}"


def go_relay(lab: L.NatLab, **limits: int) -> LabPeer:
    cfg: dict[str, Any] = {"relay_service": True}
    if limits:
        cfg["relay_limits"] = limits
    return LabPeer(
        lab,
        "relay",
        name="go-relay",
        listen=f"/ip4/{lab.relay_ip}/tcp/4001",
        program=[str(NATPEER)],
        config=cfg,
    )


def py_relay(lab: L.NatLab) -> LabPeer:
    return LabPeer(
        lab,
        "relay",
        name="py-relay",
        listen=f"/ip4/{lab.relay_ip}/tcp/4001",
        nat={
            "enable_relay_service": True,
            "enable_relay_client": False,
            "enable_hole_punching": False,
            "enable_autonat": False,
        },
    )


def py_peer(lab: L.NatLab, role: str, name: str, relay: LabPeer, **extra: Any) -> LabPeer:
    nat = {
        "relays": [relay_addr(lab, relay)],
        "force_reachability": "private",
        "observed_addr_threshold": 1,
        "enable_autonat": False,
        "direct_dial_timeout": 1.0,
        "punch_timeout": 3.0,
        "relayed_close_grace": 1.0,
        **extra,
    }
    return LabPeer(lab, role, name=name, listen="/ip4/0.0.0.0/tcp/4001", nat=nat)


def go_peer(lab: L.NatLab, role: str, name: str, relay: LabPeer) -> LabPeer:
    # go activates an observed address after 4 observers; the lab has one (the relay).
    cfg = {"relays": [relay_addr(lab, relay)], "hole_punching": True, "observed_threshold": 1}
    return LabPeer(
        lab, role, name=name, listen="/ip4/0.0.0.0/tcp/4001", program=[str(NATPEER)], config=cfg
    )


def relayed(a: LabPeer, b: LabPeer) -> dict[str, Any]:
    """A reserves; both know their observed address; B dials A through the relay."""
    rsvp = a.wait_event("ReservationObtained")
    a.ok("wait_observed", timeout=20)
    b.ok("wait_observed", timeout=20)
    got = b.ok("connect", addr=f"{rsvp['addrs'][0]}/p2p/{a.peer_id}")
    assert got["transport"] == "circuit" and got["peer"] == a.peer_id
    return rsvp


def test_go_relay_serves_our_peers(lab: L.NatLab) -> None:
    with (
        go_relay(lab) as relay,
        py_peer(lab, "h1", "A", relay) as a,
        py_peer(lab, "h2", "B", relay, enable_hole_punching=True) as b,
    ):
        rsvp = relayed(a, b)
        assert rsvp["relay"] == relay.peer_id
        assert rsvp["limit"] == {"duration": 120, "data": 131072}
        assert rsvp["voucher_verified"] is True  # go's signed voucher checks out here
        (conn,) = b.ok("conns", peer=a.peer_id)["conns"]
        assert conn["security"] == "/noise" and conn["muxer"] == "/yamux/1.0.0"
        assert b.ok("echo", peer=a.peer_id, size=20_000)["transport"] in ("circuit", "tcp")
        # Our DCUtR between our two peers, through the go relay.
        direct = b.ok("wait_direct", peer=a.peer_id, timeout=20)["conns"]
        assert [c["remote"] for c in direct] == [[f"{WAN}.1", 4001]]
        assert b.ok("echo", peer=a.peer_id, size=200_000)["transport"] == "tcp"


def test_go_relay_data_limit_reaches_both_of_our_ends(lab: L.NatLab) -> None:
    with (
        go_relay(lab, circuit_data=65536) as relay,
        py_peer(lab, "h1", "A", relay, enable_hole_punching=False) as a,
        py_peer(lab, "h2", "B", relay, enable_hole_punching=False) as b,
    ):
        rsvp = relayed(a, b)
        assert rsvp["limit"]["data"] == 65536
        assert not b.call("sink", peer=a.peer_id, size=200_000)["ok"]
        eb = b.wait_event("RelayedConnectionLimited", timeout=10)
        ea = a.wait_event("RelayedConnectionLimited", timeout=10)
        assert eb["reason"] == ea["reason"] == "data"
        assert eb["sent"] == 65536 and ea["received"] == 65536


def test_our_relay_serves_go_peers(lab: L.NatLab) -> None:
    with (
        py_relay(lab) as relay,
        go_peer(lab, "h1", "go-A", relay) as a,
        go_peer(lab, "h2", "go-B", relay) as b,
    ):
        rsvp = relayed(a, b)  # go's client verified our voucher, or it would have failed
        assert rsvp["relay"] == relay.peer_id
        assert rsvp["limit"] == {"duration": 120, "data": 131072}
        assert b.ok("echo", peer=a.peer_id, size=20_000)["transport"] == "circuit"
        assert a.ok("echo", peer=b.peer_id, size=20_000)["transport"] == "circuit"


def test_dcutr_our_peer_initiates_go_peer_responds(lab: L.NatLab) -> None:
    """Ours is A (reserved, inbound side: DCUtR initiator, server above TCP); go is B."""
    with (
        py_relay(lab) as relay,
        py_peer(lab, "h1", "A", relay, enable_hole_punching=True) as a,
        go_peer(lab, "h2", "go-B", relay) as b,
    ):
        relayed(a, b)
        (conn,) = b.ok("wait_direct", peer=a.peer_id, timeout=20)["conns"]
        assert conn["transport"] == "tcp" and conn["remote"] == [f"{WAN}.1", 4001]
        assert conn["direction"] == "outbound"  # go is the client above TCP
        (mine,) = a.ok("wait_direct", peer=b.peer_id, timeout=10)["conns"]
        assert mine["direction"] == "inbound" and mine["remote"] == [f"{WAN}.2", 4001]
        assert mine["security"] == conn["security"]  # go proposed it; we answered
        ev = a.wait_event("HolePunchSucceeded")
        assert ev["peer"] == b.peer_id and ev["attempts"] == 1
        assert b.ok("echo", peer=a.peer_id, size=200_000)["transport"] == "tcp"
        assert a.ok("echo", peer=b.peer_id, size=200_000)["transport"] == "tcp"


def test_dcutr_go_peer_initiates_our_peer_responds(lab: L.NatLab) -> None:
    """go is A (initiator, server above TCP); ours is B (responder, client above TCP).

    go first dials our public address directly *from its listen port*; that SYN leaves a
    conntrack entry for exactly the port pair of the punch, our SYN then reaches go's
    listener, and its SYN-ACK (another socket, another initial sequence number) is dropped by
    the NAT's strict TCP window tracking - go's punch itself then falls back to an ephemeral
    port. go-to-go fails the same way in this lab. Our stack makes its direct-first dial from
    an ephemeral port for this reason. Here the routers track windows liberally
    (``nf_conntrack_tcp_be_liberal=1``, as many home gateways do), and the punch succeeds.
    """
    for router in ("r1", "r2"):
        lab.exec(router, ["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_be_liberal=1"])
    with (
        py_relay(lab) as relay,
        go_peer(lab, "h1", "go-A", relay) as a,
        py_peer(lab, "h2", "B", relay, enable_hole_punching=True) as b,
    ):
        relayed(a, b)
        (conn,) = b.ok("wait_direct", peer=a.peer_id, timeout=30)["conns"]
        assert conn["transport"] == "tcp" and conn["remote"] == [f"{WAN}.1", 4001]
        assert conn["direction"] == "outbound"  # we are the client above TCP
        ev = a.wait_event("HolePunchSucceeded", timeout=10)
        assert ev["peer"] == b.peer_id
        assert b.ok("echo", peer=a.peer_id, size=200_000)["transport"] == "tcp"


def test_autonat_v2_against_a_go_server(lab: L.NatLab) -> None:
    """Our AutoNAT v2 client, go's server: nonce-checked dial-backs on fresh connections."""
    nat = {
        "enable_relay_client": False,
        "enable_hole_punching": False,
        "observed_addr_threshold": 1,
    }
    with (
        LabPeer(
            lab,
            "relay",
            name="go-S",
            listen=f"/ip4/{lab.relay_ip}/tcp/4001",
            program=[str(NATPEER)],
            config={"autonat_v2": True},
        ) as s,
        LabPeer(lab, "relay", name="P", listen=f"/ip4/{lab.relay_ip}/tcp/4002", nat=nat) as p,
        LabPeer(lab, "h1", name="A", listen="/ip4/0.0.0.0/tcp/4001", nat=nat) as a,
    ):
        server = f"/ip4/{lab.relay_ip}/tcp/4001/p2p/{s.peer_id}"
        p.ok("connect", addr=server)
        a.ok("connect", addr=server)
        a.ok("wait_observed", timeout=20)
        got = p.ok("probe_v2", server=s.peer_id, wait=40)
        assert got["reachable"] is True and got["tested"] == f"/ip4/{lab.relay_ip}/tcp/4002"
        got = a.ok("probe_v2", server=s.peer_id, wait=40)
        assert got["reachable"] is False and got["tested"] == f"/ip4/{lab.r1_wan}/tcp/4001"
