"""Stream implementations under test, as connected pairs, for the generic conformance suite.

A *harness* is one connection between a dialer side and a listener side over which streams
can be opened: ``await h.open()`` returns ``(local, remote)``, the two ends of one new stream
(opened by the dialer side, accepted by the listener side). Every Stream implementation
(yamux here; QUIC and relayed streams later) adds a factory to :data:`HARNESSES`.

:class:`MemorySecurePair` is an in-memory ``SecureConnection`` pair for muxers: bytes written
on one end reach the other end's receiver from a ``loop.call_soon`` pump (never
synchronously), in chunks of at most ``max_chunk`` bytes, at most ``per_tick`` bytes per loop
iteration (a slow link), and ``drain()`` waits while more than ``high_water`` bytes are queued,
like a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

from glueberry.errors import ConnectionLost
from glueberry.net.muxer import YamuxConnection, YamuxStream
from glueberry.proto.yamux import YamuxConfig
from glueberry.wire.identity import PrivateKey, PublicKey

if TYPE_CHECKING:
    from glueberry.transport.base import ByteReceiver, Stream


class MemorySecureConnection:
    """One end of an in-memory secured connection (push mode only)."""

    transport_name = "memory"
    security_protocol = "/memory-plaintext"
    early_muxer: str | None = "/yamux/1.0.0"

    def __init__(
        self, key: PrivateKey, remote_key: PrivateKey, *, initiator: bool, link: _Link
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.local_peer = key.peer_id
        self.remote_peer = remote_key.peer_id
        self.remote_public_key: PublicKey = remote_key.public_key
        self.is_initiator = initiator
        self.local_address = ("memory", 1 if initiator else 2)
        self.remote_address = ("memory", 2 if initiator else 1)
        self._link = link
        self.peer: MemorySecureConnection | None = None
        self._receiver: ByteReceiver | None = None
        self._outbox: deque[bytes] = deque()
        self._queued = 0
        self._pump_scheduled = False
        self._closing = False
        self._lost = False
        self._eof_pending = False
        self._drainers: list[asyncio.Future[None]] = []
        self._closed = self._loop.create_future()
        self.bytes_written = 0
        self.write_calls = 0

    # RawConnection / SecureConnection
    async def read(self) -> bytes:
        raise NotImplementedError("MemorySecureConnection supports push mode only")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._lost or self._closing:
            raise ConnectionLost("write on a closed memory connection")
        if data:
            self.write_calls += 1
            chunk = bytes(data)
            self._outbox.append(chunk)
            self._queued += len(chunk)
            self.bytes_written += len(chunk)
            self._schedule()

    async def drain(self) -> None:
        while self._queued > self._link.high_water and not self._lost:
            fut = self._loop.create_future()
            self._drainers.append(fut)
            await fut
        if self._lost:
            raise ConnectionLost("memory connection lost")

    def set_receiver(self, receiver: ByteReceiver) -> None:
        self._receiver = receiver

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        if not self._closing and not self._lost:
            self._closing = True
            self._schedule()

    def abort(self) -> None:
        if self._lost:
            return
        self._outbox.clear()
        self._queued = 0
        peer = self.peer
        self._connection_lost(None)
        if peer is not None:
            self._loop.call_soon(peer._connection_lost, ConnectionResetError("peer aborted"))

    def is_closing(self) -> bool:
        return self._closing or self._lost

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    # pump
    def _schedule(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        peer = self.peer
        if self._lost or peer is None:
            return
        budget = self._link.per_tick
        max_chunk = self._link.max_chunk
        while self._outbox and budget > 0 and not peer._lost:
            head = self._outbox[0]
            n = min(len(head), max_chunk, budget)
            if n < len(head):
                chunk = head[:n]
                self._outbox[0] = head[n:]
            else:
                chunk = self._outbox.popleft()
            self._queued -= n
            budget -= n
            if peer._receiver is not None:
                peer._receiver.data_received(chunk)
            if max_chunk < 64:
                break  # trickle: one small chunk per loop iteration
        if self._queued <= self._link.high_water:
            self._wake_drainers()
        if self._outbox:
            self._schedule()
        elif self._closing:
            self._connection_lost(None)
            if not peer._lost:
                if peer._receiver is not None:
                    peer._receiver.eof_received()
                peer._connection_lost(None)

    def _wake_drainers(self) -> None:
        drainers, self._drainers = self._drainers, []
        for fut in drainers:
            if not fut.done():
                fut.set_result(None)

    def _connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._outbox.clear()
        self._queued = 0
        self._wake_drainers()
        if not self._closed.done():
            self._closed.set_result(None)
        if self._receiver is not None:
            self._receiver.connection_lost(exc)


class _Link:
    def __init__(self, max_chunk: int, per_tick: int, high_water: int) -> None:
        self.max_chunk = max_chunk
        self.per_tick = per_tick
        self.high_water = high_water


_KEYS = (PrivateKey.from_seed(b"\x01" * 32), PrivateKey.from_seed(b"\x02" * 32))


def memory_secure_pair(
    *, max_chunk: int = 64 * 1024, per_tick: int = 1 << 62, high_water: int = 256 * 1024
) -> tuple[MemorySecureConnection, MemorySecureConnection]:
    """Two connected ends (dialer first). Needs a running loop."""
    link = _Link(max_chunk, per_tick, high_water)
    a = MemorySecureConnection(_KEYS[0], _KEYS[1], initiator=True, link=link)
    b = MemorySecureConnection(_KEYS[1], _KEYS[0], initiator=False, link=link)
    a.peer = b
    b.peer = a
    return a, b


class Harness(Protocol):
    """One connection of some Stream implementation, dialer side and listener side."""

    async def open(self) -> tuple[Stream, Stream]:
        """A new stream: (the dialer's end, the listener's end)."""
        ...

    async def close_dialer(self) -> None:
        """Close the dialer's connection (its streams must not hang)."""
        ...


HarnessFactory = Callable[[], AbstractAsyncContextManager[Harness]]


class YamuxHarness:
    """Two YamuxConnections over a :class:`MemorySecurePair`."""

    def __init__(self, config: YamuxConfig | None = None, **link: int) -> None:
        self.secure = memory_secure_pair(**link)
        self._accepted: dict[int, asyncio.Future[YamuxStream]] = {}
        self.dialer = YamuxConnection(
            self.secure[0], is_client=True, on_stream=self._refuse, config=config
        )
        self.listener = YamuxConnection(
            self.secure[1], is_client=False, on_stream=self._on_stream, config=config
        )

    def _future(self, sid: int) -> asyncio.Future[YamuxStream]:
        fut = self._accepted.get(sid)
        if fut is None:
            fut = self._accepted[sid] = asyncio.get_running_loop().create_future()
        return fut

    def _on_stream(self, stream: YamuxStream) -> None:
        self._future(stream.stream_id).set_result(stream)

    @staticmethod
    def _refuse(stream: YamuxStream) -> None:
        stream.reset()

    async def open(self) -> tuple[YamuxStream, YamuxStream]:
        local = await self.dialer.open_stream()
        remote = await self._future(local.stream_id)
        del self._accepted[local.stream_id]
        return local, remote

    async def close_dialer(self) -> None:
        await self.dialer.close()

    async def aclose(self) -> None:
        await self.dialer.close()
        await self.listener.close()
        await self.listener.wait_closed()


def yamux_harness(
    config: YamuxConfig | None = None, **link: int
) -> AbstractAsyncContextManager[YamuxHarness]:
    @contextlib.asynccontextmanager
    async def cm() -> AsyncIterator[YamuxHarness]:
        h = YamuxHarness(config, **link)
        try:
            yield h
        finally:
            await h.aclose()

    return cm()


#: Every Stream implementation, by name. Each value makes a fresh connection.
HARNESSES: dict[str, HarnessFactory] = {
    "yamux-memory": yamux_harness,
    # 7-byte chunks, one per loop iteration: every partial-frame path, end to end.
    "yamux-trickle": lambda: yamux_harness(max_chunk=7),
    # A slow link (64 KiB per loop iteration) with a small socket buffer: drain() matters.
    "yamux-slow-link": lambda: yamux_harness(per_tick=64 * 1024, high_water=64 * 1024),
}
#: The implementations fast enough for bulk and stress tests.
BULK_HARNESSES = {k: v for k, v in HARNESSES.items() if k != "yamux-trickle"}
