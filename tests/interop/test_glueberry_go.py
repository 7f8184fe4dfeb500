"""Glueberry (Python) <-> the Glueberry-Go v1 wire (interop/go/gbpeer, on go-libp2p).

gbpeer re-implements Glueberry-Go's wire byte for byte (docs/interop.md, "gbpeer"): the
handshake of the Go integration test, one stream per (peer, name) used both ways, lazy
multistream after identify, random-nonce ChaCha20-Poly1305 frames. These tests run the
Python Node against it in both roles, with its tagged test application:

* ``Q`` query -> ``R`` reply with the same bytes, on the same stream; ``V`` verdict;
* *exchange*: the dialer queries sizes 1 … 65537 on ``messages`` and 3 × 1 MiB on ``bulk``;
  the listener, once established, queries 1 … 1 MiB on ``events`` (a stream it opens) and
  sends ``Vok`` when the replies were right;
* *echo*: raw pattern messages of 0 … 1 MiB come back verbatim on ``messages`` and ``bulk``;
* the §2.9 vectors as computed by Go against this library.

A missing gbpeer binary is a failure, not a skip (``peer_binary`` in conftest).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest

import glueberry
from glueberry import ConnectionState, IncomingMessage, Multiaddr, Node
from glueberry.handshake import encode_complete, encode_hello, encode_pubkey
from glueberry.peers.crypto import (
    StreamCipher,
    derive_stream_key,
    ed25519_private_to_x25519,
    ed25519_public_to_x25519,
    x25519_shared_secret,
)
from glueberry.proto.gb_framing import encode_frame, encode_frame_header
from tests.interop.conftest import DialerFactory, ListenerFactory, peer_binary

pytestmark = pytest.mark.interop

S = ConnectionState
STREAMS = ["messages", "events", "bulk", "bench"]
DIALER_QUERIES = [("messages", n) for n in (1, 2, 29, 1000, 4096, 65535, 65536, 65537)] + [
    ("bulk", 1048576)
] * 3
LISTENER_QUERIES = [1, 2, 1000, 65536, 1048576]
ECHO_SIZES = [0, 1, 1000, 65536, 1048576]


def pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def query(n: int) -> bytes:
    """A ``Q`` message of ``n`` bytes in total (tag included): ``Q`` then the pattern."""
    return b"Q" + pattern(n)[1:]


class TaggedApp:
    """gbpeer's tagged test application on a Python node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.replies: dict[tuple[glueberry.PeerId, str], asyncio.Queue[bytes]] = defaultdict(
            asyncio.Queue
        )
        self.verdicts: asyncio.Queue[bytes] = asyncio.Queue()
        self.answered: list[tuple[str, int]] = []

    async def serve(self) -> None:
        async for m in self.node.messages():
            await self.handle(m)

    async def handle(self, m: IncomingMessage) -> None:
        tag = m.data[:1]
        if tag == b"Q":
            await self.node.send(m.peer_id, m.stream_name, b"R" + m.data[1:])
            self.answered.append((m.stream_name, len(m.data)))
        elif tag == b"R":
            self.replies[(m.peer_id, m.stream_name)].put_nowait(m.data)
        elif tag == b"V":
            self.verdicts.put_nowait(m.data)

    async def ask(self, peer: glueberry.PeerId, stream: str, sizes: list[int]) -> None:
        """Send the queries, then check every reply, in order."""
        for n in sizes:
            await self.node.send(peer, stream, query(n))
        q = self.replies[(peer, stream)]
        for n in sizes:
            reply = await asyncio.wait_for(q.get(), 30)
            assert reply == b"R" + query(n)[1:], f"reply to a {n}-byte query on {stream}"


@contextlib.asynccontextmanager
async def python_node(**kw: object) -> AsyncIterator[Node]:
    cfg = glueberry.Config(glueberry.generate_identity(), None, ["/ip4/127.0.0.1/tcp/0"], **kw)  # type: ignore[arg-type]
    async with Node(cfg) as node:
        yield node


def _target(addr: str) -> tuple[glueberry.PeerId, Multiaddr]:
    ma = Multiaddr(addr)
    assert ma.peer_id is not None
    return ma.peer_id, ma.without_p2p()


# --- Python dials Go ---------------------------------------------------------------------------


async def test_python_dials_go_handshake_and_exchange(peer_listener: ListenerFactory) -> None:
    lis = peer_listener("gbpeer", "--events")
    peer, addr = _target(lis.addr)
    async with python_node() as node:
        app = TaggedApp(node)
        node.add_peer(peer, [addr])
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            serve = tg.create_task(app.serve())
            await glueberry.handshake.establish(node, peer, STREAMS, timeout=20)
            assert node.connection_state(peer) is S.ESTABLISHED
            assert node.is_outbound(peer)
            by_stream: dict[str, list[int]] = defaultdict(list)
            for stream, n in DIALER_QUERIES:
                by_stream[stream].append(n)
            await asyncio.gather(*(app.ask(peer, s, sizes) for s, sizes in by_stream.items()))
            verdict = await asyncio.wait_for(app.verdicts.get(), 30)
            assert verdict == b"Vok", verdict
            assert app.answered == [("events", n) for n in LISTENER_QUERIES]
            serve.cancel()
        stats = node.peer_statistics(peer)
        assert stats is not None and stats.stream_stats["bulk"].bytes_received == 3 * 1048576


async def test_python_dials_go_echo_large_on_two_streams(peer_listener: ListenerFactory) -> None:
    lis = peer_listener("gbpeer", "--echo")
    peer, addr = _target(lis.addr)
    async with python_node(max_message_size=1 << 20) as node:
        node.add_peer(peer, [addr])
        await glueberry.handshake.establish(node, peer, STREAMS, timeout=20)

        async def send_all(stream: str) -> None:
            for n in ECHO_SIZES:
                await node.send(peer, stream, pattern(n))

        async with asyncio.timeout(60):
            await asyncio.gather(send_all("messages"), send_all("bulk"))
            got: dict[str, list[bytes]] = defaultdict(list)
            for _ in range(2 * len(ECHO_SIZES)):
                m = await node.messages().get()
                got[m.stream_name].append(m.data)
        for stream in ("messages", "bulk"):
            assert [len(d) for d in got[stream]] == ECHO_SIZES
            assert got[stream] == [pattern(n) for n in ECHO_SIZES]


# --- Go dials Python -------------------------------------------------------------------------


async def test_go_dials_python_handshake_and_exchange(peer_dialer: DialerFactory) -> None:
    async with python_node() as node:
        app = TaggedApp(node)
        established: asyncio.Queue[glueberry.PeerId] = asyncio.Queue()
        events = node.subscribe_events()

        async def originate() -> None:
            # As the listener: once established, query on "events" (a stream we open) and
            # send the verdict.
            peer = await established.get()
            try:
                await app.ask(peer, "events", LISTENER_QUERIES)
            except AssertionError as exc:
                await node.send(peer, "events", b"Vfail: " + str(exc).encode())
                raise
            await node.send(peer, "events", b"Vok")

        async with (
            glueberry.handshake.auto(node, STREAMS, on_established=established.put_nowait),
            asyncio.TaskGroup() as tg,
        ):
            serve = tg.create_task(app.serve())
            orig = tg.create_task(originate())
            run = await peer_dialer.arun(
                "gbpeer",
                str(node.addrs[0].with_p2p(node.peer_id)),
                "handshake",
                "exchange",
                "--timeout",
                "60",
                seconds=120,
            )
            assert run.ok, run.describe()
            assert run.test("exchange")["ok"]
            await asyncio.wait_for(orig, 10)
            serve.cancel()
        assert sorted(app.answered) == sorted(DIALER_QUERIES)
        # Go closed its connection when it exited: we notice (Go itself would not).
        peers = set(node.all_peer_statistics())
        assert len(peers) == 1
        (go_peer,) = peers
        async with asyncio.timeout(10):
            async for ev in events:
                if isinstance(ev, glueberry.ConnectionEvent) and ev.state is S.DISCONNECTED:
                    assert ev.peer_id == go_peer
                    break
        assert node.connection_state(go_peer) is S.DISCONNECTED
        assert node.input_errors["decryption_failures"] == 0


async def test_go_dials_python_echo(peer_dialer: DialerFactory) -> None:
    async with python_node() as node:

        async def echo() -> None:
            async for m in node.messages():
                await node.send(m.peer_id, m.stream_name, m.data)

        async with glueberry.handshake.auto(node, STREAMS), asyncio.TaskGroup() as tg:
            task = tg.create_task(echo())
            run = await peer_dialer.arun(
                "gbpeer",
                str(node.addrs[0].with_p2p(node.peer_id)),
                "echo",
                "--timeout",
                "60",
                seconds=120,
            )
            task.cancel()
        assert run.ok, run.describe()
        assert run.test("echo")["ok"]


async def test_go_and_python_hello_arrives_first_on_the_listener(
    peer_listener: ListenerFactory,
) -> None:
    """The raw handshake bytes: Python's frames are accepted by Go, Go's by Python."""
    lis = peer_listener("gbpeer", "--events")
    peer, addr = _target(lis.addr)
    async with python_node() as node:
        node.add_peer(peer, [addr])
        await node.connect(peer)
        async with node.intercept_handshake(peer) as inbox:
            await node.send(peer, "handshake", encode_hello())
            got = [(await asyncio.wait_for(inbox.get(), 10)).data for _ in range(2)]
            assert got[0] == encode_hello()
            assert got[1][:5] == bytes.fromhex("1481011420") and len(got[1]) == 39
            await node.send(peer, "handshake", encode_pubkey(node.public_key))
            await node.prepare_streams(peer, got[1][5:37], STREAMS)
            await node.send(peer, "handshake", encode_complete())
            assert (await asyncio.wait_for(inbox.get(), 10)).data == encode_complete()
            await node.finalize_handshake(peer)
        assert node.connection_state(peer) is S.ESTABLISHED


# --- vectors -----------------------------------------------------------------------------------


def test_go_vectors_match_this_library() -> None:
    out = subprocess.run(
        [*peer_binary("gbpeer"), "vectors"], capture_output=True, check=True, timeout=30
    )
    v = json.loads(out.stdout)
    keys = {}
    for name, seed in (("A", b"\x01" * 32), ("B", b"\x02" * 32)):
        k = glueberry.PrivateKey.from_seed(seed)
        keys[name] = k
        got = v[name]
        assert got["ed25519_pub"] == k.public_key.data.hex()
        assert got["peer_id"] == str(k.peer_id)
        assert got["x25519_priv"] == bytes(ed25519_private_to_x25519(k)).hex()
        assert got["x25519_pub"] == ed25519_public_to_x25519(k.public_key.data).hex()
    shared = x25519_shared_secret(
        ed25519_private_to_x25519(keys["A"]), ed25519_public_to_x25519(keys["B"].public_key.data)
    )
    stream_key = bytes(derive_stream_key(shared))
    flat = json.dumps(v)
    assert bytes(shared).hex() in flat
    assert v["stream_key"] == stream_key.hex()
    nonce = bytes.fromhex(v["hello_nonce"])
    blob = StreamCipher(stream_key).seal(b"hello", nonce=nonce)
    assert v["hello_blob"] == blob.hex()
    assert v["hello_frame"] == (encode_frame_header(len(blob)) + blob).hex()
    assert v["identity_point_x25519"] == ed25519_public_to_x25519(b"\x01" + bytes(31)).hex()
    assert v["identity_point_ecdh_ok"] is False
    with pytest.raises(glueberry.SecurityError):
        x25519_shared_secret(ed25519_private_to_x25519(keys["A"]), bytes(32))
    headers = v["frame_headers"]
    assert headers["010203"] == encode_frame(b"\x01\x02\x03")[:2].hex()
    assert headers["empty"] == encode_frame(b"").hex()
    assert headers["200_bytes"] == encode_frame_header(200).hex()
    assert headers["16384_bytes"] == encode_frame_header(16384).hex()
    assert headers["1MiB"] == encode_frame_header(1 << 20).hex()
    hs = v["handshake"]
    assert hs["hello"] == encode_hello().hex()
    assert hs["hello_frame"] == encode_frame(encode_hello()).hex()
    assert hs["complete"] == encode_complete().hex()
    assert hs["complete_frame"] == encode_frame(encode_complete()).hex()
    assert hs["pubkey_A"] == encode_pubkey(keys["A"].public_key.data).hex()
