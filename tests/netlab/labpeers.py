"""Drive :mod:`tests.netlab.natpeer` processes inside a :class:`~tests.netlab.lab.NatLab`.

:class:`LabPeer` starts one peer in a lab namespace and sends it JSON commands
(:meth:`LabPeer.call`); :meth:`LabPeer.ok` also asserts success. Each peer's stderr goes to a
temporary log file (:meth:`LabPeer.log_tail` for failure messages). Used by the lab tests and
``bench/holepunch_lab.py``.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from tests.netlab.lab import NatLab

NATPEER: Final = str(Path(__file__).resolve().parent / "natpeer.py")


class LabPeerError(AssertionError):
    """A lab peer failed a command or died."""


class LabPeer:
    """One glueberry NAT peer running in ``role``'s namespace of ``lab``."""

    def __init__(
        self,
        lab: NatLab,
        role: str,
        *,
        name: str,
        listen: str | list[str],
        nat: dict[str, Any] | None = None,
        seed: str | None = None,
        log: str = "INFO",
        start_timeout: float = 30.0,
        program: list[str] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        """``program`` replaces the Python peer (e.g. the go-libp2p ``natpeer`` binary); it
        gets ``{"name", "listen", **config}`` as its JSON argument instead of ``nat``."""
        self.name = name
        cfg: dict[str, Any]
        if program is None:
            cfg = {"name": name, "listen": listen, "nat": nat or {}, "log": log}
            argv = [sys.executable, NATPEER]
        else:
            cfg = {"name": name, "listen": listen, **(config or {})}
            argv = list(program)
        if seed is not None:
            cfg["seed"] = seed
        fd, self.log_path = tempfile.mkstemp(prefix=f"{lab.prefix}-{name}-", suffix=".log")
        self._log = os.fdopen(fd, "wb")
        lab.files.append(self._log)
        self.proc = lab.popen(
            role,
            [*argv, json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        ready = self._readline(start_timeout)
        if not ready.get("ready"):
            raise LabPeerError(f"{name} did not start: {ready} {self.log_tail()}")
        self.peer_id: str = ready["peer_id"]
        self.addrs: list[str] = ready["addrs"]

    def _readline(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise LabPeerError(f"{self.name}: no answer in {timeout} s. {self.log_tail()}")
        line = self.proc.stdout.readline()
        if not line:
            raise LabPeerError(f"{self.name} exited ({self.proc.poll()}). {self.log_tail()}")
        out: dict[str, Any] = json.loads(line)
        return out

    def call(self, cmd: str, *, wait: float = 60.0, **kw: Any) -> dict[str, Any]:
        """Send a command and return the peer's answer (``ok`` may be False)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **kw}) + "\n").encode())
        self.proc.stdin.flush()
        return self._readline(wait)

    def ok(self, cmd: str, *, wait: float = 60.0, **kw: Any) -> dict[str, Any]:
        """Like :meth:`call`, and the command must succeed."""
        out = self.call(cmd, wait=wait, **kw)
        if not out.get("ok"):
            raise LabPeerError(f"{self.name} {cmd} {kw}: {out}\n{self.log_tail()}")
        return out

    def wait_event(self, kind: str, *, n: int = 1, timeout: float = 30.0) -> dict[str, Any]:
        event: dict[str, Any] = self.ok(
            "wait_event", type=kind, n=n, timeout=timeout, wait=timeout + 10
        )["event"]
        return event

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        evs: list[dict[str, Any]] = self.ok("events")["events"]
        return [e for e in evs if kind is None or e["type"] == kind]

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as fh:
            data = fh.read()
        return f"\n--- {self.name} log ---\n" + data[-n:].decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit", wait=5)
            except (LabPeerError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        with_log = self._log
        if not with_log.closed:
            with_log.close()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass

    def __enter__(self) -> LabPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(cond: Any, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())
