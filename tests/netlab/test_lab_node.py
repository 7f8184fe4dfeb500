"""Glueberry nodes across NATs in the lab (marker ``netns``; root, iproute2, nftables).

A Glueberry node with the relay service on the public segment; nodes A (behind r1) and B
(behind r2) configured with that relay (``Config.relays``). B reaches A through A's relayed
address; the ready-made handshake and encrypted messages run over the circuit, and then:

* through port-preserving NATs DCUtR upgrades to a direct connection while messages flow
  both ways, the node moves its streams there without loss or reordering, and statistics
  and ``connection_changes()`` say ``hole_punched``;
* through symmetric NATs the punch fails and the nodes keep talking over the relay;
* at a relay's limits the application is told: a message that does not fit is refused
  with ``ResourceLimitExceeded`` (every accepted one arrives), and when the duration runs
  out both ends get ``RelayLimitReached`` and ``Disconnected`` caused by the limit.

Fails (never skips) when the lab cannot be built.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.netlab import lab as L
from tests.netlab.labpeers import LabPeer, wait_until

pytestmark = pytest.mark.netns

WAN: Final = "11.99.0"
GBNATPEER: Final = [sys.executable, str(Path(__file__).resolve().parent / "gbnatpeer.py")]
NAT_TUNING: Final[dict[str, Any]] = {
    "force_reachability": "private",
    "observed_addr_threshold": 1,  # one observer (the relay) in this small world
    "direct_dial_timeout": 1.0,
    "punch_timeout": 3.0,
    "relayed_close_grace": 3.0,
}


@pytest.fixture(autouse=True)
def _requirements() -> None:
    problems = L.missing_requirements()
    if problems:
        pytest.fail("NAT lab cannot run: " + "; ".join(problems), pytrace=False)


class Nodes:
    """The relay node, A and B, with B connected to A through the relay."""

    def __init__(
        self,
        lab: L.NatLab,
        *,
        hole_punching: bool,
        relay_limits: dict[str, int] | None = None,
    ) -> None:
        self.peers: list[LabPeer] = []
        relay_nat = {"relay_limits": relay_limits} if relay_limits else {}
        self.relay = self._start(
            lab,
            "relay",
            "relay",
            f"/ip4/{lab.relay_ip}/tcp/4001",
            {"enable_relay_service": True, "enable_hole_punching": False, "nat": relay_nat},
        )
        relay_addr = f"/ip4/{lab.relay_ip}/tcp/4001/p2p/{self.relay.peer_id}"
        node_cfg = {
            "relays": [relay_addr],
            "enable_hole_punching": hole_punching,
            "nat": NAT_TUNING,
        }
        self.a = self._start(lab, "h1", "A", "/ip4/0.0.0.0/tcp/4001", node_cfg)
        self.b = self._start(lab, "h2", "B", "/ip4/0.0.0.0/tcp/4001", node_cfg)

    def _start(
        self, lab: L.NatLab, role: str, name: str, listen: str, cfg: dict[str, Any]
    ) -> LabPeer:
        peer = LabPeer(lab, role, name=name, listen=listen, program=GBNATPEER, config=cfg)
        self.peers.append(peer)
        return peer

    def connect(self) -> dict[str, Any]:
        a, b = self.a, self.b
        relayed = a.ok("wait_relayed", timeout=20)["relayed"]
        assert relayed and "/p2p-circuit" in relayed[0]
        a.ok("wait_observed", timeout=20)
        b.ok("wait_observed", timeout=20)
        got = b.ok("connect", peer=a.peer_id, addr=f"{relayed[0]}/p2p/{a.peer_id}", wait=40)
        return got

    def close(self) -> None:
        for p in reversed(self.peers):
            p.close()


@contextlib.contextmanager
def lab_nodes(symmetric: bool, **kw: Any) -> Iterator[Nodes]:
    with L.nat_lab(wan_prefix=WAN, symmetric=symmetric) as lab:
        nodes = Nodes(lab, **kw)
        try:
            yield nodes
        finally:
            nodes.close()


def _changes(peer: LabPeer, kind: str) -> list[dict[str, Any]]:
    return [c for c in peer.ok("changes")["changes"] if c["kind"] == kind]


def _transports(x: LabPeer, y: LabPeer) -> list[str]:
    return [c["transport"] for c in x.ok("conns", peer=y.peer_id)["conns"]]


def _states(peer: LabPeer) -> list[str]:
    return [e["state"] for e in peer.ok("events")["events"]]


def _exchange(x: LabPeer, y: LabPeer, *, count: int, size: int, tag: str) -> None:
    """``x`` sends ``count`` messages to ``y``; all arrive, in order."""
    res = x.ok("send", peer=y.peer_id, count=count, size=size, tag=tag)
    assert res["error"] is None and res["sent"] == count, res
    got = y.ok("wait_received", peer=x.peer_id, tag=tag, count=count, timeout=20)
    assert got["count"] == count and got["in_order"], got


def test_relayed_handshake_and_encrypted_messages_both_ways() -> None:
    with lab_nodes(symmetric=False, hole_punching=False) as nodes:
        a, b = nodes.a, nodes.b
        got = nodes.connect()
        assert got["connection_type"] == "relayed"
        assert [c["transport"] for c in got["conns"]] == ["circuit"]
        _exchange(b, a, count=100, size=300, tag="b")
        _exchange(a, b, count=100, size=300, tag="a")
        for x, y in ((a, b), (b, a)):
            stats = x.ok("stats", peer=y.peer_id)
            assert stats["connection_type"] == "relayed"
            assert stats["stats"]["connection_type"] == "relayed"
            assert stats["stats"]["connected"] is True
            (change,) = _changes(x, "PeerConnectionChanged")
            assert change["peer_id"] == y.peer_id
            assert (change["connection_type"], change["previous"]) == ("relayed", None)
            assert "/p2p-circuit" in change["address"]
            assert "Disconnected" not in _states(x)


def test_hole_punch_moves_the_session_to_a_direct_connection_while_messages_flow() -> None:
    with lab_nodes(symmetric=False, hole_punching=True) as nodes:
        a, b = nodes.a, nodes.b
        got = nodes.connect()
        # Messages flow both ways from the start, across the punch (about 5 s each, 20 kB/s:
        # the relay's 128 KiB would not carry them all).
        n = 1000
        for x, y, tag in ((b, a, "b"), (a, b, "a")):
            x.ok("send_start", peer=y.peer_id, count=n, size=100, tag=tag, interval=0.005)
        assert got["connection_type"] in ("relayed", "hole_punched")
        for x, y in ((a, b), (b, a)):
            x.ok("wait_type", peer=y.peer_id, type="hole_punched", timeout=30, wait=40)
        for x, y, tag in ((b, a, "b"), (a, b, "a")):
            res = x.ok("send_wait", timeout=30)
            assert res["error"] is None and res["sent"] == n, res
            rcv = y.ok("wait_received", peer=x.peer_id, tag=tag, count=n, timeout=20)
            assert rcv["count"] == n and rcv["in_order"], rcv  # nothing lost or reordered
        for x, y in ((a, b), (b, a)):
            # Only the direct connection is left, the relayed one's close was no disconnect.
            (conn,) = x.ok("wait_type", peer=y.peer_id, type="hole_punched")["conns"]
            assert conn["transport"] == "tcp"
            assert wait_until(lambda x=x, y=y: _transports(x, y) == ["tcp"], timeout=10)
            assert "Disconnected" not in _states(x)
            answer = x.ok("stats", peer=y.peer_id)
            stats = answer["stats"]
            assert stats["connection_type"] == "hole_punched" and stats["connected"]
            assert answer["input_errors"]["streams_migrated"] >= 1  # moved while in use
            kinds = [
                (c["previous"], c["connection_type"]) for c in _changes(x, "PeerConnectionChanged")
            ]
            assert kinds[-1] == ("relayed", "hole_punched"), kinds
            assert x.ok("wait_nat_event", type="HolePunchSucceeded")["event"]["attempts"] >= 1
        # The session goes on over the direct connection, beyond any relay limit.
        _exchange(b, a, count=300, size=1000, tag="b2")
        _exchange(a, b, count=300, size=1000, tag="a2")


def test_symmetric_nats_stay_relayed_and_messages_work_within_the_limit() -> None:
    with lab_nodes(symmetric=True, hole_punching=True) as nodes:
        a, b = nodes.a, nodes.b
        got = nodes.connect()
        assert got["connection_type"] == "relayed"
        failed = a.ok("wait_nat_event", type="HolePunchFailed", timeout=40)["event"]
        assert failed["peer"] == b.peer_id and failed["attempts"] == 3
        # Still relayed, and the session works both ways (within go's 128 KiB).
        _exchange(b, a, count=100, size=500, tag="b")
        _exchange(a, b, count=100, size=500, tag="a")
        for x, y in ((a, b), (b, a)):
            assert x.ok("stats", peer=y.peer_id)["connection_type"] == "relayed"
            assert _transports(x, y) == ["circuit"]
            kinds = [c["connection_type"] for c in _changes(x, "PeerConnectionChanged")]
            assert kinds == ["relayed"]
            assert "Disconnected" not in _states(x)


def test_relay_limits_are_reported_to_the_application_and_nothing_is_lost_silently() -> None:
    limits = {"circuit_data": 64 * 1024, "circuit_duration": 12}
    with lab_nodes(symmetric=False, hole_punching=False, relay_limits=limits) as nodes:
        a, b = nodes.a, nodes.b
        nodes.connect()
        # Data: B sends 1 KiB messages until the relayed connection's budget is used up.
        res = b.ok("send", peer=a.peer_id, count=200, size=1024, tag="b")
        err = res["error"]
        assert err is not None and err["type"] == "ResourceLimitExceeded", res
        assert err["limit"] == "relay_circuit_data" and err["remote"] is True
        sent = res["sent"]
        assert 40 <= sent < 64, res
        # Every message that was accepted arrives, in order; none was cut off by the relay.
        got = a.ok("wait_received", peer=b.peer_id, tag="b", count=sent, timeout=20)
        assert got["count"] == sent and got["in_order"], got
        # The connection is still up; the other direction has its own budget.
        _exchange(a, b, count=20, size=1000, tag="a")
        assert not _changes(a, "RelayLimitReached") and not _changes(b, "RelayLimitReached")
        # Duration: when it runs out both ends are told, and the peer is disconnected by it.
        for x, y in ((a, b), (b, a)):
            ev = x.ok("wait_change", kind="RelayLimitReached", timeout=20, wait=30)["change"]
            assert ev["peer_id"] == y.peer_id and ev["reason"] == "duration"
            assert ev["relay"] == nodes.relay.peer_id
            assert (ev["data_limit"], ev["duration_limit"]) == (64 * 1024, 12)
            assert wait_until(lambda x=x: "Disconnected" in _states(x), timeout=10)
            disc = next(e for e in x.ok("events")["events"] if e["state"] == "Disconnected")
            assert disc["error"]["type"] == "ConnectionLost", disc
            assert disc["error"]["cause"]["type"] == "ResourceLimitExceeded", disc
            assert disc["error"]["cause"]["limit"] == "relay_circuit_duration", disc
