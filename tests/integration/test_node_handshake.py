"""glueberry.handshake: the §7.7 cramberry payloads, the sans-I/O machine, and the drivers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

import glueberry
import glueberry.testing
from glueberry import ConnectionState
from glueberry.handshake import (
    Complete,
    Finalize,
    HandshakeMachine,
    Hello,
    Prepare,
    PubKey,
    Send,
    decode_message,
    encode_complete,
    encode_hello,
    encode_pubkey,
)
from tests.integration.node_harness import key, running_nodes, wait_for, wait_state

S = ConnectionState
PK_A = key(0).public_key.data
PK_B = key(1).public_key.data
PID_A = key(0).peer_id
PID_B = key(1).peer_id


# --- the payloads -------------------------------------------------------------------------


def test_golden_payloads() -> None:
    assert encode_hello() == bytes.fromhex("14800110010000")
    assert encode_pubkey(PK_A) == bytes.fromhex("1481011420") + PK_A + b"\x00\x00"
    assert encode_complete(True) == bytes.fromhex("14820110010000")
    assert encode_complete(False) == bytes.fromhex("1482010000")
    assert decode_message(encode_hello()) == Hello(version=1)
    assert decode_message(encode_pubkey(PK_B)) == PubKey(public_key=PK_B)
    assert decode_message(encode_complete(True)) == Complete(success=True)
    assert decode_message(encode_complete(False)) == Complete(success=False)
    assert decode_message(bytes.fromhex("1480010000")) == Hello(version=0)
    # Unknown fields are skipped by wire type (cramberry forward compatibility).
    assert decode_message(bytes.fromhex("1480011001 2805 3603616263 0000")) == Hello(version=1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x14",
        bytes.fromhex("15800110010000"),  # not an envelope
        bytes.fromhex("14ff0110010000"),  # unknown type
        bytes.fromhex("148001100100"),  # missing end of envelope
        bytes.fromhex("14800110010000ff"),  # trailing byte
        bytes.fromhex("1481011430") + b"\x00" * 8,  # bytes past the end
        bytes.fromhex("14800114020102 0000"),  # Hello.Version as bytes
        bytes.fromhex("14810110010000"),  # PubKey as a varint
        bytes.fromhex("1480011180010000"),  # extended tag
        bytes.fromhex("14800110"),  # truncated varint
        bytes.fromhex("14800110ffffffffffffffffffff7f0000"),  # over-long varint
        b"\x14\x80\x01" + b"\x00" * 300,  # too long
    ],
)
def test_malformed_payloads_raise_handshake_error(data: bytes) -> None:
    with pytest.raises(glueberry.HandshakeError):
        decode_message(data)


@given(st.binary(max_size=80))
def test_decoder_never_raises_anything_else(data: bytes) -> None:
    try:
        decode_message(data)
    except glueberry.HandshakeError:
        pass


# --- the machine --------------------------------------------------------------------------


def _sends(actions: Sequence[object]) -> list[bytes]:
    return [a.payload for a in actions if isinstance(a, Send)]


def test_symmetric_exchange_between_two_machines() -> None:
    a, b = HandshakeMachine(PID_B, PK_A), HandshakeMachine(PID_A, PK_B)
    to_b, to_a = _sends(a.start()), _sends(b.start())
    log: list[str] = []
    for _ in range(10):
        nxt_b, nxt_a = [], []
        for p in to_b:
            for act in b.receive(p):
                if isinstance(act, Send):
                    nxt_a.append(act.payload)
                else:
                    log.append(f"b:{type(act).__name__}")
        for p in to_a:
            for act in a.receive(p):
                if isinstance(act, Send):
                    nxt_b.append(act.payload)
                else:
                    log.append(f"a:{type(act).__name__}")
        to_a, to_b = nxt_a, nxt_b
    assert a.done and b.done
    assert sorted(log) == ["a:Finalize", "a:Prepare", "b:Finalize", "b:Prepare"]
    assert a.peer_public_key == PK_B and b.peer_public_key == PK_A


def test_go_listener_sequence_and_hello_answered_once() -> None:
    """We dial a Go peer: it answers our Hello with Hello + PubKey (§1.6)."""
    m = HandshakeMachine(PID_B, PK_A)
    assert _sends(m.start()) == [encode_hello()]
    assert m.receive(encode_hello()) == [Send(payload=encode_pubkey(PK_A))]
    assert m.receive(encode_hello()) == []  # answered once: no ping-pong
    acts = m.receive(encode_pubkey(PK_B))
    assert acts == [Prepare(public_key=PK_B), Send(payload=encode_complete())]
    assert m.receive(encode_complete()) == [Finalize()]
    assert m.done
    assert m.receive(encode_complete()) == []  # a repeated Complete is ignored


def test_listener_answers_hello_with_hello_and_pubkey() -> None:
    m = HandshakeMachine(PID_B, PK_A)  # never started: the peer spoke first
    assert _sends(m.receive(encode_hello())) == [encode_hello(), encode_pubkey(PK_A)]
    # Complete before PubKey: finalize waits for the key.
    assert m.receive(encode_complete()) == []
    assert m.receive(encode_pubkey(PK_B)) == [
        Prepare(public_key=PK_B),
        Send(payload=encode_complete()),
        Finalize(),
    ]


def test_pubkey_of_another_identity_is_refused() -> None:
    m = HandshakeMachine(PID_B, PK_A)
    m.start()
    with pytest.raises(glueberry.PeerIdMismatch):
        m.receive(encode_pubkey(key(5).public_key.data))
    assert m.failed
    with pytest.raises(glueberry.HandshakeError):
        m.receive(encode_hello())
    m2 = HandshakeMachine(PID_B, PK_A)
    with pytest.raises(glueberry.HandshakeError):
        m2.receive(encode_pubkey(PK_B[:31]))
    m3 = HandshakeMachine(PID_B, PK_A)
    m3.receive(encode_pubkey(PK_B))
    with pytest.raises(glueberry.HandshakeError):
        m3.receive(encode_pubkey(PK_A))
    m4 = HandshakeMachine(PID_B, PK_A)
    with pytest.raises(glueberry.HandshakeError):
        m4.receive(encode_complete(False))


# --- the drivers --------------------------------------------------------------------------


async def test_establish_fails_on_a_foreign_key_and_disconnects() -> None:
    async with running_nodes(2) as (a, b):
        ea = a.subscribe_events()
        a.add_peer(b.peer_id, b.addrs)

        async def impostor() -> None:  # b claims another identity's key
            async with b.intercept_handshake(a.peer_id) as inbox:
                await inbox.get()
                await b.send(a.peer_id, "handshake", encode_hello())
                await b.send(a.peer_id, "handshake", encode_pubkey(key(5).public_key.data))
                await asyncio.sleep(5)

        task = asyncio.create_task(impostor())
        with pytest.raises(glueberry.PeerIdMismatch):
            await glueberry.handshake.establish(a, b.peer_id, ["m"], timeout=5)
        assert (await wait_state(ea, b.peer_id, S.DISCONNECTED))[-1].state is S.DISCONNECTED
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_establish_timeout_and_connection_loss() -> None:
    async with running_nodes(2) as (a, b):
        a.add_peer(b.peer_id, b.addrs)
        with pytest.raises(glueberry.HandshakeTimeout):  # b never answers
            await glueberry.handshake.establish(a, b.peer_id, ["m"], timeout=0.3)
        await wait_for(lambda: b.connection_state(a.peer_id) is S.CONNECTED)

        async def drop_soon() -> None:
            await asyncio.sleep(0.2)
            await b.disconnect(a.peer_id)

        task = asyncio.create_task(drop_soon())
        with pytest.raises(glueberry.ConnectionLost):
            await glueberry.handshake.establish(a, b.peer_id, ["m"], timeout=5)
        await task


async def test_node_handshake_timeout_ends_establish() -> None:
    clock = glueberry.testing.FakeClock()
    async with running_nodes(2, clock=clock, handshake_timeout=5.0) as (a, b):
        a.add_peer(b.peer_id, b.addrs)
        task = asyncio.create_task(glueberry.handshake.establish(a, b.peer_id, ["m"]))
        await wait_for(lambda: a.connection_state(b.peer_id) is S.CONNECTED)
        await clock.advance(5.0)
        with pytest.raises(glueberry.HandshakeTimeout):
            await asyncio.wait_for(task, 5)


async def test_auto_reports_failures_and_establish_on_established_returns() -> None:
    failures: list[object] = []
    async with running_nodes(2) as (a, b):
        async with glueberry.handshake.auto(b, ["m"], on_failure=lambda p, e: failures.append(e)):
            a.add_peer(b.peer_id, b.addrs)
            await a.connect(b.peer_id)
            await a.send(b.peer_id, "handshake", b"\x00garbage")
            await wait_for(lambda: bool(failures))
        assert isinstance(failures[0], glueberry.HandshakeError)
        # b dropped a; a, which dialled, notices and starts reconnecting.
        await wait_for(lambda: a.connection_state(b.peer_id) is S.RECONNECTING)
        async with glueberry.handshake.auto(b, ["m"]):
            await glueberry.handshake.establish(a, b.peer_id, ["m"])
            await glueberry.handshake.establish(a, b.peer_id, ["m"])  # no-op now
        assert a.connection_state(b.peer_id) is S.ESTABLISHED
