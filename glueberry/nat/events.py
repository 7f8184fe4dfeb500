"""Events of the NAT-traversal layer (relay, hole punching, reachability, port mapping).

Published by :class:`glueberry.nat.manager.NatManager` through an
:class:`~glueberry.events.EventBroadcaster` (``manager.subscribe()``), so an application
learns about what the NAT layer did - most importantly when a relay limit ended a relayed
connection, which would otherwise look like a random reset (architecture C11: never silent).

Events are frozen, slotted, keyword-only dataclasses named as past-tense facts (C4); they are
not meant to be subclassed further.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from glueberry.nat.policy import Reachability
from glueberry.wire import pb_nat as pb
from glueberry.wire.identity import PeerId
from glueberry.wire.multiaddr import Multiaddr


class NatEvent:
    """Base of NAT events."""

    __slots__ = ()


# --- relay client ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReservationObtained(NatEvent):
    """A relay granted (or refreshed) our reservation."""

    relay: PeerId
    expire: int
    """UTC seconds since the epoch."""
    addrs: tuple[Multiaddr, ...]
    """Our relayed addresses through this relay (``…/p2p-circuit``)."""
    limit: pb.Limit | None
    """Limits of circuits through this relay (``None``: unlimited)."""
    voucher_verified: bool = False
    """The relay sent a reservation voucher and it verified (vouchers are advisory)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReservationFailed(NatEvent):
    """A reservation attempt failed (refused, unreachable relay, timeout)."""

    relay: PeerId
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayedConnectionLimited(NatEvent):
    """A relay limit ended a relayed connection (data budget or duration spent).

    The connection's streams were reset; their errors carry
    :class:`~glueberry.errors.ResourceLimitExceeded` (``limit="relay_circuit_data"`` or
    ``"relay_circuit_duration"``) as the cause.
    """

    peer: PeerId | None
    """The far end, when known."""
    relay: PeerId
    reason: Literal["data", "duration"]
    sent: int
    """Bytes we sent over the circuit (including security and muxer overhead)."""
    received: int
    limit: pb.Limit | None


# --- hole punching ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HolePunchSucceeded(NatEvent):
    """A direct connection replaced a relayed one."""

    peer: PeerId
    attempts: int
    """DCUtR attempts used (0: a plain direct dial worked)."""
    elapsed: float
    """Seconds from the relayed connection to the direct one."""
    addr: Multiaddr | None
    """The direct connection's remote address."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HolePunchFailed(NatEvent):
    """Hole punching gave up; the relayed connection stays in use."""

    peer: PeerId
    attempts: int


# --- addresses and reachability ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReachabilityChanged(NatEvent):
    reachability: Reachability


@dataclass(frozen=True, slots=True, kw_only=True)
class ExternalAddrsChanged(NatEvent):
    """The addresses we advertise besides our listen addresses changed."""

    observed: tuple[Multiaddr, ...]
    """Confirmed observed addresses."""
    mapped: tuple[Multiaddr, ...]
    """Addresses from port mappings."""
    relayed: tuple[Multiaddr, ...]
    """Relayed addresses of the current reservations."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PortMapped(NatEvent):
    """A gateway maps ``external`` to our ``internal_port`` (created or renewed)."""

    protocol: Literal["tcp", "udp"]
    internal_port: int
    external: Multiaddr
    method: Literal["natpmp", "upnp"]
    lifetime: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PortMappingFailed(NatEvent):
    protocol: Literal["tcp", "udp"]
    internal_port: int
    reason: str


# --- relay service --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayReservationServed(NatEvent):
    """(Relay) a reservation was granted or refreshed."""

    peer: PeerId
    expire: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayCircuitOpened(NatEvent):
    """(Relay) a circuit ``src → dst`` started."""

    src: PeerId
    dst: PeerId
    limit: pb.Limit | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayCircuitLimitReached(NatEvent):
    """(Relay) a circuit used up its data or time; both streams were reset."""

    src: PeerId
    dst: PeerId
    reason: Literal["data", "duration"]
    src_to_dst: int
    dst_to_src: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayCircuitClosed(NatEvent):
    """(Relay) a circuit ended: ``closed`` (EOF), ``reset``, ``data`` or ``duration``."""

    src: PeerId
    dst: PeerId
    reason: str
    src_to_dst: int
    dst_to_src: int


__all__ = [
    "ExternalAddrsChanged",
    "HolePunchFailed",
    "HolePunchSucceeded",
    "NatEvent",
    "PortMapped",
    "PortMappingFailed",
    "ReachabilityChanged",
    "RelayCircuitClosed",
    "RelayCircuitLimitReached",
    "RelayCircuitOpened",
    "RelayReservationServed",
    "RelayedConnectionLimited",
    "ReservationFailed",
    "ReservationObtained",
]
