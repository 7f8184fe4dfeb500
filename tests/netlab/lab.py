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
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Final

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


#: Lets in what the router's own port mappings (DNAT by miniupnpd) forward to the LAN.
FORWARD_DNAT: Final = "ct status dnat accept"
MINIUPNPD_HTTP_PORT: Final = 5555


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


#: Config of miniupnpd on a lab router: nftables chains we create, our LAN only.
MINIUPNPD_CONF: Final = """ext_ifname=wan
listening_ip=lan
http_port={http_port}
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=no
notify_interval=60
clean_ruleset_interval=600
uuid=3a0c3f2e-9d4b-4c8e-8f00-{uuid_tail}
lease_file={lease_file}
upnp_table_name=gbupnp
upnp_nat_table_name=gbupnp
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 {lan}.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""

#: The chains miniupnpd fills in (its nftables backend expects them to exist).
MINIUPNPD_RULESET: Final = """
table inet gbupnp {
    chain forward {
        type filter hook forward priority filter - 5; policy accept;
        jump miniupnpd
    }
    chain miniupnpd {
    }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority srcnat - 5; policy accept;
        jump postrouting_miniupnpd
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
}
"""


@dataclass
class NatLab:
    """A built lab. Use :func:`nat_lab` (a context manager) to get one.

    Args:
        symmetric: ``masquerade fully-random`` on both routers.
        wan_prefix: first three octets of the "internet" /24. The default is private; a
            gateway daemon such as miniupnpd refuses to map ports while its WAN address is
            private or reserved, so tests of real port mappings pass a non-reserved prefix.
            The segment has no link to the host or anything else outside the lab's own
            namespaces, so no packet can leave it whatever the addresses.
    """

    symmetric: bool = False
    wan_prefix: str = INET_NET
    prefix: str = field(default_factory=lambda: "gb" + secrets.token_hex(3))
    built: list[str] = field(default_factory=list)
    """Namespaces created so far (teardown deletes exactly these)."""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tempdirs: list[str] = field(default_factory=list)
    files: list[IO[bytes]] = field(default_factory=list)

    @property
    def relay_ip(self) -> str:
        return f"{self.wan_prefix}.10"

    @property
    def r1_wan(self) -> str:
        return f"{self.wan_prefix}.1"

    @property
    def r2_wan(self) -> str:
        return f"{self.wan_prefix}.2"

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
        for role, addr in (("relay", self.relay_ip), ("r1", self.r1_wan), ("r2", self.r2_wan)):
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
            self.nft(r, router_ruleset(symmetric=self.symmetric, extra_forward=FORWARD_DNAT))

    def start_miniupnpd(self, role: str = "r1") -> subprocess.Popen[bytes]:
        """Run miniupnpd (NAT-PMP + UPnP IGD) on a router, serving its LAN only.

        Its config, lease and pid files go to a private temporary directory. Returns once
        the daemon listens (or raises :class:`LabError` with its log).
        """
        if shutil.which("miniupnpd") is None:
            raise LabError("miniupnpd not found (apt-get install -y miniupnpd-nftables)")
        if role not in ("r1", "r2"):
            raise ValueError("miniupnpd runs on a router")
        lan = LAN1 if role == "r1" else LAN2
        workdir = tempfile.mkdtemp(prefix=f"{self.prefix}-{role}-upnp-")
        self.tempdirs.append(workdir)
        conf = os.path.join(workdir, "miniupnpd.conf")
        with open(conf, "w", encoding="ascii") as fh:
            fh.write(
                MINIUPNPD_CONF.format(
                    http_port=MINIUPNPD_HTTP_PORT,
                    uuid_tail=secrets.token_hex(6),
                    lease_file=os.path.join(workdir, "leases"),
                    lan=lan,
                )
            )
        self.nft(role, MINIUPNPD_RULESET)
        log = open(os.path.join(workdir, "log"), "wb")  # noqa: SIM115 - closed in teardown
        self.files.append(log)
        proc = self.popen(
            role,
            ["miniupnpd", "-d", "-f", conf, "-P", os.path.join(workdir, "pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        logpath = os.path.join(workdir, "log")
        while time.monotonic() < deadline:
            with open(logpath, "rb") as fh:
                text = fh.read().decode(errors="replace")
            if "Listening for NAT-PMP" in text and "HTTP listening" in text:
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise LabError(f"miniupnpd did not start: {self.miniupnpd_log(role)}")

    def miniupnpd_log(self, role: str = "r1") -> str:
        for d in self.tempdirs:
            if os.path.basename(d).startswith(f"{self.prefix}-{role}-upnp-"):
                with contextlib.suppress(OSError), open(os.path.join(d, "log"), "rb") as fh:
                    return fh.read().decode(errors="replace")
        return ""

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
        for fh in self.files:
            fh.close()
        self.files.clear()
        for d in self.tempdirs:
            shutil.rmtree(d, ignore_errors=True)
        self.tempdirs.clear()


@contextlib.contextmanager
def nat_lab(*, symmetric: bool = False, wan_prefix: str = INET_NET) -> Iterator[NatLab]:
    """Build a lab, yield it, and always tear it down (also when building fails)."""
    lab = NatLab(symmetric=symmetric, wan_prefix=wan_prefix)
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
