"""A minimal, strict protobuf (proto2/proto3) wire codec.

Spec: https://protobuf.dev/programming-guides/encoding/

libp2p's messages are small and few (keys, Noise payloads, identify, relay, DCUtR, AutoNAT),
so a generated-code dependency is not worth it. This module reads and writes the wire format
only; each message module converts fields into typed dataclasses at once (nothing above the
codec layer sees raw fields).

Decoding is defensive: every length is checked against the buffer before slicing, groups
(wire types 3 and 4) are rejected, and callers pass ``max_fields`` so that a message cannot
expand into millions of entries (js floodsub's CVE-2026-86040).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from glueberry.errors import RemoteProtocolError
from glueberry.wire import varint

VARINT: Final = 0
I64: Final = 1
LEN: Final = 2
I32: Final = 5

_PROTO: Final = "protobuf"


def _err(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg, protocol=_PROTO)


def iter_fields(
    buf: bytes | bytearray | memoryview, *, max_fields: int = 4096
) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field_number, wire_type, value)`` for each field in ``buf``.

    ``value`` is an ``int`` for VARINT/I64/I32 fields and ``bytes`` for LEN fields.

    Raises:
        RemoteProtocolError: truncated or malformed input, a group, field number 0, or more
            than ``max_fields`` fields.
    """
    pos = 0
    end = len(buf)
    count = 0
    while pos < end:
        count += 1
        if count > max_fields:
            raise _err(f"more than {max_fields} fields")
        res = varint.decode(buf, pos)
        if res is None:
            raise _err("truncated field key")
        key, pos = res
        field_no, wire_type = key >> 3, key & 7
        if field_no == 0 or field_no > 0x1FFFFFFF:
            raise _err(f"invalid field number {field_no}")
        if wire_type == VARINT:
            res = varint.decode(buf, pos)
            if res is None:
                raise _err("truncated varint field")
            value, pos = res
            yield field_no, wire_type, value
        elif wire_type == LEN:
            res = varint.decode(buf, pos)
            if res is None:
                raise _err("truncated length")
            length, pos = res
            if length > end - pos:
                raise _err("length-delimited field runs past the end of the message")
            yield field_no, wire_type, bytes(buf[pos : pos + length])
            pos += length
        elif wire_type == I64:
            if end - pos < 8:
                raise _err("truncated fixed64")
            yield field_no, wire_type, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire_type == I32:
            if end - pos < 4:
                raise _err("truncated fixed32")
            yield field_no, wire_type, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise _err(f"unsupported wire type {wire_type}")


def expect_bytes(wire_type: int, value: int | bytes, name: str) -> bytes:
    """Return ``value`` if the field is length-delimited, else raise."""
    if wire_type != LEN or not isinstance(value, bytes):
        raise _err(f"field {name} must be length-delimited")
    return value


def expect_int(wire_type: int, value: int | bytes, name: str) -> int:
    """Return ``value`` if the field is a varint or fixed integer, else raise."""
    if wire_type == LEN or not isinstance(value, int):
        raise _err(f"field {name} must be an integer")
    return value


def expect_str(wire_type: int, value: int | bytes, name: str) -> str:
    """Return a length-delimited field decoded as strict UTF-8."""
    raw = expect_bytes(wire_type, value, name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _err(f"field {name} is not valid UTF-8") from exc


def key(field_no: int, wire_type: int) -> bytes:
    return varint.encode((field_no << 3) | wire_type)


def field_varint(field_no: int, value: int) -> bytes:
    """Encode a VARINT field (non-negative values only)."""
    return key(field_no, VARINT) + varint.encode(value)


def field_bytes(field_no: int, value: bytes) -> bytes:
    """Encode a LEN field."""
    return key(field_no, LEN) + varint.encode(len(value)) + value


def field_str(field_no: int, value: str) -> bytes:
    return field_bytes(field_no, value.encode("utf-8"))


def field_fixed64(field_no: int, value: int) -> bytes:
    return key(field_no, I64) + value.to_bytes(8, "little")
