"""The ``/p2p-circuit`` transport: dial through a circuit relay v2, accept relayed connections.

Spec: https://github.com/libp2p/specs/blob/master/relay/circuit-v2.md (r3). The HOP/STOP
exchanges are the sans-I/O machines of :mod:`glueberry.proto.relay`; this module drives them
over host streams and turns the finished stream into a raw connection.

Theory of operation
-------------------
After a successful CONNECT (dialer, HOP stream) or STOP (target, STOP stream) the stream *is*
the relayed connection: :class:`~glueberry.transport.circuit_conn.CircuitConnection` adapts
it to a raw connection (reading and writing tasks, backpressure, the relay's limits enforced
and reported at both ends - see that module), and the host upgrades it exactly like a TCP
socket: multistream-select, Noise, yamux - end to end between the two peers; the relay only
sees ciphertext.

Listening: :meth:`CircuitTransport.listen` on ``/p2p-circuit`` registers the host's callback;
inbound STOP requests are accepted only while such a listener exists. The listener's
``multiaddrs`` are the relayed addresses of the current reservations
(``<relay addr>/p2p/<relay>/p2p-circuit``), set by the relay client
(:meth:`CircuitTransport.set_relay_addrs`); the host advertises them through identify.

Relayed connections are never used to reach a relay (no circuits over circuits), and
``remote_address`` of a circuit connection is ``(<circuit multiaddr text>, 0)`` -
:meth:`CircuitTransport.to_multiaddr` turns it back into the multiaddr.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from glueberry.errors import (
    ConnectError,
    ConnectTimeout,
    GlueberryError,
    LocalProtocolError,
    RemoteProtocolError,
)
from glueberry.proto import relay as r
from glueberry.transport.circuit_conn import CIRCUIT, CircuitConnection, LimitReason
from glueberry.wire import pb_nat as pb
from glueberry.wire.multiaddr import Multiaddr, MultiaddrError

if TYPE_CHECKING:
    from glueberry.transport.base import MuxedConnection, Stream, StreamHandler
    from glueberry.wire.identity import PeerId

logger = logging.getLogger(__name__)


#: The destination of a relayed dial whose address lost its ``/p2p/<peer>`` suffix on the
#: way to :meth:`CircuitTransport.dial` (see :func:`dial_target`).
_DIAL_TARGET: contextvars.ContextVar[PeerId | None] = contextvars.ContextVar(
    "glueberry_circuit_dial_target", default=None
)


@contextlib.contextmanager
def dial_target(peer: PeerId) -> Iterator[None]:
    """Name the destination of the relayed dials started inside this block.

    A host that strips the trailing ``/p2p/<peer>`` before calling the transport still lets
    :meth:`CircuitTransport.dial` know whom to CONNECT to: tasks started inside the block
    (the host's dial task) inherit this context.
    """
    token = _DIAL_TARGET.set(peer)
    try:
        yield
    finally:
        _DIAL_TARGET.reset(token)


class RelayHost(Protocol):
    """What the circuit transport needs from its host (:class:`glueberry.net.host.Host`).

    Structural, so this transport does not import the layer above it.
    """

    @property
    def peer_id(self) -> PeerId: ...

    async def connect(
        self, peer_id: PeerId | None = None, addrs: Iterable[str | Multiaddr] = ()
    ) -> MuxedConnection: ...

    async def new_stream(
        self,
        peer_id: PeerId,
        protocols: str | Sequence[str],
        *,
        addrs: Iterable[str | Multiaddr] | None = None,
    ) -> Stream: ...

    def spawn(
        self, coro: Coroutine[Any, Any, None], *, name: str | None = None
    ) -> asyncio.Task[None]: ...

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None: ...

    def remove_stream_handler(self, protocol: str) -> None: ...


class CircuitListener:
    """The ``/p2p-circuit`` listener: relayed addresses of the current reservations."""

    def __init__(self, transport: CircuitTransport, on_connection: Callable[[Any], None]) -> None:
        self._transport = transport
        self.on_connection = on_connection
        self._closed = False

    @property
    def multiaddrs(self) -> list[Multiaddr]:
        return [] if self._closed else list(self._transport.relay_addrs)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport._forget(self)

    async def wait_closed(self) -> None:
        self.close()


class CircuitTransport:
    """Dials ``…/p2p/<relay>/p2p-circuit/p2p/<peer>`` and accepts relayed connections.

    Put it in ``HostConfig.transports`` (after TCP) and call :meth:`attach` once the host
    exists (the NAT manager does both).

    Args:
        hop_timeout: seconds for the relay to answer CONNECT (go: 1 min; hop dial 5 s).
        stop_timeout: seconds for the relay's STOP request on an inbound stream.
        accept_stop: whether to accept relayed connections while listening (a switch for
            tests and for nodes that only dial through relays).
        enforce_limits: end relayed connections ourselves at the relay's announced limits
            (see :class:`CircuitConnection`).
    """

    name = "p2p-circuit"

    def __init__(
        self,
        *,
        hop_timeout: float = r.DEFAULT_HOP_TIMEOUT,
        stop_timeout: float = r.DEFAULT_STOP_TIMEOUT,
        accept_stop: bool = True,
        enforce_limits: bool = True,
    ) -> None:
        self.hop_timeout = hop_timeout
        self.enforce_limits = enforce_limits
        self.stop_timeout = stop_timeout
        self.accept_stop = accept_stop
        self._host: RelayHost | None = None
        self._listeners: list[CircuitListener] = []
        self._relay_addrs: list[Multiaddr] = []
        #: Called with ``(connection, reason)`` when a relay limit ends a connection.
        self.on_limit: Callable[[CircuitConnection, LimitReason], None] | None = None
        #: Inbound relayed connections refused (no listener, relayed relay, bad STOP).
        self.refused_stop = 0

    # --- wiring --------------------------------------------------------------------------

    def attach(self, host: RelayHost) -> None:
        """Bind to ``host``: its connections reach relays; it serves the STOP protocol."""
        if self._host is not None and self._host is not host:
            raise LocalProtocolError("circuit transport already attached", protocol=CIRCUIT)
        self._host = host
        host.set_stream_handler(r.STOP_PROTOCOL, self._serve_stop)

    def detach(self) -> None:
        if self._host is not None:
            self._host.remove_stream_handler(r.STOP_PROTOCOL)

    def _need_host(self) -> RelayHost:
        if self._host is None:
            raise ConnectError("the circuit transport is not attached to a host")
        return self._host

    @property
    def relay_addrs(self) -> list[Multiaddr]:
        """Our relayed addresses (``<relay addr>/p2p/<relay>/p2p-circuit``)."""
        return list(self._relay_addrs)

    def set_relay_addrs(self, addrs: Iterable[Multiaddr]) -> None:
        """Replace the relayed addresses the listener shows (reservations changed)."""
        self._relay_addrs = list(dict.fromkeys(addrs))

    @property
    def listening(self) -> bool:
        return bool(self._listeners)

    # --- host Transport protocol ----------------------------------------------------------

    def can_dial(self, addr: Multiaddr) -> bool:
        return addr.is_relayed

    def can_listen(self, addr: Multiaddr) -> bool:
        return addr.is_relayed

    def to_multiaddr(self, address: tuple[str, int]) -> Multiaddr:
        """The circuit multiaddr stored in a circuit connection's ``remote_address``."""
        return Multiaddr(address[0])

    async def listen(
        self, addr: Multiaddr, on_connection: Callable[[Any], None]
    ) -> CircuitListener:
        """Accept relayed connections (``addr`` is ``/p2p-circuit``)."""
        self._need_host()
        listener = CircuitListener(self, on_connection)
        self._listeners.append(listener)
        return listener

    def _forget(self, listener: CircuitListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def dial(self, addr: Multiaddr, *, timeout: float | None) -> CircuitConnection:  # noqa: ASYNC109
        """Open a relayed connection to the peer ``addr`` names.

        ``addr`` is ``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>``; the relay part may
        be a bare ``/p2p/<relay>`` when the host already knows how to reach the relay.

        Raises:
            ConnectError: malformed address, the relay refused (the status is named), or
                the relay could not be reached; ConnectTimeout: no answer in time.
        """
        host = self._need_host()
        split = addr.split_circuit()
        if split is None:
            raise ConnectError(f"{addr} is not a circuit address")
        relay_part, dest = split
        target = dest.peer_id or _DIAL_TARGET.get()
        relay = relay_part.peer_id
        if target is None or relay is None:
            raise ConnectError(f"{addr} must name the relay and the destination (/p2p/...)")
        if relay_part.is_relayed:
            raise ConnectError("circuits over circuits are not supported")
        if target == host.peer_id:
            raise ConnectError("cannot dial ourselves through a relay")
        direct = relay_part.without_p2p()
        relay_dial = [relay_part] if direct.transport_kind() is not None else []
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                relay_conn = await host.connect(relay, relay_dial)
                if relay_conn.transport_name == CIRCUIT_TRANSPORT:
                    raise ConnectError(f"the only connection to relay {relay} is itself relayed")
                stream = await host.new_stream(relay, [r.HOP_PROTOCOL])
                return await self._hop_connect(stream, relay, target, relay_conn)
        except TimeoutError as exc:
            raise ConnectTimeout(f"relayed dial to {target} via {relay} timed out") from exc

    async def _hop_connect(
        self, stream: Stream, relay: PeerId, target: PeerId, relay_conn: MuxedConnection
    ) -> CircuitConnection:
        host = self._need_host()
        machine = r.HopConnectClient(target=target, now=time.time(), timeout=self.hop_timeout)
        try:
            event = await run_relay_machine(stream, machine)
        except BaseException:
            stream.reset()
            raise
        if isinstance(event, r.CircuitEstablished):
            remote = _relay_multiaddr(relay_conn, relay).encapsulate(CIRCUIT).with_p2p(target)
            return CircuitConnection(
                stream,
                spawn=host.spawn,
                limit=event.limit,
                trailing=event.trailing_data,
                relay=relay,
                remote_multiaddr=remote,
                on_limit=self._limit_reached,
                enforce_limit=self.enforce_limits,
            )
        stream.reset()
        if isinstance(event, r.CircuitRefused):
            raise ConnectError(
                f"relay {relay} refused the circuit to {target}: {event.status.name}",
                peer_id=target,
            )
        raise ConnectTimeout(f"relay {relay} did not answer CONNECT", peer_id=target)

    def _limit_reached(self, conn: CircuitConnection, reason: LimitReason) -> None:
        if self.on_limit is not None:
            self.on_limit(conn, reason)

    # --- STOP (we are the target) -----------------------------------------------------------

    async def _serve_stop(self, stream: Stream) -> None:
        host = self._need_host()
        conn = stream.connection
        relay = conn.remote_peer
        relayed = conn.transport_name == CIRCUIT_TRANSPORT
        machine = r.StopServer(now=time.time(), relayed=relayed, timeout=self.stop_timeout)
        decided = False
        src: PeerId | None = None
        try:
            while True:
                event = await run_relay_machine(stream, machine)
                if isinstance(event, r.StopConnectRequested) and not decided:
                    decided = True
                    listener = self._listeners[0] if self._listeners else None
                    if listener is None or not self.accept_stop:
                        self.refused_stop += 1
                        machine.refuse(pb.RelayStatus.CONNECTION_FAILED)
                        await stream.write(machine.data_to_send())
                        await stream.close()
                        return
                    src = event.src
                    machine.accept()
                    await stream.write(machine.data_to_send())
                    continue
                if isinstance(event, r.CircuitEstablished):
                    listener = self._listeners[0] if self._listeners else None
                    if listener is None or src is None:
                        stream.reset()
                        return
                    remote = _relay_multiaddr(conn, relay).encapsulate(CIRCUIT).with_p2p(src)
                    circuit = CircuitConnection(
                        stream,
                        spawn=host.spawn,
                        limit=event.limit,
                        trailing=event.trailing_data,
                        relay=relay,
                        remote_multiaddr=remote,
                        on_limit=self._limit_reached,
                        enforce_limit=self.enforce_limits,
                    )
                    listener.on_connection(circuit)
                    return
                # RequestDenied (relayed relay) or a timeout: answer and stop.
                self.refused_stop += 1
                out = machine.data_to_send()
                if out:
                    await stream.write(out)
                await stream.close()
                return
        except (GlueberryError, OSError) as exc:
            logger.debug("STOP from %s failed: %r", relay, exc)
            with contextlib.suppress(GlueberryError, OSError):
                out = machine.data_to_send()
                if out:
                    await stream.write(out)
            stream.reset()


CIRCUIT_TRANSPORT: Final = "circuit"


def _relay_multiaddr(conn: MuxedConnection, relay: PeerId) -> Multiaddr:
    """``<relay address>/p2p/<relay>`` as seen on ``conn`` (or ``/p2p/<relay>`` alone)."""
    try:
        if conn.transport_name == "tcp":
            host, port = conn.remote_address[0], conn.remote_address[1]
            return Multiaddr.from_socket_address(host, port).with_p2p(relay)
    except (MultiaddrError, ValueError, IndexError, TypeError):
        pass
    return Multiaddr(f"/p2p/{relay}")


RelayMachine = r.HopConnectClient | r.HopReserveClient | r.HopServer | r.StopClient | r.StopServer


async def run_relay_machine(stream: Stream, machine: RelayMachine) -> r.RelayEvent:
    """Flush the machine's output and feed it the stream until it emits an event.

    The machine's own deadline (wall clock, :mod:`glueberry.proto.relay`) bounds the wait.

    Raises:
        RemoteProtocolError: the peer broke the protocol (a server's reply is queued).
        StreamError / TransportError: the stream failed.
    """
    while True:
        out = machine.data_to_send()
        if out:
            await stream.write(out)
        event = machine.next_event()
        if event is not None:
            return event
        deadline = machine.get_timer()
        if deadline is None:
            raise RemoteProtocolError("relay exchange ended without a result", protocol=CIRCUIT)
        remaining = deadline - time.time()
        if remaining <= 0:
            machine.handle_timer(max(time.time(), deadline))
            continue
        try:
            async with asyncio.timeout(remaining):
                data = await stream.read(pb.MAX_RELAY_MESSAGE)
        except TimeoutError:
            machine.handle_timer(max(time.time(), deadline))
            continue
        machine.receive_data(data, time.time())


__all__ = [
    "CIRCUIT",
    "CircuitConnection",
    "CircuitListener",
    "CircuitTransport",
    "LimitReason",
    "RelayHost",
    "RelayMachine",
    "dial_target",
    "run_relay_machine",
]
