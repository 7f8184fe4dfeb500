"""Connection gating: decide, at each step of a connection's life, whether it may go on.

Modelled on go-libp2p's ``ConnectionGater`` (``core/connmgr/gater.go``), reduced to the three
checks a host can act on:

* :meth:`ConnectionGater.allow_dial` before an outbound dial (peer, if known, and address);
* :meth:`ConnectionGater.allow_accept` when a raw inbound connection arrives (remote address
  only: nothing is known yet, and nothing has been spent on it);
* :meth:`ConnectionGater.allow_secured` once the security handshake has authenticated the
  peer, in both directions.

A refused dial raises :class:`glueberry.errors.PeerBlacklisted` (a permanent error); a refused
inbound connection is closed without a word (go does the same). Gaters are synchronous and
must be fast: they run on the accept path.

:class:`BlockList` is a ready-made gater with peer and IP-network deny lists.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable

    from glueberry.wire.identity import PeerId
    from glueberry.wire.multiaddr import Multiaddr

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConnectionGater(Protocol):
    """Decides which connections may proceed. Return ``False`` to refuse."""

    def allow_dial(self, peer: PeerId | None, addr: Multiaddr) -> bool:
        """Before dialing ``addr`` (for ``peer``, when known)."""
        ...

    def allow_accept(self, addr: Multiaddr) -> bool:
        """When a connection from ``addr`` is accepted, before any byte is read."""
        ...

    def allow_secured(self, direction: str, peer: PeerId) -> bool:
        """After the security handshake; ``direction`` is "inbound" or "outbound"."""
        ...


class AllowAll:
    """The default gater: allows everything."""

    def allow_dial(self, peer: PeerId | None, addr: Multiaddr) -> bool:
        return True

    def allow_accept(self, addr: Multiaddr) -> bool:
        return True

    def allow_secured(self, direction: str, peer: PeerId) -> bool:
        return True


class BlockList:
    """A deny-list gater: blocked peers and blocked IP networks, editable at run time."""

    def __init__(
        self,
        *,
        peers: Iterable[PeerId] = (),
        networks: Iterable[str | IPNetwork] = (),
    ) -> None:
        self._peers: set[PeerId] = set(peers)
        self._networks: list[IPNetwork] = [ipaddress.ip_network(n) for n in networks]

    def block_peer(self, peer: PeerId) -> None:
        self._peers.add(peer)

    def unblock_peer(self, peer: PeerId) -> None:
        self._peers.discard(peer)

    def block_network(self, network: str | IPNetwork) -> None:
        """Block an IP network (``"10.0.0.0/8"``) or a single address (``"::1"``)."""
        self._networks.append(ipaddress.ip_network(network))

    def unblock_network(self, network: str | IPNetwork) -> None:
        net = ipaddress.ip_network(network)
        self._networks = [n for n in self._networks if n != net]

    def is_peer_blocked(self, peer: PeerId) -> bool:
        return peer in self._peers

    def is_addr_blocked(self, addr: Multiaddr) -> bool:
        ip = addr.ip
        if ip is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in self._networks)

    def allow_dial(self, peer: PeerId | None, addr: Multiaddr) -> bool:
        if peer is not None and peer in self._peers:
            return False
        return not self.is_addr_blocked(addr)

    def allow_accept(self, addr: Multiaddr) -> bool:
        return not self.is_addr_blocked(addr)

    def allow_secured(self, direction: str, peer: PeerId) -> bool:
        return peer not in self._peers


__all__ = ["AllowAll", "BlockList", "ConnectionGater"]
