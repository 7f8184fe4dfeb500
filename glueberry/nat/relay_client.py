"""Circuit relay v2 client: reservations with relays.

Spec: https://github.com/libp2p/specs/blob/master/relay/circuit-v2.md (r3), "Reservation".
Behaviour matched: go-libp2p ``p2p/protocol/circuitv2/client.Reserve``.

Theory of operation
-------------------
:meth:`RelayClient.reserve` connects to the relay (a direct connection: never a reservation
over a relayed connection), opens ``/libp2p/circuit/relay/0.2.0/hop`` and runs
:class:`glueberry.proto.relay.HopReserveClient`. The result is a :class:`Reservation`: the
expiry, the limit circuits will carry, the (advisory) voucher, and our relayed addresses,
``<relay addr>/p2p/<relay>/p2p-circuit`` for each address the relay announced - or, if it
announced none, the address we reached it at.

The client keeps no schedule of its own: *when* to reserve, refresh and give up is
:class:`glueberry.nat.policy.AutoRelayBehaviour`'s decision, executed by the NAT manager,
which also hands the addresses to the circuit transport's listener.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from glueberry.errors import ConnectError, ConnectTimeout, GlueberryError
from glueberry.proto import relay as r
from glueberry.transport.circuit import CIRCUIT, run_relay_machine
from glueberry.wire import pb_nat as pb
from glueberry.wire.multiaddr import Multiaddr, MultiaddrError

if TYPE_CHECKING:
    from glueberry.net.host import Host
    from glueberry.wire.identity import PeerId

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    """A granted reservation."""

    relay: PeerId
    expire: int
    """UTC seconds since the epoch."""
    addrs: tuple[Multiaddr, ...]
    """Our relayed addresses through this relay."""
    limit: pb.Limit | None
    voucher: pb.Voucher | None
    voucher_problem: str | None


class RelayClient:
    """Makes reservations with relays on behalf of ``host``.

    Args:
        host: the host (with a transport that can reach the relays).
        timeout: seconds for the whole reservation (go: 1 min).
    """

    def __init__(self, host: Host, *, timeout: float = r.DEFAULT_HOP_TIMEOUT) -> None:
        self.host = host
        self.timeout = timeout

    async def reserve(self, relay: PeerId, addrs: Iterable[str | Multiaddr] = ()) -> Reservation:
        """Reserve (or refresh) a slot with ``relay``.

        Raises:
            ConnectError: the relay refused (``RESERVATION_REFUSED`` etc. in the message),
                could not be reached, or is reachable only through another relay.
            ConnectTimeout: no answer within ``timeout``.
            RemoteProtocolError: the relay broke the protocol.
        """
        host = self.host
        conn = await host.connect(relay, addrs)
        if conn.transport_name == "circuit":
            raise ConnectError(f"relay {relay} is reachable only through a relay", peer_id=relay)
        stream = await host.new_stream(relay, [r.HOP_PROTOCOL])
        machine = r.HopReserveClient(
            relay=relay, local=host.peer_id, now=time.time(), timeout=self.timeout
        )
        try:
            event = await run_relay_machine(stream, machine)
        except BaseException:
            stream.reset()
            raise
        try:
            await stream.close()
        except GlueberryError:
            stream.reset()
        if isinstance(event, r.ReservationRefused):
            raise ConnectError(
                f"relay {relay} refused the reservation: {event.status.name}", peer_id=relay
            )
        if not isinstance(event, r.ReservationAccepted):
            raise ConnectTimeout(f"relay {relay} did not answer RESERVE", peer_id=relay)
        if event.voucher_problem:
            logger.info("relay %s voucher not accepted: %s", relay, event.voucher_problem)
        circuit_addrs: list[Multiaddr] = []
        for raw in event.addrs:
            try:
                ma = Multiaddr(raw)
            except MultiaddrError:
                continue
            if ma.is_relayed:
                continue
            if ma.peer_id is None:
                ma = ma.with_p2p(relay)
            circuit_addrs.append(ma.encapsulate(CIRCUIT))
        if not circuit_addrs and conn.transport_name == "tcp":
            host_ip, port = conn.remote_address[0], conn.remote_address[1]
            circuit_addrs.append(
                Multiaddr.from_socket_address(host_ip, port).with_p2p(relay).encapsulate(CIRCUIT)
            )
        return Reservation(
            relay=relay,
            expire=event.expire,
            addrs=tuple(dict.fromkeys(circuit_addrs)),
            limit=event.limit,
            voucher=event.voucher,
            voucher_problem=event.voucher_problem,
        )


__all__ = ["RelayClient", "Reservation"]
