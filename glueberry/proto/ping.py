"""Ping (``/ipfs/ping/1.0.0``): sans-I/O dialer and responder machines.

Spec: https://github.com/libp2p/specs/blob/master/ping/ping.md (r0, 2022-11-04)

Theory of operation. The dialer writes 32 random bytes; the responder echoes every 32 bytes it
receives, on the same stream, until end of stream. The dialer measures the round trip from the
moment its bytes were queued to the moment the last echoed byte arrived, using the ``now``
values the driver passes in, and checks the echo byte for byte. It may repeat on the same
stream; it half-closes after the last ping.

* :class:`PingDialer` - one outstanding ping at a time; a wrong echo is a
  :class:`~glueberry.errors.RemoteProtocolError`; a missing echo past the deadline yields
  :class:`PingTimedOut` and ends the machine (go times out after 10 s).
* :class:`PingResponder` - echoes whole 32-byte payloads only. A partial payload followed by
  end of stream (B-22, "31 bytes then EOF") is dropped, as go does.
* :class:`PingStreamLimiter` - "the listener SHOULD accept at most 2 ping streams per peer":
  the driver asks it before serving an inbound stream and resets the stream when it says no.

Entropy (the payload) and time come in as arguments, so the machines are deterministic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Final

from glueberry.errors import LocalProtocolError, RemoteProtocolError

PING_PROTOCOL: Final = "/ipfs/ping/1.0.0"
#: Every ping payload is exactly this long.
PING_SIZE: Final = 32
#: go-libp2p's ping timeout.
DEFAULT_PING_TIMEOUT: Final = 10.0
#: The spec's inbound bound per peer.
MAX_INBOUND_PING_STREAMS: Final = 2


class PingEvent:
    """Base of ping events. Events are not meant to be subclassed further."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PongReceived(PingEvent):
    """The echo of the outstanding ping arrived intact."""

    rtt: float
    """Seconds between :meth:`PingDialer.send_ping` and the last byte of the echo."""
    payload: bytes
    """The 32 bytes that went round."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PingTimedOut(PingEvent):
    """No complete echo arrived before the deadline; the machine is finished."""

    waited: float
    """Seconds waited."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PingStreamEnded(PingEvent):
    """The dialer closed its side; the responder is done (the driver closes the stream)."""

    echoed: int
    """How many pings were echoed on this stream."""
    discarded: int
    """Bytes of an incomplete final payload that were dropped."""


class PingDialer:
    """Outbound side of one ping stream.

    Call order: ``(send_ping, data_to_send, receive_data*, next_event)*``; ``get_timer`` is the
    deadline of the outstanding ping, if any.
    """

    def __init__(self, *, timeout: float = DEFAULT_PING_TIMEOUT) -> None:
        if timeout <= 0:
            raise LocalProtocolError("ping timeout must be positive", protocol=PING_PROTOCOL)
        self._timeout = timeout
        self._out = bytearray()
        self._in = bytearray()
        self._events: deque[PingEvent] = deque()
        self._payload: bytes | None = None
        self._sent_at = 0.0
        self._finished = False

    @property
    def outstanding(self) -> bool:
        """True while a ping waits for its echo."""
        return self._payload is not None

    @property
    def finished(self) -> bool:
        """True after EOF, a timeout or an error: no further pings possible."""
        return self._finished

    def send_ping(self, payload: bytes, now: float) -> None:
        """Queue one ping carrying ``payload`` (32 bytes the caller drew at random).

        Raises:
            LocalProtocolError: a ping is already outstanding, the machine is finished, or the
                payload is not 32 bytes.
        """
        if self._finished:
            raise LocalProtocolError("ping stream is finished", protocol=PING_PROTOCOL)
        if self._payload is not None:
            raise LocalProtocolError("a ping is already outstanding", protocol=PING_PROTOCOL)
        if len(payload) != PING_SIZE:
            raise LocalProtocolError("ping payload must be 32 bytes", protocol=PING_PROTOCOL)
        self._payload = bytes(payload)
        self._sent_at = now
        self._out += payload

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed echoed bytes; ``b""`` means the responder closed its side.

        Raises:
            RemoteProtocolError: bytes nobody asked for, an echo that differs from the payload,
                or end of stream while a ping is outstanding.
        """
        if self._finished:
            if data:
                raise self._fail("data after the ping stream finished")
            return
        if not data:
            self._finished = True
            if self._payload is not None:
                raise self._fail("stream closed before the ping was echoed")
            return
        if self._payload is None:
            raise self._fail("unsolicited bytes on a ping stream")
        self._in += data
        if len(self._in) > PING_SIZE:
            raise self._fail("echo longer than the ping")
        if len(self._in) < PING_SIZE:
            return
        if bytes(self._in) != self._payload:
            raise self._fail("ping echo does not match the payload")
        self._events.append(PongReceived(rtt=now - self._sent_at, payload=self._payload))
        self._payload = None
        self._in.clear()

    def _fail(self, msg: str) -> RemoteProtocolError:
        self._finished = True
        self._payload = None
        return RemoteProtocolError(msg, protocol=PING_PROTOCOL)

    def next_event(self) -> PingEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[PingEvent]:
        while self._events:
            yield self._events.popleft()

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        return self._sent_at + self._timeout if self._payload is not None else None

    def handle_timer(self, now: float) -> None:
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return
        self._events.append(PingTimedOut(waited=now - self._sent_at))
        self._payload = None
        self._finished = True


class PingResponder:
    """Inbound side of one ping stream: echoes each complete 32-byte payload."""

    def __init__(self) -> None:
        self._partial = bytearray()
        self._out = bytearray()
        self._events: deque[PingEvent] = deque()
        self._echoed = 0
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def echoed(self) -> int:
        return self._echoed

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the dialer; ``b""`` is end of stream.

        Raises:
            RemoteProtocolError: data after end of stream.
        """
        del now  # the responder keeps no time
        if self._ended:
            if data:
                raise RemoteProtocolError("data after end of stream", protocol=PING_PROTOCOL)
            return
        if not data:
            self._ended = True
            self._events.append(PingStreamEnded(echoed=self._echoed, discarded=len(self._partial)))
            self._partial.clear()
            return
        if not self._partial and len(data) % PING_SIZE == 0:
            # Fast path: whole payloads, echo them as they are.
            self._out += data
            self._echoed += len(data) // PING_SIZE
            return
        self._partial += data
        whole = len(self._partial) - len(self._partial) % PING_SIZE
        if whole:
            self._out += self._partial[:whole]
            del self._partial[:whole]
            self._echoed += whole // PING_SIZE

    def next_event(self) -> PingEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[PingEvent]:
        while self._events:
            yield self._events.popleft()

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        del now


class PingStreamLimiter:
    """Counts concurrent inbound ping streams per peer (B-22)."""

    def __init__(self, max_per_peer: int = MAX_INBOUND_PING_STREAMS) -> None:
        if max_per_peer < 1:
            raise LocalProtocolError("max_per_peer must be >= 1", protocol=PING_PROTOCOL)
        self.max_per_peer = max_per_peer
        self._active: dict[Hashable, int] = {}
        #: Streams refused so far (for metrics and tests).
        self.refused = 0

    def try_acquire(self, peer: Hashable) -> bool:
        """Reserve a slot for ``peer``; False (and counted) when it already has the maximum."""
        n = self._active.get(peer, 0)
        if n >= self.max_per_peer:
            self.refused += 1
            return False
        self._active[peer] = n + 1
        return True

    def release(self, peer: Hashable) -> None:
        n = self._active.get(peer, 0)
        if n <= 1:
            self._active.pop(peer, None)
        else:
            self._active[peer] = n - 1

    def active(self, peer: Hashable) -> int:
        return self._active.get(peer, 0)


__all__ = [
    "DEFAULT_PING_TIMEOUT",
    "MAX_INBOUND_PING_STREAMS",
    "PING_PROTOCOL",
    "PING_SIZE",
    "PingDialer",
    "PingEvent",
    "PingResponder",
    "PingStreamEnded",
    "PingStreamLimiter",
    "PingTimedOut",
    "PongReceived",
]
