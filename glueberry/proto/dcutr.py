"""DCUtR (Direct Connection Upgrade through Relay): sans-I/O CONNECT/SYNC machines.

Spec: https://github.com/libp2p/specs/blob/master/relay/DCUtR.md (r1, 2021-11-20)

Protocol ``/libp2p/dcutr``; uvarint-delimited proto2 ``HolePunch{type, ObsAddrs}``, at most
4096 bytes per message.

Theory of operation. A dialed B through a relay. B - the *initiator* here, because it runs
the stream - sends CONNECT with its observed addresses and notes the time; A - the
*responder* - answers CONNECT with its own; B measures the round trip, sends SYNC, and after
RTT/2 dials A; A dials B as soon as SYNC arrives. Both dials then meet in the NATs. For TCP
the simultaneous open gives A the client role and B the server role for everything above TCP
(security and muxer), whichever socket "won"; for QUIC A dials and B sprays UDP packets.

* :class:`DcutrInitiator` (B): :class:`ConnectReceived` (with the RTT) when A's CONNECT
  arrives and SYNC has been queued; :class:`PunchTimeReached` when the RTT/2 timer fires.
* :class:`DcutrResponder` (A): :class:`ConnectReceived` when B's CONNECT arrives (its own
  CONNECT is queued in reply); :class:`PunchTimeReached` on SYNC.
* :class:`HolePunchFailed` ends either machine without a dial: the peer offered no usable
  address, or the stream timed out.

One machine is one attempt. The spec's "retry twice" (three attempts) lives in
:class:`glueberry.nat.policy.HolePunchBehaviour`, which starts a fresh stream per attempt.

Address hygiene: remote ``ObsAddrs`` are parsed; relayed (``/p2p-circuit``), malformed,
loopback, link-local, unspecified and - unless ``allow_private`` - private addresses are
dropped, duplicates removed, and at most :data:`MAX_OBS_ADDRS` kept. A message over 4096
bytes or with more than 64 entries is a protocol error. SYNC before CONNECT, a second
CONNECT, or end of stream before the exchange finished are protocol errors too.

``now`` is any monotonic clock in seconds (the RTT is measured with it).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.wire import pb_nat as pb

DCUTR_PROTOCOL: Final = "/libp2p/dcutr"
#: go: stream timeout 1 min.
DEFAULT_STREAM_TIMEOUT: Final = 60.0
#: Usable remote addresses kept per attempt.
MAX_OBS_ADDRS: Final = 16


class DcutrEvent:
    """Base of DCUtR events. Events are not meant to be subclassed further."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectReceived(DcutrEvent):
    """The peer's CONNECT arrived (and our reply - SYNC or CONNECT - is queued)."""

    remote_addrs: tuple[bytes, ...]
    """The peer's usable addresses (filtered, deduplicated, capped)."""
    rtt: float | None
    """Measured round trip (initiator only)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PunchTimeReached(DcutrEvent):
    """Dial ``remote_addrs`` now; the exchange is over."""

    remote_addrs: tuple[bytes, ...]
    rtt: float | None
    tcp_role: Literal["client", "server"]
    """Role above TCP after a simultaneous open: the responder (A) is the client."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HolePunchFailed(DcutrEvent):
    """The attempt ended without a dial."""

    reason: Literal["no-usable-addresses", "timeout"]


class _State(enum.Enum):
    AWAIT_CONNECT = "await-connect"
    AWAIT_SYNC = "await-sync"  # responder only
    AWAIT_TIMER = "await-timer"  # initiator only: SYNC sent, waiting RTT/2
    DONE = "done"
    ERROR = "error"


def usable_addrs(addrs: Sequence[bytes], *, allow_private: bool) -> tuple[bytes, ...]:
    """Filter, deduplicate and cap a peer's observed addresses."""
    out: list[bytes] = []
    for a in addrs:
        if a not in out and pb.public_direct_addr(a, allow_private=allow_private):
            out.append(a)
            if len(out) >= MAX_OBS_ADDRS:
                break
    return tuple(out)


class _Machine:
    def __init__(
        self, local_addrs: Sequence[bytes], now: float, timeout: float, allow_private: bool
    ) -> None:
        if timeout <= 0:
            raise LocalProtocolError("timeout must be positive", protocol=DCUTR_PROTOCOL)
        if not local_addrs:
            raise LocalProtocolError(
                "hole punching needs at least one local address", protocol=DCUTR_PROTOCOL
            )
        self._local = tuple(local_addrs[:MAX_OBS_ADDRS])
        self._allow_private = allow_private
        self._reader = pb.DelimitedReader(pb.MAX_DCUTR_MESSAGE, DCUTR_PROTOCOL)
        self._out = bytearray()
        self._events: deque[DcutrEvent] = deque()
        self._state = _State.AWAIT_CONNECT
        self._started = now
        self._deadline: float | None = now + timeout
        self._remote: tuple[bytes, ...] = ()

    @property
    def finished(self) -> bool:
        return self._state in (_State.DONE, _State.ERROR)

    def _is(self, state: _State) -> bool:
        return self._state is state

    def _send(self, typ: pb.HolePunchType, addrs: tuple[bytes, ...] = ()) -> None:
        self._out += pb.frame(pb.encode_holepunch(pb.HolePunch(type=typ, obs_addrs=addrs)))

    def _fail(self, msg: str) -> RemoteProtocolError:
        self._state = _State.ERROR
        self._deadline = None
        return RemoteProtocolError(msg, protocol=DCUTR_PROTOCOL)

    def _end(self, event: DcutrEvent) -> None:
        self._events.append(event)
        self._state = _State.DONE
        self._deadline = None

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the stream; ``b""`` is end of stream.

        Raises:
            RemoteProtocolError: malformed/oversize messages, SYNC before CONNECT, unexpected
                messages, or end of stream mid-exchange.
            LocalProtocolError: called after the machine failed.
        """
        if self._state is _State.ERROR:
            raise LocalProtocolError("machine is in an error state", protocol=DCUTR_PROTOCOL)
        if not data:
            if self._state in (_State.AWAIT_CONNECT, _State.AWAIT_SYNC):
                raise self._fail("stream closed before the exchange finished")
            return
        if self._state in (_State.DONE, _State.AWAIT_TIMER):
            raise self._fail("unexpected data after the exchange")
        try:
            self._reader.feed(data)
            while not self.finished and not self._is(_State.AWAIT_TIMER):
                body = self._reader.next_message()
                if body is None:
                    break
                self._on_message(pb.decode_holepunch(body), now)
        except RemoteProtocolError:
            self._state = _State.ERROR
            self._deadline = None
            raise
        if len(self._reader) and (self.finished or self._is(_State.AWAIT_TIMER)):
            raise self._fail("unexpected data after the exchange")

    def _on_message(self, msg: pb.HolePunch, now: float) -> None:
        raise NotImplementedError

    def next_event(self) -> DcutrEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[DcutrEvent]:
        while self._events:
            yield self._events.popleft()

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        return self._deadline

    def handle_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        self._on_deadline(now)

    def _on_deadline(self, now: float) -> None:
        self._end(HolePunchFailed(reason="timeout"))


class DcutrInitiator(_Machine):
    """B's side: sends CONNECT, measures the RTT, sends SYNC, fires RTT/2 later.

    Call order: construct (CONNECT queued) → ``data_to_send`` → ``receive_data*`` →
    :class:`ConnectReceived` (SYNC queued: send it at once) → ``handle_timer`` at
    ``get_timer()`` → :class:`PunchTimeReached`.
    """

    def __init__(
        self,
        *,
        local_addrs: Sequence[bytes],
        now: float,
        timeout: float = DEFAULT_STREAM_TIMEOUT,
        allow_private: bool = False,
    ) -> None:
        super().__init__(local_addrs, now, timeout, allow_private)
        self._sent_at = now
        self._rtt = 0.0
        self._send(pb.HolePunchType.CONNECT, self._local)

    def _on_message(self, msg: pb.HolePunch, now: float) -> None:
        if msg.type is not pb.HolePunchType.CONNECT:
            raise self._fail("expected CONNECT, got SYNC")
        self._rtt = max(0.0, now - self._sent_at)
        self._remote = usable_addrs(msg.obs_addrs, allow_private=self._allow_private)
        if not self._remote:
            self._end(HolePunchFailed(reason="no-usable-addresses"))
            return
        self._send(pb.HolePunchType.SYNC)
        self._events.append(ConnectReceived(remote_addrs=self._remote, rtt=self._rtt))
        self._state = _State.AWAIT_TIMER
        self._deadline = now + self._rtt / 2

    def _on_deadline(self, now: float) -> None:
        if self._state is _State.AWAIT_TIMER:
            self._end(PunchTimeReached(remote_addrs=self._remote, rtt=self._rtt, tcp_role="server"))
        else:
            super()._on_deadline(now)


class DcutrResponder(_Machine):
    """A's side: answers CONNECT with its own addresses, fires on SYNC."""

    def __init__(
        self,
        *,
        local_addrs: Sequence[bytes],
        now: float,
        timeout: float = DEFAULT_STREAM_TIMEOUT,
        allow_private: bool = False,
    ) -> None:
        super().__init__(local_addrs, now, timeout, allow_private)

    def _on_message(self, msg: pb.HolePunch, now: float) -> None:
        if self._state is _State.AWAIT_CONNECT:
            if msg.type is not pb.HolePunchType.CONNECT:
                raise self._fail("SYNC before CONNECT")
            self._remote = usable_addrs(msg.obs_addrs, allow_private=self._allow_private)
            if not self._remote:
                self._end(HolePunchFailed(reason="no-usable-addresses"))
                return
            self._send(pb.HolePunchType.CONNECT, self._local)
            self._events.append(ConnectReceived(remote_addrs=self._remote, rtt=None))
            self._state = _State.AWAIT_SYNC
            return
        if msg.type is not pb.HolePunchType.SYNC:
            raise self._fail("second CONNECT instead of SYNC")
        self._end(PunchTimeReached(remote_addrs=self._remote, rtt=None, tcp_role="client"))


__all__ = [
    "DCUTR_PROTOCOL",
    "DEFAULT_STREAM_TIMEOUT",
    "MAX_OBS_ADDRS",
    "ConnectReceived",
    "DcutrEvent",
    "DcutrInitiator",
    "DcutrResponder",
    "HolePunchFailed",
    "PunchTimeReached",
    "usable_addrs",
]
