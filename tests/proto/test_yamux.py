"""YamuxSession: bytes in, events and bytes out (every input test also runs 1 byte at a time)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glueberry.errors import ConfigError, ConnectionLost, LocalProtocolError, RemoteProtocolError
from glueberry.proto.yamux import (
    ConnectionTerminated,
    DataReceived,
    GoAwayReceived,
    PingAcknowledged,
    SendWindowAvailable,
    StreamAcknowledged,
    StreamEnded,
    StreamOpened,
    StreamReset,
    YamuxConfig,
    YamuxSession,
)
from glueberry.proto.yamux_frames import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    INITIAL_STREAM_WINDOW,
    MAX_U32,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    Flag,
    FrameType,
    Header,
    decode_header,
    encode_header,
)
from tests.proto.yamux_testutil import (
    connected_pair,
    data,
    feed,
    frame,
    go_away,
    parse_frames,
    ping,
    pump,
    window,
)

KIB = 1024
MIB = 1024 * 1024


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def bytewise(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def server() -> YamuxSession:
    return YamuxSession(False, YamuxConfig(), now=0.0)


def client() -> YamuxSession:
    return YamuxSession(True, YamuxConfig(), now=0.0)


def expect_protocol_error(session: YamuxSession, buf: bytes, *, bytewise: bool) -> list[object]:
    """Feed ``buf``; it must end in RemoteProtocolError, GoAway(1) and termination."""
    events: list[object] = []
    with pytest.raises(RemoteProtocolError) as info:
        if bytewise:
            for i in range(len(buf)):
                session.receive_data(buf[i : i + 1], 0.0)
                events.extend(session.events())
        else:
            session.receive_data(buf, 0.0)
    events.extend(session.events())
    assert info.value.wire_code == 1
    assert session.is_terminated
    assert parse_frames(session.data_to_send())[-1] == (TYPE_GO_AWAY, 0, 0, 1, b"")
    assert isinstance(events[-1], ConnectionTerminated)
    assert events[-1].error is not None
    return events


# --------------------------------------------------------------------------- codec
@given(
    st.sampled_from([0, 1, 2, 3]),
    st.integers(0, 15),
    st.integers(0, MAX_U32),
    st.integers(0, MAX_U32),
)
def test_header_round_trip(ftype: int, flags: int, sid: int, length: int) -> None:
    buf = encode_header(ftype, flags, sid, length)
    assert len(buf) == 12
    assert decode_header(buf) == (
        Header(type=FrameType(ftype), flags=Flag(flags), stream_id=sid, length=length),
        12,
    )
    assert decode_header(buf[:11]) is None


@given(st.binary(min_size=0, max_size=40), st.integers(0, 40))
def test_decode_header_raises_only_remote_protocol_error(buf: bytes, offset: int) -> None:
    try:
        decode_header(buf, offset)
    except RemoteProtocolError:
        pass


@pytest.mark.parametrize(
    ("ftype", "flags", "sid", "length"),
    [(4, 0, 0, 0), (0, 16, 0, 0), (0, 0, -1, 0), (0, 0, 0, MAX_U32 + 1)],
)
def test_encode_header_rejects_out_of_range(ftype: int, flags: int, sid: int, length: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_header(ftype, flags, sid, length)


def test_header_golden_bytes() -> None:
    # WindowUpdate|SYN on stream 1 with delta 0, as go-yamux opens a stream.
    assert encode_header(1, 1, 1, 0).hex() == "000100010000000100000000"


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        YamuxConfig(initial_window=1000)
    with pytest.raises(ConfigError):
        YamuxConfig(initial_window=2 * MIB, max_window=MIB)
    with pytest.raises(ConfigError):
        YamuxConfig(window_growth="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        YamuxConfig(max_frame_payload=10)
    with pytest.raises(ConfigError):
        YamuxConfig(keepalive_interval=0)


# --------------------------------------------------------------------------- opening
def test_client_ids_odd_server_ids_even() -> None:
    c, s = client(), server()
    assert [c.open_stream() for _ in range(3)] == [1, 3, 5]
    assert [s.open_stream() for _ in range(3)] == [2, 4, 6]


def test_open_sends_window_update_syn() -> None:
    c = client()
    sid = c.open_stream()
    assert parse_frames(c.data_to_send()) == [(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0, b"")]
    big = YamuxSession(True, YamuxConfig(initial_window=MIB), now=0.0)
    big.open_stream()
    assert parse_frames(big.data_to_send()) == [(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 768 * KIB, b"")]
    assert big.receive_window(1) == MIB


def test_inbound_stream_accept_and_data_before_ack(bytewise: bool) -> None:
    s = server()
    buf = window(1, 0, FLAG_SYN) + data(1, b"hello") + data(1, b" world")
    assert feed(s, buf, bytewise=bytewise) == [
        StreamOpened(stream_id=1),
        DataReceived(stream_id=1, data=b"hello world"),
    ]
    s.accept_stream(1)
    assert parse_frames(s.data_to_send()) == [(TYPE_WINDOW_UPDATE, FLAG_ACK, 1, 0, b"")]
    s.accept_stream(1)  # idempotent
    assert s.data_to_send() == b""


def test_data_syn_opens_stream(bytewise: bool) -> None:
    s = server()
    events = feed(s, data(3, b"x" * 1000, FLAG_SYN), bytewise=bytewise)
    assert events == [StreamOpened(stream_id=3), DataReceived(stream_id=3, data=b"x" * 1000)]
    assert s.receive_window(3) == INITIAL_STREAM_WINDOW - 1000


def test_ack_received(bytewise: bool) -> None:
    c = client()
    sid = c.open_stream()
    assert c.unacknowledged_outbound == 1
    events = feed(c, window(sid, 0, FLAG_ACK) + data(sid, b"hi"), bytewise=bytewise)
    assert events == [StreamAcknowledged(stream_id=sid), DataReceived(stream_id=sid, data=b"hi")]
    assert c.unacknowledged_outbound == 0


def test_write_to_inbound_stream_acks_implicitly() -> None:
    s = server()
    s.receive_data(window(1, 0, FLAG_SYN), 0.0)
    assert s.send_data(1, b"abc") == 3
    assert parse_frames(s.data_to_send()) == [
        (TYPE_WINDOW_UPDATE, FLAG_ACK, 1, 0, b""),
        (TYPE_DATA, 0, 1, 3, b"abc"),
    ]


def test_data_frame_now_charges_the_window_and_returns_the_header() -> None:
    c, s = client(), server()
    sid = c.open_stream()
    assert c.data_frame_now(sid, 3) is None  # the SYN is still queued: it must go first
    s.receive_data(c.data_to_send(), 0.0)
    s.accept_stream(sid)
    list(s.events())
    header = c.data_frame_now(sid, 3)
    assert header is not None
    assert parse_frames(header + b"abc") == [(TYPE_DATA, 0, sid, 3, b"abc")]
    assert c.send_window(sid) == INITIAL_STREAM_WINDOW - 3
    assert c.data_to_send() == b""  # nothing queued: the caller sends the frame itself
    s.receive_data(header + b"abc", 0.0)
    assert list(s.events()) == [DataReceived(stream_id=sid, data=b"abc")]


def test_data_frame_now_declines_what_send_data_must_handle() -> None:
    c = client()
    sid = c.open_stream()
    c.data_to_send()
    assert c.data_frame_now(sid, 0) is None  # nothing to send
    assert c.data_frame_now(sid, INITIAL_STREAM_WINDOW + 1) is None  # beyond the window
    assert c.data_frame_now(sid, 64 * KIB) is None  # more than one frame
    assert c.data_frame_now(99, 3) is None  # unknown stream
    c.send_data(sid, b"x")
    assert c.data_frame_now(sid, 3) is None  # a frame is queued: order first
    assert c.send_window(sid) == INITIAL_STREAM_WINDOW - 1  # no decline charged anything
    c.data_to_send()
    c.close_stream(sid)
    c.data_to_send()
    assert c.data_frame_now(sid, 3) is None  # half-closed
    s = server()
    s.receive_data(window(1, 0, FLAG_SYN), 0.0)
    assert s.data_frame_now(1, 3) is None  # inbound, not acknowledged yet: send_data ACKs


def test_syn_with_window_delta_grows_send_window(bytewise: bool) -> None:
    s = server()
    feed(s, window(1, 15 * MIB, FLAG_SYN), bytewise=bytewise)
    assert s.send_window(1) == INITIAL_STREAM_WINDOW + 15 * MIB


def test_ack_with_window_delta_grows_send_window(bytewise: bool) -> None:
    c = client()
    sid = c.open_stream()
    feed(c, window(sid, 768 * KIB, FLAG_ACK), bytewise=bytewise)
    assert c.send_window(sid) == MIB


# --------------------------------------------------------------------------- closing
def test_half_close_both_ways(bytewise: bool) -> None:
    c = client()
    sid = c.open_stream()
    c.close_stream(sid)
    assert parse_frames(c.data_to_send())[-1] == (TYPE_WINDOW_UPDATE, FLAG_FIN, sid, 0, b"")
    with pytest.raises(LocalProtocolError):
        c.send_data(sid, b"late")
    assert c.has_stream(sid)  # still readable
    events = feed(c, data(sid, b"bye", FLAG_ACK | FLAG_FIN), bytewise=bytewise)
    assert events == [
        StreamAcknowledged(stream_id=sid),
        DataReceived(stream_id=sid, data=b"bye"),
        StreamEnded(stream_id=sid),
    ]
    assert not c.has_stream(sid)
    assert c.num_streams == 0
    c.close_stream(sid)  # gone: no-op
    assert c.data_to_send() == b""


def test_fin_travels_alone_after_the_last_data_frame() -> None:
    # go-yamux loses the body of a Data|FIN frame when a reader is waiting, so FIN is sent
    # in its own WindowUpdate frame, as go-yamux does.
    c = client()
    sid = c.open_stream()
    c.data_to_send()
    c.send_data(sid, b"last words")
    c.close_stream(sid)
    assert parse_frames(c.data_to_send()) == [
        (TYPE_DATA, 0, sid, 10, b"last words"),
        (TYPE_WINDOW_UPDATE, FLAG_FIN, sid, 0, b""),
    ]


def test_remote_fin_on_window_update(bytewise: bool) -> None:
    s = server()
    feed(s, window(1, 0, FLAG_SYN), bytewise=bytewise)
    assert feed(s, window(1, 0, FLAG_FIN), bytewise=bytewise) == [StreamEnded(stream_id=1)]
    assert s.send_data(1, b"reply") == 5  # our side is still open


def test_data_after_fin_is_a_protocol_error(bytewise: bool) -> None:
    s = server()
    s.receive_data(window(1, 0, FLAG_SYN | FLAG_FIN), 0.0)
    expect_protocol_error(s, data(1, b"more"), bytewise=bytewise)


def test_remote_reset(bytewise: bool) -> None:
    c = client()
    sid = c.open_stream()
    events = feed(c, window(sid, 0, FLAG_RST), bytewise=bytewise)
    assert events == [StreamReset(stream_id=sid, code=0, remote=True)]
    assert not c.has_stream(sid)
    assert c.unacknowledged_outbound == 0
    with pytest.raises(LocalProtocolError):
        c.send_data(sid, b"x")


def test_go_v5_reset_code_is_not_a_window_delta(bytewise: bool) -> None:
    """B-13: WindowUpdate|RST carries the error code; adding it would overflow u32 here."""
    c = client()
    sid = c.open_stream()
    c.receive_data(window(sid, MAX_U32 - INITIAL_STREAM_WINDOW), 0.0)
    assert c.send_window(sid) == MAX_U32
    events = feed(c, window(sid, 0x1005, FLAG_RST), bytewise=bytewise)
    assert events == [StreamReset(stream_id=sid, code=0x1005, remote=True)]
    assert not c.is_terminated


def test_data_rst_discards_body(bytewise: bool) -> None:
    s = server()
    events = feed(s, window(1, 0, FLAG_SYN) + data(1, b"junk", FLAG_RST), bytewise=bytewise)
    assert events == [StreamOpened(stream_id=1), StreamReset(stream_id=1, code=0, remote=True)]


def test_local_reset_sends_code_in_length() -> None:
    c = client()
    sid = c.open_stream()
    c.data_to_send()
    c.reset_stream(sid, 0x1001)
    assert parse_frames(c.data_to_send()) == [(TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0x1001, b"")]
    assert not c.has_stream(sid)
    assert list(c.events()) == []
    c.reset_stream(sid)  # gone: no-op
    assert c.data_to_send() == b""


def test_frames_for_streams_that_are_gone_are_ignored(bytewise: bool) -> None:
    c = client()
    sid = c.open_stream()
    c.reset_stream(sid)
    c.data_to_send()
    buf = data(sid, b"in flight") + window(sid, 100) + window(sid, 0, FLAG_FIN) + data(4, b"z")
    assert feed(c, buf, bytewise=bytewise) == []
    assert not c.is_terminated


# --------------------------------------------------------------------------- flow control
def test_send_blocks_at_window_and_resumes(bytewise: bool) -> None:
    c = client()
    sid = c.open_stream()
    payload = b"a" * (INITIAL_STREAM_WINDOW + 100)
    assert c.send_data(sid, payload) == INITIAL_STREAM_WINDOW
    assert c.send_window(sid) == 0
    assert c.send_data(sid, b"more") == 0
    events = feed(c, window(sid, 50), bytewise=bytewise)
    assert events == [SendWindowAvailable(stream_id=sid)]
    assert c.send_data(sid, payload) == 50
    # no event when nobody was blocked
    c.send_data(sid, b"")
    c2 = client()
    sid2 = c2.open_stream()
    assert feed(c2, window(sid2, 10), bytewise=bytewise) == []


def test_large_write_is_split_into_64k_frames() -> None:
    c = client()
    sid = c.open_stream()
    c.data_to_send()
    assert c.send_data(sid, bytes(200 * KIB)) == 200 * KIB
    frames = parse_frames(c.data_to_send())
    assert [f[3] for f in frames] == [65524, 65524, 65524, 200 * KIB - 3 * 65524]
    assert all(f[0] == TYPE_DATA for f in frames)


def test_small_writes_merge_into_one_frame() -> None:
    c = client()
    sid = c.open_stream()
    for i in range(100):
        c.send_data(sid, bytes([i]) * 10)
    frames = parse_frames(c.data_to_send())
    assert [(f[0], f[3]) for f in frames] == [(TYPE_WINDOW_UPDATE, 0), (TYPE_DATA, 1000)]
    assert frames[1][4] == b"".join(bytes([i]) * 10 for i in range(100))
    # another stream's frame in between stops the merge
    sid2 = c.open_stream()
    c.send_data(sid, b"a")
    c.send_data(sid2, b"b")
    c.send_data(sid, b"c")
    assert [(f[2], f[4]) for f in parse_frames(c.data_to_send()) if f[0] == TYPE_DATA] == [
        (sid, b"a"),
        (sid2, b"b"),
        (sid, b"c"),
    ]


def test_consecutive_frames_coalesce_into_one_event() -> None:
    s = server()
    buf = window(1, 0, FLAG_SYN) + b"".join(data(1, bytes([i]) * 100) for i in range(200))
    buf += data(1, b"x", FLAG_FIN)
    s.receive_data(buf, 0.0)
    events = list(s.events())
    assert [type(e) for e in events] == [StreamOpened, DataReceived, StreamEnded]
    assert isinstance(events[1], DataReceived)
    assert len(events[1].data) == 20001


def test_window_update_at_half_consumption(bytewise: bool) -> None:
    cfg = YamuxConfig(window_growth="off")
    s = YamuxSession(False, cfg, now=0.0)
    feed(s, window(1, 0, FLAG_SYN) + data(1, bytes(200 * KIB)), bytewise=bytewise)
    s.accept_stream(1)
    s.data_to_send()
    assert s.receive_window(1) == 56 * KIB
    s.consume(1, 100 * KIB)
    assert s.data_to_send() == b""  # 100 KiB < half of 256 KiB
    s.consume(1, 28 * KIB)
    assert parse_frames(s.data_to_send()) == [(TYPE_WINDOW_UPDATE, 0, 1, 128 * KIB, b"")]
    assert s.receive_window(1) == 184 * KIB
    with pytest.raises(LocalProtocolError):
        s.consume(1, 100 * KIB)  # only 72 KiB still unconsumed
    assert not s.is_terminated


def test_lone_data_frames_are_accounted_like_any_other(bytewise: bool) -> None:
    """One plain Data frame per read (the request/response path): each is an event, charged
    to the window, and consumption re-opens it as usual."""
    s = YamuxSession(False, YamuxConfig(window_growth="off"), now=0.0)
    feed(s, window(1, 0, FLAG_SYN), bytewise=bytewise)
    s.accept_stream(1)
    s.data_to_send()
    for i in range(3):
        body = bytes([i]) * 100 * KIB
        assert feed(s, data(1, body), bytewise=bytewise) == [DataReceived(stream_id=1, data=body)]
        if i < 2:
            s.consume(1, len(body))
    assert s.receive_window(1) == INITIAL_STREAM_WINDOW - 100 * KIB  # 200 KiB handed back
    assert s.buffered(1) == 100 * KIB
    assert parse_frames(s.data_to_send()) == [(TYPE_WINDOW_UPDATE, 0, 1, 200 * KIB, b"")]


def test_window_not_reopened_without_consumption(bytewise: bool) -> None:
    """End-to-end backpressure: a reader that does not read grants nothing."""
    s = server()
    feed(s, window(1, 0, FLAG_SYN) + data(1, bytes(INITIAL_STREAM_WINDOW)), bytewise=bytewise)
    s.accept_stream(1)
    s.data_to_send()
    assert s.receive_window(1) == 0
    assert s.buffered(1) == INITIAL_STREAM_WINDOW
    expect_protocol_error(s, data(1, b"!"), bytewise=bytewise)


def test_eager_window_growth_reaches_max() -> None:
    a, b = connected_pair()
    sid = a.open_stream()
    pump(a, b)
    b.accept_stream(sid)
    pump(b, a)
    sizes = []
    for _ in range(20):
        n = a.send_data(sid, bytes(a.send_window(sid)))
        events = pump(a, b)
        assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == n
        b.consume(sid, b.buffered(sid))
        sizes.append(b.receive_window_size(sid))
        pump(b, a)
    assert sizes[0] == 512 * KIB
    assert sizes[-1] == 16 * MIB
    assert sorted(sizes) == sizes
    assert a.send_window(sid) == 16 * MIB


def test_rtt_growth_only_when_consumed_fast() -> None:
    cfg = YamuxConfig(window_growth="rtt", keepalive_interval=None)
    a, b = YamuxSession(True, cfg, now=0.0), YamuxSession(False, cfg, now=0.0)
    # measure an RTT of 10 ms on b
    b.ping(0.0)
    pump(b, a, 0.0)
    pump(a, b, 0.01)
    assert b.rtt == pytest.approx(0.01)
    sid = a.open_stream()
    pump(a, b, 0.01)
    b.accept_stream(sid)
    # slow consumer: 1 s per half window -> no growth
    a.send_data(sid, bytes(200 * KIB))
    pump(a, b, 1.0)
    b.consume(sid, 200 * KIB, now=1.0)
    assert b.receive_window_size(sid) == INITIAL_STREAM_WINDOW
    # fast consumer: within 4 RTT of the previous update -> doubled
    pump(b, a, 1.0)
    a.send_data(sid, bytes(200 * KIB))
    pump(a, b, 1.02)
    b.consume(sid, 200 * KIB, now=1.02)
    assert b.receive_window_size(sid) == 2 * INITIAL_STREAM_WINDOW


def test_growth_off_keeps_window() -> None:
    a, b = connected_pair(window_growth="off")
    sid = a.open_stream()
    pump(a, b)
    for _ in range(5):
        a.send_data(sid, bytes(a.send_window(sid)))
        pump(a, b)
        b.consume(sid, b.buffered(sid))
        pump(b, a)
    assert b.receive_window_size(sid) == INITIAL_STREAM_WINDOW


def test_connection_window_budget_caps_growth() -> None:
    a, b = connected_pair(connection_window_budget=MIB)
    sids = [a.open_stream() for _ in range(3)]
    pump(a, b)
    for _ in range(10):
        for sid in sids:
            a.send_data(sid, bytes(a.send_window(sid)))
        pump(a, b)
        for sid in sids:
            b.consume(sid, b.buffered(sid))
        pump(b, a)
    assert b.window_budget_used <= MIB
    total = sum(b.receive_window_size(sid) - INITIAL_STREAM_WINDOW for sid in sids)
    assert total == b.window_budget_used == MIB
    for sid in sids:
        b.reset_stream(sid)
    assert b.window_budget_used == 0


def test_window_of_remote_fin_stream_is_not_reopened(bytewise: bool) -> None:
    s = server()
    feed(s, data(1, bytes(200 * KIB), FLAG_SYN | FLAG_FIN), bytewise=bytewise)
    s.accept_stream(1)
    s.data_to_send()
    s.consume(1, 200 * KIB)
    assert s.data_to_send() == b""


# --------------------------------------------------------------------------- bad input (B-10..B-16)
def test_b10_data_beyond_window_rejected_before_body(bytewise: bool) -> None:
    """CVE-2026-73568: the header alone (no body yet) must be rejected."""
    s = server()
    s.receive_data(window(1, 0, FLAG_SYN), 0.0)
    list(s.events())
    events = expect_protocol_error(s, frame(TYPE_DATA, 0, 1, 0xFFFFFFFF), bytewise=bytewise)
    assert events[0] == StreamReset(stream_id=1, code=0, remote=True)
    assert len(events) == 2


def test_b10_data_beyond_window(bytewise: bool) -> None:
    s = server()
    s.receive_data(window(1, 0, FLAG_SYN), 0.0)
    expect_protocol_error(s, data(1, bytes(INITIAL_STREAM_WINDOW + 1)), bytewise=bytewise)


def test_b10_huge_frame_on_unknown_stream(bytewise: bool) -> None:
    s = server()
    expect_protocol_error(s, frame(TYPE_DATA, 0, 7, 0xFFFFFFFF), bytewise=bytewise)


def test_b11_data_syn_larger_than_initial_window(bytewise: bool) -> None:
    s = server()
    events = expect_protocol_error(s, frame(TYPE_DATA, FLAG_SYN, 1, 262145), bytewise=bytewise)
    assert not any(isinstance(e, StreamOpened) for e in events)


def test_b12_window_update_overflow(bytewise: bool) -> None:
    c = client()
    sid = c.open_stream()
    expect_protocol_error(c, window(sid, MAX_U32 - INITIAL_STREAM_WINDOW + 1), bytewise=bytewise)


def test_b12_large_windows_are_fine(bytewise: bool) -> None:
    c = client()
    sid = c.open_stream()
    feed(c, window(sid, 100 * MIB) + window(sid, 100 * MIB), bytewise=bytewise)
    assert c.send_window(sid) == INITIAL_STREAM_WINDOW + 200 * MIB


@pytest.mark.parametrize(
    "buf",
    [
        pytest.param(window(1, 0, FLAG_SYN) + window(1, 0, FLAG_SYN), id="duplicate-syn"),
        pytest.param(window(2, 0, FLAG_SYN), id="syn-wrong-parity"),
        pytest.param(data(0, b"x"), id="data-on-stream-0"),
        pytest.param(window(0, 5), id="window-on-stream-0"),
        pytest.param(data(4, b"x"), id="never-opened-own-id"),
        pytest.param(b"\x01" + frame(TYPE_PING, FLAG_SYN, 0, 1)[1:], id="version-1"),
        pytest.param(frame(4, 0, 0, 0), id="type-4"),
        pytest.param(frame(TYPE_WINDOW_UPDATE, 0x10 | FLAG_SYN, 1, 0), id="unknown-flag"),
    ],
)
def test_b14_protocol_errors(buf: bytes, bytewise: bool) -> None:
    expect_protocol_error(server(), buf, bytewise=bytewise)


def test_b14_unknown_remote_ids_without_syn_are_ignored(bytewise: bool) -> None:
    s = server()
    assert (
        feed(s, data(9, b"late") + window(11, 5) + window(13, 0, FLAG_RST), bytewise=bytewise) == []
    )
    assert not s.is_terminated


def test_b15_stream_flood_is_bounded_by_the_accept_backlog(bytewise: bool) -> None:
    s = server()
    count = 1000 if bytewise else 10_000
    buf = b"".join(window(2 * i + 1, 0, FLAG_SYN) for i in range(count))
    opened = [e for e in feed(s, buf, bytewise=bytewise) if isinstance(e, StreamOpened)]
    assert len(opened) == 256
    frames = parse_frames(s.data_to_send())
    assert len(frames) == count - 256
    assert all(f[0] == TYPE_WINDOW_UPDATE and f[1] == FLAG_RST for f in frames)
    assert s.num_streams == 256


def test_b15_max_inbound_streams(bytewise: bool) -> None:
    s = YamuxSession(False, YamuxConfig(max_inbound_streams=10), now=0.0)
    for i in range(12):
        for ev in feed(s, window(2 * i + 1, 0, FLAG_SYN), bytewise=bytewise):
            assert isinstance(ev, StreamOpened)
            s.accept_stream(ev.stream_id)
    assert s.num_inbound_streams == 10
    assert sum(f[1] == FLAG_RST for f in parse_frames(s.data_to_send())) == 2
    # closing one frees a slot
    s.reset_stream(1)
    s.receive_data(window(101, 0, FLAG_SYN), 0.0)
    assert list(s.events()) == [StreamOpened(stream_id=101)]


def test_b16_ping_flood_replies_are_bounded(bytewise: bool) -> None:
    s = server()
    count = 1000 if bytewise else 100_000
    assert feed(s, b"".join(ping(i, FLAG_SYN) for i in range(count)), bytewise=bytewise) == []
    frames = parse_frames(s.data_to_send())
    assert frames == [(TYPE_PING, FLAG_ACK, 0, i, b"") for i in range(32)]
    s.receive_data(ping(7, FLAG_SYN), 0.0)
    assert parse_frames(s.data_to_send()) == [(TYPE_PING, FLAG_ACK, 0, 7, b"")]


def test_b16_unrequested_ping_ack_ignored(bytewise: bool) -> None:
    s = server()
    assert feed(s, ping(99, FLAG_ACK) + ping(1, 0), bytewise=bytewise) == []
    assert s.data_to_send() == b""
    assert not s.is_terminated


# ----------------------------------------------------------------- ping, keepalive, GoAway
def test_ping_round_trip(bytewise: bool) -> None:
    c = client()
    pid = c.ping(1.0)
    assert c.ping(1.5) == pid  # joins the outstanding ping
    assert parse_frames(c.data_to_send()) == [(TYPE_PING, FLAG_SYN, 0, pid, b"")]
    assert feed(c, ping(pid + 1, FLAG_ACK), 1.1, bytewise=bytewise) == []
    assert feed(c, ping(pid, FLAG_ACK), 1.25, bytewise=bytewise) == [PingAcknowledged(rtt=0.25)]
    assert c.rtt == 0.25
    assert c.ping(2.0) != pid


def test_ping_is_answered(bytewise: bool) -> None:
    s = server()
    feed(s, ping(0xDEADBEEF, FLAG_SYN), bytewise=bytewise)
    assert parse_frames(s.data_to_send()) == [(TYPE_PING, FLAG_ACK, 0, 0xDEADBEEF, b"")]


def test_keepalive_ping_and_timeout() -> None:
    c = client()
    assert c.get_timer() == 30.0
    c.receive_data(ping(1, FLAG_SYN), 10.0)  # any traffic pushes the keepalive back
    c.data_to_send()
    assert c.get_timer() == 40.0
    c.handle_timer(39.0)
    assert c.data_to_send() == b""
    c.handle_timer(40.0)
    (ptype, pflags, _, pid, _), *_ = parse_frames(c.data_to_send())
    assert (ptype, pflags) == (TYPE_PING, FLAG_SYN)
    assert c.get_timer() == 50.0
    c.receive_data(ping(pid, FLAG_ACK), 40.5)
    assert list(c.events()) == [PingAcknowledged(rtt=0.5)]
    assert c.get_timer() == 70.5
    sid = c.open_stream()
    c.handle_timer(70.5)
    c.handle_timer(80.5)
    events = list(c.events())
    assert events[0] == StreamReset(stream_id=sid, code=0, remote=True)
    assert isinstance(events[1], ConnectionTerminated)
    assert isinstance(events[1].error, ConnectionLost)
    assert c.is_terminated
    assert c.get_timer() is None


def test_keepalive_disabled() -> None:
    c = YamuxSession(True, YamuxConfig(keepalive_interval=None), now=0.0)
    assert c.get_timer() is None
    c.handle_timer(1000.0)
    assert c.data_to_send() == b""


def test_clock_starts_at_first_now() -> None:
    c = YamuxSession(True)
    assert c.get_timer() is None
    c.receive_data(ping(1, FLAG_SYN), 100.0)
    assert c.get_timer() == 130.0


def test_go_away_normal_keeps_streams(bytewise: bool) -> None:
    c = client()
    sid = c.open_stream()
    assert feed(c, go_away(0), bytewise=bytewise) == [GoAwayReceived(code=0)]
    assert not c.can_open_stream
    with pytest.raises(LocalProtocolError):
        c.open_stream()
    assert c.send_data(sid, b"still fine") == 10
    assert not c.is_terminated


@pytest.mark.parametrize("code", [1, 2, 0x1234])
def test_go_away_error_terminates(code: int, bytewise: bool) -> None:
    c = client()
    sid = c.open_stream()
    events = feed(c, go_away(code) + data(sid, b"ignored"), bytewise=bytewise)
    assert events[:2] == [
        GoAwayReceived(code=code),
        StreamReset(stream_id=sid, code=0, remote=True),
    ]
    assert isinstance(events[2], ConnectionTerminated)
    assert isinstance(events[2].error, ConnectionLost)
    assert len(events) == 3
    assert c.is_terminated
    with pytest.raises(LocalProtocolError):
        c.open_stream()


def test_local_go_away_refuses_new_streams(bytewise: bool) -> None:
    s = server()
    s.go_away(0)
    s.go_away(0)  # once only
    assert parse_frames(s.data_to_send()) == [(TYPE_GO_AWAY, 0, 0, 0, b"")]
    assert feed(s, window(1, 0, FLAG_SYN) + data(1, b"x"), bytewise=bytewise) == []
    assert parse_frames(s.data_to_send()) == [(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0, b"")]


def test_eof_resets_open_streams(bytewise: bool) -> None:
    c = client()
    a = c.open_stream()
    b = c.open_stream()
    feed(c, window(a, 0, FLAG_ACK | FLAG_FIN), bytewise=bytewise)
    c.receive_data(b"", 1.0)
    events = list(c.events())
    assert events == [
        StreamReset(stream_id=a, code=0, remote=True),
        StreamReset(stream_id=b, code=0, remote=True),
        ConnectionTerminated(error=None),
    ]
    c.receive_data(data(a, b"after eof"), 2.0)  # ignored
    assert list(c.events()) == []


@pytest.mark.parametrize("cut", [2, 10, 15])
def test_eof_mid_frame_is_an_error(cut: int, bytewise: bool) -> None:
    s = server()
    feed(s, window(1, 0, FLAG_SYN) + data(1, b"abcdef")[:-cut], bytewise=bytewise)
    s.receive_data(b"", 0.0)
    events = list(s.events())
    assert isinstance(events[-1], ConnectionTerminated)
    assert isinstance(events[-1].error, ConnectionLost)


def test_body_split_across_reads_with_fin() -> None:
    s = server()
    buf = window(1, 0, FLAG_SYN) + data(1, b"0123456789", FLAG_FIN)
    s.receive_data(buf[:32], 0.0)
    assert list(s.events()) == [
        StreamOpened(stream_id=1),
        DataReceived(stream_id=1, data=b"01234567"),
    ]
    s.receive_data(buf[32:], 0.0)
    assert list(s.events()) == [DataReceived(stream_id=1, data=b"89"), StreamEnded(stream_id=1)]


def test_local_reset_mid_body_drops_the_rest() -> None:
    s = server()
    buf = window(1, 0, FLAG_SYN) + data(1, b"0123456789") + data(3, b"x", FLAG_SYN)
    s.receive_data(buf[:20], 0.0)
    list(s.events())
    s.reset_stream(1)
    s.receive_data(buf[20:], 0.0)
    assert list(s.events()) == [StreamOpened(stream_id=3), DataReceived(stream_id=3, data=b"x")]


def test_ack_backlog_and_outbound_limit() -> None:
    c = YamuxSession(True, YamuxConfig(ack_backlog=2, max_outbound_streams=3), now=0.0)
    s1 = c.open_stream()
    c.open_stream()
    assert not c.can_open_stream
    c.receive_data(window(s1, 0, FLAG_ACK), 0.0)
    assert c.can_open_stream
    c.open_stream()
    assert c.num_outbound_streams == 3
    assert not c.can_open_stream  # outbound limit


def test_commands_after_termination() -> None:
    c = client()
    sid = c.open_stream()
    c.receive_data(b"", 0.0)
    for call in (c.open_stream, lambda: c.send_data(sid, b"x"), lambda: c.ping(0.0)):
        with pytest.raises(LocalProtocolError):
            call()
    c.consume(sid, 0)  # gone: no-op
    assert c.next_event() is not None


def test_unknown_stream_commands() -> None:
    c = client()
    with pytest.raises(LocalProtocolError):
        c.send_data(99, b"x")
    c.consume(99, 10)
    c.accept_stream(99)
    assert c.send_window(99) == 0
    assert c.receive_window(99) == 0
    assert not c.is_terminated
    with pytest.raises(LocalProtocolError):
        c.reset_stream(1, code=-1)


def test_send_data_copies_mutable_buffers_only() -> None:
    c = client()
    sid = c.open_stream()
    c.data_to_send()
    buf = bytearray(b"mutable")
    assert c.send_data(sid, buf) == 7
    buf[:] = b"changed"
    assert c.send_data(sid, memoryview(b"-view")) == 5
    array_view = memoryview(bytearray(8)).cast("I")  # 2 items, 8 bytes
    assert c.send_data(sid, array_view) == 8
    assert parse_frames(c.data_to_send()) == [(TYPE_DATA, 0, sid, 20, b"mutable-view" + bytes(8))]
    assert c.bytes_to_send == 0


def test_partial_send_of_a_large_mutable_buffer() -> None:
    c = client()
    sid = c.open_stream()
    c.data_to_send()
    buf = bytearray(range(256)) * 2048  # 512 KiB
    assert c.send_data(sid, buf) == INITIAL_STREAM_WINDOW
    assert c.bytes_to_send == INITIAL_STREAM_WINDOW + 12 * 5
    buf[:] = bytes(len(buf))
    body = b"".join(f[4] for f in parse_frames(c.data_to_send()))
    assert body == (bytearray(range(256)) * 2048)[:INITIAL_STREAM_WINDOW]


def test_auto_accept_acks_at_once_and_bounds_by_max_inbound(bytewise: bool) -> None:
    s = YamuxSession(False, YamuxConfig(auto_accept=True, max_inbound_streams=300), now=0.0)
    buf = b"".join(window(2 * i + 1, 0, FLAG_SYN) for i in range(400))
    opened = [e for e in feed(s, buf, bytewise=bytewise) if isinstance(e, StreamOpened)]
    assert len(opened) == 300
    frames = parse_frames(s.data_to_send())
    assert [f[1] for f in frames] == [FLAG_ACK] * 300 + [FLAG_RST] * 100
