"""The NAT lab itself: NAT behaviour that hole punching depends on (marker ``netns``).

These tests need root, iproute2 and nftables. They fail - never skip - when those are
missing, because CI runs as root with the packages installed (see docs/nat.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netlab import lab as L

pytestmark = pytest.mark.netns

HERE = Path(__file__).resolve().parent
SIMOPEN = str(HERE / "simopen.py")


@pytest.fixture(autouse=True)
def _requirements() -> None:
    problems = L.missing_requirements()
    if problems:
        pytest.fail("NAT lab cannot run: " + "; ".join(problems), pytrace=False)


def punch(lab: L.NatLab, timeout: float) -> tuple[dict[str, object], dict[str, object]]:
    start = f"{time.time() + 0.5:.3f}"
    p1 = lab.popen(
        "h1",
        [sys.executable, SIMOPEN, "40001", L.R2_WAN, "40002", str(timeout), start],
        stdout=subprocess.PIPE,
    )
    p2 = lab.popen(
        "h2",
        [sys.executable, SIMOPEN, "40002", L.R1_WAN, "40001", str(timeout), start],
        stdout=subprocess.PIPE,
    )
    out1, _ = p1.communicate(timeout=timeout + 10)
    out2, _ = p2.communicate(timeout=timeout + 10)
    return json.loads(out1), json.loads(out2)


def test_tcp_simultaneous_open_through_port_preserving_nats() -> None:
    with L.nat_lab() as lab:
        r1, r2 = punch(lab, timeout=8)
    assert r1["ok"] and r2["ok"], (r1, r2)
    # Each side saw the other's *router* address and port: the NATs preserved the ports.
    assert r1["peer"] == [L.R2_WAN, 40002] and r1["got"] == "hello from 40002"
    assert r2["peer"] == [L.R1_WAN, 40001] and r2["got"] == "hello from 40001"


def test_tcp_simultaneous_open_fails_through_symmetric_nats() -> None:
    with L.nat_lab(symmetric=True) as lab:
        r1, r2 = punch(lab, timeout=4)
    assert not r1["ok"] and not r2["ok"], (r1, r2)
    assert "timed out" in str(r1["error"])  # silently dropped: no RST, no ICMP


def test_unsolicited_inbound_is_dropped_silently_and_outbound_works() -> None:
    with L.nat_lab() as lab:
        server = lab.popen(
            "h1",
            [sys.executable, "-c", LISTEN, "5000"],
            stdout=subprocess.PIPE,
        )
        assert server.stdout is not None
        assert server.stdout.readline().strip() == b"listening"
        # From the public relay host, the router's WAN address: no answer at all.
        res = lab.exec("relay", [sys.executable, "-c", CONNECT, L.R1_WAN, "5000", "2"], check=False)
        assert res.stdout.strip() == "TimeoutError", res
        # Nor can h2 reach h1's private address (no route on "the internet").
        res = lab.exec("h2", [sys.executable, "-c", CONNECT, L.H1_IP, "5000", "2"], check=False)
        assert res.stdout.strip() in ("TimeoutError", "OSError"), res
        # Outbound from behind the NAT reaches the relay (refused: nothing listens there).
        res = lab.exec("h1", [sys.executable, "-c", CONNECT, L.RELAY_IP, "9", "2"], check=False)
        assert res.stdout.strip() == "ConnectionRefusedError", res
    # Teardown removed every namespace of the lab.
    names = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    assert lab.prefix not in names


def test_teardown_after_failed_build() -> None:
    lab = L.NatLab()
    try:
        lab.build()
        lab.ip("h1", "link", "add", "bogus", "type", "no-such-kind")
    except L.LabError:
        pass
    finally:
        lab.teardown()
    names = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    assert lab.prefix not in names


def test_parallel_labs_do_not_collide() -> None:
    with L.nat_lab() as a, L.nat_lab() as b:
        assert a.prefix != b.prefix
        assert a.exec("h1", ["true"]).returncode == 0
        assert b.exec("h1", ["true"]).returncode == 0


LISTEN = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen()
print("listening", flush=True)
s.accept()
"""

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""


def test_shell_script_selftest() -> None:
    res = subprocess.run(
        ["bash", str(HERE / "netlab.sh"), "selftest"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0 and "selftest: OK" in res.stdout, (res.stdout, res.stderr)
