"""asyncio driver of the libp2p Noise handshake, and the secured connection it produces.

Spec: https://github.com/libp2p/specs/blob/master/noise/README.md (machine and framing in
:mod:`glueberry.proto.noise`).

Theory of operation
-------------------
:func:`secure_outbound` / :func:`secure_inbound` run a
:class:`~glueberry.proto.noise.NoiseHandshake` over a
:class:`~glueberry.transport.base.RawConnection` in pull mode (``await raw.read()``,
``raw.write``) and return a :class:`NoiseConnection`, which implements
:class:`~glueberry.transport.base.SecureConnection`. Bytes the peer sent right behind its
last handshake message (the initiator's first frames) are decrypted at once and served first.

The data path follows performance.md:

* **write** appends plaintext to one buffer. Whenever it holds a full 65519-byte Noise
  plaintext, those full frames are sealed and written at once (one ``raw.write`` per call);
  the tail is sealed and written by a single ``loop.call_soon`` flush scheduled per batch.
  Many small writes in one loop iteration thus share one frame and one syscall, and a lone
  small write still leaves on the next loop iteration. ``drain()`` awaits the raw
  connection's flow control; it does not flush the tail (that would undo the coalescing),
  and the tail is bounded by one frame. A latency-sensitive writer uses ``write_now()`` (or
  ``flush()`` after ``write()``): sealed and written at once, no callback.
* **read, push mode** (after :meth:`NoiseConnection.set_receiver`): every raw chunk is
  decrypted in one call and its plaintext handed to ``receiver.data_received`` once.
* **read, pull mode** (before the muxer starts, e.g. multistream-select over the secured
  channel): ``await read()`` returns the plaintext of the next chunk(s).

A frame that fails authentication (or nonce exhaustion) is fatal: the failure is logged, the
raw connection is aborted, the receiver's ``connection_lost`` gets the
:class:`~glueberry.errors.DecryptionFailed`, and a pending or later ``read()`` raises it. The
connection never continues after such a failure (B-05).

Callback order towards the receiver: ``data_received* [eof_received] connection_lost``, the
last exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from glueberry.errors import (
    ConnectionLost,
    HandshakeTimeout,
    LocalProtocolError,
    SecurityError,
)
from glueberry.proto.noise import (
    MAX_MESSAGE_LENGTH,
    MAX_PLAINTEXT,
    PROTOCOL_ID,
    HandshakeCompleted,
    NoiseHandshake,
    NoiseStaticKey,
    NoiseTransport,
)

if TYPE_CHECKING:
    from glueberry.transport.base import ByteReceiver, RawConnection
    from glueberry.wire.identity import PeerId, PrivateKey, PublicKey

logger = logging.getLogger(__name__)

#: Size of the per-thread plaintext buffer of the zero-copy receive path: one socket read
#: (the TCP transport reads at most 128 KiB) plus a frame left over from the previous one;
#: a larger chunk (another raw transport) is decrypted into fresh memory instead.
SCRATCH_SIZE: Final = 128 * 1024 + MAX_MESSAGE_LENGTH + 2
#: Reads up to this size are decrypted into a fresh ``bytes`` (one small allocation) rather
#: than into the scratch buffer: for a lone small frame (a request, a reply) the scratch
#: path's slicing costs more than the copy it saves.
SMALL_READ: Final = 4096
#: Handshake deadline when the caller gives none (go: 15 s accept timeout, rust: 10 s).
DEFAULT_HANDSHAKE_TIMEOUT: Final = 15.0
DEFAULT_MUXERS: Final = ("/yamux/1.0.0",)


class NoiseConnection:
    """A raw connection secured by Noise: ``read``/``write``/``set_receiver`` carry plaintext.

    Created by :func:`secure_outbound` / :func:`secure_inbound`; implements
    :class:`~glueberry.transport.base.SecureConnection`.
    """

    security_protocol: str = PROTOCOL_ID

    def __init__(
        self,
        raw: RawConnection,
        transport: NoiseTransport,
        *,
        local_peer: PeerId,
        remote_peer: PeerId,
        remote_public_key: PublicKey,
        early_muxer: str | None,
        is_initiator: bool,
        pending: bytes = b"",
    ) -> None:
        """Wrap ``raw`` after a finished handshake.

        Args:
            pending: raw bytes read after the last handshake message; decrypted now.

        Raises:
            DecryptionFailed: ``pending`` does not authenticate.
        """
        self._raw = raw
        self._tx = transport
        self._loop = asyncio.get_running_loop()
        self.local_address: tuple[str, int] = raw.local_address
        self.remote_address: tuple[str, int] = raw.remote_address
        self.transport_name: str = raw.transport_name
        self.local_peer = local_peer
        self.remote_peer = remote_peer
        self.remote_public_key = remote_public_key
        self.early_muxer = early_muxer
        self.is_initiator = is_initiator
        self._wbuf = bytearray()
        self._flush_scheduled = False
        self._closed = False
        self._failed: SecurityError | None = None
        self._receiver: ByteReceiver | None = None
        self._lost_reported = False
        self._reading = False
        self._rbuf = transport.decrypt(pending) if pending else b""

    def __repr__(self) -> str:
        return f"<NoiseConnection {self.remote_peer} at {self.remote_address}>"

    # --- writing ---------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue plaintext; full frames are sealed and written at once, the tail soon after.

        Raises:
            ConnectionLost: the connection is closed, aborted or failed.
        """
        if self._closed or self._failed is not None:
            raise ConnectionLost("write on a closed secure connection")
        buf = self._wbuf
        if len(buf) + len(data) < MAX_PLAINTEXT:
            buf += data
        else:
            self._write_frames(data)
        if buf and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def write_now(self, data: bytes | bytearray | memoryview) -> None:
        """Seal ``data`` (after anything queued) and write it now: :meth:`write` then
        :meth:`flush`, without queueing when nothing is queued (one seal, one raw write, no
        end-of-iteration callback). For a latency-sensitive writer.

        Raises:
            ConnectionLost: the connection is closed, aborted or failed.
        """
        if self._closed or self._failed is not None:
            raise ConnectionLost("write on a closed secure connection")
        if self._wbuf:
            self.write(data)
            self.flush()
            return
        try:
            out = self._tx.seal(data)
        except SecurityError as exc:
            self._fail(exc)
            raise ConnectionLost("secure connection failed") from exc
        self._raw.write(out)

    def _write_frames(self, data: bytes | bytearray | memoryview) -> None:
        """Seal and write every full frame ``buf + data`` holds; keep the tail in ``buf``.

        The buffer is topped up to one frame and the rest of ``data`` is sealed straight
        from the caller's memory: a large write is copied once (by the AEAD), not twice.
        """
        buf = self._wbuf
        n = len(data)
        pos = 0
        with memoryview(data) as mv:
            if buf:
                pos = MAX_PLAINTEXT - len(buf)
                buf += mv[:pos]
                out = self._encrypt(buf)
                buf.clear()
                self._raw.write(out)
            full = (n - pos) - (n - pos) % MAX_PLAINTEXT
            if full:
                with mv[pos : pos + full] as body:
                    out = self._encrypt(body)
                self._raw.write(out)
            if pos + full < n:
                buf += mv[pos + full :]

    def _encrypt(self, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        try:
            return self._tx.seal(data)
        except SecurityError as exc:
            self._fail(exc)
            raise ConnectionLost("secure connection failed") from exc

    def _flush(self) -> None:
        """The once-per-batch callback: seal the tail (less than one frame) and write it."""
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Seal and write the queued tail now, not at the end of the loop iteration.

        For a latency-sensitive writer (e.g. the first message of a burst, through
        ``YamuxStream.flush``); later writes of the iteration are coalesced as usual.
        """
        buf = self._wbuf
        if not buf:
            return
        if self._failed is not None or self._raw.is_closing():
            buf.clear()
            return
        try:
            out = self._encrypt(buf)
        except ConnectionLost:
            buf.clear()
            return
        buf.clear()
        try:
            self._raw.write(out)
        except ConnectionLost:
            # Lost between the write() and this callback: the receiver hears of it through
            # connection_lost; nothing to report here.
            logger.debug("secure connection to %s lost before a flush", self.remote_peer)

    async def drain(self) -> None:
        """Wait for the raw connection's flow control (see the module docstring).

        Raises:
            ConnectionLost: the connection failed or was lost.
        """
        if self._failed is not None:
            raise ConnectionLost("secure connection failed") from self._failed
        await self._raw.drain()

    # --- reading ---------------------------------------------------------------------------

    async def read(self) -> bytes:
        """Pull mode: the plaintext of the next chunk(s), or ``b""`` at end of stream.

        Raises:
            DecryptionFailed: a frame failed authentication (the connection is aborted).
            ConnectionLost: the connection broke.
            LocalProtocolError: in push mode, or concurrently with another read.
        """
        if self._receiver is not None:
            raise LocalProtocolError("read() in push mode", protocol=PROTOCOL_ID)
        if self._reading:
            raise LocalProtocolError("concurrent read()", protocol=PROTOCOL_ID)
        self._reading = True
        try:
            while True:
                if self._failed is not None:
                    raise self._failed
                if self._rbuf:
                    data, self._rbuf = self._rbuf, b""
                    return data
                chunk = await self._raw.read()
                if not chunk:
                    if self._tx.buffered:
                        logger.debug("EOF inside a Noise frame from %s", self.remote_peer)
                    return b""
                try:
                    self._rbuf = self._tx.decrypt(chunk)
                except SecurityError as exc:
                    self._fail(exc)
                    raise
        finally:
            self._reading = False

    def set_receiver(self, receiver: ByteReceiver) -> None:
        """Switch to push mode. Plaintext already decrypted is delivered first, synchronously.

        Raises:
            LocalProtocolError: a receiver is already set, or a ``read()`` is pending.
        """
        if self._receiver is not None:
            raise LocalProtocolError("receiver already set", protocol=PROTOCOL_ID)
        if self._reading:
            raise LocalProtocolError("set_receiver() while a read() is pending")
        self._receiver = receiver
        if self._rbuf:
            data, self._rbuf = self._rbuf, b""
            receiver.data_received(data)
        if self._failed is not None:
            self._report_lost(self._failed)
            return
        self._raw.set_receiver(_RawSide(self, receiver))

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    # --- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Seal and write any queued plaintext, then close the raw connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._wbuf and self._failed is None and not self._raw.is_closing():
            self._flush()
        self._raw.close()

    def abort(self) -> None:
        """Drop queued plaintext and abort the raw connection at once (idempotent)."""
        self._closed = True
        self._wbuf.clear()
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._closed or self._failed is not None or self._raw.is_closing()

    async def wait_closed(self) -> None:
        await self._raw.wait_closed()

    # --- failure ---------------------------------------------------------------------------

    def _fail(self, exc: SecurityError) -> None:
        """Authentication failure or nonce exhaustion: never continue, abort now."""
        if self._failed is not None:
            return
        self._failed = exc
        self._wbuf.clear()
        logger.warning(
            "Noise connection to %s at %s failed (%s): aborting",
            self.remote_peer,
            self.remote_address,
            exc,
        )
        self._raw.abort()
        if self._receiver is not None:
            self._report_lost(exc)

    def _report_lost(self, exc: BaseException | None) -> None:
        receiver = self._receiver
        if self._lost_reported or receiver is None:
            return
        self._lost_reported = True
        receiver.connection_lost(self._failed if self._failed is not None else exc)


class _Scratch(threading.local):
    """One plaintext buffer per thread, shared by the connections of its event loop.

    A chunk is decrypted into it and handed to the receiver, which consumes it before
    returning; ``busy`` catches a receiver that would re-enter (an in-memory pipe delivering
    synchronously): that nested chunk is decrypted into fresh memory instead.
    """

    def __init__(self) -> None:
        self.view = memoryview(bytearray(SCRATCH_SIZE))
        self.busy = False


_scratch = _Scratch()


class _RawSide:
    """The raw connection's receiver: decrypts each chunk and forwards the plaintext.

    Zero-copy path (both neighbours opt in with ``receives_memoryview = True``): the raw
    connection lends a view of its receive buffer, the frames are decrypted in place into
    :class:`_Scratch`, and the receiver gets a view of that, valid during the call only.
    Otherwise, and for every read of at most :data:`SMALL_READ` bytes, the plaintext is a
    fresh ``bytes`` object.
    """

    __slots__ = ("_borrow", "_conn", "_decrypt", "_decrypt_into", "_deliver", "_receiver", "_tx")

    #: ``data_received`` may get a view of the raw connection's receive buffer, valid only
    #: during the call: ``NoiseTransport`` copies what it keeps (a partial frame).
    receives_memoryview = True

    def __init__(self, conn: NoiseConnection, receiver: ByteReceiver) -> None:
        self._conn = conn
        self._receiver = receiver
        self._tx = conn._tx
        self._decrypt = conn._tx.decrypt
        self._decrypt_into = conn._tx.decrypt_into
        self._deliver = receiver.data_received
        self._borrow = getattr(type(receiver), "receives_memoryview", False) is True

    def data_received(self, data: bytes | memoryview) -> None:
        try:
            if len(data) > SMALL_READ:
                scratch = _scratch
                if (
                    self._borrow
                    and not scratch.busy
                    and len(data) + self._tx.buffered <= SCRATCH_SIZE
                ):
                    n = self._decrypt_into(data, scratch.view)
                    if n:
                        scratch.busy = True
                        try:
                            self._deliver(scratch.view[:n])  # type: ignore[arg-type]
                        finally:
                            scratch.busy = False
                    return
            plaintext = self._decrypt(data)
        except SecurityError as exc:
            self._conn._fail(exc)
            return
        if plaintext:
            self._deliver(plaintext)

    def eof_received(self) -> None:
        conn = self._conn
        if conn._failed is not None:
            return
        if conn._tx.buffered:
            logger.debug("EOF inside a Noise frame from %s", conn.remote_peer)
        self._receiver.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._conn._report_lost(exc)


async def _run_handshake(
    raw: RawConnection,
    machine: NoiseHandshake,
    identity: PrivateKey,
    timeout: float | None,  # noqa: ASYNC109 - per-step deadline
) -> NoiseConnection:
    try:
        try:
            async with asyncio.timeout(timeout):
                event = await _exchange(raw, machine)
        except TimeoutError as exc:
            raise HandshakeTimeout(f"Noise handshake timed out after {timeout} s") from exc
        conn = NoiseConnection(
            raw,
            event.transport,
            local_peer=machine.local_peer,
            remote_peer=event.remote_peer,
            remote_public_key=event.remote_public_key,
            early_muxer=event.muxer,
            is_initiator=machine.initiator,
            pending=event.trailing_data,
        )
    except BaseException as exc:
        logger.debug("Noise handshake with %s failed: %r", raw.remote_address, exc)
        raw.abort()
        raise
    logger.debug(
        "Noise handshake with %s at %s done (early muxer %s)",
        conn.remote_peer,
        conn.remote_address,
        conn.early_muxer,
    )
    return conn


async def _exchange(raw: RawConnection, machine: NoiseHandshake) -> HandshakeCompleted:
    out = machine.data_to_send()
    if out:
        raw.write(out)
    while True:
        data = await raw.read()
        if not data:
            raise ConnectionLost("connection closed during the Noise handshake")
        machine.receive_data(data)
        out = machine.data_to_send()
        if out:
            raw.write(out)
        event = machine.next_event()
        if isinstance(event, HandshakeCompleted):
            return event


async def secure_outbound(
    raw: RawConnection,
    identity: PrivateKey,
    expected_peer: PeerId | None,
    muxers: Sequence[str] = DEFAULT_MUXERS,
    timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,  # noqa: ASYNC109 - per-step deadline
    *,
    static: NoiseStaticKey | None = None,
) -> NoiseConnection:
    """Run the Noise handshake as initiator (dialer) and return the secured connection.

    Args:
        raw: a raw connection in pull mode, positioned right after ``/noise`` was agreed.
        identity: our libp2p identity key.
        expected_peer: the dialed peer ID; a different authenticated peer raises
            :class:`~glueberry.errors.PeerIdMismatch`. None skips the check (only for
            addresses without a peer ID).
        muxers: muxers offered for early negotiation (empty: none).
        timeout: deadline in seconds for the whole handshake (None: none).
        static: a :class:`~glueberry.proto.noise.NoiseStaticKey` of ``identity`` to reuse
            (None: a fresh static key for this handshake).

    Raises:
        HandshakeTimeout, ConnectionLost, SecurityError (PeerIdMismatch, DecryptionFailed),
        NegotiationFailed (disjoint muxer lists), RemoteProtocolError. On any failure the raw
        connection is aborted.
    """
    machine = NoiseHandshake(
        True, identity, expected_peer=expected_peer, muxers=muxers, static=static
    )
    return await _run_handshake(raw, machine, identity, timeout)


async def secure_inbound(
    raw: RawConnection,
    identity: PrivateKey,
    muxers: Sequence[str] = DEFAULT_MUXERS,
    timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,  # noqa: ASYNC109 - per-step deadline
    *,
    expected_peer: PeerId | None = None,
    static: NoiseStaticKey | None = None,
) -> NoiseConnection:
    """Run the Noise handshake as responder (listener) and return the secured connection.

    Arguments, errors and cleanup as for :func:`secure_outbound`; ``expected_peer`` is
    optional here (a listener usually accepts any authenticated peer).
    """
    machine = NoiseHandshake(
        False, identity, expected_peer=expected_peer, muxers=muxers, static=static
    )
    return await _run_handshake(raw, machine, identity, timeout)


__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MUXERS",
    "NoiseConnection",
    "secure_inbound",
    "secure_outbound",
]
