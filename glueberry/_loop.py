"""Which asyncio event loop the command-line tools run on: asyncio's own or uvloop.

glueberry runs on any asyncio event loop that implements the standard protocol and transport
API (asyncio's selector loop; uvloop, the ``glueberry[uvloop]`` extra). A library never picks
the loop of the application that embeds it; this module is only for the entry points that own
their process (``glueberry`` CLI, the benchmark peers): ``--loop uvloop`` there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

T = TypeVar("T")

#: Values of the ``--loop`` options.
LOOPS: Final = ("asyncio", "uvloop")


def run(coro: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    """``asyncio.run(coro)`` on the loop named ``loop`` (one of :data:`LOOPS`).

    Raises:
        ValueError: an unknown loop name.
        ModuleNotFoundError: ``"uvloop"`` without uvloop installed (``pip install
            glueberry[uvloop]``); ``coro`` is closed first.
    """
    if loop == "asyncio":
        return asyncio.run(coro)
    if loop != "uvloop":
        coro.close()
        raise ValueError(f"unknown event loop {loop!r} (one of {', '.join(LOOPS)})")
    try:
        import uvloop
    except ModuleNotFoundError as exc:
        coro.close()
        raise ModuleNotFoundError(
            "--loop uvloop needs uvloop: pip install 'glueberry[uvloop]'", name=exc.name
        ) from exc
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
