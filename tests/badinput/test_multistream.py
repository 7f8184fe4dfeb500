"""B-07, B-28 (multistream length prefixes) end to end, on the raw connection (security
negotiation) and on yamux streams (protocol negotiation) of a real Host.

On the raw connection a violation closes the connection at once (before the 1 s inbound
deadline); on a stream it resets that stream with go's code 0x1001 and the connection goes
on serving other streams."""

from __future__ import annotations

import time

import pytest

from glueberry.errors import HandshakeTimeout, RemoteProtocolError
from glueberry.net.host import STREAM_PROTOCOL_NEGOTIATION_FAILED
from glueberry.proto.multistream import MAX_FAILED_PROPOSALS, encode_message

from .conftest import AT_ONCE, Target, logged_error
from .hostile import FLAG_SYN, MSS, TYPE_DATA, TYPE_WINDOW_UPDATE, Hostile, frame

HEADER = encode_message(MSS)
NA = encode_message("na")


def count(data: bytes, msg: bytes) -> int:
    return data.count(msg)


async def closed_at_once(h: Hostile) -> bytes:
    t0 = time.monotonic()
    data = await h.read_until_closed(within=AT_ONCE)
    assert time.monotonic() - t0 < AT_ONCE
    return data


# --- on the raw connection ----------------------------------------------------------------


async def test_b07_thousand_refused_proposals_are_capped(
    target: Target, debug_log: pytest.LogCaptureFixture
) -> None:
    # Pipelined in one write: the listener gives up inside one read (answers may be lost).
    h = await target.attacker()
    h.write(HEADER + b"".join(encode_message(f"/nope/{i}") for i in range(1000)))
    data = await closed_at_once(h)
    assert data.startswith(HEADER)
    assert count(data, NA) <= MAX_FAILED_PROPOSALS
    assert logged_error(debug_log, RemoteProtocolError)
    # One at a time, waiting for each answer: exactly the cap of ``na``, then the close.
    h = await target.attacker()
    h.write(HEADER)
    data = await h.read_raw()
    answers = 0
    for i in range(1000):
        h.write(encode_message(f"/nope/{i}"))
        got = await h.read_raw()
        if not got:
            break
        answers += count(got, NA)
    assert answers == MAX_FAILED_PROPOSALS
    assert i == MAX_FAILED_PROPOSALS
    assert target.host.upgrader.failed_inbound == 2
    await target.assert_serves_honest_peer()


@pytest.mark.parametrize(
    ("name", "attack"),
    [
        ("length 1025, no body", b"\x81\x08"),
        ("length 16383, no body", b"\xff\x7f"),
        ("varint of 3 bytes", b"\x80\x80\x01"),
        ("non-minimal varint", b"\x85\x00"),
        ("10-byte varint", b"\xff" * 9 + b"\x01"),
        ("zero length", b"\x00"),
        ("no newline", b"\x06/noise"),
        ("NUL in name", encode_message("/no")[:-1].replace(b"/no", b"/n\x00") + b"\n"),
        ("invalid UTF-8", b"\x04/\xff\xfe\n"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_b07_malformed_messages_close_at_once(
    target: Target, debug_log: pytest.LogCaptureFixture, name: str, attack: bytes
) -> None:
    h = await target.attacker()
    h.write(HEADER + attack)
    data = await closed_at_once(h)
    assert NA not in data, name
    assert logged_error(debug_log, RemoteProtocolError), name
    assert target.host.upgrader.failed_inbound == 1
    await target.assert_serves_honest_peer()


async def test_b07_first_message_must_be_the_header(
    target: Target, debug_log: pytest.LogCaptureFixture
) -> None:
    h = await target.attacker()
    h.write(encode_message("/noise") + HEADER)
    await closed_at_once(h)
    assert logged_error(debug_log, RemoteProtocolError)


async def test_b07_ls_gets_na_and_negotiation_goes_on(target: Target) -> None:
    h = await target.attacker()
    h.write(HEADER + encode_message("ls") + encode_message("/noise"))
    data = b""
    want = HEADER + NA + encode_message("/noise")
    while len(data) < len(want):
        data += await h.read_raw()
    assert data == want


async def test_b07_slowloris_negotiation_hits_the_inbound_deadline(
    fast_target: Target, debug_log: pytest.LogCaptureFixture
) -> None:
    """One byte every 50 ms of an endless stream of valid proposals: the whole-upgrade
    deadline (1 s here, go's 15 s) ends it, however busy the peer looks."""
    target = fast_target
    h = await target.attacker()
    trickle = HEADER + b"".join(encode_message(f"/p{i}") for i in range(MAX_FAILED_PROPOSALS))
    t0 = time.monotonic()
    for b in trickle:
        h.write(bytes([b]))
        await h.drain()
        if not await h.is_open_after(0.05):
            break
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 2.0
    assert logged_error(debug_log, HandshakeTimeout)


# --- on a yamux stream ------------------------------------------------------------------------


async def open_raw_stream(h: Hostile, sid: int, data: bytes) -> None:
    h.send(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0) + frame(TYPE_DATA, 0, sid, len(data), data))


async def test_b07_stream_thousand_refused_proposals_reset_only_the_stream(target: Target) -> None:
    async with await target.secured() as h:
        await open_raw_stream(
            h, 1, HEADER + b"".join(encode_message(f"/nope/{i}") for i in range(1000))
        )
        rst = await h.wait_reset(1)
        assert rst.length == STREAM_PROTOCOL_NEGOTIATION_FAILED
        data = b"".join(f.body for f in h.frames if f.sid == 1)
        assert data.count(NA) <= MAX_FAILED_PROPOSALS  # pipelined: answers may be dropped
        assert await h.echo(3, b"the connection lives") == b"the connection lives"


@pytest.mark.parametrize(
    "attack",
    [b"\x81\x08", b"\x80\x80\x01", b"\x00", b"\x06/echo/", b"\x04/\xff\xfe\n"],
    ids=["1025", "3-byte varint", "zero", "no newline", "bad UTF-8"],
)
async def test_b07_stream_malformed_message_resets_the_stream(
    target: Target, attack: bytes
) -> None:
    async with await target.secured() as h:
        await open_raw_stream(h, 1, HEADER + attack)
        rst = await h.wait_reset(1)
        assert rst.length == STREAM_PROTOCOL_NEGOTIATION_FAILED
        assert await h.echo(3, b"ok") == b"ok"


async def test_b07_stream_negotiation_deadline(fast_target: Target) -> None:
    """A stream that never finishes negotiating is reset after the 1 s deadline (go: 10 s)."""
    target = fast_target
    async with await target.secured() as h:
        await open_raw_stream(h, 1, HEADER)
        t0 = time.monotonic()
        rst = await h.wait_reset(1, within=3.0)
        assert 0.9 < time.monotonic() - t0 < 2.5
        assert rst.length == STREAM_PROTOCOL_NEGOTIATION_FAILED
        assert await h.echo(3, b"ok") == b"ok"


async def test_b07_stream_ls_gets_na(target: Target) -> None:
    async with await target.secured() as h:
        await open_raw_stream(h, 1, HEADER + encode_message("ls"))
        frames = await h.read_frames(lambda f: f.sid == 1 and NA in f.body)
        assert frames[-1].body.endswith(NA)
