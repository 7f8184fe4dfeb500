"""What a test may leave behind: tasks and open sockets, checked after each test.

Sockets, not all file descriptors: an event loop keeps its own descriptors (uvloop opens an
eventfd and a few others lazily, on first use, and keeps them until the loop closes), so a
plain descriptor count would blame the test for the loop. Every socket the stack opens is a
``socket:[inode]`` entry of ``/proc/self/fd``.

A test module (or conftest) uses the check with::

    from tests.resources import nothing_left_behind  # noqa: F401  (an autouse fixture)
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest


def open_sockets() -> int:
    """Sockets this process has open (Linux ``/proc/self/fd``)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:  # closed meanwhile (the listing's own descriptor, for one)
            pass
    return n


def other_tasks() -> set[asyncio.Task[Any]]:
    """Every task of the running loop but the current one."""
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


@pytest.fixture(autouse=True)
async def nothing_left_behind() -> AsyncIterator[None]:
    """Every test ends with the tasks and sockets it started with (waiting up to 2 s for
    closes in flight); an unclosed socket's ResourceWarning is an error (pyproject's
    filterwarnings) and surfaces at the garbage collections here."""
    tasks, sockets = other_tasks(), open_sockets()
    yield
    for i in range(100):
        if other_tasks() <= tasks and open_sockets() <= sockets:
            break
        if i % 10 == 9:
            gc.collect()
        await asyncio.sleep(0.02)
    gc.collect()
    assert other_tasks() <= tasks
    assert open_sockets() <= sockets
