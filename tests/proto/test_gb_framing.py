"""Glueberry v1 framing: golden bytes (reference §1.4), round trips, splits, hostile input."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glueberry.errors import (
    DecryptionFailed,
    GlueberryError,
    LocalProtocolError,
    RemoteProtocolError,
)
from glueberry.peers.crypto import StreamCipher
from glueberry.proto import gb_framing
from glueberry.proto.gb_framing import FrameDecoder
from glueberry.wire import varint

GOLDEN = [
    (b"\x01\x02\x03", "0403"),
    (b"", "0100"),
    (bytes(200), "ca01c801"),
    (bytes(16384), "838001808001"),
    (bytes(1 << 20), "838040808040"),
]


@pytest.mark.parametrize(("payload", "header"), GOLDEN)
def test_golden_frames(payload: bytes, header: str) -> None:
    frame = gb_framing.encode_frame(payload)
    assert frame == bytes.fromhex(header) + payload
    assert FrameDecoder(len(payload)).receive_data(frame) == [payload]
    res = varint.decode(frame)
    assert res is not None
    assert res[0] == gb_framing.frame_length(len(payload)) == len(frame) - res[1]


def test_frame_length() -> None:
    assert gb_framing.frame_length(3) == 4
    assert gb_framing.frame_length(0) == 1
    assert gb_framing.frame_length(200) == 202
    assert gb_framing.frame_length(1 << 20) == (1 << 20) + 3


def test_empty_encrypted_message_frame() -> None:
    cipher = StreamCipher(os.urandom(32))
    frame = gb_framing.encode_encrypted_frame(cipher, b"")
    assert frame[:2] == b"\x1d\x1c" and len(frame) == 30


def test_max_message_size_limit_fits_go_reader() -> None:
    n = gb_framing.MAX_MESSAGE_SIZE_LIMIT + gb_framing.ENCRYPTION_OVERHEAD
    assert gb_framing.frame_length(n) <= gb_framing.GO_MAX_OUTER_LENGTH
    assert gb_framing.frame_length(n + 1) > gb_framing.GO_MAX_OUTER_LENGTH
    with pytest.raises(LocalProtocolError):
        gb_framing.encode_frame_header(n + 1)


payloads_st = st.lists(st.binary(max_size=300), max_size=8)


@given(payloads_st)
def test_round_trip_whole(payloads: list[bytes]) -> None:
    data = bytes(gb_framing.encode_frames(payloads))
    assert data == b"".join(gb_framing.encode_frame(p) for p in payloads)
    dec = FrameDecoder(300)
    assert dec.receive_data(data) == payloads if data else True
    assert dec.receive_data(b"") == []


@given(payloads_st)
def test_round_trip_one_byte_at_a_time(payloads: list[bytes]) -> None:
    data = bytes(gb_framing.encode_frames(payloads))
    dec = FrameDecoder(300)
    out: list[bytes] = []
    for i in range(len(data)):
        out += dec.receive_data(data[i : i + 1])
    assert out == payloads
    assert dec.buffered == 0
    dec.receive_data(b"")


@given(
    payloads_st,
    st.lists(st.integers(0, 3000), max_size=10),
    st.sampled_from([bytes, bytearray, memoryview]),
)
def test_round_trip_arbitrary_splits(payloads: list[bytes], cuts: list[int], kind: type) -> None:
    data = bytes(gb_framing.encode_frames(payloads))
    dec = FrameDecoder(300)
    out: list[bytes] = []
    prev = 0
    for c in [*sorted({c for c in cuts if c < len(data)}), len(data)]:
        if c > prev:
            out += dec.receive_data(kind(data[prev:c]))
            prev = c
    assert out == payloads
    assert all(type(p) is bytes for p in out)


def test_large_frame_in_many_chunks_is_buffered_linearly() -> None:
    payload = os.urandom(1 << 20)
    data = gb_framing.encode_frame(payload)
    dec = FrameDecoder(1 << 20)
    out: list[bytes] = []
    for i in range(0, len(data), 4096):
        out += dec.receive_data(data[i : i + 4096])
        if not out:
            assert dec.buffered == min(i + 4096, len(data))
    assert out == [payload]


def test_caller_buffer_may_be_reused() -> None:
    frame = gb_framing.encode_frame(b"abcdef")
    buf = bytearray(frame[:4])
    dec = FrameDecoder(10)
    assert dec.receive_data(buf) == []
    buf[:] = b"\xff\xff\xff\xff"
    assert dec.receive_data(frame[4:]) == [b"abcdef"]


BAD = [
    (b"\x00", "zero-length"),
    (b"\x03\x03\x01\x02", "exceeds the frame"),  # N > L - 1
    (b"\x04\x02\x01\x02\x03", "trailing"),
    (b"\x01\x80", "runs past"),  # inner varint unterminated inside the frame
    (b"\x01\x80\x01\x00", "runs past"),
    (b"\x02\x80\x01", "exceeds the frame"),
    (b"\x03\x80\x00\x00", "malformed varint"),  # non-minimal inner varint
    (b"\x80\x00", "malformed varint"),  # non-minimal outer varint
    (b"\xff" * 9 + b"\x01", "malformed varint"),
    (b"\x8c\x01", "exceeds the limit"),  # L = 140 > 100 + 1
]


@pytest.mark.parametrize(("data", "why"), BAD)
def test_rejects(data: bytes, why: str) -> None:
    for step in (len(data), 1):
        dec = FrameDecoder(100)
        with pytest.raises(RemoteProtocolError, match=why) as info:
            for i in range(0, len(data), step):
                dec.receive_data(data[i : i + step])
        assert info.value.protocol == "glueberry"
        with pytest.raises(LocalProtocolError):
            dec.receive_data(b"\x01\x00")


def test_oversize_is_rejected_before_buffering() -> None:
    dec = FrameDecoder.for_encrypted(1 << 20)
    header = gb_framing.encode_frame_header((1 << 20) + 29)
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        dec.receive_data(header[:3])
    ok = FrameDecoder.for_encrypted(1 << 20)
    assert ok.receive_data(gb_framing.encode_frame_header((1 << 20) + 28)) == []


def test_handshake_limit() -> None:
    dec = FrameDecoder.for_handshake(10)
    assert dec.receive_data(gb_framing.encode_frame(bytes(10))) == [bytes(10)]
    with pytest.raises(RemoteProtocolError):
        dec.receive_data(gb_framing.encode_frame(bytes(11)))


@pytest.mark.parametrize("partial", [b"\x80", b"\x05", b"\x05\x04\x01", b"\x96\x01\x94\x01\x00"])
def test_eof_inside_frame(partial: bytes) -> None:
    dec = FrameDecoder(1000)
    assert dec.receive_data(partial) == []
    with pytest.raises(RemoteProtocolError, match="ended inside"):
        dec.receive_data(b"")


def test_clean_eof_then_closed() -> None:
    dec = FrameDecoder(10)
    assert dec.receive_data(b"\x01\x00\x02\x01a") == [b"", b"a"]
    assert dec.receive_data(b"") == []
    with pytest.raises(LocalProtocolError):
        dec.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        dec.receive_data(b"\x01\x00")


def test_bad_max_payload() -> None:
    with pytest.raises(LocalProtocolError):
        FrameDecoder(-1)
    with pytest.raises(LocalProtocolError):
        FrameDecoder(gb_framing.GO_MAX_OUTER_LENGTH)


@given(st.lists(st.binary(max_size=200), max_size=6), st.integers(1, 50))
def test_encrypted_round_trip(plaintexts: list[bytes], step: int) -> None:
    key = os.urandom(32)
    data = bytes(gb_framing.encode_encrypted_frames(StreamCipher(key), plaintexts))
    assert len(data) == sum(len(gb_framing.encode_frame(bytes(len(p) + 28))) for p in plaintexts)
    dec = FrameDecoder.for_encrypted(200)
    cipher = StreamCipher(key)
    out: list[bytes] = []
    for i in range(0, len(data), step):
        batch = dec.receive_encrypted(data[i : i + step], cipher)
        assert batch.failures == 0 and batch.error is None
        out += batch.messages
    assert out == plaintexts
    assert dec.receive_encrypted(b"", cipher).messages == []


def test_encrypted_failure_is_counted_and_framing_survives() -> None:
    key = os.urandom(32)
    good = StreamCipher(key)
    evil = StreamCipher(os.urandom(32))
    data = (
        gb_framing.encode_encrypted_frame(good, b"one")
        + gb_framing.encode_encrypted_frame(evil, b"forged")
        + gb_framing.encode_frame(b"short")  # < 28 bytes
        + gb_framing.encode_encrypted_frame(good, b"two")
    )
    batch = FrameDecoder.for_encrypted(100).receive_encrypted(data, good)
    assert batch.messages == [b"one", b"two"]
    assert batch.failures == 2
    assert isinstance(batch.error, DecryptionFailed)


def test_encrypted_oversize_plaintext_rejected_by_frame_limit() -> None:
    cipher = StreamCipher(os.urandom(32))
    dec = FrameDecoder.for_encrypted(100)
    with pytest.raises(RemoteProtocolError):
        dec.receive_encrypted(gb_framing.encode_encrypted_frame(cipher, bytes(101)), cipher)


@given(st.binary(max_size=64))
def test_never_raises_anything_else(data: bytes) -> None:
    for step in (len(data) or 1, 1):
        dec = FrameDecoder(32)
        try:
            for i in range(0, len(data), step):
                dec.receive_data(data[i : i + step])
            dec.receive_data(b"")
        except RemoteProtocolError:
            pass


@pytest.mark.parametrize("name", ["messages", "a", "chat-1_x", "ünïcödé", "名前", "x" * 64, "٣"])
def test_valid_stream_names(name: str) -> None:
    assert gb_framing.validate_stream_name(name) == name
    pid = gb_framing.stream_protocol_id(name)
    assert pid == f"/glueberry/stream/{name}/1.0.0"
    assert gb_framing.stream_name_from_protocol_id(pid) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "non-empty"),
        ("a b", "invalid character"),
        ("a/b", "invalid character"),
        ("x" * 65, "longer than 64"),
        ("é" * 33, "longer than 64"),
        ("²", "invalid character"),  # a digit for isdigit, not a decimal (Go: not Nd)
        ("handshake", "reserved"),
    ],
)
def test_invalid_stream_names(name: str, why: str) -> None:
    with pytest.raises(LocalProtocolError, match=why):
        gb_framing.validate_stream_name(name)


def test_handshake_stream_protocol_id() -> None:
    assert gb_framing.HANDSHAKE_STREAM == "handshake"
    pid = gb_framing.stream_protocol_id(gb_framing.HANDSHAKE_STREAM)
    assert pid == "/glueberry/stream/handshake/1.0.0"
    assert gb_framing.stream_name_from_protocol_id(pid) == "handshake"
    assert gb_framing.validate_stream_name("handshake", allow_handshake=True) == "handshake"
    assert gb_framing.validate_stream_name("abc", 3) == "abc"
    for bad in (
        "/glueberry/handshake/1.0.0",
        "/glueberry/stream//1.0.0",
        "/glueberry/stream/a b/1.0.0",
        "/x",
    ):
        assert gb_framing.stream_name_from_protocol_id(bad) is None


# --- the inline fast path decides exactly as the general scanner -----------------------------


class CodecOnly(FrameDecoder):
    """The decoder without its inline paths: every buffer goes to the general scanner."""

    __slots__ = ()
    _one_frame_inline = False

    def _scan(self, buf: bytes | bytearray | memoryview, pos: int, offsets: list[int]) -> int:
        return self._scan_codec(buf, pos, offsets)


SIZES = st.one_of(
    st.integers(0, 300),
    st.sampled_from([125, 126, 127, 128, 16381, 16382, 16383, 16384, 16385, 20000]),
)
DIFF_CIPHER = StreamCipher(os.urandom(32))


def _run(decoder: FrameDecoder, chunks: list[bytes], encrypted: bool) -> list[object]:
    out: list[object] = []
    try:
        for chunk in [*chunks, b""]:
            if encrypted:
                batch = decoder.receive_encrypted(chunk, DIFF_CIPHER)
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
def frame_streams(draw: st.DrawFn) -> tuple[bytes, list[int], bool, int]:
    encrypted = draw(st.booleans())
    sizes = draw(st.lists(SIZES, max_size=6))
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    data = bytearray(
        gb_framing.encode_encrypted_frames(DIFF_CIPHER, payloads)
        if encrypted
        else gb_framing.encode_frames(payloads)
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
@given(frame_streams())
def test_fast_path_matches_the_codec(case: tuple[bytes, list[int], bool, int]) -> None:
    """Same payloads, same failures, same errors, on valid, corrupted and hostile input fed in
    arbitrary chunks."""
    data, cuts, encrypted, limit = case
    chunks = _split(data, cuts)
    fast = FrameDecoder.for_encrypted if encrypted else FrameDecoder.for_handshake
    codec = CodecOnly.for_encrypted if encrypted else CodecOnly.for_handshake
    assert _run(fast(limit), chunks, encrypted) == _run(codec(limit), chunks, encrypted)


@st.composite
def single_frames(draw: st.DrawFn) -> tuple[bytes, int]:
    """One encrypted frame, whole, with at most two bytes of its header or tail changed."""
    size = draw(st.one_of(st.integers(0, 140), st.integers(16300, 16400), st.integers(900, 1100)))
    data = bytearray(gb_framing.encode_encrypted_frame(DIFF_CIPHER, bytes(size)))
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.sampled_from([0, 1, 2, 3, len(data) - 1]))
        data[i % len(data)] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0x81, 0xFF]))
    if draw(st.booleans()):
        data += draw(st.sampled_from([b"", b"\x00", b"\x01\x00"]))
    limit = draw(st.sampled_from([0, 100, 1000, 16384, 1 << 20]))
    return bytes(data), limit


@settings(max_examples=400, deadline=None)
@given(single_frames())
def test_one_frame_read_matches_the_codec(case: tuple[bytes, int]) -> None:
    """A read holding exactly one frame (the request/response path) is decided inline: same
    payload, failure or error as the general scanner, valid or not."""
    data, limit = case
    fast = _run(FrameDecoder.for_encrypted(limit), [data], True)
    assert fast == _run(CodecOnly.for_encrypted(limit), [data], True)


@pytest.mark.parametrize(
    "data",
    [
        # two-byte L = 135, one-byte N = 5 followed by 0x01: read as a two-byte N, 5 | 1 << 7
        # would "fill" the frame; N = 5 does not.
        b"\x87\x01\x05\x01" + bytes(133),
        b"\x87\x01\x85\x00" + bytes(133),  # N = 5 in a non-minimal two-byte varint
        b"\x03\x02\x00\x00",  # one-byte L and N, N one short of filling the frame
        b"\x02\x01\x00",  # the smallest frame with a payload, too short to decrypt
    ],
)
def test_one_frame_read_near_misses(data: bytes) -> None:
    fast = _run(FrameDecoder.for_encrypted(1000), [data], True)
    assert fast == _run(CodecOnly.for_encrypted(1000), [data], True)


@settings(max_examples=60, deadline=None)
@given(st.lists(SIZES, min_size=1, max_size=4), st.booleans())
def test_fast_path_byte_at_a_time(sizes: list[int], encrypted: bool) -> None:
    payloads = [b"x" * n for n in sizes]
    data = bytes(
        gb_framing.encode_encrypted_frames(DIFF_CIPHER, payloads)
        if encrypted
        else gb_framing.encode_frames(payloads)
    )
    chunks = [data[i : i + 1] for i in range(len(data))]
    make = FrameDecoder.for_encrypted if encrypted else FrameDecoder.for_handshake
    codec = CodecOnly.for_encrypted if encrypted else CodecOnly.for_handshake
    fast = _run(make(1 << 20), chunks, encrypted)
    assert fast == _run(codec(1 << 20), chunks, encrypted)
    got = [p for item in fast for p in item[1]]  # type: ignore[index]
    assert got == payloads


def test_frames_straddling_reads() -> None:
    """A read that completes the pending frame and carries more frames delivers them all."""
    payloads = [bytes([i]) * 1000 for i in range(5)]
    data = bytes(gb_framing.encode_frames(payloads))
    dec = FrameDecoder(2000)
    assert dec.receive_data(data[:500]) == []
    assert dec.buffered == 500
    assert dec.receive_data(data[500:3000]) == payloads[:2]
    assert dec.receive_data(data[3000:]) == payloads[2:]
    assert dec.buffered == 0
    assert dec.receive_data(b"") == []


def test_open_frames_counts_failures_and_goes_on() -> None:
    key = os.urandom(32)
    good, evil = StreamCipher(key), StreamCipher(os.urandom(32))
    blobs = [good.seal(b"one"), evil.seal(b"two"), b"short", good.seal(b"three")]
    buf = b"".join(blobs)
    offsets, pos = [], 0
    for b in blobs:
        offsets += [pos, pos + len(b)]
        pos += len(b)
    out, failures, first = good.open_frames(memoryview(buf), offsets)
    assert out == [b"one", b"three"]
    assert failures == 2
    assert isinstance(first, DecryptionFailed) and "tag" in str(first)
