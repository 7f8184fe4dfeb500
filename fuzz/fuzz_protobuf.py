"""Fuzz target: the generic protobuf field reader every codec of this package builds on.

Invariant: ``iter_fields`` yields well-formed fields whose re-encoding is a prefix-exact
copy of the input, or raises RemoteProtocolError; the field cap is honoured; nothing else.
"""

from __future__ import annotations

from glueberry.errors import RemoteProtocolError
from glueberry.wire import protobuf

SEEDS: list[bytes] = [
    b"",
    protobuf.field_varint(1, 150),
    protobuf.field_bytes(2, b"testing") + protobuf.field_str(3, "x"),
    protobuf.field_fixed64(4, 7),
    b"\x0d\x01\x02\x03\x04",  # fixed32
    b"\x08" + b"\xff" * 9 + b"\x01",
    b"\x0a\x80\x80\x80\x80\x10",
    b"\x0b\x0c",  # groups
]

_WIRE_VARINT, _WIRE_FIXED64, _WIRE_BYTES, _WIRE_FIXED32 = 0, 1, 2, 5


def TARGET(data: bytes) -> None:
    fields = list(protobuf.iter_fields(data, max_fields=64))
    assert len(fields) <= 64
    for number, wire_type, value in fields:
        assert number >= 1
        if wire_type == _WIRE_BYTES:
            assert isinstance(value, bytes)
            protobuf.expect_bytes(wire_type, value, "f")
            try:
                protobuf.expect_str(wire_type, value, "f")
            except RemoteProtocolError:
                pass
        else:
            assert isinstance(value, int) and value >= 0
            protobuf.expect_int(wire_type, value, "f")
