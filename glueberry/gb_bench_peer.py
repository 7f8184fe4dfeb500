"""Glueberry-level benchmark peer: the tagged ``bench`` workload of ``gbpeer`` (docs/interop.md).

The same application as ``interop/go/bin/gbpeer`` in tagged mode, so any pairing runs:
Python ↔ Python, Python ↔ Go, Go ↔ Go. Everything goes through the public API
(``glueberry.Node``, ``glueberry.handshake``): encrypted, framed Glueberry messages on the
``bench`` stream, after the Hello/PubKey/Complete handshake::

    python3 -m glueberry.gb_bench_peer listen [--listen MULTIADDR] [--seed HEX64]
        prints "READY <multiaddr>/p2p/<id>", then serves until SIGINT/SIGTERM or stdin EOF
    python3 -m glueberry.gb_bench_peer dial MULTIADDR [--msgs 20000 --msg-size 1024
        --bulk-mib 256 --chunk 65536 --rtt-n 2000 --warmup 100]
        prints one JSON line; 0 skips a part

Messages (first byte): ``Q`` query → ``R`` + the same bytes on the same stream; ``D`` one-way
data, counted; ``S`` → ``T<peak RSS KiB> <CPU seconds>``. The dialer measures, like gbpeer:

* ``msgs_per_s``: ``--msgs`` ``D`` messages of ``--msg-size`` bytes, from the first send to
  the reply of a 1-byte ``Q`` sent after them; CPU of both sides per message;
* ``bulk_MBps``: ``--bulk-mib`` MiB as ``--chunk``-byte ``D`` messages, timed the same way;
* ``rtt_us_median`` / ``rtt_us_p99``: ``Q``/``R`` round trips of ``--msg-size`` bytes;
* ``rss_listener_MB`` / ``rss_dialer_MB``: peak RSS; ``handshake_ms``: connect + handshake.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import sys
import time
from collections.abc import Sequence

import glueberry
from glueberry._loop import LOOPS, run
from glueberry.config import Config
from glueberry.node import Node
from glueberry.wire.identity import PeerId, PrivateKey
from glueberry.wire.multiaddr import Multiaddr

IMPL = "glueberry-py"
STREAM = "bench"
STREAMS = ["messages", "events", "bulk", "bench"]
#: Large enough for the default 64 KiB chunks and gbpeer's 1 MiB queries.
MAX_MESSAGE = 1 << 20


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _pct(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def _tagged(tag: bytes, size: int) -> bytes:
    return tag + bytes(i % 251 for i in range(size))[1:] if size > 0 else tag


def _config(args: argparse.Namespace, listen: str) -> Config:
    key = PrivateKey.from_seed(bytes.fromhex(args.seed)) if args.seed else PrivateKey.generate()
    return Config(key, None, [listen], max_message_size=MAX_MESSAGE, message_buffer_size=4096)


# --- listener -----------------------------------------------------------------------------


async def _serve(node: Node) -> None:
    received = 0
    send = node.send
    async for peer, stream, data, _ in node.messages():
        tag = data[0] if data else 0
        if tag == 0x44:  # D
            received += 1
        elif tag == 0x51:  # Q
            await send(peer, stream, b"R" + data[1:])
        elif tag == 0x53:  # S
            reply = f"T{_peak_rss_kib()} {_cpu_s():.6f}".encode()
            await send(peer, stream, reply)


async def _wait_for_stop() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if not sys.stdin.isatty():
        reader = asyncio.StreamReader()
        with contextlib.suppress(ValueError, OSError):
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

            async def eof() -> None:
                while await reader.read(4096):
                    pass
                stop.set()

            task = asyncio.ensure_future(eof())
            try:
                await stop.wait()
            finally:
                task.cancel()
            return
    await stop.wait()


async def listen(args: argparse.Namespace) -> int:
    async with Node(_config(args, args.listen), auto_connect=False) as node:
        addr = node.addrs[0].with_p2p(node.peer_id)
        print(f"READY {addr}", flush=True)
        async with glueberry.handshake.auto(node, STREAMS), asyncio.TaskGroup() as tg:
            server = tg.create_task(_serve(node))
            await _wait_for_stop()
            server.cancel()
    return 0


# --- dialer -------------------------------------------------------------------------------


class _Dialer:
    def __init__(self, node: Node, peer: PeerId) -> None:
        self.node = node
        self.peer = peer
        self.inbox = node.messages()

    async def ask(self, payload: bytes) -> bytes:
        await self.node.send(self.peer, STREAM, payload)
        while True:
            m = await self.inbox.get()
            if m.stream_name == STREAM:
                return m.data

    async def sync(self) -> None:
        got = await self.ask(b"Q")
        if got != b"R":
            raise RuntimeError(f"sync reply {got!r}")

    async def stats(self) -> tuple[float, float]:
        got = await self.ask(b"S")
        rss, cpu = got[1:].decode().split()
        return float(rss), float(cpu)

    async def one_way(self, n: int, size: int) -> tuple[float, float, float]:
        msg = _tagged(b"D", size)
        _, rc0 = await self.stats()
        c0 = _cpu_s()
        t0 = time.perf_counter()
        send, peer = self.node.send, self.peer
        for _ in range(n):
            await send(peer, STREAM, msg)
        await self.sync()
        elapsed = time.perf_counter() - t0
        c1 = _cpu_s()
        _, rc1 = await self.stats()
        return elapsed, c1 - c0, rc1 - rc0


async def dial(args: argparse.Namespace) -> int:
    target = Multiaddr(args.addr)
    peer = target.peer_id
    if peer is None:
        print("the address must end in /p2p/<peer ID>", file=sys.stderr)
        return 2
    res: dict[str, object] = {"impl": f"{IMPL} {glueberry.__version__}"}
    async with Node(_config(args, "/ip4/127.0.0.1/tcp/0"), auto_connect=False) as node:
        node.add_peer(peer, [target.without_p2p()])
        t0 = time.perf_counter()
        await glueberry.handshake.establish(node, peer, STREAMS, timeout=args.timeout)
        res["handshake_ms"] = (time.perf_counter() - t0) * 1e3
        d = _Dialer(node, peer)
        await d.sync()
        if args.msgs > 0:
            el, cd, cl = await d.one_way(args.msgs, args.msg_size)
            res["msgs_per_s"] = args.msgs / el
            res["msgs_cpu_us_dialer"] = cd / args.msgs * 1e6
            res["msgs_cpu_us_listener"] = cl / args.msgs * 1e6
        if args.bulk_mib > 0:
            n = (args.bulk_mib << 20) // args.chunk
            el, cd, cl = await d.one_way(n, args.chunk)
            total = n * args.chunk
            res["bulk_MBps"] = total / el / 1e6
            res["bulk_cpu_s_per_GB"] = (cd + cl) / total * 1e9
        if args.rtt_n > 0:
            q = _tagged(b"Q", args.msg_size)
            rtts: list[float] = []
            for i in range(args.rtt_n + args.warmup):
                t = time.perf_counter()
                got = await d.ask(q)
                if len(got) != len(q) or got[:1] != b"R":
                    raise RuntimeError(f"rtt reply of {len(got)} bytes")
                if i >= args.warmup:
                    rtts.append((time.perf_counter() - t) * 1e6)
            rtts.sort()
            mid = len(rtts) // 2
            res["rtt_us_median"] = rtts[mid] if len(rtts) % 2 else (rtts[mid - 1] + rtts[mid]) / 2
            res["rtt_us_p99"] = _pct(rtts, 99)
        rss, _ = await d.stats()
        res["rss_listener_MB"] = rss / 1024
        res["rss_dialer_MB"] = _peak_rss_kib() / 1024
    print(json.dumps(res), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m glueberry.gb_bench_peer", description=__doc__)
    p.add_argument(
        "--loop", choices=LOOPS, default="asyncio", help="event loop (uvloop: glueberry[uvloop])"
    )
    sub = p.add_subparsers(dest="mode", required=True)
    lp = sub.add_parser("listen")
    lp.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    lp.add_argument("--seed", help="Ed25519 seed, 64 hex digits (default: random)")
    dp = sub.add_parser("dial")
    dp.add_argument("addr")
    dp.add_argument("--seed")
    dp.add_argument("--msgs", type=int, default=20000)
    dp.add_argument("--msg-size", type=int, default=1024)
    dp.add_argument("--bulk-mib", type=int, default=256)
    dp.add_argument("--chunk", type=int, default=65536)
    dp.add_argument("--rtt-n", type=int, default=2000)
    dp.add_argument("--warmup", type=int, default=100)
    dp.add_argument("--timeout", type=float, default=30.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    coro = listen(args) if args.mode == "listen" else dial(args)
    try:
        return run(coro, args.loop)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
