"""multistream-select 1.0 machines: bytes in, events and bytes out (no sockets)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glueberry.errors import LocalProtocolError, NegotiationFailed, RemoteProtocolError
from glueberry.proto.multistream import (
    MAX_FAILED_PROPOSALS,
    MultistreamDialer,
    MultistreamListener,
    ProtocolSelected,
    encode_message,
)

HEADER = b"\x13/multistream/1.0.0\n"
NA = b"\x03na\n"
LS = b"\x03ls\n"


def msg(line: str | bytes) -> bytes:
    raw = line.encode() if isinstance(line, str) else line
    n = len(raw) + 1
    prefix = bytes((n,)) if n < 0x80 else bytes(((n & 0x7F) | 0x80, n >> 7))
    return prefix + raw + b"\n"


Feed = Callable[[MultistreamDialer | MultistreamListener, bytes], bytes]


def feed_whole(m: MultistreamDialer | MultistreamListener, data: bytes) -> bytes:
    """Feed everything at once; returns what was not fed (nothing)."""
    m.receive_data(data)
    return b""


def feed_bytewise(m: MultistreamDialer | MultistreamListener, data: bytes) -> bytes:
    """Feed one byte at a time, as a driver would, stopping once the machine is finished.

    Returns the bytes not fed: a driver hands them to the next layer after trailing_data.
    """
    for i in range(len(data)):
        if m.is_finished:
            return data[i:]
        m.receive_data(data[i : i + 1])
    return b""


FEEDS = pytest.mark.parametrize("feed", [feed_whole, feed_bytewise], ids=["whole", "bytewise"])


def selected(m: MultistreamDialer | MultistreamListener) -> ProtocolSelected:
    events = list(m.events())
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, ProtocolSelected)
    return ev


def test_wire_constants() -> None:
    assert encode_message("/multistream/1.0.0") == HEADER
    assert encode_message("na") == NA
    assert encode_message("/noise")[0] == 0x07
    assert encode_message("/yamux/1.0.0")[0] == 0x0D
    assert encode_message("/ipfs/ping/1.0.0")[0] == 0x11
    # Two-byte prefix above 127.
    long = "/" + "a" * 200
    assert encode_message(long)[:2] == bytes((0xCA, 0x01))


@FEEDS
def test_dialer_pipelines_header_and_first_proposal(feed: Feed) -> None:
    d = MultistreamDialer(["/noise", "/tls/1.0.0"])
    assert d.data_to_send() == HEADER + msg("/noise")
    assert d.data_to_send() == b""
    assert not d.may_send_data
    feed(d, HEADER + msg("/noise"))
    ev = selected(d)
    assert ev.protocol == "/noise" and ev.trailing_data == b""
    assert d.is_finished and d.may_send_data


@FEEDS
def test_dialer_proposes_next_on_na(feed: Feed) -> None:
    d = MultistreamDialer(["/tls/1.0.0", "/noise"])
    d.data_to_send()
    feed(d, HEADER + NA)
    assert d.data_to_send() == msg("/noise")
    assert d.next_event() is None
    rest = feed(d, msg("/noise") + b"\x00\x20rest")
    ev = selected(d)
    assert ev.protocol == "/noise"
    assert ev.trailing_data + rest == b"\x00\x20rest"


@FEEDS
def test_dialer_all_refused(feed: Feed) -> None:
    d = MultistreamDialer(["/a", "/b"])
    d.data_to_send()
    feed(d, HEADER + NA)
    assert d.data_to_send() == msg("/b")
    with pytest.raises(NegotiationFailed):
        feed(d, NA)
    # Terminal: further input is a local error.
    with pytest.raises(LocalProtocolError):
        d.receive_data(NA)


def test_dialer_rejects_unexpected_answer() -> None:
    d = MultistreamDialer(["/a"])
    with pytest.raises(RemoteProtocolError):
        d.receive_data(HEADER + msg("/b"))


def test_dialer_rejects_missing_header() -> None:
    d = MultistreamDialer(["/a"])
    with pytest.raises(RemoteProtocolError):
        d.receive_data(msg("/a"))


def test_dialer_eof() -> None:
    d = MultistreamDialer(["/a"])
    d.receive_data(HEADER)
    with pytest.raises(RemoteProtocolError):
        d.receive_data(b"")


def test_dialer_argument_checks() -> None:
    with pytest.raises(LocalProtocolError):
        MultistreamDialer([])
    with pytest.raises(LocalProtocolError):
        MultistreamDialer("/a")
    with pytest.raises(LocalProtocolError):
        MultistreamDialer(["/a", "/b"], lazy=True)
    with pytest.raises(LocalProtocolError):
        MultistreamDialer(["na"])
    with pytest.raises(LocalProtocolError):
        MultistreamDialer(["/bad\nname"])
    with pytest.raises(LocalProtocolError):
        MultistreamDialer([""])
    with pytest.raises(LocalProtocolError):
        MultistreamDialer(["/" + "x" * 1023])  # 1024 + newline > 1024
    MultistreamDialer(["/" + "x" * 1022])  # exactly 1024 with the newline


@FEEDS
def test_lazy_dialer(feed: Feed) -> None:
    d = MultistreamDialer(["/echo/1.0.0"], lazy=True)
    assert d.may_send_data
    assert d.data_to_send() == HEADER + msg("/echo/1.0.0")
    rest = feed(d, HEADER + msg("/echo/1.0.0") + b"reply")
    ev = selected(d)
    assert ev.trailing_data + rest == b"reply"


def test_lazy_dialer_refused() -> None:
    d = MultistreamDialer(["/echo/1.0.0"], lazy=True)
    d.data_to_send()
    with pytest.raises(NegotiationFailed):
        d.receive_data(HEADER + NA)
    assert d.data_to_send() == b""


@FEEDS
def test_listener_accepts(feed: Feed) -> None:
    lst = MultistreamListener({"/noise"})
    assert lst.data_to_send() == HEADER
    feed(lst, HEADER + msg("/noise"))
    assert lst.data_to_send() == msg("/noise")
    ev = selected(lst)
    assert ev.protocol == "/noise" and ev.trailing_data == b""


@FEEDS
def test_listener_refuses_then_accepts(feed: Feed) -> None:
    lst = MultistreamListener(lambda p: p == "/noise")
    lst.data_to_send()
    feed(lst, HEADER + msg("/tls/1.0.0"))
    assert lst.data_to_send() == NA
    assert lst.next_event() is None
    feed(lst, msg("/noise"))
    assert lst.data_to_send() == msg("/noise")
    assert selected(lst).protocol == "/noise"


@FEEDS
def test_listener_keeps_lazy_application_data(feed: Feed) -> None:
    """B-08: the protocol line and application data in one segment; nothing dropped."""
    lst = MultistreamListener(["/echo/1.0.0"])
    lst.data_to_send()
    payload = bytes(range(256)) * 4
    rest = feed(lst, HEADER + msg("/echo/1.0.0") + payload)
    assert selected(lst).trailing_data + rest == payload


def test_listener_pipelined_refusals_and_data() -> None:
    """A dialer that pipelines a refused proposal, then the right one, then data."""
    lst = MultistreamListener(["/b"])
    lst.data_to_send()
    lst.receive_data(HEADER + msg("/a") + msg("/b") + msg("/c") + b"xyz")
    assert lst.data_to_send() == NA + msg("/b")
    # The line after the accepted one belongs to the protocol, as raw bytes.
    assert selected(lst).trailing_data == msg("/c") + b"xyz"


@FEEDS
def test_listener_answers_ls_with_na(feed: Feed) -> None:
    lst = MultistreamListener(["/a"])
    lst.data_to_send()
    feed(lst, HEADER + LS)
    assert lst.data_to_send() == NA


def test_listener_refuses_reserved_words_and_empty() -> None:
    lst = MultistreamListener(lambda _p: True)
    lst.data_to_send()
    lst.receive_data(HEADER + NA + msg("/multistream/1.0.0") + msg(""))
    assert lst.data_to_send() == NA * 3
    assert lst.next_event() is None


def test_listener_caps_refused_proposals() -> None:
    """B-07: 1000 na-provoking proposals are cut off."""
    lst = MultistreamListener(["/a"])
    lst.data_to_send()
    lst.receive_data(HEADER)
    for i in range(MAX_FAILED_PROPOSALS):
        lst.receive_data(msg(f"/x/{i}"))
    assert lst.data_to_send() == NA * MAX_FAILED_PROPOSALS
    with pytest.raises(RemoteProtocolError):
        lst.receive_data(msg("/x/final"))
    assert lst.data_to_send() == b""


def test_listener_security_downgrade_refused() -> None:
    """B-30: plaintext and secio are refused unless configured."""
    lst = MultistreamListener(["/noise"])
    lst.data_to_send()
    lst.receive_data(HEADER + msg("/plaintext/2.0.0") + msg("/secio/1.0.0"))
    assert lst.data_to_send() == NA + NA


def test_listener_argument_checks() -> None:
    with pytest.raises(LocalProtocolError):
        MultistreamListener("/a")


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(msg("/a"), id="first-message-not-header"),
        pytest.param(b"\x00", id="zero-length"),
        pytest.param(b"\x88\x08" + b"x" * 10, id="length-1025"),
        pytest.param(b"\xff\xff\x01", id="three-byte-varint"),
        pytest.param(b"\x80\x00", id="non-minimal-varint"),
        pytest.param(b"\x03abc", id="no-newline"),
        pytest.param(HEADER + msg(b"/a\x00b"), id="nul-in-name"),
        pytest.param(HEADER + msg(b"/a\xff"), id="invalid-utf8"),
        pytest.param(HEADER + msg(b"/a\x1bb"), id="escape-char"),
        pytest.param(HEADER + msg(b"/a\xc2\x85"), id="c1-control"),
        pytest.param(HEADER + b"\x05/a\nb\n", id="embedded-newline"),
        pytest.param(b"\x14/multistream/1.0.0\n\n", id="header-extra-newline"),
    ],
)
@FEEDS
def test_listener_rejects_bad_input(feed: Feed, bad: bytes) -> None:
    """B-07 / B-28."""
    lst = MultistreamListener(["/a"])
    lst.data_to_send()
    with pytest.raises(RemoteProtocolError):
        feed(lst, bad)
    with pytest.raises(LocalProtocolError):
        lst.receive_data(HEADER)


def test_length_checked_before_buffering() -> None:
    """A 1025-byte declaration fails on the prefix alone, before any body arrives."""
    lst = MultistreamListener(["/a"])
    with pytest.raises(RemoteProtocolError):
        lst.receive_data(b"\x81\x08")


def test_max_length_message_accepted() -> None:
    name = "/" + "p" * 1022
    lst = MultistreamListener([name])
    lst.receive_data(HEADER + msg(name))
    assert selected(lst).protocol == name


def test_receive_after_done_is_local_error() -> None:
    lst = MultistreamListener(["/a"])
    lst.receive_data(HEADER + msg("/a"))
    with pytest.raises(LocalProtocolError):
        lst.receive_data(b"more")


def test_unicode_protocol_name() -> None:
    name = "/chat/日本/1.0"
    d = MultistreamDialer([name])
    lst = MultistreamListener([name])
    lst.receive_data(d.data_to_send())
    d.receive_data(lst.data_to_send())
    assert selected(d).protocol == name
    assert selected(lst).protocol == name


def test_timer_contract() -> None:
    d = MultistreamDialer(["/a"])
    assert d.get_timer() is None
    d.handle_timer(123.0)


def _run_pair(
    dialer: MultistreamDialer, listener: MultistreamListener, chunk: int
) -> tuple[ProtocolSelected, ProtocolSelected]:
    d_ev: ProtocolSelected | None = None
    l_ev: ProtocolSelected | None = None
    for _ in range(100):
        for src, dst in ((dialer, listener), (listener, dialer)):
            out = src.data_to_send()
            if dst.is_finished:
                continue
            for i in range(0, len(out), chunk):
                dst.receive_data(out[i : i + chunk])
        for ev in dialer.events():
            assert isinstance(ev, ProtocolSelected)
            d_ev = ev
        for ev in listener.events():
            assert isinstance(ev, ProtocolSelected)
            l_ev = ev
        if d_ev and l_ev:
            return d_ev, l_ev
    raise AssertionError("negotiation did not finish")


@settings(max_examples=60, deadline=None)
@given(
    offered=st.lists(st.sampled_from(["/a", "/b", "/c", "/d"]), min_size=1, max_size=4),
    supported=st.sets(st.sampled_from(["/a", "/b", "/c", "/d"])),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_dialer_listener_agree(offered: list[str], supported: set[str], chunk: int) -> None:
    dialer = MultistreamDialer(offered)
    listener = MultistreamListener(supported)
    expected = next((p for p in offered if p in supported), None)
    if expected is None:
        with pytest.raises(NegotiationFailed):
            _run_pair(dialer, listener, chunk)
        return
    d_ev, l_ev = _run_pair(dialer, listener, chunk)
    assert d_ev.protocol == l_ev.protocol == expected
    assert d_ev.trailing_data == l_ev.trailing_data == b""


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_listener_never_raises_anything_else(data: bytes) -> None:
    lst = MultistreamListener(["/a"])
    try:
        lst.receive_data(data)
        lst.receive_data(HEADER + data)
    except RemoteProtocolError:
        pass
    except LocalProtocolError:
        pass  # called again after the first call failed: the machine is terminal


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_dialer_never_raises_anything_else(data: bytes) -> None:
    d = MultistreamDialer(["/a", "/b"])
    try:
        d.receive_data(HEADER + data)
    except (RemoteProtocolError, NegotiationFailed):
        pass
