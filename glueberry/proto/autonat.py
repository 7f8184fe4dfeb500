"""AutoNAT v1 and v2: sans-I/O client and server machines and the server's rate limiter.

Specs: https://github.com/libp2p/specs/blob/master/autonat/autonat-v1.md (r1, 2023-02-16) and
https://github.com/libp2p/specs/blob/master/autonat/autonat-v2.md (Working Draft r2,
2023-04-15).

Theory of operation.

*v1* (``/libp2p/autonat/1.0.0``): the client sends ``DIAL{peer{id, addrs}}``; the server dials
back and answers ``DIAL_RESPONSE{status, statusText, addr}``.
:class:`AutoNATv1Server` enforces the spec's MUSTs before anything is dialed: it only dials
addresses whose IP equals the requester's *observed* IP (no amplification onto third parties),
never serves requests over relayed connections, considers at most 16 addresses, applies the
node-wide :class:`AutoNATRateLimiter` (go: 30 per minute overall, 3 per peer), and refuses a
``peer.id`` other than the authenticated requester. The dial itself is the driver's job:
on :class:`DialBackRequested` it dials and reports :meth:`AutoNATv1Server.dial_succeeded` or
:meth:`AutoNATv1Server.dial_failed`.

*v2* (``/libp2p/autonat/2/dial-request`` + ``/libp2p/autonat/2/dial-back``): the client sends
``DialRequest{addrs, nonce}``; the server picks the first address it will dial; if that
address's IP differs from the observed IP it first asks for 30-100 kB of ``DialDataResponse``
chunks (≤ 4096 bytes each) as an amplification cost; it dials, sends ``DialBack{nonce}`` on a
dial-back stream, and finally answers ``DialResponse``. The client believes a dial only when
the dial-back nonce matched (:meth:`AutoNATv2Client.dial_back_received`).

All servers answer malformed input with ``E_BAD_REQUEST`` (v1) / ``E_INTERNAL_ERROR`` (v2
has no "bad request" code) and raise :class:`~glueberry.errors.RemoteProtocolError`; the reply
stays in :meth:`data_to_send`. ``now`` is any monotonic clock in seconds.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.wire import pb_nat as pb
from glueberry.wire.identity import PeerId

AUTONAT_V1_PROTOCOL: Final = "/libp2p/autonat/1.0.0"
AUTONAT_V2_DIAL_REQUEST: Final = "/libp2p/autonat/2/dial-request"
AUTONAT_V2_DIAL_BACK: Final = "/libp2p/autonat/2/dial-back"

#: go: request timeout 30 s (v1), stream timeout 15 s (v2).
DEFAULT_V1_TIMEOUT: Final = 30.0
DEFAULT_V2_TIMEOUT: Final = 15.0
#: Addresses a v1 server looks at (go ``maxAddresses``).
MAX_V1_ADDRS: Final = 16
#: Dial data a v2 client agrees to send at most (spec: servers SHOULD ask 30k-100k).
MAX_DIAL_DATA: Final = 100_000
#: Dial data a v2 server asks for.
DEFAULT_DIAL_DATA: Final = 30_000

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --- events ------------------------------------------------------------------------------


class AutoNATEvent:
    """Base of AutoNAT events. Events are not meant to be subclassed further."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DialResponseReceived(AutoNATEvent):
    """(v1 client) the server's verdict."""

    status: pb.AutoNATStatus
    status_text: str | None
    addr: bytes | None
    """The address the server reached (on OK)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DialBackRequested(AutoNATEvent):
    """(servers) dial ``addrs`` (v1: try them in order; v2: exactly ``addrs[0]``)."""

    peer: PeerId
    addrs: tuple[bytes, ...]
    nonce: int | None = None
    """v2: the nonce to send on the dial-back stream."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRefused(AutoNATEvent):
    """(servers) the request was answered without dialing."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DialDataRequested(AutoNATEvent):
    """(v2 client) the server asked for ``num_bytes``; they are queued (or refused)."""

    addr_idx: int
    num_bytes: int
    accepted: bool
    """False: the cost exceeded the client's cap - reset the stream."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DialResultReceived(AutoNATEvent):
    """(v2 client) the outcome for one address."""

    status: pb.ResponseStatus
    addr: bytes | None
    """The address the server dialed (None unless status is OK)."""
    dial_status: pb.DialStatus
    verified: bool
    """True when a dial-back with our nonce arrived (:meth:`AutoNATv2Client.dial_back_received`)."""

    @property
    def reachable(self) -> bool | None:
        """True/False for a trustworthy verdict on ``addr``, None when there is none."""
        if self.status is not pb.ResponseStatus.OK:
            return None
        if self.dial_status is pb.DialStatus.OK:
            return True if self.verified else None
        if self.dial_status is pb.DialStatus.E_DIAL_ERROR:
            return False
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class DialBackReceived(AutoNATEvent):
    """(v2 client, dial-back stream) a server proved a dial with ``nonce``."""

    nonce: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DialBackAcknowledged(AutoNATEvent):
    """(v2 server, dial-back stream) the client confirmed receipt."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoNATTimedOut(AutoNATEvent):
    waited: float


# --- rate limiting -----------------------------------------------------------------------


class AutoNATRateLimiter:
    """Sliding-window request throttle shared by all server streams of a node.

    Defaults are go's: 30 requests per minute overall, 3 per peer per minute.
    """

    def __init__(
        self, *, global_limit: int = 30, per_peer_limit: int = 3, window: float = 60.0
    ) -> None:
        self._global = global_limit
        self._per_peer = per_peer_limit
        self._window = window
        self._times: deque[tuple[float, PeerId]] = deque()

    def _prune(self, now: float) -> None:
        while self._times and self._times[0][0] <= now - self._window:
            self._times.popleft()

    def allow(self, peer: PeerId, now: float) -> bool:
        """Count one request from ``peer`` if both budgets allow it."""
        self._prune(now)
        if len(self._times) >= self._global:
            return False
        if sum(1 for _, p in self._times if p == peer) >= self._per_peer:
            return False
        self._times.append((now, peer))
        return True


# --- plumbing ------------------------------------------------------------------------------


class _State(enum.Enum):
    WAITING = "waiting"
    DIAL_DATA = "dial-data"  # v2 server: collecting the amplification cost
    DECIDING = "deciding"  # waiting for the driver's dial result
    DONE = "done"
    ERROR = "error"


class _Machine:
    _protocol: str = AUTONAT_V1_PROTOCOL
    _max_message: int = pb.MAX_AUTONAT_V1_MESSAGE

    def __init__(self, now: float, timeout: float) -> None:
        if timeout <= 0:
            raise LocalProtocolError("timeout must be positive", protocol=self._protocol)
        self._reader = pb.DelimitedReader(self._max_message, self._protocol)
        self._out = bytearray()
        self._events: deque[AutoNATEvent] = deque()
        self._state = _State.WAITING
        self._started = now
        self._deadline: float | None = now + timeout

    @property
    def finished(self) -> bool:
        return self._state in (_State.DONE, _State.ERROR)

    def _is(self, *states: _State) -> bool:
        return self._state in states

    def _send(self, body: bytes) -> None:
        self._out += pb.frame(body)

    def _fail(self, msg: str) -> RemoteProtocolError:
        self._state = _State.ERROR
        self._deadline = None
        return RemoteProtocolError(msg, protocol=self._protocol)

    def _finish(self) -> None:
        self._state = _State.DONE
        self._deadline = None

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes; ``b""`` is end of stream.

        Raises:
            RemoteProtocolError: malformed/oversize/unexpected messages or early EOF.
            LocalProtocolError: called after the machine failed.
        """
        if self._state is _State.ERROR:
            raise LocalProtocolError("machine is in an error state", protocol=self._protocol)
        if not data:
            if self._is(_State.WAITING, _State.DIAL_DATA):
                raise self._fail("stream closed before the exchange finished")
            return
        if self._is(_State.DONE, _State.DECIDING):
            raise self._fail("unexpected data")
        try:
            self._reader.feed(data)
            while self._is(_State.WAITING, _State.DIAL_DATA):
                body = self._reader.next_message()
                if body is None:
                    break
                self._on_message(body, now)
        except RemoteProtocolError:
            if not self._is(_State.ERROR):
                self._on_bad_input()
                self._state = _State.ERROR
                self._deadline = None
            raise
        if len(self._reader) and self._is(_State.DONE, _State.DECIDING):
            raise self._fail("unexpected data")

    def _on_message(self, body: bytes, now: float) -> None:
        raise NotImplementedError

    def _on_bad_input(self) -> None:
        """Hook: servers queue an error response."""

    def next_event(self) -> AutoNATEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[AutoNATEvent]:
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
        self._on_timeout(now)

    def _on_timeout(self, now: float) -> None:
        self._events.append(AutoNATTimedOut(waited=now - self._started))
        self._finish()


def _dialable(raw: bytes, *, allow_private: bool) -> pb.AddrInfo | None:
    try:
        info = pb.inspect_multiaddr(raw)
    except RemoteProtocolError:
        return None
    if info.relayed or info.ip is None or info.transport is None:
        return None
    if not pb.public_direct_addr(raw, allow_private=allow_private):
        return None
    return info


# --- v1 ------------------------------------------------------------------------------------


class AutoNATv1Client(_Machine):
    """Asks a server to dial ``addrs`` (our listen/observed addresses) back."""

    def __init__(
        self,
        *,
        peer_id: PeerId,
        addrs: Sequence[bytes],
        now: float,
        timeout: float = DEFAULT_V1_TIMEOUT,
    ) -> None:
        super().__init__(now, timeout)
        self._send(
            pb.encode_autonat(
                pb.AutoNATMessage(
                    type=pb.AutoNATMessageType.DIAL,
                    dial=pb.PeerInfo(peer_id=peer_id, addrs=tuple(addrs[:MAX_V1_ADDRS])),
                )
            )
        )

    def _on_message(self, body: bytes, now: float) -> None:
        msg = pb.decode_autonat(body)
        if msg.type is not pb.AutoNATMessageType.DIAL_RESPONSE or msg.dial_response is None:
            raise self._fail("expected DIAL_RESPONSE")
        r = msg.dial_response
        self._events.append(
            DialResponseReceived(status=r.status, status_text=r.status_text, addr=r.addr)
        )
        self._finish()


class AutoNATv1Server(_Machine):
    """Serves one inbound v1 request from ``requester``.

    Args:
        requester: the authenticated peer.
        observed_ip: the IP its connection comes from (``None``: refuse).
        relayed: the connection goes through a relay (refuse; spec MUST).
        limiter: node-wide throttle.
        allow_private: also dial private-range addresses (labs, LANs).
    """

    def __init__(
        self,
        *,
        requester: PeerId,
        observed_ip: IPAddress | None,
        relayed: bool,
        limiter: AutoNATRateLimiter,
        now: float,
        allow_private: bool = False,
        timeout: float = DEFAULT_V1_TIMEOUT,
    ) -> None:
        super().__init__(now, timeout)
        self._requester = requester
        self._ip = observed_ip
        self._relayed = relayed
        self._limiter = limiter
        self._allow_private = allow_private

    def _reply(
        self, status: pb.AutoNATStatus, text: str | None = None, addr: bytes | None = None
    ) -> None:
        self._send(
            pb.encode_autonat(
                pb.AutoNATMessage(
                    type=pb.AutoNATMessageType.DIAL_RESPONSE,
                    dial_response=pb.AutoNATDialResponse(
                        status=status, status_text=text, addr=addr
                    ),
                )
            )
        )

    def _on_bad_input(self) -> None:
        if self._state is _State.WAITING:
            self._reply(pb.AutoNATStatus.E_BAD_REQUEST, "malformed request")

    def _refuse(self, status: pb.AutoNATStatus, text: str) -> None:
        self._reply(status, text)
        self._events.append(RequestRefused(reason=text))
        self._finish()

    def _on_message(self, body: bytes, now: float) -> None:
        msg = pb.decode_autonat(body)
        if msg.type is not pb.AutoNATMessageType.DIAL or msg.dial is None:
            raise RemoteProtocolError("expected DIAL with a peer", protocol=self._protocol)
        if msg.dial.peer_id is not None and msg.dial.peer_id != self._requester:
            self._refuse(pb.AutoNATStatus.E_BAD_REQUEST, "peer id mismatch")
            return
        if self._relayed:
            self._refuse(pb.AutoNATStatus.E_DIAL_REFUSED, "refusing to serve a relayed peer")
            return
        if self._ip is None:
            self._refuse(pb.AutoNATStatus.E_DIAL_REFUSED, "observed address unknown")
            return
        if not self._limiter.allow(self._requester, now):
            self._refuse(pb.AutoNATStatus.E_DIAL_REFUSED, "too many dials")
            return
        addrs: list[bytes] = []
        for raw in msg.dial.addrs[:MAX_V1_ADDRS]:
            info = _dialable(raw, allow_private=self._allow_private)
            # MUST only dial the requester's observed IP (amplification protection).
            if info is not None and info.ip == self._ip and raw not in addrs:
                addrs.append(raw)
        if not addrs:
            self._refuse(pb.AutoNATStatus.E_DIAL_REFUSED, "no dialable addresses")
            return
        self._state = _State.DECIDING
        self._events.append(DialBackRequested(peer=self._requester, addrs=tuple(addrs)))

    def _check_deciding(self) -> None:
        if self._state is not _State.DECIDING:
            raise LocalProtocolError("no dial is pending", protocol=self._protocol)

    def dial_succeeded(self, addr: bytes) -> None:
        self._check_deciding()
        self._reply(pb.AutoNATStatus.OK, "OK", addr)
        self._finish()

    def dial_failed(self, text: str = "dial failed") -> None:
        self._check_deciding()
        self._reply(pb.AutoNATStatus.E_DIAL_ERROR, text)
        self._finish()

    def _on_timeout(self, now: float) -> None:
        if self._state is _State.DECIDING:
            self._reply(pb.AutoNATStatus.E_INTERNAL_ERROR, "dial timed out")
        super()._on_timeout(now)


# --- v2 ------------------------------------------------------------------------------------


class AutoNATv2Client(_Machine):
    """One v2 dial request: ``addrs`` in priority order, ``nonce`` drawn by the caller.

    The driver also runs a :class:`DialBackReceiver` on every inbound dial-back stream and
    calls :meth:`dial_back_received` with the nonce it carried.
    """

    _protocol = AUTONAT_V2_DIAL_REQUEST
    _max_message = pb.MAX_AUTONAT_V2_MESSAGE

    def __init__(
        self,
        *,
        addrs: Sequence[bytes],
        nonce: int,
        now: float,
        max_dial_data: int = MAX_DIAL_DATA,
        timeout: float = DEFAULT_V2_TIMEOUT,
    ) -> None:
        super().__init__(now, timeout)
        if not addrs:
            raise LocalProtocolError("no addresses to test", protocol=self._protocol)
        if not 0 <= nonce < 1 << 64:
            raise LocalProtocolError("nonce must be a 64-bit value", protocol=self._protocol)
        self._addrs = tuple(addrs)
        self.nonce = nonce
        self._max_data = max_dial_data
        self._data_requested = False
        self._verified = False
        self._send(pb.encode_v2(pb.DialRequest(addrs=self._addrs, nonce=nonce)))

    def dial_back_received(self, nonce: int) -> bool:
        """Record a dial-back; True if it carried our nonce (others are ignored)."""
        if nonce == self.nonce:
            self._verified = True
        return nonce == self.nonce

    def _on_message(self, body: bytes, now: float) -> None:
        msg = pb.decode_v2(body)
        if isinstance(msg, pb.DialDataRequest):
            if self._data_requested:
                raise self._fail("second DialDataRequest")
            if msg.addr_idx >= len(self._addrs):
                raise self._fail("DialDataRequest for an address we did not send")
            self._data_requested = True
            accepted = msg.num_bytes <= self._max_data
            self._events.append(
                DialDataRequested(addr_idx=msg.addr_idx, num_bytes=msg.num_bytes, accepted=accepted)
            )
            if not accepted:  # the spec: the client resets the stream
                self._finish()
                return
            left = msg.num_bytes
            chunk = pb.frame(pb.encode_v2(pb.DialDataResponse(data=bytes(pb.MAX_DIAL_DATA_CHUNK))))
            while left > 0:
                if left >= pb.MAX_DIAL_DATA_CHUNK:
                    self._out += chunk
                    left -= pb.MAX_DIAL_DATA_CHUNK
                else:
                    self._send(pb.encode_v2(pb.DialDataResponse(data=bytes(left))))
                    left = 0
            return
        if not isinstance(msg, pb.DialResponse):
            raise self._fail(f"unexpected {type(msg).__name__}")
        addr = None
        if msg.status is pb.ResponseStatus.OK:
            if msg.addr_idx >= len(self._addrs):
                raise self._fail("DialResponse names an address we did not send")
            addr = self._addrs[msg.addr_idx]
        self._events.append(
            DialResultReceived(
                status=msg.status,
                addr=addr,
                dial_status=msg.dial_status,
                verified=self._verified,
            )
        )
        self._finish()


class AutoNATv2Server(_Machine):
    """Serves one v2 dial request from ``requester``."""

    _protocol = AUTONAT_V2_DIAL_REQUEST
    _max_message = pb.MAX_AUTONAT_V2_MESSAGE

    def __init__(
        self,
        *,
        requester: PeerId,
        observed_ip: IPAddress | None,
        relayed: bool,
        limiter: AutoNATRateLimiter,
        now: float,
        dial_data: int = DEFAULT_DIAL_DATA,
        allow_private: bool = False,
        timeout: float = DEFAULT_V2_TIMEOUT,
    ) -> None:
        super().__init__(now, timeout)
        self._requester = requester
        self._ip = observed_ip
        self._relayed = relayed
        self._limiter = limiter
        self._dial_data = dial_data
        self._allow_private = allow_private
        self._received = 0
        self._chosen: tuple[int, bytes] | None = None
        self._nonce = 0

    def _reply(
        self,
        status: pb.ResponseStatus,
        idx: int = 0,
        dial_status: pb.DialStatus = pb.DialStatus.UNUSED,
    ) -> None:
        self._send(
            pb.encode_v2(pb.DialResponse(status=status, addr_idx=idx, dial_status=dial_status))
        )

    def _on_bad_input(self) -> None:
        if self._is(_State.WAITING, _State.DIAL_DATA):
            self._reply(pb.ResponseStatus.E_INTERNAL_ERROR)

    def _refuse(self, status: pb.ResponseStatus, reason: str) -> None:
        self._reply(status)
        self._events.append(RequestRefused(reason=reason))
        self._finish()

    def _on_message(self, body: bytes, now: float) -> None:
        msg = pb.decode_v2(body)
        if self._state is _State.DIAL_DATA:
            if not isinstance(msg, pb.DialDataResponse):
                raise self._fail("expected DialDataResponse")
            if len(msg.data) > pb.MAX_DIAL_DATA_CHUNK:
                raise self._fail("DialDataResponse chunk larger than 4096 bytes")
            self._received += len(msg.data)
            if self._received >= self._dial_data:
                self._request_dial()
            return
        if not isinstance(msg, pb.DialRequest):
            raise self._fail("expected DialRequest")
        if self._relayed:
            self._refuse(pb.ResponseStatus.E_REQUEST_REJECTED, "relayed connection")
            return
        if self._ip is None:
            self._refuse(pb.ResponseStatus.E_REQUEST_REJECTED, "observed address unknown")
            return
        if not self._limiter.allow(self._requester, now):
            self._refuse(pb.ResponseStatus.E_REQUEST_REJECTED, "rate limited")
            return
        self._nonce = msg.nonce
        for idx, raw in enumerate(msg.addrs):
            info = _dialable(raw, allow_private=self._allow_private)
            if info is not None and info.ip is not None and info.ip.version == self._ip.version:
                self._chosen = (idx, raw)
                if info.ip != self._ip:
                    self._state = _State.DIAL_DATA
                    self._send(
                        pb.encode_v2(pb.DialDataRequest(addr_idx=idx, num_bytes=self._dial_data))
                    )
                else:
                    self._request_dial()
                return
        self._refuse(pb.ResponseStatus.E_DIAL_REFUSED, "no dialable addresses")

    def _request_dial(self) -> None:
        assert self._chosen is not None
        self._state = _State.DECIDING
        self._events.append(
            DialBackRequested(peer=self._requester, addrs=(self._chosen[1],), nonce=self._nonce)
        )

    def dial_result(self, dial_status: pb.DialStatus) -> None:
        """Report the dial-back outcome; queues ``DialResponse{OK, addrIdx, dialStatus}``."""
        if self._state is not _State.DECIDING or self._chosen is None:
            raise LocalProtocolError("no dial is pending", protocol=self._protocol)
        self._reply(pb.ResponseStatus.OK, self._chosen[0], dial_status)
        self._finish()

    def _on_timeout(self, now: float) -> None:
        if self._state is _State.DECIDING:
            self._reply(pb.ResponseStatus.E_INTERNAL_ERROR)
        super()._on_timeout(now)


class DialBackSender(_Machine):
    """(v2 server) the dial-back stream: send the nonce, wait for the acknowledgement."""

    _protocol = AUTONAT_V2_DIAL_BACK
    _max_message = pb.MAX_AUTONAT_V2_MESSAGE

    def __init__(self, *, nonce: int, now: float, timeout: float = 5.0) -> None:
        super().__init__(now, timeout)
        self._send(pb.encode_dial_back(pb.DialBack(nonce=nonce)))

    def _on_message(self, body: bytes, now: float) -> None:
        pb.decode_dial_back_response(body)
        self._events.append(DialBackAcknowledged())
        self._finish()


class DialBackReceiver(_Machine):
    """(v2 client) an inbound dial-back stream: read the nonce, acknowledge it."""

    _protocol = AUTONAT_V2_DIAL_BACK
    _max_message = pb.MAX_AUTONAT_V2_MESSAGE

    def __init__(self, *, now: float, timeout: float = 5.0) -> None:
        super().__init__(now, timeout)

    def _on_message(self, body: bytes, now: float) -> None:
        msg = pb.decode_dial_back(body)
        self._send(pb.encode_dial_back_response(pb.DialBackResponse()))
        self._events.append(DialBackReceived(nonce=msg.nonce))
        self._finish()


__all__ = [
    "AUTONAT_V1_PROTOCOL",
    "AUTONAT_V2_DIAL_BACK",
    "AUTONAT_V2_DIAL_REQUEST",
    "AutoNATEvent",
    "AutoNATRateLimiter",
    "AutoNATTimedOut",
    "AutoNATv1Client",
    "AutoNATv1Server",
    "AutoNATv2Client",
    "AutoNATv2Server",
    "DialBackAcknowledged",
    "DialBackReceived",
    "DialBackReceiver",
    "DialBackRequested",
    "DialBackSender",
    "DialDataRequested",
    "DialResponseReceived",
    "DialResultReceived",
    "RequestRefused",
]
