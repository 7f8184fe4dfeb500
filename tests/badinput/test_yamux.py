"""B-10..B-19 end to end: hand-packed hostile yamux frames against a real Host over loopback
TCP (multistream and Noise done honestly first).

A protocol violation must end the connection with GoAway(1) at once (``conn.error`` is a
RemoteProtocolError with wire code 1); limits must reset streams without ending the
connection; nothing may be buffered for a declared length; the listener keeps serving."""

from __future__ import annotations

import asyncio
import time

import pytest

from glueberry.errors import RemoteProtocolError, StreamReset
from glueberry.net.host import Host
from glueberry.net.limits import STREAM_RESOURCE_LIMIT_EXCEEDED
from glueberry.net.testprotocols import ECHO_PROTOCOL
from glueberry.proto.yamux_frames import INITIAL_STREAM_WINDOW, MAX_U32
from glueberry.wire.identity import PrivateKey

from .conftest import AT_ONCE, STALL_PROTOCOL, Target, memory_growth, until
from .hostile import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    Frame,
    Hostile,
    frame,
    mss_open,
)

MiB = 1 << 20


async def open_stream(h: Hostile, sid: int, protocol: str, payload: bytes = b"") -> None:
    body = mss_open(protocol, payload)
    h.send(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0) + frame(TYPE_DATA, 0, sid, len(body), body))


async def assert_go_away_1(h: Hostile, target: Target) -> None:
    """The target answers GoAway(1) and closes at once; its connection ended on a typed
    RemoteProtocolError; other peers are still served."""
    t0 = time.monotonic()
    await h.closed_with(within=AT_ONCE)
    assert time.monotonic() - t0 < AT_ONCE
    ga = h.goaway()
    assert ga is not None and ga.length == 1, h.frames[-5:]
    conn = await target.wait_ended()
    err = getattr(conn, "error", None)
    assert isinstance(err, RemoteProtocolError) and err.wire_code == 1
    await h.aclose()
    await target.assert_serves_honest_peer()


# --- B-10 / B-11: declared lengths -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("open stream, 0xFFFFFFFF", frame(TYPE_DATA, 0, 1, MAX_U32)),
        ("open stream, window + 1", frame(TYPE_DATA, 0, 1, INITIAL_STREAM_WINDOW + 1)),
        ("Data|SYN, 0xFFFFFFFF", frame(TYPE_DATA, FLAG_SYN, 3, MAX_U32)),
        ("Data|SYN, 256 KiB + 1 (rust CVE-2026-32314)", frame(TYPE_DATA, FLAG_SYN, 3, 262145)),
        ("unknown stream, 0xFFFFFFFF", frame(TYPE_DATA, 0, 999, MAX_U32)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_b10_b11_declared_length_checked_before_the_body(
    target: Target, name: str, header: bytes
) -> None:
    """The header alone, then silence (CVE-2026-73568): refused at once from the header,
    nothing read or allocated for the body."""
    h = await target.secured()
    await open_stream(h, 1, STALL_PROTOCOL)
    await until(lambda: len(target.stalled) == 1)
    with memory_growth() as grown:
        h.send(header)
        await assert_go_away_1(h, target)
        assert grown() < 1 * MiB, name


async def test_b11_data_syn_of_exactly_the_initial_window_is_accepted(target: Target) -> None:
    """The largest legal Data|SYN opens the stream (its body is then negotiated: garbage here,
    so only that stream is reset) and the connection goes on."""
    async with await target.secured() as h:
        body = b"\x00" * INITIAL_STREAM_WINDOW
        h.send(frame(TYPE_DATA, FLAG_SYN, 1, len(body), body))
        await h.wait_reset(1)
        assert await h.echo(3, b"ok") == b"ok"


async def test_b10_stalled_body_holds_one_window_and_other_peers_are_served(
    target: Target,
) -> None:
    """A legal header (a full 256 KiB window), 1000 bytes of body, then silence: the
    connection waits for its body (yamux is ordered), holding nothing beyond the bytes that
    arrived; other peers are served and the host closes it cleanly (B-42)."""
    h = await target.secured()
    await open_stream(h, 1, STALL_PROTOCOL)
    await until(lambda: len(target.stalled) == 1)
    with memory_growth() as grown:
        h.send(frame(TYPE_DATA, 0, 1, INITIAL_STREAM_WINDOW - 100) + b"x" * 1000)
        await asyncio.sleep(0.2)
        assert await h.is_open_after(0.1)
        await target.assert_serves_honest_peer()
        assert grown() < 1 * MiB
    # the host closes it cleanly at shutdown (the fixture checks nothing is left behind)


# --- B-12 / B-13: window updates ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "attack"),
    [
        ("delta 0xFFFFFFFF on an open stream", frame(TYPE_WINDOW_UPDATE, 0, 1, MAX_U32)),
        (
            "two deltas summing past u32",
            frame(TYPE_WINDOW_UPDATE, 0, 1, 0x80000000) * 2,
        ),
        ("SYN with delta 0xFFFFFFFF", frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, MAX_U32)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_b12_window_update_overflow(target: Target, name: str, attack: bytes) -> None:
    h = await target.secured()
    await open_stream(h, 1, STALL_PROTOCOL)
    await until(lambda: len(target.stalled) == 1)
    h.send(attack)
    await assert_go_away_1(h, target)


async def test_b12_window_beyond_16_mib_is_accepted(target: Target) -> None:
    """A large (but u32) window is the peer's business: the host simply may send more."""
    async with await target.secured() as h:
        h.send(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0xF0000000))
        body = mss_open(ECHO_PROTOCOL, b"big window")
        h.send(frame(TYPE_DATA, 0, 1, len(body), body) + frame(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0))
        frames = await h.read_frames(lambda f: f.sid == 1 and bool(f.flags & FLAG_FIN))
        assert b"".join(f.body for f in frames if f.sid == 1).endswith(b"big window")


async def test_b13_reset_code_is_not_a_window_delta(target: Target) -> None:
    """go-yamux v5: WindowUpdate|RST carries the error code in the length. The handler's
    stream is reset with that code; nothing is added to any window; the connection lives."""
    async with await target.secured() as h:
        await open_stream(h, 1, STALL_PROTOCOL)
        await until(lambda: len(target.stalled) == 1)
        h.send(frame(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0x1005))
        stream = target.stalled[0]
        await until(lambda: stream.is_closed)
        assert getattr(stream, "reset_code", None) == 0x1005
        with pytest.raises(StreamReset):
            await stream.read()
        assert await h.echo(3, b"alive") == b"alive"


# --- B-14: frames that break the protocol ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "attack"),
    [
        ("SYN on an open ID", frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)),
        ("SYN with the server's parity", frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 4, 0)),
        ("Data on stream 0", frame(TYPE_DATA, 0, 0, 1, b"x")),
        ("WindowUpdate on stream 0", frame(TYPE_WINDOW_UPDATE, 0, 0, 1)),
        ("version 1", frame(TYPE_PING, FLAG_SYN, 0, 7, version=1)),
        ("type 4", frame(4, 0, 1, 0)),
        ("type 255", frame(255, 0, 0, 0)),
        ("unknown flag 0x10", frame(TYPE_WINDOW_UPDATE, 0x10, 1, 0)),
        ("all flag bits", frame(TYPE_WINDOW_UPDATE, 0xFFFF, 1, 0)),
        ("server-parity ID never opened", frame(TYPE_WINDOW_UPDATE, 0, 1000, 1)),
        (
            "data after FIN",
            frame(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0) + frame(TYPE_DATA, 0, 1, 1, b"x"),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_b14_protocol_violations_end_the_connection(
    target: Target, name: str, attack: bytes
) -> None:
    h = await target.secured()
    await open_stream(h, 1, STALL_PROTOCOL)
    await until(lambda: len(target.stalled) == 1)
    h.send(attack)
    await assert_go_away_1(h, target)


async def test_b14_frames_for_unknown_or_closed_streams_are_ignored(target: Target) -> None:
    """Late frames for streams that are gone (and client-parity IDs never opened) are
    skipped, as go and js do; the connection keeps working."""
    async with await target.secured() as h:
        assert await h.echo(1, b"one") == b"one"
        h.send(
            frame(TYPE_DATA, 0, 1, 5, b"late!")  # stream 1 is closed both ways
            + frame(TYPE_WINDOW_UPDATE, 0, 1, 1000)
            + frame(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0)
            + frame(TYPE_DATA, 0, 77, 3, b"???")  # never opened, client parity
            + frame(TYPE_WINDOW_UPDATE, FLAG_ACK, 79, 0)
            + frame(TYPE_PING, FLAG_ACK, 0, 12345)  # a pong nobody asked for (B-16)
        )
        assert await h.echo(3, b"still fine") == b"still fine"
        assert h.goaway() is None


# --- B-15: stream floods -------------------------------------------------------------------


async def test_b15_ten_thousand_syns(fast_target: Target) -> None:
    """10 000 SYNs in one burst. yamux admits 1000 (its max_inbound_streams) and resets the
    rest; the host negotiates at most 128 at once and resets the others with 0x1002; memory
    stays bounded, the connection lives, and once the negotiations time out (1 s here) it
    serves a new stream."""
    target = fast_target
    h = await target.secured()
    resets: dict[int, int] = {}

    def count(f: Frame) -> bool:
        if f.flags & FLAG_RST and f.sid % 2 == 1:
            resets[f.sid] = f.length
        return len(resets) >= 10_000 - 128

    with memory_growth() as grown:
        h.send(b"".join(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 * i + 1, 0) for i in range(10_000)))
        await h.read_frames(count, within=4.0)
        peak = grown()
    assert list(resets.values()).count(STREAM_RESOURCE_LIMIT_EXCEEDED) >= 1000 - 128
    assert peak < 16 * MiB
    await target.assert_serves_honest_peer()
    # the 128 in negotiation time out, every stream is then reset, and the connection serves
    await h.read_frames(lambda f: count(f) and len(resets) == 10_000, within=3.0)
    assert await h.echo(20_001, b"after the flood") == b"after the flood"
    assert h.goaway() is None
    await h.aclose()


async def test_b15_data_syn_flood_is_bounded() -> None:
    """500 Data|SYN each carrying a full 256 KiB window (125 MiB announced and sent) to a
    handler that never reads: the host holds at most what its inbound-stream limit admits
    and resets the rest; it never buffers the whole flood."""
    from glueberry.net.limits import Limits

    from .conftest import config, running_target

    cfg = config(limits=Limits(max_inbound_streams_per_connection=16, max_negotiating_streams=16))
    async with running_target(cfg) as target:
        h = await target.secured()
        payload = mss_open(STALL_PROTOCOL).ljust(INITIAL_STREAM_WINDOW, b"\x00")
        with memory_growth() as grown:
            peak = 0
            for i in range(100):
                h.send(frame(TYPE_DATA, FLAG_SYN, 2 * i + 1, len(payload), payload))
                await h.drain()
                if i % 10 == 9:
                    await asyncio.sleep(0.01)
                    peak = max(peak, grown())
            await h.read_frames(lambda f: f.sid == 199 and bool(f.flags & (FLAG_RST | FLAG_ACK)))
            peak = max(peak, grown())
        assert len(target.stalled) <= 16
        # 16 stalled streams x 256 KiB, plus transient read buffers
        assert peak < 16 * INITIAL_STREAM_WINDOW + 16 * MiB
        await h.aclose()


# --- B-16: pings ---------------------------------------------------------------------------------


async def test_b16_hundred_thousand_pings(target: Target) -> None:
    async with await target.secured() as h:
        with memory_growth() as grown:
            burst = b"".join(frame(TYPE_PING, FLAG_SYN, 0, i) for i in range(100_000))
            for off in range(0, len(burst), 60_000):
                h.send(burst[off : off + 60_000])
            del burst
            await h.drain()
            assert await h.echo(1, b"after the pings") == b"after the pings"
            assert grown() < 4 * MiB
        pongs = [f for f in h.frames if f.type == TYPE_PING and f.flags & FLAG_ACK]
        # bounded: at most 32 replies per read of the host (go drops beyond its backlog of 32)
        assert 0 < len(pongs) < 100_000 // 10
        assert h.goaway() is None


async def test_b16_single_ping_is_answered_with_its_opaque_value(target: Target) -> None:
    async with await target.secured() as h:
        h.send(frame(TYPE_PING, FLAG_SYN, 0, 0xDEADBEEF))
        frames = await h.read_frames(lambda f: f.type == TYPE_PING)
        assert frames[-1].flags == FLAG_ACK and frames[-1].length == 0xDEADBEEF


# --- B-18: GoAway and EOF mid-transfer ---------------------------------------------------------


async def _start_source(h: Hostile, sid: int, n: int) -> None:
    """Ask the host's source protocol for ``n`` bytes (we grant no window beyond 256 KiB)."""
    await open_stream(h, sid, "/glueberry-test/source/1.0.0", n.to_bytes(8, "big"))
    await h.read_frames(lambda f: f.sid == sid and f.type == TYPE_DATA and len(f.body) > 1000)


async def test_b18_go_away_0_mid_transfer_lets_streams_finish(target: Target) -> None:
    """GoAway(0): no new streams, but the transfer in progress completes."""
    async with await target.secured() as h:
        await _start_source(h, 1, 200_000)
        h.send(frame(TYPE_GO_AWAY, 0, 0, 0))
        frames = await h.read_frames(lambda f: f.sid == 1 and bool(f.flags & FLAG_FIN))
        got = sum(len(f.body) for f in h.frames if f.sid == 1)
        assert got >= 200_000
        assert not frames[-1].flags & FLAG_RST


@pytest.mark.parametrize("code", [1, 2, 0x7777])
async def test_b18_go_away_error_mid_transfer_ends_everything(target: Target, code: int) -> None:
    h = await target.secured()
    await _start_source(h, 1, 10 * MiB)
    h.send(frame(TYPE_GO_AWAY, 0, 0, code))
    await h.closed_with(within=2.0)
    conn = await target.wait_ended()
    assert conn.is_closed
    await h.aclose()
    await target.assert_serves_honest_peer()


async def test_b18_eof_without_go_away_mid_transfer(target: Target) -> None:
    """go-yamux v5 closes with plain EOF: the host resets its streams and cleans up."""
    h = await target.secured()
    await _start_source(h, 1, 10 * MiB)
    h.write_eof()
    await h.closed_with(within=2.0)
    await target.wait_ended()
    await h.aclose()
    await target.assert_serves_honest_peer()


# --- B-17 / B-19: back-pressure between two real hosts ------------------------------------------


async def test_b17_symmetric_backpressure_over_tcp_does_not_deadlock() -> None:
    """Both hosts write 8 MiB to each other on one stream and ping meanwhile, neither side
    reading until it has written everything it can: window updates and pongs still flow."""
    a = Host(PrivateKey.from_seed(b"\x41" * 32), listen_addrs=["/ip4/127.0.0.1/tcp/0"])
    b = Host(PrivateKey.from_seed(b"\x42" * 32), listen_addrs=["/ip4/127.0.0.1/tcp/0"])
    size = 8 * MiB
    async with a, b:
        got_b: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def both_ways(stream: object) -> None:
            from glueberry.transport.base import Stream

            assert isinstance(stream, Stream)
            n = await _exchange(stream, size)
            got_b.set_result(n)

        b.set_stream_handler("/both/1.0.0", both_ways)
        async with asyncio.timeout(20):
            stream = await a.new_stream(b.peer_id, "/both/1.0.0", addrs=b.addrs)
            conn = a.connection_for(b.peer_id)
            assert conn is not None
            pinger = asyncio.ensure_future(_ping_loop(conn))
            try:
                n = await _exchange(stream, size)
            finally:
                pinger.cancel()
                rtts = await asyncio.gather(pinger, return_exceptions=True)
            assert n == size and await got_b == size
            assert rtts


async def _exchange(stream: object, size: int) -> int:
    from glueberry.transport.base import Stream

    assert isinstance(stream, Stream)

    async def write() -> None:
        chunk = b"s" * 65536
        for _ in range(size // len(chunk)):
            await stream.write(chunk)
        await stream.close_write()

    async def read() -> int:
        await asyncio.sleep(0.2)  # let both writers fill the windows first
        n = 0
        async for chunk in stream:
            n += len(chunk)
        return n

    _, n = await asyncio.gather(write(), read())
    return n


async def _ping_loop(conn: object) -> int:
    count = 0
    while True:
        await conn.ping()  # type: ignore[attr-defined]
        count += 1
        await asyncio.sleep(0.01)


async def test_b19_stalled_stream_does_not_block_others_and_holds_one_window(
    target: Target,
) -> None:
    """A handler that never reads: the peer can fill that stream's window and no more
    (one byte more is a protocol error, B-10); meanwhile other streams echo."""
    async with await target.secured() as h:
        await open_stream(h, 1, STALL_PROTOCOL)
        await until(lambda: len(target.stalled) == 1)
        used = len(mss_open(STALL_PROTOCOL))
        with memory_growth() as grown:
            body = b"z" * (INITIAL_STREAM_WINDOW - used)
            h.send(frame(TYPE_DATA, 0, 1, len(body), body))
            for sid in (3, 5, 7):
                assert await h.echo(sid, b"unblocked") == b"unblocked"
            assert grown() < INITIAL_STREAM_WINDOW + 2 * MiB
        assert not [f for f in h.frames if f.sid == 1 and f.type == TYPE_WINDOW_UPDATE and f.length]


async def test_b19_peer_that_grants_no_window_stalls_only_its_stream(target: Target) -> None:
    """We never grant window back: the host's writer on that stream waits after 256 KiB;
    its other streams and its other peers go on."""
    async with await target.secured() as h:
        await open_stream(h, 1, "/glueberry-test/source/1.0.0", (64 * MiB).to_bytes(8, "big"))
        await h.read_frames(lambda f: f.sid == 1 and f.type == TYPE_DATA)
        await asyncio.sleep(0.2)
        sent = sum(len(f.body) for f in h.frames if f.sid == 1)
        assert await h.echo(3, b"other stream") == b"other stream"
        await target.assert_serves_honest_peer()
        h._plain.clear()
        total = sum(len(f.body) for f in h.frames if f.sid == 1)
        assert sent <= total <= INITIAL_STREAM_WINDOW


# --- everything at once ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
async def test_random_frame_sequences_never_crash_the_host(target: Target, seed: int) -> None:
    """Seeded random frames (all types, flag combinations, small IDs, lengths around the
    windows, bodies): the host either keeps the connection or ends it with GoAway(1); it
    never logs an error (autouse check) and keeps serving other peers."""
    import random

    rng = random.Random(seed)
    h = await target.secured()
    out = []
    for _ in range(300):
        ftype = rng.choice([TYPE_DATA, TYPE_DATA, TYPE_WINDOW_UPDATE, TYPE_PING, TYPE_GO_AWAY])
        flags = rng.choice([0, 0, FLAG_SYN, FLAG_ACK, FLAG_FIN, FLAG_RST]) | rng.choice(
            [0, 0, 0, FLAG_SYN | FLAG_FIN, FLAG_ACK | FLAG_RST, FLAG_SYN | FLAG_RST]
        )
        sid = rng.choice([0, 1, 2, 3, 5, 7, rng.randrange(1, 64)])
        length = rng.choice([0, 1, 12, 100, rng.randrange(0, 300)])
        if ftype == TYPE_DATA:
            body = rng.randbytes(length) if rng.random() < 0.7 else mss_open(ECHO_PROTOCOL)[:length]
            length = len(body)
        else:
            body = b""
            if rng.random() < 0.1:
                length = rng.choice([MAX_U32, INITIAL_STREAM_WINDOW, 0x1001])
        if ftype == TYPE_GO_AWAY and rng.random() < 0.7:
            continue  # keep most sequences going past a GoAway
        out.append(frame(ftype, flags, sid, length, body))
    h.send(b"".join(out))
    try:
        await h.read_frames(lambda f: f.type == TYPE_GO_AWAY, within=1.0)
    except TimeoutError:
        pass  # still open: everything was legal enough
    ga = h.goaway()
    assert ga is None or ga.length in (0, 1)
    await h.aclose()
    await target.assert_serves_honest_peer()
