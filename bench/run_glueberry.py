"""Glueberry layer benchmark: the Python node against the Glueberry-Go wire peer, one run.

Both sides speak the same application (gbpeer's tagged ``bench`` workload, docs/interop.md):
encrypted Glueberry messages on the ``bench`` stream after the Hello/PubKey/Complete
handshake, so the figures include framing, ChaCha20-Poly1305 per message, Noise, yamux and
TCP. Pairings (listener ← dialer), each a fresh pair of processes on 127.0.0.1:

- ``py ← py``: ``python3 -m glueberry.gb_bench_peer`` on both sides;
- ``go ← go``: ``interop/go/bin/gbpeer`` on both sides, Noise (as the Python host);
- ``go ← py`` and ``py ← go``: the mixed pairs (interop under load);
- ``uv ← uv``: the Python node on both sides running on uvloop (``--loop uvloop``, the
  ``glueberry[uvloop]`` extra) instead of asyncio's own loop; skipped when uvloop is not
  installed or with ``--no-uvloop``.

Rounds are interleaved (each round runs every pairing once, in a rotated order) so the
pairings of a round share the machine's conditions; each cell is the median over rounds.
Results replace the section between ``<!-- glueberry:begin -->`` and
``<!-- glueberry:end -->`` in ``docs/benchmarks.md`` (appended if absent; the rest of the file
is left alone); raw runs go to ``bench/results/glueberry_last.json``.

    python3 bench/run_glueberry.py                 # 3 rounds, 20k msgs, 64 MiB, 1000 RTTs
    python3 bench/run_glueberry.py --rounds 1 --msgs 5000 --bulk-mib 16 --rtt-n 300
    python3 bench/run_glueberry.py --no-write      # print only
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GBPEER = ROOT / "interop" / "go" / "bin" / "gbpeer"
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "bench" / "results"
BEGIN, END = "<!-- glueberry:begin -->", "<!-- glueberry:end -->"

PY = [sys.executable, "-m", "glueberry.gb_bench_peer"]
GO = [str(GBPEER)]
SIDES = {
    "py": {"listen": [*PY, "listen"], "dial": [*PY, "dial"], "bench": []},
    "uv": {
        "listen": [*PY, "--loop", "uvloop", "listen"],
        "dial": [*PY, "--loop", "uvloop", "dial"],
        "bench": [],
    },
    "go": {
        "listen": [*GO, "listen", "--security", "noise"],
        "dial": [*GO, "dial"],
        "bench": ["bench", "--security", "noise"],
    },
}
PAIRS = [("py", "py"), ("go", "go"), ("go", "py"), ("py", "go")]  # (listener, dialer)
UV_PAIR = ("uv", "uv")
LABEL = {"py": "Python", "uv": "Python on uvloop", "go": "Go (gbpeer)"}


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop a listener this script started, by its pid: stdin EOF, SIGTERM, SIGKILL."""
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def one_run(listener: str, dialer: str, flags: list[str], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryFile(mode="w+") as lerr:
        lp = subprocess.Popen(
            SIDES[listener]["listen"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=lerr,
            text=True,
        )
        try:
            assert lp.stdout is not None
            line = lp.stdout.readline()
            if not line.startswith("READY "):
                lerr.seek(0)
                raise RuntimeError(f"listener printed {line!r}\n{lerr.read()[-2000:]}")
            addr = line.split()[1]
            d = SIDES[dialer]
            argv = [*d["dial"], addr, *d["bench"], *flags]
            out = subprocess.run(
                argv,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
            if out.returncode != 0 or not lines:
                lerr.seek(0)
                raise RuntimeError(
                    f"{' '.join(argv)}: rc={out.returncode}\n{out.stderr[-2000:]}\n"
                    f"--- listener stderr:\n{lerr.read()[-2000:]}"
                )
            result: dict[str, Any] = json.loads(lines[-1])
            return result
        finally:
            stop(lp)


KEYS = {
    "handshake_ms": "handshake_ms",
    "msgs_per_s": "msgs_per_s",
    "bulk_MBps": "bulk_MBps",
    "rtt_us_median": "rtt_us_median",
    "rtt_us_p99": "rtt_us_p99",
    "rss_listener_MB": "rss_listener_MB",
    "rss_dialer_MB": "rss_dialer_MB",
}


def metric(r: dict[str, Any], key: str) -> float | None:
    if key == "cpu_us_per_msg":
        if "msgs_cpu_us_dialer" in r:
            return float(r["msgs_cpu_us_dialer"]) + float(r["msgs_cpu_us_listener"])
        return None
    v = r.get(key)
    return float(v) if isinstance(v, int | float) else None


def med(xs: list[float | None]) -> tuple[float, float, float] | None:
    ys = [x for x in xs if x is not None]
    return (statistics.median(ys), min(ys), max(ys)) if ys else None


def fmt(s: tuple[float, float, float] | None, nd: int = 0, spread: bool = True) -> str:
    if s is None:
        return "—"
    m, lo, hi = s
    return f"{m:,.{nd}f} ({lo:,.{nd}f}–{hi:,.{nd}f})" if spread and lo != hi else f"{m:,.{nd}f}"


def ratios(raw: dict[str, list[dict[str, Any]]], num: str, den: str, key: str) -> list[float]:
    """``num / den`` of ``key`` for every round both pairings completed."""
    rs = []
    for x in raw.get(num, []):
        y = next((y for y in raw.get(den, []) if y["round"] == x["round"]), None)
        a, b = metric(x, key), metric(y, key) if y else None
        if a and b:
            rs.append(a / b)
    return rs


def ratio(raw: dict[str, list[dict[str, Any]]], num: str, den: str, key: str) -> str:
    rs = ratios(raw, num, den, key)
    return fmt(med(list(rs)), 2) if rs else "—"


def targets(raw: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The performance targets (issue 3) against this run: Python <- Python vs Go <- Go, on
    asyncio's loop and (when measured) on uvloop."""
    rows = ["| target | loop | this run | verdict |", "|---|---|---|---|"]
    for key, loop in (("py<-py", "asyncio"), ("uv<-uv", "uvloop")):
        if not raw.get(key):
            continue
        rate = med(list(ratios(raw, key, "go<-go", "msgs_per_s")))
        if rate is not None:
            verdict = "met" + (", aim met" if rate[0] >= 2 else "") if rate[0] >= 1 else "not met"
            rows.append(
                f"| 1 KiB msgs/s at least 1× Go's (aim 2×) | {loop} | {fmt(rate, 2)}× | {verdict} |"
            )
        rtt = med(list(ratios(raw, key, "go<-go", "rtt_us_median")))
        if rtt is not None:
            verdict = "met" if rtt[0] <= 1.5 else "not met"
            rows.append(
                f"| 1 KiB round trip at most 1.5× Go's | {loop} | {fmt(rtt, 2)}× | {verdict} |"
            )
        rss = [
            float(r[k])
            for r in raw.get(key, [])
            for k in ("rss_listener_MB", "rss_dialer_MB")
            if isinstance(r.get(k), int | float)
        ]
        if rss:
            verdict = "met" if max(rss) <= 50 else "not met"
            rows.append(
                f"| peak RSS at most 50 MB per node | {loop} | {max(rss):.0f} MB (largest) "
                f"| {verdict} |"
            )
    return rows


def host() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        go = subprocess.check_output(["go", "version"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        go = "go absent"
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} × {cpu}, Linux {platform.release()}; Python "
        f"{platform.python_version()}, {go}; load average at start {load}"
    )


def section(raw: dict[str, list[dict[str, Any]]], a: argparse.Namespace, started: str) -> str:
    flags = (
        f"--msgs {a.msgs} --msg-size {a.msg_size} --bulk-mib {a.bulk_mib} --chunk {a.chunk} "
        f"--rtt-n {a.rtt_n} --warmup {a.warmup}"
    )
    out = [
        BEGIN,
        "## Glueberry layer: Python node vs the Glueberry-Go wire peer",
        "",
        "Encrypted Glueberry messages (handshake, framing, ChaCha20-Poly1305 per message, on",
        "TCP + Noise + yamux), gbpeer's tagged `bench` workload on the `bench` stream: one-way",
        f"{a.msg_size}-byte messages, {a.chunk // 1024} KiB messages for throughput, "
        f"{a.msg_size}-byte request/response",
        "round trips. Go = `interop/go/bin/gbpeer` (go-libp2p, Glueberry-Go's wire re-implemented",
        "byte for byte, Noise like the Python host). Produced by `bench/run_glueberry.py`.",
        "",
        f"- Date: {started}",
        f"- Machine: {host()}",
        f"- Command: `{a.command}`",
        f"- Rounds: {a.rounds} (interleaved; median over rounds, min–max in brackets); "
        f"flags `{flags}`",
        "",
        "| listener ← dialer | runs | handshake ms | 1 KiB msgs/s | 64 KiB MB/s "
        "| RTT median / p99 µs | RSS MB listener / dialer | CPU µs/msg (both ends) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lis, dia in [*PAIRS, UV_PAIR]:
        key = f"{lis}<-{dia}"
        runs = raw.get(key, [])
        if not runs and (lis, dia) == UV_PAIR:
            continue
        s = {k: med([metric(r, k) for r in runs]) for k in [*KEYS, "cpu_us_per_msg"]}
        rtt = (
            "—"
            if s["rtt_us_median"] is None
            else f"{fmt(s['rtt_us_median'], 0, False)} / {fmt(s['rtt_us_p99'], 0, False)}"
        )
        rss = (
            "—"
            if s["rss_listener_MB"] is None
            else f"{fmt(s['rss_listener_MB'], 0, False)} / {fmt(s['rss_dialer_MB'], 0, False)}"
        )
        out.append(
            f"| {LABEL[lis]} ← {LABEL[dia]} | {len(runs)} | {fmt(s['handshake_ms'], 1, False)} "
            f"| {fmt(s['msgs_per_s'])} | {fmt(s['bulk_MBps'])} | {rtt} | {rss} "
            f"| {fmt(s['cpu_us_per_msg'], 1)} |"
        )
    out += [
        "",
        "Python ÷ Go, same round (> 1: more for rates, slower or costlier for RTT and CPU):",
        "",
        "| | msgs/s | MB/s | RTT median | CPU µs/msg |",
        "|---|---|---|---|---|",
        "| Python ← Python vs Go ← Go | "
        + " | ".join(
            ratio(raw, "py<-py", "go<-go", k)
            for k in ("msgs_per_s", "bulk_MBps", "rtt_us_median", "cpu_us_per_msg")
        )
        + " |",
        *(
            [
                "| Python on uvloop (both sides) vs Go ← Go | "
                + " | ".join(
                    ratio(raw, "uv<-uv", "go<-go", k)
                    for k in ("msgs_per_s", "bulk_MBps", "rtt_us_median", "cpu_us_per_msg")
                )
                + " |"
            ]
            if raw.get("uv<-uv")
            else []
        ),
        "",
        "Targets (Python ← Python against Go ← Go, medians of the per-round ratios):",
        "",
        *targets(raw),
    ]
    failures = raw.get("_errors", [])
    if failures:
        out += ["", f"Failed runs: {len(failures)} (see bench/results/glueberry_last.json)."]
    out += [
        "",
        "Absolute figures drift with the machine's load (2 shared cores here): compare within",
        "one run. The Go peer flushes every message to the socket (as Glueberry-Go does). The",
        "Python node writes the first message of a loop iteration to the socket at once and",
        "coalesces the rest into one buffer per burst; a read is decoded, decrypted and queued",
        "on the receive path, so a waiting consumer runs on the next loop iteration. Its floor is",
        "the per-message ChaCha20-Poly1305 call (2-3 µs per 1 KiB here) and, for round trips, the",
        "Python cost of the layers (TCP, Noise, yamux, Glueberry: two loop iterations per side)",
        "on a single thread per process, where Go's runtime also spreads work over both cores.",
        "Round trips between two processes vary run to run on virtual machines (a sleeping",
        "process may wake hundreds of µs late; Go's scheduler spins before it parks): compare",
        "several runs before reading the RTT ratio. Where a round trip's time goes on each",
        "side: `python3 bench/rtt_timeline.py` (below).",
        END,
    ]
    return "\n".join(out)


def write_section(text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc = head + text + tail
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--msgs", type=int, default=20000)
    p.add_argument("--msg-size", type=int, default=1024)
    p.add_argument("--bulk-mib", type=int, default=64)
    p.add_argument("--chunk", type=int, default=65536)
    p.add_argument("--rtt-n", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    p.add_argument("--no-uvloop", action="store_true", help="skip the uvloop pairing")
    a = p.parse_args(argv)
    pairs = list(PAIRS)
    if not a.no_uvloop:
        if importlib.util.find_spec("uvloop") is None:
            print("uvloop is not installed: the uvloop pairing is skipped", flush=True)
        else:
            pairs.append(UV_PAIR)
    a.command = "python3 bench/run_glueberry.py " + " ".join(argv or sys.argv[1:])
    if not os.access(GBPEER, os.X_OK):
        print(f"{GBPEER.relative_to(ROOT)} is missing: run interop/build.sh", file=sys.stderr)
        return 2
    flags = [
        "--msgs",
        str(a.msgs),
        "--msg-size",
        str(a.msg_size),
        "--bulk-mib",
        str(a.bulk_mib),
        "--chunk",
        str(a.chunk),
        "--rtt-n",
        str(a.rtt_n),
        "--warmup",
        str(a.warmup),
    ]
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    raw: dict[str, list[dict[str, Any]]] = {}
    errors: list[dict[str, Any]] = []
    for rnd in range(a.rounds):
        order = pairs[rnd % len(pairs) :] + pairs[: rnd % len(pairs)]
        for lis, dia in order:
            key = f"{lis}<-{dia}"
            print(f"round {rnd + 1}/{a.rounds}: {LABEL[lis]} <- {LABEL[dia]}", flush=True)
            try:
                r = one_run(lis, dia, flags, a.timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"  failed: {exc}", flush=True)
                errors.append({"pair": key, "round": rnd, "error": str(exc)[:4000]})
                continue
            r["round"] = rnd
            raw.setdefault(key, []).append(r)
            print(
                "  "
                + ", ".join(
                    f"{k}={r[k]:.1f}"
                    for k in ("msgs_per_s", "bulk_MBps", "rtt_us_median")
                    if isinstance(r.get(k), int | float)
                ),
                flush=True,
            )
    if errors:
        raw["_errors"] = errors
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "glueberry_last.json").write_text(json.dumps(raw, indent=1))
    text = section(raw, a, started)
    print(text)
    if not a.no_write:
        write_section(text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
