"""Hole-punch success rate and time-to-direct in the NAT lab, with our stack (needs root).

``sudo python3 bench/holepunch_lab.py [--attempts 20] [--transport tcp|quic] [--symmetric]
[--direct-dial-timeout S] [--no-direct-dial]``

Builds the namespace NAT lab (tests/netlab/lab.py: relay on the public segment, A behind r1,
B behind r2), starts a relay and A once, then for each attempt starts a fresh B on a new
listen port (fresh NAT mappings, fresh peer ID), dials A through the relay and waits until
DCUtR has replaced the relayed connection by a direct one. Prints one line per attempt and a
summary:

* success rate: attempts that ended with a direct connection (B's only connection to A is
  TCP, or QUIC with ``--transport quic``) within ``--timeout`` seconds;
* time-to-direct, two views: A's ``HolePunchSucceeded.elapsed`` (relayed connection up at A
  -> direct connection up at A) and B's wall time from its relayed dial returning to the
  relayed connection being gone;
* DCUtR attempts used (1-3; 0 = the plain direct dial worked).

``--transport quic``: the relay also listens on QUIC, A and B listen on QUIC only and reach
the relay over QUIC (so the relay observes their QUIC sockets), and the punch is QUIC's (B
dials, A sprays random datagrams and accepts). ``--no-direct-dial`` skips the plain direct
dial that otherwise precedes punching (``NatConfig.direct_dial_first=False``).

The lab has no added latency (the kernel here lacks netem): times are protocol and
scheduling overhead plus the configured direct-dial timeout, not WAN round trips.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.netlab import lab as L
from tests.netlab.labpeers import LabPeer, LabPeerError


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[idx]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attempts", type=int, default=20)
    ap.add_argument("--symmetric", action="store_true", help="masquerade fully-random")
    ap.add_argument("--transport", choices=("tcp", "quic"), default="tcp")
    ap.add_argument("--no-direct-dial", action="store_true", help="punch at once")
    ap.add_argument("--direct-dial-timeout", type=float, default=1.0)
    ap.add_argument("--punch-timeout", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=None, help="per attempt (default: 3 tries)")
    args = ap.parse_args()
    if args.timeout is None:
        args.timeout = args.direct_dial_timeout + 3 * (args.punch_timeout + 1.0) + 5.0
    problems = L.missing_requirements()
    if problems:
        print("NAT lab cannot run: " + "; ".join(problems), file=sys.stderr)
        return 2
    nat_common = {
        "force_reachability": "private",
        "observed_addr_threshold": 1,
        "enable_autonat": False,
        "direct_dial_timeout": args.direct_dial_timeout,
        "punch_timeout": args.punch_timeout,
        "relayed_close_grace": 1.0,
        "direct_dial_first": not args.no_direct_dial,
    }
    quic = args.transport == "quic"
    print(
        f"NAT lab, {'symmetric' if args.symmetric else 'port-preserving'} NATs, "
        f"{args.transport}, {args.attempts} attempts; "
        f"direct_dial_timeout={args.direct_dial_timeout} s"
        f"{' (no direct dial)' if args.no_direct_dial else ''}, "
        f"punch_timeout={args.punch_timeout} s"
    )

    def listen(port: int) -> str:
        return f"/ip4/0.0.0.0/udp/{port}/quic-v1" if quic else f"/ip4/0.0.0.0/tcp/{port}"

    ok_elapsed_a: list[float] = []
    ok_wall_b: list[float] = []
    dcutr_attempts: list[int] = []
    failures = 0
    with L.nat_lab(wan_prefix="11.99.0", symmetric=args.symmetric) as lab:
        relay = LabPeer(
            lab,
            "relay",
            name="relay",
            listen=[f"/ip4/{lab.relay_ip}/tcp/4001", f"/ip4/{lab.relay_ip}/udp/4001/quic-v1"],
            nat={
                "enable_relay_service": True,
                "enable_relay_client": False,
                "enable_hole_punching": False,
                "enable_autonat": False,
            },
        )
        relay_addr = (
            f"/ip4/{lab.relay_ip}/udp/4001/quic-v1" if quic else f"/ip4/{lab.relay_ip}/tcp/4001"
        )
        nat = {"relays": [f"{relay_addr}/p2p/{relay.peer_id}"], **nat_common}
        a = LabPeer(lab, "h1", name="A", listen=listen(4001), nat=nat)
        try:
            rsvp = a.wait_event("ReservationObtained")
            a.ok("wait_observed", timeout=20)
            circuit = next(x for x in rsvp["addrs"] if ("/quic-v1/" in x) == quic)
            target = f"{circuit}/p2p/{a.peer_id}"
            for i in range(1, args.attempts + 1):
                b = LabPeer(lab, "h2", name=f"B{i}", listen=listen(4200 + i), nat=nat)
                try:
                    b.ok("wait_observed", timeout=20)
                    b.ok("connect", addr=target)
                    t0 = time.monotonic()
                    res = b.call("wait_direct", peer=a.peer_id, timeout=args.timeout)
                    wall = time.monotonic() - t0
                    n_ok = len(a.events("HolePunchSucceeded"))
                    want = "quic-v1" if quic else "tcp"
                    if res["ok"] and [c["transport"] for c in res["conns"]] != [want]:
                        res = {"ok": False, "error": f"direct but not {want}: {res['conns']}"}
                    if res["ok"]:
                        ev = next(
                            e
                            for e in reversed(a.events("HolePunchSucceeded"))
                            if e["peer"] == b.peer_id
                        )
                        ok_elapsed_a.append(ev["elapsed"])
                        ok_wall_b.append(wall)
                        dcutr_attempts.append(ev["attempts"])
                        print(
                            f"{i:3d} direct  A: {ev['elapsed'] * 1000:7.1f} ms  "
                            f"B: {wall * 1000:7.1f} ms  DCUtR attempts {ev['attempts']}"
                        )
                    else:
                        failures += 1
                        print(f"{i:3d} FAILED ({res.get('error')}); successes so far {n_ok}")
                except LabPeerError as exc:
                    failures += 1
                    print(f"{i:3d} ERROR {str(exc)[:300]}")
                finally:
                    b.close()
        finally:
            a.close()
            relay.close()
    n = len(ok_elapsed_a)
    total = n + failures
    print()
    print(f"success rate: {n}/{total} = {100.0 * n / max(total, 1):.0f} %")
    if n:
        for label, vals in (
            ("time-to-direct at A (relayed up -> direct up)", ok_elapsed_a),
            ("time-to-direct at B (relayed dial -> relayed closed)", ok_wall_b),
        ):
            ms = [v * 1000 for v in vals]
            print(
                f"{label}: median {statistics.median(ms):.0f} ms, p90 {pct(ms, 0.9):.0f} ms, "
                f"min {min(ms):.0f} ms, max {max(ms):.0f} ms"
            )
        hist = {k: dcutr_attempts.count(k) for k in sorted(set(dcutr_attempts))}
        print(f"DCUtR attempts used: {hist}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
