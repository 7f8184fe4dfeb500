"""The ``/bench/1.0.0`` peer benchmark, glueberry side (listener and dialer).

Workload and output: ``shared/peers/README.md`` (the same as the js-libp2p and py-libp2p
peers there, so results line up column for column)::

    python3 -m glueberry.bench_peer listen [--port 0] [--transport tcp|quic] [--identify]
        prints "READY <multiaddr>", then serves /bench/1.0.0 (and the test protocols; with
        --identify also identify and ping) until SIGINT/SIGTERM
    python3 -m glueberry.bench_peer dial ADDR [--setup-n 20 --msgs 20000 --msg-size 1024
        --bulk-mib 256 --chunk 65536 --rtt-n 2000 --warmup 100]
        runs the workload against ADDR (a /tcp or a /quic-v1 address) and prints one
        JSON line; 0 skips a test

Stream modes (first byte): ``E`` echo (setup, RTT), ``M`` n x ``[u32 len][payload]`` then
``K`` (message rate), ``B`` u64 total then bytes then ``K`` (bulk), ``R`` the listener's peak
RSS KiB and CPU seconds. The listener side lives in :mod:`glueberry.net.testprotocols`.

The listener runs no identify or ping service unless asked (``--identify``): the shared
js-libp2p and py-libp2p bench nodes run neither, and identifying every new connection would
add a stream and two exchanges to each measured setup.

Measured exactly as the reference dialers do: setup = fresh connection + stream + 1-byte
round trip (median phases), message rate and bulk timed from the first write to the ``K``,
CPU of both processes from ``R`` before and after. Beyond the reference dialers' keys, the
JSON carries the CPU of one setup (``setup_cpu_ms_dialer`` / ``_listener``) and of one
round trip (``rtt_cpu_us_dialer`` / ``_listener``): on a shared machine they vary far less
than the wall-clock figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import struct
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from glueberry._loop import LOOPS, run
from glueberry.net.testprotocols import BENCH_PROTOCOL
from glueberry.wire.identity import PrivateKey
from glueberry.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from glueberry.net.host import Host, HostConfig
    from glueberry.transport.base import Stream
    from glueberry.wire.identity import PeerId

IMPL = "glueberry-py"


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _median(xs: Sequence[float]) -> float:
    # Not statistics.median: importing that module (fractions, decimal) costs this process
    # about 0.5 MB of the peak RSS it reports.
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def _pct(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def _remote(host: Host, peer: PeerId) -> tuple[int, float]:
    """(listener peak RSS KiB, listener CPU s) via an ``R`` stream."""
    s = await host.new_stream(peer, [BENCH_PROTOCOL])
    await s.write(b"R")
    line = b""
    while not line.endswith(b"\n"):
        chunk = await s.read()
        if not chunk:
            break
        line += chunk
    await s.close()
    rss, cpu = line.split()
    return int(rss), float(cpu)


async def _expect_k(s: Stream) -> None:
    if await s.readexactly(1) != b"K":
        raise RuntimeError("listener did not answer K")


def _dial_config(addr: Multiaddr) -> HostConfig:
    """TCP + Noise + yamux, as the shared bench nodes are configured (js: tcp, noise, yamux);
    the host's defaults for other addresses (QUIC)."""
    from glueberry.net.host import HostConfig
    from glueberry.net.upgrader import NOISE, noise_security
    from glueberry.transport.tcp import TcpTransport

    if addr.transport_kind() != "tcp":
        return HostConfig()
    return HostConfig(transports=[TcpTransport()], security={NOISE: noise_security()})


async def dial(args: argparse.Namespace) -> dict[str, object]:
    from glueberry.net.host import Host

    target = Multiaddr(args.addr)
    peer = target.peer_id
    if peer is None:
        raise SystemExit("bench_peer dial: the address must end in /p2p/<peer ID>")
    addr = target.without_p2p()
    res: dict[str, object] = {"impl": IMPL}
    now = time.perf_counter
    async with Host(PrivateKey.generate(), config=_dial_config(addr)) as host:
        # 1. setup: dial + security + muxer (TCP) or QUIC handshake, stream open, 1-byte
        # round trip, fresh each time
        setup: list[float] = []
        phases: list[tuple[float, float, float]] = []
        c0 = (0.0, 0.0)
        if args.setup_n:
            conn = await host.connect(peer, [addr])
            c0 = (_cpu_s(), (await _remote(host, peer))[1])
            await conn.close()
        for _ in range(args.setup_n):
            t0 = now()
            conn = await host.connect(peer, [addr])
            t1 = now()
            s = await host.new_stream(peer, [BENCH_PROTOCOL])
            t2 = now()
            await s.write(b"E")
            await s.readexactly(1)
            t3 = now()
            setup.append((t3 - t0) * 1e3)
            phases.append(((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3))
            await s.close()
            await conn.close()
            await asyncio.sleep(0.05)
        res["setup_ms"] = setup
        if phases:
            res["setup_phases_ms"] = [_median([p[j] for p in phases]) for j in range(3)]

        await host.connect(peer, [addr])
        if args.setup_n:
            # CPU of one setup, each side: n + 1 connections were made and closed
            c1 = (_cpu_s(), (await _remote(host, peer))[1])
            res["setup_cpu_ms_dialer"] = (c1[0] - c0[0]) / (args.setup_n + 1) * 1e3
            res["setup_cpu_ms_listener"] = (c1[1] - c0[1]) / (args.setup_n + 1) * 1e3

        # 2. small messages: n x [u32 len][payload], one write per message, one direction
        if args.msgs > 0:
            s = await host.new_stream(peer, [BENCH_PROTOCOL])
            frame = struct.pack(">I", args.msg_size) + b"m" * args.msg_size
            c0 = (_cpu_s(), (await _remote(host, peer))[1])
            t0 = now()
            await s.write(b"M" + struct.pack(">I", args.msgs))
            write = s.write
            for _ in range(args.msgs):
                await write(frame)
            await _expect_k(s)
            res["msgs_per_s"] = args.msgs / (now() - t0)
            c1 = (_cpu_s(), (await _remote(host, peer))[1])
            res["msgs_cpu_us_dialer"] = (c1[0] - c0[0]) / args.msgs * 1e6
            res["msgs_cpu_us_listener"] = (c1[1] - c0[1]) / args.msgs * 1e6
            await s.close()

        # 3. bulk: total bytes in chunk-sized writes
        if args.bulk_mib > 0:
            s = await host.new_stream(peer, [BENCH_PROTOCOL])
            total = args.bulk_mib << 20
            chunk = b"b" * args.chunk
            c0 = (_cpu_s(), (await _remote(host, peer))[1])
            t0 = now()
            await s.write(b"B" + struct.pack(">Q", total))
            for _ in range(total // args.chunk):
                await s.write(chunk)
            await _expect_k(s)
            res["bulk_MBps"] = total / (now() - t0) / 1e6
            c1 = (_cpu_s(), (await _remote(host, peer))[1])
            res["bulk_cpu_s_per_GB"] = (c1[0] - c0[0] + c1[1] - c0[1]) / total * 1e9
            await s.close()

        # 4. request/response: 1 KiB ping-pong over the echo mode
        if args.rtt_n > 0:
            s = await host.new_stream(peer, [BENCH_PROTOCOL])
            await s.write(b"E")
            await s.readexactly(1)
            msg = b"p" * args.msg_size
            rtts: list[float] = []
            for i in range(args.rtt_n + args.warmup):
                if i == args.warmup:
                    c0 = (_cpu_s(), (await _remote(host, peer))[1])
                t0 = now()
                await s.write(msg)
                await s.readexactly(args.msg_size)
                if i >= args.warmup:
                    rtts.append((now() - t0) * 1e6)
            c1 = (_cpu_s(), (await _remote(host, peer))[1])
            res["rtt_us_median"] = _median(rtts)
            res["rtt_us_p99"] = _pct(rtts, 99)
            res["rtt_cpu_us_dialer"] = (c1[0] - c0[0]) / args.rtt_n * 1e6
            res["rtt_cpu_us_listener"] = (c1[1] - c0[1]) / args.rtt_n * 1e6
            await s.close()

        # 5. peak RSS of both processes
        res["rss_listener_MB"] = (await _remote(host, peer))[0] / 1024
        res["rss_dialer_MB"] = _peak_rss_kib() / 1024
    return res


async def listen(args: argparse.Namespace) -> None:
    from glueberry.net.host import Host, HostConfig
    from glueberry.net.services import IdentifyService, PingService
    from glueberry.net.testprotocols import TEST_LIMITS, register_test_protocols

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if args.transport == "quic":
        addr = f"/ip4/{args.ip}/udp/{args.port}/quic-v1"
    else:
        addr = f"/ip4/{args.ip}/tcp/{args.port}"
    config = HostConfig(limits=TEST_LIMITS)
    async with Host(PrivateKey.generate(), listen_addrs=[addr], config=config) as h:
        if args.identify:
            IdentifyService(h)
            PingService(h)
        register_test_protocols(h)
        bound = next(iter(h.addrs), None)
        if bound is None:
            raise SystemExit("bench_peer listen: no listen address")
        print(f"READY {bound.with_p2p(h.peer_id)}", flush=True)
        await stop.wait()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python3 -m glueberry.bench_peer")
    ap.add_argument(
        "--loop", choices=LOOPS, default="asyncio", help="event loop (uvloop: glueberry[uvloop])"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("listen")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ip", default="127.0.0.1")
    p.add_argument(
        "--transport",
        choices=("tcp", "quic"),
        default="tcp",
        help="tcp: TCP + Noise + yamux; quic: /quic-v1 (the dialer follows the address)",
    )
    p.add_argument(
        "--identify",
        action="store_true",
        help="also run the identify and ping services (the shared js/py bench nodes do not)",
    )
    p = sub.add_parser("dial")
    p.add_argument("addr")
    p.add_argument("--setup-n", type=int, default=20)
    p.add_argument("--msgs", type=int, default=20000)
    p.add_argument("--msg-size", type=int, default=1024)
    p.add_argument("--bulk-mib", type=int, default=256)
    p.add_argument("--chunk", type=int, default=65536)
    p.add_argument("--rtt-n", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=100)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "listen":
        run(listen(args), args.loop)
        return 0
    res = run(dial(args), args.loop)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
