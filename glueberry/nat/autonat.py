"""AutoNAT v1 and v2 clients and servers on a host: "can you dial me back?".

Specs: https://github.com/libp2p/specs/blob/master/autonat/autonat-v1.md (r1) and
autonat/autonat-v2.md (working draft r2). Behaviour matched: go-libp2p ``p2p/host/autonat``
and ``p2p/protocol/autonatv2`` (libp2p-notes §2.12, B-26, B-27). The exchanges are the
machines of :mod:`glueberry.proto.autonat`.

Theory of operation
-------------------
* Server (``/libp2p/autonat/1.0.0``): :class:`~glueberry.proto.autonat.AutoNATv1Server`
  decides what may be dialed - only addresses on the requester's *observed* IP, never for a
  relayed connection, at most 16, within the node-wide rate limit (30/min, 3/min per peer).
  The dial-back is a **fresh** connection: a plain TCP connect from an ephemeral port (not
  the port-reusing transport, whose listen-port mapping would make a private node look
  reachable) upgraded with the host's upgrader (Noise, peer ID checked) and closed at once -
  the existing connection to the requester proves nothing.
* Client: :meth:`AutoNATService.probe` asks one server about our candidate addresses and
  returns ``True`` (dialed back), ``False`` (dial failed) or ``None`` (no verdict: refused,
  rate-limited, internal error). Turning verdicts into PUBLIC/PRIVATE is
  :class:`~glueberry.nat.policy.ReachabilityTracker`'s job (the NAT manager feeds it).

* v2 server (``/libp2p/autonat/2/dial-request``): :class:`~glueberry.proto.autonat.
  AutoNATv2Server` picks the first dialable address (asking the client for 30 kB of dial
  data first when its IP differs from the observed one); the dial-back is again a fresh
  connection, on which a ``/libp2p/autonat/2/dial-back`` stream carries the client's nonce
  (:class:`~glueberry.proto.autonat.DialBackSender`); then the verdict goes back.
* v2 client: :meth:`AutoNATService.probe_v2` sends a random 64-bit nonce; the dial-back
  handler (:class:`~glueberry.proto.autonat.DialBackReceiver`) hands every nonce it
  receives to the pending requests; a "reachable" verdict counts only when the nonce came
  back (a server cannot claim a dial it did not make).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from glueberry.errors import GlueberryError, RemoteProtocolError
from glueberry.net.negotiate import select_protocol
from glueberry.proto import autonat as an
from glueberry.transport.tcp import dial as tcp_dial
from glueberry.wire import pb_nat as pb
from glueberry.wire.multiaddr import Multiaddr, MultiaddrError

if TYPE_CHECKING:
    from glueberry.net.host import Host
    from glueberry.transport.base import MuxedConnection, Stream
    from glueberry.wire.identity import PeerId

logger = logging.getLogger(__name__)

AUTONAT_PROTOCOL: Final = an.AUTONAT_V1_PROTOCOL
AUTONAT_V2_PROTOCOL: Final = an.AUTONAT_V2_DIAL_REQUEST
AUTONAT_V2_DIAL_BACK: Final = an.AUTONAT_V2_DIAL_BACK
#: Seconds for one dial-back (connect + upgrade).
DEFAULT_DIAL_BACK_TIMEOUT: Final = 10.0


class AutoNATService:
    """AutoNAT v1 for ``host``.

    Args:
        host: the host.
        server: serve dial-back requests, v1 and v2 (a node behind a NAT should not).
        allow_private: dial back private addresses and offer them (labs, LANs).
        dial_timeout: seconds for one dial-back.
        limiter: the server's throttle (go: 30/min overall, 3/min per peer).
    """

    def __init__(
        self,
        host: Host,
        *,
        server: bool = True,
        allow_private: bool = False,
        dial_timeout: float = DEFAULT_DIAL_BACK_TIMEOUT,
        limiter: an.AutoNATRateLimiter | None = None,
    ) -> None:
        self.host = host
        self.allow_private = allow_private
        self.dial_timeout = dial_timeout
        self.limiter = limiter or an.AutoNATRateLimiter()
        self.server = server
        #: Counters: served, dialed_ok, dialed_failed, refused, probes.
        self.stats: dict[str, int] = {
            "served": 0,
            "dialed_ok": 0,
            "dialed_failed": 0,
            "refused": 0,
            "probes": 0,
        }
        self._pending_v2: dict[int, an.AutoNATv2Client] = {}
        host.set_stream_handler(AUTONAT_V2_DIAL_BACK, self._serve_dial_back)
        if server:
            host.set_stream_handler(AUTONAT_PROTOCOL, self._serve)
            host.set_stream_handler(AUTONAT_V2_PROTOCOL, self._serve_v2)

    def close(self) -> None:
        self.host.remove_stream_handler(AUTONAT_V2_DIAL_BACK)
        if self.server:
            self.host.remove_stream_handler(AUTONAT_PROTOCOL)
            self.host.remove_stream_handler(AUTONAT_V2_PROTOCOL)

    # --- client ----------------------------------------------------------------------------

    async def probe(self, server: PeerId, addrs: Sequence[Multiaddr]) -> bool | None:
        """Ask ``server`` to dial ``addrs`` back.

        Returns:
            True if it reached one of them, False if its dials failed, None without a
            verdict (refused, rate-limited, bad request, timeout).

        Raises:
            GlueberryError: the stream could not be opened (e.g. no AutoNAT there).
        """
        self.stats["probes"] += 1
        loop = asyncio.get_running_loop()
        stream = await self.host.new_stream(server, [AUTONAT_PROTOCOL])
        machine = an.AutoNATv1Client(
            peer_id=self.host.peer_id, addrs=[a.to_bytes() for a in addrs], now=loop.time()
        )
        try:
            event = await _run(stream, machine)
        except (GlueberryError, OSError) as exc:
            stream.reset()
            logger.debug("autonat probe via %s failed: %r", server, exc)
            return None
        with contextlib.suppress(GlueberryError, OSError):
            await stream.close()
        if not isinstance(event, an.DialResponseReceived):
            return None
        if event.status is pb.AutoNATStatus.OK:
            return True
        if event.status is pb.AutoNATStatus.E_DIAL_ERROR:
            return False
        logger.debug("autonat server %s: %s %s", server, event.status.name, event.status_text)
        return None

    # --- server ----------------------------------------------------------------------------

    async def _serve(self, stream: Stream) -> None:
        conn = stream.connection
        peer = conn.remote_peer
        loop = asyncio.get_running_loop()
        machine = an.AutoNATv1Server(
            requester=peer,
            observed_ip=_observed_ip(conn),
            relayed=conn.transport_name == "circuit",
            limiter=self.limiter,
            now=loop.time(),
            allow_private=self.allow_private,
        )
        self.stats["served"] += 1
        try:
            event = await _run(stream, machine)
            if isinstance(event, an.DialBackRequested):
                reached = await self._dial_back(peer, event.addrs)
                if reached is not None:
                    self.stats["dialed_ok"] += 1
                    machine.dial_succeeded(reached)
                else:
                    self.stats["dialed_failed"] += 1
                    machine.dial_failed("dial back failed")
            else:
                self.stats["refused"] += 1
            out = machine.data_to_send()
            if out:
                await stream.write(out)
            await stream.close()
        except (GlueberryError, OSError) as exc:
            logger.debug("autonat request from %s failed: %r", peer, exc)
            with contextlib.suppress(GlueberryError, OSError):
                out = machine.data_to_send()
                if out:
                    await stream.write(out)
            stream.reset()

    async def _dial_back(self, peer: PeerId, addrs: tuple[bytes, ...]) -> bytes | None:
        for raw in addrs:
            try:
                sa = Multiaddr(raw).to_socket_address()
            except MultiaddrError:
                continue
            if sa.transport != "tcp":
                continue
            try:
                async with asyncio.timeout(self.dial_timeout):
                    conn = await tcp_dial(sa.host, sa.port)
                    muxed = await self.host.upgrader.upgrade_outbound(
                        conn, expected_peer=peer, on_stream=_refuse_stream
                    )
            except (GlueberryError, OSError, TimeoutError) as exc:
                logger.debug("autonat dial-back to %s at %s failed: %r", peer, sa, exc)
                continue
            with contextlib.suppress(GlueberryError, OSError):
                await muxed.close()
            return raw
        return None

    # --- v2 ----------------------------------------------------------------------------------

    async def probe_v2(
        self, server: PeerId, addrs: Sequence[Multiaddr]
    ) -> tuple[Multiaddr | None, bool | None]:
        """AutoNAT v2: ask ``server`` to dial one of ``addrs`` (in priority order) back.

        Returns:
            ``(address tested, verdict)``: True only if the dial-back carried our nonce,
            False if the server's dial failed, None without a trustworthy verdict.

        Raises:
            GlueberryError: the stream could not be opened (e.g. no AutoNAT v2 there).
        """
        self.stats["probes"] += 1
        loop = asyncio.get_running_loop()
        nonce = secrets.randbits(64)
        machine = an.AutoNATv2Client(
            addrs=[a.to_bytes() for a in addrs], nonce=nonce, now=loop.time()
        )
        stream = await self.host.new_stream(server, [AUTONAT_V2_PROTOCOL])
        self._pending_v2[nonce] = machine
        try:
            while True:
                event = await _run(stream, machine)
                if isinstance(event, an.DialDataRequested):
                    if not event.accepted:
                        stream.reset()
                        return None, None
                    continue  # the data is queued; _run sends it
                break
        except (GlueberryError, OSError) as exc:
            stream.reset()
            logger.debug("autonat v2 probe via %s failed: %r", server, exc)
            return None, None
        finally:
            self._pending_v2.pop(nonce, None)
        with contextlib.suppress(GlueberryError, OSError):
            await stream.close()
        if not isinstance(event, an.DialResultReceived):
            return None, None
        tested = Multiaddr(event.addr) if event.addr is not None else None
        return tested, event.reachable

    async def _serve_dial_back(self, stream: Stream) -> None:
        machine = an.DialBackReceiver(now=asyncio.get_running_loop().time())
        try:
            event = await _run(stream, machine)
            out = machine.data_to_send()
            if out:
                await stream.write(out)
            await stream.close()
        except (GlueberryError, OSError) as exc:
            logger.debug("autonat v2 dial-back stream failed: %r", exc)
            stream.reset()
            return
        if isinstance(event, an.DialBackReceived):
            pending = self._pending_v2.get(event.nonce)
            if pending is not None:
                pending.dial_back_received(event.nonce)

    async def _serve_v2(self, stream: Stream) -> None:
        conn = stream.connection
        peer = conn.remote_peer
        loop = asyncio.get_running_loop()
        machine = an.AutoNATv2Server(
            requester=peer,
            observed_ip=_observed_ip(conn),
            relayed=conn.transport_name == "circuit",
            limiter=self.limiter,
            now=loop.time(),
            allow_private=self.allow_private,
        )
        self.stats["served"] += 1
        try:
            event = await _run(stream, machine)
            if isinstance(event, an.DialBackRequested):
                assert event.nonce is not None
                ok = await self._dial_back_v2(peer, event.addrs[0], event.nonce)
                self.stats["dialed_ok" if ok else "dialed_failed"] += 1
                machine.dial_result(pb.DialStatus.OK if ok else pb.DialStatus.E_DIAL_ERROR)
            else:
                self.stats["refused"] += 1
            out = machine.data_to_send()
            if out:
                await stream.write(out)
            await stream.close()
        except (GlueberryError, OSError) as exc:
            logger.debug("autonat v2 request from %s failed: %r", peer, exc)
            with contextlib.suppress(GlueberryError, OSError):
                out = machine.data_to_send()
                if out:
                    await stream.write(out)
            stream.reset()

    async def _dial_back_v2(self, peer: PeerId, raw: bytes, nonce: int) -> bool:
        """Dial ``raw`` on a fresh connection and deliver ``nonce`` on a dial-back stream."""
        try:
            sa = Multiaddr(raw).to_socket_address()
        except MultiaddrError:
            return False
        if sa.transport != "tcp":
            return False
        loop = asyncio.get_running_loop()
        muxed: MuxedConnection | None = None
        try:
            async with asyncio.timeout(self.dial_timeout):
                conn = await tcp_dial(sa.host, sa.port)
                muxed = await self.host.upgrader.upgrade_outbound(
                    conn, expected_peer=peer, on_stream=_refuse_stream
                )
                stream = await muxed.open_stream()
                _, trailing = await select_protocol(stream, [AUTONAT_V2_DIAL_BACK])
                machine = an.DialBackSender(nonce=nonce, now=loop.time())
                if trailing:
                    machine.receive_data(trailing, loop.time())
                event = await _run(stream, machine)
                await stream.close()
                return isinstance(event, an.DialBackAcknowledged)
        except (GlueberryError, OSError, TimeoutError) as exc:
            logger.debug("autonat v2 dial-back to %s at %s failed: %r", peer, sa, exc)
            return False
        finally:
            if muxed is not None:
                with contextlib.suppress(GlueberryError, OSError):
                    await muxed.close()


def _refuse_stream(stream: Stream) -> None:
    stream.reset()


def _observed_ip(conn: MuxedConnection) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if conn.transport_name not in ("tcp", "quic-v1"):
        return None
    try:
        return ipaddress.ip_address(conn.remote_address[0])
    except (ValueError, IndexError):
        return None


_Machine = (
    an.AutoNATv1Client
    | an.AutoNATv1Server
    | an.AutoNATv2Client
    | an.AutoNATv2Server
    | an.DialBackSender
    | an.DialBackReceiver
)


async def _run(stream: Stream, machine: _Machine) -> an.AutoNATEvent:
    """Feed ``machine`` until it emits an event; flush its output on the way.

    Raises:
        RemoteProtocolError: the peer broke the protocol (a server's reply is queued).
        StreamError / TransportError: the stream failed.
    """
    loop = asyncio.get_running_loop()
    while True:
        out = machine.data_to_send()
        if out:
            await stream.write(out)
        event = machine.next_event()
        if event is not None:
            return event
        deadline = machine.get_timer()
        if deadline is None:
            raise RemoteProtocolError(
                "AutoNAT exchange ended without a result", protocol=AUTONAT_PROTOCOL
            )
        remaining = deadline - loop.time()
        if remaining <= 0:
            machine.handle_timer(max(loop.time(), deadline))
            continue
        try:
            async with asyncio.timeout(remaining):
                data = await stream.read(pb.MAX_AUTONAT_V2_MESSAGE)
        except TimeoutError:
            machine.handle_timer(max(loop.time(), deadline))
            continue
        machine.receive_data(data, loop.time())


__all__ = [
    "AUTONAT_PROTOCOL",
    "AUTONAT_V2_DIAL_BACK",
    "AUTONAT_V2_PROTOCOL",
    "DEFAULT_DIAL_BACK_TIMEOUT",
    "AutoNATService",
]
