"""A glueberry host with the NAT layer, driven over stdin/stdout (run inside a lab namespace).

``python3 natpeer.py '<json config>'`` where the config has ``listen`` (a multiaddr or a
list of them; ``/udp/…/quic-v1`` listens on QUIC), an optional ``seed`` (hex, 32 bytes: a
fixed identity), ``quic`` (default true: the host has a QUIC transport) and ``nat``
(keyword arguments of
:class:`glueberry.nat.manager.NatConfig`; ``relay_limits`` is a dict of
:class:`~glueberry.proto.relay.RelayLimits`). The peer prints one JSON line
``{"ready": true, "peer_id": ..., "addrs": [...]}`` and then answers one JSON command per
input line with one JSON line (``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``):

============================================  ============================================
``{"cmd": "info"}``                           peer ID, addresses, observed/mapped/relayed
``{"cmd": "wait_event", "type": T, "n": 1,    the n-th NAT event of type ``T`` (waits)
"timeout": s}``
``{"cmd": "events"}``                         every NAT event so far
``{"cmd": "wait_observed", "timeout": s}``    ``info`` once an observed address is confirmed
``{"cmd": "connect", "addr": A,               dial (relayed addresses work too)
"timeout": s}``
``{"cmd": "disconnect", "peer": P}``          close every connection to P
``{"cmd": "probe", "server": P}``             AutoNAT v1: can P dial our addresses back?
``{"cmd": "probe_v2", "server": P}``          AutoNAT v2 (nonce-checked dial-back)
``{"cmd": "conns", "peer": P}``               live connections to P
``{"cmd": "echo", "peer": P, "size": n}``     /echo/1.0.0 round trip of n pattern bytes
``{"cmd": "sink", "peer": P, "size": n}``     /glueberry-test/sink/1.0.0 upload of n bytes
``{"cmd": "wait_direct", "peer": P,           a direct connection and no relayed one
"timeout": s}``
``{"cmd": "stop_nat"}``                       ``NatManager.close()`` (port mappings removed)
``{"cmd": "quit"}``                           close and exit
============================================  ============================================

Logs go to stderr. Used by ``tests/netlab/test_lab_*.py`` and ``bench/holepunch_lab.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from glueberry.errors import GlueberryError
from glueberry.nat.events import NatEvent
from glueberry.nat.manager import NatConfig, NatManager, close_transports, nat_transports
from glueberry.net.host import Host, HostConfig
from glueberry.net.testprotocols import (
    ECHO_PROTOCOL,
    SINK_PROTOCOL,
    echo_pattern,
    feed_sink,
    register_test_protocols,
)
from glueberry.proto.relay import RelayLimits
from glueberry.transport.circuit import dial_target
from glueberry.wire.identity import PeerId, PrivateKey
from glueberry.wire.multiaddr import Multiaddr


def jsonable(value: Any) -> Any:
    if isinstance(value, PeerId | Multiaddr):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def event_json(ev: NatEvent) -> dict[str, Any]:
    out = jsonable(ev)
    assert isinstance(out, dict)
    out["type"] = type(ev).__name__
    return out


class Peer:
    def __init__(self, host: Host, nat: NatManager) -> None:
        self.host = host
        self.nat = nat
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.t0 = time.monotonic()

    async def collect(self) -> None:
        async for ev in self.nat.subscribe():
            if isinstance(ev, NatEvent):
                item = event_json(ev)
                item["t"] = round(time.monotonic() - self.t0, 3)
                self.events.append(item)
                self.changed.set()

    def info(self) -> dict[str, Any]:
        return {
            "peer_id": str(self.host.peer_id),
            "addrs": [str(a) for a in self.host.addrs],
            "observed": [str(a) for a in self.nat.observed_addrs],
            "mapped": [str(a) for a in self.nat.mapped_addrs],
            "relayed": [str(a) for a in self.nat.relay_addrs],
        }

    def conns(self, peer: PeerId) -> list[dict[str, Any]]:
        return [
            {
                "transport": c.transport_name,
                "direction": c.direction,
                "remote": list(c.remote_address),
                "security": c.security_protocol,
                "muxer": c.muxer_protocol,
            }
            for c in self.host.connections(peer)
        ]

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req["cmd"]
        if cmd == "info":
            return self.info()
        if cmd == "events":
            return {"events": self.events}
        if cmd == "wait_event":
            want, n = req["type"], int(req.get("n", 1))
            async with asyncio.timeout(float(req.get("timeout", 30))):
                while True:
                    found = [e for e in self.events if e["type"] == want]
                    if len(found) >= n:
                        return {"event": found[n - 1]}
                    self.changed.clear()
                    await self.changed.wait()
        if cmd == "wait_observed":
            async with asyncio.timeout(float(req.get("timeout", 30))):
                while not self.nat.observed_addrs:
                    self.changed.clear()
                    await self.changed.wait()
            return self.info()
        if cmd == "connect":
            addr = Multiaddr(req["addr"])
            peer = addr.peer_id
            t = time.monotonic()
            async with asyncio.timeout(float(req.get("timeout", 30))):
                if peer is not None:
                    with dial_target(peer):
                        conn = await self.host.connect(peer, [addr])
                else:
                    conn = await self.host.connect(None, [addr])
            return {
                "peer": str(conn.remote_peer),
                "transport": conn.transport_name,
                "seconds": round(time.monotonic() - t, 4),
            }
        peer = PeerId.from_string(req["peer"]) if "peer" in req else None
        if cmd == "conns":
            assert peer is not None
            return {"conns": self.conns(peer)}
        if cmd == "echo":
            assert peer is not None
            t = time.monotonic()
            stream = await self.host.new_stream(peer, [ECHO_PROTOCOL])
            transport = stream.connection.transport_name
            await echo_pattern(stream, int(req.get("size", 1000)))
            return {"seconds": round(time.monotonic() - t, 4), "transport": transport}
        if cmd == "sink":
            assert peer is not None
            stream = await self.host.new_stream(peer, [SINK_PROTOCOL])
            await feed_sink(stream, int(req["size"]))
            return {}
        if cmd == "wait_direct":
            assert peer is not None
            t = time.monotonic()
            async with asyncio.timeout(float(req.get("timeout", 30))):
                while True:
                    conns = self.conns(peer)
                    kinds = {c["transport"] for c in conns}
                    if conns and "circuit" not in kinds:
                        return {"conns": conns, "seconds": round(time.monotonic() - t, 3)}
                    await asyncio.sleep(0.02)
        if cmd == "probe":
            assert self.nat.autonat is not None
            server = PeerId.from_string(req["server"])
            addrs = self.nat.candidate_addrs()
            verdict = await self.nat.autonat.probe(server, addrs)
            return {"reachable": verdict, "addrs": [str(a) for a in addrs]}
        if cmd == "probe_v2":
            assert self.nat.autonat is not None
            server = PeerId.from_string(req["server"])
            addrs = self.nat.candidate_addrs()
            tested, verdict = await self.nat.autonat.probe_v2(server, addrs)
            return {"reachable": verdict, "tested": str(tested) if tested else None}
        if cmd == "disconnect":
            assert peer is not None
            for conn in self.host.connections(peer):
                await conn.close()
            return {}
        if cmd == "stop_nat":
            await self.nat.close()
            return {}
        raise ValueError(f"unknown command {cmd!r}")


def _errtext(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return " | ".join(_errtext(e) for e in exc.exceptions)
    text = f"{type(exc).__name__}: {exc}"
    if exc.__cause__ is not None:
        text += f" (cause: {_errtext(exc.__cause__)})"
    return text


async def main() -> int:
    cfg = json.loads(sys.argv[1])
    logging.basicConfig(
        level=getattr(logging, cfg.get("log", "INFO")),
        stream=sys.stderr,
        format=f"%(relativeCreated)7.0f {cfg.get('name', 'peer')} %(name)s %(message)s",
    )
    seed = cfg.get("seed")
    key = PrivateKey.from_seed(bytes.fromhex(seed)) if seed else PrivateKey.generate()
    nat_kw = dict(cfg.get("nat", {}))
    if "relay_limits" in nat_kw:
        nat_kw["relay_limits"] = RelayLimits(**nat_kw["relay_limits"])
    listen = cfg["listen"]
    transports = nat_transports(key if cfg.get("quic", True) else None)
    host = Host(
        key,
        listen_addrs=[listen] if isinstance(listen, str) else list(listen),
        config=HostConfig(transports=transports),
    )
    await host.start()
    register_test_protocols(host, bench=False)
    nat = NatManager(host, NatConfig(**nat_kw))
    peer = Peer(host, nat)
    collector = asyncio.get_running_loop().create_task(peer.collect())
    await nat.start()
    print(json.dumps({"ready": True, **peer.info()}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            req = json.loads(line)
            if req.get("cmd") == "quit":
                print(json.dumps({"ok": True}), flush=True)
                break
            try:
                out = {"ok": True, **await peer.handle(req)}
            except (GlueberryError, OSError, TimeoutError, ValueError, BaseExceptionGroup) as exc:
                out = {"ok": False, "error": _errtext(exc)}
            print(json.dumps(out), flush=True)
    finally:
        await nat.close()
        await host.close()
        close_transports(transports)
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(asyncio.run(main()))
