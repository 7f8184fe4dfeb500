"""Suite-wide test settings: which asyncio event loop the async tests run on.

``GLUEBERRY_TEST_LOOP=uvloop`` runs every async test on uvloop instead of asyncio's default
loop (CI runs the transport, host and node suites both ways: glueberry supports both loops).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping

import pytest

LOOP = os.environ.get("GLUEBERRY_TEST_LOOP", "asyncio")

if LOOP not in ("asyncio", "uvloop"):
    raise pytest.UsageError(f"GLUEBERRY_TEST_LOOP must be asyncio or uvloop, not {LOOP!r}")

if LOOP == "uvloop":
    import uvloop

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
        return {"uvloop": uvloop.new_event_loop}
