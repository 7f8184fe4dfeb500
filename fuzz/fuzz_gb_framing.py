"""Fuzz target: glueberry v1 frames (``uvarint(L) ‖ uvarint(N) ‖ payload``).

Each input is decoded whole and then again one byte at a time; both runs must agree, and the
only exception allowed is RemoteProtocolError. Re-encoding what was decoded must reproduce the
consumed bytes exactly (the decoder accepts only canonical frames).
"""

from __future__ import annotations

from glueberry.errors import RemoteProtocolError
from glueberry.proto import gb_framing

SEEDS = [
    b"\x04\x03\x01\x02\x03",
    b"\x01\x00",
    b"\x01\x00\x01\x00",
    b"\x00",
    b"\xca\x01\xc8\x01" + bytes(200),
    b"\x22\x21" + bytes(33),
    b"\x04\x02\x01\x02\x03",
    b"\x80\x80\x80\x80",
]

MAX_PAYLOAD = 256


def _decode(data: bytes, step: int) -> tuple[list[bytes], BaseException | None]:
    dec = gb_framing.FrameDecoder(MAX_PAYLOAD)
    out: list[bytes] = []
    try:
        for i in range(0, len(data), step):
            out += dec.receive_data(data[i : i + step])
        dec.receive_data(b"")
    except RemoteProtocolError as exc:
        return out, exc
    return out, None


def TARGET(data: bytes) -> None:
    whole, err_whole = _decode(data, max(len(data), 1))
    bytewise, err_bytewise = _decode(data, 1)
    # Byte-at-a-time may deliver frames before the error that the whole-buffer call lost.
    assert (err_whole is None) == (err_bytewise is None)
    if err_whole is None:
        assert whole == bytewise
        assert bytes(gb_framing.encode_frames(whole)) == data
    else:
        assert bytewise[: len(whole)] == whole
    if err_bytewise is not None:
        raise err_bytewise
