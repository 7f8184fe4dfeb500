"""The Clock protocol: the loop clock and glueberry.testing.FakeClock."""

from __future__ import annotations

import asyncio
import time

import pytest

from glueberry.clock import Clock, LoopClock, TimerHandle
from glueberry.testing import FakeClock


async def test_loop_clock() -> None:
    clock = LoopClock()
    assert isinstance(clock, Clock)
    loop = asyncio.get_running_loop()
    assert abs(clock.now() - loop.time()) < 0.5
    assert abs(clock.wall() - time.time()) < 0.5
    start = clock.now()
    await clock.sleep(0.01)
    await clock.sleep_until(clock.now() + 0.01)
    await clock.sleep(-1)
    assert clock.now() - start >= 0.015
    fired = asyncio.Event()
    handle = clock.call_at(clock.now() + 0.01, fired.set)
    assert isinstance(handle, TimerHandle)
    await asyncio.wait_for(fired.wait(), 1)
    assert repr(clock) == "LoopClock()"


def test_loop_clock_outside_loop() -> None:
    assert abs(LoopClock().now() - time.monotonic()) < 0.5


async def test_fake_clock_sleepers_wake_in_order() -> None:
    clock = FakeClock(start=10.0, wall_offset=1000.0)
    assert isinstance(clock, Clock)
    assert clock.wall() == 1010.0
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, delay: float) -> None:
        await clock.sleep(delay)
        woke.append((name, clock.now()))
        if name == "a":  # re-sleeps within the same advance
            await clock.sleep(1.0)
            woke.append(("a2", clock.now()))

    tasks = [asyncio.create_task(sleeper(n, d)) for n, d in (("b", 5.0), ("a", 2.0), ("c", 50))]
    await clock.settle()
    assert clock.pending == 3 and clock.next_deadline == 12.0
    await clock.advance(10.0)
    assert woke == [("a", 12.0), ("a2", 13.0), ("b", 15.0)]
    assert clock.now() == 20.0 and clock.pending == 1
    tasks[2].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert clock.pending == 0 and clock.next_deadline is None
    assert "pending=0" in repr(clock)


async def test_fake_clock_call_at_and_cancel() -> None:
    clock = FakeClock()
    calls: list[float] = []
    clock.call_at(1.0, lambda: calls.append(clock.now()))
    h = clock.call_at(2.0, lambda: calls.append(-1))
    h.cancel()
    h.cancel()
    await clock.advance(0.5)
    assert calls == []
    await clock.advance(5.0)
    assert calls == [1.0]
    await clock.sleep(0)  # returns at once
    await clock.sleep_until(0.0)
    with pytest.raises(ValueError):
        await clock.advance(-1)
