"""Port mapping by the NatManager against miniupnpd on a lab router (marker ``netns``).

A glueberry peer on h1 (behind r1, which runs miniupnpd with NAT-PMP and UPnP IGD) maps its
listen port, advertises the external address, and a peer on the public segment connects to
it there with our stack; stopping the NAT layer removes the mapping. The lab's "internet"
uses a non-reserved prefix because miniupnpd refuses to map while its WAN address is private;
those addresses exist only inside the lab's namespaces. Needs root, nftables and miniupnpd;
fails (never skips) without them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.netlab import lab as L
from tests.netlab.labpeers import LabPeer

pytestmark = pytest.mark.netns

WAN = "11.99.0"


@pytest.fixture(scope="module")
def lab() -> Iterator[L.NatLab]:
    problems = L.missing_requirements()
    if shutil.which("miniupnpd") is None:
        problems.append("miniupnpd not found (apt-get install -y miniupnpd-nftables)")
    if problems:
        pytest.fail("gateway lab cannot run: " + "; ".join(problems), pytrace=False)
    with L.nat_lab(wan_prefix=WAN) as built:
        built.start_miniupnpd("r1")
        yield built


@pytest.fixture(scope="module")
def outsider(lab: L.NatLab) -> Iterator[LabPeer]:
    """A plain peer on the public segment (no NAT features)."""
    with LabPeer(
        lab,
        "relay",
        name="outsider",
        listen=f"/ip4/{lab.relay_ip}/tcp/4001",
        nat={
            "enable_relay_client": False,
            "enable_hole_punching": False,
            "enable_autonat": False,
        },
    ) as peer:
        yield peer


@pytest.mark.parametrize(("method", "port"), [("natpmp", 4101), ("upnp", 4102)])
def test_port_mapping_makes_a_private_peer_reachable(
    lab: L.NatLab, outsider: LabPeer, method: str, port: int
) -> None:
    public = f"/ip4/{lab.r1_wan}/tcp/{port}"
    with LabPeer(
        lab,
        "h1",
        name=f"mapped-{method}",
        listen=f"/ip4/0.0.0.0/tcp/{port}",
        nat={
            "enable_relay_client": False,
            "enable_hole_punching": False,
            "enable_autonat": False,
            "enable_port_mapping": True,
            "port_mapping_method": method,
            "port_mapping_lifetime": 4,  # renewed every 2 s
        },
    ) as a:
        ev = a.wait_event("PortMapped", timeout=20)
        assert ev["method"] == method and ev["internal_port"] == port
        assert ev["external"] == public, (ev, lab.miniupnpd_log("r1")[-1500:])
        renewed = a.wait_event("PortMapped", n=2, timeout=10)
        assert renewed["external"] == public and renewed["lifetime"] <= 4
        info = a.ok("info")
        assert info["mapped"] == [public] and public in info["addrs"]  # advertised
        # Someone on the internet reaches A through the mapping, with our full stack.
        got = outsider.ok("connect", addr=f"{public}/p2p/{a.peer_id}")
        assert got["transport"] == "tcp" and got["peer"] == a.peer_id
        assert outsider.ok("echo", peer=a.peer_id, size=50_000)["transport"] == "tcp"
        rules = ["nft", "list", "chain", "inet", "gbupnp", "prerouting_miniupnpd"]
        assert f"dport {port}" in lab.exec("r1", rules).stdout
        # Stopping the NAT layer deletes the mapping on the gateway: A is unreachable again.
        a.ok("stop_nat")
        assert f"dport {port}" not in lab.exec("r1", rules).stdout
        outsider.ok("disconnect", peer=a.peer_id)
        fresh = outsider.call("connect", addr=f"{public}/p2p/{a.peer_id}", timeout=3)
        assert not fresh["ok"] and "Timeout" in fresh["error"], fresh
