"""A NAT lab built from Linux network namespaces, veth pairs and nftables.

Topology (every box is a network namespace named ``<prefix>-<role>``)::

        h1 (192.168.1.10)            h2 (192.168.2.10)
            | lan                        | lan
        r1  (LAN 192.168.1.1,        r2  (LAN 192.168.2.1,
             WAN 10.99.0.1)               WAN 10.99.0.2)
            | wan                        | wan
            +------------ inet (bridge) -+-------- relay (10.99.0.10)

* ``inet`` holds a bridge that plays "the internet" (10.99.0.0/24); ``relay`` is a public
  host on it.
* ``r1``/``r2`` are NAT routers: IPv4 forwarding on, nftables ``masquerade`` on the WAN side
  (``masquerade fully-random`` when ``symmetric=True``: a fresh random external port per
  flow, i.e. a symmetric NAT), and a forward policy of *drop* for anything not belonging to
  a connection started from the LAN ("drop unsolicited inbound silently" - no RST, no ICMP).
  The routers' own input from the WAN is dropped too, except for connection replies.
* ``h1``/``h2`` are private hosts whose default route is their router.

All addresses live inside these namespaces only; nothing is created in the host's own
namespace (veth pairs are created directly inside the namespaces with ``ip -n``), so the
host's interfaces are never touched. Names carry a random suffix so parallel runs do not
collide. :meth:`NatLab.teardown` kills every process still running in the lab's namespaces
(all of them were started by the lab) and deletes the namespaces; it runs on exit from the
context manager, also when building failed half-way.

Requires root, ``ip`` (iproute2) and ``nft`` (Debian package ``nftables``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

ROLES: Final = ("inet", "relay", "r1", "r2", "h1", "h2")

INET_NET: Final = "10.99.0"
RELAY_IP: Final = "10.99.0.10"
R1_WAN: Final = "10.99.0.1"
R2_WAN: Final = "10.99.0.2"
LAN1: Final = "192.168.1"
LAN2: Final = "192.168.2"
H1_IP: Final = "192.168.1.10"
H2_IP: Final = "192.168.2.10"


class LabError(RuntimeError):
    """The lab could not be built (missing tool, not root, command failed)."""


def missing_requirements() -> list[str]:
    """Why the lab cannot run here (empty list: it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not running as root")
    for tool, pkg in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            problems.append(f"'{tool}' not found (apt-get install -y {pkg})")
    return problems


def _run(argv: Sequence[str], *, stdin: str | None = None) -> str:
    proc = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def router_ruleset(*, symmetric: bool, extra_forward: str = "") -> str:
    """The nftables ruleset of a NAT router (WAN interface ``wan``, LAN ``lan``)."""
    masq = "masquerade fully-random" if symmetric else "masquerade"
    return f"""
table ip gbnat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" {masq}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
        {extra_forward}
    }}
    chain input {{
        type filter hook input priority filter; policy drop;
        iifname "lo" accept
        iifname "lan" accept
        ct state established,related accept
    }}
}}
"""


@dataclass
class NatLab:
    """A built lab. Use :func:`nat_lab` (a context manager) to get one."""

    symmetric: bool = False
    prefix: str = field(default_factory=lambda: "gb" + secrets.token_hex(3))
    built: list[str] = field(default_factory=list)
    """Namespaces created so far (teardown deletes exactly these)."""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ns(self, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown lab role {role!r}")
        return f"{self.prefix}-{role}"

    # --- building ---------------------------------------------------------------------

    def build(self) -> None:
        problems = missing_requirements()
        if problems:
            raise LabError("NAT lab unavailable: " + "; ".join(problems))
        for role in ROLES:
            _run(["ip", "netns", "add", self.ns(role)])
            self.built.append(self.ns(role))
            self.ip(role, "link", "set", "lo", "up")
        inet = self.ns("inet")
        self.ip("inet", "link", "add", "br0", "type", "bridge")
        self.ip("inet", "link", "set", "br0", "up")
        # WAN links: <role>:wan <-> inet:<role>, enslaved to the bridge.
        for role, addr in (("relay", RELAY_IP), ("r1", R1_WAN), ("r2", R2_WAN)):
            self.ip(role, "link", "add", "wan", "type", "veth", "peer", "name", role, "netns", inet)
            self.ip("inet", "link", "set", role, "master", "br0")
            self.ip("inet", "link", "set", role, "up")
            self.ip(role, "addr", "add", f"{addr}/24", "dev", "wan")
            self.ip(role, "link", "set", "wan", "up")
        # LAN links: r<n>:lan <-> h<n>:lan.
        for n, net in ((1, LAN1), (2, LAN2)):
            r, h = f"r{n}", f"h{n}"
            self.ip(
                r, "link", "add", "lan", "type", "veth", "peer", "name", "lan", "netns", self.ns(h)
            )
            self.ip(r, "addr", "add", f"{net}.1/24", "dev", "lan")
            self.ip(h, "addr", "add", f"{net}.10/24", "dev", "lan")
            self.ip(r, "link", "set", "lan", "up")
            self.ip(h, "link", "set", "lan", "up")
            self.ip(h, "route", "add", "default", "via", f"{net}.1")
            self.exec(r, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            self.nft(r, router_ruleset(symmetric=self.symmetric))

    # --- running things -----------------------------------------------------------------

    def ip(self, role: str, *args: str) -> str:
        return _run(["ip", "-n", self.ns(role), *args])

    def nft(self, role: str, ruleset: str) -> None:
        _run(["ip", "netns", "exec", self.ns(role), "nft", "-f", "-"], stdin=ruleset)

    def exec(
        self, role: str, argv: Sequence[str], *, timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``role``'s namespace and wait for it."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns(role), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"[{role}] {' '.join(argv)} failed ({proc.returncode}): "
                f"{proc.stderr.strip()} {proc.stdout.strip()}"
            )
        return proc

    def popen(self, role: str, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``role``'s namespace; teardown kills it if still running."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(role), *argv], **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc  # type: ignore[no-any-return]

    # --- teardown -----------------------------------------------------------------------

    def _pids_in(self, ns: str) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def teardown(self) -> None:
        """Stop the lab's processes and delete its namespaces. Never raises."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.terminate()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                proc.wait(timeout=3)
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
                    proc.wait(timeout=3)
        for proc in self.procs:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        # Anything else still inside our namespaces was started inside them by us.
        for ns in self.built:
            for pid in self._pids_in(ns):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        for ns in reversed(self.built):
            for _ in range(5):
                res = subprocess.run(
                    ["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False
                )
                if res.returncode == 0:
                    break
                time.sleep(0.1)
        self.built.clear()
        self.procs.clear()


@contextlib.contextmanager
def nat_lab(*, symmetric: bool = False) -> Iterator[NatLab]:
    """Build a lab, yield it, and always tear it down (also when building fails)."""
    lab = NatLab(symmetric=symmetric)
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m tests.netlab.lab [--symmetric] [--keep SECONDS]``: build, print, tear down."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symmetric", action="store_true", help="masquerade fully-random")
    ap.add_argument("--keep", type=float, default=0.0, help="seconds to keep the lab up")
    args = ap.parse_args(argv)
    with nat_lab(symmetric=args.symmetric) as lab:
        for role in ROLES:
            print(role, lab.ns(role))
        time.sleep(args.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
