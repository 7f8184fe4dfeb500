"""Micro-benchmark of QUIC and TCP+TLS: bulk throughput and connection set-up, Python<->Python.

Not a test. Both ends run in this one process over loopback (so the numbers are for the
sum of both sides' CPU), on a shared 2-core machine: each figure is the best of a few rounds.

* QUIC bulk: one stream, ``--mib`` MiB written in 1 MiB writes, read to EOF (MB/s = 10^6 B/s).
* QUIC set-up: dial + mutual TLS + certificate checks, until ``dial`` returns (ms).
* TCP+TLS bulk and set-up, for comparison: TCP connect + ``/tls/1.0.0`` handshake (no
  multistream, no muxer), then raw TLS records.
* The in-memory aioquic ceiling: two aioquic cores exchanging packets with no sockets
  (what any aioquic-based transport can reach on this machine).

Run: python3 bench/micro_quic.py [--mib 16] [--rounds 3] [--setups 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioquic.quic import events as qe

from glueberry.net import tls
from glueberry.transport import _aioquic_hooks as hooks
from glueberry.transport import tcp
from glueberry.transport.quic import QuicConnection, QuicStream, QuicTransport
from glueberry.wire import tlscert
from glueberry.wire.identity import PrivateKey

SERVER = PrivateKey.from_seed(b"\x31" * 32)
CLIENT = PrivateKey.from_seed(b"\x32" * 32)
CHUNK = bytes(1 << 20)


async def quic_bulk(mib: int) -> float:
    server = QuicTransport(SERVER)
    client = QuicTransport(CLIENT)
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def sink(stream: QuicStream) -> None:
        n = 0
        while data := await stream.read():
            n += len(data)
        done.set_result(n)

    tasks: set[asyncio.Task[None]] = set()

    def on_connection(conn: QuicConnection) -> None:
        def on_stream(s: QuicStream) -> None:
            task = asyncio.get_running_loop().create_task(sink(s))
            tasks.add(task)

        conn.set_stream_handler(on_stream)

    try:
        lst = await server.listen("/ip4/127.0.0.1/udp/0/quic-v1", on_connection)
        conn = await client.dial(lst.multiaddrs[0], SERVER.peer_id)
        stream = await conn.open_stream()
        t0 = time.perf_counter()
        for _ in range(mib):
            await stream.write(CHUNK)
        await stream.close_write()
        n = await done
        return n / (time.perf_counter() - t0) / 1e6
    finally:
        client.close()
        server.close()


async def quic_setup(n: int) -> float:
    server = QuicTransport(SERVER)
    client = QuicTransport(CLIENT)
    try:
        lst = await server.listen("/ip4/127.0.0.1/udp/0/quic-v1", lambda c: None)
        best = float("inf")
        for _ in range(n):
            t0 = time.perf_counter()
            conn = await client.dial(lst.multiaddrs[0], SERVER.peer_id)
            best = min(best, time.perf_counter() - t0)
            conn.abort()
        return best * 1e3
    finally:
        client.close()
        server.close()


async def _tls_pair() -> tuple[tls.TlsConnection, tls.TlsConnection, tcp.TcpListener]:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[tcp.TcpConnection] = loop.create_future()
    listener = await tcp.TcpListener.create("127.0.0.1", 0, accepted.set_result)
    host, port = listener.addresses[0]
    raw_client = await tcp.dial(host, port, timeout=5)
    raw_server = await accepted
    a, b = await asyncio.gather(
        tls.secure_outbound(raw_client, CLIENT, SERVER.peer_id),
        tls.secure_inbound(raw_server, SERVER),
    )
    return a, b, listener


async def tls_bulk(mib: int) -> float:
    client, server, listener = await _tls_pair()
    try:
        total = mib << 20

        async def receive() -> None:
            n = 0
            while n < total:
                data = await server.read()
                if not data:
                    break
                n += len(data)

        reader = asyncio.get_running_loop().create_task(receive())
        t0 = time.perf_counter()
        for _ in range(mib):
            client.write(CHUNK)
            await client.drain()
        await reader
        return total / (time.perf_counter() - t0) / 1e6
    finally:
        client.abort()
        server.abort()
        await listener.wait_closed()


async def tls_setup(n: int) -> float:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        client, server, listener = await _tls_pair()
        best = min(best, time.perf_counter() - t0)
        client.abort()
        server.abort()
        await listener.wait_closed()
    return best * 1e3


def aioquic_ceiling(mib: int) -> float:
    """Two aioquic cores in memory, no sockets: the floor of per-packet cost."""
    now = 1000.0
    local = [tlscert.generate_certificate(k, time.time()) for k in (CLIENT, SERVER)]
    configs = [
        hooks.make_configuration(
            is_client=i == 0,
            alpn="libp2p",
            local=local[i],
            idle_timeout=60,
            max_datagram_size=1350,
            stream_window=2 << 20,
            connection_window=8 << 20,
        )
        for i in range(2)
    ]
    client = hooks.GlueberryQuicConnection(configuration=configs[0])
    client.connect(("127.0.0.1", 2), now=now)
    server: hooks.GlueberryQuicConnection | None = None
    total = mib << 20
    sid = -1
    got = 0
    sent = False
    t0 = 0.0
    while got < total:
        now += 0.0002
        for data, _ in client.datagrams_to_send(now):
            if server is None:
                server = hooks.GlueberryQuicConnection(
                    configuration=configs[1],
                    original_destination_connection_id=client._peer_cid.cid,
                )
            server.receive_datagram(data, ("127.0.0.1", 1), now)
        assert server is not None
        for data, _ in server.datagrams_to_send(now):
            client.receive_datagram(data, ("127.0.0.1", 2), now)
        while (ev := client.next_event()) is not None:
            if isinstance(ev, qe.HandshakeCompleted) and not sent:
                sid = client.get_next_available_stream_id()
                client.send_stream_data(sid, bytes(total), end_stream=True)
                sent = True
                t0 = time.perf_counter()
        while (ev := server.next_event()) is not None:
            if isinstance(ev, qe.StreamDataReceived):
                got += len(ev.data)
                server.consume(ev.stream_id, len(ev.data))
    return total / (time.perf_counter() - t0) / 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--setups", type=int, default=20)
    args = parser.parse_args()
    rows = []
    rows.append(
        ("QUIC bulk, 1 stream (MB/s)", max([await quic_bulk(args.mib) for _ in range(args.rounds)]))
    )
    rows.append(("QUIC set-up, best (ms)", await quic_setup(args.setups)))
    rows.append(
        (
            "aioquic in memory (MB/s)",
            max(aioquic_ceiling(args.mib // 2 or 1) for _ in range(args.rounds)),
        )
    )
    rows.append(
        ("TCP+TLS bulk (MB/s)", max([await tls_bulk(args.mib * 4) for _ in range(args.rounds)]))
    )
    rows.append(("TCP+TLS set-up, best (ms)", await tls_setup(args.setups)))
    for name, value in rows:
        print(f"{name:32s} {value:8.1f}")


if __name__ == "__main__":
    asyncio.run(main())
