"""Differential tests: our Multiaddr against the PyPI ``multiaddr`` package (dev-only oracle).

Hypothesis builds valid multiaddrs component by component; both implementations must give
the same binary form from the text form, the same text form from the binary form, and read
each other's output. Where the oracle is known to be wrong or lenient, the difference is
listed here and our behaviour is pinned by a test:

* ``/unix``: go-multiaddr (the reference) keeps the leading ``/`` of the path in the binary
  value (``/unix/tmp/s`` -> value ``"/tmp/s"``); the oracle drops it. We follow go, so the
  differential strategies leave ``/unix`` out.
* The oracle accepts malformed binary input that go rejects and we reject:
  ``ORACLE_ACCEPTS_MALFORMED`` below (truncated fixed-size values are zero-padded, length
  prefixes running past the end are cut short, non-minimal varints, short sha2-256 peer
  IDs, path components that are not last, the empty address, no length cap).
* The oracle also accepts sloppy text that we refuse: ``"ip4/1.2.3.4"`` (no leading
  slash), ``"/"``, ``"//"``, empty components (``"/ip4/1.2.3.4//tcp/1"``), ports with a sign,
  leading zeros or non-ASCII digits (``"/tcp/+1"``, ``"/tcp/080"``, ``"/tcp/١"``).
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glueberry.wire import varint
from glueberry.wire.identity import b58encode
from glueberry.wire.multiaddr import Multiaddr, MultiaddrError

oracle = pytest.importorskip("multiaddr")

from tests.wire.test_multiaddr import MALFORMED_BYTES, MALFORMED_TEXT  # noqa: E402

# --- strategies --------------------------------------------------------------------------

_ports = st.integers(0, 65535).map(str)
_ip4 = st.binary(min_size=4, max_size=4).map(lambda b: ".".join(str(x) for x in b))
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?", fullmatch=True)
_domain = st.lists(_label, min_size=1, max_size=4).map(".".join)


def _ip6_text(raw: bytes) -> str:
    import ipaddress

    return str(ipaddress.IPv6Address(raw))


# Addresses that look IPv4-embedded print differently across Python versions and between
# implementations ("::ffff:1.2.3.4" vs "::ffff:102:304"); compare those by bytes only.
_ip6 = st.binary(min_size=16, max_size=16).filter(lambda b: b[:10] != b"\0" * 10).map(_ip6_text)


def _identity_peer_id(key: bytes) -> str:
    proto = b"\x08\x01\x12\x20" + key
    return b58encode(b"\x00" + varint.encode(len(proto)) + proto)


def _sha256_peer_id(seed: bytes) -> str:
    return b58encode(b"\x12\x20" + hashlib.sha256(seed).digest())


_peer_id = st.one_of(
    st.binary(min_size=32, max_size=32).map(_identity_peer_id),
    st.binary(max_size=8).map(_sha256_peer_id),
)


def _certhash(digest: bytes) -> str:
    import base64

    mh = b"\x12\x20" + digest
    return "u" + base64.urlsafe_b64encode(mh).decode().rstrip("=")


_http_path = st.text(
    st.sampled_from("abcXYZ019-._~"), min_size=1, max_size=12
)  # unreserved characters only: every encoder agrees on them


def _onion3(raw: bytes) -> str:
    import base64

    return base64.b32encode(raw).decode().lower()


_onion3_value = st.tuples(st.binary(min_size=35, max_size=35), st.integers(1, 65535)).map(
    lambda t: f"{_onion3(t[0])}:{t[1]}"
)

_component = st.one_of(
    _ip4.map(lambda v: f"/ip4/{v}"),
    _ip6.map(lambda v: f"/ip6/{v}"),
    st.tuples(st.sampled_from(["tcp", "udp", "dccp", "sctp"]), _ports).map(
        lambda t: f"/{t[0]}/{t[1]}"
    ),
    st.tuples(st.sampled_from(["dns", "dns4", "dns6", "dnsaddr", "sni"]), _domain).map(
        lambda t: f"/{t[0]}/{t[1]}"
    ),
    st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True).map(lambda z: f"/ip6zone/{z}"),
    st.integers(0, 255).map(lambda n: f"/ipcidr/{n}"),
    _peer_id.map(lambda p: f"/p2p/{p}"),
    st.binary(min_size=32, max_size=32).map(lambda d: f"/certhash/{_certhash(d)}"),
    _http_path.map(lambda p: f"/http-path/{p}"),
    _onion3_value.map(lambda v: f"/onion3/{v}"),
    st.sampled_from(
        [
            "/tls",
            "/noise",
            "/quic",
            "/quic-v1",
            "/webtransport",
            "/http",
            "/https",
            "/ws",
            "/wss",
            "/webrtc-direct",
            "/webrtc",
            "/p2p-circuit",
            "/utp",
            "/udt",
        ]
    ),
)
_multiaddr_text = st.lists(_component, min_size=1, max_size=8).map("".join)


@settings(max_examples=400, deadline=None)
@given(_multiaddr_text)
def test_text_agrees_with_oracle(text: str) -> None:
    ours = Multiaddr(text)
    theirs = oracle.Multiaddr(text)
    assert ours.to_bytes() == theirs.to_bytes()
    assert str(ours) == str(theirs) == text
    # Each side reads the other's binary form back to the same text.
    assert str(oracle.Multiaddr(ours.to_bytes())) == text
    assert str(Multiaddr(theirs.to_bytes())) == text
    # (The oracle's protocols() misreads /ip6zone, so components are not compared.)


@settings(max_examples=300, deadline=None)
@given(_multiaddr_text)
def test_text_bytes_text_round_trip(text: str) -> None:
    ma = Multiaddr(text)
    again = Multiaddr(ma.to_bytes())
    assert again == ma
    assert str(again) == text
    assert Multiaddr(str(again)).to_bytes() == ma.to_bytes()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16))
def test_any_ip6_agrees_by_bytes(raw: bytes) -> None:
    data = b"\x29" + raw + b"\x06\x00\x50"
    ours = Multiaddr(data)
    theirs = oracle.Multiaddr(data)
    # Both texts denote the same address (whatever the spelling of embedded IPv4).
    assert Multiaddr(str(theirs)) == ours
    assert oracle.Multiaddr(str(ours)).to_bytes() == data


def test_unix_path_follows_go_not_the_oracle() -> None:
    ours = Multiaddr("/unix/tmp/s.sock")
    # go-multiaddr: value "/tmp/s.sock" (13 bytes, leading slash kept).
    assert ours.to_bytes() == bytes.fromhex("9003") + b"\x0b/tmp/s.sock"
    assert oracle.Multiaddr("/unix/tmp/s.sock").to_bytes() == bytes.fromhex("9003") + (
        b"\x0atmp/s.sock"
    )


# Malformed binary input the oracle accepts although it is invalid (go-multiaddr rejects it).
ORACLE_ACCEPTS_MALFORMED = {
    "empty",
    "truncated ip4",
    "non-minimal code varint",
    "non-minimal length",
    "length past end",
    "huge length",
    "p2p sha256 short digest",
    "p2p identity too long",
    "unix relative",
    "unix trailing slash",
    "unix NUL",
    "after path component",
    "trailing garbage",
    "too long",
}


@pytest.mark.parametrize(("why", "hexed"), MALFORMED_BYTES, ids=[m[0] for m in MALFORMED_BYTES])
def test_malformed_bytes_versus_oracle(why: str, hexed: str) -> None:
    data = bytes.fromhex(hexed)
    with pytest.raises(MultiaddrError):
        Multiaddr(data)
    if why in ORACLE_ACCEPTS_MALFORMED:
        return  # documented oracle leniency
    with pytest.raises(Exception):  # noqa: B017 - any oracle error will do
        str(oracle.Multiaddr(data))  # the oracle validates lazily


ORACLE_ACCEPTS_SLOPPY_TEXT = {
    "",
    "/",
    "//",
    "ip4/1.2.3.4",
    "/ip4/1.2.3.4/tcp/+1",
    "/ip4/1.2.3.4/tcp/080",
    "/ip4/1.2.3.4/tcp/١",
    "/ip4/1.2.3.4//tcp/1",
    "/ip4/1.2.3.4/" + "ws/" * 2000,
}


@pytest.mark.parametrize("text", MALFORMED_TEXT)
def test_malformed_text_versus_oracle(text: str) -> None:
    with pytest.raises(MultiaddrError):
        Multiaddr(text)
    if text in ORACLE_ACCEPTS_SLOPPY_TEXT:
        return
    with pytest.raises(Exception):  # noqa: B017
        str(oracle.Multiaddr(text))
