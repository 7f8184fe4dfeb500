from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glueberry.errors import RemoteProtocolError
from glueberry.wire import varint


@given(st.integers(min_value=0, max_value=varint.MAX_VARINT_VALUE))
def test_round_trip(value: int) -> None:
    enc = varint.encode(value)
    assert varint.decode(enc) == (value, len(enc))
    assert varint.decode_exact(enc) == value
    # Every proper prefix is "need more data", never an error.
    for i in range(len(enc)):
        assert varint.decode(enc[:i]) is None


@pytest.mark.parametrize(
    ("value", "hexed"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (255, "ff01"),
        (300, "ac02"),
        (16384, "808001"),
    ],
)
def test_known_encodings(value: int, hexed: str) -> None:
    assert varint.encode(value).hex() == hexed


@pytest.mark.parametrize("bad", ["8000", "ff00", "808000", "ffffffffffffffffff01", "80" * 9 + "01"])
def test_rejects_non_minimal_and_overlong(bad: str) -> None:
    with pytest.raises(RemoteProtocolError):
        varint.decode(bytes.fromhex(bad))


def test_length_prefixed_checks_limit_before_body() -> None:
    frame = varint.encode(1 << 30)  # claims 1 GiB, body absent
    with pytest.raises(RemoteProtocolError):
        varint.decode_length_prefixed(frame, max_length=1024)
    assert varint.decode_length_prefixed(b"\x03ab", 10) is None
    assert varint.decode_length_prefixed(b"\x03abcd", 10) == (b"abc", 4)


@given(st.binary(max_size=20))
def test_decode_never_raises_other_errors(data: bytes) -> None:
    try:
        varint.decode(data)
    except RemoteProtocolError:
        pass
