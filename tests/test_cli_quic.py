"""``glueberry listen`` / ``glueberry ping`` with QUIC: the default listens on loopback TCP and
QUIC, ``--listen`` repeats, a ``/quic-v1`` address is pinged over QUIC."""

from __future__ import annotations

import functools
import io
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from glueberry import cli
from glueberry.wire.identity import PrivateKey
from glueberry.wire.multiaddr import Multiaddr

ROOT = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.run(list(argv), out=out)
    return code, out.getvalue()


class Listener:
    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "glueberry", "listen", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.addrs: list[str] = []

    def read_addrs(self, n: int) -> list[str]:
        assert self.proc.stdout is not None
        for _ in range(n):
            line = self.proc.stdout.readline().strip()
            assert "/p2p/12D3KooW" in line, self.proc.stderr.read() if self.proc.stderr else ""
            self.addrs.append(line)
        return self.addrs

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def listener() -> Iterator[Callable[..., Listener]]:
    made: list[Listener] = []

    def start(*args: str) -> Listener:
        lis = Listener(*args)
        made.append(lis)
        return lis

    try:
        yield start
    finally:
        for lis in made:
            lis.stop()


def test_default_listen_addrs_are_loopback_tcp_and_quic(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.default_listen_addrs() == [cli.DEFAULT_LISTEN, cli.DEFAULT_LISTEN_QUIC]
    for text in cli.default_listen_addrs():
        assert Multiaddr(text).is_loopback
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["listen", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "/ip4/127.0.0.1/udp/0/quic-v1 (loopback only)" in help_text


def test_listen_default_serves_tcp_and_quic_and_ping_over_quic(
    listener: Callable[..., Listener],
) -> None:
    lis = listener()
    tcp, quic = lis.read_addrs(2)
    assert Multiaddr(tcp).transport_kind() == "tcp"
    assert Multiaddr(quic).transport_kind() == "quic-v1"
    assert Multiaddr(tcp).peer_id == Multiaddr(quic).peer_id
    code, out = _run("ping", quic, "-c", "3", "-i", "0.01")
    assert code == cli.EXIT_OK, out
    assert "over QUIC (/tls/1.0.0)" in out
    assert "3 pings sent, 3 pongs received, 0% loss" in out
    code, out = _run("ping", tcp, "-c", "1")
    assert code == cli.EXIT_OK, out
    assert "over TCP + /noise + /yamux/1.0.0" in out


def test_listen_on_quic_only(
    listener: Callable[..., Listener], capsys: pytest.CaptureFixture[str]
) -> None:
    lis = listener("--listen", "/ip4/127.0.0.1/udp/0/quic-v1")
    (quic,) = lis.read_addrs(1)
    assert Multiaddr(quic).transport_kind() == "quic-v1"
    code, out = _run("ping", quic, "-c", "1")
    assert code == cli.EXIT_OK, out
    # the wrong peer at a QUIC address: refused in the TLS handshake
    other = PrivateKey.generate().peer_id
    code, _ = _run("ping", quic.rsplit("/p2p/", 1)[0] + f"/p2p/{other}", "-c", "1")
    assert code == cli.EXIT_SECURITY
    assert "different peer" in capsys.readouterr().err


def test_listen_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _run("listen", "--listen", "/ip4/127.0.0.1/udp/0")  # UDP without QUIC
    assert code == cli.EXIT_USAGE
    assert "no transport can listen on /ip4/127.0.0.1/udp/0" in capsys.readouterr().err
    code, _ = _run("listen", "--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/nope")
    assert code == cli.EXIT_USAGE
    assert "not a valid listen multiaddr: '/nope'" in capsys.readouterr().err


def test_ping_unreachable_quic(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from glueberry.transport import quic

    # A shorter QUIC handshake deadline than the default 5 s keeps the test fast.
    monkeypatch.setattr(
        quic, "QuicConfig", functools.partial(quic.QuicConfig, handshake_timeout=0.3)
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # never answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        peer = PrivateKey.generate().peer_id
        code, _ = _run("ping", f"/ip4/127.0.0.1/udp/{port}/quic-v1/p2p/{peer}", "-c", "1")
    assert code == cli.EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert "no answer" in err or "cannot reach" in err
