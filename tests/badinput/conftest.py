"""Fixtures of the end-to-end bad-input tests: a real target Host on loopback TCP, an honest
second peer to prove the listener keeps serving, memory and leak checks (B-42)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from glueberry.net.host import Host, HostConfig
from glueberry.net.services import IdentifyService, PingService
from glueberry.net.testprotocols import ECHO_PROTOCOL, register_test_protocols
from glueberry.transport.base import MuxedConnection, Stream
from glueberry.wire.identity import PeerId, PrivateKey
from tests.resources import nothing_left_behind  # noqa: F401 (an autouse fixture)

from .hostile import Hostile

LOOP = "/ip4/127.0.0.1/tcp/0"
TARGET_KEY = PrivateKey.from_seed(b"\x71" * 32)
HONEST_KEY = PrivateKey.from_seed(b"\x72" * 32)
ATTACKER_KEY = PrivateKey.from_seed(b"\x73" * 32)
#: A handler that never reads (B-19): the peer's data piles up to one window only.
STALL_PROTOCOL = "/badinput/stall/1.0.0"


@dataclass
class Target:
    """The host under attack, with its services and what it reported."""

    host: Host
    identify: IdentifyService
    ping: PingService
    port: int
    #: Connections that ended, as the host saw them (``conn.error`` says why).
    ended: list[MuxedConnection] = field(default_factory=list)
    stalled: list[Stream] = field(default_factory=list)
    #: Every hostile client made, aborted at teardown whatever the test did.
    clients: list[Hostile] = field(default_factory=list)

    @property
    def peer_id(self) -> PeerId:
        return self.host.peer_id

    async def attacker(self) -> Hostile:
        h = await Hostile.connect(self.port)
        self.clients.append(h)
        return h

    async def secured(self, key: PrivateKey = ATTACKER_KEY, *, wait: bool = True) -> Hostile:
        """A hostile client past multistream and Noise (early yamux), ready for frames.

        With ``wait``, returns once the host registered the connection: the initiator is done
        after message 2, and an attack sent before the host finished its side would race the
        upgrade deadline instead of testing the muxer."""
        h = await self.attacker()
        await h.connect_secure(key, self.peer_id)
        if wait:
            n = len(self.host.connections(key.peer_id))
            await until(lambda: len(self.host.connections(key.peer_id)) > n)
        return h

    async def assert_serves_honest_peer(self) -> None:
        """A fresh honest host connects, echoes and leaves: the listener is unaffected."""
        async with Host(HONEST_KEY, config=HostConfig()) as honest:
            async with asyncio.timeout(4):
                stream = await honest.new_stream(self.peer_id, ECHO_PROTOCOL, addrs=self.host.addrs)
                await stream.write(b"still serving")
                await stream.close_write()
                got = b"".join([c async for c in stream])
            assert got == b"still serving"

    async def wait_ended(self, n: int = 1, within: float = 3.0) -> MuxedConnection:
        await until(lambda: len(self.ended) >= n, within)
        return self.ended[n - 1]


async def until(pred: Callable[[], bool], within: float = 3.0) -> None:
    async with asyncio.timeout(within):
        while not pred():  # noqa: ASYNC110 - polling host counters
            await asyncio.sleep(0.005)


#: Deadlines of the tests that wait for them (go: 15 s upgrade, 10 s stream negotiation).
FAST = {"upgrade_timeout": 1.0, "negotiate_timeout": 1.0}
#: A connection "closed at once" goes well before the (2 s) deadline of the default target.
AT_ONCE = 1.5


def config(**kw: Any) -> HostConfig:
    """Short deadlines (2 s) so that time-outs show within a test's budget, long enough that
    a loaded machine never reaches them where a test expects an immediate rejection."""
    kw.setdefault("upgrade_timeout", 2.0)
    kw.setdefault("negotiate_timeout", 2.0)
    kw.setdefault("close_timeout", 1.0)
    return HostConfig(**kw)


@contextlib.asynccontextmanager
async def running_target(cfg: HostConfig | None = None) -> AsyncIterator[Target]:
    host = Host(TARGET_KEY, listen_addrs=[LOOP], config=cfg or config())
    async with host:
        register_test_protocols(host, bench=False)
        target = Target(
            host,
            IdentifyService(host, watch_interval=0, timeout=1.0),
            PingService(host, timeout=1.0),
            host.listen_addrs[0].to_socket_address().port,
        )

        async def stall(stream: Stream) -> None:
            target.stalled.append(stream)
            await asyncio.sleep(3600)

        host.set_stream_handler(STALL_PROTOCOL, stall)
        host.add_connection_listener(on_disconnected=target.ended.append)
        try:
            yield target
        finally:
            for h in target.clients:
                await h.aclose()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    async with running_target() as t:
        yield t


@pytest.fixture
async def fast_target() -> AsyncIterator[Target]:
    """A target with 1 s deadlines, for the tests that wait for them."""
    async with running_target(config(**FAST)) as t:
        yield t


@pytest.fixture(autouse=True)
def no_unexpected_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing crashes: no attack may reach a catch-all (``logger.exception``: "host task
    failed", "handler ... failed") or any other ERROR record of glueberry."""
    yield
    bad = [
        r
        for r in caplog.get_records("call") + caplog.get_records("teardown")
        if r.name.startswith("glueberry") and r.levelno >= logging.ERROR
    ]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="glueberry")
    return caplog


def logged_error(caplog: pytest.LogCaptureFixture, exc_type: type[BaseException]) -> bool:
    """A glueberry log record carries an exception of ``exc_type`` (the typed rejection)."""
    for rec in caplog.records:
        args = rec.args if isinstance(rec.args, tuple) else ()
        if any(isinstance(a, exc_type) for a in args):
            return True
        if rec.exc_info and isinstance(rec.exc_info[1], exc_type):
            return True
    return False


@contextlib.contextmanager
def memory_growth() -> Iterator[Callable[[], int]]:
    """Trace allocations; the callable returns bytes still allocated since entry."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: (gc.collect(), tracemalloc.get_traced_memory()[0] - base)[1]
    finally:
        tracemalloc.stop()
