"""The hostile client itself: honest use reaches the target's handlers (so the attacks in
this folder fail for the reason they test, not because the harness is broken)."""

from __future__ import annotations

from .conftest import Target
from .hostile import FLAG_FIN, TYPE_DATA


async def test_honest_hostile_client_echoes(target: Target) -> None:
    async with await target.secured() as h:
        assert h.handshake is not None and h.handshake.muxer == "/yamux/1.0.0"
        assert await h.echo(1, b"hello") == b"hello"
        assert await h.echo(3, b"x" * 100_000) == b"x" * 100_000
    await target.wait_ended()
    await target.assert_serves_honest_peer()


async def test_frames_are_parsed(target: Target) -> None:
    async with await target.secured() as h:
        await h.echo(1, b"abc")
        assert any(f.type == TYPE_DATA and f.sid == 1 for f in h.frames)
        assert any(f.flags & FLAG_FIN and f.sid == 1 for f in h.frames)
