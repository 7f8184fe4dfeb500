"""Unsigned varints (LEB128), as used by multiformats and libp2p.

Spec: https://github.com/multiformats/unsigned-varint

Decoding is strict: the spec requires the minimal encoding ("MUST be minimally encoded") and
caps practical varints at 9 bytes (63 bits). Both rules are enforced, so a non-minimal or
over-long varint raises :class:`~glueberry.errors.RemoteProtocolError` rather than being
silently accepted. ``decode`` returns ``None`` when more bytes are needed, which lets every
framing layer tell "incomplete" from "malformed" without trying twice.
"""

from __future__ import annotations

from typing import Final

from glueberry.errors import LocalProtocolError, RemoteProtocolError

#: The multiformats spec limits varints to 9 bytes (63 bits of payload).
MAX_VARINT_BYTES: Final = 9
MAX_VARINT_VALUE: Final = (1 << 63) - 1

# Pre-encoded small values: most lengths on the hot path are < 16 KiB (1-2 bytes).
_SMALL: Final = tuple(
    bytes((v,)) if v < 0x80 else bytes(((v & 0x7F) | 0x80, v >> 7)) for v in range(1 << 14)
)


def encode(value: int) -> bytes:
    """Encode ``value`` (0 <= value < 2**63) as a minimal unsigned varint."""
    if 0 <= value < 16384:
        return _SMALL[value]
    if value < 0 or value > MAX_VARINT_VALUE:
        raise LocalProtocolError(f"varint out of range: {value}", protocol="varint")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int] | None:
    """Decode a varint at ``buf[offset:]``.

    Returns:
        ``(value, new_offset)``, or ``None`` if ``buf`` ends before the varint does.

    Raises:
        RemoteProtocolError: the varint is longer than 9 bytes or not minimally encoded.
    """
    end = len(buf)
    if offset < end:
        b = buf[offset]
        if b < 0x80:  # fast path: one byte
            return b, offset + 1
    value = 0
    shift = 0
    i = offset
    while i < end:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            if b == 0 and i - offset > 1:
                raise RemoteProtocolError("non-minimal varint", protocol="varint")
            return value, i
        shift += 7
        if i - offset >= MAX_VARINT_BYTES:
            raise RemoteProtocolError("varint longer than 9 bytes", protocol="varint")
    return None


def decode_exact(buf: bytes | bytearray | memoryview) -> int:
    """Decode a buffer that must hold exactly one varint and nothing else."""
    res = decode(buf, 0)
    if res is None:
        raise RemoteProtocolError("truncated varint", protocol="varint")
    value, end = res
    if end != len(buf):
        raise RemoteProtocolError("trailing bytes after varint", protocol="varint")
    return value


def encode_length_prefixed(payload: bytes) -> bytes:
    """``uvarint(len(payload)) || payload``."""
    return encode(len(payload)) + payload


def decode_length_prefixed(
    buf: bytes | bytearray | memoryview, max_length: int, offset: int = 0
) -> tuple[bytes, int] | None:
    """Read one ``uvarint(len) || body`` frame, checking ``len <= max_length`` first.

    Returns ``(body, new_offset)`` or ``None`` when the frame is incomplete. The length is
    validated before anything is allocated, so a hostile prefix cannot cost memory.
    """
    res = decode(buf, offset)
    if res is None:
        return None
    length, start = res
    if length > max_length:
        raise RemoteProtocolError(
            f"length prefix {length} exceeds limit {max_length}", protocol="varint"
        )
    stop = start + length
    if stop > len(buf):
        return None
    return bytes(buf[start:stop]), stop
