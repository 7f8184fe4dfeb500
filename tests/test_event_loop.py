"""The async tests run on the loop ``GLUEBERRY_TEST_LOOP`` selects (tests/conftest.py)."""

from __future__ import annotations

import asyncio

from tests.conftest import LOOP


async def test_tests_run_on_the_selected_loop() -> None:
    loop_type = type(asyncio.get_running_loop())
    if LOOP == "uvloop":
        assert loop_type.__module__.startswith("uvloop"), loop_type
    else:
        assert loop_type.__module__.startswith("asyncio"), loop_type
