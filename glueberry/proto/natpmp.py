"""NAT-PMP (RFC 6886): message codec and a sans-I/O request/retransmit machine.

Spec: https://www.rfc-editor.org/rfc/rfc6886 (NAT Port Mapping Protocol, April 2013)

Wire format (UDP, client → gateway port 5351, all integers big-endian):

* external address request: ``version=0, opcode=0`` (2 bytes); response: ``0, 128,
  result(16), epoch(32), external IPv4(4)`` (12 bytes);
* mapping request: ``0, opcode (1 = UDP, 2 = TCP), reserved(16)=0, internal port(16),
  suggested external port(16), requested lifetime(32)`` (12 bytes); response: ``0, 128 +
  opcode, result(16), epoch(32), internal port(16), mapped external port(16), lifetime(32)``
  (16 bytes). Lifetime 0 deletes a mapping (with external port 0); internal port 0 too
  deletes all of the client's mappings for that protocol.

Theory of operation. :class:`NatPmpRequest` is one request: it yields the datagram to send
at ``now`` and again on each retransmission (RFC 6886 §3.1: first after 250 ms, doubling,
at most 9 tries; we default to fewer), and consumes datagrams, accepting only a well-formed
response from the gateway's address and port to *this* opcode. Responses from anywhere else,
of the wrong size or opcode, are ignored (a spoofed or stray datagram must not end the
exchange). A non-zero result code ends it with :class:`NatPmpFailed`.

``epoch`` lets a client notice a gateway reboot (§3.6): it goes backwards.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

from glueberry.errors import LocalProtocolError, RemoteProtocolError

NATPMP_PORT: Final = 5351
VERSION: Final = 0
#: RFC 6886 §3.1: initial retransmission interval.
INITIAL_RTO: Final = 0.25
#: RFC 6886 §3.1 allows 9 tries (~64 s); a library waiting that long is unhelpful.
DEFAULT_TRIES: Final = 6
#: RFC 6886 §3.3: recommended mapping lifetime.
DEFAULT_LIFETIME: Final = 7200

_PROTO: Final = "nat-pmp"

Addr = tuple[str, int]


class Opcode(enum.IntEnum):
    EXTERNAL_ADDRESS = 0
    MAP_UDP = 1
    MAP_TCP = 2


class ResultCode(enum.IntEnum):
    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    NOT_AUTHORIZED = 2
    NETWORK_FAILURE = 3
    OUT_OF_RESOURCES = 4
    UNSUPPORTED_OPCODE = 5


def opcode_for(protocol: Literal["tcp", "udp"]) -> Opcode:
    return Opcode.MAP_TCP if protocol == "tcp" else Opcode.MAP_UDP


@dataclass(frozen=True, slots=True, kw_only=True)
class ExternalAddressResponse:
    result: int
    epoch: int
    address: ipaddress.IPv4Address


@dataclass(frozen=True, slots=True, kw_only=True)
class MappingResponse:
    opcode: Opcode
    result: int
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int


Response = ExternalAddressResponse | MappingResponse


def _check_port(port: int, name: str) -> None:
    if not 0 <= port <= 0xFFFF:
        raise LocalProtocolError(f"{name} out of range", protocol=_PROTO)


def encode_external_address_request() -> bytes:
    return bytes((VERSION, Opcode.EXTERNAL_ADDRESS))


def encode_mapping_request(
    opcode: Opcode, internal_port: int, external_port: int, lifetime: int
) -> bytes:
    """A MAP request; ``lifetime=0`` (with ``external_port=0``) deletes."""
    if opcode not in (Opcode.MAP_TCP, Opcode.MAP_UDP):
        raise LocalProtocolError("mapping opcode must be MAP_TCP or MAP_UDP", protocol=_PROTO)
    _check_port(internal_port, "internal port")
    _check_port(external_port, "external port")
    if not 0 <= lifetime <= 0xFFFFFFFF:
        raise LocalProtocolError("lifetime out of range", protocol=_PROTO)
    return struct.pack("!BBHHHI", VERSION, opcode, 0, internal_port, external_port, lifetime)


def decode_response(data: bytes) -> Response:
    """Decode a gateway response.

    Raises:
        RemoteProtocolError: wrong size, version, or opcode for a response.
    """
    if len(data) < 4:
        raise RemoteProtocolError("NAT-PMP response shorter than 4 bytes", protocol=_PROTO)
    version, op = data[0], data[1]
    if version != VERSION:
        raise RemoteProtocolError(f"NAT-PMP version {version}", protocol=_PROTO)
    if op < 128:
        raise RemoteProtocolError("not a NAT-PMP response", protocol=_PROTO)
    try:
        opcode = Opcode(op - 128)
    except ValueError:
        raise RemoteProtocolError(f"unknown NAT-PMP opcode {op}", protocol=_PROTO) from None
    result = int.from_bytes(data[2:4], "big")
    if opcode is Opcode.EXTERNAL_ADDRESS:
        # An error response may be just 8 bytes (RFC 6886 §3.5: results other than 0 still
        # carry the epoch; the address is meaningless).
        if result != 0 and len(data) >= 8:
            epoch = int.from_bytes(data[4:8], "big")
            return ExternalAddressResponse(
                result=result, epoch=epoch, address=ipaddress.IPv4Address(0)
            )
        if len(data) != 12:
            raise RemoteProtocolError("external address response must be 12 bytes", protocol=_PROTO)
        _, _, _, epoch, addr = struct.unpack("!BBHI4s", data)
        return ExternalAddressResponse(
            result=result, epoch=epoch, address=ipaddress.IPv4Address(addr)
        )
    if result != 0 and 8 <= len(data) < 16:
        epoch = int.from_bytes(data[4:8], "big")
        return MappingResponse(
            opcode=opcode, result=result, epoch=epoch, internal_port=0, external_port=0, lifetime=0
        )
    if len(data) != 16:
        raise RemoteProtocolError("mapping response must be 16 bytes", protocol=_PROTO)
    _, _, _, epoch, iport, eport, life = struct.unpack("!BBHIHHI", data)
    return MappingResponse(
        opcode=opcode,
        result=result,
        epoch=epoch,
        internal_port=iport,
        external_port=eport,
        lifetime=life,
    )


# --- request machine -----------------------------------------------------------------------


class NatPmpEvent:
    """Base of NAT-PMP events. Events are not meant to be subclassed further."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class NatPmpSucceeded(NatPmpEvent):
    response: Response


@dataclass(frozen=True, slots=True, kw_only=True)
class NatPmpFailed(NatPmpEvent):
    """The gateway answered with a non-zero result code."""

    result: int
    response: Response


@dataclass(frozen=True, slots=True, kw_only=True)
class NatPmpTimedOut(NatPmpEvent):
    tries: int


class NatPmpRequest:
    """One NAT-PMP request to ``gateway`` with RFC 6886 retransmissions.

    Call order: ``datagrams_to_send(now)`` (first send) → ``receive_datagram*`` /
    ``handle_timer`` at ``get_timer()`` → ``datagrams_to_send(now)`` (retransmission) … until
    ``next_event`` yields a result.
    """

    def __init__(
        self,
        payload: bytes,
        *,
        gateway: Addr,
        now: float,
        tries: int = DEFAULT_TRIES,
        initial_rto: float = INITIAL_RTO,
    ) -> None:
        if len(payload) < 2 or payload[0] != VERSION:
            raise LocalProtocolError("not a NAT-PMP request", protocol=_PROTO)
        if tries < 1:
            raise LocalProtocolError("tries must be at least 1", protocol=_PROTO)
        self._payload = payload
        self._opcode = payload[1]
        self._gateway = (str(ipaddress.ip_address(gateway[0])), gateway[1])
        self._tries_left = tries
        self._tries = 0
        self._rto = initial_rto
        self._due: float | None = now
        self._events: deque[NatPmpEvent] = deque()
        self._done = False

    @property
    def finished(self) -> bool:
        return self._done

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        if self._done or self._due is None or now < self._due:
            return []
        self._tries_left -= 1
        self._tries += 1
        self._due = now + self._rto
        self._rto *= 2
        return [(self._payload, self._gateway)]

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        """Consume a datagram; anything that is not our gateway's answer is ignored."""
        if self._done:
            return
        try:
            src = (str(ipaddress.ip_address(addr[0])), addr[1])
        except ValueError:
            return
        if src != self._gateway:
            return
        try:
            resp = decode_response(data)
        except RemoteProtocolError:
            return
        if int(resp.opcode if isinstance(resp, MappingResponse) else 0) != self._opcode:
            return
        self._done = True
        self._due = None
        if resp.result == ResultCode.SUCCESS:
            self._events.append(NatPmpSucceeded(response=resp))
        else:
            self._events.append(NatPmpFailed(result=resp.result, response=resp))

    def get_timer(self) -> float | None:
        return self._due

    def handle_timer(self, now: float) -> None:
        if self._done or self._due is None or now < self._due:
            return
        if self._tries_left <= 0:
            self._done = True
            self._due = None
            self._events.append(NatPmpTimedOut(tries=self._tries))

    def next_event(self) -> NatPmpEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[NatPmpEvent]:
        while self._events:
            yield self._events.popleft()


__all__ = [
    "DEFAULT_LIFETIME",
    "NATPMP_PORT",
    "ExternalAddressResponse",
    "MappingResponse",
    "NatPmpEvent",
    "NatPmpFailed",
    "NatPmpRequest",
    "NatPmpSucceeded",
    "NatPmpTimedOut",
    "Opcode",
    "ResultCode",
    "decode_response",
    "encode_external_address_request",
    "encode_mapping_request",
    "opcode_for",
]
