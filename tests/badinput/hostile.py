"""A hand-rolled hostile libp2p client for the end-to-end bad-input tests (docs/bad-input.md).

It speaks just enough of the stack to reach the layer under attack, then sends whatever the
test crafts:

* a raw loopback TCP socket (``asyncio.open_connection``): no glueberry transport, no
  upgrader, no host, so nothing in the client smooths over what it sends;
* multistream-select and Noise through the sans-I/O machines of this package
  (:class:`~glueberry.proto.multistream.MultistreamDialer`,
  :class:`~glueberry.proto.noise.NoiseHandshake`), whose output can be replaced or corrupted;
* yamux frames packed by hand (:func:`frame`), and a frame reader that keeps the raw frames
  for the test to inspect (nothing is acknowledged or answered unless the test asks).

Everything is bounded in time: every read takes a timeout, so a test that expects the target
to hang up fails instead of hanging when it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from glueberry.proto.multistream import PROTOCOL_ID as MSS
from glueberry.proto.multistream import MultistreamDialer, ProtocolSelected, encode_message
from glueberry.proto.noise import HandshakeCompleted, NoiseHandshake, NoiseTransport
from glueberry.proto.yamux_frames import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    HEADER,
    HEADER_SIZE,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
)
from glueberry.wire.identity import PeerId, PrivateKey

__all__ = [
    "FLAG_ACK",
    "FLAG_FIN",
    "FLAG_RST",
    "FLAG_SYN",
    "MSS",
    "TYPE_DATA",
    "TYPE_GO_AWAY",
    "TYPE_PING",
    "TYPE_WINDOW_UPDATE",
    "Frame",
    "Hostile",
    "frame",
    "mss_open",
]

#: Raw TCP reads of the client.
READ_SIZE = 1 << 16


def frame(
    ftype: int, flags: int, sid: int, length: int, body: bytes = b"", version: int = 0
) -> bytes:
    """One yamux frame, any field value (no validation: that is the point)."""
    return struct.pack(">BBHII", version, ftype, flags, sid, length) + body


def mss_open(protocol: str, payload: bytes = b"") -> bytes:
    """Stream bytes of a lazy multistream dialer: header, proposal, then application data."""
    return encode_message(MSS) + encode_message(protocol) + payload


@dataclass(frozen=True, slots=True)
class Frame:
    """One yamux frame the target sent (header fields and, for Data, the body)."""

    type: int
    flags: int
    sid: int
    length: int
    body: bytes = b""


class Hostile:
    """One hostile connection to a target host (see the module docstring)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.tx: NoiseTransport | None = None
        self.handshake: HandshakeCompleted | None = None
        self._plain = bytearray()  # decrypted bytes not yet parsed as frames
        self._eof = False
        self._pending = b""  # raw bytes read past a negotiation
        self._eof_sent = False
        #: Every frame read so far, in order.
        self.frames: list[Frame] = []
        #: Reset streams the target opens towards us (identify), instead of ignoring them.
        self.refuse_inbound = True

    # --- raw ------------------------------------------------------------------------------

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> Hostile:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        return cls(reader, writer)

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing() and not self._eof_sent:
            self.writer.write(data)

    def write_eof(self) -> None:
        """Half-close our side (TCP FIN); later writes are dropped."""
        self._eof_sent = True
        self.writer.write_eof()

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def read_raw(self, within: float = 2.0) -> bytes:
        """One chunk of raw bytes; ``b""`` once the target closed or reset the connection."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        if self._eof:
            return b""
        try:
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), within)
        except ConnectionError:
            data = b""
        if not data:
            self._eof = True
        return data

    async def read_until_closed(self, within: float = 3.0) -> bytes:
        """Everything the target sends until it closes; fails if it keeps the connection."""
        out = bytearray()
        async with asyncio.timeout(within):
            while chunk := await self.read_raw(within):
                out += chunk
        return bytes(out)

    async def is_open_after(self, delay: float) -> bool:
        """Whether the target still holds the connection ``delay`` seconds from now."""
        try:
            async with asyncio.timeout(delay):
                while await self.read_raw(delay):
                    pass
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        transport = self.writer.transport
        transport.abort()

    async def aclose(self) -> None:
        self.abort()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def __aenter__(self) -> Hostile:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- multistream ------------------------------------------------------------------------

    async def select(self, *protocols: str) -> str:
        """Negotiate one of ``protocols`` as dialer on the raw socket; return the one agreed
        (bytes read past it are served by the next :meth:`read_raw`)."""
        machine = MultistreamDialer(list(protocols))
        self.write(machine.data_to_send())
        async with asyncio.timeout(3):
            while True:
                data = await self.read_raw()
                if not data:
                    raise ConnectionError("target closed during multistream-select")
                machine.receive_data(data)
                self.write(machine.data_to_send())
                for ev in machine.events():
                    assert isinstance(ev, ProtocolSelected)
                    self._pending = ev.trailing_data
                    return ev.protocol

    # --- Noise --------------------------------------------------------------------------------

    async def secure(
        self,
        identity: Any,
        expected: PeerId | None,
        *,
        muxers: tuple[str, ...] = ("/yamux/1.0.0",),
        payload: Callable[[NoiseHandshake], bytes] | None = None,
        msg3: Callable[[bytes], bytes] | None = None,
        early: bytes = b"",
    ) -> HandshakeCompleted:
        """Run the Noise handshake as initiator after ``/noise`` was agreed.

        Args:
            identity: a :class:`PrivateKey`, or any object with ``sign`` and ``public_key``
                (to sign the wrong thing).
            payload: replaces our handshake payload (called with the machine).
            msg3: rewrites message 3 (length prefix included) before it is sent.
            early: plaintext sealed and sent in the same write as message 3 (pipelined).
        """
        machine = NoiseHandshake(True, identity, expected_peer=expected, muxers=muxers)
        if payload is not None:
            machine._our_payload = lambda: payload(machine)  # type: ignore[method-assign]
        self.write(machine.data_to_send())
        async with asyncio.timeout(3):
            while True:
                data = await self.read_raw()
                if not data:
                    raise ConnectionError("target closed during the Noise handshake")
                machine.receive_data(data)
                ev = machine.next_event()
                if isinstance(ev, HandshakeCompleted):
                    out = machine.data_to_send()
                    if msg3 is not None:
                        out = msg3(out)
                    self.write(out + (ev.transport.encrypt(early) if early else b""))
                    self.tx = ev.transport
                    self.handshake = ev
                    if ev.trailing_data:
                        self._plain += ev.transport.decrypt(ev.trailing_data)
                    return ev

    async def connect_secure(
        self, identity: PrivateKey, expected: PeerId, muxers: tuple[str, ...] = ("/yamux/1.0.0",)
    ) -> HandshakeCompleted:
        """multistream ``/noise`` plus the handshake (honest so far)."""
        await self.select("/noise")
        return await self.secure(identity, expected, muxers=muxers)

    def send(self, plaintext: bytes) -> None:
        """Encrypt and write (split in Noise frames as needed)."""
        assert self.tx is not None
        self.write(self.tx.encrypt(plaintext))

    async def recv(self, within: float = 2.0) -> bytes:
        """Decrypted bytes of the next raw read (may be empty if a frame is incomplete);
        raises EOFError once the target closed."""
        assert self.tx is not None
        data = await self.read_raw(within)
        if not data:
            raise EOFError
        return self.tx.decrypt(data)

    # --- yamux ----------------------------------------------------------------------------

    def _parse(self) -> list[Frame]:
        out: list[Frame] = []
        buf = self._plain
        while len(buf) >= HEADER_SIZE:
            _, ftype, flags, sid, length = HEADER.unpack_from(buf, 0)
            size = HEADER_SIZE + (length if ftype == TYPE_DATA else 0)
            if len(buf) < size:
                break
            body = bytes(buf[HEADER_SIZE:size])
            del buf[:size]
            f = Frame(ftype, flags, sid, length, body)
            out.append(f)
            if (
                self.refuse_inbound
                and flags & FLAG_SYN
                and sid % 2 == 0
                and ftype in (TYPE_DATA, TYPE_WINDOW_UPDATE)
            ):
                self.send(frame(TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0))
        self.frames += out
        return out

    async def read_frames(
        self, until: Callable[[Frame], bool] | None = None, within: float = 3.0
    ) -> list[Frame]:
        """Read frames until one satisfies ``until`` (returned last) or the target closes.

        Without ``until``, reads until the target closes the connection. Raises TimeoutError
        when neither happens in ``within`` seconds.
        """
        got: list[Frame] = []
        async with asyncio.timeout(within):
            while True:
                for f in self._parse():
                    got.append(f)
                    if until is not None and until(f):
                        return got
                try:
                    self._plain += await self.recv(within)
                except EOFError:
                    return got

    async def wait_for(self, cond: Callable[[], bool], within: float = 3.0) -> None:
        """Read frames until ``cond()`` (checked first on what was read already)."""
        if not cond():
            await self.read_frames(lambda f: cond(), within)
            assert cond()

    def stream_data(self, sid: int) -> bytes:
        """Every Data byte the target sent on ``sid`` so far."""
        return b"".join(f.body for f in self.frames if f.sid == sid and f.type == TYPE_DATA)

    async def closed_with(self, within: float = 3.0) -> list[Frame]:
        """Frames until the target closes (fails if it does not in ``within`` s)."""
        return await self.read_frames(None, within)

    async def echo(self, sid: int, payload: bytes, protocol: str = "/echo/1.0.0") -> bytes:
        """An honest stream: open ``sid``, negotiate ``protocol`` lazily, send ``payload``,
        half-close, and return what came back after the negotiation (until FIN)."""
        body = mss_open(protocol, payload)
        self.send(
            frame(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0)
            + frame(TYPE_DATA, 0, sid, len(body), body)
            + frame(TYPE_WINDOW_UPDATE, FLAG_FIN, sid, 0)
        )
        data = bytearray()

        def done(f: Frame) -> bool:
            if f.sid != sid:
                return False
            if f.type == TYPE_DATA:
                data.extend(f.body)
            if f.flags & FLAG_RST:
                raise ConnectionResetError(f"stream {sid} reset (code {f.length})")
            return bool(f.flags & FLAG_FIN)

        await self.read_frames(done)
        expect = encode_message(MSS) + encode_message(protocol)
        assert bytes(data[: len(expect)]) == expect, bytes(data[:64])
        return bytes(data[len(expect) :])

    def goaway(self) -> Frame | None:
        """The GoAway the target sent, if any."""
        return next((f for f in self.frames if f.type == TYPE_GO_AWAY), None)

    async def wait_reset(self, sid: int, within: float = 3.0) -> Frame:
        """The RST the target sends on ``sid``."""
        frames = await self.read_frames(lambda f: f.sid == sid and bool(f.flags & FLAG_RST), within)
        last = frames[-1] if frames else None
        assert last is not None and last.sid == sid and last.flags & FLAG_RST, frames[-5:]
        return last
