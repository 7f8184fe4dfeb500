"""Where a Glueberry round trip's time goes, per side: a timeline of both Python processes.

Not a test. Runs ``glueberry.gb_bench_peer`` as listener and dialer on 127.0.0.1 (1 KiB
request/response round trips, as ``bench/run_glueberry.py``), each process wrapped so that
it records, for every wake-up from a blocking ``select`` that ends in a reply:

* ``wake``: the blocking ``select`` returned (the socket is readable);
* ``read``: the TCP protocol's ``buffer_updated`` starts (after the loop's dispatch and
  ``recv_into``); ``queued``: it returns (Noise open, yamux, Glueberry decode and open, the
  message queued, the consumer's wake-up scheduled);
* ``write``: the reply's ``TcpConnection.write`` starts (after the loop hop to the consumer,
  the application, ``send``: Glueberry seal, yamux frame, Noise seal); ``sent``: it returns
  (the ``send`` system call).

Both processes read the same monotonic clock, so the time from one side's write to the
other side's wake is measured too. Medians over the round trips are printed; the patching
costs ~1 µs per stage. Works on asyncio's loop only (it wraps ``selectors``).

    python3 bench/rtt_timeline.py [--rtt-n 3000]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_glueberry import stop  # noqa: E402  (bench/ is a directory of scripts)

# The wrapper each process runs: patch, then hand over to gb_bench_peer.main.
WRAPPER = r"""
import atexit, json, os, selectors, sys, time
from glueberry import gb_bench_peer
from glueberry.transport import tcp

ns = time.perf_counter_ns
records, cur = [], {}
select0 = selectors.EpollSelector.select

def select(self, timeout=None):
    ready = select0(self, timeout)
    if ready and (timeout is None or timeout > 0):
        cur.clear()
        cur["wake"] = ns()
    return ready

bu0, write0 = tcp.TcpConnection.buffer_updated, tcp.TcpConnection.write

def buffer_updated(self, n):
    cur.setdefault("read", ns())
    bu0(self, n)
    cur.setdefault("queued", ns())

def write(self, data):
    t = ns()
    write0(self, data)
    cur["write"], cur["sent"] = t, ns()
    records.append(dict(cur))

selectors.EpollSelector.select = select
tcp.TcpConnection.buffer_updated = buffer_updated
tcp.TcpConnection.write = write

def dump():
    with open(os.environ["TIMELINE_OUT"], "w") as f:
        json.dump(records, f)

atexit.register(dump)
sys.exit(gb_bench_peer.main(sys.argv[1:]))
"""

STAGES = [
    ("wake -> read", "wake", "read", "loop dispatch, recv_into"),
    ("read -> queued", "read", "queued", "Noise, yamux, Glueberry open, queue"),
    ("queued -> write", "queued", "write", "loop hop, app, send(): seals, frames"),
    ("write -> sent", "write", "sent", "the send system call"),
]


def median_us(xs: list[int]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] / 1e3 if xs else float("nan")


def complete(records: list[dict[str, int]]) -> list[dict[str, int]]:
    keys = ("wake", "read", "queued", "write", "sent")
    return [r for r in records if all(k in r for k in keys)]


def crossing(src: list[dict[str, int]], dst: list[dict[str, int]]) -> list[int]:
    """For each write of ``src``: the time until ``dst``'s next wake."""
    wakes = sorted(r["wake"] for r in dst)
    out = []
    for r in src:
        i = bisect.bisect_left(wakes, r["write"])
        if i < len(wakes):
            out.append(wakes[i] - r["write"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rtt-n", type=int, default=3000)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = Path(tmp, "timeline_wrapper.py")
        wrapper.write_text(WRAPPER)
        outs = {side: str(Path(tmp, f"{side}.json")) for side in ("listener", "dialer")}
        listener = subprocess.Popen(
            [sys.executable, str(wrapper), "listen"],
            env={**env, "TIMELINE_OUT": outs["listener"]},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert listener.stdout is not None
            line = listener.stdout.readline()
            if not line.startswith("READY "):
                raise SystemExit(f"listener printed {line!r}")
            flags = ["--msgs", "0", "--bulk-mib", "0", "--rtt-n", str(args.rtt_n)]
            dial = subprocess.run(
                [sys.executable, str(wrapper), "dial", line.split()[1], *flags],
                env={**env, "TIMELINE_OUT": outs["dialer"]},
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=600,
                check=True,
            )
        finally:
            stop(listener)  # stdin EOF, then SIGTERM: either way it exits and writes its file
        result: dict[str, Any] = json.loads(dial.stdout.strip().splitlines()[-1])
        data = {side: complete(json.loads(Path(p).read_text())) for side, p in outs.items()}
    print(f"round trip median {result['rtt_us_median']:.0f} µs ({args.rtt_n} round trips)")
    print(f"{'stage (median µs)':22} {'listener':>9} {'dialer':>9}  what")
    for name, a, b, what in STAGES:
        cells = [median_us([r[b] - r[a] for r in data[s]]) for s in ("listener", "dialer")]
        print(f"{name:22} {cells[0]:9.1f} {cells[1]:9.1f}  {what}")
    across = [
        median_us(crossing(data["dialer"], data["listener"])),
        median_us(crossing(data["listener"], data["dialer"])),
    ]
    print(
        f"{'peer write -> wake':22} {across[0]:9.1f} {across[1]:9.1f}  "
        "the peer's send call, the kernel, the wake-up"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
