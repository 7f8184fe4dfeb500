"""The per-peer connection lifecycle: states, triggers, one transition table, one ``apply``.

Reference: ``glueberry-go-v1.md`` §3 (Go ``pkg/connection``), including the bugs of §3.9 that
this table deliberately does not reproduce. Diagram: ``docs/state-machine.md`` (generated
from :data:`TRANSITIONS` by ``scripts/make_state_diagram.py``).

Theory of operation
-------------------
Every change of a peer's :class:`ConnectionState` happens in this file, through
:meth:`PeerStateMachine.apply`. The caller (the Node) reports a :class:`Trigger` — a fact
that just happened — together with ``now``; ``apply`` looks ``(state, trigger)`` up in
:data:`TRANSITIONS` and either moves to the listed state and *returns* the
:class:`PeerStateChanged` event describing that move, or raises
:class:`~glueberry.errors.InvalidTransition` and leaves every attribute unchanged. The event
is produced by the same call that changes the state, so the reported state and the real state
cannot disagree (the Go library emits events separately and ignores transition errors).

Some rows are self-loops: the trigger is legal and expected in that state but changes
nothing (for example the connection closing while we are already in cooldown, or a
dial that loses the race to an inbound handshake). Their event has ``changed == False``;
the Node publishes a ``ConnectionEvent`` only for events that changed the state.

Timers are sans-I/O as well: entering ``CONNECTED`` arms the handshake deadline and entering
``COOLDOWN`` arms the cooldown deadline (when the machine was given those durations).
:meth:`PeerStateMachine.get_timer` returns the deadline and
:meth:`PeerStateMachine.handle_timer` applies ``HANDSHAKE_TIMED_OUT`` or ``COOLDOWN_EXPIRED``
once it has passed. Reconnection timing lives in :mod:`glueberry.peers.reconnect`; a failed
attempt is the self-loop ``(RECONNECTING, DIAL_FAILED)``.

Differences from the Go library (all deliberate):

* a successful reconnect (``RECONNECTING`` + ``DIAL_SUCCEEDED``) reaches ``CONNECTED``, so the
  handshake can be finalized (Go stays ``Reconnecting`` forever, §3.9.1);
* a lost connection (``CONNECTION_LOST``) takes ``CONNECTED`` / ``ESTABLISHED`` to
  ``DISCONNECTED`` (Go never notices, §3.9.2);
* an inbound handshake from a restarted peer while ``ESTABLISHED``, ``RECONNECTING`` or
  ``COOLDOWN`` starts a new handshake in ``CONNECTED`` (Go ignores it, §3.9.3);
* an inbound handshake marks the peer inbound only when it starts a new session, never while
  our own dial is in progress or connected (§3.9.4);
* ``BLACKLISTED`` disconnects from every state, including ``RECONNECTING`` and ``COOLDOWN``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from glueberry.errors import HandshakeTimeout, InvalidTransition
from glueberry.wire.identity import PeerId

__all__ = [
    "TRANSITIONS",
    "ConnectionState",
    "PeerStateChanged",
    "PeerStateMachine",
    "Trigger",
]


class ConnectionState(enum.IntEnum):
    """A peer's connection state. Values are the Go library's (``StateDisconnected`` = 0 …)."""

    #: No connection (also: an unknown peer).
    DISCONNECTED = 0
    #: Our dial is in progress.
    CONNECTING = 1
    #: A connection is up and the application handshake is pending (handshake timer runs).
    CONNECTED = 2
    #: ``finalize_handshake`` done: encrypted streams are in use.
    ESTABLISHED = 3
    #: Waiting between reconnection attempts (or running one).
    RECONNECTING = 4
    #: A handshake timed out; the peer is left alone until the cooldown ends.
    COOLDOWN = 5

    @property
    def label(self) -> str:
        """The Go ``String()`` form: ``"Disconnected"``, ``"Connecting"`` …"""
        return self.name.capitalize()

    @property
    def is_active(self) -> bool:
        """Connecting, connected or established (Go ``IsActive``)."""
        return self in (
            ConnectionState.CONNECTING,
            ConnectionState.CONNECTED,
            ConnectionState.ESTABLISHED,
        )

    @property
    def is_terminal(self) -> bool:
        """Disconnected or in cooldown (Go ``IsTerminal``)."""
        return self in (ConnectionState.DISCONNECTED, ConnectionState.COOLDOWN)


class Trigger(enum.Enum):
    """Facts the Node reports to a peer's state machine."""

    #: We started dialling the peer (``connect()``, auto-connect, or a user connect that
    #: pre-empts a reconnection wait).
    DIAL_STARTED = "dial_started"
    #: A dial (first or reconnection attempt) produced a connection.
    DIAL_SUCCEEDED = "dial_succeeded"
    #: A dial (first or reconnection attempt) failed.
    DIAL_FAILED = "dial_failed"
    #: The remote opened the handshake stream (it is starting a handshake with us).
    INBOUND_HANDSHAKE = "inbound_handshake"
    #: ``finalize_handshake`` succeeded locally.
    HANDSHAKE_COMPLETED = "handshake_completed"
    #: The handshake deadline passed while still ``CONNECTED``.
    HANDSHAKE_TIMED_OUT = "handshake_timed_out"
    #: The cooldown after a failed handshake ended.
    COOLDOWN_EXPIRED = "cooldown_expired"
    #: The reconnection loop was started for this peer.
    RECONNECT_SCHEDULED = "reconnect_scheduled"
    #: The reconnection loop gave up (``reconnect_max_attempts`` reached).
    RECONNECT_EXHAUSTED = "reconnect_exhausted"
    #: The reconnection loop was cancelled (``cancel_reconnection``).
    RECONNECT_CANCELLED = "reconnect_cancelled"
    #: The last connection to the peer closed (remote close, reset, network failure).
    CONNECTION_LOST = "connection_lost"
    #: ``disconnect()`` (or ``remove_peer``) was called locally.
    DISCONNECT_REQUESTED = "disconnect_requested"
    #: The peer was blacklisted.
    BLACKLISTED = "blacklisted"


S = ConnectionState
T = Trigger

_ROWS: Final[dict[ConnectionState, dict[Trigger, ConnectionState]]] = {
    S.DISCONNECTED: {
        T.DIAL_STARTED: S.CONNECTING,
        T.INBOUND_HANDSHAKE: S.CONNECTED,
        T.RECONNECT_SCHEDULED: S.RECONNECTING,
        # Already where these lead; Go emits Disconnected for a redundant disconnect().
        T.DISCONNECT_REQUESTED: S.DISCONNECTED,
        T.CONNECTION_LOST: S.DISCONNECTED,
        T.BLACKLISTED: S.DISCONNECTED,
    },
    S.CONNECTING: {
        T.DIAL_SUCCEEDED: S.CONNECTED,
        T.DIAL_FAILED: S.DISCONNECTED,
        # The remote reached us first; our dial will reuse or lose to that connection.
        T.INBOUND_HANDSHAKE: S.CONNECTED,
        T.DISCONNECT_REQUESTED: S.DISCONNECTED,
        T.BLACKLISTED: S.DISCONNECTED,
        # The outcome of the dial in progress decides.
        T.CONNECTION_LOST: S.CONNECTING,
    },
    S.CONNECTED: {
        T.HANDSHAKE_COMPLETED: S.ESTABLISHED,
        T.HANDSHAKE_TIMED_OUT: S.COOLDOWN,
        T.CONNECTION_LOST: S.DISCONNECTED,
        T.DISCONNECT_REQUESTED: S.DISCONNECTED,
        T.BLACKLISTED: S.DISCONNECTED,
        # The handshake is already under way; a second handshake stream changes nothing.
        T.INBOUND_HANDSHAKE: S.CONNECTED,
        # A dial that completes after an inbound handshake won the race.
        T.DIAL_SUCCEEDED: S.CONNECTED,
        T.DIAL_FAILED: S.CONNECTED,
    },
    S.ESTABLISHED: {
        T.CONNECTION_LOST: S.DISCONNECTED,
        T.DISCONNECT_REQUESTED: S.DISCONNECTED,
        T.BLACKLISTED: S.DISCONNECTED,
        # The remote restarted and handshakes again: a new session begins.
        T.INBOUND_HANDSHAKE: S.CONNECTED,
        T.DIAL_SUCCEEDED: S.ESTABLISHED,
        T.DIAL_FAILED: S.ESTABLISHED,
    },
    S.RECONNECTING: {
        T.DIAL_STARTED: S.CONNECTING,
        T.DIAL_SUCCEEDED: S.CONNECTED,
        # A failed attempt: the loop waits for the next one (no event).
        T.DIAL_FAILED: S.RECONNECTING,
        T.INBOUND_HANDSHAKE: S.CONNECTED,
        T.RECONNECT_EXHAUSTED: S.DISCONNECTED,
        T.RECONNECT_CANCELLED: S.DISCONNECTED,
        T.DISCONNECT_REQUESTED: S.DISCONNECTED,
        T.BLACKLISTED: S.DISCONNECTED,
        T.CONNECTION_LOST: S.RECONNECTING,
    },
    S.COOLDOWN: {
        T.COOLDOWN_EXPIRED: S.DISCONNECTED,
        # A restarted peer handshakes again: accept it rather than tear it down later.
        T.INBOUND_HANDSHAKE: S.CONNECTED,
        T.DISCONNECT_REQUESTED: S.DISCONNECTED,
        T.BLACKLISTED: S.DISCONNECTED,
        # We closed the connection when entering cooldown; its close is expected.
        T.CONNECTION_LOST: S.COOLDOWN,
    },
}

#: Every legal ``(state, trigger) → next state``. Anything absent is illegal.
TRANSITIONS: Final[Mapping[tuple[ConnectionState, Trigger], ConnectionState]] = MappingProxyType(
    {(state, trigger): nxt for state, row in _ROWS.items() for trigger, nxt in row.items()}
)

del S, T


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerStateChanged:
    """A peer's state machine applied a trigger. Not meant to be subclassed."""

    peer_id: PeerId
    """The peer concerned."""
    old_state: ConnectionState
    """The state before the trigger."""
    new_state: ConnectionState
    """The state after the trigger (equal to ``old_state`` for a self-loop)."""
    trigger: Trigger
    """What happened."""
    error: BaseException | None
    """The cause, for failures (dial error, handshake timeout, lost connection)."""
    timestamp: float
    """``now`` as passed to ``apply`` (the Node's clock)."""

    @property
    def changed(self) -> bool:
        """False for self-loops, which the Node does not publish."""
        return self.old_state is not self.new_state


class PeerStateMachine:
    """The lifecycle of one peer.

    Args:
        peer_id: the peer.
        handshake_timeout: seconds allowed in ``CONNECTED`` before ``HANDSHAKE_TIMED_OUT``
            (``None``: no deadline is armed).
        cooldown: seconds spent in ``COOLDOWN`` before ``COOLDOWN_EXPIRED`` (``None``: no
            deadline is armed).
        now: the time the machine is created (``since`` starts there).

    Call order: any sequence of :meth:`apply` calls; :meth:`get_timer` after each one to
    (re-)arm a timer, :meth:`handle_timer` when it fires.
    """

    __slots__ = (
        "_cooldown",
        "_handshake_timeout",
        "deadline",
        "is_outbound",
        "last_error",
        "peer_id",
        "since",
        "state",
    )

    def __init__(
        self,
        peer_id: PeerId,
        *,
        handshake_timeout: float | None = None,
        cooldown: float | None = None,
        now: float = 0.0,
    ) -> None:
        #: The peer.
        self.peer_id = peer_id
        #: The current state.
        self.state = ConnectionState.DISCONNECTED
        #: When the current state was entered (self-loops do not reset it).
        self.since = now
        #: True when the current (or last) connection was our dial.
        self.is_outbound = False
        #: The error of the last failure trigger, if any.
        self.last_error: BaseException | None = None
        #: The handshake or cooldown deadline, or ``None``.
        self.deadline: float | None = None
        self._handshake_timeout = handshake_timeout
        self._cooldown = cooldown

    def can_apply(self, trigger: Trigger) -> bool:
        """Whether ``trigger`` is legal in the current state."""
        return (self.state, trigger) in TRANSITIONS

    def apply(
        self, trigger: Trigger, now: float, error: BaseException | None = None
    ) -> PeerStateChanged:
        """Apply ``trigger``; return the event describing the move.

        Raises:
            InvalidTransition: ``trigger`` is illegal in the current state. Nothing changes.
        """
        old = self.state
        new = TRANSITIONS.get((old, trigger))
        if new is None:
            raise InvalidTransition(
                f"{trigger.value} is not allowed in state {old.label}", peer_id=self.peer_id
            )
        if error is not None:
            self.last_error = error
        if new is not old:
            self.state = new
            self.since = now
            if new is ConnectionState.CONNECTED:
                self.deadline = (
                    None if self._handshake_timeout is None else now + self._handshake_timeout
                )
            elif new is ConnectionState.COOLDOWN:
                self.deadline = None if self._cooldown is None else now + self._cooldown
            else:
                self.deadline = None
        # Direction of the session: set by the trigger that started it.
        if trigger is Trigger.DIAL_STARTED:
            self.is_outbound = True
        elif trigger is Trigger.INBOUND_HANDSHAKE and old not in (
            ConnectionState.CONNECTING,
            ConnectionState.CONNECTED,
        ):
            self.is_outbound = False
        return PeerStateChanged(
            peer_id=self.peer_id,
            old_state=old,
            new_state=new,
            trigger=trigger,
            error=error,
            timestamp=now,
        )

    def get_timer(self) -> float | None:
        """The handshake deadline (in ``CONNECTED``), cooldown end (in ``COOLDOWN``), or None."""
        return self.deadline

    def handle_timer(self, now: float) -> PeerStateChanged | None:
        """Fire the armed deadline if it has passed; otherwise return ``None``.

        In ``CONNECTED`` this applies ``HANDSHAKE_TIMED_OUT`` (error:
        :class:`~glueberry.errors.HandshakeTimeout`); in ``COOLDOWN``, ``COOLDOWN_EXPIRED``.
        """
        if self.deadline is None or now < self.deadline:
            return None
        if self.state is ConnectionState.CONNECTED:
            return self.apply(
                Trigger.HANDSHAKE_TIMED_OUT,
                now,
                HandshakeTimeout("handshake timeout", peer_id=self.peer_id),
            )
        if self.state is ConnectionState.COOLDOWN:
            return self.apply(Trigger.COOLDOWN_EXPIRED, now)
        self.deadline = None  # pragma: no cover - deadlines exist only in those two states
        return None  # pragma: no cover

    def cooldown_remaining(self, now: float) -> float:
        """Seconds left in ``COOLDOWN`` (0 in any other state)."""
        if self.state is not ConnectionState.COOLDOWN or self.deadline is None:
            return 0.0
        return max(0.0, self.deadline - now)

    def __repr__(self) -> str:
        return f"PeerStateMachine({self.peer_id}, {self.state.label})"
