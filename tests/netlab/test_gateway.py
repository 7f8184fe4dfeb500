"""NAT-PMP and UPnP IGD clients against miniupnpd on a lab router (marker ``netns``).

The lab's "internet" segment uses a non-reserved prefix here because miniupnpd refuses to map
anything while its WAN address is private/reserved. The segment exists only between the lab's
own namespaces (there is no link to the host), so no packet can leave it.

Needs root, nftables and miniupnpd (Debian ``miniupnpd-nftables``); fails, never skips,
without them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netlab import lab as L

pytestmark = pytest.mark.netns

CLIENT = str(Path(__file__).resolve().parent / "gateway_client.py")
WAN_PREFIX = "11.99.0"


@pytest.fixture(scope="module")
def lab() -> Iterator[L.NatLab]:
    problems = L.missing_requirements()
    if shutil.which("miniupnpd") is None:
        problems.append("miniupnpd not found (apt-get install -y miniupnpd-nftables)")
    if problems:
        pytest.fail("gateway lab cannot run: " + "; ".join(problems), pytrace=False)
    with L.nat_lab(wan_prefix=WAN_PREFIX) as built:
        built.start_miniupnpd("r1")
        yield built


def client(lab: L.NatLab, *args: str) -> dict[str, object]:
    res = lab.exec("h1", [sys.executable, CLIENT, *args], timeout=30)
    out: dict[str, object] = json.loads(res.stdout)
    assert out.pop("ok"), (out, lab.miniupnpd_log("r1")[-2000:])
    return out


SERVE = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen()
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"hello from h1\\n"); c.close()
"""

FETCH = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(c.recv(100).decode().strip())
except OSError as exc:
    print(type(exc).__name__)
"""


def serve(lab: L.NatLab, port: int) -> subprocess.Popen[bytes]:
    proc = lab.popen("h1", [sys.executable, "-c", SERVE, str(port)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"listening"
    return proc


def fetch_from_internet(lab: L.NatLab, port: int, timeout: float = 2) -> str:
    res = lab.exec(
        "relay", [sys.executable, "-c", FETCH, lab.r1_wan, str(port), str(timeout)], check=False
    )
    return res.stdout.strip()


def test_natpmp_maps_and_unmaps_a_port(lab: L.NatLab) -> None:
    ext = client(lab, "natpmp-ext")
    assert ext == {"gateway": "192.168.1.1", "external": lab.r1_wan}
    srv = serve(lab, 40001)
    try:
        assert fetch_from_internet(lab, 40001) == "TimeoutError"  # closed before mapping
        m = client(lab, "natpmp-map", "40001")
        assert m["external_port"] == 40001 and m["renewed_port"] == 40001
        assert m["lifetime"] == 600
        assert fetch_from_internet(lab, 40001) == "hello from h1"
        client(lab, "natpmp-unmap", "40001")
        assert fetch_from_internet(lab, 40001) == "TimeoutError"
    finally:
        srv.kill()
        srv.wait()


def test_upnp_igd_maps_and_unmaps_a_port(lab: L.NatLab) -> None:
    ext = client(lab, "upnp-ext")
    assert ext["external"] == lab.r1_wan and ext["local"] == L.H1_IP
    srv = serve(lab, 40002)
    try:
        m = client(lab, "upnp-map", "45000", "40002")
        assert m["internal_client"] == L.H1_IP
        assert fetch_from_internet(lab, 45000) == "hello from h1"
        # secure_mode: a mapping to another LAN host is refused with UPnP error 718.
        res = lab.exec("h1", [sys.executable, CLIENT, "upnp-map", "45001", "1", "192.168.1.77"])
        out = json.loads(res.stdout)
        assert not out["ok"] and "718" in out["error"]
        client(lab, "upnp-unmap", "45000")
        assert fetch_from_internet(lab, 45000) == "TimeoutError"
    finally:
        srv.kill()
        srv.wait()
