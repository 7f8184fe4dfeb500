"""Side-by-side peer benchmark over QUIC: Glueberry and go-libp2p on ``/quic-v1``.

Runs the ``/bench/1.0.0`` workload of ``shared/peers/README.md`` (setup, 1 KiB message rate,
bulk, 1 KiB round trip, RSS, CPU) as listener + dialer pairs of fresh processes on
127.0.0.1, in interleaved rounds (round r runs every implementation once, in a rotated
order), for:

- ``glueberry-quic``: ``python3 -m glueberry.bench_peer listen --transport quic`` / ``dial``;
- ``go-quic``: ``interop/go/bin/peer`` with ``--transport quic`` (quic-go);
- ``glueberry-tcp``: the same bench peer over TCP + Noise + yamux (the set-up reference);
- ``go-tcp``: the go peer over TCP + Noise + yamux (context);
- ``floor``: the shared ``baseline/asyncio_bench.py --aead 1`` (plain asyncio TCP);
- ``py-quic<-go`` / ``go<-py-quic``: mixed pairs over QUIC (go dials our listener, we dial
  go's; quic-go accepts datagrams of at most 1452 bytes).

and, in a fresh process per round, the **aioquic ceiling**: two aioquic connections (with
our hooks) exchanging a bulk stream in memory, no sockets, no event loop, at the datagram
size our transport uses with a peer (1350 bytes) and on loopback (``QuicConfig``): the CPU
any aioquic-based transport needs per byte, and the throughput two processes could reach
if each side had a core of its own.

Results go to ``docs/benchmarks.md`` between ``<!-- quic:begin -->`` and
``<!-- quic:end -->`` (the rest of the file is left alone; ``bench/run.py`` keeps such
blocks when it rewrites its part), raw runs to ``bench/results/quic.json``.

    python3 bench/run_quic.py               # 3 rounds (a few minutes; machine must be quiet)
    python3 bench/run_quic.py --quick       # 1 small round: a smoke test
    python3 bench/run_quic.py --only glueberry-quic,go-quic --rounds 5
    python3 bench/run_quic.py --ceiling 1350 --mib 16     # one ceiling measurement (JSON)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from run import (
    DEFAULT_SHARED,
    ROOT,
    Impl,
    Unavailable,
    log,
    machine,
    one_run,
    prepare_floor,
    prepare_glueberry,
    run_dialer,
    shared_copy,
    stop,
)

RESULTS = ROOT / "bench" / "results"
BEGIN, END = "<!-- quic:begin -->", "<!-- quic:end -->"
DEFAULT_ARGS = "--setup-n 20 --msgs 5000 --bulk-mib 64 --rtt-n 1000 --warmup 50"
QUICK_ARGS = "--setup-n 5 --msgs 1000 --bulk-mib 8 --rtt-n 200 --warmup 20"
NAMES = [
    "glueberry-quic",
    "go-quic",
    "glueberry-tcp",
    "go-tcp",
    "floor",
    "py-quic<-go",
    "go<-py-quic",
]
DEFAULT_NAMES = NAMES


# ------------------------------------------------------------------ implementations


def go_peer() -> tuple[Path, str]:
    peer = ROOT / "interop" / "go" / "bin" / "peer"
    if not peer.exists():
        raise Unavailable(f"{peer.relative_to(ROOT)} missing: run interop/build.sh")
    version = json.loads(subprocess.check_output([str(peer), "version"]))["version"]
    return peer, str(version)


def prepare(name: str, gb_cmd: str, shared: Path) -> Impl:
    if name == "floor":
        return prepare_floor(shared_copy(shared))
    if name in ("glueberry-quic", "glueberry-tcp"):
        base = prepare_glueberry(gb_cmd)
        if name == "glueberry-tcp":
            base.name = "glueberry TCP+Noise"
            base.note = f"`{gb_cmd}`, TCP + Noise + yamux"
            return base
        base.name = "glueberry QUIC"
        base.listener = [*base.listener, "--transport", "quic"]
        base.note = f"`{gb_cmd}`, /quic-v1 on aioquic (QuicConfig defaults)"
        return base
    peer, version = go_peer()
    if name == "go-quic":
        return Impl(
            f"go-libp2p {version} QUIC",
            [str(peer), "listen", "--transport", "quic"],
            [str(peer), "dial", "bench", "--transport", "quic"],
            ROOT,
            "interop/go/bin/peer --transport quic (quic-go)",
        )
    if name == "go-tcp":
        return Impl(
            f"go-libp2p {version} TCP+Noise",
            [str(peer), "listen", "--security", "noise"],
            [str(peer), "dial", "bench", "--security", "noise"],
            ROOT,
            "interop/go/bin/peer, TCP + Noise + yamux",
        )
    gb = prepare_glueberry(gb_cmd)
    if name == "py-quic<-go":
        return Impl(
            "glueberry QUIC ← go dialer",
            [*gb.listener, "--transport", "quic"],
            [str(peer), "dial", "bench", "--transport", "quic"],
            ROOT,
            "our QUIC listener, the go peer dials (go's bench dialer)",
            gb.env,
        )
    if name == "go<-py-quic":
        return Impl(
            "go QUIC ← glueberry dialer",
            [str(peer), "listen", "--transport", "quic"],
            gb.dialer,
            ROOT,
            "the go QUIC listener, our bench dialer",
            gb.env,
        )
    raise Unavailable(f"unknown implementation {name}")


# ------------------------------------------------------------------ set-up over a delayed path

#: Dialer flags of the emulated-RTT set-up runs.
RTT_ARGS = "--setup-n 10 --msgs 0 --bulk-mib 0 --rtt-n 0"
#: The pairs measured over the delay proxy: (key, proxy kind).
RTT_PAIRS = (("glueberry-quic", "udp"), ("glueberry-tcp", "tcp"))


def proxied_run(
    impl: Impl, kind: str, delay_ms: float, extra: list[str], timeout: float
) -> dict[str, Any]:
    """One listener/dialer pair with ``bench/delay_proxy.py`` in between (the dialer is
    given the proxy's port; our dialer dials exactly the address it is given)."""
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
        px: subprocess.Popen[str] | None = None
        try:
            assert lp.stdout is not None
            line = lp.stdout.readline()
            if not line.startswith("READY "):
                lerr.seek(0)
                raise RuntimeError(f"listener printed {line!r}\n{lerr.read()[-2000:]}")
            parts = line.split()[1].split("/")  # ['', 'ip4', HOST, 'tcp'|'udp', PORT, ...]
            px = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "bench" / "delay_proxy.py"),
                    kind,
                    f"{parts[2]}:{parts[4]}",
                    "--delay-ms",
                    str(delay_ms),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert px.stdout is not None
            ready = px.stdout.readline()
            if not ready.startswith("READY "):
                raise RuntimeError(f"delay proxy printed {ready!r}")
            parts[4] = ready.split()[1]
            out, rc, err = run_dialer([*impl.dialer, "/".join(parts), *extra], impl, timeout)
            if rc != 0 or out is None:
                lerr.seek(0)
                raise RuntimeError(f"dialer rc={rc}\n{err}\n--- listener:\n{lerr.read()[-2000:]}")
            result: dict[str, Any] = json.loads(out)
            return result
        finally:
            if px is not None:
                stop(px)
            stop(lp)


# ------------------------------------------------------------------ the aioquic ceiling


def ceiling(datagram_size: int, mib: int) -> dict[str, float]:
    """Two hooked aioquic connections in memory: one bulk stream of ``mib`` MiB.

    Each side's calls are timed separately (thread CPU time; one thread, no I/O), so
    ``both`` is the CPU of the transfer on one core and ``max(client, server)`` bounds
    what two processes, one core each, could reach.
    """
    from aioquic.quic import events as qe

    from glueberry.transport import _aioquic_hooks as hooks
    from glueberry.transport.quic import QuicConfig
    from glueberry.wire import tlscert
    from glueberry.wire.identity import PrivateKey

    cfg = QuicConfig()
    keys = [PrivateKey.from_seed(bytes([i]) * 32) for i in (1, 2)]
    local = [tlscert.generate_certificate(k, time.time()) for k in keys]
    confs = [
        hooks.make_configuration(
            is_client=i == 0,
            alpn=tlscert.ALPN_LIBP2P,
            local=local[i],
            idle_timeout=60,
            max_datagram_size=1350,
            stream_window=cfg.stream_receive_window,
            connection_window=cfg.connection_receive_window,
        )
        for i in range(2)
    ]
    client = hooks.GlueberryQuicConnection(configuration=confs[0])
    now = 1000.0
    client.connect(("127.0.0.1", 2), now=now)
    server: hooks.GlueberryQuicConnection | None = None
    total = mib << 20
    got = packets = 0
    started = False
    t_client = t_server = 0.0
    clock = time.thread_time  # CPU time: preemption by other processes does not count
    while got < total:
        now += 0.0002
        t0 = clock()
        out = client.datagrams_to_send(now)
        t1 = clock()
        if server is None:
            server = hooks.GlueberryQuicConnection(
                configuration=confs[1],
                original_destination_connection_id=client._peer_cid.cid,
            )
        for data, _ in out:
            server.receive_datagram(data, ("127.0.0.1", 1), now)
        back = server.datagrams_to_send(now)
        t2 = clock()
        for data, _ in back:
            client.receive_datagram(data, ("127.0.0.1", 2), now)
        t3 = clock()
        while (ev := client.next_event()) is not None:
            if isinstance(ev, qe.HandshakeCompleted) and not started:
                # as the transport does on loopback once the handshake is done
                client.set_max_datagram_size(datagram_size)
                server.set_max_datagram_size(datagram_size)
                sid = client.get_next_available_stream_id()
                client.send_stream_data(sid, bytes(total), end_stream=True)
                started = True
                t3 = clock()  # the timed part starts here
        t4 = clock()
        while (ev := server.next_event()) is not None:
            if isinstance(ev, qe.StreamDataReceived):
                got += len(ev.data)
                server.consume(ev.stream_id, len(ev.data))
        t5 = clock()
        if started:
            packets += len(out)
            t_client += (t1 - t0) + (t3 - t2) + (t4 - t3)
            t_server += (t2 - t1) + (t5 - t4)
    both = t_client + t_server
    return {
        "datagram_size": datagram_size,
        "MB": total / 1e6,
        "packets": packets,
        "client_s": t_client,
        "server_s": t_server,
        "one_core_MBps": total / both / 1e6,
        "two_core_MBps": total / max(t_client, t_server) / 1e6,
        "cpu_s_per_GB": both / total * 1e9,
        "us_per_packet_client": t_client / packets * 1e6,
        "us_per_packet_server": t_server / packets * 1e6,
    }


def datagram_sizes() -> list[int]:
    """QuicConfig's datagram sizes (to a peer, on loopback), read in a child process: the
    runner never imports glueberry, since on Linux a child's peak RSS starts at its
    parent's and every peer would report at least the runner's size."""
    code = (
        "from glueberry.transport.quic import QuicConfig as C; c = C(); "
        "print(c.max_datagram_size, c.loopback_datagram_size)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return sorted({int(x) for x in out.stdout.split()})


def run_ceiling(size: int, mib: int, timeout: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__)), "--ceiling", str(size), "--mib", str(mib)],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


# ------------------------------------------------------------------ report


def _setup(r: dict[str, Any]) -> float | None:
    return statistics.median(r["setup_ms"]) if r.get("setup_ms") else None


def _connect(r: dict[str, Any]) -> float | None:
    phases = r.get("setup_phases_ms")
    return float(phases[0]) if phases else None


def _cpu_msg(r: dict[str, Any]) -> float | None:
    if "msgs_cpu_us_dialer" not in r:
        return None
    return float(r["msgs_cpu_us_dialer"] + r["msgs_cpu_us_listener"])


def _setup_cpu(r: dict[str, Any]) -> float | None:
    if "setup_cpu_ms_dialer" not in r:
        return None
    return float(r["setup_cpu_ms_dialer"] + r["setup_cpu_ms_listener"])


METRICS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "setup_ms": _setup,
    "connect_ms": _connect,
    "setup_cpu_ms": _setup_cpu,
    "msgs_per_s": lambda r: r.get("msgs_per_s"),
    "bulk_MBps": lambda r: r.get("bulk_MBps"),
    "bulk_cpu_s_per_GB": lambda r: r.get("bulk_cpu_s_per_GB"),
    "rtt_us_median": lambda r: r.get("rtt_us_median"),
    "rtt_us_p99": lambda r: r.get("rtt_us_p99"),
    "rss_listener_MB": lambda r: r.get("rss_listener_MB"),
    "rss_dialer_MB": lambda r: r.get("rss_dialer_MB"),
    "cpu_us_per_msg": _cpu_msg,
}


def med(xs: list[float | None]) -> tuple[float, float, float] | None:
    ys = [x for x in xs if x is not None]
    return (statistics.median(ys), min(ys), max(ys)) if ys else None


def fmt(s: tuple[float, float, float] | None, nd: int = 0, spread: bool = True) -> str:
    if s is None:
        return "—"
    m, lo, hi = s
    if spread and lo != hi:
        return f"{m:,.{nd}f} ({lo:,.{nd}f}–{hi:,.{nd}f})"
    return f"{m:,.{nd}f}"


def ratio(
    raw: dict[str, list[dict[str, Any]]], num: str, den: str, metric: str
) -> tuple[float, float, float] | None:
    """Per-round ratio num/den of ``metric``, then median (min, max) over rounds."""
    f = METRICS[metric]
    rs: list[float | None] = []
    for x in raw.get(num, []):
        y = next((y for y in raw.get(den, []) if y["round"] == x["round"]), None)
        a, b = f(x), (f(y) if y else None)
        if a and b:
            rs.append(a / b)
    return med(rs)


def ceiling_ratio(
    raw: dict[str, list[dict[str, Any]]], ceil: list[dict[str, Any]], size: int, key: str
) -> tuple[float, float, float] | None:
    rs: list[float | None] = []
    for c in ceil:
        if c["datagram_size"] != size:
            continue
        y = next((y for y in raw.get("go-quic", []) if y["round"] == c["round"]), None)
        if y and y.get("bulk_MBps"):
            rs.append(c[key] / y["bulk_MBps"])
    return med(rs)


def render(
    raw: dict[str, list[dict[str, Any]]],
    impls: dict[str, Impl],
    ceil: list[dict[str, Any]],
    errors: dict[str, list[str]],
    skipped: dict[str, str],
    a: argparse.Namespace,
    started: str,
    host: str,
) -> str:
    lines = [BEGIN, "## Over QUIC: Glueberry vs go-libp2p (`bench/run_quic.py`)", ""]
    if a.quick:
        lines += ["> **Quick smoke run**: these figures only show that the runner works.", ""]
    lines += [
        f"- Date: {started}",
        f"- Machine: {host}",
        f"- Command: `{a.command}`",
        f"- Rounds: {a.rounds} (interleaved; median over rounds, min–max in brackets)",
        f"- Workload: `/bench/1.0.0`; dialer flags `{a.workload}`",
        "",
        "| implementation | runs | setup ms (connect) | setup CPU ms | 1 KiB msgs/s "
        "| bulk MB/s | bulk CPU s/GB | RTT median / p99 µs | RSS MB l / d | CPU µs/msg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, impl in impls.items():
        runs = raw.get(key, [])
        s = {m: med([f(r) for r in runs]) for m, f in METRICS.items()}
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
        setup = fmt(s["setup_ms"], 1)
        if s["connect_ms"] is not None:
            setup += f" ({fmt(s['connect_ms'], 1, False)})"
        lines.append(
            f"| {impl.name} | {len(runs)} | {setup} | {fmt(s['setup_cpu_ms'], 1, False)} | "
            f"{fmt(s['msgs_per_s'])} | {fmt(s['bulk_MBps'], 1)} | "
            f"{fmt(s['bulk_cpu_s_per_GB'], 1, False)} | {rtt} | {rss} | "
            f"{fmt(s['cpu_us_per_msg'], 1, False)} |"
        )
    for key, why in skipped.items():
        lines.append(f"| {key} | skipped: {why} | | | | | | | | |")
    sizes = sorted({c["datagram_size"] for c in ceil})
    for size in sizes:
        cs = [c for c in ceil if c["datagram_size"] == size]
        lines.append(
            f"| aioquic alone, in memory, {size}-byte datagrams | {len(cs)} | | | | "
            f"{fmt(med([c['two_core_MBps'] for c in cs]), 1)} two cores; "
            f"{fmt(med([c['one_core_MBps'] for c in cs]), 1, False)} one core | "
            f"{fmt(med([c['cpu_s_per_GB'] for c in cs]), 1, False)} | | | |"
        )
    rtt_rows = [(k, f"{k}@rtt") for k, _ in RTT_PAIRS if raw.get(f"{k}@rtt")]
    if rtt_rows:
        lines += [
            "",
            f"Set-up over an emulated {a.rtt_ms:g} ms RTT (`bench/delay_proxy.py`, "
            f"{a.rtt_ms / 2:g} ms each way; dialer flags `{RTT_ARGS}`; the proxy cannot "
            "delay TCP's SYN/SYN-ACK, so TCP's own handshake round trip is not in these "
            "figures):",
            "",
            "| implementation | runs | setup ms | connect ms | stream open ms | 1-byte echo ms |",
            "|---|---|---|---|---|---|",
        ]
        for key, name in rtt_rows:
            runs = raw[name]
            phases = [
                med([float(r["setup_phases_ms"][j]) for r in runs if r.get("setup_phases_ms")])
                for j in range(3)
            ]
            lines.append(
                f"| {impls[key].name} | {len(runs)} | {fmt(med([_setup(r) for r in runs]), 1)} | "
                + " | ".join(fmt(ph, 1, False) for ph in phases)
                + " |"
            )
    lines += [
        "",
        "setup = new connection + stream + 1-byte round trip (median of the dialer's runs); "
        "connect = the connection alone; setup CPU = both processes, per setup; bulk CPU = "
        "both processes per GB. The aioquic rows time each side's calls separately: "
        "*two cores* = bytes ÷ the busier side's time (each process with a core of its "
        "own), *one core* = bytes ÷ both sides' time.",
        "",
        "Targets (per-round ratios, then median over rounds):",
        "",
        "| target | measured | met? |",
        "|---|---|---|",
    ]

    def row(label: str, r: tuple[float, float, float] | None, ok: Callable[[float], bool]) -> None:
        verdict = "—" if r is None else ("yes" if ok(r[0]) else "**no**")
        lines.append(f"| {label} | {fmt(r, 2)} | {verdict} |")

    row(
        "QUIC setup ÷ TCP+Noise setup (Glueberry) ≤ 0.5",
        ratio(raw, "glueberry-quic", "glueberry-tcp", "setup_ms"),
        lambda x: x <= 0.5,
    )
    row(
        "QUIC connect ÷ TCP+Noise connect (Glueberry) ≤ 0.5",
        ratio(raw, "glueberry-quic", "glueberry-tcp", "connect_ms"),
        lambda x: x <= 0.5,
    )
    if rtt_rows:
        row(
            f"the same over {a.rtt_ms:g} ms RTT, setup ≤ 0.5",
            ratio(raw, "glueberry-quic@rtt", "glueberry-tcp@rtt", "setup_ms"),
            lambda x: x <= 0.5,
        )
        row(
            f"the same over {a.rtt_ms:g} ms RTT, connect ≤ 0.5",
            ratio(raw, "glueberry-quic@rtt", "glueberry-tcp@rtt", "connect_ms"),
            lambda x: x <= 0.5,
        )
    row(
        "Glueberry QUIC bulk ÷ go QUIC bulk ≥ 0.5",
        ratio(raw, "glueberry-quic", "go-quic", "bulk_MBps"),
        lambda x: x >= 0.5,
    )
    for size in sizes:
        row(
            f"aioquic alone ({size} B, two cores) ÷ go QUIC bulk ≥ 0.5",
            ceiling_ratio(raw, ceil, size, "two_core_MBps"),
            lambda x: x >= 0.5,
        )
    others = [
        (
            "Glueberry QUIC ÷ Glueberry TCP+Noise, bulk",
            "glueberry-quic",
            "glueberry-tcp",
            "bulk_MBps",
        ),
        (
            "Glueberry QUIC ÷ go QUIC, bulk CPU per GB",
            "glueberry-quic",
            "go-quic",
            "bulk_cpu_s_per_GB",
        ),
        ("go dialer → Glueberry QUIC ÷ go QUIC, bulk", "py-quic<-go", "go-quic", "bulk_MBps"),
        ("Glueberry dialer → go QUIC ÷ go QUIC, bulk", "go<-py-quic", "go-quic", "bulk_MBps"),
        ("Glueberry QUIC ÷ go QUIC, 1 KiB msgs/s", "glueberry-quic", "go-quic", "msgs_per_s"),
        ("Glueberry QUIC ÷ go QUIC, RTT median", "glueberry-quic", "go-quic", "rtt_us_median"),
        ("Glueberry QUIC ÷ go QUIC, setup", "glueberry-quic", "go-quic", "setup_ms"),
        ("go QUIC ÷ go TCP+Noise, setup", "go-quic", "go-tcp", "setup_ms"),
        ("go QUIC ÷ go TCP+Noise, bulk", "go-quic", "go-tcp", "bulk_MBps"),
    ]
    lines += ["", "Other ratios (same rounds):", "", "| ratio | value |", "|---|---|"]
    for label, num, den, metric in others:
        r = ratio(raw, num, den, metric)
        if r is not None:
            lines.append(f"| {label} | {fmt(r, 2)} |")
    lines += ["", "Implementations:", ""]
    lines += [f"- **{impl.name}**: {impl.note}" for impl in impls.values()]
    if any(errors.values()):
        lines += ["", "Errors:", ""]
        lines += [
            f"- {impls[k].name if k in impls else k}: {e.splitlines()[0][:300]}"
            for k, v in errors.items()
            for e in v
        ]
    lines += [
        "",
        "Raw runs: `bench/results/quic.json` (not committed). Absolute figures drift with the "
        "machine's load: compare within one run.",
    ]
    kept = re.search(r"<!-- quic-notes:begin -->.*?<!-- quic-notes:end -->", a.old, re.DOTALL)
    if kept:
        lines += ["", kept.group(0)]
    lines.append(END)
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace the marked section of ``path`` (or append it), leaving the rest alone."""
    old = path.read_text() if path.exists() else "# Peer benchmarks\n"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if pattern.search(old):
        new = pattern.sub(lambda _: section, old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(new)


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=None, help="default 3 (--quick: 1)")
    ap.add_argument("--only", default="", help=f"comma list of: {', '.join(NAMES)}")
    ap.add_argument("--quick", action="store_true", help="1 round of a small workload")
    ap.add_argument("--extra", default="", help="dialer flags replacing the default workload")
    ap.add_argument(
        "--glueberry-cmd",
        default=f"{sys.executable} -m glueberry.bench_peer",
        help="command of the glueberry bench peer (listen|dial is appended)",
    )
    ap.add_argument("--shared-peers", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per dialer run")
    ap.add_argument("--retries", type=int, default=1, help="re-runs of a failed pair per round")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the in-memory aioquic runs")
    ap.add_argument(
        "--rtt-ms",
        type=float,
        default=20.0,
        help="emulated RTT of the extra set-up runs through bench/delay_proxy.py (0: none)",
    )
    ap.add_argument("--ceiling", type=int, metavar="SIZE", help="one ceiling run, JSON out")
    ap.add_argument("--mib", type=int, default=16, help="MiB per ceiling run")
    a = ap.parse_args()
    if a.ceiling:
        print(json.dumps(ceiling(a.ceiling, a.mib)))
        return 0
    a.command = "python3 bench/run_quic.py" + "".join(f" {shlex.quote(x)}" for x in sys.argv[1:])
    if a.rounds is None:
        a.rounds = 1 if a.quick else 3
    a.workload = a.extra or (QUICK_ARGS if a.quick else DEFAULT_ARGS)
    extra = shlex.split(a.workload)
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    if unknown := set(only) - set(NAMES):
        ap.error(f"unknown --only names {sorted(unknown)}; known: {NAMES}")
    wanted = only or DEFAULT_NAMES

    impls: dict[str, Impl] = {}
    skipped: dict[str, str] = {}
    for n in wanted:
        try:
            impls[n] = prepare(n, a.glueberry_cmd, a.shared_peers)
        except (Unavailable, subprocess.CalledProcessError, OSError) as e:
            skipped[n] = str(e)
            log(f"SKIP {n}: {e}")
    if not impls:
        log("nothing to run")
        return 1
    sizes = datagram_sizes()
    mib = 4 if a.quick else a.mib

    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    host = machine()
    raw: dict[str, list[dict[str, Any]]] = {k: [] for k in impls}
    errors: dict[str, list[str]] = {k: [] for k in [*impls, "ceiling"]}
    ceil: list[dict[str, Any]] = []
    keys = list(impls)
    for r in range(a.rounds):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]
        for k in order:
            for attempt in range(1 + a.retries):
                t0 = time.monotonic()
                try:
                    res = one_run(impls[k], extra, a.timeout)
                except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as e:
                    errors[k].append(f"round {r + 1}, attempt {attempt + 1}: {e}")
                    log(f"round {r + 1}/{a.rounds} {impls[k].name:32s} FAILED: {str(e)[:400]}")
                    continue
                res["round"] = r
                raw[k].append(res)
                took = time.monotonic() - t0
                log(f"round {r + 1}/{a.rounds} {impls[k].name:32s} ok   {took:6.1f} s")
                break
        if a.rtt_ms > 0:
            for key, kind in RTT_PAIRS:
                if key not in impls:
                    continue
                name = f"{key}@rtt"
                try:
                    res = proxied_run(
                        impls[key], kind, a.rtt_ms / 2, shlex.split(RTT_ARGS), a.timeout
                    )
                except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as e:
                    errors.setdefault(name, []).append(f"round {r + 1}: {e}")
                    log(f"round {r + 1}/{a.rounds} {name} FAILED: {str(e)[:400]}")
                    continue
                res["round"] = r
                raw.setdefault(name, []).append(res)
                log(f"round {r + 1}/{a.rounds} {impls[key].name} over {a.rtt_ms:g} ms RTT ok")
        if not a.no_ceiling:
            for size in sizes:
                try:
                    c = run_ceiling(size, mib, a.timeout)
                    c["round"] = r
                    ceil.append(c)
                    log(
                        f"round {r + 1}/{a.rounds} aioquic in memory {size:5d} B   "
                        f"{c['two_core_MBps']:6.1f} MB/s (two cores)"
                    )
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
                    errors["ceiling"].append(f"round {r + 1}: {e}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quic.json").write_text(
        json.dumps(
            {
                "when": started,
                "command": a.command,
                "machine": host,
                "workload": extra,
                "raw": raw,
                "ceiling": ceil,
                "errors": errors,
                "skipped": skipped,
            },
            indent=1,
        )
    )
    a.old = a.out.read_text() if a.out.exists() else ""
    section = render(raw, impls, ceil, errors, skipped, a, started, host)
    write_section(a.out, section)
    log(f"wrote the QUIC section of {a.out} and bench/results/quic.json")
    print(section)
    return 0 if all(raw.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
