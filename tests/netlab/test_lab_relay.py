"""Circuit relay v2 with our stack through the NAT lab (marker ``netns``).

A relay on the public segment, two private hosts behind two NAT routers. Hole punching is off
here, so the relayed connection is what carries the traffic. Needs root, iproute2 and
nftables; fails (never skips) without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.netlab import lab as L
from tests.netlab.labpeers import LabPeer, wait_until

pytestmark = pytest.mark.netns

WAN = "11.99.0"  # global-looking addresses that exist only inside the lab's namespaces


@pytest.fixture(autouse=True)
def _requirements() -> None:
    problems = L.missing_requirements()
    if problems:
        pytest.fail("NAT lab cannot run: " + "; ".join(problems), pytrace=False)


def peer_nat(relay: LabPeer, lab: L.NatLab, **extra: Any) -> dict[str, Any]:
    return {
        "relays": [f"/ip4/{lab.relay_ip}/tcp/4001/p2p/{relay.peer_id}"],
        "force_reachability": "private",
        "observed_addr_threshold": 1,
        "enable_autonat": False,
        "enable_hole_punching": False,
        **extra,
    }


def start_relay(lab: L.NatLab, **limits: int) -> LabPeer:
    nat: dict[str, Any] = {
        "enable_relay_service": True,
        "enable_relay_client": False,
        "enable_hole_punching": False,
        "enable_autonat": False,
    }
    if limits:
        nat["relay_limits"] = limits
    return LabPeer(lab, "relay", name="relay", listen=f"/ip4/{lab.relay_ip}/tcp/4001", nat=nat)


@pytest.fixture(scope="module")
def lab() -> Iterator[L.NatLab]:
    with L.nat_lab(wan_prefix=WAN) as built:
        yield built


def test_relayed_connection_through_two_nats(lab: L.NatLab) -> None:
    with start_relay(lab) as relay:
        nat = peer_nat(relay, lab)
        with (
            LabPeer(lab, "h1", name="A", listen="/ip4/0.0.0.0/tcp/4001", nat=nat) as a,
            LabPeer(lab, "h2", name="B", listen="/ip4/0.0.0.0/tcp/4001", nat=nat) as b,
        ):
            rsvp = a.wait_event("ReservationObtained")
            assert rsvp["relay"] == relay.peer_id
            assert rsvp["limit"] == {"duration": 120, "data": 131072}  # go's defaults
            # A learnt its public address from the relay's identify: the router's, port kept.
            assert a.wait_event("ExternalAddrsChanged")["observed"] == [
                f"/ip4/{lab.r1_wan}/tcp/4001"
            ]
            target = f"{rsvp['addrs'][0]}/p2p/{a.peer_id}"
            assert "/p2p-circuit/" in target
            got = b.ok("connect", addr=target)
            assert got["transport"] == "circuit" and got["peer"] == a.peer_id
            # Noise and yamux run end to end over the circuit, on both sides.
            (bc,) = b.ok("conns", peer=a.peer_id)["conns"]
            # A registers the inbound circuit once its own upgrade finishes, which can be a
            # moment after B's connect returns.
            assert wait_until(lambda: a.ok("conns", peer=b.peer_id)["conns"], timeout=10)
            (ac,) = a.ok("conns", peer=b.peer_id)["conns"]
            for c in (ac, bc):
                assert (c["transport"], c["security"], c["muxer"]) == (
                    "circuit",
                    "/noise",
                    "/yamux/1.0.0",
                )
            assert (bc["direction"], ac["direction"]) == ("outbound", "inbound")
            # Streams work in both directions (within go's default 128 KiB per direction).
            for size in (1, 10_000, 30_000):
                assert b.ok("echo", peer=a.peer_id, size=size)["transport"] == "circuit"
            assert a.ok("echo", peer=b.peer_id, size=20_000)["transport"] == "circuit"


def test_relay_limits_reach_the_application(lab: L.NatLab) -> None:
    with start_relay(lab, circuit_data=64 * 1024, circuit_duration=0) as relay:
        nat = peer_nat(relay, lab)
        with (
            LabPeer(lab, "h1", name="A", listen="/ip4/0.0.0.0/tcp/4001", nat=nat) as a,
            LabPeer(lab, "h2", name="B", listen="/ip4/0.0.0.0/tcp/4001", nat=nat) as b,
        ):
            rsvp = a.wait_event("ReservationObtained")
            assert rsvp["limit"] == {"duration": 0, "data": 65536}
            b.ok("connect", addr=f"{rsvp['addrs'][0]}/p2p/{a.peer_id}")
            b.ok("echo", peer=a.peer_id, size=1000)  # small traffic is fine
            # 200 kB cannot fit: the upload fails with an error, not a silent truncation...
            res = b.call("sink", peer=a.peer_id, size=200_000)
            assert not res["ok"], res
            # ...and both ends are told the relay's data limit ended the connection.
            eb = b.wait_event("RelayedConnectionLimited", timeout=10)
            ea = a.wait_event("RelayedConnectionLimited", timeout=10)
            for ev, other in ((eb, a), (ea, b)):
                assert ev["reason"] == "data" and ev["relay"] == relay.peer_id
                assert ev["peer"] == other.peer_id
                assert ev["limit"] == {"duration": 0, "data": 65536}
            assert eb["sent"] == 65536  # B filled the budget exactly, no byte more
            assert ea["received"] == 65536  # and A got every byte of it
            assert not b.ok("conns", peer=a.peer_id)["conns"]
            # A new circuit works again (the limit is per connection).
            b.ok("connect", addr=f"{rsvp['addrs'][0]}/p2p/{a.peer_id}")
            assert b.ok("echo", peer=a.peer_id, size=1000)["transport"] == "circuit"
