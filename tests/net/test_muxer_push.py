"""Latency paths of the muxer and Noise drivers: YamuxStream push delivery
(``set_data_callback`` / ``read_nowait``), ``flush`` and ``write_nowait``; NoiseConnection
``flush`` and ``write_now``.

The callback runs on the receive path as bytes arrive; what it takes never wakes ``read()``,
what it leaves does; end of stream and resets still come through ``read()``; taking data
re-opens the window like ``read()`` does.
"""

from __future__ import annotations

import asyncio

import pytest

from glueberry.errors import ConnectionLost, StreamClosed, StreamReset
from glueberry.net.secure import secure_inbound, secure_outbound
from glueberry.proto.yamux import YamuxConfig
from glueberry.proto.yamux_frames import INITIAL_STREAM_WINDOW
from glueberry.transport.memory import memory_pair
from tests.conformance.pairs import yamux_harness
from tests.net.test_secure import ALICE, BOB, CountingRaw, close_both, read_exactly

pytestmark = pytest.mark.timeout(60)


async def test_callback_takes_bytes_as_they_arrive() -> None:
    async with yamux_harness() as h:
        local, remote = await h.open()
        got: list[bytes] = []
        remote.set_data_callback(lambda: got.append(remote.read_nowait()))
        for i in range(3):
            await local.write(bytes([i]) * 100)
            await asyncio.sleep(0.01)
        assert b"".join(got) == b"".join(bytes([i]) * 100 for i in range(3))
        assert remote.read_nowait() == b""  # nothing left
        # A reader parked in read() is not woken for bytes the callback took.
        reader = asyncio.create_task(remote.read())
        await asyncio.sleep(0.01)
        await local.write(b"more")
        await asyncio.sleep(0.01)
        assert got[-1] == b"more"
        assert not reader.done()
        # End of stream still reaches read().
        await local.close_write()
        assert await asyncio.wait_for(reader, 5) == b""


async def test_bytes_left_by_the_callback_go_to_read() -> None:
    async with yamux_harness() as h:
        local, remote = await h.open()
        calls = 0

        def decline() -> None:
            nonlocal calls
            calls += 1

        remote.set_data_callback(decline)
        reader = asyncio.create_task(remote.read())
        await asyncio.sleep(0.01)
        await local.write(b"declined")
        assert await asyncio.wait_for(reader, 5) == b"declined"
        assert calls == 1
        remote.set_data_callback(None)  # off: plain reads again
        await local.write(b"plain")
        assert await asyncio.wait_for(remote.read(), 5) == b"plain"
        assert calls == 1


async def test_taking_reopens_the_window_and_resets_reach_read() -> None:
    async with yamux_harness(YamuxConfig(window_growth="off")) as h:
        local, remote = await h.open()
        taken = 0

        def take() -> None:
            nonlocal taken
            taken += len(remote.read_nowait())

        remote.set_data_callback(take)
        # Four windows' worth: only possible if what the callback takes is credited back.
        await asyncio.wait_for(local.write(bytes(4 * INITIAL_STREAM_WINDOW)), 10)
        await asyncio.sleep(0.01)
        assert taken == 4 * INITIAL_STREAM_WINDOW
        reader = asyncio.create_task(remote.read())
        await asyncio.sleep(0.01)
        local.reset()
        with pytest.raises(StreamReset):
            await asyncio.wait_for(reader, 5)


async def test_flush_writes_before_the_end_of_the_iteration() -> None:
    async with yamux_harness() as h:
        local, remote = await h.open()
        await asyncio.sleep(0.01)
        before = h.secure[0].write_calls
        await local.write(b"now")
        assert h.secure[0].write_calls == before  # coalesced until the end of the iteration
        local.flush()
        assert h.secure[0].write_calls == before + 1  # handed to the secured connection now
        await local.write(b"later")
        assert h.secure[0].write_calls == before + 1  # later writes are coalesced again
        assert await remote.readexactly(8) == b"nowlater"


async def test_noise_flush_seals_the_tail_at_once() -> None:
    a, b = memory_pair()
    counted = CountingRaw(a)
    c, s = await asyncio.gather(
        secure_outbound(counted, ALICE, BOB.peer_id, (), 5),  # type: ignore[arg-type]
        secure_inbound(b, BOB, (), 5),
    )
    counted.writes.clear()
    c.write(b"first")
    assert counted.writes == []  # queued for the end of the iteration ...
    c.flush()
    assert counted.writes == [5 + 18]  # ... or sealed and written now
    c.write(b"second")
    c.write(b"third")
    assert counted.writes == [5 + 18]  # later writes are coalesced again
    await asyncio.sleep(0)
    assert counted.writes == [5 + 18, 11 + 18]
    c.flush()  # nothing queued: nothing written
    assert counted.writes == [5 + 18, 11 + 18]
    assert await read_exactly(s, 16) == b"firstsecondthird"
    await close_both(c, s)


async def test_write_nowait_sends_at_once_or_not_at_all() -> None:
    async with yamux_harness(YamuxConfig(window_growth="off")) as h:
        local, remote = await h.open()
        await asyncio.sleep(0.01)
        before = h.secure[0].write_calls
        assert local.write_nowait(b"now")
        assert h.secure[0].write_calls == before + 1  # out before the end of the iteration
        assert await remote.readexactly(3) == b"now"
        # More than the send window: nothing is sent, write() is the way.
        big = bytes(INITIAL_STREAM_WINDOW + 1)
        assert not local.write_nowait(big)
        assert h.secure[0].write_calls == before + 1
        writer = asyncio.create_task(local.write(big))
        assert len(await remote.readexactly(len(big))) == len(big)
        await asyncio.wait_for(writer, 5)
        await local.close_write()
        with pytest.raises(StreamClosed):
            local.write_nowait(b"late")


async def test_write_nowait_goes_behind_frames_already_queued() -> None:
    """The one-frame latency path is taken only when nothing is queued on the connection;
    otherwise the queued frames (here another stream's) go out first, in the same write."""
    async with yamux_harness(YamuxConfig(window_growth="off")) as h:
        local, remote = await h.open()
        other, remote_other = await h.open()
        await asyncio.sleep(0.01)
        before = h.secure[0].write_calls
        assert local.write_nowait(b"alone")  # nothing queued: header and payload at once
        assert h.secure[0].write_calls == before + 1
        await other.write(b"queued")  # queued for the end of the iteration
        assert h.secure[0].write_calls == before + 1
        assert local.write_nowait(b"behind")  # flushes the queue, then itself, one write
        assert h.secure[0].write_calls == before + 2
        assert await remote.readexactly(11) == b"alonebehind"
        assert await remote_other.readexactly(6) == b"queued"


async def test_noise_write_now_keeps_order_with_queued_writes() -> None:
    a, b = memory_pair()
    counted = CountingRaw(a)
    c, s = await asyncio.gather(
        secure_outbound(counted, ALICE, BOB.peer_id, (), 5),  # type: ignore[arg-type]
        secure_inbound(b, BOB, (), 5),
    )
    counted.writes.clear()
    c.write_now(b"one")
    assert counted.writes == [3 + 18]  # sealed and written at once, nothing queued
    c.write(b"two")
    c.write_now(b"three")  # behind the queued write, in the same frame
    assert counted.writes == [3 + 18, 8 + 18]
    await asyncio.sleep(0)
    assert counted.writes == [3 + 18, 8 + 18]  # nothing left for the scheduled flush
    assert await read_exactly(s, 11) == b"onetwothree"
    c.close()
    with pytest.raises(ConnectionLost):
        c.write_now(b"closed")
    await close_both(c, s)
