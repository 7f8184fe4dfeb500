"""A loopback proxy that delays traffic by a fixed time each way: an emulated path RTT.

For measuring connection set-up where round trips count (this machine's kernel has no
netem). Stdlib only, never imports glueberry.

    python3 bench/delay_proxy.py udp 127.0.0.1:4001 --delay-ms 10   # prints "READY <port>"
    python3 bench/delay_proxy.py tcp 127.0.0.1:4001 --delay-ms 10

* ``udp``: every datagram is forwarded ``delay`` later; one upstream socket per client
  address, so the server sees one peer per client.
* ``tcp``: each accepted connection gets an upstream connection; bytes are forwarded
  ``delay`` later in order, EOF too. The proxy cannot delay the kernel's SYN/SYN-ACK, so
  TCP's own handshake round trip is *not* emulated: TCP gets one round trip for free.

RTT = 2 x delay. Runs until stdin reaches EOF or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from typing import Any, cast


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, proxy: _UdpProxy, client: tuple[Any, ...]) -> None:
        self.proxy = proxy
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.proxy.later(self.proxy.front_send, data, self.client)


class _UdpProxy(asyncio.DatagramProtocol):
    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.target = target
        self.delay = delay
        self.front: asyncio.DatagramTransport | None = None
        self.ups: dict[tuple[Any, ...], _Upstream] = {}

    def later(self, fn: Any, *args: Any) -> None:
        self.loop.call_later(self.delay, fn, *args)

    def front_send(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.front is not None:
            self.front.sendto(data, addr)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.front = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.later(self._to_target, data, addr)

    def _to_target(self, data: bytes, addr: tuple[Any, ...]) -> None:
        up = self.ups.get(addr)
        if up is None:
            up = _Upstream(self, addr)
            self.ups[addr] = up
            self.loop.create_task(self._open(up, data))
            return
        if up.transport is not None:
            up.transport.sendto(data, self.target)

    async def _open(self, up: _Upstream, first: bytes) -> None:
        await self.loop.create_datagram_endpoint(lambda: up, local_addr=("127.0.0.1", 0))
        assert up.transport is not None
        up.transport.sendto(first, self.target)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    task = loop.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await task
    except (ConnectionError, OSError):
        task.cancel()


async def _tcp_client(
    target: tuple[str, int],
    delay: float,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection(*target)
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(
            _pipe(reader, up_writer, delay), _pipe(up_reader, writer, delay), return_exceptions=True
        )
    finally:
        writer.close()
        up_writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=("udp", "tcp"))
    ap.add_argument("target", help="host:port of the real listener")
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    a = ap.parse_args()
    host, port = a.target.rsplit(":", 1)
    target = (host, int(port))
    delay = a.delay_ms / 1e3
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def on_stdin() -> None:
        if not sys.stdin.read(1):  # EOF: the runner is gone
            stop.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    if a.kind == "udp":
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProxy(target, delay), local_addr=("127.0.0.1", 0), family=socket.AF_INET
        )
        bound = transport.get_extra_info("sockname")[1]
    else:
        server = await asyncio.start_server(
            lambda r, w: _tcp_client(target, delay, r, w), "127.0.0.1", 0
        )
        bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
