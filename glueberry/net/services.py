"""Identify, identify-push and ping services attached to a :class:`~glueberry.net.host.Host`.

Specs: https://github.com/libp2p/specs/blob/master/identify/README.md and
https://github.com/libp2p/specs/blob/master/ping/ping.md. Behaviour matched: go-libp2p's
``p2p/protocol/identify`` and ``p2p/protocol/ping`` (libp2p-notes §2.8, §2.9, §2.14).

Theory of operation. The services are the asyncio drivers of the sans-I/O machines in
:mod:`glueberry.proto.identify` and :mod:`glueberry.proto.ping`; they own no tasks of their
own: everything runs in the host's task group (:meth:`Host.spawn`, stream handlers), so
closing the host ends them.

:class:`IdentifyService`

* answers ``/ipfs/id/1.0.0`` with our key, listen addresses, protocols, the address we see the
  peer at (``observedAddr``), versions and a signed peer record, then closes the stream;
* identifies every new connection, inbound and outbound, at once (as go does): opens
  ``/ipfs/id/1.0.0``, reads to end of stream, verifies, and stores the result in
  ``host.peerstore``; :meth:`IdentifyService.wait_identified` waits for it;
* accepts ``/ipfs/id/push/1.0.0`` (absent fields unchanged), rate-limited per peer (B-21):
  a push over the limit is reset unread;
* pushes to every connected peer that advertises push when our listen addresses or protocols
  change (checked when connections come and go, and every ``watch_interval`` seconds), or when
  :meth:`IdentifyService.push` is called.

:class:`PingService` answers ``/ipfs/ping/1.0.0`` (at most 2 concurrent streams per peer,
B-22; a third is reset) and measures round trips with :meth:`PingService.ping`.

Unknown protocols need nothing here: the host's multistream listener answers ``na``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from glueberry.errors import (
    ConnectionLost,
    GlueberryError,
    LocalProtocolError,
    NegotiationFailed,
    RemoteProtocolError,
    StreamReset,
)
from glueberry.proto.identify import (
    DEFAULT_IDENTIFY_TIMEOUT,
    IDENTIFY_PROTOCOL,
    IDENTIFY_PUSH_PROTOCOL,
    IdentifyInfo,
    IdentifyReader,
    IdentifyReceived,
    PushRateLimiter,
    build_identify,
    make_signed_peer_record,
)
from glueberry.proto.ping import (
    DEFAULT_PING_TIMEOUT,
    MAX_INBOUND_PING_STREAMS,
    PING_PROTOCOL,
    PING_SIZE,
    PingDialer,
    PingResponder,
    PingStreamLimiter,
    PingTimedOut,
    PongReceived,
)
from glueberry.wire.multiaddr import Multiaddr, MultiaddrError

if TYPE_CHECKING:
    from glueberry.net.host import Host
    from glueberry.transport.base import MuxedConnection, Stream
    from glueberry.wire.identity import PeerId

logger = logging.getLogger(__name__)

#: go-libp2p resets an identify stream after this long; so do we.
IDENTIFY_TIMEOUT: Final = DEFAULT_IDENTIFY_TIMEOUT
#: How often to look for changed listen addresses / protocols (a push follows a change).
DEFAULT_WATCH_INTERVAL: Final = 2.0


def observed_multiaddr(conn: MuxedConnection) -> Multiaddr | None:
    """The peer's address on ``conn`` as a multiaddr (what identify calls ``observedAddr``)."""
    explicit = getattr(conn, "remote_multiaddr", None)
    if isinstance(explicit, Multiaddr):
        return explicit
    try:
        host, port = conn.remote_address[0], conn.remote_address[1]
        if conn.transport_name == "tcp":
            return Multiaddr.from_socket_address(host, port)
        if conn.transport_name == "quic-v1":
            return Multiaddr.from_socket_address(host, port, "udp").encapsulate("/quic-v1")
    except (MultiaddrError, TypeError, ValueError, IndexError):
        pass
    return None


@dataclass(slots=True)
class _PeerState:
    event: asyncio.Event
    info: IdentifyInfo | None = None
    error: BaseException | None = None


class IdentifyService:
    """Identify and identify-push for one host. Create it once, before or after start.

    Args:
        host: the host to serve and to identify the connections of.
        timeout: deadline for reading one identify message (go: 5 s).
        push_rate / push_burst: inbound push token bucket per peer.
        sign_peer_record: include a signed peer record in what we send (go does).
        watch_interval: seconds between checks for changed addresses/protocols.
    """

    def __init__(
        self,
        host: Host,
        *,
        timeout: float = IDENTIFY_TIMEOUT,
        push_rate: float = 1.0,
        push_burst: int = 5,
        sign_peer_record: bool = True,
        watch_interval: float = DEFAULT_WATCH_INTERVAL,
    ) -> None:
        self.host = host
        self.timeout = timeout
        self.sign_peer_record = sign_peer_record
        self.watch_interval = watch_interval
        self.push_limiter = PushRateLimiter(rate=push_rate, burst=push_burst)
        self._peers: dict[PeerId, _PeerState] = {}
        self._record: tuple[tuple[Multiaddr, ...], bytes] | None = None
        self._advertised: tuple[tuple[Multiaddr, ...], tuple[str, ...]] | None = None
        self._watcher: asyncio.Task[None] | None = None
        #: Identify exchanges completed / failed, pushes received / refused / sent.
        self.stats: dict[str, int] = {
            "identified": 0,
            "failed": 0,
            "pushes_received": 0,
            "pushes_refused": 0,
            "pushes_sent": 0,
        }
        host.set_stream_handler(IDENTIFY_PROTOCOL, self._serve_identify)
        host.set_stream_handler(IDENTIFY_PUSH_PROTOCOL, self._serve_push)
        self._remove_listener = host.add_connection_listener(
            self._on_connected, self._on_disconnected
        )
        # Connections that were already up before we were attached.
        for conn in host.connections():
            self._on_connected(conn)

    # --- public ---------------------------------------------------------------------------

    def identified(self, peer_id: PeerId) -> IdentifyInfo | None:
        """The last identify result of ``peer_id``, if any."""
        state = self._peers.get(peer_id)
        return state.info if state is not None else None

    async def wait_identified(self, peer_id: PeerId) -> IdentifyInfo:
        """Wait until ``peer_id`` has been identified on some connection; return the result.

        Wrap it in ``asyncio.timeout`` to bound the wait.

        Raises:
            NegotiationFailed: the peer does not speak identify.
            ConnectionLost: the peer disconnected before it was identified.
            RemoteProtocolError: its identify message was invalid (e.g. a foreign key).
            GlueberryError: the identify stream failed otherwise.
        """
        state = self._state(peer_id)
        while True:
            if state.info is not None:
                return state.info
            if state.error is not None:
                raise state.error
            await state.event.wait()
            state = self._state(peer_id)

    async def identify(self, peer_id: PeerId) -> IdentifyInfo:
        """Run identify now on the preferred connection to ``peer_id`` and return the result."""
        stream = await self.host.new_stream(peer_id, [IDENTIFY_PROTOCOL])
        return await self._read_identify(stream, peer_id, push=False)

    async def push(self) -> int:
        """Push our current identify to every connected peer that accepts pushes.

        Returns the number of peers pushed to successfully.
        """
        peers = {c.remote_peer for c in self.host.connections()}
        targets = [p for p in peers if self.host.peerstore.supports(p, [IDENTIFY_PUSH_PROTOCOL])]
        if not targets:
            return 0
        results = await asyncio.gather(
            *(self._push_one(p) for p in targets), return_exceptions=True
        )
        ok = sum(1 for r in results if r is True)
        self.stats["pushes_sent"] += ok
        return ok

    def close(self) -> None:
        """Detach from the host (handlers removed, no more identification)."""
        self._remove_listener()
        self.host.remove_stream_handler(IDENTIFY_PROTOCOL)
        self.host.remove_stream_handler(IDENTIFY_PUSH_PROTOCOL)
        if self._watcher is not None:
            self._watcher.cancel()

    # --- building what we send ------------------------------------------------------------

    def _signed_record(self, addrs: tuple[Multiaddr, ...]) -> bytes | None:
        if not self.sign_peer_record:
            return None
        if self._record is None or self._record[0] != addrs:
            # go uses a nanosecond wall-clock timestamp as seq: newer records win.
            seq = time.time_ns()
            self._record = (addrs, make_signed_peer_record(self.host.identity, addrs, seq))
        return self._record[1]

    def _message(self, observed: Multiaddr | None, *, push: bool) -> bytes:
        addrs = tuple(self.host.addrs)
        protocols = self.host.protocols
        return build_identify(
            public_key=self.host.identity.public_key,
            listen_addrs=addrs,
            protocols=protocols,
            observed_addr=None if push else observed,
            signed_peer_record=self._signed_record(addrs),
        )

    # --- serving ---------------------------------------------------------------------------

    async def _serve_identify(self, stream: Stream) -> None:
        try:
            await stream.write(self._message(observed_multiaddr(stream.connection), push=False))
            await stream.close()
        except (GlueberryError, OSError) as exc:
            logger.debug("identify: answering %s failed: %r", stream.connection.remote_peer, exc)
            stream.reset()

    async def _serve_push(self, stream: Stream) -> None:
        peer = stream.connection.remote_peer
        if not self.push_limiter.allow(peer, asyncio.get_running_loop().time()):
            self.stats["pushes_refused"] += 1
            logger.info("identify: push from %s over its rate limit; reset", peer)
            stream.reset()
            return
        self.stats["pushes_received"] += 1
        try:
            await self._read_identify(stream, peer, push=True)
        except (GlueberryError, TimeoutError) as exc:
            logger.info("identify: push from %s rejected: %s", peer, exc)

    # --- identifying -----------------------------------------------------------------------

    def _state(self, peer: PeerId) -> _PeerState:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _PeerState(asyncio.Event())
        return state

    def _on_connected(self, conn: MuxedConnection) -> None:
        peer = conn.remote_peer
        state = self._state(peer)
        if state.error is not None:  # a new connection: try again
            state.error = None
            state.event = asyncio.Event()
        try:
            self.host.spawn(self._identify_conn(conn), name="identify")
            if self._watcher is None and self.watch_interval > 0:
                self._watcher = self.host.spawn(self._watch(), name="identify-watch")
        except GlueberryError:  # host closing
            return

    def _on_disconnected(self, conn: MuxedConnection) -> None:
        peer = conn.remote_peer
        if self.host.connections(peer):
            return
        state = self._peers.pop(peer, None)
        self.push_limiter.forget(peer)
        if state is not None and state.info is None and state.error is None:
            # Wake anyone in wait_identified(): this peer will not be identified now.
            state.error = ConnectionLost(f"{peer} disconnected before identify", peer_id=peer)
            state.event.set()

    async def _identify_conn(self, conn: MuxedConnection) -> None:
        peer = conn.remote_peer
        try:
            stream = await self.host.new_stream(peer, [IDENTIFY_PROTOCOL])
            await self._read_identify(stream, peer, push=False)
        except (GlueberryError, TimeoutError, OSError) as exc:
            self.stats["failed"] += 1
            if isinstance(exc, NegotiationFailed):
                logger.debug("identify: %s does not speak identify", peer)
            else:
                logger.info("identify of %s failed: %r", peer, exc)
            state = self._peers.get(peer)
            if state is not None and state.info is None and not conn.is_closed:
                state.error = exc
                state.event.set()

    async def _read_identify(self, stream: Stream, peer: PeerId, *, push: bool) -> IdentifyInfo:
        reader = IdentifyReader(peer, push=push, timeout=None)
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    data = await stream.read()
                    reader.receive_data(data, 0.0)
                    if not data:
                        break
        except BaseException:
            stream.reset()
            raise
        await stream.close()
        event = reader.next_event()
        assert isinstance(event, IdentifyReceived)
        self._apply(peer, event.info, push=push)
        return event.info

    def _apply(self, peer: PeerId, info: IdentifyInfo, *, push: bool) -> None:
        store = self.host.peerstore
        if info.public_key is not None:
            store.add_public_key(peer, info.public_key)
        record = info.signed_peer_record
        addrs = record.addrs if record is not None else info.listen_addrs
        if addrs:
            store.add_addrs(peer, addrs)
        if info.protocols is not None:
            store.set_protocols(peer, info.protocols)
        if info.agent_version is not None:
            store.set_agent_version(peer, info.agent_version)
        if info.protocol_version is not None:
            store.set_protocol_version(peer, info.protocol_version)
        state = self._state(peer)
        if push and state.info is not None:
            info = _merge_push(state.info, info)
        state.info = info
        state.error = None
        state.event.set()
        if not push:
            self.stats["identified"] += 1

    # --- pushing ---------------------------------------------------------------------------

    async def _push_one(self, peer: PeerId) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                stream = await self.host.new_stream(peer, [IDENTIFY_PUSH_PROTOCOL])
                try:
                    await stream.write(self._message(None, push=True))
                    await stream.close()
                except BaseException:
                    stream.reset()
                    raise
        except (GlueberryError, TimeoutError, OSError) as exc:
            logger.debug("identify push to %s failed: %r", peer, exc)
            return False
        return True

    async def _watch(self) -> None:
        self._advertised = (tuple(self.host.addrs), tuple(self.host.protocols))
        while True:
            await asyncio.sleep(self.watch_interval)
            now = (tuple(self.host.addrs), tuple(self.host.protocols))
            if now != self._advertised:
                self._advertised = now
                logger.debug("identify: addresses or protocols changed; pushing")
                await self.push()


def _merge_push(old: IdentifyInfo, new: IdentifyInfo) -> IdentifyInfo:
    """Apply a push: fields it carries replace ours, absent ones stay."""

    return IdentifyInfo(
        public_key=new.public_key if new.public_key is not None else old.public_key,
        listen_addrs=new.listen_addrs if new.listen_addrs is not None else old.listen_addrs,
        protocols=new.protocols if new.protocols is not None else old.protocols,
        observed_addr=new.observed_addr if new.observed_addr is not None else old.observed_addr,
        protocol_version=(
            new.protocol_version if new.protocol_version is not None else old.protocol_version
        ),
        agent_version=new.agent_version if new.agent_version is not None else old.agent_version,
        signed_peer_record=(
            new.signed_peer_record if new.signed_peer_record is not None else old.signed_peer_record
        ),
        dropped_addrs=new.dropped_addrs,
        signed_record_rejected=new.signed_record_rejected,
    )


# --- ping --------------------------------------------------------------------------------------


class PingService:
    """Ping for one host: serves ``/ipfs/ping/1.0.0`` and pings other peers.

    Args:
        host: the host.
        timeout: seconds to wait for one echo (go: 10 s).
        max_inbound_per_peer: concurrent inbound ping streams per peer (spec: 2).
        entropy: source of the 32-byte payloads (``os.urandom``).
        clock: monotonic seconds for RTTs (``time.perf_counter``).
    """

    def __init__(
        self,
        host: Host,
        *,
        timeout: float = DEFAULT_PING_TIMEOUT,
        max_inbound_per_peer: int = MAX_INBOUND_PING_STREAMS,
        entropy: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.host = host
        self.timeout = timeout
        self.limiter = PingStreamLimiter(max_inbound_per_peer)
        self._entropy = entropy
        self._clock = clock
        host.set_stream_handler(PING_PROTOCOL, self._serve)

    def close(self) -> None:
        self.host.remove_stream_handler(PING_PROTOCOL)

    async def _serve(self, stream: Stream) -> None:
        peer = stream.connection.remote_peer
        if not self.limiter.try_acquire(peer):
            logger.info("ping: %s has %d ping streams open; reset", peer, self.limiter.max_per_peer)
            stream.reset()
            return
        responder = PingResponder()
        try:
            while True:
                data = await stream.read()
                responder.receive_data(data, 0.0)
                out = responder.data_to_send()
                if out:
                    await stream.write(out)
                if not data:
                    break
            await stream.close()
        except StreamReset:
            pass
        except (GlueberryError, OSError) as exc:
            logger.debug("ping: serving %s failed: %r", peer, exc)
            stream.reset()
        finally:
            self.limiter.release(peer)

    async def ping(self, peer_id: PeerId, count: int = 1, *, interval: float = 0.0) -> list[float]:
        """Ping ``peer_id`` ``count`` times on one stream; return the RTTs in seconds.

        Raises:
            TimeoutError: an echo did not come back within ``timeout``.
            RemoteProtocolError: an echo differed from what was sent.
            and what :meth:`Host.new_stream` raises.
        """
        rtts: list[float] = []
        async for _, rtt in self.ping_iter(peer_id, count, interval=interval, keep_going=False):
            assert rtt is not None
            rtts.append(rtt)
        return rtts

    async def ping_iter(
        self,
        peer_id: PeerId,
        count: int,
        *,
        interval: float = 1.0,
        keep_going: bool = True,
    ) -> AsyncIterator[tuple[int, float | None]]:
        """Yield ``(seq, rtt)`` for each of ``count`` pings (``seq`` from 1).

        With ``keep_going`` a lost echo yields ``(seq, None)`` and the next ping goes out on
        a fresh stream (like ping(8) carrying on); otherwise it raises ``TimeoutError``.
        """
        if count < 1:
            raise LocalProtocolError("count must be >= 1", protocol=PING_PROTOCOL)
        stream: Stream | None = None
        machine = PingDialer(timeout=self.timeout)
        try:
            for seq in range(1, count + 1):
                if seq > 1 and interval > 0:
                    await asyncio.sleep(interval)
                if stream is None:
                    stream = await self.host.new_stream(peer_id, [PING_PROTOCOL])
                    machine = PingDialer(timeout=self.timeout)
                rtt = await self._one(stream, machine)
                if rtt is None:
                    stream.reset()
                    stream = None
                    if not keep_going:
                        raise TimeoutError(f"no ping echo from {peer_id} in {self.timeout} s")
                yield seq, rtt
            if stream is not None:
                await stream.close()
                stream = None
        finally:
            if stream is not None:
                stream.reset()

    async def _one(self, stream: Stream, machine: PingDialer) -> float | None:
        clock = self._clock
        machine.send_ping(self._entropy(PING_SIZE), clock())
        await stream.write(machine.data_to_send())
        try:
            async with asyncio.timeout(self.timeout):
                while machine.outstanding:
                    data = await stream.read()
                    machine.receive_data(data, clock())
        except TimeoutError:
            machine.handle_timer(clock() + self.timeout)
        for event in machine.events():
            if isinstance(event, PongReceived):
                return event.rtt
            if isinstance(event, PingTimedOut):
                return None
        raise RemoteProtocolError("ping ended without an echo", protocol=PING_PROTOCOL)


__all__ = ["IdentifyService", "PingService", "observed_multiaddr"]
