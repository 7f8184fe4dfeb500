"""Interop: our yamux against go-yamux v5 (configured as go-libp2p does), over plain TCP.

``go_yamux_peer/`` is a small Go program around go-yamux; it is built once per session. No
security layer: a plaintext TCP adapter stands in for the secured connection, so this checks
the muxer alone (framing, windows and their growth, resets with error codes, streams opened
by either side, pings, GoAway, go's close without GoAway) in both roles.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from glueberry.errors import ConnectionLost, StreamReset
from glueberry.net.muxer import YamuxConnection, YamuxStream
from tests.conformance.pairs import _KEYS

if TYPE_CHECKING:
    from glueberry.transport.base import ByteReceiver
    from glueberry.wire.identity import PublicKey

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

PEER_DIR = Path(__file__).resolve().parent / "go_yamux_peer"


@pytest.fixture(scope="module")
def go_peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.fail("the Go toolchain is needed for the go-yamux interop test (interop marker)")
    out = tmp_path_factory.mktemp("go") / "go_yamux_peer"
    env = {**os.environ, "GOFLAGS": "-mod=mod -buildvcs=false"}
    subprocess.run(
        [go, "build", "-o", str(out), "."], cwd=PEER_DIR, env=env, check=True, timeout=170
    )
    return out


class PlainTcp(asyncio.Protocol):
    """A TCP connection shaped like a SecureConnection (plaintext, push mode)."""

    transport_name = "tcp"
    security_protocol = "/plaintext-test"
    early_muxer: str | None = None

    def __init__(self, initiator: bool) -> None:
        key, remote = _KEYS if initiator else _KEYS[::-1]
        self.local_peer = key.peer_id
        self.remote_peer = remote.peer_id
        self.remote_public_key: PublicKey = remote.public_key
        self.is_initiator = initiator
        self.local_address = ("127.0.0.1", 0)
        self.remote_address = ("127.0.0.1", 0)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._receiver: ByteReceiver | None = None
        self._early: list[bytes] = []
        self._paused = False
        self._drainers: list[asyncio.Future[None]] = []
        self._closed = self._loop.create_future()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._receiver is None:
            self._early.append(data)
        else:
            self._receiver.data_received(data)

    def eof_received(self) -> bool:
        if self._receiver is not None:
            self._receiver.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._wake()
        if not self._closed.done():
            self._closed.set_result(None)
        if self._receiver is not None:
            self._receiver.connection_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    def _wake(self) -> None:
        for fut in self._drainers:
            if not fut.done():
                fut.set_result(None)
        self._drainers.clear()

    # SecureConnection
    async def read(self) -> bytes:
        raise NotImplementedError

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._transport is not None
        if self._transport.is_closing():
            raise ConnectionLost("closed")
        self._transport.write(data)

    async def drain(self) -> None:
        while self._paused and not self._closed.done():
            fut = self._loop.create_future()
            self._drainers.append(fut)
            await fut

    def set_receiver(self, receiver: ByteReceiver) -> None:
        self._receiver = receiver
        for chunk in self._early:
            receiver.data_received(chunk)
        self._early.clear()

    def pause_reading(self) -> None:
        assert self._transport is not None
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        assert self._transport is not None
        self._transport.resume_reading()

    def close(self) -> None:
        assert self._transport is not None
        self._transport.close()

    def abort(self) -> None:
        assert self._transport is not None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)


async def read_all(stream: YamuxStream) -> bytes:
    parts = []
    while chunk := await stream.read():
        parts.append(chunk)
    return b"".join(parts)


async def test_python_dials_go(go_peer: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(go_peer), "serve", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        host, port = (await proc.stdout.readline()).decode().strip().rsplit(":", 1)
        loop = asyncio.get_running_loop()
        _, tcp = await loop.create_connection(lambda: PlainTcp(True), host, int(port))
        from_go: asyncio.Queue[YamuxStream] = asyncio.Queue()
        conn = YamuxConnection(tcp, is_client=True, on_stream=from_go.put_nowait)

        async def echo(i: int) -> None:
            st = await conn.open_stream()
            msg = bytes([i]) * (1000 + 5000 * i)
            await st.write(b"E" + msg)
            await st.close_write()
            assert await read_all(st) == msg

        async with asyncio.timeout(60):
            await asyncio.gather(*(echo(i) for i in range(20)))

            big = os.urandom(32 * 1024 * 1024)
            st = await conn.open_stream()

            async def send() -> None:
                await st.write(b"E")
                for off in range(0, len(big), 1 << 20):
                    await st.write(big[off : off + (1 << 20)])
                await st.close_write()

            digest = hashlib.sha256()
            windows = {"recv": 0, "send": 0}

            async def receive() -> None:
                session = conn.session
                while chunk := await st.read():
                    digest.update(chunk)
                    sid = st.stream_id
                    windows["recv"] = max(windows["recv"], session.receive_window_size(sid))
                    windows["send"] = max(windows["send"], session.send_window(sid))

            await asyncio.gather(send(), receive())
            assert digest.digest() == hashlib.sha256(big).digest()
            assert windows["recv"] == 16 * 1024 * 1024  # ours grew eagerly to the maximum
            assert windows["send"] > 256 * 1024  # go granted more than the initial window
            assert conn.session.num_streams == 0

            st = await conn.open_stream()
            await st.write(b"R")
            with pytest.raises(StreamReset) as info:
                await st.read()
            assert info.value.remote
            assert st.reset_code == 0x1001

            st = await conn.open_stream()
            await st.write(b"O")
            back = await from_go.get()
            assert back.stream_id % 2 == 0
            assert await read_all(back) == b"hello from go"
            await back.close_write()
            await st.close_write()
            assert await read_all(st) == b""

            assert 0 <= await conn.ping() < 5

            await conn.close()
            line = (await proc.stdout.readline()).decode().strip()
            assert line == "session ended: goaway remote=true code=0"
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_go_dials_python(go_peer: Path) -> None:
    loop = asyncio.get_running_loop()
    conns: list[YamuxConnection] = []
    tasks: set[asyncio.Task[None]] = set()

    async def serve(st: YamuxStream) -> None:
        cmd = await st.readexactly(1)
        if cmd == b"E":
            async for chunk in st:
                await st.write(chunk)
            await st.close_write()
        elif cmd == b"R":
            st.reset(42)
        elif cmd == b"S":
            assert await read_all(st) == b""
            await st.write(b"hi from python")
            await st.close_write()

    def on_stream(st: YamuxStream) -> None:
        task = loop.create_task(serve(st))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def factory() -> PlainTcp:
        proto = PlainTcp(False)
        loop.call_soon(
            lambda: conns.append(YamuxConnection(proto, is_client=False, on_stream=on_stream))
        )
        return proto

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            str(go_peer), "dial", f"127.0.0.1:{port}", stdout=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(90):
            out, _ = await proc.communicate()
        assert proc.returncode == 0
        summary = json.loads(out)
        assert summary == {
            "echoed": 20,
            "big_ok": True,
            "reset_code": 42,
            "from_python": "hi from python",
            "rtt_ms": summary["rtt_ms"],
            "errors": None,
        }
        (conn,) = conns
        await conn.wait_closed()
        assert conn.error is None  # go closes with a bare EOF
    finally:
        server.close()
        await server.wait_closed()
        for task in list(tasks):
            task.cancel()
