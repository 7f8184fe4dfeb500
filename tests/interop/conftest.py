"""Process fixtures for the interop suites: start the reference peers, always stop them.

The peers are built by ``interop/build.sh`` (``scripts/bootstrap.sh`` runs it); their command
lines and protocols are specified in ``docs/interop.md``. A missing peer is a test *failure*,
never a skip: CI must not pass without running interop.

- :func:`peer_binary` gives the command prefix of a peer (``"go"``, ``"gbpeer"``, ``"js"``,
  ``"rust"``).
- The ``peer_listener`` fixture starts ``<peer> listen ...``, waits for its ``READY <multiaddr>``
  line and keeps reading its stdout in a thread (JSON event lines with ``--events``), so the
  pipe never fills.
- The ``peer_dialer`` fixture runs ``<peer> dial <multiaddr> ...`` and parses its JSON line;
  ``run`` blocks, ``arun`` awaits in a worker thread so a Python listener on the test's event
  loop keeps serving meanwhile.

Every process is stopped by its own pid in a finalizer: stdin closed (the peers exit on
stdin EOF), then SIGTERM, then SIGKILL. Nothing else is ever signalled.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
GO_BIN = ROOT / "interop" / "go" / "bin"
JS_DIR = ROOT / "interop" / "js"
RUST_PEER = ROOT / "interop" / "rust" / "target" / "release" / "peer"

#: Seconds a listener may take to print READY (node's first start on a busy machine is slow).
READY_TIMEOUT = 60.0
#: Default seconds a dialer run may take.
DIAL_TIMEOUT = 300.0

_ALIASES = {
    "go": "go",
    "peer": "go",
    "go-peer": "go",
    "gbpeer": "gbpeer",
    "js": "js",
    "js-peer": "js",
    "rust": "rust",
    "rust-peer": "rust",
}


def peer_binary(name: str) -> list[str]:
    """Command prefix for a reference peer; fails the test if it has not been built.

    ``go`` -> ``interop/go/bin/peer``; ``gbpeer`` -> ``interop/go/bin/gbpeer``;
    ``js`` -> ``node interop/js/peer.mjs`` (needs ``interop/js/node_modules``);
    ``rust`` -> ``interop/rust/target/release/peer``.
    """
    kind = _ALIASES.get(name)
    if kind is None:
        pytest.fail(f"unknown interop peer {name!r} (known: {sorted(_ALIASES)})")
    if kind in ("go", "gbpeer"):
        path = GO_BIN / ("peer" if kind == "go" else "gbpeer")
        if not os.access(path, os.X_OK):
            pytest.fail(f"interop peer {path} is missing: run interop/build.sh (needs Go >= 1.26)")
        return [str(path)]
    if kind == "rust":
        if not os.access(RUST_PEER, os.X_OK):
            pytest.fail(f"interop peer {RUST_PEER} is missing: run interop/build.sh (needs cargo)")
        return [str(RUST_PEER)]
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the js interop peer needs Node.js >= 20")
    if not (JS_DIR / "node_modules" / "libp2p").is_dir():
        pytest.fail(f"js interop peer not installed in {JS_DIR}: run interop/build.sh")
    return [node, str(JS_DIR / "peer.mjs")]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop one process we started: close stdin, then SIGTERM, then SIGKILL (by its pid)."""
    if proc.poll() is None and proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


def _tail(f: IO[bytes], n: int = 3000) -> str:
    f.flush()
    f.seek(0)
    return f.read().decode(errors="replace")[-n:]


@dataclass
class Listener:
    """A running ``listen`` process: its address and the event lines it printed."""

    proc: subprocess.Popen[bytes]
    addr: str  # full multiaddr, ending in /p2p/<peer id>
    stderr: IO[bytes]
    events: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def peer_id(self) -> str:
        return self.addr.rsplit("/p2p/", 1)[1]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                if line.startswith("{"):
                    try:
                        self.events.append(json.loads(line))
                    except ValueError:
                        pass
                self._cond.notify_all()

    def find_event(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        with self._cond:
            return next((e for e in self.events if pred(e)), None)

    def wait_event(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 15.0, what: str = "event"
    ) -> dict[str, Any]:
        """Block until an event line satisfies ``pred``; fail the test on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hit = next((e for e in self.events if pred(e)), None)
                if hit is not None:
                    return hit
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    break
                self._cond.wait(left)
        pytest.fail(
            f"listener never reported {what}; last events {self.events[-5:]}\n{self.stderr_tail()}"
        )

    async def await_event(
        self, pred: Callable[[dict[str, Any]], bool], seconds: float = 15.0, what: str = "event"
    ) -> dict[str, Any]:
        """Like :meth:`wait_event` without blocking the event loop."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.proc.poll() is None:
            hit = self.find_event(pred)
            if hit is not None:
                return hit
            await asyncio.sleep(0.02)
        hit = self.find_event(pred)
        if hit is not None:
            return hit
        pytest.fail(
            f"listener never reported {what}; last events {self.events[-5:]}\n{self.stderr_tail()}"
        )

    def stderr_tail(self) -> str:
        return "--- listener stderr:\n" + _tail(self.stderr)


@dataclass
class DialResult:
    """One ``dial`` run: exit code, parsed JSON line (``{}`` if none), stderr."""

    returncode: int
    result: dict[str, Any]
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.result.get("ok") is True

    def test(self, name: str) -> dict[str, Any]:
        """The result object of one test, e.g. ``run.test("echo")["ok"]``."""
        tests: dict[str, Any] = self.result.get("tests", {})
        if name not in tests:
            pytest.fail(f"dialer ran no test {name!r}: {self.describe()}")
        return dict(tests[name])

    def describe(self) -> str:
        failed = {
            k: v.get("error") for k, v in self.result.get("tests", {}).items() if not v.get("ok")
        }
        return f"exit {self.returncode}, failed {failed}\n--- dialer stderr:\n{self.stderr[-3000:]}"


class _Procs:
    """The processes a fixture started; stopped by pid in its finalizer."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.files: list[IO[bytes]] = []

    def spawn(self, argv: list[str], stdin: int) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
        err = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close(), after the process)
        self.files.append(err)
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
        self.procs.append(proc)
        return proc, err

    def close(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)
        for f in self.files:
            f.close()


class ListenerFactory:
    """``peer_listener(name, *args)`` starts ``<peer> listen *args`` and waits for READY."""

    def __init__(self, procs: _Procs) -> None:
        self._procs = procs

    def __call__(self, name: str, *args: str, ready_timeout: float = READY_TIMEOUT) -> Listener:
        argv = [*peer_binary(name), "listen", *args]
        # stdin is a pipe we hold: if this test process dies, the peer sees EOF and exits
        proc, err = self._procs.spawn(argv, subprocess.PIPE)
        assert proc.stdout is not None
        ready: list[str] = []
        done = threading.Event()

        def first_line() -> None:
            assert proc.stdout is not None
            ready.append(proc.stdout.readline().decode(errors="replace"))
            done.set()

        threading.Thread(target=first_line, daemon=True).start()
        if not done.wait(ready_timeout) or not ready[0].startswith("READY /"):
            _stop(proc)
            what = repr(ready[0]) if ready else f"nothing in {ready_timeout:.0f} s"
            pytest.fail(f"{' '.join(argv)}: no READY line ({what})\n--- stderr:\n{_tail(err)}")
        listener = Listener(proc=proc, addr=ready[0].split()[1], stderr=err)
        threading.Thread(target=listener._pump, daemon=True).start()
        return listener


class DialerFactory:
    """Runs ``<peer> dial ADDR *args``: :meth:`run` blocks, :meth:`arun` awaits."""

    def __init__(self, procs: _Procs) -> None:
        self._procs = procs

    def _start(self, name: str, addr: str, args: tuple[str, ...]) -> subprocess.Popen[bytes]:
        argv = [*peer_binary(name), "dial", addr, *args]
        proc, _ = self._procs.spawn(argv, subprocess.DEVNULL)
        return proc

    def _finish(self, proc: subprocess.Popen[bytes], timeout: float) -> DialResult:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            pytest.fail(f"dialer (pid {proc.pid}) still running after {timeout:.0f} s")
        err_file = self._procs.files[self._procs.procs.index(proc)]
        stdout = out.decode(errors="replace")
        result: dict[str, Any] = {}
        for line in reversed(stdout.splitlines()):
            if line.startswith("{"):
                try:
                    result = json.loads(line)
                    break
                except ValueError:
                    pass
        return DialResult(proc.returncode, result, stdout, _tail(err_file))

    def run(self, name: str, addr: str, *args: str, timeout: float = DIAL_TIMEOUT) -> DialResult:
        return self._finish(self._start(name, addr, args), timeout)

    async def arun(
        self, name: str, addr: str, *args: str, seconds: float = DIAL_TIMEOUT
    ) -> DialResult:
        """Like :meth:`run`, awaiting in a worker thread (the event loop keeps running)."""
        proc = self._start(name, addr, args)
        return await asyncio.to_thread(self._finish, proc, seconds)


@pytest.fixture
def peer_listener() -> Iterator[ListenerFactory]:
    """Factory: ``listener = peer_listener("go", "--security", "noise", "--events")``."""
    procs = _Procs()
    try:
        yield ListenerFactory(procs)
    finally:
        procs.close()


@pytest.fixture
def peer_dialer() -> Iterator[DialerFactory]:
    """Factory: ``res = peer_dialer.run("js", listener.addr, "all")``; ``await .arun(...)``."""
    procs = _Procs()
    try:
        yield DialerFactory(procs)
    finally:
        procs.close()
