"""The upgrade pipeline: raw -> multistream -> Noise (early yamux) -> [multistream] -> yamux."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from glueberry.errors import (
    ConnectionLost,
    HandshakeTimeout,
    NegotiationFailed,
    PeerIdMismatch,
    RemoteProtocolError,
    ResourceLimitExceeded,
)
from glueberry.net.upgrader import (
    NOISE,
    YAMUX,
    SecureUpgrade,
    Upgrader,
    noise_security,
)
from glueberry.proto.multistream import encode_message
from glueberry.transport import tcp
from glueberry.transport.base import MuxedConnection, RawConnection, SecureConnection, Stream
from glueberry.transport.memory import memory_pair
from glueberry.transport.tcp import TcpConnection, TcpListener
from glueberry.wire.identity import PeerId, PrivateKey

KEY_A = PrivateKey.from_seed(b"\x0a" * 32)
KEY_B = PrivateKey.from_seed(b"\x0b" * 32)
KEY_C = PrivateKey.from_seed(b"\x0c" * 32)


class Inbound:
    """Collects the streams a muxed connection accepts."""

    def __init__(self) -> None:
        self.streams: asyncio.Queue[Stream] = asyncio.Queue()

    def __call__(self, stream: Stream) -> None:
        self.streams.put_nowait(stream)


async def _tcp_raw_pair() -> tuple[TcpConnection, TcpConnection]:
    accepted: asyncio.Future[TcpConnection] = asyncio.get_running_loop().create_future()
    async with await TcpListener.create("127.0.0.1", 0, accepted.set_result) as listener:
        client = await tcp.dial("127.0.0.1", listener.addresses[0][1], timeout=5)
        server = await asyncio.wait_for(accepted, 5)
    return client, server


@pytest.fixture(params=["memory", "trickle", "tcp"])
async def raw_pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, Any]]:
    a: Any
    b: Any
    if request.param == "tcp":
        a, b = await _tcp_raw_pair()
    else:
        a, b = memory_pair(trickle=request.param == "trickle")
    yield a, b
    for c in (a, b):
        c.abort()
    for c in (a, b):
        await asyncio.wait_for(c.wait_closed(), 5)
    gc.collect()


async def upgrade_pair(
    raw_a: RawConnection,
    raw_b: RawConnection,
    up_a: Upgrader | None = None,
    up_b: Upgrader | None = None,
    *,
    expected: PeerId | None = None,
) -> tuple[MuxedConnection, MuxedConnection, Inbound, Inbound]:
    up_a = up_a or Upgrader(KEY_A)
    up_b = up_b or Upgrader(KEY_B)
    in_a, in_b = Inbound(), Inbound()
    async with asyncio.timeout(10):
        a, b = await asyncio.gather(
            up_a.upgrade_outbound(
                raw_a, expected_peer=expected or KEY_B.peer_id, on_stream=in_a, timeout=10
            ),
            up_b.upgrade_inbound(raw_b, on_stream=in_b),
        )
    return a, b, in_a, in_b


async def read_to_eof(conn: RawConnection) -> None:
    """Read until the peer closed (EOF or reset)."""
    try:
        while await conn.read():
            pass
    except ConnectionLost:
        pass


async def echo_roundtrip(a: MuxedConnection, in_b: Inbound, payload: bytes) -> None:
    stream = await a.open_stream()
    await stream.write(payload)
    peer = await asyncio.wait_for(in_b.streams.get(), 5)
    got = await asyncio.wait_for(peer.readexactly(len(payload)), 5)
    assert got == payload
    await peer.write(got[::-1])
    assert await asyncio.wait_for(stream.readexactly(len(payload)), 5) == payload[::-1]
    await stream.close()
    await peer.close()


async def test_upgrade_and_echo(raw_pair: tuple[Any, Any]) -> None:
    a, b, in_a, in_b = await upgrade_pair(*raw_pair)
    try:
        assert a.remote_peer == KEY_B.peer_id
        assert b.remote_peer == KEY_A.peer_id
        assert a.local_peer == KEY_A.peer_id
        assert a.security_protocol == NOISE
        assert a.muxer_protocol == YAMUX == b.muxer_protocol
        assert a.direction == "outbound"
        assert b.direction == "inbound"
        payload = bytes(range(256)) * (8 if raw_pair[0].transport_name != "tcp" else 512)
        await echo_roundtrip(a, in_b, payload)
        await echo_roundtrip(b, in_a, b"the other way")
    finally:
        await asyncio.wait_for(asyncio.gather(a.close(), b.close()), 5)


def _noise_without_early_muxer() -> SecureUpgrade:
    noise = noise_security()

    async def upgrade(
        raw: RawConnection,
        *,
        identity: PrivateKey,
        is_initiator: bool,
        expected_peer: PeerId | None,
        muxers: Sequence[str],
    ) -> SecureConnection:
        return await noise(
            raw,
            identity=identity,
            is_initiator=is_initiator,
            expected_peer=expected_peer,
            muxers=(),
        )

    return upgrade


@pytest.mark.parametrize("side", ["dialer", "listener", "both"])
async def test_muxer_via_multistream_when_no_early_muxer(side: str) -> None:
    plain = {NOISE: _noise_without_early_muxer()}
    up_a = Upgrader(KEY_A, security=plain) if side in ("dialer", "both") else None
    up_b = Upgrader(KEY_B, security=plain) if side in ("listener", "both") else None
    raw_a, raw_b = memory_pair(trickle=True)
    a, b, _, in_b = await upgrade_pair(raw_a, raw_b, up_a, up_b)
    try:
        assert a.muxer_protocol == YAMUX
        await echo_roundtrip(a, in_b, b"via mss")
    finally:
        await asyncio.wait_for(asyncio.gather(a.close(), b.close()), 5)


async def test_peer_id_mismatch_aborts_both_sides() -> None:
    raw_a, raw_b = memory_pair()
    up_b = Upgrader(KEY_B)
    task_b = asyncio.ensure_future(up_b.upgrade_inbound(raw_b, on_stream=Inbound()))
    with pytest.raises(PeerIdMismatch):
        await Upgrader(KEY_A).upgrade_outbound(
            raw_a, expected_peer=KEY_C.peer_id, on_stream=Inbound(), timeout=5
        )
    assert raw_a.is_closing()
    with pytest.raises((ConnectionLost, NegotiationFailed, HandshakeTimeout)) as info:
        await asyncio.wait_for(task_b, 5)
    assert not isinstance(info.value, HandshakeTimeout)
    assert raw_b.is_closing()
    assert up_b.failed_inbound == 1
    assert up_b.pending_inbound == 0


async def test_no_common_security_protocol() -> None:
    """Several candidates are proposed one round trip at a time: all refused -> failure."""
    raw_a, raw_b = memory_pair()
    up_a = Upgrader(
        KEY_A, security={"/tls/1.0.0": noise_security(), "/secio/1.0.0": noise_security()}
    )
    up_b = Upgrader(KEY_B)
    task_b = asyncio.ensure_future(up_b.upgrade_inbound(raw_b, on_stream=Inbound()))
    with pytest.raises(NegotiationFailed) as info:
        await up_a.upgrade_outbound(raw_a, expected_peer=None, on_stream=Inbound(), timeout=5)
    assert info.value.__cause__ is None or isinstance(info.value.__cause__, Exception)
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(task_b, 5)


async def test_single_security_protocol_refused() -> None:
    """One candidate goes 0-RTT with the handshake's first message; a listener without it
    answers ``na`` and drops the connection on the handshake bytes: the dial fails, either
    on the ``na`` or on the dropped connection, whichever the dialer reads first."""
    raw_a, raw_b = memory_pair()
    up_a = Upgrader(KEY_A, security={"/tls/1.0.0": noise_security()})
    up_b = Upgrader(KEY_B)
    task_b = asyncio.ensure_future(up_b.upgrade_inbound(raw_b, on_stream=Inbound()))
    with pytest.raises((NegotiationFailed, ConnectionLost)):
        await up_a.upgrade_outbound(raw_a, expected_peer=None, on_stream=Inbound(), timeout=5)
    with pytest.raises((ConnectionLost, RemoteProtocolError)):
        await asyncio.wait_for(task_b, 5)


async def test_single_security_protocol_is_selected_without_a_round_trip() -> None:
    """The header, ``/noise`` and Noise message 1 leave in one write; the handshake works."""
    raw_a, raw_b = memory_pair()
    writes: list[bytes] = []
    inner_write = raw_a.write

    def counting_write(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        inner_write(data)

    raw_a.write = counting_write  # type: ignore[method-assign]
    up_a = Upgrader(KEY_A, security={"/noise": noise_security()})
    up_b = Upgrader(KEY_B)
    a, b = await asyncio.gather(
        up_a.upgrade_outbound(raw_a, expected_peer=KEY_B.peer_id, on_stream=Inbound(), timeout=5),
        up_b.upgrade_inbound(raw_b, on_stream=Inbound()),
    )
    header = encode_message("/multistream/1.0.0") + encode_message("/noise")
    assert writes[0].startswith(header) and len(writes[0]) == len(header) + 2 + 32
    assert a.remote_peer == KEY_B.peer_id and b.remote_peer == KEY_A.peer_id
    await a.close()
    await b.close()


@pytest.mark.parametrize("proto", ["/plaintext/2.0.0", "/secio/1.0.0", "/tls/1.0.0"])
async def test_listener_refuses_plaintext_and_secio(proto: str) -> None:
    """B-30: a proposal we do not support gets ``na``, never an accept."""
    raw_a, raw_b = memory_pair()
    up_b = Upgrader(KEY_B, inbound_timeout=1)
    task_b = asyncio.ensure_future(up_b.upgrade_inbound(raw_b, on_stream=Inbound()))
    raw_a.write(encode_message("/multistream/1.0.0") + encode_message(proto))
    expected = encode_message("/multistream/1.0.0") + encode_message("na")
    got = b""
    while len(got) < len(expected):
        got += await asyncio.wait_for(raw_a.read(), 5)
    assert got == expected
    raw_a.abort()
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(task_b, 5)


async def test_half_open_connection_times_out() -> None:
    """B-01/B-40: a peer that never sends Noise message 1 is dropped at the deadline."""
    raw_a, raw_b = memory_pair()
    up_b = Upgrader(KEY_B, inbound_timeout=0.2)
    # The dialer completes multistream-select for /noise, then goes silent.
    raw_a.write(encode_message("/multistream/1.0.0") + encode_message(NOISE))
    with pytest.raises(HandshakeTimeout) as info:
        await up_b.upgrade_inbound(raw_b, on_stream=Inbound())
    assert isinstance(info.value.__cause__, TimeoutError)
    assert raw_b.is_closing()
    assert up_b.timed_out_inbound == 1
    assert up_b.pending_inbound == 0
    raw_a.abort()


async def test_outbound_timeout() -> None:
    raw_a, raw_b = memory_pair()  # nobody answers on b
    with pytest.raises(HandshakeTimeout):
        await Upgrader(KEY_A).upgrade_outbound(
            raw_a, expected_peer=None, on_stream=Inbound(), timeout=0.1
        )
    assert raw_a.is_closing()
    raw_b.abort()


async def test_dropped_connection_mid_handshake_is_connection_lost() -> None:
    raw_a, raw_b = memory_pair(drop_after=60)  # dies inside Noise message 2
    results = await asyncio.gather(
        Upgrader(KEY_A).upgrade_outbound(raw_a, expected_peer=None, on_stream=Inbound()),
        Upgrader(KEY_B).upgrade_inbound(raw_b, on_stream=Inbound()),
        return_exceptions=True,
    )
    for res in results:
        assert isinstance(res, ConnectionLost), res
    assert raw_a.is_closing() and raw_b.is_closing()


async def test_cancel_during_handshake_closes_connection() -> None:
    """C10: cancelling an upgrade aborts its connection and leaves nothing running."""
    raw_a, raw_b = memory_pair()
    raw_b.pause_reading()  # the handshake stalls after the dialer's first write
    task = asyncio.ensure_future(
        Upgrader(KEY_A).upgrade_outbound(raw_a, expected_peer=None, on_stream=Inbound())
    )
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert raw_a.is_closing()
    raw_b.abort()


async def test_pending_inbound_cap_rejects_at_once() -> None:
    up_b = Upgrader(KEY_B, inbound_timeout=5, max_pending_inbound=3)
    pairs = [memory_pair() for _ in range(5)]
    tasks = [asyncio.ensure_future(up_b.upgrade_inbound(b, on_stream=Inbound())) for _, b in pairs]
    await asyncio.sleep(0.05)
    assert up_b.pending_inbound == 3
    assert up_b.rejected_inbound == 2
    for task in tasks[3:]:
        with pytest.raises(ResourceLimitExceeded) as info:
            await task
        assert info.value.limit == "max_pending_upgrades"
        assert not info.value.remote
    for _, b in pairs[3:]:
        assert b.is_closing()
    for task in tasks[:3]:
        task.cancel()
    await asyncio.gather(*tasks[:3], return_exceptions=True)
    assert up_b.pending_inbound == 0
    for a, b in pairs:
        assert b.is_closing()
        a.abort()


async def test_half_open_flood_over_tcp_other_peers_still_served() -> None:
    """B-40 over real sockets: 150 silent connections against a cap of 64; the excess is
    closed at once, and an honest peer gets through both while the flood is pending (cap
    not reached) and after the flood timed out."""
    up_b = Upgrader(KEY_B, inbound_timeout=1.5, max_pending_inbound=64)
    served: asyncio.Queue[MuxedConnection] = asyncio.Queue()

    async def serve(raw: TcpConnection) -> None:
        try:
            conn = await up_b.upgrade_inbound(raw, on_stream=Inbound())
        except (ResourceLimitExceeded, HandshakeTimeout):
            pass
        else:
            served.put_nowait(conn)

    async def honest_roundtrip(port: int) -> None:
        raw = await tcp.dial("127.0.0.1", port, timeout=5)
        a = await Upgrader(KEY_A).upgrade_outbound(
            raw, expected_peer=KEY_B.peer_id, on_stream=Inbound(), timeout=5
        )
        b = await asyncio.wait_for(served.get(), 5)
        await asyncio.gather(a.close(), b.close())

    async def dial_many(port: int, n: int) -> list[TcpConnection]:
        return list(await asyncio.gather(*(tcp.dial("127.0.0.1", port, 5) for _ in range(n))))

    async with asyncio.TaskGroup() as tg:

        def on_connection(raw: TcpConnection) -> None:
            tg.create_task(serve(raw))

        async with await TcpListener.create("127.0.0.1", 0, on_connection) as listener:
            port = listener.addresses[0][1]
            # 40 silent peers: below the cap, an honest peer is served meanwhile.
            flood = await dial_many(port, 40)
            await until(lambda: up_b.pending_inbound == 40)
            await honest_roundtrip(port)
            # 110 more: 24 fill the cap, 86 are rejected at once.
            flood += await dial_many(port, 110)
            await until(lambda: up_b.pending_inbound + up_b.rejected_inbound == 150)
            assert up_b.pending_inbound == 64
            assert up_b.rejected_inbound == 86
            # ... after the deadline everything pending is gone, and service resumes.
            await until(lambda: up_b.pending_inbound == 0, within=5)
            assert up_b.timed_out_inbound == 64
            await honest_roundtrip(port)
            # the server closed every flooding socket
            for conn in flood:
                await asyncio.wait_for(read_to_eof(conn), 5)
                conn.abort()
                await conn.wait_closed()
    gc.collect()


async def until(cond: Callable[[], bool], within: float = 3.0) -> None:
    """Poll ``cond`` (counters have no event to wait on)."""
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
