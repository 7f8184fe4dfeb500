"""The connection manager's policy: which connections to close when there are too many.

Behaviour matched: go-libp2p's basic connection manager (``p2p/net/connmgr``; libp2p-notes
§2.14). This module is the *policy* only: it holds protections and tags and, given the time
and the live connections, says which ones to close. It does no I/O and reads no clock;
:class:`~glueberry.net.host.Host` drives it (see "Driver" below). Not to be confused with
:class:`glueberry.peers.manager.ConnectionManager`, the Glueberry node's per-peer state
machines.

Theory of operation
-------------------
Watermarks. A trim is *due* when the number of live connections exceeds
``high_watermark``. A trim then closes connections until ``low_watermark`` of the connections
it is allowed to close remain. Two kinds of connections are never closed and are not counted
against the low watermark:

* connections of a *protected* peer (:meth:`ConnManager.protect`, go's ``Protect``): a peer
  stays protected while it holds at least one protection tag;
* connections of a peer first seen less than ``grace_period`` ago (the peer's oldest live
  connection is younger than that). This gives a new connection time to become useful (a
  handshake, a tag, a protection) before it can be judged.

So when nothing is protected or young, a trim goes down to exactly ``low_watermark``. When
many connections are protected or young, fewer are closed: a burst of new inbound
connections (all in their grace period) never evicts established peers to make room for
itself, and if fewer than ``low_watermark`` connections may be closed at all, nothing is
closed (go-libp2p's rule).

Order. Whole peers are closed (all of a peer's connections together), least valuable first:

1. lowest *value*: the sum of the peer's tags (:meth:`ConnManager.tag_peer`, go's
   ``TagPeer``);
2. idle before busy: a peer with no open stream goes before one with streams;
3. inbound before outbound: a peer that dialed us goes before one we dialed (we chose to
   dial it);
4. fewer open streams first;
5. most recently connected first: among otherwise equal peers, the long-standing ones have
   proven themselves and stay (and a burst of new peers goes before them once its grace
   period is over);
6. peer ID, so that the order is deterministic.

Tags of a peer are forgotten when its last connection closes (:meth:`ConnManager.forget`,
as go does); protections stay until removed.

Defaults and why. ``grace_period`` is 60 s, as in go-libp2p (Go glueberry passes 0, which lets
a flood of new inbound connections push out established peers). ``silence_period`` is 10 s,
go's: automatic trims run at most once per silence period, so a flood of connections costs
one trim, not one per connection. An explicit trim (``Host.trim_connections``) ignores the
silence period, like go's ``TrimOpenConns``, and trims whenever there are more than
``low_watermark`` connections.

Driver (in the host). On each new connection the host asks :meth:`ConnManager.trim_due`; if
so and :meth:`ConnManager.may_trim` (silence period), it calls :meth:`ConnManager.select` and
closes what it returns, gracefully (the muxer's close), and reports each as an ordinary
disconnect. While still above the high watermark it checks again at
:meth:`ConnManager.next_trim_at`. Every trim and every closed connection is counted here
(:attr:`ConnManager.trims`, :attr:`ConnManager.trimmed`) and logged by the host.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from glueberry.errors import ConfigError

__all__ = [
    "DEFAULT_GRACE_PERIOD",
    "DEFAULT_SILENCE_PERIOD",
    "ConnManager",
    "ConnManagerConfig",
    "ConnRecord",
]

#: Seconds a new peer cannot be trimmed (go-libp2p: 1 minute).
DEFAULT_GRACE_PERIOD: Final = 60.0
#: Least seconds between two automatic trims (go-libp2p: 10 s).
DEFAULT_SILENCE_PERIOD: Final = 10.0

C = TypeVar("C")
P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnManagerConfig:
    """Settings of the connection manager (times in seconds).

    The watermark defaults are go-libp2p's default host (160 / 192).
    """

    high_watermark: int = 192
    """Live connections above which a trim is due."""
    low_watermark: int = 160
    """Closable connections a trim leaves (protected and young connections come on top)."""
    grace_period: float = DEFAULT_GRACE_PERIOD
    """A peer first seen less than this long ago is not trimmed."""
    silence_period: float = DEFAULT_SILENCE_PERIOD
    """Least time between two automatic trims."""

    def __post_init__(self) -> None:
        if self.high_watermark < 1:
            raise ConfigError("ConnManagerConfig.high_watermark must be >= 1")
        if not 0 <= self.low_watermark < self.high_watermark:
            raise ConfigError(
                f"ConnManagerConfig.low_watermark ({self.low_watermark}) must be >= 0 and <"
                f" high_watermark ({self.high_watermark})"
            )
        if not self.grace_period >= 0:
            raise ConfigError("ConnManagerConfig.grace_period must be >= 0")
        if not self.silence_period > 0:
            raise ConfigError("ConnManagerConfig.silence_period must be > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnRecord(Generic[C, P]):
    """What the policy needs to know of one live connection."""

    conn: C
    """The driver's handle; returned as is by :meth:`ConnManager.select`."""
    peer: P
    """The remote peer."""
    opened_at: float
    """When the connection came up (the driver's clock)."""
    inbound: bool
    """The peer dialed us."""
    streams: int = 0
    """Streams open on it now."""


class _Candidate(Generic[C, P]):
    __slots__ = ("first_seen", "inbound", "peer", "records", "streams")

    def __init__(self, peer: P, records: list[ConnRecord[C, P]]) -> None:
        self.peer = peer
        self.records = records
        self.first_seen = min(r.opened_at for r in records)
        self.inbound = any(r.inbound for r in records)
        self.streams = sum(r.streams for r in records)


class ConnManager(Generic[P]):
    """Protections, tags and the trim decision (see the module docstring).

    Args:
        config: watermarks and periods; ``None``: protections and tags are kept but nothing
            is ever selected for closing (the manager is off).
    """

    def __init__(self, config: ConnManagerConfig | None = None) -> None:
        self.config = config
        self._protected: dict[P, set[str]] = {}
        self._tags: dict[P, dict[str, int]] = {}
        self._last_trim: float | None = None
        #: Trims that ran (automatic and explicit), whether or not they closed anything.
        self.trims = 0
        #: Connections selected for closing, over all trims.
        self.trimmed = 0

    @property
    def enabled(self) -> bool:
        return self.config is not None

    @property
    def last_trim(self) -> float | None:
        """When the last trim ran (the driver's clock), ``None`` if never."""
        return self._last_trim

    # --- protection ---------------------------------------------------------------------

    def protect(self, peer: P, tag: str) -> None:
        """Never trim ``peer`` while ``tag`` (or another protection tag) is on it."""
        self._protected.setdefault(peer, set()).add(tag)

    def unprotect(self, peer: P, tag: str) -> bool:
        """Remove one protection tag. Returns whether the peer is still protected."""
        tags = self._protected.get(peer)
        if tags is None:
            return False
        tags.discard(tag)
        if tags:
            return True
        del self._protected[peer]
        return False

    def is_protected(self, peer: P, tag: str | None = None) -> bool:
        """Whether ``peer`` is protected (by ``tag``, if given)."""
        tags = self._protected.get(peer)
        if tags is None:
            return False
        return tag is None or tag in tags

    # --- tags ---------------------------------------------------------------------------

    def tag_peer(self, peer: P, tag: str, value: int) -> None:
        """Set ``tag`` on ``peer`` to ``value``; the peer's value is the sum of its tags."""
        self._tags.setdefault(peer, {})[tag] = value

    def untag_peer(self, peer: P, tag: str) -> None:
        """Remove ``tag`` from ``peer`` (no-op if absent)."""
        tags = self._tags.get(peer)
        if tags is not None:
            tags.pop(tag, None)
            if not tags:
                del self._tags[peer]

    def upsert_tag(self, peer: P, tag: str, update: Callable[[int], int]) -> None:
        """Set ``tag`` to ``update(current value)`` (0 when absent)."""
        current = self._tags.get(peer, {}).get(tag, 0)
        self.tag_peer(peer, tag, update(current))

    def tags(self, peer: P) -> dict[str, int]:
        """A copy of the peer's tags."""
        return dict(self._tags.get(peer, {}))

    def value(self, peer: P) -> int:
        """The sum of the peer's tags (0 if none)."""
        return sum(self._tags.get(peer, {}).values())

    def forget(self, peer: P) -> None:
        """The peer's last connection closed: drop its tags (protections stay)."""
        self._tags.pop(peer, None)

    # --- the trim decision --------------------------------------------------------------

    def trim_due(self, live: int) -> bool:
        """Whether ``live`` connections exceed the high watermark (always False when off)."""
        return self.config is not None and live > self.config.high_watermark

    def may_trim(self, now: float) -> bool:
        """Whether an automatic trim may run now (the silence period since the last one)."""
        if self.config is None:
            return False
        return self._last_trim is None or now - self._last_trim >= self.config.silence_period

    def next_trim_at(self) -> float | None:
        """Earliest time of the next automatic trim (``None``: at once, or off)."""
        if self.config is None or self._last_trim is None:
            return None
        return self._last_trim + self.config.silence_period

    def select(self, now: float, conns: Sequence[ConnRecord[C, P]]) -> list[ConnRecord[C, P]]:
        """Run a trim: the connections to close now, least valuable peers first.

        Counts the trim (:attr:`trims`, :attr:`trimmed`) and starts a new silence period.
        ``conns`` are the live connections not already being closed. Returns ``[]`` when
        the manager is off, there are at most ``low_watermark`` connections, or fewer than
        ``low_watermark`` of them may be closed (protected or in their grace period).
        """
        cfg = self.config
        if cfg is None:
            return []
        self._last_trim = now
        self.trims += 1
        if len(conns) <= cfg.low_watermark:
            return []
        by_peer: dict[P, list[ConnRecord[C, P]]] = {}
        for rec in conns:
            by_peer.setdefault(rec.peer, []).append(rec)
        grace_start = now - cfg.grace_period
        candidates: list[_Candidate[C, P]] = []
        closable = 0
        for peer, records in by_peer.items():
            if peer in self._protected:
                continue
            cand = _Candidate(peer, records)
            if cand.first_seen > grace_start:
                continue  # still in its grace period
            candidates.append(cand)
            closable += len(records)
        to_close = closable - cfg.low_watermark
        if to_close <= 0:
            return []
        candidates.sort(key=self._order)
        out: list[ConnRecord[C, P]] = []
        for cand in candidates:
            if to_close <= 0:
                break
            out.extend(cand.records)
            to_close -= len(cand.records)
        self.trimmed += len(out)
        return out

    def _order(self, cand: _Candidate[C, P]) -> tuple[int, bool, bool, int, float, str]:
        return (
            self.value(cand.peer),
            cand.streams > 0,
            not cand.inbound,
            cand.streams,
            -cand.first_seen,
            str(cand.peer),
        )

    def protected_peers(self) -> Iterable[P]:
        """Peers holding at least one protection tag."""
        return list(self._protected)
