"""Node on loopback TCP: lifecycle, identity, address book, connect/disconnect, messaging."""

from __future__ import annotations

import asyncio
import gc
import json
import warnings
from pathlib import Path

import pytest

import glueberry
import glueberry.testing
from glueberry import (
    ConnectionState,
    ErrorCode,
    EventFilter,
    Node,
)
from tests.integration.node_harness import (
    LOOPBACK,
    establish_pair,
    key,
    make_config,
    next_event,
    running_nodes,
    states,
    wait_for,
    wait_state,
)

S = ConnectionState


# --- lifecycle -------------------------------------------------------------------------


async def test_lifecycle_single_use_and_clean_stop(tmp_path: Path) -> None:
    raw = bytearray(key(0).to_bytes())  # Go's 64-byte form, in a mutable buffer
    cfg = glueberry.Config(raw, tmp_path / "book.json", [LOOPBACK])
    node = Node(cfg, auto_connect=False)
    assert node.addrs == []
    assert node.connection_state(key(1).peer_id) is S.DISCONNECTED
    with pytest.raises(glueberry.NodeStateError) as info:
        node.add_peer(key(1).peer_id, [])
    assert info.value.code is ErrorCode.NODE_NOT_STARTED
    before = set(asyncio.all_tasks())
    async with node:
        assert node.is_running
        assert node.addrs and str(node.addrs[0]).startswith("/ip4/127.0.0.1/tcp/")
        with pytest.raises(glueberry.NodeStateError) as info:
            await node.start()
        assert info.value.code is ErrorCode.NODE_ALREADY_STARTED
        node.add_peer(key(1).peer_id, ["/ip4/127.0.0.1/tcp/1"], {"name": "one"})
    assert not node.is_running
    await node.stop()  # idempotent
    with pytest.raises(glueberry.NodeStateError) as info:
        await node.start()
    assert info.value.code is ErrorCode.NODE_STOPPED
    with pytest.raises(glueberry.NodeStateError) as info:
        await node.send(key(1).peer_id, "x", b"")
    assert info.value.code is ErrorCode.NODE_STOPPED
    # The caller's key is untouched; the book was written and closed.
    assert raw == key(0).to_bytes()
    book = json.loads((tmp_path / "book.json").read_text())
    assert str(key(1).peer_id) in book["peers"]
    # Nothing left behind: no task, no unclosed socket.
    await asyncio.sleep(0)
    assert set(asyncio.all_tasks()) <= before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gc.collect()


async def test_stop_without_start_and_identity() -> None:
    node = Node(make_config(3))
    assert node.peer_id == key(3).peer_id
    assert str(node.peer_id).startswith("12D3KooW")
    assert node.public_key == key(3).public_key.data
    assert node.version == glueberry.current_version()
    assert str(node.version) == "1.2.9"
    assert node.version.compatible(glueberry.ProtocolVersion.parse("1.1.0"))
    assert not node.version.compatible(glueberry.ProtocolVersion(2, 0, 0))
    await node.stop()
    with pytest.raises(glueberry.NodeStateError):
        await node.start()


async def test_start_failure_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "book.json").write_text("not json")
    node = Node(glueberry.Config(key(0), tmp_path / "book.json", [LOOPBACK]))
    with pytest.raises(glueberry.AddressBookCorrupt):
        await node.start()
    assert (tmp_path / "book.json").read_text() == "not json"
    assert not node.is_running


async def test_identity_files(tmp_path: Path) -> None:
    k = glueberry.generate_identity()
    glueberry.save_identity(k, tmp_path / "id.key")
    assert (tmp_path / "id.key").stat().st_mode & 0o777 == 0o600
    assert glueberry.load_identity(tmp_path / "id.key").peer_id == k.peer_id
    with pytest.raises(FileExistsError):
        glueberry.save_identity(k, tmp_path / "id.key")


# --- address book -------------------------------------------------------------------------


async def test_address_book_operations(tmp_path: Path) -> None:
    async with running_nodes(1, books=tmp_path) as (a,):
        p1, p2 = key(1).peer_id, key(2).peer_id
        entry = a.add_peer(p1, ["/ip4/127.0.0.1/tcp/4001"], {"role": "x"})
        assert entry.metadata == {"role": "x"}
        assert a.get_peer(str(p1)).multiaddrs == ("/ip4/127.0.0.1/tcp/4001",)
        assert [e.peer_id for e in a.list_peers()] == [p1]
        # Blacklisting works for unknown peers and hides them from list_peers.
        a.blacklist_peer(p2)
        assert a.get_peer(p2).blacklisted
        assert [e.peer_id for e in a.list_peers()] == [p1]
        with pytest.raises(glueberry.PeerBlacklisted):
            a.add_peer(p2, [])
        with pytest.raises(glueberry.PeerBlacklisted):
            await a.connect(p2)
        a.unblacklist_peer(p2)
        a.add_peer(p2, ["/ip4/127.0.0.1/tcp/4002"])
        a.remove_peer(p1)
        with pytest.raises(glueberry.PeerNotFound):
            a.get_peer(p1)
        with pytest.raises(glueberry.PeerNotFound):
            a.remove_peer(p1)
        with pytest.raises(glueberry.ResourceLimitExceeded):
            a.add_peer(p1, [], {"k": "v" * 5000})
        with pytest.raises(glueberry.PeerNotFound):
            await a.connect(key(5).peer_id)
        with pytest.raises(glueberry.ConfigError):
            a.get_peer("not-a-peer-id")


# --- connections and events ------------------------------------------------------------------


async def test_connect_events_and_listener_sees_handshake_only() -> None:
    async with running_nodes(2) as (a, b):
        ea, eb = a.subscribe_events(), b.subscribe_events()
        a.add_peer(b.peer_id, b.addrs)
        await a.connect(b.peer_id)
        assert a.connection_state(b.peer_id) is S.CONNECTED
        assert a.is_outbound(b.peer_id)
        assert states(await wait_state(ea, b.peer_id, S.CONNECTED)) == [S.CONNECTING, S.CONNECTED]
        await a.connect(b.peer_id)  # already connected: returns at once
        # A Go listener notices the peer only when the handshake stream opens; so do we.
        await asyncio.sleep(0.05)
        assert b.connection_state(a.peer_id) is S.DISCONNECTED
        assert len(eb) == 0
        await a.send(b.peer_id, glueberry.HANDSHAKE_STREAM, b"hello")
        ev = await next_event(eb)
        assert (ev.peer_id, ev.state, ev.error) == (a.peer_id, S.CONNECTED, None)
        assert not b.is_outbound(a.peer_id)
        msg = await b.messages().get()
        assert (msg.peer_id, msg.stream_name, msg.data) == (a.peer_id, "handshake", b"hello")
        # The listener's reply goes out on the stream the dialer opened.
        await b.send(a.peer_id, "handshake", b"hi")
        assert (await a.messages().get()).data == b"hi"
        assert b._channels is not None and b._channels.stream_count(a.peer_id) == 1


async def test_disconnect_is_seen_by_the_remote_and_the_dialer_reconnects() -> None:
    clock = glueberry.testing.FakeClock()
    async with running_nodes(2, clock=clock) as (a, b):
        await establish_pair(a, b)
        ea, eb = a.subscribe_events(), b.subscribe_events()
        # The listener drops the dialer: the dialer notices (Go never does) ...
        await b.disconnect(a.peer_id)
        assert states(await wait_state(eb, a.peer_id, S.DISCONNECTED)) == [S.DISCONNECTED]
        seen = await wait_state(ea, b.peer_id, S.RECONNECTING)
        assert states(seen) == [S.DISCONNECTED, S.RECONNECTING]
        assert isinstance(seen[0].error, glueberry.ConnectionLost)
        # ... and, having dialled, reconnects after the backoff: Reconnecting -> Connected.
        await clock.advance(1.0)
        await wait_state(ea, b.peer_id, S.CONNECTED)
        assert a.connection_state(b.peer_id) is S.CONNECTED
        # The handshake can be redone and finalized (Go stays Reconnecting, §3.9.1).
        await establish_pair(a, b)


async def test_local_disconnect_stops_everything_and_is_idempotent() -> None:
    async with running_nodes(2) as (a, b):
        await establish_pair(a, b)
        ea = a.subscribe_events()
        await a.disconnect(b.peer_id)
        assert (await next_event(ea)).state is S.DISCONNECTED
        await a.disconnect(b.peer_id)
        await a.disconnect(key(9).peer_id)  # unknown: nothing to do
        assert len(ea) == 0
        with pytest.raises(glueberry.LocalProtocolError):  # key dropped with the session
            await a.send(b.peer_id, "messages", b"x")
        await wait_for(lambda: b.connection_state(a.peer_id) is S.DISCONNECTED)


async def test_remove_peer_disconnects() -> None:
    async with running_nodes(2) as (a, b):
        await establish_pair(a, b)
        a.remove_peer(b.peer_id)
        assert a.connection_state(b.peer_id) is S.DISCONNECTED
        await wait_for(lambda: not a.host.connections(b.peer_id), what="connection closed")
        await wait_for(lambda: b.connection_state(a.peer_id) is S.DISCONNECTED)


async def test_simultaneous_dial_both_succeed_and_handshake() -> None:
    async with running_nodes(2) as (a, b):
        a.add_peer(b.peer_id, b.addrs)
        b.add_peer(a.peer_id, a.addrs)
        await asyncio.gather(a.connect(b.peer_id), b.connect(a.peer_id))
        assert a.connection_state(b.peer_id) is S.CONNECTED
        assert b.connection_state(a.peer_id) is S.CONNECTED
        # Both ran the handshake as dialers; the duplicate streams settle on one.
        async with asyncio.timeout(10):
            await asyncio.gather(
                glueberry.handshake.establish(a, b.peer_id, ["m"]),
                glueberry.handshake.establish(b, a.peer_id, ["m"]),
            )
        await asyncio.gather(a.send(b.peer_id, "m", b"from a"), b.send(a.peer_id, "m", b"from b"))
        assert (await a.messages().get()).data == b"from b"
        assert (await b.messages().get()).data == b"from a"


async def test_connect_failure_events_and_reconnect_budget() -> None:
    clock = glueberry.testing.FakeClock()
    async with running_nodes(
        1, clock=clock, reconnect_max_attempts=2, reconnect_initial_backoff=1.0
    ) as (a,):
        ghost = key(7).peer_id
        a.add_peer(ghost, ["/ip4/127.0.0.1/tcp/9"])  # nothing listens there
        ea = a.subscribe_events()
        with pytest.raises(glueberry.ConnectError):
            await a.connect(ghost)
        seen = await wait_state(ea, ghost, S.RECONNECTING)
        assert states(seen) == [S.CONNECTING, S.DISCONNECTED, S.RECONNECTING]
        assert isinstance(seen[1].error, glueberry.ConnectError)
        for _ in range(2):  # two failed attempts: 1 s, then 2 s
            await clock.advance(2.0)
            await asyncio.sleep(0.05)
        seen = await wait_state(ea, ghost, S.DISCONNECTED)
        assert states(seen) == [S.DISCONNECTED]  # failed attempts publish nothing
        assert "max reconnection attempts" in str(seen[0].error)
        assert a.peer_statistics(ghost) is not None
        assert a.peer_statistics(ghost).failure_count >= 1  # type: ignore[union-attr]


async def test_cancel_reconnection_emits_and_stops() -> None:
    clock = glueberry.testing.FakeClock()
    async with running_nodes(1, clock=clock) as (a,):
        ghost = key(7).peer_id
        a.add_peer(ghost, ["/ip4/127.0.0.1/tcp/9"])
        ea = a.subscribe_events()
        with pytest.raises(glueberry.ConnectError):
            await a.connect(ghost)
        await wait_state(ea, ghost, S.RECONNECTING)
        assert a.cancel_reconnection(ghost) is True
        assert (await next_event(ea)).state is S.DISCONNECTED
        assert a.cancel_reconnection(ghost) is False
        await clock.advance(600)
        assert len(ea) == 0
        assert a.connection_state(ghost) is S.DISCONNECTED


async def test_auto_connect_on_start_and_add_peer(tmp_path: Path) -> None:
    async with running_nodes(1, first_seed=1) as (b,):
        book = tmp_path / "a.json"
        async with Node(glueberry.Config(key(0), book, [LOOPBACK])) as a:
            ea = a.subscribe_events()
            a.add_peer(b.peer_id, b.addrs)  # auto-connects
            await wait_state(ea, b.peer_id, S.CONNECTED)
        async with Node(glueberry.Config(key(0), book, [LOOPBACK])) as a2:
            await wait_for(lambda: a2.connection_state(b.peer_id) is S.CONNECTED)
            assert a2.get_peer(b.peer_id).last_seen is not None


# --- handshake and messaging ------------------------------------------------------------------


async def test_handshake_api_errors() -> None:
    async with running_nodes(3) as (a, b, c):
        with pytest.raises(glueberry.InvalidTransition):
            await a.finalize_handshake(b.peer_id)
        a.add_peer(b.peer_id, b.addrs)
        await a.connect(b.peer_id)
        with pytest.raises(glueberry.HandshakeError):  # prepare_streams first
            await a.finalize_handshake(b.peer_id)
        with pytest.raises(glueberry.LocalProtocolError):
            await a.prepare_streams(b.peer_id, b.public_key, ["handshake"])
        with pytest.raises(glueberry.LocalProtocolError):
            await a.prepare_streams(b.peer_id, b.public_key, [])
        with pytest.raises(glueberry.LocalProtocolError):
            await a.prepare_streams(b.peer_id, b.public_key, ["bad name"])
        with pytest.raises(TypeError):
            await a.prepare_streams(b.peer_id, b.public_key, "messages")
        with pytest.raises(glueberry.PeerIdMismatch):  # identity binding
            await a.prepare_streams(b.peer_id, c.public_key, ["m"])
        with pytest.raises(glueberry.SecurityError):
            await a.prepare_streams(b.peer_id, b"\x01" * 31, ["m"])
        with pytest.raises(glueberry.LocalProtocolError):  # not prepared
            await a.send(b.peer_id, "m", b"x")
        with pytest.raises(glueberry.ConnectionLost):
            await a.send(c.peer_id, "handshake", b"x")
        with pytest.raises(glueberry.MessageTooLarge) as info:
            await a.send(b.peer_id, "handshake", bytes(a.config.max_message_size + 1))
        assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE
        # The key may be given as bytes, a glueberry key or a cryptography key.
        await a.prepare_streams(b.peer_id, key(1).public_key, ["m"])
        await a.complete_handshake(str(b.peer_id), key(1).cryptography_key.public_key(), ["n"])
        assert a.connection_state(b.peer_id) is S.ESTABLISHED
        with pytest.raises(glueberry.InvalidTransition):
            await a.finalize_handshake(b.peer_id)


async def test_messages_both_ways_several_streams_and_large() -> None:
    async with running_nodes(2, max_message_size=2 << 20) as (a, b):
        await establish_pair(a, b, ["alpha", "beta", "γ-δ"])
        big = bytes(range(256)) * 4096  # 1 MiB
        await a.send(b.peer_id, "alpha", b"a1")
        await a.send(b.peer_id, "beta", big)
        await b.send(a.peer_id, "γ-δ", big)
        await b.send(a.peer_id, "alpha", b"")
        got_b = {(m.stream_name, m.data) for m in [await b.messages().get() for _ in range(2)]}
        assert got_b == {("alpha", b"a1"), ("beta", big)}
        got_a = {(m.stream_name, m.data) for m in [await a.messages().get() for _ in range(2)]}
        assert got_a == {("γ-δ", big), ("alpha", b"")}
        # One stream per (peer, name), used both ways.
        assert a._channels is not None and a._channels.stream_count(b.peer_id, "alpha") == 1
        assert a.messages_sent(b.peer_id) == 3 + 2  # Hello, PubKey, Complete (as in Go) + 2
        stats = b.peer_statistics(a.peer_id)
        assert stats is not None and stats.connected and not stats.is_outbound
        assert stats.stream_stats["beta"].bytes_received == len(big)
        assert stats.connection_count == 1
        assert set(a.all_peer_statistics()) == {b.peer_id}


async def test_message_order_and_concurrent_senders() -> None:
    async with running_nodes(2) as (a, b):
        await establish_pair(a, b)
        n = 2000

        async def sender(tag: int) -> None:
            for i in range(n):
                await a.send(b.peer_id, "messages", b"%d:%d" % (tag, i))

        last = dict.fromkeys(range(4), -1)

        async def receiver() -> None:
            # Concurrently with the senders: 8000 messages are more than the receive queue
            # and the stream window hold, so a sender would (rightly) block on backpressure.
            for _ in range(4 * n):
                m = await b.messages().get()
                tag, i = map(int, m.data.split(b":"))
                assert i == last[tag] + 1
                last[tag] = i

        await asyncio.gather(receiver(), *(sender(t) for t in range(4)))
        assert last == dict.fromkeys(range(4), n - 1)


async def test_backpressure_blocks_sender_without_loss() -> None:
    async with running_nodes(2, message_buffer_size=16) as (a, b):
        await establish_pair(a, b)
        payload = bytes(16 * 1024)
        sent = 0

        async def flood() -> None:
            nonlocal sent
            for _ in range(4000):  # 64 MiB: far beyond queue + yamux windows
                await a.send(b.peer_id, "messages", payload)
                sent += 1

        task = asyncio.create_task(flood())
        await asyncio.sleep(1.0)
        stalled = sent
        assert stalled < 4000  # the sender is blocked ...
        await asyncio.sleep(0.3)
        assert sent == stalled  # ... and stays blocked while nobody reads
        assert len(b.messages()) <= 16 + 2048  # bounded: capacity + one read's batch
        for _ in range(4000):
            m = await asyncio.wait_for(b.messages().get(), 10)
            assert m.data == payload
        await task
        assert sent == 4000


async def test_handshake_auto_mode_and_events_filters() -> None:
    async with running_nodes(3) as (a, b, c):
        est = a.events_for_states(S.ESTABLISHED)
        per_b = a.events_for_peer(b.peer_id)
        filt = a.filtered_events(EventFilter(peer_ids=[c.peer_id], states=[S.CONNECTED]))
        async with glueberry.handshake.auto(a, ["chat"]) as auto:
            for other in (b, c):
                other.add_peer(a.peer_id, a.addrs)
                await glueberry.handshake.establish(other, a.peer_id, ["chat"])
            await wait_for(lambda: len(auto.established) == 2)
        assert {(await next_event(est)).peer_id for _ in range(2)} == {b.peer_id, c.peer_id}
        assert states([await next_event(per_b) for _ in range(2)]) == [S.CONNECTED, S.ESTABLISHED]
        assert (await next_event(filt)).peer_id == c.peer_id
        assert len(filt) == 0
        async with est:
            pass
        assert est.closed
        await b.send(a.peer_id, "chat", b"hi from b")
        m = await a.messages().get()
        assert (m.peer_id, m.stream_name, m.data) == (b.peer_id, "chat", b"hi from b")


async def test_intercept_handshake_takes_queued_messages() -> None:
    async with running_nodes(2) as (a, b):
        a.add_peer(b.peer_id, b.addrs)
        await a.connect(b.peer_id)
        await a.send(b.peer_id, "handshake", b"early")
        await wait_for(lambda: len(b.messages()) == 1)
        async with b.intercept_handshake(a.peer_id) as inbox:
            assert len(b.messages()) == 0
            assert (await inbox.get()).data == b"early"
            await a.send(b.peer_id, "handshake", b"later")
            assert (await inbox.get()).data == b"later"
            with pytest.raises(glueberry.LocalProtocolError):
                b.intercept_handshake(a.peer_id)
        await a.send(b.peer_id, "handshake", b"normal again")
        assert (await b.messages().get()).data == b"normal again"


async def test_messages_iteration_ends_after_stop() -> None:
    async with running_nodes(2) as (a, b):
        await establish_pair(a, b)
        await a.send(b.peer_id, "messages", b"last")
        await wait_for(lambda: len(b.messages()) == 1)
        events = b.events()
    got = [m.data async for m in b.messages()]
    assert got == [b"last"]
    assert [e async for e in events]  # drained, then ends
    with pytest.raises(glueberry.NodeStateError):
        b.subscribe_events()


async def test_health() -> None:
    node = Node(make_config(0))
    assert not node.health().healthy
    async with running_nodes(2) as (a, b):
        h = a.health()
        assert h.healthy
        assert [c.name for c in h.checks] == [
            "node_started",
            "host_running",
            "address_book",
            "connections",
        ]
        assert h.to_dict()["checks"][3]["message"] == "no active connections"
        a.add_peer(b.peer_id, b.addrs)
        await a.connect(b.peer_id)
        assert "1 active" in a.health().checks[3].message
    assert not a.health().healthy


# --- cancellation, lossless-by-default switches, event overflow ---------------------------------


async def test_cancelled_send_under_backpressure_resets_then_recovers() -> None:
    async with running_nodes(2, message_buffer_size=4) as (a, b):
        await establish_pair(a, b)
        payload = bytes(64 * 1024)

        async def flood() -> None:
            while True:
                await a.send(b.peer_id, "messages", payload)

        task = asyncio.create_task(flood())
        await asyncio.sleep(0.5)  # b does not read: a blocks on the yamux window
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The half-written stream was reset; the next send opens a new one.
        received = 0
        async with asyncio.timeout(10):
            while len(b.messages()) or received == 0:
                await b.messages().get()
                received += 1
        await a.send(b.peer_id, "messages", b"after")
        async with asyncio.timeout(10):
            while (await b.messages().get()).data != b"after":
                pass


async def test_disable_backpressure_returns_without_waiting() -> None:
    async with running_nodes(2, message_buffer_size=2, disable_backpressure=True) as (a, b):
        await establish_pair(a, b)
        payload = bytes(64 * 1024)
        async with asyncio.timeout(5):
            for _ in range(200):  # 12.5 MiB while b reads nothing: buffered, not blocking
                await a.send(b.peer_id, "messages", payload)
        for _ in range(200):
            assert (await asyncio.wait_for(b.messages().get(), 10)).data == payload


async def test_blocking_event_subscription_keeps_order() -> None:
    async with running_nodes(2, event_buffer_size=1, event_overflow="block") as (a, b):
        sub = a.subscribe_events()
        a.add_peer(b.peer_id, b.addrs)
        await establish_pair(a, b)  # 3+ events through a 1-slot blocking subscription
        got = [(await next_event(sub)).state for _ in range(3)]
        assert got == [S.CONNECTING, S.CONNECTED, S.ESTABLISHED]
        assert a.connection_state(b.peer_id) is S.ESTABLISHED


async def test_is_outbound_unknown_peer() -> None:
    async with running_nodes(1) as (a,):
        with pytest.raises(glueberry.PeerNotFound):
            a.is_outbound(key(4).peer_id)
        assert a.cancel_reconnection(key(4).peer_id) is False
        assert a.peer_statistics(key(4).peer_id) is None
        assert a.messages_sent(key(4).peer_id) == 0


async def test_listener_may_speak_first_between_python_nodes() -> None:
    async with running_nodes(2) as (a, b):
        a.add_peer(b.peer_id, b.addrs)
        await a.connect(b.peer_id)
        assert b.connection_state(a.peer_id) is S.DISCONNECTED
        assert a.peer_addrs(b.peer_id) == b.addrs
        await wait_for(lambda: bool(b.host.connections(a.peer_id)), what="b sees the connection")
        eb = b.subscribe_events()
        # b has not heard from a yet, but holds a's connection: it starts the handshake.
        await b.send(a.peer_id, "handshake", b"listener first")
        assert (await next_event(eb)).state is S.CONNECTED
        assert not b.is_outbound(a.peer_id)
        assert (await a.messages().get()).data == b"listener first"
        async with asyncio.timeout(10):
            await asyncio.gather(
                glueberry.handshake.establish(a, b.peer_id, ["m"]),
                glueberry.handshake.establish(b, a.peer_id, ["m"], connect=False),
            )
        await b.send(a.peer_id, "m", b"encrypted, listener first")
        assert (await a.messages().get()).data == b"encrypted, listener first"


async def test_handshake_messages_are_never_dropped_by_taps_or_auto() -> None:
    from glueberry.handshake import encode_complete, encode_hello, encode_pubkey

    async with running_nodes(2) as (a, b):
        a.add_peer(b.peer_id, b.addrs)
        await a.connect(b.peer_id)
        inbox = a.intercept_handshake(b.peer_id)
        async with glueberry.handshake.auto(b, ["m"]) as auto:
            # a runs the exchange by hand and sends one more message right behind its
            # Complete, on the same stream: it reaches b's session after its last step (or
            # b's tap after the session), and b's auto handshake hands it to the application.
            await a.send(b.peer_id, "handshake", encode_hello())
            assert (await inbox.get()).data == encode_hello()
            assert (await inbox.get()).data[:5] == bytes.fromhex("1481011420")
            await a.send(b.peer_id, "handshake", encode_pubkey(a.public_key))
            await a.prepare_streams(b.peer_id, b.public_key, ["m"])
            await a.send(b.peer_id, "handshake", encode_complete())
            await a.send(b.peer_id, "handshake", b"after established")
            assert (await inbox.get()).data == encode_complete()
            await wait_for(lambda: auto.established == [a.peer_id])
            assert (await b.messages().get()).data == b"after established"
            assert b.connection_state(a.peer_id) is S.ESTABLISHED
            # A tap closed with unread messages hands them back to messages().
            await b.send(a.peer_id, "handshake", b"unread")
            await wait_for(lambda: len(inbox) == 1)
            inbox.close()
            assert (await a.messages().get()).data == b"unread"
