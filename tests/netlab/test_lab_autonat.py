"""AutoNAT v1 and v2 with our stack in the NAT lab (marker ``netns``): a public peer is dialed
back, a peer behind a NAT is not. Needs root, iproute2 and nftables; fails (never skips)
without them."""

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
            # v2: the verdict counts only with our nonce back on a fresh connection.
            got = p.ok("probe_v2", server=s.peer_id)
            assert got == {"ok": True, "reachable": True, "tested": f"/ip4/{lab.relay_ip}/tcp/4002"}
            got = a.ok("probe_v2", server=s.peer_id, wait=30)
            assert got["reachable"] is False and got["tested"] == f"/ip4/{lab.r1_wan}/tcp/4001"


def test_reachability_verdicts_from_four_servers() -> None:
    """The NatManager's AutoNAT loop: > 3 agreeing servers make a peer PUBLIC or PRIVATE."""
    problems = L.missing_requirements()
    if problems:
        pytest.fail("NAT lab cannot run: " + "; ".join(problems), pytrace=False)
    servers_nat = {**QUIET, "enable_autonat": True, "autonat_dial_timeout": 2.0}
    probing = {
        **servers_nat,
        "observed_addr_threshold": 1,
        "autonat_boot_delay": 0.5,
        "autonat_retry_interval": 0.5,
    }
    with L.nat_lab(wan_prefix=WAN) as lab:
        servers = [
            LabPeer(
                lab,
                "relay",
                name=f"S{i}",
                listen=f"/ip4/{lab.relay_ip}/tcp/{4000 + i}",
                nat=servers_nat,
            )
            for i in range(1, 5)
        ]
        try:
            with (
                LabPeer(
                    lab, "relay", name="P", listen=f"/ip4/{lab.relay_ip}/tcp/4010", nat=probing
                ) as p,
                LabPeer(lab, "h1", name="A", listen="/ip4/0.0.0.0/tcp/4001", nat=probing) as a,
            ):
                for i, s in enumerate(servers, 1):
                    addr = f"/ip4/{lab.relay_ip}/tcp/{4000 + i}/p2p/{s.peer_id}"
                    p.ok("connect", addr=addr)
                    a.ok("connect", addr=addr)
                assert p.wait_event("ReachabilityChanged", timeout=30)["reachability"] == "public"
                assert a.wait_event("ReachabilityChanged", timeout=40)["reachability"] == "private"
        finally:
            for s in servers:
                s.close()
