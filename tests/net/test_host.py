"""Host building blocks: limits, gater, peerstore (pure bookkeeping, no I/O)."""

from __future__ import annotations

import pytest

from glueberry.errors import ConfigError, PeerIdMismatch, ResourceLimitExceeded
from glueberry.net.gater import AllowAll, BlockList
from glueberry.net.limits import Direction, Limits, ResourceLimiter, StreamCounter
from glueberry.net.peerstore import Peerstore
from glueberry.wire.identity import PeerId, PrivateKey
from glueberry.wire.multiaddr import Multiaddr


def _peer(i: int = 0) -> PeerId:
    return PrivateKey.from_seed(bytes([i + 1]) * 32).peer_id


# --- limits ----------------------------------------------------------------------------


def test_limits_validate() -> None:
    with pytest.raises(ConfigError):
        Limits(max_connections=-1)
    Limits(max_connections=None, max_streams_per_connection=0)


def test_connection_limits_total_and_direction() -> None:
    lim = ResourceLimiter(Limits(max_connections=3, max_inbound_connections=2))
    a = lim.reserve(Direction.INBOUND)
    lim.reserve(Direction.INBOUND)
    with pytest.raises(ResourceLimitExceeded) as info:
        lim.reserve(Direction.INBOUND)
    assert info.value.limit == "max_inbound_connections"
    assert info.value.remote is False
    lim.reserve(Direction.OUTBOUND)
    with pytest.raises(ResourceLimitExceeded) as info:
        lim.reserve(Direction.OUTBOUND)
    assert info.value.limit == "max_connections"
    assert lim.rejected == {"max_inbound_connections": 1, "max_connections": 1}
    a.release()
    a.release()  # idempotent
    assert lim.connections == 2
    lim.reserve(Direction.INBOUND)


def test_connection_limits_per_peer() -> None:
    lim = ResourceLimiter(Limits(max_connections_per_peer=2))
    p = _peer()
    rs = [lim.reserve(Direction.OUTBOUND) for _ in range(3)]
    rs[0].set_peer(p)
    rs[1].set_peer(p)
    with pytest.raises(ResourceLimitExceeded) as info:
        rs[2].set_peer(p)
    assert info.value.limit == "max_connections_per_peer"
    assert lim.peer_count(p) == 2
    rs[0].release()
    assert lim.peer_count(p) == 1
    rs[2].set_peer(p)
    for r in rs:
        r.release()
    assert lim.peer_count(p) == 0
    assert lim.connections == 0


def test_stream_counter() -> None:
    sc = StreamCounter(
        Limits(
            max_streams_per_connection=4,
            max_inbound_streams_per_connection=3,
            max_negotiating_streams=2,
        )
    )
    assert sc.try_open_inbound() is None
    assert sc.try_open_inbound() is None
    assert sc.try_open_inbound() == "max_negotiating_streams"
    sc.negotiated()
    assert sc.try_open_inbound() is None
    assert sc.try_open_inbound() == "max_inbound_streams_per_connection"
    sc.open_outbound()
    with pytest.raises(ResourceLimitExceeded) as info:
        sc.open_outbound()
    assert info.value.limit == "max_streams_per_connection"
    assert sc.rejected == 2
    sc.close(Direction.INBOUND)
    sc.close(Direction.OUTBOUND)
    assert sc.total == 2


# --- gater -----------------------------------------------------------------------------


def test_blocklist_gater() -> None:
    p, q = _peer(0), _peer(1)
    g = BlockList(peers=[p], networks=["10.0.0.0/8"])
    ok = Multiaddr("/ip4/127.0.0.1/tcp/1")
    bad = Multiaddr("/ip4/10.1.2.3/tcp/1")
    assert not g.allow_dial(p, ok)
    assert g.allow_dial(q, ok)
    assert not g.allow_dial(None, bad)
    assert not g.allow_accept(bad)
    assert g.allow_accept(ok)
    assert not g.allow_accept(Multiaddr("/ip6/::ffff:10.0.0.1/tcp/1"))  # v4-mapped
    assert not g.allow_secured("inbound", p)
    g.unblock_peer(p)
    g.block_network("::1")
    assert g.allow_secured("outbound", p)
    assert not g.allow_accept(Multiaddr("/ip6/::1/tcp/1"))
    g.unblock_network("10.0.0.0/8")
    assert g.allow_accept(bad)
    assert g.allow_accept(Multiaddr("/dns/example.com/tcp/1"))
    a = AllowAll()
    assert a.allow_dial(p, bad) and a.allow_accept(bad) and a.allow_secured("inbound", p)


# --- peerstore ---------------------------------------------------------------------------


def test_peerstore_addrs_bounded_and_deduplicated() -> None:
    ps = Peerstore(max_addrs=3)
    p = _peer()
    ps.add_addrs(p, [f"/ip4/127.0.0.1/tcp/{i}" for i in range(5)])
    assert [str(a) for a in ps.addrs(p)] == [f"/ip4/127.0.0.1/tcp/{i}" for i in (2, 3, 4)]
    ps.add_addrs(p, [Multiaddr(f"/ip4/127.0.0.1/tcp/2/p2p/{p}")])  # p2p suffix stripped
    assert [str(a) for a in ps.addrs(p)] == [f"/ip4/127.0.0.1/tcp/{i}" for i in (3, 4, 2)]
    ps.set_addrs(p, ["/ip6/::1/tcp/9"])
    assert ps.addrs(p) == [Multiaddr("/ip6/::1/tcp/9")]
    assert ps.addrs(_peer(5)) == []


def test_peerstore_keys_protocols_versions() -> None:
    ps = Peerstore(max_protocols=2, max_string=5)
    key = PrivateKey.from_seed(b"\x07" * 32)
    p = key.peer_id
    assert ps.public_key(p) == key.public_key  # inlined in an Ed25519 peer ID
    with pytest.raises(PeerIdMismatch):
        ps.add_public_key(_peer(9), key.public_key)
    ps.add_public_key(p, key.public_key)
    ps.set_protocols(p, ["/a", "", "x" * 2000, "/b", "/c"])
    assert ps.protocols(p) == ["/a", "/b"]
    assert ps.supports(p, ["/c", "/b", "/a"]) == ["/b", "/a"]
    ps.remove_protocols(p, ["/a"])
    ps.add_protocols(p, ["/d"])
    assert ps.protocols(p) == ["/b", "/d"]
    ps.set_agent_version(p, "go-libp2p/0.48")
    ps.set_protocol_version(p, "ipfs/0.1.0")
    info = ps.get(p)
    assert info is not None
    assert info.agent_version == "go-li"
    assert info.protocol_version == "ipfs/"
    assert info.public_key == key.public_key
    assert ps.get(_peer(3)) is None


def test_peerstore_evicts_unprotected_lru() -> None:
    ps = Peerstore(max_peers=3)
    peers = [_peer(i) for i in range(5)]
    ps.protect(peers[0])
    for p in peers[:3]:
        ps.add_addrs(p, ["/ip4/127.0.0.1/tcp/1"])
    ps.add_addrs(peers[3], ["/ip4/127.0.0.1/tcp/1"])
    assert peers[0] in ps  # protected
    assert peers[1] not in ps  # least recently updated unprotected one
    assert ps.evicted == 1
    ps.add_protocols(peers[2], ["/x"])  # touch
    ps.add_addrs(peers[4], ["/ip4/127.0.0.1/tcp/1"])
    assert set(ps.peers()) == {peers[0], peers[2], peers[4]}
    ps.unprotect(peers[0])
    ps.remove_peer(peers[0])
    assert len(ps) == 2
