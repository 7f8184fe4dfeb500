"""Time, injected: the :class:`Clock` protocol and the real, event-loop based clock.

Architecture convention C12: nothing above the sans-I/O layer reads the time or sleeps on its
own; it asks the clock it was given. The real clock is the running event loop's
(:meth:`asyncio.AbstractEventLoop.time`, monotonic); tests pass
:class:`glueberry.testing.FakeClock` and move time forward by hand, so handshake timeouts,
cooldowns and reconnection backoff run in milliseconds and deterministically.

``now()`` is monotonic and only meaningful for differences and deadlines; ``wall()`` is
seconds since the Unix epoch, for timestamps shown to users (events, statistics).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "LoopClock", "TimerHandle"]


@runtime_checkable
class TimerHandle(Protocol):
    """A scheduled callback (``asyncio.TimerHandle`` satisfies it)."""

    def cancel(self) -> None:
        """Do not run the callback. Idempotent."""
        ...


@runtime_checkable
class Clock(Protocol):
    """The time source of a Node and its drivers."""

    def now(self) -> float:
        """Monotonic seconds (deadlines are expressed on this scale)."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch (timestamps for users)."""
        ...

    async def sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds (``<= 0``: just yield to the loop)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Wait until ``now() >= deadline``."""
        ...

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        """Run ``callback`` (in the event loop) once ``now() >= when``."""
        ...


class LoopClock:
    """The real clock: the running loop's monotonic time, ``time.time()`` for wall time.

    Outside a running loop :meth:`now` falls back to ``time.monotonic()`` (what the default
    event loop uses), so configuration code may call it too.
    """

    __slots__ = ()

    def now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(max(0.0, delay))

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - self.now()))

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        return asyncio.get_running_loop().call_at(when, callback)

    def __repr__(self) -> str:
        return "LoopClock()"
