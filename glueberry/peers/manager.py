"""The connection manager: one state machine per peer, driven by real connection events.

Reference: ``glueberry-go-v1.md`` §3 (Go ``pkg/connection``: states, handshake timer,
cooldown, reconnection loop, gater, deduplication) and the fixes of §9.2 (items 1-4, 8, 11-13);
architecture C3, C5, C10, C12.

Theory of operation
-------------------
Every state change goes through :meth:`PeerStateMachine.apply` (``glueberry.peers.state``);
this module only reports *facts* to it — a dial started, succeeded or failed, the remote
opened a handshake stream, the last connection to a peer closed, the application finalized
the handshake, a deadline passed — and carries out what follows from the new state:

======================  ==========================================================================
entering                side effects
======================  ==========================================================================
``CONNECTED``           the handshake deadline is armed (``handshake_timeout``, on the injected
                        clock); statistics start counting the connection
``ESTABLISHED``         the deadline is cancelled; handshake duration/result metrics
``COOLDOWN``            every connection to the peer is closed; the cooldown deadline is armed
``DISCONNECTED``        the peer's streams are reset and its stream key is dropped; after a lost
                        connection that *we* had dialled, or at the end of a cooldown, the
                        reconnection loop starts (peers with known addresses only)
======================  ==========================================================================

A :class:`~glueberry.events.ConnectionEvent` is published only for transitions that change
the state (``PeerStateChanged.changed``), by the same call that changed it.

*Remote disconnects* are seen through the host's connection notifications: when the last
connection to a peer closes, ``CONNECTION_LOST`` is applied (Go never notices, §9.2.1).

*Reconnection* (:meth:`_reconnect_loop`) waits ``BackoffPolicy`` delays with jitter on the
injected clock, then dials. Success reaches ``CONNECTED`` (Go stays ``Reconnecting``, §3.9.1),
so the handshake can be redone and finalized. ``cancel_reconnection`` cancels the loop task —
including a dial in flight — and publishes ``DISCONNECTED`` (Go does neither, §9.2.13).

*Simultaneous dials* need no special case: the host keeps both connections and both peers
prefer the one dialled by the lower peer ID for new streams, so neither dial fails (Go's
gater refuses the inbound one and both dials can fail, §3.8). A dial that completes after the
peer's own handshake already made us ``CONNECTED`` is a no-op.

*Blacklisting* works for unknown peers, refuses dials and secured connections through
:class:`BlacklistGater` (hooked into the host), stops reconnection, and closes the peer's
connections in every state including ``RECONNECTING`` and ``COOLDOWN`` (§9.2.11).

Tasks (reconnection loops, connection closes) run in the host's task group (C10), so closing
the host ends them. Timers are the clock's, cancelled when the state changes and at close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from glueberry.errors import (
    ConnectError,
    ConnectionLost,
    GlueberryError,
    HandshakeError,
    InvalidTransition,
    PeerBlacklisted,
    PeerNotFound,
)
from glueberry.events import ConnectionEvent
from glueberry.peers.channels import spawn_in
from glueberry.peers.metrics import Metrics, NopMetrics
from glueberry.peers.reconnect import BackoffPolicy, ReconnectSchedule
from glueberry.peers.state import (
    ConnectionState,
    PeerStateChanged,
    PeerStateMachine,
    Trigger,
)
from glueberry.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from glueberry.clock import Clock, TimerHandle
    from glueberry.net.host import Host
    from glueberry.peers.addressbook import AddressBook
    from glueberry.peers.channels import ChannelManager
    from glueberry.peers.metrics import Tracer
    from glueberry.peers.stats import StatsRecorder
    from glueberry.transport.base import MuxedConnection
    from glueberry.wire.identity import PeerId

__all__ = ["BlacklistGater", "ConnectionManager"]

S = ConnectionState


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class BlacklistGater:
    """A host connection gater enforcing the address book's blacklist.

    Dials to blacklisted peers are refused before any packet is sent; inbound connections
    from them are refused right after the security handshake authenticated the peer (the
    earliest point its identity is known). Implements
    :class:`glueberry.net.gater.ConnectionGater`.
    """

    def __init__(self, book: AddressBook) -> None:
        self._book = book

    def allow_dial(self, peer: PeerId | None, addr: Multiaddr) -> bool:
        return peer is None or not self._book.is_blacklisted(peer)

    def allow_accept(self, addr: Multiaddr) -> bool:
        return True

    def allow_secured(self, direction: str, peer: PeerId) -> bool:
        return not self._book.is_blacklisted(peer)


class ConnectionManager:
    """Per-peer connection lifecycle of one node (see the module docstring).

    Args:
        host: the running host (dials, connection notifications, task group).
        book: the address book (addresses to dial, blacklist, ``last_seen``).
        channels: the named streams (reset and forgotten on ``DISCONNECTED``).
        publish: delivers a :class:`ConnectionEvent` to the application.
        clock: time source for deadlines and backoff.
        policy: reconnection backoff.
        handshake_timeout: seconds in ``CONNECTED`` before ``COOLDOWN``.
        cooldown: seconds in ``COOLDOWN``.
        rng: uniform ``[0, 1)`` source for the backoff jitter.
        connection_error: why a connection ended, when the node knows better than the
            connection itself (a relay limit); ``None`` to use the connection's error.
    """

    def __init__(
        self,
        host: Host,
        book: AddressBook,
        channels: ChannelManager,
        *,
        publish: Callable[[ConnectionEvent], None],
        clock: Clock,
        policy: BackoffPolicy,
        handshake_timeout: float,
        cooldown: float,
        stats: StatsRecorder[PeerId],
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
        logger: logging.Logger | None = None,
        rng: Callable[[], float] = random.random,
        connection_error: Callable[[MuxedConnection], BaseException | None] | None = None,
    ) -> None:
        self.host = host
        self._connection_error = connection_error
        self.book = book
        self.channels = channels
        self._publish = publish
        self._clock = clock
        self._policy = policy
        self._handshake_timeout = handshake_timeout
        self._cooldown = cooldown
        self._stats = stats
        self._metrics: Metrics = metrics if metrics is not None else NopMetrics()
        self._tracer = tracer
        self._log = logger if logger is not None else logging.getLogger(__name__)
        self._rng = rng
        self._machines: dict[PeerId, PeerStateMachine] = {}
        self._timers: dict[PeerId, TimerHandle] = {}
        self._reconnects: dict[PeerId, asyncio.Task[None]] = {}
        self._dials: dict[PeerId, asyncio.Future[None]] = {}
        self._hs_started: dict[PeerId, float] = {}
        self._counts: dict[ConnectionState, int] = dict.fromkeys(ConnectionState, 0)
        self._closed = False
        self._remove_listener = host.add_connection_listener(
            self._on_connected, self._on_disconnected
        )

    # --- queries -----------------------------------------------------------------------

    def state(self, peer: PeerId) -> ConnectionState:
        """The peer's state; ``DISCONNECTED`` for unknown peers."""
        m = self._machines.get(peer)
        return m.state if m is not None else S.DISCONNECTED

    def is_outbound(self, peer: PeerId) -> bool:
        """Whether the current (or last) session with ``peer`` was our dial.

        Raises:
            PeerNotFound: nothing is known about a connection with ``peer``.
        """
        m = self._machines.get(peer)
        if m is None:
            raise PeerNotFound(f"peer {peer} is not connected", peer_id=peer)
        return m.is_outbound

    def machine(self, peer: PeerId) -> PeerStateMachine | None:
        """The peer's state machine, if it has one (read-only use)."""
        return self._machines.get(peer)

    def peers(self) -> list[PeerId]:
        """Peers with a state machine."""
        return list(self._machines)

    def counts(self) -> dict[ConnectionState, int]:
        """Peers per state."""
        return dict(self._counts)

    def is_reconnecting(self, peer: PeerId) -> bool:
        return peer in self._reconnects

    # --- the one place that changes state --------------------------------------------------

    def _machine(self, peer: PeerId) -> PeerStateMachine:
        m = self._machines.get(peer)
        if m is None:
            m = PeerStateMachine(
                peer,
                handshake_timeout=self._handshake_timeout,
                cooldown=self._cooldown,
                now=self._clock.now(),
            )
            self._machines[peer] = m
            self._counts[S.DISCONNECTED] += 1
        return m

    def _apply(
        self, peer: PeerId, trigger: Trigger, error: BaseException | None = None
    ) -> PeerStateChanged:
        m = self._machine(peer)
        ev = m.apply(trigger, self._clock.now(), error)
        if ev.changed:
            self._on_changed(m, ev)
        return ev

    def _on_changed(self, m: PeerStateMachine, ev: PeerStateChanged) -> None:
        peer = m.peer_id
        old, new = ev.old_state, ev.new_state
        metrics = self._metrics
        self._counts[old] -= 1
        self._counts[new] += 1
        metrics.peers_in_state(old.name.lower(), self._counts[old])
        metrics.peers_in_state(new.name.lower(), self._counts[new])
        self._rearm(m)
        wall = self._clock.wall()
        if new is S.CONNECTED:
            self._hs_started[peer] = self._clock.now()
            self._stats.connection_started(peer, wall, outbound=m.is_outbound)
            if self.book.has_peer(peer):
                with contextlib.suppress(GlueberryError):
                    self.book.update_last_seen(peer)
        elif new is S.ESTABLISHED:
            self._stats.connection_established(peer, True)
            started = self._hs_started.pop(peer, None)
            if started is not None:
                metrics.handshake_duration(self._clock.now() - started)
            metrics.handshake_result("success")
        elif new is S.COOLDOWN:
            self._hs_started.pop(peer, None)
            metrics.handshake_result("timeout")
            self._stats.connection_failed(peer, wall)
            self._log.info("handshake with %s timed out: cooldown", peer)
            self._spawn(self._close_connections(peer))
        elif new is S.DISCONNECTED:
            self._hs_started.pop(peer, None)
            self.channels.forget(peer)
            if old in (S.CONNECTED, S.ESTABLISHED, S.COOLDOWN):
                self._stats.connection_ended(peer, wall)
        self._publish(ConnectionEvent(peer_id=peer, state=new, error=ev.error, timestamp=wall))
        metrics.event_emitted(new.name.lower())

    def _rearm(self, m: PeerStateMachine) -> None:
        peer = m.peer_id
        handle = self._timers.pop(peer, None)
        if handle is not None:
            handle.cancel()
        deadline = m.get_timer()
        if deadline is not None and not self._closed:
            self._timers[peer] = self._clock.call_at(deadline, lambda: self._on_timer(peer))

    def _on_timer(self, peer: PeerId) -> None:
        self._timers.pop(peer, None)
        m = self._machines.get(peer)
        if m is None or self._closed:
            return
        ev = m.handle_timer(self._clock.now())
        if ev is None:
            self._rearm(m)  # fired a little early: wait for the rest
            return
        if ev.changed:
            self._on_changed(m, ev)
        if ev.new_state is S.DISCONNECTED:  # the cooldown ended
            if self._can_redial(peer):
                self._start_reconnect(peer)
            self._gc(peer)

    def _gc(self, peer: PeerId) -> None:
        """Forget the machine of a disconnected peer nobody tracks (bounded memory)."""
        m = self._machines.get(peer)
        if (
            m is not None
            and m.state is S.DISCONNECTED
            and peer not in self._reconnects
            and peer not in self._dials
            and not self.book.has_peer(peer)
        ):
            del self._machines[peer]
            self._counts[S.DISCONNECTED] -= 1
            handle = self._timers.pop(peer, None)
            if handle is not None:
                handle.cancel()

    # --- helpers -----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            spawn_in(self.host, coro, name="glueberry-manager")
        except GlueberryError:
            pass  # the host is closing: it closes everything itself

    async def _close_connections(self, peer: PeerId) -> None:
        for conn in self.host.connections(peer):
            with contextlib.suppress(GlueberryError, OSError):
                await conn.close()

    def _dial_addrs(self, peer: PeerId, addrs: Iterable[Multiaddr | str] | None) -> list[Multiaddr]:
        if addrs is not None:
            out = [Multiaddr(a) for a in addrs]
            if out:
                return out
        if self.book.has_peer(peer):
            out = self.book.get_peer(peer).addrs()
            if out:
                return out
        return self.host.peerstore.addrs(peer)

    def _can_redial(self, peer: PeerId) -> bool:
        if self._closed or self.book.is_blacklisted(peer) or not self.book.has_peer(peer):
            return False
        return bool(self.book.get_peer(peer).addrs())

    async def _dial(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> MuxedConnection:
        if self._tracer is not None:
            with self._tracer.connect(peer):
                conn = await self.host.connect(peer, addrs)
        else:
            conn = await self.host.connect(peer, addrs)
        if conn.is_closed or self.host.connection_for(peer) is None:
            raise ConnectionLost(f"connection to {peer} closed at once", peer_id=peer)
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionLost("the node is stopping")

    # --- connection notifications ----------------------------------------------------------

    def _on_connected(self, conn: MuxedConnection) -> None:
        self._metrics.connection_opened(conn.direction)

    def _on_disconnected(self, conn: MuxedConnection) -> None:
        self._metrics.connection_closed(conn.direction)
        if self._closed:
            return
        peer = conn.remote_peer
        if self.host.connection_for(peer) is not None:
            return  # another connection to the peer remains
        m = self._machines.get(peer)
        if m is None:
            return
        error = self._connection_error(conn) if self._connection_error is not None else None
        if error is None:
            error = getattr(conn, "error", None)
        if not isinstance(error, BaseException):
            error = ConnectionLost(f"connection to {peer} closed", peer_id=peer)
        ev = self._apply(peer, Trigger.CONNECTION_LOST, error)
        if ev.changed:
            self._log.info("connection to %s lost: %s", peer, error)
            if m.is_outbound and self._can_redial(peer):
                self._start_reconnect(peer)
        self._gc(peer)

    def inbound_handshake(self, peer: PeerId) -> bool:
        """The remote opened the handshake stream (the stream is already stored).

        Returns False when the stream must be refused (blacklisted peer, node stopping).
        """
        if self._closed or self.book.is_blacklisted(peer):
            return False
        m = self._machine(peer)
        if m.state is S.RECONNECTING:
            self._stop_reconnect(peer)
        self._apply(peer, Trigger.INBOUND_HANDSHAKE)
        return True

    def handshake_opened(self, peer: PeerId) -> None:
        """We opened the handshake stream on a connection the peer dialled, before it said
        anything: we start the session, as its listener would on an inbound stream. (A Go
        listener never does this; between Python nodes either side may speak first.)"""
        if self._closed:
            return
        m = self._machines.get(peer)
        if (m is None or m.state is S.DISCONNECTED) and self.host.connection_for(peer) is not None:
            self._apply(peer, Trigger.INBOUND_HANDSHAKE)

    # --- operations --------------------------------------------------------------------------

    async def connect(self, peer: PeerId, addrs: Iterable[Multiaddr | str] | None = None) -> None:
        """Connect to ``peer`` (see ``Node.connect``)."""
        self._check_open()
        if self.book.is_blacklisted(peer):
            raise PeerBlacklisted(f"peer {peer} is blacklisted", peer_id=peer)
        if peer == self.host.peer_id:
            raise ConnectError("cannot connect to ourselves", peer_id=peer)
        m = self._machine(peer)
        st = m.state
        if st in (S.CONNECTED, S.ESTABLISHED):
            if self.host.connection_for(peer) is not None:
                return
            # The connection is closing; its notification will move us to Disconnected.
            raise ConnectionLost(
                f"the connection to {peer} is closing; connect again", peer_id=peer
            )
        if st is S.COOLDOWN:
            left = m.cooldown_remaining(self._clock.now())
            raise ConnectError(
                f"peer {peer} is in cooldown for {left:.1f} s after a failed handshake",
                peer_id=peer,
            )
        pending = self._dials.get(peer)
        if st is S.CONNECTING and pending is not None:
            await asyncio.shield(pending)
            return
        dial_addrs = self._dial_addrs(peer, addrs)
        if not dial_addrs and self.host.connection_for(peer) is None:
            self._gc(peer)
            raise PeerNotFound(f"no address known for peer {peer}", peer_id=peer)
        if st is S.RECONNECTING:
            self._stop_reconnect(peer)
        self._apply(peer, Trigger.DIAL_STARTED)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._dials[peer] = fut
        try:
            await self._dial(peer, dial_addrs)
        except asyncio.CancelledError:
            err = ConnectError("connect cancelled", peer_id=peer)
            fut.set_exception(err)
            if m.state is S.CONNECTING:
                self._apply(peer, Trigger.DIAL_FAILED, err)
            raise
        except (GlueberryError, OSError) as exc:
            self._metrics.connection_attempt("failure")
            self._stats.connection_failed(peer, self._clock.wall())
            fut.set_exception(exc)
            if m.state is S.CONNECTING:
                self._apply(peer, Trigger.DIAL_FAILED, exc)
                if not isinstance(exc, PeerBlacklisted) and self._can_redial(peer):
                    self._start_reconnect(peer)
            raise
        else:
            self._metrics.connection_attempt("success")
            if m.state is S.CONNECTING:
                self._apply(peer, Trigger.DIAL_SUCCEEDED)
            elif m.state is S.DISCONNECTED:  # disconnect() or blacklisting meanwhile
                err2 = ConnectionLost(f"disconnected from {peer} while connecting", peer_id=peer)
                fut.set_exception(err2)
                await self._close_connections(peer)
                raise err2 from None
            fut.set_result(None)
        finally:
            if self._dials.get(peer) is fut:
                del self._dials[peer]
            self._gc(peer)

    async def disconnect(self, peer: PeerId) -> None:
        """Disconnect from ``peer`` (see ``Node.disconnect``). Idempotent."""
        self._stop_reconnect(peer)
        if peer in self._machines:
            self._apply(peer, Trigger.DISCONNECT_REQUESTED)
        self.channels.forget(peer)
        await self._close_connections(peer)
        self._gc(peer)

    def drop(self, peer: PeerId, error: BaseException | None = None) -> None:
        """Disconnect without waiting (used by ``remove_peer`` and error policies)."""
        self._stop_reconnect(peer)
        if peer in self._machines:
            self._apply(peer, Trigger.DISCONNECT_REQUESTED, error)
        self.channels.forget(peer)
        self._spawn(self._close_connections(peer))
        self._gc(peer)

    def blacklisted(self, peer: PeerId) -> None:
        """The peer was just blacklisted in the book: disconnect it in any state."""
        self._stop_reconnect(peer)
        if peer in self._machines:
            self._apply(
                peer, Trigger.BLACKLISTED, PeerBlacklisted("peer blacklisted", peer_id=peer)
            )
        self.channels.forget(peer)
        self._spawn(self._close_connections(peer))
        self._gc(peer)

    def cancel_reconnection(self, peer: PeerId) -> bool:
        """Stop the reconnection loop (and a dial it has in flight). Returns whether one ran."""
        if peer not in self._reconnects:
            return False
        self._stop_reconnect(peer)
        m = self._machines.get(peer)
        if m is not None and m.state is S.RECONNECTING:
            self._apply(peer, Trigger.RECONNECT_CANCELLED)
        self._gc(peer)
        return True

    async def finalize(self, peer: PeerId) -> None:
        """``finalize_handshake``: CONNECTED -> ESTABLISHED, then half-close the handshake
        stream.

        Raises:
            InvalidTransition: the peer is not ``CONNECTED``.
            HandshakeError: ``prepare_streams`` was not called for the peer.
        """
        m = self._machines.get(peer)
        if m is None or m.state is not S.CONNECTED:
            state = m.state.label if m is not None else "Disconnected"
            raise InvalidTransition(
                f"cannot finalize the handshake with {peer}: state is {state}, not Connected",
                peer_id=peer,
            )
        if not self.channels.has_key(peer):
            raise HandshakeError(f"prepare_streams was not called for peer {peer}", peer_id=peer)
        self._apply(peer, Trigger.HANDSHAKE_COMPLETED)
        await self.channels.close_handshake(peer)

    # --- reconnection ------------------------------------------------------------------------

    def _start_reconnect(self, peer: PeerId) -> None:
        if self._closed or peer in self._reconnects:
            return
        m = self._machine(peer)
        if not m.can_apply(Trigger.RECONNECT_SCHEDULED):
            return
        try:
            task = spawn_in(self.host, self._reconnect_loop(peer), name="glueberry-reconnect")
        except GlueberryError:
            return
        self._reconnects[peer] = task
        self._apply(peer, Trigger.RECONNECT_SCHEDULED)

    def _stop_reconnect(self, peer: PeerId) -> None:
        task = self._reconnects.pop(peer, None)
        if task is not None:
            task.cancel()

    async def _reconnect_loop(self, peer: PeerId) -> None:
        schedule = ReconnectSchedule(self._policy, self._rng)
        task = asyncio.current_task()
        try:
            while True:
                at = schedule.next_attempt_at(self._clock.now())
                if at is None:
                    self._reconnects.pop(peer, None)
                    self._metrics.reconnect_attempt("failure")
                    self._apply(
                        peer,
                        Trigger.RECONNECT_EXHAUSTED,
                        ConnectError("max reconnection attempts reached", peer_id=peer),
                    )
                    self._gc(peer)
                    return
                await self._clock.sleep_until(at)
                m = self._machines.get(peer)
                if m is None or m.state is not S.RECONNECTING:
                    return  # someone else took over (inbound handshake, connect, ...)
                if self.book.is_blacklisted(peer):
                    self._reconnects.pop(peer, None)
                    self._apply(peer, Trigger.RECONNECT_CANCELLED)
                    return
                try:
                    await self._dial(peer, self._dial_addrs(peer, None))
                except (GlueberryError, OSError) as exc:
                    self._metrics.reconnect_attempt("failure")
                    self._log.debug("reconnection to %s failed: %r", peer, exc)
                    if m.state is S.RECONNECTING:
                        self._apply(peer, Trigger.DIAL_FAILED, exc)
                    continue
                self._metrics.reconnect_attempt("success")
                self._reconnects.pop(peer, None)
                if m.state is S.RECONNECTING:
                    self._apply(peer, Trigger.DIAL_SUCCEEDED)
                return
        finally:
            if self._reconnects.get(peer) is task:
                del self._reconnects[peer]

    # --- shutdown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel every timer and reconnection loop; stop reacting to connection changes."""
        self._closed = True
        self._remove_listener()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in self._reconnects.values():
            task.cancel()
        self._reconnects.clear()
