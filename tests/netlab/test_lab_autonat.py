"""AutoNAT v1 with our stack in the NAT lab (marker ``netns``): a public peer is dialed back,
a peer behind a NAT is not. Needs root, iproute2 and nftables; fails (never skips) without."""

from __future__ import annotations

import pytest

from tests.netlab import lab as L
from tests.netlab.labpeers import LabPeer

pytestmark = pytest.mark.netns

WAN = "11.99.0"
QUIET = {"enable_relay_client": False, "enable_hole_punching": False}


def test_autonat_tells_public_from_private() -> None:
    problems = L.missing_requirements()
    if problems:
        pytest.fail("NAT lab cannot run: " + "; ".join(problems), pytrace=False)
    with L.nat_lab(wan_prefix=WAN) as lab:
        server_nat = {**QUIET, "enable_autonat": True, "autonat_dial_timeout": 3.0}
        with (
            LabPeer(
                lab, "relay", name="S", listen=f"/ip4/{lab.relay_ip}/tcp/4001", nat=server_nat
            ) as s,
            LabPeer(
                lab, "relay", name="P", listen=f"/ip4/{lab.relay_ip}/tcp/4002", nat=server_nat
            ) as p,
            LabPeer(
                lab,
                "h1",
                name="A",
                listen="/ip4/0.0.0.0/tcp/4001",
                nat={**server_nat, "observed_addr_threshold": 1},
            ) as a,
        ):
            server = f"/ip4/{lab.relay_ip}/tcp/4001/p2p/{s.peer_id}"
            p.ok("connect", addr=server)
            a.ok("connect", addr=server)
            a.ok("wait_observed", timeout=20)
            # The public peer is dialed back on its listen address.
            got = p.ok("probe", server=s.peer_id)
            assert got["reachable"] is True and got["addrs"] == [f"/ip4/{lab.relay_ip}/tcp/4002"]
            # The NATed peer offers its observed address; the dial-back dies in the NAT.
            got = a.ok("probe", server=s.peer_id, wait=30)
            assert got["addrs"] == [f"/ip4/{lab.r1_wan}/tcp/4001"]
            assert got["reachable"] is False
