"""A self-contained tour of the Glueberry node: three nodes on loopback, nothing to configure.

``glueberry demo`` runs it (after the libp2p part), or::

    python3 -c "import asyncio, glueberry.demo; asyncio.run(glueberry.demo.run_demo())"

What it shows, with timings: alice connects to bob and to carol and runs the ready-made
handshake (``glueberry.handshake``: Hello / PubKey / Complete, the key checked against the
peer ID); bob and carol handshake automatically with whoever connects. Then encrypted
messages go both ways on named streams, a 1 MiB message, a burst of 1 KiB messages, and the
connection events alice saw. Every node uses an in-memory address book and a fresh identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import TextIO

import glueberry
from glueberry import ConnectionEvent, ConnectionState, EventsDropped, Node

__all__ = ["run_demo"]

_TIMEOUT = 20.0
_BURST = 5000


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.1f} ms"


async def run_demo(out: TextIO | None = None) -> bool:
    """Run the demo, printing to ``out`` (stdout by default). Returns True if every check
    passed."""
    out = out if out is not None else sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    def row(label: str, seconds: float, note: str) -> None:
        say(f"{label:<58}{_ms(seconds)}  {note}")

    names = ("alice", "bob", "carol")
    nodes = [
        Node(
            glueberry.Config(glueberry.generate_identity(), None, ["/ip4/127.0.0.1/tcp/0"]),
            auto_connect=False,
        )
        for _ in names
    ]
    ok = True
    say(f"glueberry {glueberry.__version__} node demo: three nodes on 127.0.0.1")
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            await stack.enter_async_context(node)
        alice, bob, carol = nodes
        for name, node in zip(names, nodes, strict=True):
            say(f"  {name:<5} {node.peer_id} on {node.addrs[0]}")
        events = alice.subscribe_events()
        listeners_done = asyncio.Event()
        finished: list[glueberry.PeerId] = []

        def on_established(peer: glueberry.PeerId) -> None:
            finished.append(peer)  # called by bob's and by carol's handshake with alice
            if len(finished) == 2:
                listeners_done.set()

        for node in (bob, carol):
            await stack.enter_async_context(
                glueberry.handshake.auto(node, ["chat", "bulk"], on_established=on_established)
            )
        async with asyncio.timeout(_TIMEOUT):
            for name, node in (("bob", bob), ("carol", carol)):
                alice.add_peer(node.peer_id, node.addrs)
                t0 = time.perf_counter()
                await glueberry.handshake.establish(alice, node.peer_id, ["chat", "bulk"])
                state = alice.connection_state(node.peer_id)
                row(
                    f"handshake alice -> {name} (connect + Hello/PubKey/Complete)",
                    time.perf_counter() - t0,
                    state.label,
                )
                ok &= state is ConnectionState.ESTABLISHED
            await listeners_done.wait()  # bob and carol finished their side too

            t0 = time.perf_counter()
            await alice.send(bob.peer_id, "chat", b"hello bob, this is encrypted")
            m = await bob.messages().get()
            await bob.send(alice.peer_id, "chat", b"hi alice: " + m.data[-9:])
            reply = await alice.messages().get()
            good = m.data == b"hello bob, this is encrypted" and reply.data.endswith(b"encrypted")
            ok &= good
            row(
                "encrypted message and reply, alice <-> bob",
                time.perf_counter() - t0,
                "ok" if good else "MISMATCH",
            )

            big = bytes(range(256)) * 4096
            t0 = time.perf_counter()
            await carol.send(alice.peer_id, "bulk", big)
            got = await alice.messages().get()
            good = got.data == big and got.peer_id == carol.peer_id
            ok &= good
            row(
                "1 MiB message, carol -> alice",
                time.perf_counter() - t0,
                "ok" if good else "MISMATCH",
            )

            payload = b"x" * 1024
            t0 = time.perf_counter()

            async def receive() -> int:
                n = 0
                q = bob.messages()
                while n < _BURST:
                    msg = await q.get()
                    n += msg.data == payload
                return n

            receiver = asyncio.ensure_future(receive())
            for _ in range(_BURST):
                await alice.send(bob.peer_id, "chat", payload)
            received = await receiver
            dt = time.perf_counter() - t0
            good = received == _BURST
            ok &= good
            row(
                f"{_BURST} x 1 KiB, alice -> bob (one process)",
                dt,
                f"{_BURST / dt:,.0f} msgs/s  {'ok' if good else 'LOST MESSAGES'}",
            )

        seen: list[str] = []
        while len(events):
            ev = events.get_nowait()
            if isinstance(ev, ConnectionEvent):
                who = "bob" if ev.peer_id == bob.peer_id else "carol"
                seen.append(f"{who}:{ev.state.label}")
            elif isinstance(ev, EventsDropped):  # pragma: no cover - capacity is ample
                seen.append(f"({ev.count} dropped)")
        say("events at alice: " + ", ".join(seen))
        stats = alice.peer_statistics(bob.peer_id)
        if stats is not None:
            say(
                f"alice -> bob: {stats.messages_sent} messages sent,"
                f" {stats.messages_received} received, {stats.bytes_sent:,} bytes out"
            )
        say(f"health: {'healthy' if alice.health().healthy else 'NOT healthy'}")
    say("node demo finished" if ok else "node demo FAILED")
    return ok


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0 if asyncio.run(run_demo()) else 1)
