"""YamuxConnection / YamuxStream: the asyncio driver over an in-memory secured connection.

The generic Stream behaviour is in tests/conformance; here are the yamux-specific parts:
coalescing, end-to-end backpressure, keepalive, GoAway, protocol errors, limits, B-17/B-19.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from glueberry.errors import (
    ConnectionLost,
    LocalProtocolError,
    RemoteProtocolError,
    ResourceLimitExceeded,
    StreamClosed,
    StreamReset,
)
from glueberry.net.muxer import YamuxConnection, YamuxStream
from glueberry.proto.yamux import (
    ConnectionTerminated,
    DataReceived,
    StreamOpened,
    YamuxConfig,
    YamuxEvent,
    YamuxSession,
)
from glueberry.proto.yamux_frames import (
    FLAG_ACK,
    FLAG_RST,
    FLAG_SYN,
    INITIAL_STREAM_WINDOW,
    TYPE_GO_AWAY,
    TYPE_WINDOW_UPDATE,
)
from tests.conformance.pairs import MemorySecureConnection, memory_secure_pair, yamux_harness
from tests.proto.yamux_testutil import frame, go_away, parse_frames, window

KIB = 1024
MIB = 1024 * 1024

pytestmark = pytest.mark.timeout(60)


async def until(pred: Callable[[], bool]) -> None:
    """Poll ``pred`` once per millisecond for up to 5 s (the state lives in callbacks)."""
    async with asyncio.timeout(5.0):
        while True:
            if pred():
                return
            await asyncio.sleep(0.001)


class RawPeer:
    """The far end, driven by the test: raw bytes out, a YamuxSession (never auto-accepting)
    to read what our connection sends."""

    def __init__(self, conn: MemorySecureConnection, *, is_client: bool = False) -> None:
        self.conn = conn
        self.session = YamuxSession(is_client, YamuxConfig(keepalive_interval=None), now=0.0)
        self.raw = bytearray()
        self.events: list[YamuxEvent] = []
        self.eof = False
        self.lost = False
        conn.set_receiver(self)

    def data_received(self, data: bytes) -> None:
        self.raw += data
        try:
            self.session.receive_data(data, 0.0)
        except RemoteProtocolError:
            pass
        self.events.extend(self.session.events())

    def eof_received(self) -> None:
        self.eof = True
        self.session.receive_data(b"", 0.0)
        self.events.extend(self.session.events())

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True

    def send(self, data: bytes) -> None:
        self.conn.write(data)

    def flush(self) -> None:
        self.send(self.session.data_to_send())

    def frames(self) -> list[tuple[int, int, int, int, bytes]]:
        return parse_frames(bytes(self.raw))


def raw_pair(
    config: YamuxConfig | None = None, on_stream: Callable[[YamuxStream], None] | None = None
) -> tuple[YamuxConnection, RawPeer]:
    ours, theirs = memory_secure_pair()
    peer = RawPeer(theirs)
    conn = YamuxConnection(
        ours, is_client=True, on_stream=on_stream or (lambda s: None), config=config
    )
    return conn, peer


async def test_attributes() -> None:
    async with yamux_harness() as h:
        d, lst = h.dialer, h.listener
        assert d.direction == "outbound"
        assert lst.direction == "inbound"
        assert d.muxer_protocol == "/yamux/1.0.0"
        assert d.remote_peer == lst.local_peer
        assert d.local_peer == lst.remote_peer
        assert d.remote_public_key == h.secure[0].remote_public_key
        assert d.transport_name == "memory"
        assert not d.is_closed
        local, remote = await h.open()
        assert local.connection is d
        assert remote.connection is lst
        assert d.streams == [local]
        assert repr(local).startswith("<YamuxStream 1")


async def test_small_writes_are_coalesced_into_one_transport_write() -> None:
    async with yamux_harness() as h:
        local, remote = await h.open()
        await asyncio.sleep(0.01)
        before = h.secure[0].write_calls
        for i in range(100):
            await local.write(bytes([i]) * 10)
        assert h.secure[0].write_calls == before  # nothing written yet: one flush per batch
        await asyncio.sleep(0)
        assert h.secure[0].write_calls == before + 1
        assert await remote.readexactly(1000) == b"".join(bytes([i]) * 10 for i in range(100))


async def test_large_writes_flush_at_once() -> None:
    async with yamux_harness() as h:
        local, remote = await h.open()
        await asyncio.sleep(0.01)
        before = h.secure[0].bytes_written
        await local.write(bytes(INITIAL_STREAM_WINDOW))  # reaches the flush threshold
        assert h.secure[0].bytes_written - before > INITIAL_STREAM_WINDOW
        assert len(await remote.readexactly(INITIAL_STREAM_WINDOW)) == INITIAL_STREAM_WINDOW


async def test_window_reopens_only_as_the_application_reads() -> None:
    cfg = YamuxConfig(window_growth="off")
    async with yamux_harness(cfg) as h:
        local, remote = await h.open()
        writer = asyncio.create_task(local.write(bytes(MIB)))
        await asyncio.sleep(0.05)
        assert not writer.done()
        sid = local.stream_id
        assert h.dialer.session.send_window(sid) == 0
        assert h.listener.session.buffered(sid) == INITIAL_STREAM_WINDOW
        # reading less than half the window hands nothing back
        assert len(await remote.read(100 * KIB)) == 100 * KIB
        await asyncio.sleep(0.05)
        assert h.dialer.session.send_window(sid) == 0
        # crossing half the window does
        assert len(await remote.read(30 * KIB)) == 30 * KIB
        await until(lambda: h.listener.session.buffered(sid) > 126 * KIB)
        got = 130 * KIB
        while got < MIB:
            got += len(await remote.read())
        await writer


async def test_b19_slow_reader_does_not_stall_other_streams() -> None:
    async with yamux_harness() as h:
        slow_local, slow_remote = await h.open()
        fast_local, fast_remote = await h.open()
        blocked = asyncio.create_task(slow_local.write(bytes(4 * MIB)))
        total = 8 * MIB

        async def fast_writer() -> None:
            for _ in range(total // (64 * KIB)):
                await fast_local.write(bytes(64 * KIB))
            await fast_local.close_write()

        async def fast_reader() -> int:
            n = 0
            while chunk := await fast_remote.read():
                n += len(chunk)
            return n

        async with asyncio.timeout(20):
            _, n = await asyncio.gather(fast_writer(), fast_reader())
        assert n == total
        assert not blocked.done()
        # the slow stream holds at most its window
        assert h.listener.session.buffered(slow_local.stream_id) <= INITIAL_STREAM_WINDOW
        slow_remote.reset()
        with pytest.raises(StreamReset):
            await blocked


async def test_b17_symmetric_backpressure_with_pings_does_not_deadlock() -> None:
    """Both sides write big payloads on one stream at once over a slow link with a small
    transport buffer, while pinging; nothing may deadlock (rust-yamux#227)."""
    cfg = YamuxConfig(keepalive_interval=0.01, ping_timeout=5.0)
    async with yamux_harness(cfg, per_tick=32 * KIB, high_water=16 * KIB) as h:
        local, remote = await h.open()
        size = 6 * MIB

        async def pump(src: YamuxStream, dst: YamuxStream) -> int:
            async def write() -> None:
                for _ in range(size // (128 * KIB)):
                    await src.write(bytes(128 * KIB))
                await src.close_write()

            async def read() -> int:
                n = 0
                while chunk := await dst.read():
                    n += len(chunk)
                return n

            _, n = await asyncio.gather(write(), read())
            return n

        async def pinger(conn: YamuxConnection) -> int:
            count = 0
            for _ in range(20):
                await conn.ping()
                count += 1
            return count

        async with asyncio.timeout(30):
            results = await asyncio.gather(
                pump(local, remote), pump(remote, local), pinger(h.dialer), pinger(h.listener)
            )
        assert list(results) == [size, size, 20, 20]


async def test_ping_rtt() -> None:
    async with yamux_harness() as h:
        rtt = await h.dialer.ping()
        assert 0 <= rtt < 1
        assert h.dialer.session.rtt == rtt


async def test_keepalive_keeps_a_live_connection() -> None:
    cfg = YamuxConfig(keepalive_interval=0.02, ping_timeout=0.5)
    async with yamux_harness(cfg) as h:
        local, remote = await h.open()
        await asyncio.sleep(0.2)
        assert not h.dialer.is_closed
        assert h.dialer.session.rtt is not None  # keepalive pings were answered
        await local.write(b"still here")
        assert await remote.readexactly(10) == b"still here"


async def test_keepalive_timeout_closes_the_connection() -> None:
    cfg = YamuxConfig(keepalive_interval=0.02, ping_timeout=0.05)
    conn, peer = raw_pair(cfg)  # the raw peer never answers pings
    stream = await conn.open_stream()
    reader = asyncio.create_task(stream.read())
    with pytest.raises(StreamReset) as info:
        async with asyncio.timeout(2):
            await reader
    assert info.value.remote
    assert conn.is_closed
    assert isinstance(conn.error, ConnectionLost)
    await conn.wait_closed()
    assert any(f[0] == 2 and f[1] == FLAG_SYN for f in peer.frames())  # a ping went out


async def test_protocol_error_sends_go_away_1_and_closes() -> None:
    conn, peer = raw_pair()
    stream = await conn.open_stream()
    await asyncio.sleep(0.01)
    peer.send(b"\x01" + frame(2, FLAG_SYN, 0, 1)[1:])  # version 1
    await conn.wait_closed()
    assert isinstance(conn.error, RemoteProtocolError)
    assert peer.frames()[-1] == (TYPE_GO_AWAY, 0, 0, 1, b"")
    await until(lambda: peer.eof or peer.lost)
    with pytest.raises(StreamReset):
        await stream.read()
    with pytest.raises(ConnectionLost):
        await conn.open_stream()


async def test_b10_window_overrun_is_a_protocol_error() -> None:
    conn, peer = raw_pair()
    stream = await conn.open_stream()
    await asyncio.sleep(0.01)
    peer.send(frame(0, FLAG_ACK, stream.stream_id, 0xFFFFFFFF))  # header only, then stall
    await conn.wait_closed()
    assert isinstance(conn.error, RemoteProtocolError)


async def test_remote_go_away_0_stops_new_streams_only() -> None:
    conn, peer = raw_pair()
    stream = await conn.open_stream()
    await asyncio.sleep(0.01)
    peer.send(go_away(0))
    await until(lambda: conn.session.remote_go_away == 0)
    with pytest.raises(ConnectionLost):
        await conn.open_stream()
    await stream.write(b"still allowed")
    await asyncio.sleep(0.01)
    assert any(isinstance(e, DataReceived) for e in peer.events)
    await conn.close()


@pytest.mark.parametrize("code", [1, 2, 99])
async def test_remote_go_away_error_resets_everything(code: int) -> None:
    conn, peer = raw_pair()
    stream = await conn.open_stream()
    await asyncio.sleep(0.01)
    peer.send(go_away(code))
    await conn.wait_closed()
    with pytest.raises(StreamReset):
        await stream.write(b"x")
    assert isinstance(conn.error, ConnectionLost)


async def test_eof_without_go_away_resets_streams() -> None:
    """go-yamux v5 closes normally with a bare EOF."""
    conn, peer = raw_pair()
    stream = await conn.open_stream()
    await asyncio.sleep(0.01)
    peer.conn.close()
    await conn.wait_closed()
    with pytest.raises(StreamReset) as info:
        await stream.read()
    assert info.value.remote
    assert conn.error is None


async def test_abort_resets_readers_writers_and_openers() -> None:
    async with yamux_harness() as h:
        local, _ = await h.open()
        _, remote = await h.open()
        reader = asyncio.create_task(local.read())
        writer = asyncio.create_task(remote.write(bytes(4 * MIB)))
        await asyncio.sleep(0.01)
        h.secure[0].abort()
        for task in (reader, writer):
            with pytest.raises(StreamReset):
                await task
        with pytest.raises(ConnectionLost):
            await h.dialer.open_stream()
        with pytest.raises(ConnectionLost):
            await h.dialer.ping()
        await h.dialer.wait_closed()
        await h.listener.wait_closed()


async def test_close_sends_go_away_0() -> None:
    conn, peer = raw_pair()
    stream = await conn.open_stream()
    await conn.close()
    assert conn.is_closed
    kinds = [(f[0], f[3]) for f in peer.frames()]
    assert kinds[-1] == (TYPE_GO_AWAY, 0)
    assert peer.eof
    with pytest.raises(StreamReset) as info:
        await stream.read()
    assert not info.value.remote
    await conn.close()  # idempotent


async def test_on_stream_failure_resets_the_stream() -> None:
    def boom(stream: YamuxStream) -> None:
        raise RuntimeError("handler bug")

    conn, peer = raw_pair(on_stream=boom)
    peer.send(window(2, 0, FLAG_SYN))
    await until(lambda: any(f[1] & FLAG_RST for f in peer.frames()))
    assert not conn.is_closed
    await conn.close()


async def test_inbound_streams_are_accepted_with_ack() -> None:
    accepted: list[YamuxStream] = []
    conn, peer = raw_pair(on_stream=accepted.append)
    peer.send(window(2, 0, FLAG_SYN) + frame(0, 0, 2, 5, b"hello"))
    await until(lambda: bool(peer.raw))
    assert peer.frames()[0] == (TYPE_WINDOW_UPDATE, FLAG_ACK, 2, 0, b"")
    assert [s.stream_id for s in accepted] == [2]
    assert await accepted[0].read() == b"hello"
    await conn.close()


async def test_ack_backlog_makes_open_stream_wait() -> None:
    conn, peer = raw_pair(YamuxConfig(ack_backlog=4))
    streams = [await conn.open_stream() for _ in range(4)]
    opener = asyncio.create_task(conn.open_stream())
    await asyncio.sleep(0.02)
    assert not opener.done()
    peer.send(window(streams[0].stream_id, 0, FLAG_ACK))
    async with asyncio.timeout(2):
        fifth = await opener
    assert fifth.stream_id == 9
    # a local reset frees a slot too
    opener = asyncio.create_task(conn.open_stream())
    await asyncio.sleep(0.01)
    assert not opener.done()
    streams[1].reset()
    async with asyncio.timeout(2):
        await opener
    await conn.close()


async def test_max_outbound_streams() -> None:
    conn, _ = raw_pair(YamuxConfig(max_outbound_streams=2))
    await conn.open_stream()
    await conn.open_stream()
    with pytest.raises(ResourceLimitExceeded):
        await conn.open_stream()
    await conn.close()


async def test_cancelled_write_and_read_leave_the_stream_usable() -> None:
    async with yamux_harness() as h:
        local, remote = await h.open()
        writer = asyncio.create_task(local.write(bytes(MIB)))
        await asyncio.sleep(0.02)
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        reader = asyncio.create_task(local.read())
        await asyncio.sleep(0.01)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        # the part that was accepted before the cancellation arrives intact
        got = await remote.read()
        while len(got) < INITIAL_STREAM_WINDOW:
            got += await remote.read()
        assert got == bytes(INITIAL_STREAM_WINDOW)
        await remote.write(b"pong")
        assert await local.read() == b"pong"


async def test_concurrent_reads_are_refused() -> None:
    async with yamux_harness() as h:
        local, _ = await h.open()
        first = asyncio.create_task(local.read())
        await asyncio.sleep(0)
        with pytest.raises(LocalProtocolError):
            await local.read()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_data_after_local_close_is_discarded_without_stalling_the_peer() -> None:
    async with yamux_harness() as h:
        local, remote = await h.open()
        await local.close()
        async with asyncio.timeout(5):
            await remote.write(bytes(4 * MIB))  # window keeps reopening although nobody reads
        await remote.close_write()
        await until(lambda: not h.dialer.streams)
        with pytest.raises(StreamClosed):
            await local.read()


async def test_inbound_stream_limit_resets_extra_streams() -> None:
    accepted: list[YamuxStream] = []
    conn, peer = raw_pair(YamuxConfig(max_inbound_streams=3), on_stream=accepted.append)
    peer.send(b"".join(window(2 * i + 2, 0, FLAG_SYN) for i in range(5)))
    await until(lambda: sum(f[1] == FLAG_RST for f in peer.frames()) == 2)
    assert len(accepted) == 3
    await conn.close()


async def test_streams_after_close_are_refused_and_no_tasks_leak() -> None:
    before = asyncio.all_tasks()
    async with yamux_harness() as h:
        local, remote = await h.open()
        await local.write(b"x")
        await remote.read()
    assert asyncio.all_tasks() == before
    assert h.dialer.is_closed
    assert h.listener.is_closed
    with pytest.raises(ConnectionLost):
        await h.dialer.open_stream()


async def test_peer_session_sees_a_clean_stream_lifecycle() -> None:
    conn, peer = raw_pair()
    stream = await conn.open_stream()
    await stream.write(b"abc")
    await stream.close_write()
    await asyncio.sleep(0.01)
    assert [type(e) for e in peer.events] == [StreamOpened, DataReceived, type(peer.events[2])]
    peer.session.accept_stream(stream.stream_id)
    peer.session.send_data(stream.stream_id, b"xyz")
    peer.session.close_stream(stream.stream_id)
    peer.flush()
    assert await stream.read() == b"xyz"
    assert await stream.read() == b""
    assert stream.is_closed
    assert conn.streams == []
    await conn.close()
    await asyncio.sleep(0.01)
    assert isinstance(peer.events[-1], ConnectionTerminated)


async def test_b15_syn_flood_is_bounded_by_max_inbound_streams() -> None:
    accepted: list[YamuxStream] = []
    conn, peer = raw_pair(on_stream=accepted.append)
    peer.send(b"".join(window(2 * i + 2, 0, FLAG_SYN) for i in range(10_000)))
    await until(lambda: len(peer.raw) >= 10_000 * 12)  # an ACK or a RST for each SYN
    assert sum(f[1] == FLAG_RST for f in peer.frames()) == 9_000
    assert len(accepted) == 1000
    assert conn.session.num_inbound_streams == 1000
    assert not conn.is_closed
    # the accepted streams work
    peer.send(frame(0, 0, accepted[-1].stream_id, 2, b"ok"))
    assert await accepted[-1].read() == b"ok"
    await conn.close()


async def test_write_accepts_any_bytes_like_beyond_the_window() -> None:
    async with yamux_harness() as h:
        local, remote = await h.open()
        payload = bytearray(range(256)) * 4096  # 1 MiB, more than the initial window
        as_ints = memoryview(bytes(payload)).cast("I")
        writer = asyncio.create_task(local.write(as_ints))
        got = bytearray()
        while len(got) < len(payload):
            got += await remote.read()
        await writer
        assert got == payload
        mutable = bytearray(b"x" * 300_000)
        writer = asyncio.create_task(local.write(mutable))
        got.clear()
        while len(got) < 300_000:
            got += await remote.read()
        await writer
        assert got == b"x" * 300_000
