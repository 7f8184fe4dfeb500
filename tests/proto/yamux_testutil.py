"""Helpers shared by the yamux sans-I/O tests: frame builders, feeding, event normalising."""

from __future__ import annotations

from collections.abc import Iterable

from glueberry.proto.yamux import (
    DataReceived,
    YamuxEvent,
    YamuxSession,
)
from glueberry.proto.yamux_frames import HEADER, HEADER_SIZE


def frame(ftype: int, flags: int, sid: int, length: int, body: bytes = b"") -> bytes:
    """A raw frame; no validation, so tests can build hostile ones."""
    return HEADER.pack(0, ftype, flags, sid, length) + body


def data(sid: int, body: bytes, flags: int = 0) -> bytes:
    return frame(0, flags, sid, len(body), body)


def window(sid: int, delta: int, flags: int = 0) -> bytes:
    return frame(1, flags, sid, delta)


def ping(opaque: int, flags: int) -> bytes:
    return frame(2, flags, 0, opaque)


def go_away(code: int) -> bytes:
    return frame(3, 0, 0, code)


def parse_frames(buf: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """Split outbound bytes into (type, flags, sid, length, body) tuples."""
    out = []
    pos = 0
    while pos < len(buf):
        _, ftype, flags, sid, length = HEADER.unpack_from(buf, pos)
        pos += HEADER_SIZE
        body = b""
        if ftype == 0:
            body = buf[pos : pos + length]
            pos += length
        out.append((ftype, flags, sid, length, body))
    assert pos == len(buf)
    return out


def merge(events: Iterable[YamuxEvent]) -> list[YamuxEvent]:
    """Merge consecutive DataReceived of one stream (feeding 1 byte at a time splits them)."""
    out: list[YamuxEvent] = []
    chunks: list[bytes] = []
    sid = -1

    def flush() -> None:
        if chunks:
            out.append(DataReceived(stream_id=sid, data=b"".join(chunks)))
            chunks.clear()

    for ev in events:
        if isinstance(ev, DataReceived):
            if ev.stream_id != sid:
                flush()
                sid = ev.stream_id
            chunks.append(ev.data)
        else:
            flush()
            sid = -1
            out.append(ev)
    flush()
    return out


def feed(
    session: YamuxSession, buf: bytes, now: float = 0.0, *, bytewise: bool
) -> list[YamuxEvent]:
    """Feed ``buf`` whole or one byte per call; return the merged events."""
    if bytewise:
        events: list[YamuxEvent] = []
        for i in range(len(buf)):
            session.receive_data(buf[i : i + 1], now)
            events.extend(session.events())
        return merge(events)
    session.receive_data(buf, now)
    return merge(session.events())


def pump(src: YamuxSession, dst: YamuxSession, now: float = 0.0) -> list[YamuxEvent]:
    """Move everything ``src`` queued into ``dst``; return ``dst``'s events."""
    dst.receive_data(src.data_to_send(), now)
    return list(dst.events())


def connected_pair(**kw: object) -> tuple[YamuxSession, YamuxSession]:
    from glueberry.proto.yamux import YamuxConfig

    cfg = YamuxConfig(**kw)  # type: ignore[arg-type]
    return YamuxSession(True, cfg, now=0.0), YamuxSession(False, cfg, now=0.0)
