"""Circuit relay v2: sans-I/O HOP and STOP machines, the relay's reservation table and the
per-circuit limiter.

Spec: https://github.com/libp2p/specs/blob/master/relay/circuit-v2.md (r3, 2023-02-28)

Protocols ``/libp2p/circuit/relay/0.2.0/hop`` (client ↔ relay: RESERVE, CONNECT) and
``/libp2p/circuit/relay/0.2.0/stop`` (relay → target: CONNECT). Each stream carries
uvarint-delimited protobufs of at most 4096 bytes (:mod:`glueberry.wire.pb_nat`).

Theory of operation. One machine per stream:

* :class:`HopReserveClient` sends RESERVE and waits for STATUS; the reservation (expiry,
  relay addresses, limit and voucher, checked against the relay's and our own peer IDs) comes
  out as :class:`ReservationAccepted`, a refusal as :class:`ReservationRefused`.
* :class:`HopConnectClient` sends CONNECT for a target; on OK the stream *becomes* the relayed
  connection: :class:`CircuitEstablished` carries any bytes that arrived after the STATUS
  message (``trailing_data``) and the machine is finished - the driver now upgrades the stream
  (security + muxer) like a TCP connection.
* :class:`HopServer` is the relay's side of a HOP stream. It consults a shared, pure
  :class:`RelayTable` (reservation TTL 1 h, 128 reservations, 8 per IP, one per peer, circuit
  caps) and answers RESERVE by itself. For CONNECT it emits :class:`ConnectRequested`; the
  driver opens a STOP stream to the target with :class:`StopClient` and reports back with
  :meth:`HopServer.stop_succeeded` / :meth:`HopServer.stop_failed`. Requests arriving over an
  already relayed connection are refused with PERMISSION_DENIED (the spec's "should not
  accept reservations or connects over relayed connections").
* :class:`StopServer` is the target's side: it emits :class:`StopConnectRequested` and the
  driver calls :meth:`StopServer.accept` or :meth:`StopServer.refuse`.
* :class:`CircuitLimiter` enforces the circuit limit (default 2 min and 128 KiB per
  direction): the relay asks it how many bytes it may forward and resets both streams when it
  reports :class:`CircuitLimitReached`.

Malformed input makes a server machine queue MALFORMED_MESSAGE (or UNEXPECTED_MESSAGE for a
message of the wrong type), then raise :class:`~glueberry.errors.RemoteProtocolError`; the
reply stays in :meth:`data_to_send` so the driver can flush it before resetting the stream.

Time: every ``now`` in this module is wall-clock seconds since the Unix epoch, because the
reservation expiry travels as UTC seconds. Drivers pass ``time.time()``.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.wire import pb_nat as pb
from glueberry.wire.identity import PeerId, PrivateKey

HOP_PROTOCOL: Final = "/libp2p/circuit/relay/0.2.0/hop"
STOP_PROTOCOL: Final = "/libp2p/circuit/relay/0.2.0/stop"

#: go: reserve 1 min, connect (hop) 1 min, stop 30 s; rust: 60 s stream timeout.
DEFAULT_HOP_TIMEOUT: Final = 60.0
DEFAULT_STOP_TIMEOUT: Final = 30.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayLimits:
    """Relay resource limits (defaults: go-libp2p ``resources.go`` / rust ``behaviour.rs``)."""

    reservation_ttl: float = 3600.0
    """Seconds a reservation lasts (the client refreshes before it ends)."""
    max_reservations: int = 128
    """Reservations held at once."""
    max_reservations_per_ip: int = 8
    """Reservations from one IP address."""
    max_circuits: int = 256
    """Relayed connections open at once."""
    max_circuits_per_peer: int = 16
    """Relayed connections one peer (as source or target) may take part in."""
    circuit_duration: int = 120
    """Seconds a relayed connection may live (0 = unlimited)."""
    circuit_data: int = 128 * 1024
    """Bytes relayed in each direction (0 = unlimited)."""

    @property
    def limit(self) -> pb.Limit | None:
        if not self.circuit_duration and not self.circuit_data:
            return None
        return pb.Limit(duration=self.circuit_duration, data=self.circuit_data)


# --- events ------------------------------------------------------------------------------


class RelayEvent:
    """Base of relay events. Events are not meant to be subclassed further."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReservationAccepted(RelayEvent):
    """The relay granted (or refreshed) our reservation."""

    expire: int
    """Expiry, UTC seconds since the epoch."""
    addrs: tuple[bytes, ...]
    """Relay addresses to advertise (append ``/p2p-circuit``)."""
    limit: pb.Limit | None
    """Limits of circuits through this relay (``None``: unlimited)."""
    voucher: pb.Voucher | None
    """The verified voucher, if one came and checked out."""
    voucher_problem: str | None
    """Why a voucher that came was not accepted (vouchers are advisory)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReservationRefused(RelayEvent):
    status: pb.RelayStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitEstablished(RelayEvent):
    """The stream is now a relayed connection; hand it over with ``trailing_data``."""

    limit: pb.Limit | None
    """The circuit's limits, as announced."""
    trailing_data: bytes
    """Bytes that followed the final protocol message (the start of the relayed stream)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitRefused(RelayEvent):
    status: pb.RelayStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayRequestTimedOut(RelayEvent):
    """No answer (or no request) before the deadline; the machine is finished."""

    waited: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ReservationServed(RelayEvent):
    """(Relay side) a reservation was granted or refreshed."""

    peer: PeerId
    expire: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestDenied(RelayEvent):
    """(Relay or target side) a request was answered with an error status."""

    kind: Literal["reserve", "connect"]
    status: pb.RelayStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectRequested(RelayEvent):
    """(Relay side) ``src`` wants a circuit to ``dst``: open a STOP stream to ``dst``."""

    src: PeerId
    dst: PeerId
    limit: pb.Limit | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StopConnectRequested(RelayEvent):
    """(Target side) the relay offers a circuit from ``src``; accept or refuse it."""

    src: PeerId
    src_addrs: tuple[bytes, ...]
    limit: pb.Limit | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitLimitReached(RelayEvent):
    """(Relay side) the circuit used up its time or data: reset both streams."""

    reason: Literal["duration", "data"]


# --- reservation table -------------------------------------------------------------------


@dataclass(slots=True)
class _Rsvp:
    expire: float
    ip: IPAddress | None


class RelayTable:
    """The relay's node-wide reservation and circuit bookkeeping (pure; time passed in).

    One reservation per peer: a RESERVE from a peer that holds one refreshes it. Entries
    expire lazily; :meth:`remove_peer` drops a peer's reservation when its connection closes
    (the spec ties validity to the connection).
    """

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits or RelayLimits()
        self._rsvps: dict[PeerId, _Rsvp] = {}
        self._circuits: dict[PeerId, int] = {}
        self._total_circuits = 0

    def _expire(self, now: float) -> None:
        for peer in [p for p, r in self._rsvps.items() if r.expire <= now]:
            del self._rsvps[peer]

    def reserve(self, peer: PeerId, ip: IPAddress | None, now: float) -> tuple[pb.RelayStatus, int]:
        """Grant or refresh; returns ``(OK, expire)`` or ``(RESERVATION_REFUSED, 0)``."""
        self._expire(now)
        lim = self.limits
        expire = int(now + lim.reservation_ttl)
        current = self._rsvps.get(peer)
        if current is not None:
            if (
                ip is not None
                and ip != current.ip
                and self._ip_count(ip) >= (lim.max_reservations_per_ip)
            ):
                return pb.RelayStatus.RESERVATION_REFUSED, 0
            current.expire = expire
            current.ip = ip
            return pb.RelayStatus.OK, expire
        if len(self._rsvps) >= lim.max_reservations:
            return pb.RelayStatus.RESERVATION_REFUSED, 0
        if ip is not None and self._ip_count(ip) >= lim.max_reservations_per_ip:
            return pb.RelayStatus.RESERVATION_REFUSED, 0
        self._rsvps[peer] = _Rsvp(expire=expire, ip=ip)
        return pb.RelayStatus.OK, expire

    def _ip_count(self, ip: IPAddress) -> int:
        return sum(1 for r in self._rsvps.values() if r.ip == ip)

    def has_reservation(self, peer: PeerId, now: float) -> bool:
        r = self._rsvps.get(peer)
        return r is not None and r.expire > now

    def remove_peer(self, peer: PeerId) -> None:
        self._rsvps.pop(peer, None)

    def reservation_count(self, now: float) -> int:
        self._expire(now)
        return len(self._rsvps)

    def open_circuit(self, src: PeerId, dst: PeerId) -> bool:
        """Count a circuit ``src → dst``; False if a cap would be exceeded."""
        lim = self.limits
        if self._total_circuits >= lim.max_circuits:
            return False
        if self._circuits.get(src, 0) >= lim.max_circuits_per_peer:
            return False
        if self._circuits.get(dst, 0) >= lim.max_circuits_per_peer:
            return False
        self._total_circuits += 1
        self._circuits[src] = self._circuits.get(src, 0) + 1
        self._circuits[dst] = self._circuits.get(dst, 0) + 1
        return True

    def close_circuit(self, src: PeerId, dst: PeerId) -> None:
        """Release a circuit counted by :meth:`open_circuit` (call exactly once)."""
        if self._total_circuits <= 0:
            raise LocalProtocolError("no circuit to close", protocol=HOP_PROTOCOL)
        self._total_circuits -= 1
        for p in (src, dst):
            n = self._circuits.get(p, 0) - 1
            if n > 0:
                self._circuits[p] = n
            else:
                self._circuits.pop(p, None)

    @property
    def circuit_count(self) -> int:
        return self._total_circuits

    def get_timer(self) -> float | None:
        """When the earliest reservation expires."""
        return min((r.expire for r in self._rsvps.values()), default=None)

    def handle_timer(self, now: float) -> None:
        self._expire(now)


# --- common machine plumbing -------------------------------------------------------------


class _State(enum.Enum):
    WAITING = "waiting"  # waiting for the peer's message
    DECIDING = "deciding"  # waiting for the driver (accept/refuse, stop result)
    DONE = "done"  # exchange finished; stream closes or was handed over
    ERROR = "error"


class _Machine:
    _protocol: str = HOP_PROTOCOL

    def __init__(self, now: float, timeout: float) -> None:
        if timeout <= 0:
            raise LocalProtocolError("timeout must be positive", protocol=self._protocol)
        self._reader = pb.DelimitedReader(pb.MAX_RELAY_MESSAGE, self._protocol)
        self._out = bytearray()
        self._events: deque[RelayEvent] = deque()
        self._state = _State.WAITING
        self._started = now
        self._deadline: float | None = now + timeout

    @property
    def finished(self) -> bool:
        return self._state in (_State.DONE, _State.ERROR)

    def _send(self, body: bytes) -> None:
        self._out += pb.frame(body)

    def _fail(self, msg: str) -> RemoteProtocolError:
        self._enter_error()
        return RemoteProtocolError(msg, protocol=self._protocol)

    def _enter_error(self) -> None:
        self._state = _State.ERROR
        self._deadline = None
        self._on_error()

    def _on_error(self) -> None:
        """Hook: release resources held for a pending request."""

    def _finish(self) -> None:
        self._state = _State.DONE
        self._deadline = None

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the stream; ``b""`` is end of stream.

        Raises:
            RemoteProtocolError: malformed or unexpected messages, oversize frames, or end of
                stream before the exchange finished.
            LocalProtocolError: data fed after the machine finished or failed.
        """
        if self._state is _State.ERROR:
            raise LocalProtocolError("machine is in an error state", protocol=self._protocol)
        if self._state is _State.DONE:
            if data:
                raise LocalProtocolError(
                    "exchange finished; the stream belongs to the driver now",
                    protocol=self._protocol,
                )
            return
        if not data:
            raise self._fail("stream closed before the exchange finished")
        if self._state is _State.DECIDING:
            raise self._fail("peer sent data while its request was pending")
        try:
            self._reader.feed(data)
            while self._is(_State.WAITING):
                body = self._reader.next_message()
                if body is None:
                    break
                self._on_message(body, now)
        except RemoteProtocolError:
            if not self._is(_State.ERROR):
                self._on_bad_input()
                self._enter_error()
            raise
        if self._is(_State.DECIDING) and len(self._reader):
            raise self._fail("peer sent data while its request was pending")

    def _is(self, state: _State) -> bool:
        return self._state is state

    def _on_message(self, body: bytes, now: float) -> None:
        raise NotImplementedError

    def _on_bad_input(self) -> None:
        """Hook: servers queue MALFORMED_MESSAGE here."""

    def next_event(self) -> RelayEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[RelayEvent]:
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
        self._events.append(RelayRequestTimedOut(waited=now - self._started))
        self._finish()


def _need_status(status: pb.RelayStatus | None) -> pb.RelayStatus:
    if status is None:
        raise RemoteProtocolError("STATUS message without a status", protocol=HOP_PROTOCOL)
    return status


# --- HOP client ----------------------------------------------------------------------------


class HopReserveClient(_Machine):
    """Client side of a RESERVE exchange with ``relay``.

    Call order: construct (RESERVE is queued) → ``data_to_send`` → ``receive_data*`` →
    ``next_event`` yields :class:`ReservationAccepted`, :class:`ReservationRefused` or
    :class:`RelayRequestTimedOut`.
    """

    def __init__(
        self, *, relay: PeerId, local: PeerId, now: float, timeout: float = DEFAULT_HOP_TIMEOUT
    ) -> None:
        super().__init__(now, timeout)
        self._relay = relay
        self._local = local
        self._send(pb.encode_hop(pb.HopMessage(type=pb.HopType.RESERVE)))

    def _on_message(self, body: bytes, now: float) -> None:
        msg = pb.decode_hop(body)
        if msg.type is not pb.HopType.STATUS:
            raise self._fail(f"expected STATUS, got {msg.type.name}")
        status = _need_status(msg.status)
        if status is not pb.RelayStatus.OK:
            self._events.append(ReservationRefused(status=status))
            self._finish()
            return
        rsvp = msg.reservation
        if rsvp is None:
            raise self._fail("OK reservation response without a reservation")
        if rsvp.expire <= now:
            raise self._fail("reservation expires in the past")
        voucher: pb.Voucher | None = None
        problem: str | None = None
        if rsvp.voucher is not None:
            try:
                voucher = pb.decode_voucher(rsvp.voucher)
            except RemoteProtocolError as exc:
                problem = str(exc)
            else:
                if voucher.relay != self._relay:
                    problem, voucher = "voucher names another relay", None
                elif voucher.peer != self._local:
                    problem, voucher = "voucher names another peer", None
                elif voucher.expiration != rsvp.expire:
                    problem, voucher = "voucher expiration differs from the reservation", None
        self._events.append(
            ReservationAccepted(
                expire=rsvp.expire,
                addrs=rsvp.addrs,
                limit=msg.limit,
                voucher=voucher,
                voucher_problem=problem,
            )
        )
        self._finish()
        if len(self._reader):
            raise self._fail("data after the reservation response")


class HopConnectClient(_Machine):
    """Client side of CONNECT through a relay to ``target``.

    On :class:`CircuitEstablished` the machine is finished and the stream is the relayed
    connection (``trailing_data`` first).
    """

    def __init__(self, *, target: PeerId, now: float, timeout: float = DEFAULT_HOP_TIMEOUT) -> None:
        super().__init__(now, timeout)
        self._send(
            pb.encode_hop(pb.HopMessage(type=pb.HopType.CONNECT, peer=pb.PeerInfo(peer_id=target)))
        )

    def _on_message(self, body: bytes, now: float) -> None:
        msg = pb.decode_hop(body)
        if msg.type is not pb.HopType.STATUS:
            raise self._fail(f"expected STATUS, got {msg.type.name}")
        status = _need_status(msg.status)
        if status is pb.RelayStatus.OK:
            self._events.append(
                CircuitEstablished(limit=msg.limit, trailing_data=self._reader.take_rest())
            )
        else:
            self._events.append(CircuitRefused(status=status))
        self._finish()


# --- HOP server (relay side) ---------------------------------------------------------------


class HopServer(_Machine):
    """The relay's side of one inbound HOP stream from ``peer``.

    Args:
        peer: the authenticated peer on the other end.
        remote_ip: the IP of that peer's connection (for the per-IP cap); ``None`` if unknown.
        relayed: True if that connection itself goes through a relay (requests are refused).
        table: the node-wide :class:`RelayTable`.
        relay_key: signs vouchers; ``None`` sends no voucher.
        relay_addrs: the relay's public addresses, returned in reservations.
    """

    def __init__(
        self,
        *,
        peer: PeerId,
        remote_ip: IPAddress | None,
        relayed: bool,
        table: RelayTable,
        now: float,
        relay_key: PrivateKey | None = None,
        relay_addrs: tuple[bytes, ...] = (),
        timeout: float = DEFAULT_HOP_TIMEOUT,
    ) -> None:
        super().__init__(now, timeout)
        self._peer = peer
        self._ip = remote_ip
        self._relayed = relayed
        self._table = table
        self._key = relay_key
        self._addrs = relay_addrs
        self._circuit: tuple[PeerId, PeerId] | None = None

    def _reply(
        self,
        status: pb.RelayStatus,
        *,
        reservation: pb.Reservation | None = None,
        limit: pb.Limit | None = None,
    ) -> None:
        msg = pb.HopMessage(
            type=pb.HopType.STATUS, status=status, reservation=reservation, limit=limit
        )
        self._send(pb.encode_hop(msg))

    def _on_bad_input(self) -> None:
        if self._state is _State.WAITING:
            self._reply(pb.RelayStatus.MALFORMED_MESSAGE)

    def _on_error(self) -> None:
        if self._circuit is not None:
            self._table.close_circuit(*self._circuit)
            self._circuit = None

    def _deny(self, kind: Literal["reserve", "connect"], status: pb.RelayStatus) -> None:
        self._reply(status)
        self._events.append(RequestDenied(kind=kind, status=status))
        self._finish()

    def _on_message(self, body: bytes, now: float) -> None:
        msg = pb.decode_hop(body)
        if msg.type is pb.HopType.RESERVE:
            self._on_reserve(now)
        elif msg.type is pb.HopType.CONNECT:
            self._on_connect(msg, now)
        else:
            self._reply(pb.RelayStatus.UNEXPECTED_MESSAGE)
            self._events.append(
                RequestDenied(kind="connect", status=pb.RelayStatus.UNEXPECTED_MESSAGE)
            )
            raise self._fail("client sent a STATUS message")
        if len(self._reader) and self._state is _State.DONE:
            raise self._fail("data after the request")

    def _on_reserve(self, now: float) -> None:
        if self._relayed:
            self._deny("reserve", pb.RelayStatus.PERMISSION_DENIED)
            return
        status, expire = self._table.reserve(self._peer, self._ip, now)
        if status is not pb.RelayStatus.OK:
            self._deny("reserve", status)
            return
        voucher = None
        if self._key is not None:
            voucher = pb.seal_voucher(
                self._key,
                pb.Voucher(relay=self._key.peer_id, peer=self._peer, expiration=expire),
            )
        self._reply(
            pb.RelayStatus.OK,
            reservation=pb.Reservation(expire=expire, addrs=self._addrs, voucher=voucher),
            limit=self._table.limits.limit,
        )
        self._events.append(ReservationServed(peer=self._peer, expire=expire))
        self._finish()

    def _on_connect(self, msg: pb.HopMessage, now: float) -> None:
        if self._relayed:
            self._deny("connect", pb.RelayStatus.PERMISSION_DENIED)
            return
        if msg.peer is None or msg.peer.peer_id is None:
            self._reply(pb.RelayStatus.MALFORMED_MESSAGE)
            raise self._fail("CONNECT without a target peer")
        dst = msg.peer.peer_id
        if dst == self._peer:
            self._deny("connect", pb.RelayStatus.PERMISSION_DENIED)
            return
        if not self._table.has_reservation(dst, now):
            self._deny("connect", pb.RelayStatus.NO_RESERVATION)
            return
        if not self._table.open_circuit(self._peer, dst):
            self._deny("connect", pb.RelayStatus.RESOURCE_LIMIT_EXCEEDED)
            return
        self._circuit = (self._peer, dst)
        self._state = _State.DECIDING
        self._events.append(
            ConnectRequested(src=self._peer, dst=dst, limit=self._table.limits.limit)
        )

    def _check_deciding(self) -> tuple[PeerId, PeerId]:
        if self._state is not _State.DECIDING or self._circuit is None:
            raise LocalProtocolError("no CONNECT is pending", protocol=self._protocol)
        return self._circuit

    def stop_succeeded(self) -> None:
        """The target accepted the STOP: answer OK; the stream becomes the circuit.

        The circuit stays counted in the table until the driver calls
        ``table.close_circuit(src, dst)`` when the relayed connection ends.
        """
        self._check_deciding()
        lim = self._table.limits.limit
        self._reply(pb.RelayStatus.OK, limit=lim)
        self._events.append(CircuitEstablished(limit=lim, trailing_data=self._reader.take_rest()))
        self._finish()

    def stop_failed(self) -> None:
        """The STOP exchange failed: answer CONNECTION_FAILED and release the circuit slot."""
        src, dst = self._check_deciding()
        self._table.close_circuit(src, dst)
        self._circuit = None
        self._deny("connect", pb.RelayStatus.CONNECTION_FAILED)

    def handle_timer(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline and self._circuit is not None:
            self._table.close_circuit(*self._circuit)
            self._circuit = None
        super().handle_timer(now)


# --- STOP ----------------------------------------------------------------------------------


class StopClient(_Machine):
    """The relay's side of a STOP stream to the target, announcing ``src``."""

    _protocol = STOP_PROTOCOL

    def __init__(
        self,
        *,
        src: PeerId,
        limit: pb.Limit | None,
        now: float,
        src_addrs: tuple[bytes, ...] = (),
        timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        super().__init__(now, timeout)
        self._limit = limit
        self._send(
            pb.encode_stop(
                pb.StopMessage(
                    type=pb.StopType.CONNECT,
                    peer=pb.PeerInfo(peer_id=src, addrs=src_addrs),
                    limit=limit,
                )
            )
        )

    def _on_message(self, body: bytes, now: float) -> None:
        msg = pb.decode_stop(body)
        if msg.type is not pb.StopType.STATUS:
            raise self._fail("expected STATUS on the STOP stream")
        if msg.status is None:
            raise self._fail("STATUS message without a status")
        if msg.status is pb.RelayStatus.OK:
            self._events.append(
                CircuitEstablished(limit=self._limit, trailing_data=self._reader.take_rest())
            )
        else:
            self._events.append(CircuitRefused(status=msg.status))
        self._finish()


class StopServer(_Machine):
    """The target's side of an inbound STOP stream.

    Args:
        relayed: True if the connection to the relay is itself relayed (refused).
    """

    _protocol = STOP_PROTOCOL

    def __init__(
        self, *, now: float, relayed: bool = False, timeout: float = DEFAULT_HOP_TIMEOUT
    ) -> None:
        super().__init__(now, timeout)
        self._relayed = relayed
        self._limit: pb.Limit | None = None

    def _reply(self, status: pb.RelayStatus) -> None:
        self._send(pb.encode_stop(pb.StopMessage(type=pb.StopType.STATUS, status=status)))

    def _on_bad_input(self) -> None:
        if self._state is _State.WAITING:
            self._reply(pb.RelayStatus.MALFORMED_MESSAGE)

    def _on_message(self, body: bytes, now: float) -> None:
        msg = pb.decode_stop(body)
        if msg.type is not pb.StopType.CONNECT:
            self._reply(pb.RelayStatus.UNEXPECTED_MESSAGE)
            raise self._fail("relay sent STATUS instead of CONNECT")
        if msg.peer is None or msg.peer.peer_id is None:
            self._reply(pb.RelayStatus.MALFORMED_MESSAGE)
            raise self._fail("STOP CONNECT without a source peer")
        if self._relayed:
            self._reply(pb.RelayStatus.PERMISSION_DENIED)
            self._events.append(
                RequestDenied(kind="connect", status=pb.RelayStatus.PERMISSION_DENIED)
            )
            self._finish()
            return
        self._limit = msg.limit
        self._state = _State.DECIDING
        self._events.append(
            StopConnectRequested(src=msg.peer.peer_id, src_addrs=msg.peer.addrs, limit=msg.limit)
        )

    def accept(self) -> None:
        """Answer OK; :class:`CircuitEstablished` follows and the stream is the connection."""
        if self._state is not _State.DECIDING:
            raise LocalProtocolError("no STOP CONNECT is pending", protocol=self._protocol)
        self._reply(pb.RelayStatus.OK)
        self._events.append(
            CircuitEstablished(limit=self._limit, trailing_data=self._reader.take_rest())
        )
        self._finish()

    def refuse(self, status: pb.RelayStatus = pb.RelayStatus.CONNECTION_FAILED) -> None:
        if self._state is not _State.DECIDING:
            raise LocalProtocolError("no STOP CONNECT is pending", protocol=self._protocol)
        if status is pb.RelayStatus.OK:
            raise LocalProtocolError("refuse() needs an error status", protocol=self._protocol)
        self._reply(status)
        self._events.append(RequestDenied(kind="connect", status=status))
        self._finish()


# --- circuit limiter -----------------------------------------------------------------------

Direction = Literal["src_to_dst", "dst_to_src"]


class CircuitLimiter:
    """Enforces a circuit's :class:`~glueberry.wire.pb_nat.Limit` on the relay.

    The driver calls :meth:`allow` before forwarding ``n`` bytes in a direction and forwards
    only the number it returns; once a budget or the duration is spent the limiter emits one
    :class:`CircuitLimitReached` and the driver resets both streams.
    """

    def __init__(self, limit: pb.Limit | None, now: float) -> None:
        self._data = (limit.data or 0) if limit else 0
        dur = (limit.duration or 0) if limit else 0
        self._deadline: float | None = now + dur if dur else None
        self._used: dict[Direction, int] = {"src_to_dst": 0, "dst_to_src": 0}
        self._events: deque[RelayEvent] = deque()
        self._reached = False

    @property
    def reached(self) -> bool:
        return self._reached

    def used(self, direction: Direction) -> int:
        return self._used[direction]

    def allow(self, direction: Direction, n: int, now: float) -> int:
        """How many of ``n`` bytes may be forwarded now."""
        if self._reached:
            return 0
        if self._deadline is not None and now >= self._deadline:
            self._hit("duration")
            return 0
        if not self._data:
            self._used[direction] += n
            return n
        room = self._data - self._used[direction]
        take = min(n, room)
        self._used[direction] += take
        if take < n or self._used[direction] >= self._data:
            self._hit("data")
        return take

    def _hit(self, reason: Literal["duration", "data"]) -> None:
        if not self._reached:
            self._reached = True
            self._deadline = None
            self._events.append(CircuitLimitReached(reason=reason))

    def next_event(self) -> RelayEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[RelayEvent]:
        while self._events:
            yield self._events.popleft()

    def get_timer(self) -> float | None:
        return self._deadline

    def handle_timer(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline:
            self._hit("duration")


__all__ = [
    "DEFAULT_HOP_TIMEOUT",
    "DEFAULT_STOP_TIMEOUT",
    "HOP_PROTOCOL",
    "STOP_PROTOCOL",
    "CircuitEstablished",
    "CircuitLimitReached",
    "CircuitLimiter",
    "CircuitRefused",
    "ConnectRequested",
    "HopConnectClient",
    "HopReserveClient",
    "HopServer",
    "RelayEvent",
    "RelayLimits",
    "RelayRequestTimedOut",
    "RelayTable",
    "RequestDenied",
    "ReservationAccepted",
    "ReservationRefused",
    "ReservationServed",
    "StopClient",
    "StopConnectRequested",
    "StopServer",
]
