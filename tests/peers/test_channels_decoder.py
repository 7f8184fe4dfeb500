"""FastFrameDecoder decides exactly as the gb_framing codec: same payloads, same errors, on
valid, corrupted and hostile input fed in arbitrary chunks (byte by byte included)."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from glueberry.errors import GlueberryError
from glueberry.peers.channels import FastFrameDecoder
from glueberry.peers.crypto import StreamCipher
from glueberry.proto.gb_framing import FrameDecoder, encode_encrypted_frames, encode_frames

SIZES = st.one_of(
    st.integers(0, 300),
    st.sampled_from([125, 126, 127, 128, 16381, 16382, 16383, 16384, 16385, 20000]),
)
CIPHER = StreamCipher(os.urandom(32))


def _run(decoder: FrameDecoder, chunks: list[bytes], encrypted: bool) -> list[object]:
    out: list[object] = []
    try:
        for chunk in [*chunks, b""]:
            if encrypted:
                batch = decoder.receive_encrypted(chunk, CIPHER)
                out.append(("batch", batch.messages, batch.failures))
            else:
                out.append(("data", decoder.receive_data(chunk)))
    except GlueberryError as exc:
        out.append(("error", type(exc).__name__, str(exc)))
    return out


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in points:
        if p > last:
            chunks.append(data[last:p])
            last = p
    if last < len(data):
        chunks.append(data[last:])
    return chunks


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int], bool, int]:
    encrypted = draw(st.booleans())
    sizes = draw(st.lists(SIZES, max_size=6))
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    data = bytearray(
        encode_encrypted_frames(CIPHER, payloads) if encrypted else encode_frames(payloads)
    )
    for _ in range(draw(st.integers(0, 3))):  # corruptions
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "insert", "truncate", "garbage"]))
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "truncate":
            del data[i:]
        else:
            data += draw(
                st.sampled_from([b"\x00", b"\x80", b"\x80\x00", b"\xff" * 10, b"\x03\x01"])
            )
    cuts = draw(st.lists(st.integers(0, 1 << 20), max_size=8))
    limit = draw(st.sampled_from([0, 100, 16384, 1 << 20]))
    return bytes(data), cuts, encrypted, limit


@settings(max_examples=200, deadline=None)
@given(streams())
def test_fast_decoder_matches_the_codec(case: tuple[bytes, list[int], bool, int]) -> None:
    data, cuts, encrypted, limit = case
    chunks = _split(data, cuts)
    make = FrameDecoder.for_encrypted if encrypted else FrameDecoder.for_handshake
    fast_make = FastFrameDecoder.for_encrypted if encrypted else FastFrameDecoder.for_handshake
    assert _run(fast_make(limit), chunks, encrypted) == _run(make(limit), chunks, encrypted)


@settings(max_examples=60, deadline=None)
@given(st.lists(SIZES, min_size=1, max_size=4))
def test_fast_decoder_byte_at_a_time(sizes: list[int]) -> None:
    data = bytes(encode_frames([b"x" * n for n in sizes]))
    chunks = [data[i : i + 1] for i in range(len(data))]
    fast = _run(FastFrameDecoder.for_handshake(1 << 20), chunks, False)
    assert fast == _run(FrameDecoder.for_handshake(1 << 20), chunks, False)
    got = [p for item in fast if item[0] == "data" for p in item[1]]  # type: ignore[index]
    assert got == [b"x" * n for n in sizes]
