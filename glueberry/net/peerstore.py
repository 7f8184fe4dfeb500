"""The peerstore: what this host knows about other peers, with hard size bounds.

Per peer: addresses, public key, supported protocols, agent and protocol versions. The host
fills addresses from dials and connections; identify (:mod:`glueberry.net.services`) fills
the rest through :attr:`glueberry.net.host.Host.peerstore`.

Everything is bounded, because most of it comes from the network (go-libp2p CVE-2023-40583
was an unbounded peer-record store; go caps identify at 500 addresses and 1024 protocols per
peer, libp2p-notes §2.8):

* at most :attr:`Peerstore.max_peers` peers; when full, the least recently updated peer that
  is not *protected* (the host protects connected peers) is evicted;
* per peer at most ``max_addrs`` addresses (newest kept), ``max_protocols`` protocols and
  ``max_string`` characters of agent/protocol version; excess is dropped, never an error,
  because a chatty peer is not a broken one.

A public key is stored only if it matches the peer ID (otherwise
:class:`glueberry.errors.PeerIdMismatch`). Synchronous, loop-thread only.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from glueberry.errors import PeerIdMismatch, RemoteProtocolError
from glueberry.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from glueberry.wire.identity import PeerId, PublicKey

DEFAULT_MAX_PEERS: Final = 1000
DEFAULT_MAX_ADDRS: Final = 500
DEFAULT_MAX_PROTOCOLS: Final = 1024
DEFAULT_MAX_STRING: Final = 256
#: A protocol ID longer than multistream-select's message cap cannot be negotiated anyway.
MAX_PROTOCOL_LENGTH: Final = 1024


@dataclass(slots=True)
class PeerInfo:
    """What is known about one peer (a snapshot: copies, safe to keep)."""

    peer_id: PeerId
    addrs: list[Multiaddr] = field(default_factory=list)
    public_key: PublicKey | None = None
    protocols: list[str] = field(default_factory=list)
    agent_version: str | None = None
    protocol_version: str | None = None


@dataclass(slots=True)
class _Record:
    addrs: dict[Multiaddr, None] = field(default_factory=dict)  # ordered set, oldest first
    public_key: PublicKey | None = None
    protocols: dict[str, None] = field(default_factory=dict)
    agent_version: str | None = None
    protocol_version: str | None = None


class Peerstore:
    """Bounded per-peer book of addresses, keys, protocols and versions."""

    def __init__(
        self,
        *,
        max_peers: int = DEFAULT_MAX_PEERS,
        max_addrs: int = DEFAULT_MAX_ADDRS,
        max_protocols: int = DEFAULT_MAX_PROTOCOLS,
        max_string: int = DEFAULT_MAX_STRING,
    ) -> None:
        self.max_peers = max_peers
        self.max_addrs = max_addrs
        self.max_protocols = max_protocols
        self.max_string = max_string
        self._records: OrderedDict[PeerId, _Record] = OrderedDict()
        self._protected: Counter[PeerId] = Counter()
        #: Peers evicted because the store was full.
        self.evicted = 0

    # --- bookkeeping ------------------------------------------------------------------------

    def _record(self, peer: PeerId) -> _Record:
        rec = self._records.get(peer)
        if rec is None:
            rec = _Record()
            self._records[peer] = rec
            self._evict()
        else:
            self._records.move_to_end(peer)
        return rec

    def _evict(self) -> None:
        if len(self._records) <= self.max_peers:
            return
        for peer in list(self._records):
            if len(self._records) <= self.max_peers:
                break
            if not self._protected[peer]:
                del self._records[peer]
                self.evicted += 1

    def protect(self, peer: PeerId) -> None:
        """Keep ``peer`` from eviction until a matching :meth:`unprotect` (counted)."""
        self._protected[peer] += 1

    def unprotect(self, peer: PeerId) -> None:
        self._protected[peer] -= 1
        if self._protected[peer] <= 0:
            del self._protected[peer]
        self._evict()

    def peers(self) -> list[PeerId]:
        """Every peer with a record, least recently updated first."""
        return list(self._records)

    def __contains__(self, peer: object) -> bool:
        return peer in self._records

    def __len__(self) -> int:
        return len(self._records)

    def remove_peer(self, peer: PeerId) -> None:
        self._records.pop(peer, None)

    def get(self, peer: PeerId) -> PeerInfo | None:
        """A snapshot of everything known about ``peer``, or ``None``."""
        rec = self._records.get(peer)
        if rec is None:
            return None
        return PeerInfo(
            peer_id=peer,
            addrs=list(rec.addrs),
            public_key=rec.public_key,
            protocols=list(rec.protocols),
            agent_version=rec.agent_version,
            protocol_version=rec.protocol_version,
        )

    # --- addresses ---------------------------------------------------------------------------

    def add_addrs(self, peer: PeerId, addrs: Iterable[Multiaddr | str]) -> None:
        """Add addresses (``/p2p/<peer>`` suffixes are stripped); the newest are kept."""
        rec = self._record(peer)
        for addr in addrs:
            ma = (addr if isinstance(addr, Multiaddr) else Multiaddr(addr)).without_p2p()
            rec.addrs.pop(ma, None)
            rec.addrs[ma] = None
        while len(rec.addrs) > self.max_addrs:
            del rec.addrs[next(iter(rec.addrs))]

    def set_addrs(self, peer: PeerId, addrs: Iterable[Multiaddr | str]) -> None:
        """Replace the addresses of ``peer``."""
        self._record(peer).addrs.clear()
        self.add_addrs(peer, addrs)

    def addrs(self, peer: PeerId) -> list[Multiaddr]:
        rec = self._records.get(peer)
        return list(rec.addrs) if rec is not None else []

    # --- keys ------------------------------------------------------------------------------

    def add_public_key(self, peer: PeerId, key: PublicKey) -> None:
        """Store ``key`` for ``peer``.

        Raises:
            PeerIdMismatch: ``key`` does not hash to ``peer``.
        """
        if not peer.matches(key):
            raise PeerIdMismatch("public key does not match the peer ID", peer_id=peer)
        self._record(peer).public_key = key

    def public_key(self, peer: PeerId) -> PublicKey | None:
        rec = self._records.get(peer)
        if rec is not None and rec.public_key is not None:
            return rec.public_key
        try:
            return peer.extract_public_key()
        except RemoteProtocolError:  # an inlined key of a type we cannot parse
            return None

    # --- protocols ---------------------------------------------------------------------------

    def set_protocols(self, peer: PeerId, protocols: Iterable[str]) -> None:
        """Replace the protocols of ``peer`` (first ``max_protocols`` valid ones kept)."""
        rec = self._record(peer)
        rec.protocols.clear()
        self._add_protocols(rec, protocols)

    def add_protocols(self, peer: PeerId, protocols: Iterable[str]) -> None:
        self._add_protocols(self._record(peer), protocols)

    def _add_protocols(self, rec: _Record, protocols: Iterable[str]) -> None:
        for proto in protocols:
            if len(rec.protocols) >= self.max_protocols:
                break
            if isinstance(proto, str) and 0 < len(proto) <= MAX_PROTOCOL_LENGTH:
                rec.protocols[proto] = None

    def remove_protocols(self, peer: PeerId, protocols: Iterable[str]) -> None:
        rec = self._records.get(peer)
        if rec is not None:
            for proto in protocols:
                rec.protocols.pop(proto, None)

    def protocols(self, peer: PeerId) -> list[str]:
        rec = self._records.get(peer)
        return list(rec.protocols) if rec is not None else []

    def supports(self, peer: PeerId, protocols: Iterable[str]) -> list[str]:
        """Those of ``protocols`` that ``peer`` is known to support, in the given order."""
        rec = self._records.get(peer)
        if rec is None:
            return []
        return [p for p in protocols if p in rec.protocols]

    # --- versions ------------------------------------------------------------------------------

    def set_agent_version(self, peer: PeerId, agent: str) -> None:
        self._record(peer).agent_version = agent[: self.max_string]

    def agent_version(self, peer: PeerId) -> str | None:
        rec = self._records.get(peer)
        return rec.agent_version if rec is not None else None

    def set_protocol_version(self, peer: PeerId, version: str) -> None:
        self._record(peer).protocol_version = version[: self.max_string]

    def protocol_version(self, peer: PeerId) -> str | None:
        rec = self._records.get(peer)
        return rec.protocol_version if rec is not None else None


__all__ = ["PeerInfo", "Peerstore"]
