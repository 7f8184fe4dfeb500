"""The reference peers against each other (go-libp2p <-> js-libp2p), before any Python.

If these fail, an interop failure elsewhere is not Glueberry's fault: they prove that the
peers from ``interop/build.sh`` serve and drive the test protocols of ``docs/interop.md``
correctly, and they exercise the process fixtures of ``conftest.py``.
"""

from __future__ import annotations

import pytest

from tests.interop.conftest import DialerFactory, ListenerFactory

pytestmark = pytest.mark.interop

ALL = [
    "connect",
    "identify",
    "ping",
    "echo",
    "source",
    "sink",
    "reset",
    "close",
    "goaway",
    "disconnect",
]


@pytest.mark.parametrize(
    ("listener", "dialer", "extra"),
    [
        ("go", "js", []),
        ("js", "go", []),  # go negotiates lazily once identify listed the protocol
        ("js", "go", ["--eager"]),
        ("go", "go", ["--security", "tls"]),
    ],
)
def test_peer_pair(
    peer_listener: ListenerFactory,
    peer_dialer: DialerFactory,
    listener: str,
    dialer: str,
    extra: list[str],
) -> None:
    lis = peer_listener(listener, "--events")
    run = peer_dialer.run(dialer, lis.addr, "all", "--timeout", "30", *extra)
    assert run.ok, run.describe()
    assert set(run.result["tests"]) == set(ALL)
    connect = run.test("connect")
    assert connect["muxer"] == "/yamux/1.0.0"
    assert connect["remote_peer"] == lis.peer_id
    assert connect["security"] == ("/tls/1.0.0" if "tls" in extra else "/noise")
    ident = run.test("identify")
    assert ident["agent_version"].startswith(f"glueberry-interop-{listener}/")
    assert {"/echo/1.0.0", "/glueberry-test/sink/1.0.0", "/ipfs/ping/1.0.0"} <= set(
        ident["protocols"]
    )
    assert run.test("source")["bytes"] == 64 << 20
    assert run.test("sink")["bytes"] == 64 << 20
    # the listener saw the dialer, identified it, and served every test protocol
    seen = lis.wait_event(lambda e: e.get("event") == "identified", what="identify")
    assert seen["agent_version"].startswith(f"glueberry-interop-{dialer}/")
    for proto in ("/glueberry-test/source/1.0.0", "/glueberry-test/sink/1.0.0"):
        ev = lis.wait_event(
            lambda e, p=proto: e.get("event") == "stream" and e.get("protocol") == p, what=proto
        )
        assert ev["ok"] and ev["bytes"] == 64 << 20


def test_bench_workload_smoke(peer_listener: ListenerFactory, peer_dialer: DialerFactory) -> None:
    """The go dialer runs /bench/1.0.0 against the js listener: the bench JSON keys."""
    lis = peer_listener("js")
    run = peer_dialer.run(
        "go",
        lis.addr,
        "bench",
        "--setup-n",
        "2",
        "--msgs",
        "200",
        "--bulk-mib",
        "2",
        "--rtt-n",
        "20",
        "--warmup",
        "2",
        "--security",
        "noise",
    )
    assert run.ok, run.describe()
    for key in (
        "setup_ms",
        "msgs_per_s",
        "bulk_MBps",
        "rtt_us_median",
        "rtt_us_p99",
        "rss_listener_MB",
        "rss_dialer_MB",
        "msgs_cpu_us_dialer",
        "msgs_cpu_us_listener",
    ):
        assert key in run.result, key
    assert len(run.result["setup_ms"]) == 2


async def test_async_dialer_and_event_wait(
    peer_listener: ListenerFactory, peer_dialer: DialerFactory
) -> None:
    """``arun`` and ``await_event`` keep the event loop free while a peer runs."""
    lis = peer_listener("go", "--security", "noise", "--events")
    run = await peer_dialer.arun("js", lis.addr, "ping", "--pings", "2")
    assert run.ok, run.describe()
    assert len(run.test("ping")["rtts_us"]) == 2
    ev = await lis.await_event(lambda e: e.get("event") == "connected", what="connection")
    assert ev["security"] == "/noise"


def test_unknown_or_missing_peer_fails_not_skips() -> None:
    from tests.interop.conftest import peer_binary

    with pytest.raises(pytest.fail.Exception):
        peer_binary("no-such-peer")
    assert peer_binary("go")[0].endswith("interop/go/bin/peer")
