"""Fuzz target: yamux frames into a YamuxSession (and the header codec).

Invariant: the session parses the input or raises RemoteProtocolError, nothing else; fed
whole and in uneven pieces it yields the same events; windows stay within bounds.
"""

from __future__ import annotations

from glueberry.errors import RemoteProtocolError
from glueberry.proto.yamux import (
    ConnectionTerminated,
    DataReceived,
    StreamOpened,
    YamuxConfig,
    YamuxEvent,
    YamuxSession,
)
from glueberry.proto.yamux_frames import HEADER, MAX_U32, decode_header


def _f(ftype: int, flags: int, sid: int, length: int, body: bytes = b"") -> bytes:
    return HEADER.pack(0, ftype, flags, sid, length) + body


SEEDS = [
    _f(1, 1, 2, 0) + _f(0, 0, 2, 5, b"hello") + _f(1, 4, 2, 0),
    _f(0, 1, 4, 3, b"abc") + _f(1, 8, 4, 0x1001),
    _f(2, 1, 0, 7) + _f(2, 2, 0, 1) + _f(3, 0, 0, 0),
    _f(1, 2, 1, 1 << 20) + _f(0, 0, 1, 2, b"hi") + _f(1, 0, 1, 100),
    _f(0, 0, 1, 0xFFFFFFFF),
    _f(0, 1, 6, 262145),
    _f(1, 0, 1, 0xFFFFFFFF),
    _f(3, 0, 0, 2),
    b"\x01" + _f(2, 1, 0, 1)[1:],
]

CONFIG = YamuxConfig(keepalive_interval=None, max_inbound_streams=8, accept_backlog=4)


def _session() -> YamuxSession:
    s = YamuxSession(True, CONFIG, now=0.0)
    s.open_stream()  # stream 1 exists, so frames for it take the "known stream" paths
    s.data_to_send()
    return s


def _run(chunks: list[bytes]) -> tuple[list[object], bool]:
    s = _session()
    events: list[YamuxEvent] = []
    failed = False
    try:
        for chunk in chunks:
            s.receive_data(chunk, 1.0)
            for ev in s.events():
                events.append(ev)
                # A driver stops acting on events once the session has ended (a GoAway can
                # end it in the same read that opened a stream).
                if isinstance(ev, StreamOpened) and not s.is_terminated:
                    s.accept_stream(ev.stream_id)
            for sid in (1, 2, 4, 6):
                assert 0 <= s.send_window(sid) <= MAX_U32
                assert s.receive_window(sid) >= 0
            s.data_to_send()
    except RemoteProtocolError:
        failed = True
        assert s.is_terminated
    events.extend(s.events())
    # Consuming only at the end keeps both feeds equivalent (credit re-opens on consume).
    for ev in events:
        if isinstance(ev, DataReceived) and not s.is_terminated:
            s.consume(ev.stream_id, len(ev.data))
    return _merge(events), failed


def _merge(events: list[YamuxEvent]) -> list[object]:
    """Join split DataReceived; compare terminations by error type and text."""
    out: list[object] = []
    for ev in events:
        last = out[-1] if out else None
        if isinstance(ev, ConnectionTerminated):
            out.append(("terminated", type(ev.error), str(ev.error)))
            continue
        if (
            isinstance(ev, DataReceived)
            and isinstance(last, DataReceived)
            and last.stream_id == ev.stream_id
        ):
            out[-1] = DataReceived(stream_id=ev.stream_id, data=last.data + ev.data)
        else:
            out.append(ev)
    return out


def TARGET(data: bytes) -> None:
    decode_header(data)
    if not data:
        return  # b"" means EOF to the session
    whole, failed_whole = _run([data])
    step = 1 + (data[0] % 13 if data else 0)
    pieces, failed_pieces = _run([data[i : i + step] for i in range(0, len(data), step)])
    assert failed_whole == failed_pieces
    if not failed_whole:
        assert whole == pieces
    if failed_whole:
        raise RemoteProtocolError("rejected", protocol="/yamux/1.0.0")
