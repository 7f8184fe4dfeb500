"""Fuzz target: unsigned varints and length-prefixed frames."""

from __future__ import annotations

from glueberry.wire import varint

SEEDS = [b"\x00", b"\x7f", b"\x80\x01", b"\xff\xff\x03", b"\x03abc", b"\x80" * 9 + b"\x01"]


def TARGET(data: bytes) -> None:
    res = varint.decode(data)
    if res is not None:
        value, end = res
        assert varint.encode(value) == data[:end]
    varint.decode_length_prefixed(data, max_length=1 << 20)
