"""Named streams on the wire: exact bytes, Go's stream rules, and hostile input from a raw
libp2p peer (bad frames, bad ciphertext, refused names, floods) — typed, counted, contained."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

import glueberry
from glueberry import ConnectionState, Node
from glueberry.errors import StreamReset
from glueberry.net.host import Host
from glueberry.net.negotiate import select_protocol_lazy
from glueberry.peers.channels import MAX_SECONDARY_STREAMS, MessageQueue
from glueberry.peers.crypto import StreamCipher, derive_shared_key
from glueberry.proto.gb_framing import (
    FrameDecoder,
    encode_encrypted_frame,
    encode_frame,
    stream_protocol_id,
)
from glueberry.transport.base import Stream
from tests.integration.node_harness import (
    LOOPBACK,
    establish_pair,
    key,
    next_event,
    running_nodes,
    wait_for,
    wait_state,
)

S = ConnectionState
HS = stream_protocol_id("handshake")
MSG = stream_protocol_id("messages")
# reference §2.9: the stream key between the identities with seeds 01×32 and 02×32
VECTOR_KEY = bytes.fromhex("5b7eb24d827b5976a95a65a1ec53336267eabd7288f6868fcc46e7ff1d9c19d3")


@contextlib.asynccontextmanager
async def raw_peer(seed: int) -> AsyncIterator[Host]:
    async with Host(key(seed), listen_addrs=[LOOPBACK]) as host:
        yield host


async def open_to(host: Host, node: Node, protocol: str) -> Stream:
    await host.connect(node.peer_id, node.addrs)
    return await host.new_stream(node.peer_id, [protocol])


async def get(node: Node) -> glueberry.IncomingMessage:
    return await asyncio.wait_for(node.messages().get(), 5)


async def expect_reset(stream: Stream) -> None:
    with pytest.raises(StreamReset):
        async with asyncio.timeout(5):
            while await stream.read():
                pass


async def read_frames(stream: Stream, decoder: FrameDecoder, n: int) -> list[bytes]:
    out: list[bytes] = []
    async with asyncio.timeout(5):
        while len(out) < n:
            data = await stream.read()
            assert data, "stream ended"
            out += decoder.receive_data(data)
    return out


# --- the bytes on the wire -------------------------------------------------------------------


async def test_wire_bytes_and_go_key_vector() -> None:
    """Frames are uvarint(L) uvarint(N) payload; the stream key matches the Go vector."""
    async with running_nodes(1) as (node,), raw_peer(1) as peer:  # seeds 01… and 02…
        stream = await open_to(peer, node, HS)
        await stream.write(bytes.fromhex("0605") + b"hello")
        msg = await get(node)
        assert (msg.peer_id, msg.stream_name, msg.data) == (peer.peer_id, "handshake", b"hello")
        await node.send(peer.peer_id, "handshake", b"\x01\x02\x03")
        assert await stream.readexactly(5) == bytes.fromhex("0403010203")
        # An encrypted stream: the node opens it and frames nonce‖ct‖tag under the Go key.
        assert derive_shared_key(key(1), node.public_key) == VECTOR_KEY
        got: asyncio.Future[Stream] = asyncio.get_running_loop().create_future()

        async def accept(s: Stream) -> None:
            got.set_result(s)
            await asyncio.sleep(3600)

        peer.set_stream_handler(MSG, accept)
        await node.prepare_streams(peer.peer_id, peer.identity.public_key.data, ["messages"])
        await node.send(peer.peer_id, "messages", b"hello")
        enc = await asyncio.wait_for(got, 5)
        head = await enc.readexactly(2)
        assert head == bytes.fromhex("2221")  # L = 34, N = 33 = 5 + 28
        blob = await enc.readexactly(33)
        assert StreamCipher(VECTOR_KEY).open(blob) == b"hello"
        # The peer answers on the same stream (one stream per name, both ways).
        await enc.write(encode_encrypted_frame(StreamCipher(VECTOR_KEY), b"world"))
        m = await get(node)
        assert (m.stream_name, m.data) == ("messages", b"world")


async def test_lazy_multistream_pipelined_first_message() -> None:
    """Go sends header, protocol and the first frame in one write; nothing is lost."""
    async with running_nodes(1) as (node,), raw_peer(1) as peer:
        conn = await peer.connect(node.peer_id, node.addrs)
        stream = await conn.open_stream()
        sel = await select_protocol_lazy(stream, HS, encode_frame(b"pipelined"))
        assert (await get(node)).data == b"pipelined"
        assert node.connection_state(peer.peer_id) is S.CONNECTED
        await sel.confirm()


# --- hostile input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "data", "close"),
    [
        ("zero-length outer frame", b"\x00", False),
        ("outer length over the limit", b"\xff\xff\xff\x7f", False),
        ("non-minimal varint", b"\x80\x00", False),
        ("over-long varint", b"\xff" * 10 + b"\x01", False),
        ("inner length past the frame", b"\x02\x05\x00", False),
        ("trailing bytes in the frame", b"\x03\x01\x00\x00", False),
        ("truncated varint at EOF", b"\x80", True),
        ("truncated frame at EOF", b"\x05\x04ab", True),
    ],
)
async def test_bad_frames_reset_the_stream_only(case: str, data: bytes, close: bool) -> None:
    async with (
        running_nodes(2, max_message_size=1024) as (node, friend),
        raw_peer(5) as bad,
    ):
        await establish_pair(friend, node)
        stream = await open_to(bad, node, HS)
        await stream.write(encode_frame(b"fine"))
        assert (await get(node)).data == b"fine"
        await stream.write(data)
        if close:
            await stream.close_write()
        await expect_reset(stream)
        assert node.input_errors["protocol_errors"] == 1, case
        # Other peers and other streams are unaffected.
        await friend.send(node.peer_id, "messages", b"still here")
        assert (await get(node)).data == b"still here"
        # The bad peer may try again on a new stream (it stays Connected).
        s2 = await open_to(bad, node, HS)
        await s2.write(encode_frame(b"again"))
        assert (await get(node)).data == b"again"


async def test_oversized_frame_refused_before_buffering() -> None:
    async with running_nodes(1, max_message_size=1024) as (node,), raw_peer(1) as bad:
        stream = await open_to(bad, node, HS)
        await stream.write(b"\x83\x08\x81\x08")  # L = 1027: N = 1025 > 1024, no body sent
        await expect_reset(stream)
        assert node.input_errors["protocol_errors"] == 1
        assert len(node.messages()) == 0


async def test_plaintext_limit_on_encrypted_streams() -> None:
    """max_message_size bounds the plaintext: blob = limit + 28 passes, one more byte fails."""
    async with running_nodes(1, max_message_size=1000) as (node,), raw_peer(1) as peer:
        cipher = StreamCipher(derive_shared_key(key(1), node.public_key))
        await node.prepare_streams(peer.peer_id, peer.identity.public_key.data, ["messages"])
        stream = await open_to(peer, node, MSG)
        await stream.write(encode_encrypted_frame(cipher, bytes(1000)))
        assert len((await get(node)).data) == 1000
        await stream.write(encode_encrypted_frame(cipher, bytes(1001)))
        await expect_reset(stream)
        assert node.input_errors["protocol_errors"] == 1


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("policy", ["reset_stream", "disconnect"])
async def test_bad_ciphertext_is_counted_reported_and_handled(policy: str, warm: bool) -> None:
    """``warm``: a message read earlier, so the bad batch arrives on the push path."""
    reported: list[tuple[glueberry.PeerId, BaseException]] = []
    async with (
        running_nodes(
            1,
            decryption_error_policy=policy,
            on_decryption_error=lambda p, e: reported.append((p, e)),
        ) as (node,),
        raw_peer(1) as peer,
    ):
        events = node.subscribe_events()
        good = StreamCipher(derive_shared_key(key(1), node.public_key))
        wrong = StreamCipher(bytes(32))
        await stream_handshake(node, peer)
        await node.prepare_streams(peer.peer_id, peer.identity.public_key.data, ["messages"])
        stream = await open_to(peer, node, MSG)
        if warm:
            await stream.write(encode_encrypted_frame(good, b"warm"))
            assert (await get(node)).data == b"warm"
        tampered = bytearray(encode_encrypted_frame(good, b"tampered"))
        tampered[-1] ^= 1
        await stream.write(
            encode_encrypted_frame(good, b"authentic")
            + encode_encrypted_frame(wrong, b"wrong key")
            + bytes(tampered)
            + encode_frame(b"short")  # < 28 bytes: not even a blob
        )
        await expect_reset(stream)
        assert (await get(node)).data == b"authentic"
        assert len(node.messages()) == 0  # nothing that failed is delivered
        assert node.input_errors["decryption_failures"] == 3
        assert len(reported) == 1
        assert reported[0][0] == peer.peer_id
        assert isinstance(reported[0][1], glueberry.DecryptionFailed)
        assert reported[0][1].code is glueberry.ErrorCode.DECRYPTION_FAILED
        if policy == "disconnect":
            ev = (await wait_state(events, peer.peer_id, S.DISCONNECTED))[-1]
            assert isinstance(ev.error, glueberry.DecryptionFailed)
            await wait_for(lambda: not node.host.connections(peer.peer_id))
        else:
            assert node.connection_state(peer.peer_id) is S.CONNECTED
            s2 = await open_to(peer, node, MSG)
            await s2.write(encode_encrypted_frame(good, b"next"))
            assert (await get(node)).data == b"next"


async def stream_handshake(node: Node, peer: Host) -> Stream:
    """Make the raw peer Connected at the node (it opens the handshake stream)."""
    stream = await open_to(peer, node, HS)
    await stream.write(encode_frame(b"hi"))
    await get(node)
    return stream


async def test_names_not_granted_are_refused() -> None:
    async with running_nodes(2) as (node, other), raw_peer(5) as peer:
        await stream_handshake(node, peer)
        # Nobody prepared "secret": multistream says na.
        with pytest.raises(glueberry.NegotiationFailed):
            await open_to(peer, node, stream_protocol_id("secret"))
        # Prepared for another peer only: accepted by multistream, then reset.
        await node.prepare_streams(other.peer_id, other.public_key, ["secret"])
        try:
            s = await open_to(peer, node, stream_protocol_id("secret"))
            await s.write(b"\x01\x00")
        except StreamReset:
            pass  # the reset overtook the end of the negotiation
        else:
            await expect_reset(s)
        assert node.input_errors["streams_refused"] == 1
        assert len(node.messages()) == 0


async def test_stream_flood_keeps_few_streams_and_the_newest() -> None:
    async with running_nodes(1) as (node,), raw_peer(1) as peer:
        cipher = StreamCipher(derive_shared_key(key(1), node.public_key))
        await node.prepare_streams(peer.peer_id, peer.identity.public_key.data, ["messages"])
        streams = []
        for i in range(12):
            s = await open_to(peer, node, MSG)
            streams.append(s)
            await s.write(encode_encrypted_frame(cipher, b"%d" % i))
            assert (await get(node)).data == b"%d" % i  # every accepted stream is read
        assert node._channels is not None
        await wait_for(
            lambda: (
                node._channels.stream_count(peer.peer_id, "messages")  # type: ignore[union-attr]
                <= 1 + MAX_SECONDARY_STREAMS
            )
        )
        assert node.input_errors["streams_reset_flood"] >= 12 - 1 - MAX_SECONDARY_STREAMS
        # Our replies go out on the newest stream.
        await node.send(peer.peer_id, "messages", b"reply")
        dec = FrameDecoder.for_encrypted(1 << 20)
        blob = (await read_frames(streams[-1], dec, 1))[0]
        assert cipher.open(blob) == b"reply"


async def test_simultaneous_first_send_loses_nothing_and_converges() -> None:
    async with running_nodes(2) as (a, b):
        await establish_pair(a, b, ["x"])
        for round_ in range(3):
            await asyncio.gather(
                a.send(b.peer_id, "x", b"a%d" % round_), b.send(a.peer_id, "x", b"b%d" % round_)
            )
        got_a = [(await get(a)).data for _ in range(3)]
        got_b = [(await get(b)).data for _ in range(3)]
        assert sorted(got_a) == [b"b0", b"b1", b"b2"]
        assert sorted(got_b) == [b"a0", b"a1", b"a2"]
        ca, cb = a._channels, b._channels
        assert ca is not None and cb is not None
        await wait_for(
            lambda: ca.stream_count(b.peer_id, "x") == 1 and cb.stream_count(a.peer_id, "x") == 1,
            what="one stream left on each side",
        )


async def test_stream_reopened_after_the_peer_abandons_it() -> None:
    """Go abandons a stream after EOF and opens a new one on its next send."""
    async with running_nodes(1) as (node,), raw_peer(1) as peer:
        cipher = StreamCipher(derive_shared_key(key(1), node.public_key))
        await node.prepare_streams(peer.peer_id, peer.identity.public_key.data, ["messages"])
        s1 = await open_to(peer, node, MSG)
        await s1.write(encode_encrypted_frame(cipher, b"one"))
        assert (await get(node)).data == b"one"
        await s1.close()  # FIN: the node drops the stream as Go would
        await wait_for(lambda: node._channels.stream_count(peer.peer_id) == 0)  # type: ignore[union-attr]
        got: asyncio.Future[Stream] = asyncio.get_running_loop().create_future()

        async def accept(s: Stream) -> None:
            got.set_result(s)
            await asyncio.sleep(3600)

        peer.set_stream_handler(MSG, accept)
        await node.send(peer.peer_id, "messages", b"two")  # opens a fresh stream
        s2 = await asyncio.wait_for(got, 5)
        blob = (await read_frames(s2, FrameDecoder.for_encrypted(1 << 20), 1))[0]
        assert cipher.open(blob) == b"two"


async def test_handshake_stream_half_closed_after_finalize() -> None:
    async with running_nodes(1) as (node,), raw_peer(1) as peer:
        stream = await stream_handshake(node, peer)
        await node.complete_handshake(peer.peer_id, peer.identity.public_key.data, ["m"])
        assert await asyncio.wait_for(stream.read(), 5) == b""  # FIN, like Go's Close
        # Later handshake messages open a new stream (Go does the same).
        got: asyncio.Future[Stream] = asyncio.get_running_loop().create_future()

        async def accept(s: Stream) -> None:
            got.set_result(s)
            await asyncio.sleep(3600)

        peer.set_stream_handler(HS, accept)
        await node.send(peer.peer_id, "handshake", b"late")
        s2 = await asyncio.wait_for(got, 5)
        assert await s2.readexactly(6) == encode_frame(b"late")


# --- the message queue ---------------------------------------------------------------------------


async def test_order_and_backpressure_through_a_small_queue() -> None:
    """Batches taken on the receive path and batches the reader task waits to queue keep
    their order; nothing is dropped."""
    async with running_nodes(2, message_buffer_size=4) as (a, b):
        await establish_pair(a, b)
        n = 3000

        async def flood() -> None:
            for i in range(n):
                await a.send(b.peer_id, "messages", i.to_bytes(4, "big") + bytes(1020))

        task = asyncio.create_task(flood())
        queue = b.messages()
        for i in range(n):
            m = await asyncio.wait_for(queue.get(), 10)
            assert int.from_bytes(m.data[:4], "big") == i
            if i % 97 == 0:
                await asyncio.sleep(0.005)  # a slow consumer now and then
        await task
        assert len(queue) == 0


async def test_message_queue_batches_backpressure_and_close() -> None:
    q = MessageQueue(2)
    pid = key(0).peer_id
    mk = [glueberry.IncomingMessage(pid, "s", bytes([i]), 0.0) for i in range(6)]
    assert q  # a queue is truthy even when empty
    assert await q.put_batch(mk[:3])  # one batch may overfill
    put = asyncio.create_task(q.put_batch(mk[3:]))
    await asyncio.sleep(0.01)
    assert not put.done() and q.waiting_producers == 1
    assert q.get_nowait().data == b"\x00"
    assert q.get_nowait().data == b"\x01"
    await asyncio.sleep(0.01)
    assert put.done()
    assert [m.data[0] async for m in _take(q, 4)] == [2, 3, 4, 5]
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    q.close()
    with pytest.raises(glueberry.StreamClosed):
        await waiter
    assert [m async for m in q] == []
    assert not await q.put_batch(mk[:1])


@pytest.mark.parametrize("how", ["get", "anext"])
async def test_a_consumer_cancelled_after_its_wakeup_passes_the_batch_on(how: str) -> None:
    q = MessageQueue(8)
    pid = key(0).peer_id
    first = asyncio.create_task(q.get() if how == "get" else anext(aiter(q)))
    second = asyncio.create_task(q.get() if how == "get" else anext(aiter(q)))
    await asyncio.sleep(0.01)
    assert q.put_nowait([glueberry.IncomingMessage(pid, "s", b"x", 0.0)])
    first.cancel()  # woken for the batch, cancelled before it could take it
    assert (await asyncio.wait_for(second, 5)).data == b"x"
    assert first.cancelled()
    q.close()
    assert not q.put_nowait([])


async def _take(q: MessageQueue, n: int) -> AsyncIterator[glueberry.IncomingMessage]:
    for _ in range(n):
        yield await q.get()


async def test_handshake_messages_are_delivered_with_the_event_first() -> None:
    """A listener's Connected event precedes the first handshake message, and a reply sent
    in reaction to the event uses the dialer's stream (reference §1.3)."""
    async with running_nodes(1) as (node,), raw_peer(1) as peer:
        events = node.subscribe_events()
        stream = await open_to(peer, node, HS)
        await stream.write(encode_frame(b"hello"))
        ev = await next_event(events)
        assert ev.state is S.CONNECTED
        await node.send(peer.peer_id, "handshake", b"reply")
        assert await stream.readexactly(7) == encode_frame(b"reply")
        assert (await get(node)).data == b"hello"
