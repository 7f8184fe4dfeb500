"""Ping machines: bytes in, events out (spec ping/ping.md)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.proto.ping import (
    PING_SIZE,
    PingDialer,
    PingResponder,
    PingStreamEnded,
    PingStreamLimiter,
    PingTimedOut,
    PongReceived,
)

P1 = bytes(range(32))
P2 = bytes(range(100, 132))


def _feed(machine: PingDialer | PingResponder, data: bytes, now: float, split: bool) -> None:
    if split:
        for i in range(len(data)):
            machine.receive_data(data[i : i + 1], now)
    else:
        machine.receive_data(data, now)


@pytest.mark.parametrize("split", [False, True])
def test_round_trip_measures_rtt(split: bool) -> None:
    d, r = PingDialer(), PingResponder()
    for i, payload in enumerate((P1, P2)):
        t0 = 10.0 * i
        d.send_ping(payload, now=t0)
        wire = d.data_to_send()
        assert wire == payload
        _feed(r, wire, t0, split)
        echo = r.data_to_send()
        assert echo == payload
        assert d.get_timer() == pytest.approx(t0 + 10.0)
        _feed(d, echo, t0 + 0.25, split)
        ev = d.next_event()
        assert ev == PongReceived(rtt=0.25, payload=payload)
        assert d.get_timer() is None
    assert r.echoed == 2
    r.receive_data(b"", 30.0)
    assert r.next_event() == PingStreamEnded(echoed=2, discarded=0)
    d.receive_data(b"", 30.0)
    assert d.finished


def test_responder_drops_partial_payload_at_eof() -> None:
    r = PingResponder()
    r.receive_data(P1 + P2[:31], 0.0)
    assert r.data_to_send() == P1
    r.receive_data(b"", 0.0)
    assert list(r.events()) == [PingStreamEnded(echoed=1, discarded=31)]
    assert r.data_to_send() == b""
    with pytest.raises(RemoteProtocolError):
        r.receive_data(b"x", 0.0)


@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=20))
def test_responder_echoes_whole_payloads_whatever_the_split(data: bytes, cuts: list[int]) -> None:
    r = PingResponder()
    pos = 0
    out = b""
    for c in [*cuts, len(data)]:
        chunk = data[pos : pos + c]
        pos += c
        if chunk:
            r.receive_data(chunk, 0.0)
            out += r.data_to_send()
    whole = len(data) - len(data) % PING_SIZE
    assert out == data[:whole]
    assert r.echoed == whole // PING_SIZE


@pytest.mark.parametrize("split", [False, True])
def test_mismatched_echo_is_a_remote_error(split: bool) -> None:
    d = PingDialer()
    d.send_ping(P1, 0.0)
    d.data_to_send()
    with pytest.raises(RemoteProtocolError):
        _feed(d, P2, 0.1, split)
    assert d.finished
    with pytest.raises(LocalProtocolError):
        d.send_ping(P1, 1.0)


def test_eof_before_echo_and_unsolicited_bytes() -> None:
    d = PingDialer()
    d.send_ping(P1, 0.0)
    d.receive_data(P1[:5], 0.0)
    with pytest.raises(RemoteProtocolError):
        d.receive_data(b"", 0.0)
    d2 = PingDialer()
    with pytest.raises(RemoteProtocolError):
        d2.receive_data(b"\x00", 0.0)
    d3 = PingDialer()
    d3.send_ping(P1, 0.0)
    with pytest.raises(RemoteProtocolError):
        d3.receive_data(P1 + b"\x00", 0.0)


def test_local_misuse() -> None:
    d = PingDialer()
    with pytest.raises(LocalProtocolError):
        d.send_ping(b"short", 0.0)
    d.send_ping(P1, 0.0)
    with pytest.raises(LocalProtocolError):
        d.send_ping(P2, 0.0)
    with pytest.raises(LocalProtocolError):
        PingDialer(timeout=0)


def test_timeout() -> None:
    d = PingDialer(timeout=2.0)
    d.send_ping(P1, 5.0)
    d.handle_timer(6.0)
    assert d.next_event() is None
    d.handle_timer(7.5)
    assert d.next_event() == PingTimedOut(waited=2.5)
    assert d.finished and not d.outstanding
    assert d.get_timer() is None


def test_limiter_caps_concurrent_streams_per_peer() -> None:
    lim = PingStreamLimiter()
    assert lim.try_acquire("a") and lim.try_acquire("a")
    assert not lim.try_acquire("a")
    assert lim.try_acquire("b")
    assert lim.refused == 1
    lim.release("a")
    assert lim.active("a") == 1
    assert lim.try_acquire("a")
    lim.release("a")
    lim.release("a")
    lim.release("a")
    assert lim.active("a") == 0
    with pytest.raises(LocalProtocolError):
        PingStreamLimiter(0)
