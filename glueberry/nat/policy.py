"""NAT-traversal policy: pure "behaviours" that turn events into commands.

Specs: relay/circuit-v2.md (reservations), relay/DCUtR.md (when and how often to punch),
autonat/autonat-v1.md and autonat-v2.md (reachability heuristics), identify/README.md
(observed addresses) in https://github.com/libp2p/specs.

Theory of operation (the rust-libp2p ``NetworkBehaviour`` split, architecture C3): each class
below holds node-wide NAT state and has methods named ``on_<event>(..., now)`` that return a
list of :class:`Command` dataclasses - ``Dial``, ``StartHolePunch``, ``CloseConnection``,
``Reserve``, ``CancelReservation``, ``ProbeReachability`` and ``Notify*`` - which only the node
executes. Each has ``get_timer()``/``handle_timer(now)`` for what must happen later. No I/O,
no clock, no global randomness: ``now`` comes in, and the one random choice (jitter) uses an
injected :class:`random.Random`-like object.

* :class:`HolePunchBehaviour` - on an inbound relayed connection (we are DCUtR's "B"): dial
  the peer's public addresses directly first if it has any, else punch; up to 3 attempts; on a
  direct connection, close the relayed ones; after giving up, leave the peer alone for a
  cooldown.
* :class:`AutoRelayBehaviour` - while private, keep ``desired_relays`` reservations: reserve,
  refresh at 3/4 of the remaining lifetime, back off (doubling) from relays that refuse or
  fail, replace relays that disconnect; drop everything once public. ``now`` is wall-clock
  Unix seconds here, because reservation expiry is UTC.
* :class:`ObservedAddrTracker` - an address that peers report seeing us at becomes
  *confirmed* only after ``threshold`` (4, as go) distinct observers - counted by IP group
  (IPv4 /16, IPv6 /56) so one host with many peer IDs cannot confirm an address alone.
* :class:`ReachabilityTracker` - AutoNAT verdicts from distinct servers; the node is PUBLIC or
  PRIVATE once more than 3 recent results agree (and outnumber the others); it schedules
  probes (boot delay 15 s, retry 90 s while unknown, refresh 15 min once known - go's
  defaults).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from glueberry.wire import pb_nat as pb
from glueberry.wire.identity import PeerId

# --- commands --------------------------------------------------------------------------------


class Command:
    """Base of behaviour outputs. Commands are not meant to be subclassed further."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Dial(Command):
    """Open a direct connection to ``peer`` on ``addrs``."""

    peer: PeerId
    addrs: tuple[bytes, ...]
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StartHolePunch(Command):
    """Open a ``/libp2p/dcutr`` stream on the relayed connection and run one attempt."""

    peer: PeerId
    attempt: int
    """1-based attempt number."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseConnection(Command):
    peer: PeerId
    connection_id: Hashable
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reserve(Command):
    """Run a RESERVE (new reservation or refresh) with ``relay``."""

    relay: PeerId
    refresh: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelReservation(Command):
    """Forget ``relay`` (stop advertising its addresses; the connection may close)."""

    relay: PeerId


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeReachability(Command):
    """Ask an AutoNAT server (the node picks one not asked recently) to dial us back."""


class Reachability(enum.Enum):
    UNKNOWN = "unknown"
    PUBLIC = "public"
    PRIVATE = "private"


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyReachability(Command):
    reachability: Reachability


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyObservedAddrs(Command):
    """The set of confirmed observed addresses changed (advertise these)."""

    addrs: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyRelayAddrs(Command):
    """Relay addresses to advertise (each relay's addresses; append ``/p2p-circuit``)."""

    addrs: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyHolePunchFailed(Command):
    peer: PeerId
    attempts: int


class Rng(Protocol):
    def random(self) -> float: ...


# --- hole punching ---------------------------------------------------------------------------


class _PunchState(enum.Enum):
    DIRECT_DIAL = "direct-dial"
    PUNCHING = "punching"


@dataclass(slots=True)
class _Punch:
    state: _PunchState
    attempt: int
    relayed: set[Hashable] = field(default_factory=set)


class HolePunchBehaviour:
    """When to hole punch and when to give up (DCUtR §"The protocol", go ``holepuncher.go``).

    Args:
        max_attempts: DCUtR attempts per relayed connection (spec: retry twice → 3).
        cooldown: seconds to leave a peer alone after giving up.
        allow_private: treat private addresses as dialable (labs, LANs).
    """

    def __init__(
        self, *, max_attempts: int = 3, cooldown: float = 600.0, allow_private: bool = False
    ) -> None:
        self.max_attempts = max_attempts
        self.cooldown = cooldown
        self.allow_private = allow_private
        self._active: dict[PeerId, _Punch] = {}
        self._relayed: dict[PeerId, set[Hashable]] = {}
        self._direct: set[PeerId] = set()
        self._cooldown_until: dict[PeerId, float] = {}

    def _usable(self, addrs: Sequence[bytes]) -> tuple[bytes, ...]:
        return tuple(a for a in addrs if pb.public_direct_addr(a, allow_private=self.allow_private))

    def in_progress(self, peer: PeerId) -> bool:
        return peer in self._active

    def on_relayed_connection(
        self,
        peer: PeerId,
        connection_id: Hashable,
        *,
        inbound: bool,
        remote_addrs: Sequence[bytes],
        now: float,
    ) -> list[Command]:
        """A relayed connection to ``peer`` is up. Only the inbound side (B) acts."""
        self._relayed.setdefault(peer, set()).add(connection_id)
        if peer in self._direct:
            return [CloseConnection(peer=peer, connection_id=connection_id, reason="have direct")]
        if not inbound or peer in self._active:
            return []
        if self._cooldown_until.get(peer, 0.0) > now:
            return []
        direct = self._usable(remote_addrs)
        if direct:
            self._active[peer] = _Punch(state=_PunchState.DIRECT_DIAL, attempt=0)
            return [Dial(peer=peer, addrs=direct, reason="dcutr-direct-first")]
        self._active[peer] = _Punch(state=_PunchState.PUNCHING, attempt=1)
        return [StartHolePunch(peer=peer, attempt=1)]

    def on_direct_dial_failed(self, peer: PeerId, now: float) -> list[Command]:
        """The plain direct dial failed: start punching."""
        p = self._active.get(peer)
        if p is None or p.state is not _PunchState.DIRECT_DIAL:
            return []
        p.state = _PunchState.PUNCHING
        p.attempt = 1
        return [StartHolePunch(peer=peer, attempt=1)]

    def on_attempt_failed(self, peer: PeerId, now: float) -> list[Command]:
        """One DCUtR attempt ended without a direct connection."""
        p = self._active.get(peer)
        if p is None or p.state is not _PunchState.PUNCHING:
            return []
        if p.attempt < self.max_attempts:
            p.attempt += 1
            return [StartHolePunch(peer=peer, attempt=p.attempt)]
        del self._active[peer]
        self._cooldown_until[peer] = now + self.cooldown
        return [NotifyHolePunchFailed(peer=peer, attempts=p.attempt)]

    def on_direct_connection(self, peer: PeerId, now: float) -> list[Command]:
        """A direct connection to ``peer`` exists: close its relayed connections."""
        self._direct.add(peer)
        self._active.pop(peer, None)
        self._cooldown_until.pop(peer, None)
        return [
            CloseConnection(peer=peer, connection_id=cid, reason="upgraded to direct")
            for cid in sorted(self._relayed.get(peer, ()), key=repr)
        ]

    def on_connection_closed(
        self, peer: PeerId, connection_id: Hashable, *, relayed: bool, now: float
    ) -> list[Command]:
        if relayed:
            conns = self._relayed.get(peer)
            if conns is not None:
                conns.discard(connection_id)
                if not conns:
                    del self._relayed[peer]
                    self._active.pop(peer, None)
        else:
            self._direct.discard(peer)
        return []

    def get_timer(self) -> float | None:
        return min(self._cooldown_until.values(), default=None)

    def handle_timer(self, now: float) -> list[Command]:
        for peer in [p for p, t in self._cooldown_until.items() if t <= now]:
            del self._cooldown_until[peer]
        return []


# --- autorelay -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Relay:
    expire: float | None = None
    refresh_at: float | None = None
    addrs: tuple[bytes, ...] = ()
    pending: bool = False
    failures: int = 0
    retry_at: float = 0.0


class AutoRelayBehaviour:
    """Keeps relay reservations while the node is not publicly reachable.

    ``now`` is wall-clock seconds since the Unix epoch (reservation expiry is UTC).

    Args:
        desired_relays: reservations to hold.
        min_refresh: never refresh sooner than this many seconds after a grant.
        backoff: first retry delay after a refusal/failure; doubles up to ``max_backoff``.
        rng: jitter source (``random.Random`` or similar; 10 % jitter on refresh times).
    """

    def __init__(
        self,
        *,
        desired_relays: int = 2,
        min_refresh: float = 30.0,
        backoff: float = 60.0,
        max_backoff: float = 3600.0,
        rng: Rng | None = None,
    ) -> None:
        self.desired = desired_relays
        self.min_refresh = min_refresh
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._rng = rng
        self._relays: dict[PeerId, _Relay] = {}
        self._private = False

    @property
    def reserved(self) -> tuple[PeerId, ...]:
        return tuple(p for p, r in self._relays.items() if r.expire is not None)

    def _active_count(self) -> int:
        return sum(1 for r in self._relays.values() if r.expire is not None or r.pending)

    def _fill(self, now: float) -> list[Command]:
        if not self._private:
            return []
        out: list[Command] = []
        for peer, r in self._relays.items():
            if self._active_count() >= self.desired:
                break
            if r.expire is None and not r.pending and r.retry_at <= now:
                r.pending = True
                out.append(Reserve(relay=peer, refresh=False))
        return out

    def _addrs(self) -> NotifyRelayAddrs:
        return NotifyRelayAddrs(
            addrs=tuple(a for r in self._relays.values() if r.expire is not None for a in r.addrs)
        )

    def on_relay_candidate(self, relay: PeerId, now: float) -> list[Command]:
        """A connected peer supports the HOP protocol."""
        self._relays.setdefault(relay, _Relay())
        return self._fill(now)

    def on_reachability(self, reachability: Reachability, now: float) -> list[Command]:
        was = self._private
        self._private = reachability is not Reachability.PUBLIC
        if self._private:
            return self._fill(now)
        if not was:
            return []
        out: list[Command] = []
        for peer, r in self._relays.items():
            if r.expire is not None or r.pending:
                out.append(CancelReservation(relay=peer))
            r.expire = r.refresh_at = None
            r.pending = False
            r.addrs = ()
        out.append(self._addrs())
        return out

    def on_reservation_accepted(
        self, relay: PeerId, *, expire: float, addrs: Sequence[bytes], now: float
    ) -> list[Command]:
        r = self._relays.setdefault(relay, _Relay())
        if not self._private:
            r.pending = False
            return [CancelReservation(relay=relay)]
        r.pending = False
        r.failures = 0
        r.expire = expire
        r.addrs = tuple(addrs)
        remaining = max(0.0, expire - now)
        delay = remaining * 0.75
        if self._rng is not None:
            delay *= 0.9 + 0.1 * self._rng.random()
        r.refresh_at = now + max(self.min_refresh, delay)
        if r.refresh_at >= expire:  # a very short reservation: refresh at half-life
            r.refresh_at = now + remaining / 2
        return [self._addrs()]

    def on_reservation_failed(self, relay: PeerId, now: float) -> list[Command]:
        """Refused, timed out, or the stream failed."""
        r = self._relays.get(relay)
        if r is None:
            return []
        had = r.expire is not None
        r.pending = False
        r.failures += 1
        r.retry_at = now + min(self.max_backoff, self.backoff * 2 ** (r.failures - 1))
        r.expire = r.refresh_at = None
        r.addrs = ()
        out: list[Command] = [self._addrs()] if had else []
        return out + self._fill(now)

    def on_relay_disconnected(self, relay: PeerId, now: float) -> list[Command]:
        r = self._relays.pop(relay, None)
        out: list[Command] = [self._addrs()] if r is not None and r.expire is not None else []
        return out + self._fill(now)

    def get_timer(self) -> float | None:
        times: list[float] = []
        for r in self._relays.values():
            if r.refresh_at is not None and not r.pending:
                times.append(r.refresh_at)
            if r.expire is not None:
                times.append(r.expire)
            elif self._private and not r.pending and r.retry_at:
                times.append(r.retry_at)
        return min(times, default=None)

    def handle_timer(self, now: float) -> list[Command]:
        out: list[Command] = []
        changed = False
        for peer, r in self._relays.items():
            if r.expire is not None and r.expire <= now:
                # The refresh never succeeded in time.
                r.expire = r.refresh_at = None
                r.addrs = ()
                r.pending = False
                r.retry_at = now
                changed = True
            elif r.refresh_at is not None and r.refresh_at <= now and not r.pending:
                r.pending = True
                r.refresh_at = None
                out.append(Reserve(relay=peer, refresh=True))
            elif r.expire is None and r.retry_at and r.retry_at <= now:
                r.retry_at = 0.0
        if changed:
            out.append(self._addrs())
        return out + self._fill(now)


# --- observed addresses ----------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _group(ip: IPAddress | None, peer: PeerId) -> Hashable:
    if ip is None:
        return peer
    if ip.version == 4:
        return ipaddress.ip_network(f"{ip}/16", strict=False)
    return ipaddress.ip_network(f"{ip}/56", strict=False)


class ObservedAddrTracker:
    """Confirms addresses that distinct observers report (identify ``observedAddr``).

    Args:
        threshold: distinct observer groups needed (go ``ActivationThresh`` = 4).
        ttl: seconds an observation stays valid without being repeated.
        max_addrs: distinct observed addresses remembered (oldest dropped first).
    """

    def __init__(
        self,
        *,
        threshold: int = 4,
        ttl: float = 1800.0,
        max_addrs: int = 64,
        allow_private: bool = False,
    ) -> None:
        self.threshold = threshold
        self.ttl = ttl
        self.max_addrs = max_addrs
        self.allow_private = allow_private
        self._seen: dict[bytes, dict[Hashable, float]] = {}
        self._confirmed: tuple[bytes, ...] = ()

    @property
    def confirmed(self) -> tuple[bytes, ...]:
        return self._confirmed

    def on_observed(
        self, observer: PeerId, observer_ip: IPAddress | None, observed: bytes, now: float
    ) -> list[Command]:
        """``observer`` (connecting from ``observer_ip``) saw us at ``observed``."""
        if not pb.public_direct_addr(observed, allow_private=self.allow_private):
            return []
        groups = self._seen.get(observed)
        if groups is None:
            if len(self._seen) >= self.max_addrs:
                oldest = min(self._seen, key=lambda a: max(self._seen[a].values(), default=0.0))
                del self._seen[oldest]
            groups = self._seen[observed] = {}
        groups[_group(observer_ip, observer)] = now
        return self._recompute(now)

    def _recompute(self, now: float) -> list[Command]:
        for addr in list(self._seen):
            g = {k: t for k, t in self._seen[addr].items() if t + self.ttl > now}
            if g:
                self._seen[addr] = g
            else:
                del self._seen[addr]
        confirmed = tuple(sorted(a for a, g in self._seen.items() if len(g) >= self.threshold))
        if confirmed == self._confirmed:
            return []
        self._confirmed = confirmed
        return [NotifyObservedAddrs(addrs=confirmed)]

    def get_timer(self) -> float | None:
        return min((t + self.ttl for g in self._seen.values() for t in g.values()), default=None)

    def handle_timer(self, now: float) -> list[Command]:
        return self._recompute(now)


# --- reachability ----------------------------------------------------------------------------


class ReachabilityTracker:
    """Decides PUBLIC/PRIVATE from AutoNAT results and schedules probes.

    The latest verdict of each server counts (one server cannot vote twice); the
    ``window`` most recent servers are considered. A state is adopted when more than
    ``agree`` (3) of them say so and they outnumber the opposite verdict; otherwise the
    current state stays (hysteresis).
    """

    def __init__(
        self,
        *,
        now: float,
        agree: int = 3,
        window: int = 8,
        boot_delay: float = 15.0,
        retry_interval: float = 90.0,
        refresh_interval: float = 900.0,
        result_ttl: float = 3600.0,
    ) -> None:
        self.agree = agree
        self.window = window
        self.retry_interval = retry_interval
        self.refresh_interval = refresh_interval
        self.result_ttl = result_ttl
        self.state = Reachability.UNKNOWN
        self._results: dict[PeerId, tuple[float, bool]] = {}
        self._next_probe = now + boot_delay

    def on_result(self, server: PeerId, reachable: bool | None, now: float) -> list[Command]:
        """Record a verdict (``None``: the server could not tell - ignored)."""
        if reachable is None:
            return []
        self._results.pop(server, None)
        self._results[server] = (now, reachable)
        return self._decide(now)

    def _decide(self, now: float) -> list[Command]:
        fresh = [(t, ok) for t, ok in self._results.values() if t + self.result_ttl > now][
            -self.window :
        ]
        yes = sum(1 for _, ok in fresh if ok)
        no = len(fresh) - yes
        new = self.state
        if yes > self.agree and yes > no:
            new = Reachability.PUBLIC
        elif no > self.agree and no > yes:
            new = Reachability.PRIVATE
        elif not fresh:
            new = Reachability.UNKNOWN
        if new is self.state:
            return []
        self.state = new
        return [NotifyReachability(reachability=new)]

    def get_timer(self) -> float | None:
        return self._next_probe

    def handle_timer(self, now: float) -> list[Command]:
        if now < self._next_probe:
            return []
        interval = (
            self.retry_interval if self.state is Reachability.UNKNOWN else self.refresh_interval
        )
        # Keep probing quickly until a verdict forms.
        if self.state is not Reachability.UNKNOWN and len(self._results) <= self.agree:
            interval = self.retry_interval
        self._next_probe = now + interval
        return [*self._decide(now), ProbeReachability()]


__all__ = [
    "AutoRelayBehaviour",
    "CancelReservation",
    "CloseConnection",
    "Command",
    "Dial",
    "HolePunchBehaviour",
    "NotifyHolePunchFailed",
    "NotifyObservedAddrs",
    "NotifyReachability",
    "NotifyRelayAddrs",
    "ObservedAddrTracker",
    "ProbeReachability",
    "Reachability",
    "ReachabilityTracker",
    "Reserve",
    "StartHolePunch",
]
