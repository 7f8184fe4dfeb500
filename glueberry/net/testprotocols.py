"""The interop test protocols: servers and clients (docs/interop.md, "Test protocols").

Every interop peer (go, js, this package) serves the same small protocols so that the suites
can drive any pairing from either side:

=================================== ==========================================================
``/echo/1.0.0``                     echo every byte until EOF, then close
``/glueberry-test/source/1.0.0``    read an 8-byte big-endian N, write N pattern bytes, close
``/glueberry-test/sink/1.0.0``      read until EOF, reply 8-byte big-endian count + SHA-256 of
                                    the bytes, close
``/glueberry-test/reset/1.0.0``     read one byte, then reset the stream
``/glueberry-test/close/1.0.0``     write ``bye``, then close
``/bench/1.0.0``                    the shared peer benchmark (modes E, M, B, R; see
                                    ``shared/peers/README.md``)
=================================== ==========================================================

The *pattern* is deterministic: byte ``i`` of a stream is ``i mod 251`` (a prime, so it never
lines up with buffer sizes), which lets either end check every byte without keeping a copy.

Servers bound what a peer can ask for (a source of at most 16 GiB) and give up on a stream that
makes no progress for :data:`IDLE_TIMEOUT` seconds; on any failure they reset the stream. The
client helpers raise :class:`~glueberry.errors.RemoteProtocolError` when the other side's
answer is wrong, so a test reads as one ``await`` per check.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import resource
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Protocol

from glueberry.errors import GlueberryError, RemoteProtocolError, StreamReset
from glueberry.net.limits import Limits

if TYPE_CHECKING:
    from glueberry.transport.base import Stream

logger = logging.getLogger(__name__)

ECHO_PROTOCOL: Final = "/echo/1.0.0"
SOURCE_PROTOCOL: Final = "/glueberry-test/source/1.0.0"
SINK_PROTOCOL: Final = "/glueberry-test/sink/1.0.0"
RESET_PROTOCOL: Final = "/glueberry-test/reset/1.0.0"
CLOSE_PROTOCOL: Final = "/glueberry-test/close/1.0.0"
BENCH_PROTOCOL: Final = "/bench/1.0.0"

#: Period of the test pattern (byte i == i % 251).
PATTERN_PERIOD: Final = 251
#: Largest source request served (16 GiB, as the go peer).
MAX_SOURCE: Final = 1 << 34
#: A test stream that makes no progress for this long is reset.
IDLE_TIMEOUT: Final = 120.0
#: Write size of the pattern writers.
CHUNK: Final = 65536

#: Stream limits for a host serving these protocols to suites that open 1 000 streams at once
#: (the host's defaults follow go-libp2p's small-machine resource manager).
TEST_LIMITS: Final = Limits(
    max_negotiating_streams=4096,
    max_inbound_streams_per_connection=4096,
    max_streams_per_connection=8192,
)

_PATTERN: Final = bytes(i % PATTERN_PERIOD for i in range(PATTERN_PERIOD + CHUNK))
_PATTERN_VIEW: Final = memoryview(_PATTERN)


def pattern_chunk(offset: int, size: int) -> memoryview:
    """Up to ``min(size, 64 KiB)`` pattern bytes starting at stream offset ``offset``."""
    start = offset % PATTERN_PERIOD
    return _PATTERN_VIEW[start : start + min(size, CHUNK)]


def pattern_matches(offset: int, data: bytes | bytearray | memoryview) -> bool:
    """True iff ``data`` is the pattern from ``offset`` on (any length)."""
    mv = memoryview(data)
    pos = 0
    while pos < len(mv):
        n = min(CHUNK, len(mv) - pos)
        if mv[pos : pos + n] != pattern_chunk(offset + pos, n):
            return False
        pos += n
    return True


class _HostLike(Protocol):
    def set_stream_handler(
        self, protocol: str, handler: Callable[[Stream], Awaitable[None]]
    ) -> None: ...


async def _read(stream: Stream, n: int = -1) -> bytes:
    async with asyncio.timeout(IDLE_TIMEOUT):
        return await stream.read(n)


async def _readexactly(stream: Stream, n: int) -> bytes:
    async with asyncio.timeout(IDLE_TIMEOUT):
        return await stream.readexactly(n)


def _guard(
    name: str, serve: Callable[[Stream], Awaitable[None]]
) -> Callable[[Stream], Awaitable[None]]:
    """Run ``serve``; reset the stream on failure (a failure is logged, a reset is not)."""

    async def handler(stream: Stream) -> None:
        try:
            await serve(stream)
        except StreamReset:
            stream.reset()
        except (GlueberryError, asyncio.IncompleteReadError, TimeoutError) as exc:
            logger.info("%s: %s: %s", name, type(exc).__name__, exc)
            stream.reset()

    handler.__name__ = f"serve_{name}"
    return handler


# --- servers ---------------------------------------------------------------------------------


async def _serve_echo(stream: Stream) -> None:
    while data := await _read(stream):
        await stream.write(data)
    await stream.close()


async def _serve_source(stream: Stream) -> None:
    (n,) = struct.unpack(">Q", await _readexactly(stream, 8))
    if n > MAX_SOURCE:
        raise RemoteProtocolError(f"source length {n} over limit", protocol=SOURCE_PROTOCOL)
    await write_pattern(stream, n)
    await stream.close()


async def _serve_sink(stream: Stream) -> None:
    h = hashlib.sha256()
    n = 0
    while data := await _read(stream):
        h.update(data)
        n += len(data)
    await stream.write(struct.pack(">Q", n) + h.digest())
    await stream.close()


async def _serve_reset(stream: Stream) -> None:
    await _readexactly(stream, 1)
    stream.reset()


async def _serve_close(stream: Stream) -> None:
    await stream.write(b"bye")
    await stream.close()


def rss_cpu_line() -> bytes:
    """``b"<peak RSS KiB> <CPU seconds>\\n"`` of this process (the bench ``R`` reply)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return f"{ru.ru_maxrss} {ru.ru_utime + ru.ru_stime:.6f}\n".encode()


async def _serve_bench(stream: Stream) -> None:
    mode = await stream.readexactly(1)
    if mode == b"E":
        await stream.write(b"E")
        while data := await stream.read():
            await stream.write(data)
    elif mode == b"M":
        await _bench_messages(stream)
        await stream.write(b"K")
    elif mode == b"B":
        (total,) = struct.unpack(">Q", await stream.readexactly(8))
        got = 0
        while got < total:
            data = await stream.read()
            if not data:
                raise asyncio.IncompleteReadError(b"", total - got)
            got += len(data)
        await stream.write(b"K")
    elif mode == b"R":
        await stream.write(rss_cpu_line())
    else:
        raise RemoteProtocolError(f"unknown bench mode {mode!r}", protocol=BENCH_PROTOCOL)
    await stream.close()


async def _bench_messages(stream: Stream) -> None:
    """Mode M: ``u32 n`` then n frames ``[u32 len][payload]``, walked with offsets per read."""
    (count,) = struct.unpack(">I", await stream.readexactly(4))
    header = bytearray()  # partial 4-byte length header across reads
    skip = 0  # payload bytes of the current frame still to come
    seen = 0
    unpack = struct.unpack_from
    while seen < count or skip:
        data = await stream.read()
        if not data:
            raise asyncio.IncompleteReadError(b"", skip + 4)
        pos, end = 0, len(data)
        while pos < end:
            if skip:
                step = min(skip, end - pos)
                skip -= step
                pos += step
                continue
            if seen == count:
                raise RemoteProtocolError("bytes after the last frame", protocol=BENCH_PROTOCOL)
            if header or end - pos < 4:
                take = min(4 - len(header), end - pos)
                header += data[pos : pos + take]
                pos += take
                if len(header) < 4:
                    break
                (skip,) = unpack(">I", header)
                header.clear()
            else:
                (skip,) = unpack(">I", data, pos)
                pos += 4
            seen += 1


SERVERS: Final[dict[str, Callable[[Stream], Awaitable[None]]]] = {
    ECHO_PROTOCOL: _guard("echo", _serve_echo),
    SOURCE_PROTOCOL: _guard("source", _serve_source),
    SINK_PROTOCOL: _guard("sink", _serve_sink),
    RESET_PROTOCOL: _guard("reset", _serve_reset),
    CLOSE_PROTOCOL: _guard("close", _serve_close),
    BENCH_PROTOCOL: _guard("bench", _serve_bench),
}

TEST_PROTOCOLS: Final = tuple(SERVERS)


def register_test_protocols(host: _HostLike, *, bench: bool = True) -> None:
    """Serve the test protocols (and ``/bench/1.0.0`` unless ``bench=False``) on ``host``."""
    for proto, handler in SERVERS.items():
        if proto == BENCH_PROTOCOL and not bench:
            continue
        host.set_stream_handler(proto, handler)


# --- clients ---------------------------------------------------------------------------------


async def write_pattern(stream: Stream, n: int, *, offset: int = 0) -> None:
    """Write ``n`` pattern bytes in 64 KiB writes."""
    pos = 0
    while pos < n:
        chunk = pattern_chunk(offset + pos, n - pos)
        await stream.write(chunk)
        pos += len(chunk)


async def read_pattern(stream: Stream, *, protocol: str = ECHO_PROTOCOL) -> int:
    """Read to EOF checking every byte against the pattern; return the byte count.

    Raises:
        RemoteProtocolError: a byte differs from the pattern.
        StreamReset: the stream was reset.
    """
    off = 0
    while data := await stream.read():
        if not pattern_matches(off, data):
            raise RemoteProtocolError(
                f"pattern mismatch in bytes {off}..{off + len(data)}", protocol=protocol
            )
        off += len(data)
    return off


async def echo_pattern(stream: Stream, n: int) -> None:
    """Send ``n`` pattern bytes on an echo stream while reading them back; half-close; check.

    Raises:
        RemoteProtocolError: wrong bytes or a wrong count came back.
    """

    async def writer() -> None:
        await write_pattern(stream, n)
        await stream.close_write()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(writer())
        got = await read_pattern(stream)
    if got != n:
        raise RemoteProtocolError(f"echoed {got} bytes, sent {n}", protocol=ECHO_PROTOCOL)


async def request_source(stream: Stream, n: int) -> int:
    """Ask a source stream for ``n`` bytes and check them; returns ``n``."""
    await stream.write(struct.pack(">Q", n))
    await stream.close_write()
    got = await read_pattern(stream, protocol=SOURCE_PROTOCOL)
    if got != n:
        raise RemoteProtocolError(f"received {got} bytes, want {n}", protocol=SOURCE_PROTOCOL)
    return got


async def feed_sink(stream: Stream, n: int) -> bytes:
    """Send ``n`` pattern bytes to a sink; check its count and SHA-256; return the digest."""
    h = hashlib.sha256()
    pos = 0
    while pos < n:
        chunk = pattern_chunk(pos, n - pos)
        h.update(chunk)
        await stream.write(chunk)
        pos += len(chunk)
    await stream.close_write()
    reply = b""
    while data := await stream.read():
        reply += data
        if len(reply) > 40:
            break
    if len(reply) != 40:
        raise RemoteProtocolError(f"sink reply is {len(reply)} bytes", protocol=SINK_PROTOCOL)
    (count,) = struct.unpack_from(">Q", reply)
    if count != n:
        raise RemoteProtocolError(f"sink counted {count}, sent {n}", protocol=SINK_PROTOCOL)
    if reply[8:] != h.digest():
        raise RemoteProtocolError("sink SHA-256 differs", protocol=SINK_PROTOCOL)
    return reply[8:]


async def expect_reset(stream: Stream) -> StreamReset:
    """Send one byte to a reset stream; return the :class:`StreamReset` that must follow."""
    await stream.write(b"x")
    try:
        while await stream.read():
            pass
    except StreamReset as exc:
        return exc
    raise RemoteProtocolError("clean EOF where a reset was expected", protocol=RESET_PROTOCOL)


async def expect_close(stream: Stream) -> bytes:
    """Read a close stream to EOF; it must say exactly ``bye``."""
    data = b""
    while chunk := await stream.read():
        data += chunk
        if len(data) > 3:
            break
    if data != b"bye":
        raise RemoteProtocolError(f"received {data!r}, want b'bye'", protocol=CLOSE_PROTOCOL)
    return data


__all__ = [
    "BENCH_PROTOCOL",
    "CLOSE_PROTOCOL",
    "ECHO_PROTOCOL",
    "IDLE_TIMEOUT",
    "MAX_SOURCE",
    "PATTERN_PERIOD",
    "RESET_PROTOCOL",
    "SERVERS",
    "SINK_PROTOCOL",
    "SOURCE_PROTOCOL",
    "TEST_LIMITS",
    "TEST_PROTOCOLS",
    "echo_pattern",
    "expect_close",
    "expect_reset",
    "feed_sink",
    "pattern_chunk",
    "pattern_matches",
    "read_pattern",
    "register_test_protocols",
    "request_source",
    "rss_cpu_line",
    "write_pattern",
]
