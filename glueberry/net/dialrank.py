"""Dial ranking: in which order, and how far apart, to try the addresses of one peer.

References: RFC 8305 (Happy Eyeballs version 2: address interleaving, §4; staggered
connection attempts, §5); go-libp2p's swarm dial ranker and dial worker (libp2p-notes §6.2).
Pure: no I/O and no clock; :class:`~glueberry.net.host.Host` runs the plan (see "Outbound
path" there).

Theory of operation
-------------------
A peer often advertises several addresses: loopback and LAN addresses next to public ones,
IPv6 next to IPv4, QUIC next to TCP, stale ones next to live ones. Trying them strictly one
after another makes a dead first address cost a whole per-address timeout; trying them all at
once wastes sockets and handshakes. The plan is in between: try the most promising address
first and start the next one after a short *stagger* delay unless the first has already
succeeded (the host also starts the next one at once when an attempt fails).

Order (:func:`rank_addrs`):

1. direct before relayed (``/p2p-circuit``): a relay is the fallback, and its connection is
   limited;
2. by scope: loopback, then private (RFC 1918, unique local, link local, shared 100.64/10),
   then public and DNS names. When a peer offers both, a local address is the one that
   works when we share its host or network, and it answers fastest;
3. QUIC (``quic-v1``, then draft ``quic``) before TCP, before anything else, as go-libp2p
   does: QUIC sets up in one round trip and the host prefers to end up on it;
4. within one scope and transport, IPv6 and IPv4 alternate, IPv6 first (RFC 8305 §4), each
   family by ascending port (a low port is more likely the listen port than a port a NAT
   observed), ``/dns4`` and ``/dns6`` names after the addresses of their family, ``/dns``
   names last.

Duplicates are dropped (the first occurrence stays). Delays (:attr:`DialStep.delay`, seconds
after the previous attempt started):

* after a loopback or private address: ``stagger_local`` (default 30 ms, go's private delay):
  such an attempt succeeds or fails within a few milliseconds;
* after a public address: ``stagger`` (default 250 ms, RFC 8305's recommended Connection
  Attempt Delay and go's public delay, about one wide-area round trip);
* before the first relayed address, when there are direct ones: ``relay_delay`` (default
  500 ms, go's), so a working direct address wins before any relay is bothered.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from glueberry.wire.multiaddr import Multiaddr, MultiaddrError

__all__ = [
    "DEFAULT_RELAY_DELAY",
    "DEFAULT_STAGGER",
    "DEFAULT_STAGGER_LOCAL",
    "DialStep",
    "Scope",
    "address_scope",
    "rank_addrs",
]

#: Delay after starting a public address before the next (RFC 8305 §5, go: 250 ms).
DEFAULT_STAGGER: Final = 0.25
#: Delay after starting a loopback or private address before the next (go: 30 ms).
DEFAULT_STAGGER_LOCAL: Final = 0.03
#: Delay before the first relayed address when direct ones exist (go: 500 ms).
DEFAULT_RELAY_DELAY: Final = 0.5

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_TRANSPORT_RANK: Final = {"quic-v1": 0, "quic": 1, "tcp": 2}


class Scope(enum.IntEnum):
    """Where an address points, nearest first."""

    LOOPBACK = 0
    PRIVATE = 1
    PUBLIC = 2


@dataclass(frozen=True, slots=True)
class DialStep:
    """One address of a dial plan."""

    addr: Multiaddr
    """The address to dial."""
    delay: float
    """Seconds to wait after the previous attempt started (0 for the first)."""


def address_scope(addr: Multiaddr) -> Scope:
    """Loopback, private or public (DNS names count as public)."""
    ip = addr.ip
    if ip is None:
        return Scope.PUBLIC
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return Scope.LOOPBACK
    if ip.is_private or ip.is_link_local or (ip.version == 4 and ip in _SHARED):
        return Scope.PRIVATE
    return Scope.PUBLIC


def _family(addr: Multiaddr) -> int:
    """6, 4, or 0 for a name of no fixed family."""
    ip = addr.ip
    if ip is not None:
        return ip.version
    if addr.has("dns6"):
        return 6
    if addr.has("dns4"):
        return 4
    return 0


def _port(addr: Multiaddr) -> int:
    try:
        return addr.to_socket_address().port
    except MultiaddrError:
        return 1 << 16


def _transport_rank(addr: Multiaddr) -> int:
    kind = addr.transport_kind()
    return _TRANSPORT_RANK.get(kind, len(_TRANSPORT_RANK)) if kind is not None else 99


def _ip_then_port(addr: Multiaddr) -> tuple[bool, int]:
    return addr.ip is None, _port(addr)


def _interleave(addrs: list[Multiaddr]) -> list[Multiaddr]:
    """IPv6 and IPv4 alternately (IPv6 first), each by port with names after addresses;
    names of no fixed family last."""
    v6 = sorted((a for a in addrs if _family(a) == 6), key=_ip_then_port)
    v4 = sorted((a for a in addrs if _family(a) == 4), key=_ip_then_port)
    out: list[Multiaddr] = []
    for i in range(max(len(v6), len(v4))):
        out.extend(fam[i] for fam in (v6, v4) if i < len(fam))
    out.extend(sorted((a for a in addrs if _family(a) == 0), key=_port))
    return out


def _order(addrs: list[Multiaddr]) -> list[Multiaddr]:
    buckets: dict[tuple[Scope, int], list[Multiaddr]] = {}
    for a in addrs:
        buckets.setdefault((address_scope(a), _transport_rank(a)), []).append(a)
    return [a for key in sorted(buckets) for a in _interleave(buckets[key])]


def rank_addrs(
    addrs: Iterable[Multiaddr],
    *,
    stagger: float = DEFAULT_STAGGER,
    stagger_local: float = DEFAULT_STAGGER_LOCAL,
    relay_delay: float = DEFAULT_RELAY_DELAY,
) -> list[DialStep]:
    """The dial plan for ``addrs``: best first, each with its delay (module docstring)."""
    unique = list(dict.fromkeys(addrs))
    direct = _order([a for a in unique if not a.is_relayed])
    # A relayed address is ranked by its relay's address (the part before /p2p-circuit).
    relayed = [a for a in unique if a.is_relayed]
    relay_of = {a: (a.split_circuit() or (a, a))[0] for a in relayed}
    rank = {r: i for i, r in enumerate(_order(list(dict.fromkeys(relay_of.values()))))}
    relayed.sort(key=lambda a: rank[relay_of[a]])
    steps: list[DialStep] = []
    prev: Multiaddr | None = None
    for addr in direct + relayed:
        if prev is None:
            delay = 0.0
        elif addr.is_relayed and not prev.is_relayed:
            delay = relay_delay
        elif address_scope(relay_of.get(prev, prev)) is Scope.PUBLIC:
            delay = stagger
        else:
            delay = stagger_local
        steps.append(DialStep(addr, delay))
        prev = addr
    return steps
