"""Application-level events and bounded, visibly lossy event subscriptions.

Reference: ``glueberry-go-v1.md`` §3.3 (``ConnectionEvent``), §4.6 (``IncomingMessage``),
§4.7 (``Events()``, ``SubscribeEvents``, ``FilteredEvents``, ``EventFilter``), and
architecture conventions C4 and C11.

Theory of operation
-------------------
The Node publishes :class:`ConnectionEvent` values through an :class:`EventBroadcaster`,
which hands a copy of each event to every :class:`EventSubscription` whose filter matches.
A subscription is a bounded buffer with an explicit overflow policy, chosen per
subscription:

* ``"drop_oldest"`` (default): a full buffer discards its oldest event, counts it, and the
  consumer receives an :class:`EventsDropped` marker (carrying how many were lost) exactly
  where the gap is — before the oldest event still buffered. Nothing is lost silently (the
  Go library drops without telling the consumer). State can always be re-read with
  ``node.connection_state(peer)``.
* ``"block"``: a full buffer makes :meth:`EventBroadcaster.publish` wait, so a slow consumer
  slows the publisher down; :meth:`EventBroadcaster.publish_nowait` raises
  :class:`~glueberry.errors.Backpressure` instead of delivering to anyone.

A subscription is used as ``async with sub:`` (unsubscribes on exit) and ``async for event in
sub:``; iteration ends once the subscription is closed and its buffer drained.
``unsubscribe()`` is synchronous and idempotent.

:class:`IncomingMessage` is a ``NamedTuple`` rather than a dataclass on purpose: one is built
per received message, and a tuple is the cheapest immutable record (performance.md, item 5).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Literal, NamedTuple, TypeVar

from glueberry.errors import Backpressure, ErrorCode, NodeStateError, StreamClosed
from glueberry.peers.state import ConnectionState
from glueberry.peers.stats import ConnectionType
from glueberry.wire.identity import PeerId
from glueberry.wire.multiaddr import Multiaddr

__all__ = [
    "ConnectionChange",
    "ConnectionEvent",
    "ConnectionType",
    "EventBroadcaster",
    "EventFilter",
    "EventSubscription",
    "EventsDropped",
    "IncomingMessage",
    "OverflowPolicy",
    "PeerConnectionChanged",
    "RelayLimitReached",
]

OverflowPolicy = Literal["block", "drop_oldest"]
_POLICIES = ("block", "drop_oldest")

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionEvent:
    """A peer's connection state changed. Not meant to be subclassed."""

    peer_id: PeerId
    """The peer."""
    state: ConnectionState
    """The new state."""
    error: BaseException | None = None
    """Why, for failures (dial error, handshake timeout, lost connection), else ``None``."""
    timestamp: float
    """When it happened, in seconds since the Unix epoch."""

    def is_error(self) -> bool:
        """True when the event carries an error (Go ``IsError``)."""
        return self.error is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerConnectionChanged:
    """How a connected peer is reached changed (``Node.connection_changes()``).

    Published when a session begins (``previous`` is ``None``) and whenever the connection
    the node uses for the peer changes kind: relayed -> hole-punched after a DCUtR punch,
    relayed -> direct after a plain direct dial, back to relayed if the direct connection
    is lost while a relayed one remains. The peer's state does not change.
    """

    peer_id: PeerId
    connection_type: ConnectionType
    previous: ConnectionType | None
    """The kind before, ``None`` for the first connection of a session."""
    address: Multiaddr | None
    """The remote address of the connection now used (a ``/p2p-circuit`` address when
    relayed), when known."""
    timestamp: float
    """Seconds since the Unix epoch."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayLimitReached:
    """A circuit relay limit ended a relayed connection to a peer (``Node.connection_changes()``).

    Relays cap each circuit (go-libp2p: 2 min and 128 KiB per direction). When a cap ends
    the connection, messages in flight on it may be lost; this event says so. If it was the
    peer's only connection the peer also goes ``Disconnected`` (its ``error`` is a
    :class:`~glueberry.errors.ConnectionLost` caused by
    :class:`~glueberry.errors.ResourceLimitExceeded`), and sends that were under way raise
    ``ResourceLimitExceeded``.
    """

    peer_id: PeerId
    relay: PeerId
    reason: Literal["data", "duration"]
    sent: int
    """Bytes we had sent over the circuit (with security and muxer overhead)."""
    received: int
    data_limit: int | None
    """The relay's data cap per direction in bytes (``None``: none announced)."""
    duration_limit: int | None
    """The relay's duration cap in seconds (``None``: none announced)."""
    timestamp: float


#: What ``Node.connection_changes()`` delivers.
ConnectionChange = PeerConnectionChanged | RelayLimitReached


class IncomingMessage(NamedTuple):
    """A message received from a peer (handshake messages have ``stream_name == "handshake"``)."""

    peer_id: PeerId
    """The sender."""
    stream_name: str
    """The stream it arrived on."""
    data: bytes
    """The decrypted application bytes."""
    timestamp: float
    """When it was read, in seconds since the Unix epoch."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsDropped:
    """Marker delivered by a ``drop_oldest`` subscription where events were discarded."""

    count: int
    """How many events were discarded at this point."""


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class EventFilter:
    """Which connection events a subscription wants. ``None`` or empty means "any".

    Example: ``EventFilter(peer_ids=[p], states=[ConnectionState.ESTABLISHED])``.
    """

    peer_ids: frozenset[PeerId] | None
    """Only events of these peers."""
    states: frozenset[ConnectionState] | None
    """Only events into these states."""

    def __init__(
        self,
        *,
        peer_ids: Iterable[PeerId] | None = None,
        states: Iterable[ConnectionState] | None = None,
    ) -> None:
        object.__setattr__(self, "peer_ids", frozenset(peer_ids) if peer_ids else None)
        object.__setattr__(self, "states", frozenset(states) if states else None)

    def matches(self, event: ConnectionEvent) -> bool:
        """Whether ``event`` passes this filter."""
        return (self.peer_ids is None or event.peer_id in self.peer_ids) and (
            self.states is None or event.state in self.states
        )

    def __call__(self, event: ConnectionEvent) -> bool:
        return self.matches(event)


def _wake_first(waiters: collections.deque[asyncio.Future[None]]) -> None:
    while waiters:
        w = waiters.popleft()
        if not w.done():
            w.set_result(None)
            return


def _wake_all(waiters: collections.deque[asyncio.Future[None]]) -> None:
    while waiters:
        w = waiters.popleft()
        if not w.done():
            w.set_result(None)


class EventSubscription(Generic[T]):
    """A bounded buffer of events for one consumer.

    Args:
        capacity: events buffered before the overflow policy applies (>= 1).
        overflow: ``"drop_oldest"`` or ``"block"`` (see the module docstring).
        filter: only events for which it returns true are offered.
        on_drop: called with the number of events discarded (the ``event_dropped`` metric).
    """

    def __init__(
        self,
        capacity: int,
        overflow: OverflowPolicy = "drop_oldest",
        *,
        filter: Callable[[T], bool] | None = None,
        on_drop: Callable[[int], None] | None = None,
        on_close: Callable[[EventSubscription[T]], None] | None = None,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"subscription capacity must be an int >= 1, got {capacity!r}")
        if overflow not in _POLICIES:
            raise ValueError(f'overflow must be "block" or "drop_oldest", got {overflow!r}')
        self.capacity = capacity
        self.overflow: OverflowPolicy = overflow
        self.filter = filter
        self._on_drop = on_drop
        self._on_close = on_close
        self._buf: collections.deque[T] = collections.deque()
        self._getters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._putters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._gap = 0
        #: Total events discarded by ``drop_oldest``.
        self.dropped = 0
        self._closed = False

    # --- producer side ---

    def wants(self, event: T) -> bool:
        """Whether the filter accepts ``event``."""
        return self.filter is None or self.filter(event)

    @property
    def full(self) -> bool:
        return len(self._buf) >= self.capacity

    def offer(self, event: T) -> bool:
        """Deliver without waiting. Returns False only for a full ``block`` subscription.

        Events offered to a closed subscription are discarded (returns True).
        """
        if self._closed:
            return True
        if len(self._buf) >= self.capacity:
            if self.overflow == "block":
                return False
            self._buf.popleft()
            self._gap += 1
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop(1)
        self._buf.append(event)
        _wake_first(self._getters)
        return True

    async def put(self, event: T) -> None:
        """Deliver, waiting for room under the ``block`` policy (never waits otherwise)."""
        while not self.offer(event):
            fut = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if not fut.cancelled():  # we were woken: pass the turn on
                    _wake_first(self._putters)
                raise

    # --- consumer side ---

    def get_nowait(self) -> T | EventsDropped:
        """The next event (or a drop marker).

        Raises:
            asyncio.QueueEmpty: nothing buffered.
            StreamClosed: closed and drained.
        """
        if self._gap:
            gap, self._gap = self._gap, 0
            return EventsDropped(count=gap)
        if self._buf:
            item = self._buf.popleft()
            _wake_first(self._putters)
            return item
        if self._closed:
            raise StreamClosed("event subscription is closed")
        raise asyncio.QueueEmpty

    async def get(self) -> T | EventsDropped:
        """Wait for the next event (or drop marker).

        Raises:
            StreamClosed: the subscription is closed and drained.
        """
        while True:
            try:
                return self.get_nowait()
            except asyncio.QueueEmpty:
                pass
            fut = asyncio.get_running_loop().create_future()
            self._getters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if not fut.cancelled():
                    _wake_first(self._getters)
                raise

    def __aiter__(self) -> EventSubscription[T]:
        return self

    async def __anext__(self) -> T | EventsDropped:
        try:
            return await self.get()
        except StreamClosed:
            raise StopAsyncIteration from None

    def __len__(self) -> int:
        """Events buffered (the drop marker not included)."""
        return len(self._buf)

    # --- lifecycle ---

    @property
    def closed(self) -> bool:
        return self._closed

    def unsubscribe(self) -> None:
        """Stop receiving events. Idempotent; buffered events can still be read."""
        if self._closed:
            return
        self._closed = True
        _wake_all(self._getters)
        _wake_all(self._putters)
        if self._on_close is not None:
            self._on_close(self)

    close = unsubscribe

    async def __aenter__(self) -> EventSubscription[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.unsubscribe()

    def __repr__(self) -> str:
        return (
            f"EventSubscription(capacity={self.capacity}, overflow={self.overflow!r},"
            f" buffered={len(self._buf)}, dropped={self.dropped}, closed={self._closed})"
        )


class EventBroadcaster(Generic[T]):
    """Fans events out to subscriptions.

    Args:
        capacity: default capacity of new subscriptions (Go ``EventBufferSize``).
        overflow: default overflow policy of new subscriptions.
        on_drop: called with the number of events any subscription discarded.
    """

    def __init__(
        self,
        *,
        capacity: int = 100,
        overflow: OverflowPolicy = "drop_oldest",
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.capacity = capacity
        self.overflow: OverflowPolicy = overflow
        self._on_drop = on_drop
        self._subs: dict[EventSubscription[T], None] = {}  # ordered set
        self._closed = False

    def subscribe(
        self,
        filter: Callable[[T], bool] | None = None,
        *,
        capacity: int | None = None,
        overflow: OverflowPolicy | None = None,
    ) -> EventSubscription[T]:
        """A new subscription receiving every later event that passes ``filter``.

        Raises:
            NodeStateError: the broadcaster is closed (the node stopped).
        """
        if self._closed:
            raise NodeStateError(
                "cannot subscribe: the node is stopped", code=ErrorCode.NODE_STOPPED
            )
        sub: EventSubscription[T] = EventSubscription(
            self.capacity if capacity is None else capacity,
            self.overflow if overflow is None else overflow,
            filter=filter,
            on_drop=self._on_drop,
            on_close=self._forget,
        )
        self._subs[sub] = None
        return sub

    def _forget(self, sub: EventSubscription[T]) -> None:
        self._subs.pop(sub, None)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def publish_nowait(self, event: T) -> None:
        """Deliver to every matching subscription without waiting.

        Raises:
            Backpressure: a matching ``block`` subscription is full; the event was delivered
                to no one (use :meth:`publish` to wait instead).
        """
        targets = [s for s in self._subs if s.wants(event)]
        for s in targets:
            if s.overflow == "block" and s.full:
                raise Backpressure("an event subscription is full", retriable=True)
        for s in targets:
            s.offer(event)

    async def publish(self, event: T) -> None:
        """Deliver to every matching subscription, waiting for room in ``block`` ones."""
        for s in [s for s in self._subs if s.wants(event)]:
            await s.put(event)

    def close(self) -> None:
        """Close every subscription (their consumers drain and finish); refuse new ones."""
        self._closed = True
        for s in list(self._subs):
            s.unsubscribe()

    @property
    def closed(self) -> bool:
        return self._closed
