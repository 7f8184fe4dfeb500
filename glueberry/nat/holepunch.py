"""DCUtR service: turn a relayed connection into a direct one by TCP or QUIC hole punching.

Spec: https://github.com/libp2p/specs/blob/master/relay/DCUtR.md (r1) and
connections/hole-punching.md. Behaviour matched: go-libp2p ``p2p/protocol/holepunch``
(libp2p-notes §2.11, B-25).

Theory of operation
-------------------
A dialed B through a relay; B (the inbound side) drives the exchange. The exchange itself is
:mod:`glueberry.proto.dcutr`; this module runs it over a ``/libp2p/dcutr`` stream *on the
relayed connection* and then performs the punch:

* **B** (:meth:`HolePunchService.attempt`, one attempt per call): CONNECT with our addresses,
  measure the RTT, SYNC, wait RTT/2, then punch every usable address of A at once:

  - TCP: dial it **from our listen port**
    (:meth:`~glueberry.transport.tcp_reuse.ReuseportTcpTransport.dial_punch`). For
    everything above TCP B is the *server* although its socket dialed (the simultaneous
    open has no real dialer), so a socket that connects is handed to the host as if
    accepted (:meth:`~glueberry.transport.tcp_reuse.ReuseportTcpTransport.adopt_inbound`):
    the host runs the multistream listener, the Noise responder and the yamux server on it.
  - QUIC: send random UDP datagrams to it from our QUIC listening socket
    (:meth:`~glueberry.nat.quic_punch.QuicPuncher.spray`) until the connection is up. A's
    QUIC dial then reaches our listener, which accepts it: B is the QUIC server.
* **A** (the ``/libp2p/dcutr`` handler): answer CONNECT with our addresses; on SYNC dial
  B's addresses at once as ordinary outbound connections (``host.connect`` with no peer
  ID; the port-reusing TCP transport and the QUIC transport both dial from the listen
  port): A is the client above TCP and the QUIC client.

For TCP the SYNs of both sides open each NAT's mapping for the other and the kernels
complete a simultaneous open; for QUIC B's datagrams open B's NAT for A's Initial. As in
go-libp2p, TCP and QUIC addresses are punched together, with no preference between them.
Whichever way a direct connection to the peer comes up, the attempt succeeds once the host
has it (:meth:`HolePunchService.wait_direct`), and the other punches stop; moving traffic to
it and closing the relayed connection is the NAT manager's job (policy:
:class:`HolePunchBehaviour`). An attempt fails on a protocol error, no usable address, a
stream timeout, or no direct connection within ``punch_timeout``; the spec's three attempts
are the policy's business.

Addresses: we offer our public (or, with ``allow_private``, any non-loopback) direct
addresses we can punch with - TCP when the port-reusing TCP transport is there, ``/quic-v1``
when we listen on QUIC on the wildcard address - listen addresses plus the external ones the
NAT manager learnt (observed, port-mapped). Remote addresses go through the machine's filter
(no relay, loopback, link-local; private only if allowed; at most 16), then we keep those of
the kinds we can punch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from glueberry.errors import (
    ConnectError,
    GlueberryError,
    LocalProtocolError,
    NodeStateError,
    RemoteProtocolError,
)
from glueberry.proto import dcutr as d
from glueberry.wire import pb_nat as pb
from glueberry.wire.multiaddr import Multiaddr, MultiaddrError

if TYPE_CHECKING:
    from glueberry.nat.quic_punch import QuicPuncher
    from glueberry.net.host import Host
    from glueberry.transport.base import MuxedConnection, Stream
    from glueberry.transport.tcp_reuse import ReuseportTcpTransport
    from glueberry.wire.identity import PeerId

logger = logging.getLogger(__name__)

DCUTR_PROTOCOL: Final = d.DCUTR_PROTOCOL
#: Seconds to wait for the direct connection after the punch fired (go: dial timeout 10 s).
DEFAULT_PUNCH_TIMEOUT: Final = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptResult:
    """Outcome of one DCUtR attempt."""

    ok: bool
    role: Literal["initiator", "responder"]
    reason: str
    """``"direct"`` on success, else why it failed."""
    rtt: float | None = None
    remote_addrs: tuple[Multiaddr, ...] = ()
    connection: MuxedConnection | None = None


def is_direct(conn: MuxedConnection) -> bool:
    return conn.transport_name != "circuit" and not conn.is_closed


class HolePunchService:
    """Serves ``/libp2p/dcutr`` (A's side) and runs attempts (B's side) for ``host``.

    Args:
        host: the host; its TCP transport must be ``tcp`` (port reuse).
        tcp: that transport (None: no TCP punching).
        quic: the host's QUIC puncher (None: no QUIC punching).
        local_addrs: our candidate addresses (called per attempt).
        allow_private: offer and accept private addresses (labs, LANs).
        punch_timeout: seconds from the punch to a direct connection.
        stream_timeout: deadline of the CONNECT/SYNC exchange (go: 1 min).
        on_punched: called with each result the responder side (A) sees.
    """

    def __init__(
        self,
        host: Host,
        tcp: ReuseportTcpTransport | None,
        *,
        quic: QuicPuncher | None = None,
        local_addrs: Callable[[], list[Multiaddr]] | None = None,
        allow_private: bool = False,
        punch_timeout: float = DEFAULT_PUNCH_TIMEOUT,
        stream_timeout: float = d.DEFAULT_STREAM_TIMEOUT,
        on_punched: Callable[[PeerId, AttemptResult], None] | None = None,
    ) -> None:
        self.host = host
        self.tcp = tcp
        self.quic = quic
        self._local_addrs = local_addrs
        self.allow_private = allow_private
        self.punch_timeout = punch_timeout
        self.stream_timeout = stream_timeout
        self._on_punched = on_punched
        self._waiters: dict[PeerId, list[asyncio.Future[MuxedConnection]]] = {}
        #: Counters: attempts, succeeded, failed, served.
        self.stats: dict[str, int] = {"attempts": 0, "succeeded": 0, "failed": 0, "served": 0}
        host.set_stream_handler(DCUTR_PROTOCOL, self._serve)
        self._remove_listener = host.add_connection_listener(self._on_connected, None)

    def close(self) -> None:
        self.host.remove_stream_handler(DCUTR_PROTOCOL)
        self._remove_listener()
        for futs in self._waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.cancel()
        self._waiters.clear()

    # --- addresses ------------------------------------------------------------------------

    def punchable(self, addr: Multiaddr) -> bool:
        """We can punch to (and offer) an address of this kind: TCP with the port-reusing
        transport, ``/quic-v1`` with a wildcard QUIC listener of its IP family."""
        kind = addr.transport_kind()
        if kind == "tcp":
            return self.tcp is not None
        if kind == "quic-v1":
            return self.quic is not None and self.quic.can_punch(addr)
        return False

    def local_addrs(self) -> list[Multiaddr]:
        """Direct addresses to offer (public; any non-loopback with ``allow_private``)."""
        source = self._local_addrs() if self._local_addrs is not None else self.host.addrs
        out: list[Multiaddr] = []
        for given in source:
            a = given.without_p2p()
            if a.is_relayed or a.is_loopback or a.is_unspecified or not self.punchable(a):
                continue
            if a.is_private and not self.allow_private:
                continue
            if a not in out:
                out.append(a)
        return out

    def _punch_addrs(self, raw: tuple[bytes, ...]) -> tuple[Multiaddr, ...]:
        out: list[Multiaddr] = []
        for b in raw:
            try:
                ma = Multiaddr(b).without_p2p()
            except MultiaddrError:
                continue
            if self.punchable(ma) and ma not in out:
                out.append(ma)
        return tuple(out)

    # --- direct connections ------------------------------------------------------------------

    def direct_connection(self, peer: PeerId) -> MuxedConnection | None:
        for conn in self.host.connections(peer):
            if is_direct(conn):
                return conn
        return None

    def _on_connected(self, conn: MuxedConnection) -> None:
        if not is_direct(conn):
            return
        for fut in self._waiters.pop(conn.remote_peer, []):
            if not fut.done():
                fut.set_result(conn)

    async def wait_direct(self, peer: PeerId, timeout: float) -> MuxedConnection | None:  # noqa: ASYNC109
        """A direct connection to ``peer``: one that exists, or the next within ``timeout``."""
        conn = self.direct_connection(peer)
        if conn is not None:
            return conn
        fut: asyncio.Future[MuxedConnection] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(peer, []).append(fut)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return None
        finally:
            waiting = self._waiters.get(peer)
            if waiting is not None:
                with contextlib.suppress(ValueError):
                    waiting.remove(fut)
                if not waiting:
                    del self._waiters[peer]

    # --- B: the initiator -----------------------------------------------------------------------

    async def attempt(self, peer: PeerId) -> AttemptResult:
        """One DCUtR attempt with ``peer`` over our (inbound) relayed connection to it.

        Never raises for network or protocol failures: they come back as a failed result.
        """
        self.stats["attempts"] += 1
        result = await self._attempt(peer)
        self.stats["succeeded" if result.ok else "failed"] += 1
        return result

    async def _attempt(self, peer: PeerId) -> AttemptResult:
        loop = asyncio.get_running_loop()
        local = [a.to_bytes() for a in self.local_addrs()]
        if not local:
            return AttemptResult(ok=False, role="initiator", reason="no local address to offer")
        try:
            stream = await self.host.new_stream(peer, [DCUTR_PROTOCOL])
        except (GlueberryError, OSError) as exc:
            return AttemptResult(ok=False, role="initiator", reason=f"stream: {exc!r}")
        machine = d.DcutrInitiator(
            local_addrs=local,
            now=loop.time(),
            timeout=self.stream_timeout,
            allow_private=self.allow_private,
        )
        try:
            event = await _run(stream, machine)
        except (GlueberryError, OSError) as exc:
            stream.reset()
            return AttemptResult(ok=False, role="initiator", reason=f"exchange: {exc!r}")
        with contextlib.suppress(GlueberryError, OSError):
            await stream.close()
        if not isinstance(event, d.PunchTimeReached):
            reason = event.reason if isinstance(event, d.HolePunchFailed) else "no punch"
            return AttemptResult(ok=False, role="initiator", reason=reason)
        addrs = self._punch_addrs(event.remote_addrs)
        logger.debug("dcutr with %s: rtt %.3f s, punching %s as server", peer, event.rtt, addrs)
        conn = await self.punch(peer, addrs, server=True)
        return AttemptResult(
            ok=conn is not None,
            role="initiator",
            reason="direct" if conn is not None else "no direct connection",
            rtt=event.rtt,
            remote_addrs=addrs,
            connection=conn,
        )

    # --- A: the responder -----------------------------------------------------------------------

    async def _serve(self, stream: Stream) -> None:
        conn = stream.connection
        peer = conn.remote_peer
        if conn.transport_name != "circuit":
            # DCUtR runs over relayed connections only; on a direct one there is nothing to do.
            stream.reset()
            return
        self.stats["served"] += 1
        local = [a.to_bytes() for a in self.local_addrs()]
        loop = asyncio.get_running_loop()
        try:
            machine = d.DcutrResponder(
                local_addrs=local,
                now=loop.time(),
                timeout=self.stream_timeout,
                allow_private=self.allow_private,
            )
        except LocalProtocolError:
            logger.info("dcutr from %s: no address to offer; refusing", peer)
            stream.reset()
            return
        try:
            event = await _run(stream, machine)
        except (GlueberryError, OSError) as exc:
            logger.debug("dcutr from %s failed: %r", peer, exc)
            stream.reset()
            self._report(peer, AttemptResult(ok=False, role="responder", reason=repr(exc)))
            return
        with contextlib.suppress(GlueberryError, OSError):
            await stream.close()
        if not isinstance(event, d.PunchTimeReached):
            reason = event.reason if isinstance(event, d.HolePunchFailed) else "no punch"
            self._report(peer, AttemptResult(ok=False, role="responder", reason=reason))
            return
        addrs = self._punch_addrs(event.remote_addrs)
        logger.debug("dcutr from %s: SYNC, punching %s as client", peer, addrs)
        # The punch outlives this handler: a handler belongs to the relayed connection, which
        # is closed as soon as the direct one is up - possibly before we could report it.
        try:
            self.host.spawn(self._respond(peer, addrs), name="dcutr-punch")
        except NodeStateError:
            pass  # the host is closing

    async def _respond(self, peer: PeerId, addrs: tuple[Multiaddr, ...]) -> None:
        direct = await self.punch(peer, addrs, server=False)
        self._report(
            peer,
            AttemptResult(
                ok=direct is not None,
                role="responder",
                reason="direct" if direct is not None else "no direct connection",
                remote_addrs=addrs,
                connection=direct,
            ),
        )

    def _report(self, peer: PeerId, result: AttemptResult) -> None:
        if self._on_punched is not None:
            try:
                self._on_punched(peer, result)
            except Exception:
                logger.exception("hole punch callback failed")

    # --- the punch ------------------------------------------------------------------------------

    async def punch(
        self, peer: PeerId, addrs: Sequence[Multiaddr], *, server: bool
    ) -> MuxedConnection | None:
        """The punch alone (what follows the DCUtR exchange): punch every address at once;
        the first direct connection to ``peer`` within ``punch_timeout`` wins and ends the
        others. ``server`` is B's role (TCP: dial and adopt as responder; QUIC: spray),
        otherwise A's (dial). Addresses we cannot punch are skipped."""
        addrs = [a for a in addrs if self.punchable(a)]
        if not addrs:
            return None
        async with asyncio.TaskGroup() as tg:
            waiter = tg.create_task(self.wait_direct(peer, self.punch_timeout))
            dials = [tg.create_task(self._punch_one(peer, a, server=server)) for a in addrs]
            conn = await waiter
            for t in dials:
                t.cancel()
        return conn

    async def _punch_one(self, peer: PeerId, addr: Multiaddr, *, server: bool) -> None:
        if not server:
            await self._dial_as_client(peer, addr)
        elif addr.transport_kind() == "quic-v1":
            await self._spray(peer, addr)
        else:
            await self._dial_as_server(peer, addr)

    async def _spray(self, peer: PeerId, addr: Multiaddr) -> None:
        assert self.quic is not None
        try:
            await self.quic.spray(addr, duration=self.punch_timeout)
        except (GlueberryError, OSError) as exc:
            logger.debug("QUIC punch to %s (%s) failed: %r", peer, addr, exc)

    async def _dial_as_server(self, peer: PeerId, addr: Multiaddr) -> None:
        assert self.tcp is not None
        try:
            raw = await self.tcp.dial_punch(addr, timeout=self.punch_timeout)
        except (GlueberryError, OSError) as exc:
            logger.debug("punch to %s (%s) failed: %r", peer, addr, exc)
            return
        try:
            self.tcp.adopt_inbound(raw)
        except ConnectError as exc:
            logger.debug("punched connection to %s not adopted: %r", addr, exc)

    async def _dial_as_client(self, peer: PeerId, addr: Multiaddr) -> None:
        try:
            conn = await self.host.connect(None, [addr])
        except (GlueberryError, OSError) as exc:
            logger.debug("punch to %s (%s) failed: %r", peer, addr, exc)
            return
        if conn.remote_peer != peer:
            logger.info("punch to %s reached %s instead; closing", addr, conn.remote_peer)
            await conn.close()


async def _run(stream: Stream, machine: d.DcutrInitiator | d.DcutrResponder) -> d.DcutrEvent:
    """Drive a DCUtR machine until it ends (:class:`PunchTimeReached` or a failure event).

    Raises:
        RemoteProtocolError: the peer broke the protocol.
        StreamError / TransportError: the stream failed.
    """
    loop = asyncio.get_running_loop()
    # After its SYNC the initiator only waits RTT/2; nothing more may arrive on the stream.
    timer_only = False
    while True:
        out = machine.data_to_send()
        if out:
            await stream.write(out)
        for event in machine.events():
            if isinstance(event, d.PunchTimeReached | d.HolePunchFailed):
                return event
            if isinstance(event, d.ConnectReceived) and isinstance(machine, d.DcutrInitiator):
                timer_only = True
        deadline = machine.get_timer()
        if deadline is None:
            raise RemoteProtocolError(
                "DCUtR exchange ended without a result", protocol=DCUTR_PROTOCOL
            )
        remaining = deadline - loop.time()
        if remaining > 0 and timer_only:
            await asyncio.sleep(remaining)
            remaining = 0
        if remaining <= 0:
            machine.handle_timer(max(loop.time(), deadline))
            continue
        try:
            async with asyncio.timeout(remaining):
                data = await stream.read(pb.MAX_DCUTR_MESSAGE)
        except TimeoutError:
            machine.handle_timer(max(loop.time(), deadline))
            continue
        machine.receive_data(data, loop.time())


__all__ = [
    "DCUTR_PROTOCOL",
    "DEFAULT_PUNCH_TIMEOUT",
    "AttemptResult",
    "HolePunchService",
    "is_direct",
]
