"""yamux frame header codec: the 12-byte header every yamux frame starts with.

Spec: https://github.com/libp2p/specs/blob/master/yamux/README.md (r0, 2023-02-17), a copy of
hashicorp's ``spec.md``.

Layout (big-endian)::

    +---------+--------+----------+--------------+-------------+
    | version | type   | flags    | stream ID    | length      |
    | u8 = 0  | u8 0-3 | u16 0-15 | u32          | u32         |
    +---------+--------+----------+--------------+-------------+

``length`` means different things per type: the payload size that follows a Data header, the
window *delta* of a WindowUpdate, the opaque value of a Ping (echoed in the ACK) and the error
code of a GoAway. go-yamux v5 also puts the application error code of a stream reset in the
length of a ``WindowUpdate|RST`` frame; that value is never a window delta.

This module is pure: :func:`encode_header` / :func:`decode_header` for tests, fuzzing and the
cold paths, and the shared :data:`HEADER` ``struct.Struct`` the session's hot paths use with
``unpack_from``/``pack_into`` directly.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from glueberry.errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_ID: Final = "/yamux/1.0.0"

#: ``>BBHII``: version, type, flags, stream ID, length.
HEADER: Final = struct.Struct(">BBHII")
HEADER_SIZE: Final = 12
VERSION: Final = 0

TYPE_DATA: Final = 0
TYPE_WINDOW_UPDATE: Final = 1
TYPE_PING: Final = 2
TYPE_GO_AWAY: Final = 3

FLAG_SYN: Final = 0x1
FLAG_ACK: Final = 0x2
FLAG_FIN: Final = 0x4
FLAG_RST: Final = 0x8
#: Every flag bit the spec defines; any other bit is a protocol error here.
KNOWN_FLAGS: Final = FLAG_SYN | FLAG_ACK | FLAG_FIN | FLAG_RST

GO_AWAY_NORMAL: Final = 0
GO_AWAY_PROTOCOL_ERROR: Final = 1
GO_AWAY_INTERNAL_ERROR: Final = 2

#: The spec's initial per-stream window: both sides assume it until a window update says more.
INITIAL_STREAM_WINDOW: Final = 256 * 1024
MAX_U32: Final = 0xFFFFFFFF


class FrameType(enum.IntEnum):
    """The four frame types (the header's second byte)."""

    DATA = TYPE_DATA
    WINDOW_UPDATE = TYPE_WINDOW_UPDATE
    PING = TYPE_PING
    GO_AWAY = TYPE_GO_AWAY


class Flag(enum.IntFlag):
    """Header flags; several may be set at once (e.g. ``ACK|FIN``)."""

    SYN = FLAG_SYN
    ACK = FLAG_ACK
    FIN = FLAG_FIN
    RST = FLAG_RST


@dataclass(frozen=True, slots=True, kw_only=True)
class Header:
    """One decoded frame header. Not meant to be subclassed."""

    type: FrameType
    """Data, WindowUpdate, Ping or GoAway."""
    flags: Flag
    """Any combination of SYN, ACK, FIN, RST."""
    stream_id: int
    """The stream addressed; 0 for the session (Ping, GoAway)."""
    length: int
    """Payload size (Data), window delta (WindowUpdate), opaque value (Ping), error code
    (GoAway, and go-yamux's ``WindowUpdate|RST``)."""


def encode_header(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    """Encode one 12-byte header.

    Raises:
        LocalProtocolError: a field is out of range (unknown type or flag bits, IDs or
            lengths outside ``u32``).
    """
    if frame_type not in (TYPE_DATA, TYPE_WINDOW_UPDATE, TYPE_PING, TYPE_GO_AWAY):
        raise LocalProtocolError(f"unknown yamux frame type {frame_type}", protocol=PROTOCOL_ID)
    if flags & ~KNOWN_FLAGS or flags < 0:
        raise LocalProtocolError(f"unknown yamux flags 0x{flags:x}", protocol=PROTOCOL_ID)
    if not 0 <= stream_id <= MAX_U32 or not 0 <= length <= MAX_U32:
        raise LocalProtocolError("yamux stream ID or length outside u32", protocol=PROTOCOL_ID)
    return HEADER.pack(VERSION, frame_type, flags, stream_id, length)


def check_header(version: int, frame_type: int, flags: int) -> None:
    """Validate the fields every frame must get right, whatever its stream.

    Raises:
        RemoteProtocolError: version other than 0, type above 3, or flag bits the spec does
            not define (``wire_code`` 1: the GoAway code for a protocol error).
    """
    if version != VERSION:
        raise RemoteProtocolError(
            f"yamux version {version} (only 0 exists)",
            protocol=PROTOCOL_ID,
            wire_code=GO_AWAY_PROTOCOL_ERROR,
        )
    if frame_type > TYPE_GO_AWAY:
        raise RemoteProtocolError(
            f"unknown yamux frame type {frame_type}",
            protocol=PROTOCOL_ID,
            wire_code=GO_AWAY_PROTOCOL_ERROR,
        )
    if flags & ~KNOWN_FLAGS:
        raise RemoteProtocolError(
            f"unknown yamux flags 0x{flags:04x}",
            protocol=PROTOCOL_ID,
            wire_code=GO_AWAY_PROTOCOL_ERROR,
        )


def decode_header(
    buf: bytes | bytearray | memoryview, offset: int = 0
) -> tuple[Header, int] | None:
    """Decode the header at ``buf[offset:]``.

    Returns:
        ``(header, offset + 12)``, or ``None`` when fewer than 12 bytes are available.

    Raises:
        RemoteProtocolError: see :func:`check_header`.
    """
    if len(buf) - offset < HEADER_SIZE:
        return None
    version, frame_type, flags, stream_id, length = HEADER.unpack_from(buf, offset)
    check_header(version, frame_type, flags)
    header = Header(
        type=FrameType(frame_type), flags=Flag(flags), stream_id=stream_id, length=length
    )
    return header, offset + HEADER_SIZE


__all__ = [
    "FLAG_ACK",
    "FLAG_FIN",
    "FLAG_RST",
    "FLAG_SYN",
    "GO_AWAY_INTERNAL_ERROR",
    "GO_AWAY_NORMAL",
    "GO_AWAY_PROTOCOL_ERROR",
    "HEADER",
    "HEADER_SIZE",
    "INITIAL_STREAM_WINDOW",
    "KNOWN_FLAGS",
    "MAX_U32",
    "PROTOCOL_ID",
    "TYPE_DATA",
    "TYPE_GO_AWAY",
    "TYPE_PING",
    "TYPE_WINDOW_UPDATE",
    "VERSION",
    "Flag",
    "FrameType",
    "Header",
    "check_header",
    "decode_header",
    "encode_header",
]
