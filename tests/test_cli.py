"""The ``glueberry`` command line: id, listen, ping, demo, and its errors and exit codes."""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from glueberry import cli
from glueberry.wire.identity import PrivateKey, decode_identity_file

ROOT = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.run(list(argv), out=out)
    return code, out.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_id_creates_then_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "sub" / "id.key"
    code, out = _run("id", "--key", str(key))
    assert code == 0
    assert "created a new identity" in capsys.readouterr().err
    peer = out.strip()
    assert peer.startswith("12D3KooW")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert str(decode_identity_file(key.read_bytes()).peer_id) == peer
    # libp2p PrivateKey protobuf: 08 01 12 40 || seed || public
    assert key.read_bytes()[:4] == bytes.fromhex("08011240")
    code, out2 = _run("id", "--key", str(key))
    assert code == 0 and out2.strip() == peer
    assert "created" not in capsys.readouterr().err


def test_id_reads_a_go_key_file(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    path = tmp_path / "go.key"
    path.write_bytes(key.to_protobuf())
    assert _run("id", "--key", str(path)) == (0, f"{key.peer_id}\n")


def test_id_default_path_uses_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    code, out = _run("id")
    assert code == 0
    assert out.strip().startswith("12D3KooW")
    assert (tmp_path / "glueberry" / "identity.key").exists()


def test_id_rejects_a_corrupt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"not a key at all")
    code, _ = _run("id", "--key", str(bad))
    assert code == cli.EXIT_USAGE
    assert "not an identity key file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("addr", "message"),
    [
        ("127.0.0.1:4001", "not a valid multiaddr"),
        ("/ip4/127.0.0.1/tcp/4001", "does not name a peer"),
        ("/ip4/999.0.0.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN", "valid"),
    ],
)
def test_ping_bad_address(addr: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _run("ping", addr)
    assert code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_ping_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    peer = PrivateKey.generate().peer_id
    code, _ = _run("ping", f"/ip4/127.0.0.1/tcp/{_free_port()}/p2p/{peer}", "-c", "1")
    assert code == cli.EXIT_UNREACHABLE
    assert "cannot reach" in capsys.readouterr().err


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[str]:
    """A ``glueberry listen`` subprocess; yields its printed /p2p/ address."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "glueberry", "listen", "--key", str(tmp_path / "l.key")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert "/p2p/12D3KooW" in line, proc.stderr.read() if proc.stderr else ""
        yield line
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def test_listen_and_ping(listener: str, tmp_path: Path) -> None:
    code, out = _run("ping", listener, "-c", "3", "-i", "0.01")
    assert code == 0, out
    assert out.count("pong from") == 3
    assert "3 pings sent, 3 pongs received, 0% loss" in out
    assert "rtt min/avg/max/mdev" in out
    # The listener's identity came from its key file.
    peer = listener.rsplit("/", 1)[1]
    assert _run("id", "--key", str(tmp_path / "l.key"))[1].strip() == peer


def test_ping_wrong_peer_id(listener: str, capsys: pytest.CaptureFixture[str]) -> None:
    other = PrivateKey.generate().peer_id
    addr = listener.rsplit("/p2p/", 1)[0] + f"/p2p/{other}"
    code, _ = _run("ping", addr, "-c", "1")
    assert code == cli.EXIT_SECURITY
    assert "different peer" in capsys.readouterr().err


def test_demo() -> None:
    code, out = _run("demo")
    assert code == 0, out
    assert "identify, both ways" in out
    assert "glueberry-py/" in out
    assert "demo finished" in out


def test_module_entry_point_version() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "glueberry", "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert res.returncode == 0
    assert res.stdout.startswith("glueberry ")


def test_usage_error_exit_code() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.run(["frobnicate"])
    assert exc.value.code == 2
