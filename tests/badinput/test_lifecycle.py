"""B-40, B-41, B-42 end to end: floods of half-open connections, per-peer and per-connection
totals, and shutting a host down in the middle of every kind of attack.

The autouse fixture (conftest) checks after each test that no task or file descriptor is
left and turns a ResourceWarning for an unclosed socket into a failure (B-42)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time

import pytest

from glueberry.errors import ResourceLimitExceeded
from glueberry.net.limits import STREAM_RESOURCE_LIMIT_EXCEEDED, Limits
from glueberry.proto.multistream import encode_message
from glueberry.wire.identity import PrivateKey

from .conftest import (
    FAST,
    STALL_PROTOCOL,
    Target,
    config,
    logged_error,
    memory_growth,
    running_target,
    until,
)
from .hostile import (
    FLAG_RST,
    FLAG_SYN,
    MSS,
    TYPE_DATA,
    TYPE_WINDOW_UPDATE,
    Frame,
    Hostile,
    frame,
    mss_open,
)

MiB = 1 << 20


async def _flood(port: int, n: int, i0: int = 0) -> list[Hostile]:
    """``n`` half-open connections in four flavours: silent, header only, header + proposal,
    and a partial Noise message 1."""
    flavours = [
        b"",
        encode_message(MSS),
        encode_message(MSS) + encode_message("/noise"),
        encode_message(MSS) + encode_message("/noise") + b"\x00\x20" + b"e" * 7,
    ]
    out = []
    for i in range(n):
        try:
            h = await Hostile.connect(port)
        except OSError:
            break
        h.write(flavours[(i0 + i) % 4])
        out.append(h)
    return out


async def _close_all(clients: list[Hostile]) -> None:
    for h in clients:
        await h.aclose()


async def _honest_from(target: Target, ip: str) -> None:
    """An honest peer at another loopback address: raw socket, honest handshake, one echo."""
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port, local_addr=(ip, 0))
    async with Hostile(reader, writer) as h:
        await h.connect_secure(PrivateKey.from_seed(b"\x21" * 32), target.peer_id)
        assert await h.echo(1, b"served during the flood") == b"served during the flood"


async def test_b40_thousand_half_open_connections_from_one_ip() -> None:
    """Loopback capped like any address here: 1000 half-open connections from 127.0.0.1 hold
    8 upgrade slots (the per-IP cap) at any time; the others are closed at once; a peer on
    127.0.0.2 is served meanwhile; the held ones go at the 1 s deadline; memory stays
    bounded."""
    limits = Limits(per_ip_exempt=(), max_inbound_connections=None, max_connections=None)
    async with running_target(config(limits=limits, **FAST)) as target:
        with memory_growth() as grown:
            flood = await _flood(target.port, 1000)
            up = target.host.upgrader
            try:

                def accounted() -> int:
                    refused = target.host.refused_inbound.get("max_pending_upgrades_per_ip", 0)
                    return refused + up.pending_inbound + up.timed_out_inbound

                await until(lambda: accounted() == len(flood), 10)
                assert up.pending_inbound <= 8
                assert set(target.host.refused_inbound) == {"max_pending_upgrades_per_ip"}
                await _honest_from(target, "127.0.0.2")
                assert grown() < 16 * MiB
                await until(lambda: up.pending_inbound == 0, 3)
                assert 8 <= up.timed_out_inbound <= len(flood) // 10
            finally:
                await _close_all(flood)


async def test_b40_flood_beyond_the_global_cap_from_loopback() -> None:
    """Loopback is exempt from the per-IP cap (as in go-libp2p): the global cap of 64
    upgrades then holds (slots come back only at the 1 s deadline); everything over it is
    closed at once and counted."""
    async with running_target(config(**FAST)) as target:
        flood = await _flood(target.port, 500)
        try:
            refused = target.host.refused_inbound
            up = target.host.upgrader
            await until(
                lambda: (
                    refused.get("max_pending_upgrades", 0)
                    + up.pending_inbound
                    + up.timed_out_inbound
                    == len(flood)
                ),
                10,
            )
            assert up.pending_inbound <= 64
            assert refused.get("max_pending_upgrades", 0) >= len(flood) // 2
            # the deadline frees the slots; service resumes
            await until(lambda: target.host.upgrader.pending_inbound == 0, 3)
            await target.assert_serves_honest_peer()
        finally:
            await _close_all(flood)


async def test_b41_per_peer_connection_cap_and_per_connection_stream_cap(
    debug_log: pytest.LogCaptureFixture,
) -> None:
    """One identity opens 10 connections: the 9th and 10th are refused after the handshake
    (ResourceLimitExceeded, go's 8 per peer). On one connection, 300 streams to a handler
    that never returns: the host admits max_inbound_streams_per_connection and resets the
    rest with 0x1002; totals match the configured limits."""
    limits = Limits(max_inbound_streams_per_connection=100, max_negotiating_streams=50)
    async with running_target(config(limits=limits)) as target:
        clients = [await target.secured(wait=False) for _ in range(10)]
        await until(lambda: len(target.host.connections()) == 8)
        await until(
            lambda: len(target.ended) == 0 and logged_error(debug_log, ResourceLimitExceeded)
        )
        assert target.host.limiter.peer_count(clients[0].handshake.remote_peer) == 0  # type: ignore[union-attr]
        open_ones = [c for c in clients if await _usable(c)]
        assert len(open_ones) == 8
        h = open_ones[0]
        body = mss_open(STALL_PROTOCOL)
        resets: dict[int, int] = {}

        async def burst(first: int, n: int) -> None:
            h.send(
                b"".join(
                    frame(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0)
                    + frame(TYPE_DATA, 0, sid, len(body), body)
                    for sid in range(first, first + 2 * n, 2)
                )
            )
            want = len(resets) + n - 50

            def count(f: Frame) -> bool:
                if f.flags & FLAG_RST and f.sid % 2:
                    resets[f.sid] = f.length
                return len(resets) >= want

            await h.read_frames(count, within=3.0)

        # one burst: the negotiation cap (50) binds, the rest is reset with 0x1002
        await burst(3, 300)
        await until(lambda: len(target.stalled) == 50)
        # a second burst once those are handled: the handler cap (100) binds
        await burst(1001, 300)
        await until(lambda: len(target.stalled) == 100)
        assert set(resets.values()) == {STREAM_RESOURCE_LIMIT_EXCEEDED}
        assert len(resets) == 500
        for c in clients:
            await c.aclose()


async def _usable(h: Hostile) -> bool:
    try:
        return await h.echo(1, b"?") == b"?"
    except (AssertionError, ConnectionError):
        return False


async def test_b42_close_during_every_kind_of_attack() -> None:
    """Half-open sockets, a stalled Noise handshake, a connection stuck in a Data body,
    streams stuck in negotiation and in a handler, and a dial to a black hole: close() ends
    everything within its close timeout and leaves nothing behind (the fixture checks)."""
    async with contextlib.AsyncExitStack() as stack:
        target = await stack.enter_async_context(running_target())
        flood = await _flood(target.port, 40)
        stack.push_async_callback(_close_all, flood)
        stuck = await target.secured()
        stuck.send(frame(TYPE_DATA, 0, 1, 200_000, b"partial"))
        busy = await target.secured(PrivateKey.from_seed(b"\x31" * 32))
        busy.send(
            b"".join(
                frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 * i + 1, 0)
                + frame(TYPE_DATA, 0, 2 * i + 1, 20, encode_message(MSS))
                for i in range(50)
            )
        )
        body = mss_open(STALL_PROTOCOL)
        busy.send(
            frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 201, 0) + frame(TYPE_DATA, 0, 201, len(body), body)
        )
        await until(lambda: len(target.stalled) == 1)
        swallowed: list[asyncio.StreamWriter] = []
        blackhole = await asyncio.start_server(lambda r, w: swallowed.append(w), "127.0.0.1", 0)
        hole_port = blackhole.sockets[0].getsockname()[1]
        dial = asyncio.ensure_future(
            target.host.connect(
                PrivateKey.from_seed(b"\x32" * 32).peer_id, [f"/ip4/127.0.0.1/tcp/{hole_port}"]
            )
        )
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await target.host.close()
        assert time.monotonic() - t0 < 2.0
        with contextlib.suppress(Exception):
            await dial
        assert dial.done()
        for h in (stuck, busy):
            await h.read_until_closed(within=1.0)
        blackhole.close()
        for w in swallowed:
            w.close()
        await blackhole.wait_closed()
    gc.collect()
