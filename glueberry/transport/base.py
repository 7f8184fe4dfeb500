"""The interfaces between layers: raw connections, secured connections, muxed streams.

These are structural ``typing.Protocol`` types (architecture C14): the TCP socket, a relayed
circuit and a QUIC stream each provide them without inheriting from anything.

Two reading modes exist, because connection set-up and the data path want different things:

* **pull mode** (set-up): ``await conn.read()`` returns whatever bytes arrived; the upgrade
  pipeline feeds them to a sans-I/O machine (multistream, Noise) and writes its output.
* **push mode** (data path): ``conn.set_receiver(r)`` hands every later chunk straight to
  ``r.data_received`` from the event loop's callback, with no task switch per read
  (performance.md: a ``StreamReader`` costs +0.5 µs per message). Bytes buffered in pull mode
  are delivered to the receiver first, so nothing read ahead is ever lost.

Callback order for a receiver: ``data_received* [eof_received] connection_lost`` (exactly once).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from glueberry.wire.identity import PeerId, PublicKey


class ByteReceiver(Protocol):
    """Receives a connection's bytes in push mode."""

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> None: ...

    def connection_lost(self, exc: BaseException | None) -> None: ...


@runtime_checkable
class RawConnection(Protocol):
    """A reliable, ordered, bidirectional byte pipe (TCP socket, relayed circuit, ...)."""

    #: ``(host, port)`` of each end as the OS reports them.
    local_address: tuple[str, int]
    remote_address: tuple[str, int]
    #: "tcp", "circuit", "memory", ...
    transport_name: str

    async def read(self) -> bytes:
        """Pull mode: the next chunk (at least one byte), or ``b""`` at EOF."""
        ...

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes; never blocks. Use :meth:`drain` to honour flow control."""
        ...

    async def drain(self) -> None:
        """Wait until the OS buffer is below its high-water mark."""
        ...

    def set_receiver(self, receiver: ByteReceiver) -> None:
        """Switch to push mode (see module docstring)."""
        ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None:
        """Flush queued bytes, then close."""
        ...

    def abort(self) -> None:
        """Close at once, dropping queued bytes."""
        ...

    def is_closing(self) -> bool: ...

    async def wait_closed(self) -> None: ...


@runtime_checkable
class SecureConnection(RawConnection, Protocol):
    """A raw connection after the security handshake (Noise or TLS).

    ``read``/``write``/``set_receiver`` carry plaintext.
    """

    local_peer: PeerId
    remote_peer: PeerId
    remote_public_key: PublicKey
    #: "/noise" or "/tls/1.0.0"
    security_protocol: str
    #: The muxer agreed during the security handshake (early negotiation), or None.
    early_muxer: str | None
    is_initiator: bool


@runtime_checkable
class Stream(Protocol):
    """One bidirectional, flow-controlled stream of a muxed connection (yamux or QUIC).

    Reads return ``b""`` at end of stream (EOF is not an error); a reset raises
    :class:`glueberry.errors.StreamReset`. ``write`` waits under backpressure (yamux window,
    QUIC flow control, transport buffer), so a slow reader slows the writer end to end.

    A stream is its own async iterator: ``async for chunk in stream`` yields what each
    :meth:`read` returns and ends at end of stream.
    """

    #: Negotiated protocol ID ("" until multistream-select finishes on this stream).
    protocol: str
    stream_id: int

    @property
    def connection(self) -> MuxedConnection: ...

    async def read(self, max_bytes: int = -1) -> bytes:
        """Up to ``max_bytes`` (all buffered bytes if -1); ``b""`` at EOF."""
        ...

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; raises :class:`asyncio.IncompleteReadError` at early EOF."""
        ...

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``; returns once it is accepted by the muxer (window permitting)."""
        ...

    async def close_write(self) -> None:
        """Half-close: send FIN. Reading continues until the peer closes."""
        ...

    async def close(self) -> None:
        """Close both directions gracefully (FIN, then stop reading)."""
        ...

    def reset(self, code: int = 0) -> None:
        """Abort the stream in both directions (yamux RST / QUIC RESET_STREAM)."""
        ...

    @property
    def is_closed(self) -> bool: ...

    def __aiter__(self) -> Self: ...

    async def __anext__(self) -> bytes:
        """The next chunk :meth:`read` returns; ``StopAsyncIteration`` at end of stream."""
        ...


StreamHandler = Callable[[Stream], Awaitable[None]]


@runtime_checkable
class MuxedConnection(Protocol):
    """A secured, multiplexed connection to one peer (TCP+Noise+yamux, QUIC, relayed)."""

    local_peer: PeerId
    remote_peer: PeerId
    remote_public_key: PublicKey
    #: "inbound" or "outbound" (who dialed the underlying transport connection).
    direction: str
    #: "tcp", "quic-v1", "circuit", "memory".
    transport_name: str
    security_protocol: str
    muxer_protocol: str
    local_address: tuple[str, int]
    remote_address: tuple[str, int]

    async def open_stream(self) -> Stream:
        """Open a new raw stream (no protocol negotiated yet)."""
        ...

    async def close(self) -> None:
        """Graceful close (yamux GoAway, QUIC CONNECTION_CLOSE) and wait for teardown."""
        ...

    async def wait_closed(self) -> None:
        """Wait until the connection is gone, whoever closed it (or it was lost)."""
        ...

    @property
    def is_closed(self) -> bool: ...
