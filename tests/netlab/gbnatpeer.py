"""A Glueberry node with NAT traversal, driven over stdin/stdout (run inside a lab namespace).

``python3 gbnatpeer.py '<json config>'``: ``listen`` (a multiaddr or a list), ``seed`` (hex,
32 bytes, optional), ``streams`` (encrypted stream names, default ``["chat"]``), the
:class:`glueberry.Config` NAT fields ``relays``, ``enable_hole_punching``,
``enable_relay_service``, ``enable_port_mapping``, ``enable_autonat``, and ``nat`` (keyword
arguments of :class:`glueberry.nat.manager.NatConfig` for ``nat_config``; ``relay_limits``
is a dict of :class:`~glueberry.proto.relay.RelayLimits`). The node runs the ready-made
handshake with every peer that connects (``glueberry.handshake.auto``), consumes every
message it receives and records connection events, connection changes and NAT events.

It prints ``{"ready": true, "peer_id": ..., "addrs": [...]}`` and answers one JSON command
per line (``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``), the protocol of
:mod:`tests.netlab.natpeer` (so :class:`tests.netlab.labpeers.LabPeer` drives it):

=============================================  ===========================================
``{"cmd": "info"}``                            peer ID, addresses, observed / relayed ones
``{"cmd": "wait_relayed", "timeout": s}``      ``info`` once a relayed address is advertised
``{"cmd": "wait_observed", "timeout": s}``     ``info`` once an observed address is confirmed
``{"cmd": "connect", "peer": P, "addr": A}``   add P (address A) to the book, connect, wait
                                               until the handshake made it Established
``{"cmd": "send", "peer": P, "count": n,       send n messages ``tag:seq:`` padded to
"size": b, "tag": t, "interval": s}``          ``size`` bytes; stops at the first error
``{"cmd": "send_start", ...}`` /               the same in the background / its result
``{"cmd": "send_wait", "timeout": s}``
``{"cmd": "wait_received", "peer": P,          until n messages of ``tag`` from P arrived:
"tag": t, "count": n, "timeout": s}``          count, in order, duplicates
``{"cmd": "received", "peer": P, "tag": t}``   the same, without waiting
``{"cmd": "stats", "peer": P}``                ``PeerStats`` (connection_type, counters)
``{"cmd": "conns", "peer": P}``                live connections to P
``{"cmd": "wait_type", "peer": P, "type": T}`` until ``node.connection_type(P) == T``
``{"cmd": "events"}``                          connection events (state, error and cause)
``{"cmd": "changes"}``                         ``connection_changes()`` so far
``{"cmd": "nat_events"}``                      NAT layer events so far
``{"cmd": "wait_change", "kind": K, "n": 1}``  the n-th connection change of class K
``{"cmd": "wait_nat_event", "type": T}``       the n-th NAT event of type T
``{"cmd": "quit"}``                            stop and exit
=============================================  ===========================================

Logs go to stderr. Used by ``tests/netlab/test_lab_node.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import glueberry
from glueberry import ConnectionEvent, EventsDropped, GlueberryError, Node, PeerId
from glueberry.events import IncomingMessage
from glueberry.nat.events import NatEvent
from glueberry.nat.manager import NatConfig
from glueberry.proto.relay import RelayLimits
from tests.netlab.natpeer import _errtext, event_json, jsonable


class _Received:
    """Messages of one (peer, tag): count, order, duplicates."""

    def __init__(self) -> None:
        self.count = 0
        self.next = 0
        self.out_of_order = 0
        self.duplicates = 0
        self.streams: set[str] = set()

    def add(self, seq: int, stream: str) -> None:
        self.count += 1
        self.streams.add(stream)
        if seq < self.next:
            self.duplicates += 1
        elif seq > self.next:
            self.out_of_order += 1
            self.next = seq + 1
        else:
            self.next += 1

    def json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "in_order": self.out_of_order == 0 and self.duplicates == 0,
            "out_of_order": self.out_of_order,
            "duplicates": self.duplicates,
            "next": self.next,
        }


def _error_json(exc: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(exc).__name__, "text": str(exc)}
    for attr in ("limit", "remote"):
        if hasattr(exc, attr):
            out[attr] = getattr(exc, attr)
    if exc.__cause__ is not None:
        out["cause"] = _error_json(exc.__cause__)
    return out


class GbPeer:
    def __init__(self, node: Node, streams: list[str]) -> None:
        self.node = node
        self.streams = streams
        self.received: dict[tuple[str, str], _Received] = {}
        self.events: list[dict[str, Any]] = []
        self.changes: list[dict[str, Any]] = []
        self.nat_events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.t0 = time.monotonic()
        self.sender: asyncio.Task[dict[str, Any]] | None = None

    def _t(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def _note(self) -> None:
        self.changed.set()

    # --- background collectors ---

    async def collect_messages(self) -> None:
        msg: IncomingMessage
        async for msg in self.node.messages():
            tag, seq, _ = msg.data.split(b":", 2)
            key = (str(msg.peer_id), tag.decode())
            rec = self.received.get(key)
            if rec is None:
                rec = self.received[key] = _Received()
            rec.add(int(seq), msg.stream_name)
            self._note()

    async def collect_events(self) -> None:
        async for ev in self.node.subscribe_events():
            if isinstance(ev, ConnectionEvent):
                item: dict[str, Any] = {
                    "peer": str(ev.peer_id),
                    "state": ev.state.label,
                    "t": self._t(),
                }
                if ev.error is not None:
                    item["error"] = _error_json(ev.error)
                self.events.append(item)
                self._note()

    async def collect_changes(self) -> None:
        async for ev in self.node.connection_changes():
            if not isinstance(ev, EventsDropped):
                item = jsonable(ev)
                item["kind"] = type(ev).__name__
                item["t"] = self._t()
                self.changes.append(item)
                self._note()

    async def collect_nat(self) -> None:
        nat = self.node.nat
        if nat is None:
            return
        async for ev in nat.subscribe():
            if isinstance(ev, NatEvent):
                item = event_json(ev)
                item["t"] = self._t()
                self.nat_events.append(item)
                self._note()

    # --- helpers ---

    def info(self) -> dict[str, Any]:
        nat = self.node.nat
        return {
            "peer_id": str(self.node.peer_id),
            "addrs": [str(a) for a in self.node.addrs],
            "observed": [str(a) for a in nat.observed_addrs] if nat is not None else [],
            "relayed": [str(a) for a in nat.relay_addrs] if nat is not None else [],
        }

    async def until(self, cond: Callable[[], Any], timeout: float) -> Any:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while True:
                value = cond()
                if value:
                    return value
                self.changed.clear()
                try:
                    async with asyncio.timeout(0.05):
                        await self.changed.wait()
                except TimeoutError:
                    pass

    async def send(self, req: dict[str, Any]) -> dict[str, Any]:
        peer = PeerId.from_string(req["peer"])
        stream = req.get("stream", self.streams[0])
        tag = req.get("tag", "m").encode()
        size = int(req.get("size", 64))
        interval = float(req.get("interval", 0))
        count = int(req["count"])
        sent = 0
        t = time.monotonic()
        try:
            for seq in range(count):
                head = b"%s:%d:" % (tag, seq)
                await self.node.send(peer, stream, head + b"." * max(0, size - len(head)))
                sent += 1
                if interval:
                    await asyncio.sleep(interval)
        except GlueberryError as exc:
            return {"sent": sent, "error": _error_json(exc), "seconds": time.monotonic() - t}
        return {"sent": sent, "error": None, "seconds": round(time.monotonic() - t, 3)}

    def conns(self, peer: PeerId) -> list[dict[str, Any]]:
        return [
            {
                "transport": c.transport_name,
                "direction": c.direction,
                "remote": list(c.remote_address),
            }
            for c in self.node.host.connections(peer)
        ]

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req["cmd"]
        timeout = float(req.get("timeout", 30))
        node = self.node
        if cmd == "info":
            return self.info()
        if cmd == "wait_relayed":
            await self.until(lambda: self.info()["relayed"], timeout)
            return self.info()
        if cmd == "wait_observed":
            await self.until(lambda: self.info()["observed"], timeout)
            return self.info()
        if cmd == "events":
            return {"events": self.events}
        if cmd == "changes":
            return {"changes": self.changes}
        if cmd == "nat_events":
            return {"events": self.nat_events}
        if cmd == "wait_change":
            kind, n = req["kind"], int(req.get("n", 1))
            found = await self.until(
                lambda: [c for c in self.changes if c["kind"] == kind][n - 1 : n], timeout
            )
            return {"change": found[0]}
        if cmd == "wait_nat_event":
            kind, n = req["type"], int(req.get("n", 1))
            found = await self.until(
                lambda: [e for e in self.nat_events if e["type"] == kind][n - 1 : n], timeout
            )
            return {"event": found[0]}
        if cmd == "send_start":
            self.sender = asyncio.ensure_future(self.send(req))
            return {}
        if cmd == "send_wait":
            assert self.sender is not None
            async with asyncio.timeout(timeout):
                return await self.sender
        peer = PeerId.from_string(req["peer"])
        if cmd == "connect":
            t = time.monotonic()
            node.add_peer(peer, [req["addr"]])
            async with asyncio.timeout(timeout):
                await node.connect(peer)
                await self.until(
                    lambda: node.connection_state(peer) is glueberry.ConnectionState.ESTABLISHED,
                    timeout,
                )
            return {
                "seconds": round(time.monotonic() - t, 3),
                "connection_type": node.connection_type(peer),
                "conns": self.conns(peer),
            }
        if cmd == "send":
            return await self.send(req)
        if cmd in ("received", "wait_received"):
            key = (str(peer), req.get("tag", "m"))
            if cmd == "wait_received":
                want = int(req["count"])
                await self.until(
                    lambda: key in self.received and self.received[key].count >= want, timeout
                )
            rec = self.received.get(key)
            return rec.json() if rec is not None else _Received().json()
        if cmd == "stats":
            stats = node.peer_statistics(peer)
            out = jsonable(stats) if stats is not None else None
            if isinstance(out, dict):
                out.pop("stream_stats", None)
            return {
                "stats": out,
                "connection_type": node.connection_type(peer),
                "input_errors": node.input_errors,
            }
        if cmd == "conns":
            return {"conns": self.conns(peer)}
        if cmd == "wait_type":
            await self.until(lambda: node.connection_type(peer) == req["type"], timeout)
            return {"conns": self.conns(peer)}
        raise ValueError(f"unknown command {cmd!r}")


async def main() -> int:
    cfg = json.loads(sys.argv[1])
    logging.basicConfig(
        level=getattr(logging, cfg.get("log", "INFO")),
        stream=sys.stderr,
        format=f"%(relativeCreated)7.0f {cfg.get('name', 'peer')} %(name)s %(message)s",
    )
    seed = cfg.get("seed")
    key = glueberry.PrivateKey.from_seed(bytes.fromhex(seed)) if seed else None
    nat_kw = dict(cfg.get("nat", {}))
    if "relay_limits" in nat_kw:
        nat_kw["relay_limits"] = RelayLimits(**nat_kw["relay_limits"])
    listen = cfg["listen"]
    streams = list(cfg.get("streams", ["chat"]))
    config = glueberry.Config(
        key if key is not None else glueberry.generate_identity(),
        None,
        [listen] if isinstance(listen, str) else list(listen),
        relays=cfg.get("relays", []),
        enable_hole_punching=cfg.get("enable_hole_punching"),
        enable_relay_service=cfg.get("enable_relay_service", False),
        enable_port_mapping=cfg.get("enable_port_mapping", False),
        enable_autonat=cfg.get("enable_autonat", False),
        nat_config=NatConfig(**nat_kw) if nat_kw else None,
        handshake_timeout=float(cfg.get("handshake_timeout", 30)),
    )
    node = Node(config, auto_connect=False)
    await node.start()
    peer = GbPeer(node, streams)
    loop = asyncio.get_running_loop()
    collectors = [
        loop.create_task(peer.collect_messages()),
        loop.create_task(peer.collect_events()),
        loop.create_task(peer.collect_changes()),
        loop.create_task(peer.collect_nat()),
    ]
    print(json.dumps({"ready": True, **peer.info()}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        async with glueberry.handshake.auto(node, streams):
            while line := await reader.readline():
                req = json.loads(line)
                if req.get("cmd") == "quit":
                    print(json.dumps({"ok": True}), flush=True)
                    break
                try:
                    out = {"ok": True, **await peer.handle(req)}
                except (GlueberryError, OSError, TimeoutError, ValueError) as exc:
                    out = {"ok": False, "error": _errtext(exc)}
                print(json.dumps(out), flush=True)
    finally:
        if peer.sender is not None:
            peer.sender.cancel()
        await node.stop()
        for task in collectors:
            task.cancel()
        await asyncio.gather(
            *collectors, *([peer.sender] if peer.sender else []), return_exceptions=True
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(asyncio.run(main()))
