"""Staggered dialing of several addresses on loopback TCP: a dead or silent address ahead of a
live one costs a stagger delay, not a dial timeout; the first connection wins and the other
attempts are cancelled and closed; errors list every address; limits and the gater still
apply; cancellation leaves no task, socket or slot behind."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from glueberry.errors import (
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    PeerBlacklisted,
    ResourceLimitExceeded,
)
from glueberry.net.dialrank import rank_addrs
from glueberry.net.gater import BlockList
from glueberry.net.host import Host, HostConfig
from glueberry.net.limits import Limits
from glueberry.transport.tcp import TcpConnection, TcpListener
from glueberry.wire.identity import PrivateKey
from glueberry.wire.multiaddr import Multiaddr
from tests.resources import nothing_left_behind  # noqa: F401 (an autouse fixture)

from .node_harness import wait_for

V4 = "/ip4/127.0.0.1/tcp/0"
V6 = "/ip6/::1/tcp/0"


def make_host(seed: int, *listen: str, **config: Any) -> Host:
    return Host(
        PrivateKey.from_seed(bytes([seed]) * 32),
        listen_addrs=list(listen),
        config=HostConfig(**config),
    )


def closed_port(host: str = "::1") -> str:
    """An address nothing listens on (connection refused at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    return f"/ip{6 if family == socket.AF_INET6 else 4}/{host}/tcp/{port}"


@contextlib.asynccontextmanager
async def silent_listeners(
    n: int, host: str = "::1"
) -> AsyncIterator[tuple[list[str], list[TcpConnection]]]:
    """``n`` listeners that accept and never say a word."""
    accepted: list[TcpConnection] = []
    async with contextlib.AsyncExitStack() as stack:
        addrs = []
        for _ in range(n):
            lst = await stack.enter_async_context(
                await TcpListener.create(host, 0, accepted.append)
            )
            addrs.append(f"/ip6/{host}/tcp/{lst.addresses[0][1]}")
        try:
            yield addrs, accepted
        finally:
            for conn in accepted:
                conn.abort()
                await conn.wait_closed()


async def closed_by_dialer(conn: TcpConnection) -> None:
    """Read what the dialer sent (multistream, Noise) until it closes the connection."""
    async with asyncio.timeout(5):
        with contextlib.suppress(ConnectionLost):
            while await conn.read():
                pass


def first_is(addr: str, addrs: list[str]) -> None:
    """The plan dials ``addr`` first (IPv6 goes first: the setups rely on it)."""
    assert str(rank_addrs([Multiaddr(a) for a in addrs])[0].addr) == addr


async def test_refused_address_first_costs_nothing() -> None:
    async with make_host(1) as a, make_host(2, V4) as b:
        addrs = [str(b.addrs[0]), closed_port()]
        first_is(addrs[1], addrs)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        conn = await a.connect(b.peer_id, addrs)
        assert loop.time() - t0 < 0.5  # the refusal starts the next address at once
        assert conn.remote_peer == b.peer_id
        assert a.limiter.connections == 1


async def test_silent_address_first_costs_a_stagger_not_a_timeout() -> None:
    """A listener that accepts and never answers (a stale port now used by something else)
    ahead of the live address: connected after about dial_stagger, not dial_address_timeout
    (6 s); the silent attempt is cancelled and its socket closed."""
    async with (
        silent_listeners(1) as (silent, accepted),
        make_host(1) as a,
        make_host(2, V4) as b,
    ):
        addrs = [silent[0], str(b.addrs[0])]
        first_is(silent[0], addrs)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        conn = await a.connect(b.peer_id, addrs)
        elapsed = loop.time() - t0
        assert 0.2 <= elapsed < 2.0  # held for dial_stagger (0.25 s) while upgrading
        assert conn.remote_peer == b.peer_id
        assert len(accepted) == 1
        # the losing attempt: cancelled, its socket closed, its slot released
        await closed_by_dialer(accepted[0])
        await wait_for(lambda: a.limiter.connections == 1, what="the loser's slot")
        assert len(a.connections()) == 1


@pytest.mark.parametrize("cap", [4, 2])
async def test_silent_addresses_run_in_parallel_within_the_concurrency_cap(cap: int) -> None:
    """Each attempt holds the next for dial_stagger once its socket is up, so three silent
    addresses are all in flight after about 0.5 s, unless the cap is lower."""
    async with (
        silent_listeners(3) as (silent, accepted),
        make_host(1, dial_timeout=1.0, dial_concurrency=cap) as a,
    ):
        other = PrivateKey.from_seed(b"\x33" * 32).peer_id
        task = asyncio.ensure_future(a.connect(other, silent))
        await asyncio.sleep(0.8)
        assert len(accepted) == min(cap, 3)
        assert not task.done()
        with pytest.raises(ConnectTimeout):
            await task


async def test_concurrency_one_is_one_address_after_another() -> None:
    async with (
        silent_listeners(1) as (silent, _),
        make_host(3, V4) as c,
        make_host(4, dial_concurrency=1, dial_address_timeout=0.3) as d,
    ):
        addrs = [silent[0], str(c.addrs[0])]
        first_is(silent[0], addrs)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await d.connect(c.peer_id, addrs)
        assert loop.time() - t0 >= 0.3  # the silent attempt ran to its timeout first


async def test_simultaneous_attempts_leave_one_connection() -> None:
    """No stagger: both addresses of the peer are dialed at once and both may complete; one
    connection is kept, the other attempt is cancelled or closed, on both sides."""
    async with make_host(2, V4, V6) as b:
        for i in range(5):
            async with make_host(10 + i, dial_stagger=0.0, dial_stagger_local=0.0) as a:
                conn = await a.connect(b.peer_id, [str(x) for x in b.addrs])
                assert a.connections() == [conn]
                await wait_for(lambda: len(b.connections()) == 1, what="one connection on b")
                await wait_for(lambda: a.limiter.connections == 1, what="one slot on a")
            await wait_for(lambda: not b.connections(), what="b sees a go")


async def test_all_fail_error_lists_every_address() -> None:
    async with silent_listeners(1) as (silent, _), make_host(1, dial_address_timeout=0.3) as a:
        other = PrivateKey.from_seed(b"\x33" * 32).peer_id
        dead = [closed_port(), closed_port("127.0.0.1")]
        addrs = [dead[1], silent[0], dead[0]]
        with pytest.raises(ConnectError) as info:
            await a.connect(other, addrs)
        err = info.value
        assert type(err) is ConnectError
        listed = [str(addr) for addr, _ in err.errors]
        assert listed == [str(s.addr) for s in rank_addrs([Multiaddr(x) for x in addrs])]
        assert sorted(listed) == sorted(addrs)
        for addr in addrs:
            assert addr in str(err)
        kinds = {str(addr): type(e) for addr, e in err.errors}
        assert kinds[silent[0]] is ConnectTimeout
        assert a.limiter.connections == 0
    # every address timed out: a ConnectTimeout that still lists them all
    async with silent_listeners(2) as (silent, _), make_host(1, dial_address_timeout=0.3) as a:
        with pytest.raises(ConnectTimeout) as tinfo:
            await a.connect(other, silent)
        assert len(tinfo.value.errors) == 2


async def test_dial_timeout_bounds_the_whole_dial() -> None:
    """Attempts held at the concurrency cap until dial_timeout: the addresses never tried
    are listed as not dialed."""
    async with (
        silent_listeners(3) as (silent, accepted),
        make_host(1, dial_timeout=0.4, dial_concurrency=2) as a,
    ):
        other = PrivateKey.from_seed(b"\x33" * 32).peer_id
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(ConnectTimeout) as info:
            await a.connect(other, silent)
        assert loop.time() - t0 < 1.5
        errors = info.value.errors
        assert len(errors) == 3 and len(accepted) == 2
        assert "not dialed" in str(errors[-1][1])


async def test_limit_stops_further_attempts_and_gater_skips_an_address() -> None:
    async with (
        silent_listeners(1) as (silent, _),
        make_host(2, V4) as b,
        make_host(1, limits=Limits(max_outbound_connections=1), dial_address_timeout=0.5) as a,
    ):
        dead = closed_port("127.0.0.2")
        # the silent attempt holds the only outbound slot; the next address hits the limit
        # and nothing after it is tried
        with pytest.raises(ConnectError) as info:
            await a.connect(b.peer_id, [silent[0], str(b.addrs[0]), dead])
        errors = info.value.errors
        assert len(errors) == 2
        assert isinstance(errors[1][1], ResourceLimitExceeded)
        assert not b.connections() and a.limiter.connections == 0
    gate = BlockList()
    gate.block_network("::1/128")
    async with (
        silent_listeners(1) as (silent, accepted),
        make_host(2, V4) as b,
        make_host(1, gater=gate) as a,
    ):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await a.connect(b.peer_id, [silent[0], str(b.addrs[0])])
        assert loop.time() - t0 < 0.5  # refused by the gater: next address at once
        assert not accepted  # never dialed
        with pytest.raises(PeerBlacklisted):
            await a.connect(PrivateKey.from_seed(b"\x35" * 32).peer_id, silent)


async def test_cancelled_dial_leaves_nothing_behind() -> None:
    async with silent_listeners(3) as (silent, accepted), make_host(1) as a:
        other = PrivateKey.from_seed(b"\x33" * 32).peer_id
        task = asyncio.ensure_future(a.connect(other, silent))
        await wait_for(lambda: len(accepted) >= 2, what="attempts in flight")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # connect() returns only once its attempts are gone
        assert a.limiter.connections == 0
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("host-dial")]
        for conn in accepted:
            await closed_by_dialer(conn)
