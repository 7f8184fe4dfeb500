"""Micro-benchmark of yamux: two sessions back to back in one process (no sockets, no crypto).

Not a test. The sender writes messages with ``send_data``, takes ``data_to_send()`` once per
batch (as the driver does once per event-loop iteration), and the receiver is fed that output
in pieces of 65,519 bytes (one Noise plaintext each, as the secured connection delivers them);
it consumes what it receives, and its window updates go back to the sender. Prints messages
per second and MB/s (10^6 bytes/s) for 1 KiB and 64 KiB writes, for the sans-I/O sessions and
(``--driver``) for YamuxConnection/YamuxStream over an in-memory secured pair.

Run: python3 bench/micro_yamux.py [--seconds 1.0] [--driver]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from glueberry.proto.yamux import DataReceived, YamuxConfig, YamuxSession

NOISE_PLAINTEXT = 65519


def sessions(msg_size: int, batch: int, seconds: float, growth: str) -> tuple[float, float]:
    """Returns (messages/s, MB/s) of the best of 3 windows."""
    cfg = YamuxConfig(keepalive_interval=None, window_growth=growth)  # type: ignore[arg-type]
    best = 0.0
    for _ in range(3):
        a, b = YamuxSession(True, cfg, now=0.0), YamuxSession(False, cfg, now=0.0)
        sid = a.open_stream()
        b.receive_data(a.data_to_send(), 0.0)
        list(b.events())
        b.accept_stream(sid)
        a.receive_data(b.data_to_send(), 0.0)
        list(a.events())
        msg = bytes(msg_size)
        sent = 0
        pending = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds / 3
        send, consume = a.send_data, b.consume
        while True:
            for _ in range(batch):
                n = send(sid, msg)
                sent += n
                if n < msg_size:  # out of window: the rest waits for an update
                    pending = msg_size - n
                    break
            out = a.data_to_send()
            for off in range(0, len(out), NOISE_PLAINTEXT):
                b.receive_data(out[off : off + NOISE_PLAINTEXT], 0.0)
                for ev in b.events():
                    if type(ev) is DataReceived:
                        consume(sid, len(ev.data))
            back = b.data_to_send()
            if back:  # (b"" would mean EOF)
                a.receive_data(back, 0.0)
                for _ev in a.events():
                    pass
            if pending:
                sent += send(sid, msg[:pending])
                pending = 0
            if time.perf_counter() >= deadline:
                break
        dt = time.perf_counter() - t0
        best = max(best, sent / dt)
    return best / msg_size, best / 1e6


async def driver(msg_size: int, seconds: float) -> tuple[float, float]:
    from glueberry.net.muxer import YamuxStream
    from tests.conformance.pairs import yamux_harness

    best = 0.0
    for _ in range(3):
        async with yamux_harness(YamuxConfig(keepalive_interval=None)) as h:
            local, remote = await h.open()
            msg = bytes(msg_size)
            received = 0

            async def reader(stream: YamuxStream) -> None:
                nonlocal received
                while chunk := await stream.read():
                    received += len(chunk)

            task = asyncio.create_task(reader(remote))
            t0 = time.perf_counter()
            deadline = t0 + seconds / 3
            while time.perf_counter() < deadline:
                for _ in range(64):
                    await local.write(msg)
            await local.close_write()
            await task
            best = max(best, received / (time.perf_counter() - t0))
    return best / msg_size, best / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--driver", action="store_true", help="also the asyncio driver")
    args = ap.parse_args()
    print(f"{'case':44} {'msgs/s':>12} {'MB/s':>9}")
    cases = [
        ("sessions 1 KiB, 64 per flush, eager window", 1024, 64, "eager"),
        ("sessions 1 KiB, 1 per flush, eager window", 1024, 1, "eager"),
        ("sessions 1 KiB, 64 per flush, fixed 256 KiB", 1024, 64, "off"),
        ("sessions 64 KiB, 1 per flush, eager window", 65536, 1, "eager"),
        ("sessions 64 KiB, 4 per flush, eager window", 65536, 4, "eager"),
        ("sessions 64 KiB, 4 per flush, fixed 256 KiB", 65536, 4, "off"),
    ]
    for name, size, batch, growth in cases:
        rate, mbps = sessions(size, batch, args.seconds, growth)
        print(f"{name:44} {rate:12,.0f} {mbps:9,.0f}")
    if args.driver:
        for size in (1024, 65536):
            rate, mbps = asyncio.run(driver(size, args.seconds))
            name = f"driver {size // 1024} KiB writes (memory pair)"
            print(f"{name:44} {rate:12,.0f} {mbps:9,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
