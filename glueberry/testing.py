"""Public helpers for testing applications built on glueberry.

* :class:`FakeClock` — a :class:`~glueberry.clock.Clock` whose time moves only when the test
  says so (``await clock.advance(30)``), firing every sleep and timer that falls due on the
  way, in deadline order.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

__all__ = ["FakeClock"]


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A deterministic clock for tests.

    Args:
        start: the initial monotonic time.
        wall_offset: ``wall() == wall_offset + now()``.

    Sleepers and timers fire only inside :meth:`advance`. After each firing the event loop is
    given a few turns (:meth:`settle`), so a task woken at ``t`` that sleeps again until a
    time before the end of the advance also wakes within the same call.
    """

    def __init__(self, start: float = 0.0, *, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset
        self._seq = itertools.count()
        self._heap: list[tuple[float, int, _FakeTimer]] = []

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall_offset + self._now

    def call_at(self, when: float, callback: Callable[[], object]) -> _FakeTimer:
        timer = _FakeTimer(when, callback)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    async def sleep(self, delay: float) -> None:
        await self.sleep_until(self._now + delay)

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = self.call_at(deadline, wake)
        try:
            await fut
        finally:
            timer.cancel()

    @property
    def pending(self) -> int:
        """Sleepers and timers not yet fired or cancelled."""
        return sum(1 for _, _, t in self._heap if not t.cancelled)

    @property
    def next_deadline(self) -> float | None:
        """The earliest pending deadline."""
        live = [w for w, _, t in self._heap if not t.cancelled]
        return min(live) if live else None

    async def settle(self, turns: int = 20) -> None:
        """Give the event loop ``turns`` iterations (lets woken tasks run)."""
        for _ in range(turns):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing what falls due, in order."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        target = self._now + seconds
        await self.settle()
        while self._heap and self._heap[0][0] <= target:
            when, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.cancelled = True
            timer.callback()
            await self.settle()
        self._now = target
        await self.settle()

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now}, pending={self.pending})"
