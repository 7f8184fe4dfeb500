"""DCUtR over QUIC between our stack and go-libp2p in the NAT lab (markers ``interop``, ``netns``).

Sibling of ``test_nat_go.py`` (same go peer, ``interop/go/bin/natpeer``, driven through
:class:`tests.netlab.labpeers.LabPeer`). Our relay listens on TCP and QUIC; both peers reach
it over QUIC, so the relay observes their QUIC sockets (``r1:4001/udp``, ``r2:4001/udp``)
through the lab's port-preserving NATs, and those are the addresses DCUtR exchanges. The go
peer listens on QUIC only; ours on TCP and QUIC (only QUIC is observed, so only QUIC is
offered).

Proven here, both ways round, through the lab's default NATs:

* our peer initiates DCUtR (the inbound side of the relayed connection): we spray random UDP
  datagrams from our QUIC listening socket and accept go's QUIC dial on it (we are the QUIC
  server, go the client);
* go initiates: go sprays (its ``holePunch``), we dial QUIC from our listening socket and
  go's listener accepts us.

Either way the result is one direct QUIC connection ``r1:4001`` <-> ``r2:4001`` carrying
streams both ways, the relayed connection closed. Unlike the TCP case (``test_nat_go.py``),
go's initiating side needs no liberal conntrack here: UDP has no sequence numbers for a NAT
to track, so go's direct-first dial from its listen port does not spoil the punch.

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
QUIC_ANY = "/ip4/0.0.0.0/udp/4001/quic-v1"


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


def relay_quic_addr(lab: L.NatLab, relay: LabPeer) -> str:
    return f"/ip4/{lab.relay_ip}/udp/4001/quic-v1/p2p/{relay.peer_id}"


def py_relay(lab: L.NatLab) -> LabPeer:
    return LabPeer(
        lab,
        "relay",
        name="py-relay",
        listen=[f"/ip4/{lab.relay_ip}/tcp/4001", f"/ip4/{lab.relay_ip}/udp/4001/quic-v1"],
        nat={
            "enable_relay_service": True,
            "enable_relay_client": False,
            "enable_hole_punching": False,
            "enable_autonat": False,
        },
    )


def py_peer(lab: L.NatLab, role: str, name: str, relay: LabPeer) -> LabPeer:
    nat = {
        "relays": [relay_quic_addr(lab, relay)],
        "force_reachability": "private",
        "observed_addr_threshold": 1,
        "enable_autonat": False,
        "direct_dial_timeout": 1.0,
        "punch_timeout": 3.0,
        "relayed_close_grace": 1.0,
    }
    return LabPeer(lab, role, name=name, listen=["/ip4/0.0.0.0/tcp/4001", QUIC_ANY], nat=nat)


def go_peer(lab: L.NatLab, role: str, name: str, relay: LabPeer) -> LabPeer:
    # go activates an observed address after 4 observers; the lab has one (the relay).
    cfg = {"relays": [relay_quic_addr(lab, relay)], "hole_punching": True, "observed_threshold": 1}
    return LabPeer(lab, role, name=name, listen=QUIC_ANY, program=[str(NATPEER)], config=cfg)


def relayed(a: LabPeer, b: LabPeer) -> None:
    """A reserves; both know their observed QUIC address; B dials A through the relay."""
    rsvp = a.wait_event("ReservationObtained")
    for p in (a, b):
        observed = p.ok("wait_observed", timeout=20)["observed"]
        assert any(x.endswith("/udp/4001/quic-v1") for x in observed), (p.name, observed)
    circuit = next(x for x in rsvp["addrs"] if "/quic-v1/" in x)
    got = b.ok("connect", addr=f"{circuit}/p2p/{a.peer_id}")
    assert got["transport"] == "circuit" and got["peer"] == a.peer_id


def direct_quic(conns: list[dict[str, Any]], remote_ip: str) -> dict[str, Any]:
    """The one (direct, QUIC) connection, from ``remote_ip:4001``. The go peer reports a
    QUIC connection's remote end as its multiaddr (``[multiaddr, 0]``), ours as
    ``[ip, port]`` with ``transport == "quic-v1"``."""
    (conn,) = conns
    remote = conn["remote"]
    if isinstance(remote[0], str) and remote[0].startswith("/"):
        assert remote[0] == f"/ip4/{remote_ip}/udp/4001/quic-v1", conns
    else:
        assert conn["transport"] == "quic-v1" and remote == [remote_ip, 4001], conns
    return conn


def test_quic_dcutr_our_peer_initiates_go_peer_responds(lab: L.NatLab) -> None:
    """Ours is A (reserved, inbound side: DCUtR initiator, sprays, QUIC server); go is B."""
    with (
        py_relay(lab) as relay,
        py_peer(lab, "h1", "A", relay) as a,
        go_peer(lab, "h2", "go-B", relay) as b,
    ):
        relayed(a, b)
        theirs = direct_quic(b.ok("wait_direct", peer=a.peer_id, timeout=20)["conns"], f"{WAN}.1")
        assert theirs["direction"] == "outbound"  # go dialed QUIC: the client
        mine = direct_quic(a.ok("wait_direct", peer=b.peer_id, timeout=10)["conns"], f"{WAN}.2")
        assert mine["direction"] == "inbound"
        ev = a.wait_event("HolePunchSucceeded")
        assert ev["peer"] == b.peer_id and ev["attempts"] == 1
        assert ev["addr"] == f"/ip4/{WAN}.2/udp/4001/quic-v1"
        assert b.wait_event("HolePunchSucceeded")["peer"] == a.peer_id
        assert a.ok("echo", peer=b.peer_id, size=200_000)["transport"] == "quic-v1"
        b.ok("echo", peer=a.peer_id, size=200_000)


def test_quic_dcutr_go_peer_initiates_our_peer_responds(lab: L.NatLab) -> None:
    """go is A (reserved, inbound side: sprays, QUIC server); ours is B (dials QUIC)."""
    with (
        py_relay(lab) as relay,
        go_peer(lab, "h1", "go-A", relay) as a,
        py_peer(lab, "h2", "B", relay) as b,
    ):
        relayed(a, b)
        mine = direct_quic(b.ok("wait_direct", peer=a.peer_id, timeout=30)["conns"], f"{WAN}.1")
        assert mine["direction"] == "outbound"
        theirs = direct_quic(a.ok("wait_direct", peer=b.peer_id, timeout=10)["conns"], f"{WAN}.2")
        # go's swarm calls the connection its hole punch returns "outbound" (it came out of
        # a dial), although go accepted it on its listener: we are the QUIC client (our
        # side says outbound, which for QUIC means the client).
        assert theirs["direction"] == "outbound"
        ev = b.wait_event("HolePunchSucceeded", timeout=10)
        assert ev["peer"] == a.peer_id
        # go's tracer: the punch succeeded (EndHolePunch; its direct-first dial, reported
        # with attempts 0, failed as it must through the NATs).
        ev_go = a.wait_event("HolePunchSucceeded", timeout=10)
        assert ev_go["peer"] == b.peer_id and "attempts" not in ev_go
        assert b.ok("echo", peer=a.peer_id, size=200_000)["transport"] == "quic-v1"
        a.ok("echo", peer=b.peer_id, size=200_000)
