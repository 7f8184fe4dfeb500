"""Side-by-side peer benchmark: Glueberry, js-libp2p, py-libp2p, go-libp2p, the asyncio floor.

Every implementation runs the ``/bench/1.0.0`` workload of ``shared/peers/README.md`` (setup,
1 KiB message rate, bulk, 1 KiB round trip, RSS, CPU) as a listener + dialer pair of fresh
processes on 127.0.0.1. Rounds are interleaved (round r runs every implementation once, in
a rotated order), so implementations of one round share the machine's conditions and the
per-round ratios stay meaningful on a noisy 2-core box. Results go to ``docs/benchmarks.md``
(table, ratios against js-libp2p and the asyncio floor, machine, date, command) and the raw
runs to ``bench/results/last.json``. Hand-written blocks of the previous report delimited by
``<!-- name:begin -->`` / ``<!-- name:end -->`` are kept, in order, after the generated part.

    python3 bench/run.py                  # 3 full rounds (several minutes; machine must be quiet)
    python3 bench/run.py --quick          # 1 small round: a smoke test of the runner
    python3 bench/run.py --only glueberry,js-libp2p --rounds 5

Implementations (``--only`` names):

- ``glueberry``: ``python3 -m glueberry.bench_peer listen|dial`` (``--glueberry-cmd``);
  skipped with a message while that module does not exist.
- ``js-libp2p``: the shared js peers (libp2p 3.3.11), run from a copy under ``.cache/bench``
  with ``npm ci`` from their lock file.
- ``py-libp2p``: the shared py peers with py-libp2p 0.8.1 from PyPI in ``.cache/bench/venv``;
  the dialer uses ``--conns-per-peer 1`` (the default config adds a fixed 250 ms to each
  dial, see the shared README).
- ``go-libp2p``: ``interop/go/bin/peer`` (``interop/build.sh``) with Noise, as the others.
- ``asyncio floor``: the shared ``baseline/asyncio_bench.py --aead 1``: plain asyncio TCP, one
  connection per stream, one ChaCha20-Poly1305 seal per frame, no handshake, no muxer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
RESULTS = ROOT / "bench" / "results"
DEFAULT_SHARED = ROOT.parent / "shared" / "peers"
PYLIBP2P = "libp2p==0.8.1"

QUICK_ARGS = [
    "--setup-n",
    "3",
    "--msgs",
    "2000",
    "--bulk-mib",
    "16",
    "--rtt-n",
    "200",
    "--warmup",
    "20",
]


@dataclass
class Impl:
    name: str
    listener: list[str]
    dialer: list[str]  # the listener's multiaddr is appended, then the workload flags
    cwd: Path
    note: str
    env: dict[str, str] | None = None  # None: inherit ours


class Unavailable(Exception):
    """An implementation that cannot run here (the message says why)."""


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------ preparing the peers


def shared_copy(shared: Path) -> Path:
    """A writable copy of the shared peers (they may live on a read-only mount)."""
    dst = CACHE / "peers"
    for sub in ("js", "py", "baseline"):
        src = shared / sub
        if not src.is_dir():
            raise Unavailable(f"{src} not found (pass --shared-peers)")
        tgt = dst / sub
        tgt.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file():
                out = tgt / f.name
                if not out.exists() or out.read_bytes() != f.read_bytes():
                    out.write_bytes(f.read_bytes())
    return dst


def prepare_js(peers: Path) -> Impl:
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        raise Unavailable("node/npm not on PATH")
    js = peers / "js"
    lock = (js / "package-lock.json").read_bytes()
    stamp = js / "node_modules" / ".bench-stamp"
    key = lock.hex()[:64] + str(len(lock)) + subprocess.check_output([node, "--version"]).decode()
    if not stamp.exists() or stamp.read_text() != key:
        log("js-libp2p: npm ci in a copy of the shared js peers")
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=js,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        stamp.write_text(key)
    version = json.loads((js / "node_modules" / "libp2p" / "package.json").read_text())["version"]
    return Impl(
        f"js-libp2p {version}",
        [node, "listener.mjs"],
        [node, "dialer.mjs"],
        js,
        "shared peers js/ (+ Promise.withResolvers polyfill on Node 20)",
    )


def prepare_py(peers: Path) -> Impl:
    venv = CACHE / "venv-pylibp2p"
    py = venv / "bin" / "python"
    stamp = venv / ".bench-stamp"
    if not stamp.exists() or stamp.read_text() != PYLIBP2P:
        log(f"py-libp2p: creating {venv.relative_to(ROOT)} with {PYLIBP2P} (once)")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", PYLIBP2P],
            check=True,
        )
        stamp.write_text(PYLIBP2P)
    return Impl(
        "py-libp2p 0.8.1",
        [str(py), "listener.py"],
        [str(py), "dialer.py", "--conns-per-peer", "1"],
        peers / "py",
        "shared peers py/, dialer with ConnectionConfig(max_connections_per_peer=1)",
    )


def prepare_go() -> Impl:
    peer = ROOT / "interop" / "go" / "bin" / "peer"
    if not os.access(peer, os.X_OK):
        raise Unavailable(f"{peer.relative_to(ROOT)} missing: run interop/build.sh")
    version = json.loads(subprocess.check_output([str(peer), "version"]))["version"]
    return Impl(
        f"go-libp2p {version}",
        [str(peer), "listen", "--security", "noise"],
        [str(peer), "dial", "bench", "--security", "noise"],
        ROOT,
        "interop/go/bin/peer, Noise + yamux",
    )


def prepare_floor(peers: Path) -> Impl:
    try:
        import cryptography  # noqa: F401
    except ImportError as e:
        raise Unavailable("the asyncio floor needs the cryptography package") from e
    script = "asyncio_bench.py"
    return Impl(
        "asyncio + 1×AEAD (floor)",
        [sys.executable, script, "listen", "--aead", "1"],
        [sys.executable, script, "dial", "--aead", "1"],
        peers / "baseline",
        "shared baseline/asyncio_bench.py --aead 1: TCP per stream, no handshake/muxer",
    )


def prepare_glueberry(cmd: str) -> Impl:
    argv = shlex.split(cmd)
    if "-m" in argv:  # the peers run with cwd=ROOT, so look the module up from there too
        # Look for the file, never import it: importing the package would grow this process,
        # and on Linux a child's ru_maxrss starts at its parent's RSS at fork, so every peer
        # would report at least this runner's size (see below).
        module = argv[argv.index("-m") + 1]
        base = ROOT.joinpath(*module.split("."))
        if not (base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()):
            raise Unavailable(f"module {module} does not exist yet")
    # Installed packages (the stdlib, cryptography, py-libp2p in its venv) come with their
    # bytecode compiled by pip; this source tree does not, and PYTHONDONTWRITEBYTECODE (set
    # in some environments) would make every peer process compile it again, which costs
    # time and about 2 MB of peak RSS. Compile it once, as an install would.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "glueberry")],
        check=False,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return Impl(
        "glueberry (Python)",
        [*argv, "listen"],
        [*argv, "dial"],
        ROOT,
        f"`{cmd}`, TCP + Noise + yamux (package byte-compiled like an installed one)",
        env,
    )


# ------------------------------------------------------------------ one measurement


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop a listener we started, by its pid: stdin EOF, SIGTERM, then SIGKILL."""
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


#: Seconds a dialer may take to exit after printing its result line.
EXIT_GRACE = 10.0


def run_dialer(argv: list[str], impl: Impl, timeout: float) -> tuple[str | None, int, str]:
    """Run a dialer; returns (its JSON result line or None, exit code, stderr tail).

    The result counts once the dialer has printed it: a dialer that then hangs on its way out
    (go-libp2p v0.51's host.Close can block in the event bus) is stopped after
    :data:`EXIT_GRACE` seconds instead of failing the run at the overall timeout.
    """
    with tempfile.TemporaryFile(mode="w+") as derr:
        dp = subprocess.Popen(
            argv,
            cwd=impl.cwd,
            env=impl.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=derr,
            text=True,
        )
        watchdog = threading.Timer(timeout, dp.kill)
        watchdog.start()
        result: str | None = None
        try:
            assert dp.stdout is not None
            for line in dp.stdout:
                if line.startswith("{"):
                    result = line
                    break
            try:
                rc = dp.wait(EXIT_GRACE if result is not None else None)
            except subprocess.TimeoutExpired:
                log(f"  {impl.name}: dialer printed its result but did not exit; stopping it")
                stop(dp)
                rc = 0
        finally:
            watchdog.cancel()
            if dp.poll() is None:
                stop(dp)
            if dp.stdout is not None:
                dp.stdout.close()
        derr.seek(0)
        return result, rc, derr.read()[-2000:]


def one_run(impl: Impl, extra: list[str], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryFile(mode="w+") as lerr:
        lp = subprocess.Popen(
            impl.listener,
            cwd=impl.cwd,
            env=impl.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=lerr,
            text=True,
        )
        try:
            assert lp.stdout is not None
            line = lp.stdout.readline()  # the peers print READY within seconds or exit
            if not line.startswith("READY "):
                lerr.seek(0)
                raise RuntimeError(f"listener printed {line!r}\n{lerr.read()[-2000:]}")
            addr = line.split()[1]
            out, rc, err = run_dialer([*impl.dialer, addr, *extra], impl, timeout)
            if rc != 0 or out is None:
                lerr.seek(0)
                raise RuntimeError(
                    f"dialer rc={rc}\n{err}\n--- listener stderr:\n{lerr.read()[-2000:]}"
                )
            result: dict[str, Any] = json.loads(out)
            return result
        finally:
            stop(lp)


# ------------------------------------------------------------------ summary

METRICS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "setup_ms": lambda r: statistics.median(r["setup_ms"]) if r.get("setup_ms") else None,
    "msgs_per_s": lambda r: r.get("msgs_per_s"),
    "bulk_MBps": lambda r: r.get("bulk_MBps"),
    "rtt_us_median": lambda r: r.get("rtt_us_median"),
    "rtt_us_p99": lambda r: r.get("rtt_us_p99"),
    "rss_listener_MB": lambda r: r.get("rss_listener_MB"),
    "rss_dialer_MB": lambda r: r.get("rss_dialer_MB"),
    "cpu_us_per_msg": lambda r: (
        (r["msgs_cpu_us_dialer"] + r["msgs_cpu_us_listener"]) if "msgs_cpu_us_dialer" in r else None
    ),
}
# for ratios: True when bigger is better
RATIO_METRICS = {
    "setup_ms": False,
    "msgs_per_s": True,
    "bulk_MBps": True,
    "rtt_us_median": False,
    "cpu_us_per_msg": False,
}


def med(xs: list[float | None]) -> tuple[float, float, float] | None:
    ys = [x for x in xs if x is not None]
    return (statistics.median(ys), min(ys), max(ys)) if ys else None


def fmt(s: tuple[float, float, float] | None, nd: int = 0, spread: bool = True) -> str:
    if s is None:
        return "—"
    m, lo, hi = s
    return f"{m:,.{nd}f} ({lo:,.{nd}f}–{hi:,.{nd}f})" if spread and lo != hi else f"{m:,.{nd}f}"


def ratio_cell(raw: dict[str, list[dict[str, Any]]], num: str, den: str, metric: str) -> str:
    rs = []
    for x in raw.get(num, []):
        y = next((y for y in raw.get(den, []) if y["round"] == x["round"]), None)
        a = METRICS[metric](x)
        b = METRICS[metric](y) if y else None
        if a and b:
            rs.append(a / b)
    return fmt(med(list(rs)), 2) if rs else "—"


def runner_rss_mb() -> float:
    """This process's peak RSS: a floor under every peer's ``ru_maxrss``."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())

    def ver(cmd: list[str]) -> str:
        try:
            return subprocess.check_output(cmd, text=True, stderr=subprocess.STDOUT).split("\n")[0]
        except (OSError, subprocess.CalledProcessError):
            return "absent"

    return (
        f"{os.cpu_count()} × {cpu}, {mem} RAM, Linux {platform.release()}; "
        f"Python {platform.python_version()}, Node {ver(['node', '--version'])}, "
        f"{ver(['go', 'version'])}; load average at start {load}"
    )


def write_report(
    path: Path,
    raw: dict[str, list[dict[str, Any]]],
    impls: dict[str, Impl],
    errors: dict[str, list[str]],
    skipped: dict[str, str],
    a: argparse.Namespace,
    started: str,
    host: str,
) -> None:
    quick = a.quick
    flags = (
        " ".join(a.extra_args) or "defaults: --setup-n 20 --msgs 20000 --bulk-mib 256 --rtt-n 2000"
    )
    lines = ["# Peer benchmarks", ""]
    if quick:
        lines += [
            "> **Quick smoke run** (`--quick`: small workload). These figures only",
            "> show that the runner works; run `python3 bench/run.py` on a quiet machine for",
            "> numbers.",
            "",
        ]
    lines += [
        f"- Date: {started}",
        f"- Machine: {host}",
        f"- Command: `{a.command}`",
        f"- Rounds: {a.rounds} (interleaved; each cell is the median over rounds, min–max in "
        "brackets)",
        f"- Workload: `/bench/1.0.0` of `shared/peers/README.md`; dialer flags `{flags}`",
        f"- Runner peak RSS: {runner_rss_mb():.0f} MB (on Linux a child's peak RSS starts at its "
        "parent's RSS at fork, so the runner stays below the peers and imports none of them)",
        "",
        "| implementation | runs | setup ms | 1 KiB msgs/s | bulk MB/s | RTT median / p99 µs "
        "| RSS MB listener / dialer | CPU µs/msg (both ends) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, impl in impls.items():
        runs = raw.get(key, [])
        s = {m: med([f(r) for r in runs]) for m, f in METRICS.items()}
        rtt = (
            "—"
            if s["rtt_us_median"] is None
            else (f"{fmt(s['rtt_us_median'], 0, False)} / {fmt(s['rtt_us_p99'], 0, False)}")
        )
        rss = (
            "—"
            if s["rss_listener_MB"] is None
            else (f"{fmt(s['rss_listener_MB'], 0, False)} / {fmt(s['rss_dialer_MB'], 0, False)}")
        )
        lines.append(
            f"| {impl.name} | {len(runs)} | {fmt(s['setup_ms'], 1)} | "
            f"{fmt(s['msgs_per_s'])} | {fmt(s['bulk_MBps'])} | {rtt} | {rss} | "
            f"{fmt(s['cpu_us_per_msg'], 1)} |"
        )
    for key, why in skipped.items():
        lines.append(f"| {key} | skipped: {why} | | | | | | |")
    for ref, label in (("js-libp2p", "js-libp2p"), ("floor", "the asyncio floor")):
        if ref not in raw or not raw[ref]:
            continue
        lines += [
            "",
            f"Ratios against {label} (same round, then median; > 1 means more for "
            "rates, and slower/costlier for setup, RTT and CPU):",
            "",
            "| implementation | setup | msgs/s | bulk MB/s | RTT median | CPU/msg |",
            "|---|---|---|---|---|---|",
        ]
        for key, impl in impls.items():
            if key == ref or not raw.get(key):
                continue
            cells = [ratio_cell(raw, key, ref, m) for m in RATIO_METRICS]
            lines.append(f"| {impl.name} | " + " | ".join(cells) + " |")
    lines += ["", "Implementations:", ""]
    lines += [f"- **{impl.name}**: {impl.note}" for impl in impls.values()]
    if any(errors.values()):
        lines += ["", "Errors:", ""]
        lines += [
            f"- {impls[k].name}: {e.splitlines()[0][:300]}" for k, v in errors.items() for e in v
        ]
    lines += [
        "",
        "Absolute figures drift with the machine's load: compare within one run, as "
        "ratios. Raw runs: `bench/results/last.json` (not committed).",
        "",
    ]
    kept = kept_sections(path.read_text() if path.exists() else "")
    if kept:
        lines += [*kept, ""]
    path.write_text("\n".join(lines))


_SECTION = re.compile(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", re.DOTALL)


def kept_sections(old: str) -> list[str]:
    """Hand-written ``<!-- name:begin --> ... <!-- name:end -->`` blocks of the previous
    report, verbatim and in order: a rerun replaces the generated figures only."""
    return [m.group(0) for m in _SECTION.finditer(old)]


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick: 1)"
    )
    ap.add_argument(
        "--only",
        default="",
        help="comma list of: glueberry, js-libp2p, py-libp2p, go-libp2p, floor",
    )
    ap.add_argument("--quick", action="store_true", help="1 round of a small workload (smoke)")
    ap.add_argument(
        "--glueberry-cmd",
        default=f"{sys.executable} -m glueberry.bench_peer",
        help="command of the glueberry bench peer (listen|dial is appended)",
    )
    ap.add_argument(
        "--shared-peers",
        type=Path,
        default=DEFAULT_SHARED,
        help="the shared peers folder (copied, never run in place)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per dialer run")
    ap.add_argument("--extra", default="", help="extra dialer flags, e.g. '--msgs 200000'")
    a = ap.parse_args()
    a.command = "python3 bench/run.py" + "".join(f" {shlex.quote(x)}" for x in sys.argv[1:])
    if a.rounds is None:
        a.rounds = 1 if a.quick else 3
    a.extra_args = (QUICK_ARGS if a.quick else []) + shlex.split(a.extra)
    names = ["glueberry", "js-libp2p", "py-libp2p", "go-libp2p", "floor"]
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    if unknown := set(only) - set(names):
        ap.error(f"unknown --only names {sorted(unknown)}; known: {names}")
    wanted = [n for n in names if not only or n in only]

    impls: dict[str, Impl] = {}
    skipped: dict[str, str] = {}
    peers: Path | None = None
    for n in wanted:
        try:
            if n in ("js-libp2p", "py-libp2p", "floor") and peers is None:
                peers = shared_copy(a.shared_peers)
            if n == "glueberry":
                impls[n] = prepare_glueberry(a.glueberry_cmd)
            elif n == "js-libp2p":
                assert peers is not None
                impls[n] = prepare_js(peers)
            elif n == "py-libp2p":
                assert peers is not None
                impls[n] = prepare_py(peers)
            elif n == "go-libp2p":
                impls[n] = prepare_go()
            else:
                assert peers is not None
                impls[n] = prepare_floor(peers)
        except (Unavailable, subprocess.CalledProcessError, OSError) as e:
            skipped[n] = str(e)
            log(f"SKIP {n}: {e}")
    if not impls:
        log("nothing to run")
        return 1

    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    host = machine()
    raw: dict[str, list[dict[str, Any]]] = {k: [] for k in impls}
    errors: dict[str, list[str]] = {k: [] for k in impls}
    keys = list(impls)
    for r in range(a.rounds):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]  # rotate the start each round
        for k in order:
            t0 = time.monotonic()
            try:
                res = one_run(impls[k], a.extra_args, a.timeout)
                res["round"] = r
                raw[k].append(res)
                took = time.monotonic() - t0
                log(f"round {r + 1}/{a.rounds} {impls[k].name:28s} ok   {took:6.1f} s")
            except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as e:
                errors[k].append(f"round {r + 1}: {e}")
                log(f"round {r + 1}/{a.rounds} {impls[k].name:28s} FAILED: {str(e)[:400]}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "last.json").write_text(
        json.dumps(
            {
                "when": started,
                "command": a.command,
                "machine": host,
                "extra": a.extra_args,
                "raw": raw,
                "errors": errors,
                "skipped": skipped,
            },
            indent=1,
        )
    )
    write_report(a.out, raw, impls, errors, skipped, a, started, host)
    log(f"wrote {a.out} and {(RESULTS / 'last.json').relative_to(ROOT)}")
    print(a.out.read_text())
    return 0 if all(raw.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
