"""Circuit relay v2 server: reservations, CONNECT → STOP, and the limited byte splice.

Spec: https://github.com/libp2p/specs/blob/master/relay/circuit-v2.md (r3). Behaviour
matched: go-libp2p ``p2p/protocol/circuitv2/relay`` (libp2p-notes §2.10, B-23).

Theory of operation
-------------------
The service is the asyncio driver of :class:`glueberry.proto.relay.HopServer` and
:class:`~glueberry.proto.relay.StopClient` on a :class:`~glueberry.net.host.Host`; all node
state sits in one pure :class:`~glueberry.proto.relay.RelayTable`. It is **off by default**:
nothing serves ``/libp2p/circuit/relay/0.2.0/hop`` until a :class:`RelayService` is created
(the NAT manager's ``enable_relay_service`` switch).

* RESERVE: the machine answers by itself (TTL 1 h, 128 reservations, 8 per IP, one per peer;
  a signed voucher; the relay's public addresses). A reservation lives while the peer stays
  connected: when its last connection closes it is dropped.
* CONNECT: the target must hold a reservation *and* be connected now - the relay never dials
  anyone on a client's behalf (active relay is deprecated). A STOP stream goes to the target;
  on OK both streams become one circuit.
* The circuit: two copy loops move bytes, each asking a
  :class:`~glueberry.proto.relay.CircuitLimiter` how much it may forward. When the data budget
  of a direction or the duration is spent, both streams get a FIN right after the last bytes
  within the budget, then (:data:`LIMIT_RESET_DELAY` later) a reset - resetting at once would
  make the peers' muxers discard those last bytes - and
  :class:`~glueberry.nat.events.RelayCircuitLimitReached` is published. The endpoints, which
  know the announced limit, report it to their applications too
  (:mod:`glueberry.transport.circuit`). EOF travels as a half-close; a reset on either side
  resets the other.
* Requests over relayed connections are refused (PERMISSION_DENIED); malformed ones get
  MALFORMED_MESSAGE before the stream is reset.

Every task runs in the host's task group (stream handlers), so closing the host ends every
circuit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from glueberry.errors import GlueberryError, RemoteProtocolError, StreamError, TransportError
from glueberry.nat.events import (
    NatEvent,
    RelayCircuitClosed,
    RelayCircuitLimitReached,
    RelayCircuitOpened,
    RelayReservationServed,
)
from glueberry.proto import relay as r
from glueberry.transport.circuit import run_relay_machine
from glueberry.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from glueberry.net.host import Host
    from glueberry.transport.base import MuxedConnection, Stream

logger = logging.getLogger(__name__)

#: Bytes read from one side of a circuit at once.
SPLICE_CHUNK: Final = 16 * 1024
#: Seconds between the FINs that end a circuit at its limit and the resets.
LIMIT_RESET_DELAY: Final = 1.0


class RelayService:
    """Serve circuit relay v2 on ``host``.

    Args:
        host: the host (should be publicly reachable).
        limits: reservation and circuit limits (go's defaults; circuits 2 min / 128 KiB).
        publish: receives the service's events (reservations, circuits, limits).
        allow_private_addrs: announce private addresses in reservations (labs, LANs).
        sign_vouchers: include a signed reservation voucher (go does).
    """

    def __init__(
        self,
        host: Host,
        *,
        limits: r.RelayLimits | None = None,
        publish: Callable[[NatEvent], None] | None = None,
        allow_private_addrs: bool = False,
        sign_vouchers: bool = True,
    ) -> None:
        self.host = host
        self.table = r.RelayTable(limits)
        self._publish = publish
        self.allow_private_addrs = allow_private_addrs
        self.sign_vouchers = sign_vouchers
        #: Counters: reservations, refused, circuits, circuits_failed, limit_data,
        #: limit_duration, bytes relayed.
        self.stats: dict[str, int] = {
            "reservations": 0,
            "refused": 0,
            "circuits": 0,
            "circuits_failed": 0,
            "limit_data": 0,
            "limit_duration": 0,
            "bytes": 0,
        }
        host.set_stream_handler(r.HOP_PROTOCOL, self._serve_hop)
        self._remove_listener = host.add_connection_listener(None, self._on_disconnected)

    def close(self) -> None:
        """Stop serving (circuits already open run until they end)."""
        self.host.remove_stream_handler(r.HOP_PROTOCOL)
        self._remove_listener()

    @property
    def limits(self) -> r.RelayLimits:
        return self.table.limits

    def _emit(self, event: NatEvent) -> None:
        if self._publish is not None:
            try:
                self._publish(event)
            except Exception:
                logger.exception("relay event subscriber failed")

    def _on_disconnected(self, conn: MuxedConnection) -> None:
        peer = conn.remote_peer
        if not self.host.connections(peer):
            self.table.remove_peer(peer)

    def _public_addrs(self) -> tuple[bytes, ...]:
        out: list[bytes] = []
        for a in self.host.addrs:
            if a.is_relayed or a.is_loopback or a.is_unspecified:
                continue
            if a.is_private and not self.allow_private_addrs:
                continue
            out.append(a.without_p2p().to_bytes())
        return tuple(out)

    # --- HOP ------------------------------------------------------------------------------

    async def _serve_hop(self, stream: Stream) -> None:
        conn = stream.connection
        peer = conn.remote_peer
        relayed = conn.transport_name == "circuit"
        machine = r.HopServer(
            peer=peer,
            remote_ip=_remote_ip(conn),
            relayed=relayed,
            table=self.table,
            now=time.time(),
            relay_key=self.host.identity if self.sign_vouchers else None,
            relay_addrs=self._public_addrs(),
        )
        try:
            event = await run_relay_machine(stream, machine)
        except (RemoteProtocolError, StreamError, TransportError) as exc:
            logger.debug("HOP from %s failed: %r", peer, exc)
            await _flush_and_reset(stream, machine)
            return
        if isinstance(event, r.ReservationServed):
            self.stats["reservations"] += 1
            self._emit(RelayReservationServed(peer=peer, expire=event.expire))
            await _flush_and_close(stream, machine)
            return
        if isinstance(event, r.ConnectRequested):
            await self._connect(stream, machine, event)
            return
        if isinstance(event, r.RequestDenied):
            self.stats["refused"] += 1
            logger.debug("HOP %s from %s denied: %s", event.kind, peer, event.status.name)
        await _flush_and_close(stream, machine)

    async def _connect(self, hop: Stream, machine: r.HopServer, req: r.ConnectRequested) -> None:
        src, dst = req.src, req.dst
        stop: Stream | None = None
        established: r.RelayEvent | None = None
        try:
            if self.host.connection_for(dst) is None:
                raise _NoRoute
            stop = await self.host.new_stream(dst, [r.STOP_PROTOCOL])
            client = r.StopClient(src=src, limit=req.limit, now=time.time())
            established = await run_relay_machine(stop, client)
        except (_NoRoute, GlueberryError, OSError) as exc:
            logger.debug("STOP to %s for %s failed: %r", dst, src, exc)
            established = None
        if not isinstance(established, r.CircuitEstablished):
            self.stats["circuits_failed"] += 1
            if stop is not None:
                stop.reset()
            machine.stop_failed()
            await _flush_and_close(hop, machine)
            return
        assert stop is not None
        machine.stop_succeeded()
        try:
            ok = await run_relay_machine(hop, machine)
        except (GlueberryError, OSError):
            ok = None
        if not isinstance(ok, r.CircuitEstablished):
            self.table.close_circuit(src, dst)
            stop.reset()
            hop.reset()
            return
        self.stats["circuits"] += 1
        self._emit(RelayCircuitOpened(src=src, dst=dst, limit=req.limit))
        try:
            await self._splice(hop, ok.trailing_data, stop, established.trailing_data, req)
        finally:
            self.table.close_circuit(src, dst)

    async def _splice(
        self, hop: Stream, hop_rest: bytes, stop: Stream, stop_rest: bytes, req: r.ConnectRequested
    ) -> None:
        limiter = r.CircuitLimiter(req.limit, time.time())
        moved = {"src_to_dst": 0, "dst_to_src": 0}

        async def pump(rd: Stream, wr: Stream, first: bytes, direction: r.Direction) -> None:
            data = first
            while True:
                if data:
                    n = limiter.allow(direction, len(data), time.time())
                    if n:
                        await wr.write(data[:n] if n < len(data) else data)
                        moved[direction] += n
                    if limiter.reached:
                        raise _LimitHit
                data = await rd.read(SPLICE_CHUNK)
                if not data:
                    await wr.close_write()
                    return

        reason = "closed"
        deadline = limiter.get_timer()
        try:
            async with asyncio.timeout(None if deadline is None else deadline - time.time()):
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(pump(hop, stop, hop_rest, "src_to_dst"))
                        tg.create_task(pump(stop, hop, stop_rest, "dst_to_src"))
                except* _LimitHit:
                    pass
                except* (StreamError, TransportError, OSError) as group:
                    reason = "reset"
                    logger.debug("circuit %s -> %s: %r", req.src, req.dst, group.exceptions[0])
        except TimeoutError:
            limiter.handle_timer(time.time())
        for event in limiter.events():
            if isinstance(event, r.CircuitLimitReached):
                reason = event.reason
                self.stats[f"limit_{event.reason}"] += 1
                self._emit(
                    RelayCircuitLimitReached(
                        src=req.src,
                        dst=req.dst,
                        reason=event.reason,
                        src_to_dst=moved["src_to_dst"],
                        dst_to_src=moved["dst_to_src"],
                    )
                )
        if reason in ("data", "duration"):
            # FIN both ends after the last bytes within the budget (a reset would make the
            # peers discard them), give them a moment to read, then reset.
            with contextlib.suppress(GlueberryError, OSError):
                await hop.close_write()
                await stop.close_write()
            await asyncio.sleep(LIMIT_RESET_DELAY)
            hop.reset()
            stop.reset()
        elif reason == "reset":
            hop.reset()
            stop.reset()
        else:
            await hop.close()
            await stop.close()
        self.stats["bytes"] += moved["src_to_dst"] + moved["dst_to_src"]
        self._emit(
            RelayCircuitClosed(
                src=req.src,
                dst=req.dst,
                reason=reason,
                src_to_dst=moved["src_to_dst"],
                dst_to_src=moved["dst_to_src"],
            )
        )


class _NoRoute(Exception):
    """The CONNECT target is not connected to the relay."""


class _LimitHit(Exception):
    """A circuit used up its limit (internal)."""


def _remote_ip(conn: MuxedConnection) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if conn.transport_name not in ("tcp", "quic-v1"):
        return None
    try:
        return ipaddress.ip_address(conn.remote_address[0])
    except (ValueError, IndexError):
        return None


async def _flush_and_close(stream: Stream, machine: r.HopServer) -> None:
    try:
        out = machine.data_to_send()
        if out:
            await stream.write(out)
        await stream.close()
    except (GlueberryError, OSError):
        stream.reset()


async def _flush_and_reset(stream: Stream, machine: r.HopServer) -> None:
    with contextlib.suppress(GlueberryError, OSError):
        out = machine.data_to_send()
        if out:
            await stream.write(out)
    stream.reset()


def relay_addr_of(host: Host) -> list[Multiaddr]:
    """``<addr>/p2p/<relay>`` for each address of ``host`` (what clients configure)."""
    return [a.with_p2p(host.peer_id) for a in host.addrs if not a.is_relayed]


__all__ = ["SPLICE_CHUNK", "RelayService", "relay_addr_of"]
