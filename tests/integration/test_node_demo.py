"""The node demo runs end to end and reports every step."""

from __future__ import annotations

import io

from glueberry.demo import run_demo


async def test_run_demo() -> None:
    out = io.StringIO()
    assert await run_demo(out) is True
    text = out.getvalue()
    for line in (
        "three nodes on 127.0.0.1",
        "handshake alice -> bob",
        "handshake alice -> carol",
        "encrypted message and reply, alice <-> bob",
        "1 MiB message, carol -> alice",
        "msgs/s  ok",
        "bob:Established",
        "health: healthy",
        "node demo finished",
    ):
        assert line in text, line
