"""Multiaddr: spec example, protocol table, strict parsing, helpers and round-trips."""

from __future__ import annotations

import ipaddress
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glueberry.errors import RemoteProtocolError
from glueberry.wire import varint
from glueberry.wire.identity import PeerId, PrivateKey
from glueberry.wire.multiaddr import (
    MAX_MULTIADDR_BYTES,
    PROTOCOLS,
    Multiaddr,
    MultiaddrError,
    SocketAddress,
    protocol_by_code,
    protocol_by_name,
)

ED_PID = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
RSA_PID = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
RSA_CID = "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe"
CERTHASH = "uEiDDq4_xNyDorZBH3TlGazyJdOWSwvo4PUo5YHFMrvDE8g"


# --- the spec ----------------------------------------------------------------------------


def test_spec_example_both_ways() -> None:
    # multiformats/multiaddr test/multiaddr.feature
    ma = Multiaddr("/ip4/192.0.2.42/tcp/443")
    assert ma.to_bytes() == bytes.fromhex("04c000022a0601bb")
    assert len(bytes(ma)) == 8
    back = Multiaddr(bytes.fromhex("04c000022a0601bb"))
    assert str(back) == "/ip4/192.0.2.42/tcp/443"
    assert len(str(back)) == 23
    assert back == ma
    comps = back.components()
    assert [(c.name, c.code, c.value, c.raw.hex()) for c in comps] == [
        ("ip4", 4, "192.0.2.42", "c000022a"),
        ("tcp", 6, "443", "01bb"),
    ]


def test_readme_example() -> None:
    # README: /ip4/127.0.0.1/udp/1234 == 0x4 0x7f 0x0 0x0 0x1 0x91 0x2 0x4 0xd2
    ma = Multiaddr("/ip4/127.0.0.1/udp/1234")
    assert ma.to_bytes() == bytes([0x4, 0x7F, 0, 0, 1, 0x91, 0x2, 0x4, 0xD2])


# Codes from multiformats/multiaddr protocols.csv.
EXPECTED_CODES = {
    "ip4": (4, 32),
    "tcp": (6, 16),
    "udp": (273, 16),
    "dccp": (33, 16),
    "ip6": (41, 128),
    "ip6zone": (42, -1),
    "ipcidr": (43, 8),
    "dns": (53, -1),
    "dns4": (54, -1),
    "dns6": (55, -1),
    "dnsaddr": (56, -1),
    "sctp": (132, 16),
    "udt": (301, 0),
    "utp": (302, 0),
    "unix": (400, -1),
    "p2p": (421, -1),
    "onion": (444, 96),
    "onion3": (445, 296),
    "tls": (448, 0),
    "sni": (449, -1),
    "noise": (454, 0),
    "quic": (460, 0),
    "quic-v1": (461, 0),
    "webtransport": (465, 0),
    "certhash": (466, -1),
    "http": (480, 0),
    "http-path": (481, -1),
    "https": (443, 0),
    "ws": (477, 0),
    "wss": (478, 0),
    "p2p-websocket-star": (479, 0),
    "p2p-stardust": (277, 0),
    "p2p-webrtc-star": (275, 0),
    "p2p-webrtc-direct": (276, 0),
    "webrtc-direct": (280, 0),
    "webrtc": (281, 0),
    "p2p-circuit": (290, 0),
}


def test_protocol_table_matches_protocols_csv() -> None:
    assert {p.name: (p.code, p.size) for p in PROTOCOLS.values()} == EXPECTED_CODES
    assert protocol_by_name("ipfs") is protocol_by_name("p2p")
    assert protocol_by_code(421).name == "p2p"
    assert protocol_by_name("unix").path
    with pytest.raises(MultiaddrError):
        protocol_by_name("nope")
    with pytest.raises(MultiaddrError):
        protocol_by_code(999999)


# --- text and binary forms ---------------------------------------------------------------

VALID = [
    ("/ip4/0.0.0.0/tcp/0", "0400000000060000"),
    ("/ip4/255.255.255.255/udp/65535", "04ffffffff9102ffff"),
    ("/ip6/::1/tcp/4001", "2900000000000000000000000000000001060fa1"),
    ("/ip6/2001:db8::1/udp/4001/quic-v1", "2920010db800000000000000000000000191020fa1cd03"),
    ("/ip6/::ffff:1.2.3.4/tcp/5", "2900000000000000000000ffff01020304060005"),
    ("/ip6zone/eth0/ip6/fe80::1/tcp/1", "2a046574683029fe800000000000000000000000000001060001"),
    ("/dns/example.com/tcp/443/tls/http", "350b6578616d706c652e636f6d0601bbc003e003"),
    ("/dns4/example.com/tcp/1/ws", "360b6578616d706c652e636f6d060001dd03"),
    ("/dns6/example.com/tcp/1/wss", "370b6578616d706c652e636f6d060001de03"),
    ("/dnsaddr/bootstrap.libp2p.io", "3813626f6f7473747261702e6c69627032702e696f"),
    (
        "/ip4/1.2.3.4/tcp/443/tls/sni/example.com/ws",
        "04010203040601bbc003c1030b6578616d706c652e636f6ddd03",
    ),
    ("/ip4/1.2.3.4/udp/1/quic", "040102030491020001cc03"),
    (
        f"/ip4/1.2.3.4/udp/1/quic-v1/webtransport/certhash/{CERTHASH}",
        "040102030491020001cd03d103d203221220"
        "c3ab8ff13720e8ad9047dd39466b3c8974e592c2fa383d4a3960714caef0c4f2",
    ),
    ("/ip4/1.2.3.4/udp/1/webrtc-direct", "0401020304910200019802"),
    ("/webrtc", "9902"),
    ("/ip4/1.2.3.4/tcp/1/noise", "04010203040600 01c603".replace(" ", "")),
    (
        f"/p2p/{RSA_PID}",
        "a50322122" + "09dff3b17d74cf4d38a50d8b6383e92d181a10395a5e73a726dcccbd21bf6f0b9",
    ),
    (
        f"/p2p/{ED_PID}",
        "a503260024080112202ffa35a99d3a3cfbb17bb7c1dc5561b18a8dcca4df38dc613ea859c37eb1336b",
    ),
    ("/p2p-circuit", "a202"),
    ("/unix/tmp/foo.sock", "90030d2f746d702f666f6f2e736f636b"),
    (
        "/ip4/1.2.3.4/tcp/80/http/http-path/a%2Fb",
        "040102030406 0050e003e10303612f62".replace(" ", ""),
    ),
    ("/ipcidr/24", "2b18"),
    ("/ip4/1.2.3.4/sctp/9", "0401020304840100 09".replace(" ", "")),
    ("/ip4/1.2.3.4/dccp/9", "04010203042 10009".replace(" ", "")),
    ("/ip4/1.2.3.4/udp/9/utp", "040102030491020009ae02"),
    ("/ip4/1.2.3.4/udp/9/udt", "040102030491020009ad02"),
    ("/ip4/1.2.3.4/tcp/80/https", "04010203040600 50bb03".replace(" ", "")),
    ("/onion/aaimaq4ygg2iegci:80", "bc030010c0439831b48218480050"),
    (
        "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:1234",
        "bd03adadec040be047f9658668b11a504f3155001f231a37f54c4476c07fb4cc139ed7e30304d2",
    ),
]


@pytest.mark.parametrize(("text", "hexed"), VALID)
def test_valid_round_trips(text: str, hexed: str) -> None:
    ma = Multiaddr(text)
    assert ma.to_bytes().hex() == hexed
    assert str(ma) == text
    again = Multiaddr(bytes.fromhex(hexed))
    assert again == ma
    assert str(again) == text
    assert hash(again) == hash(ma)
    assert Multiaddr.from_string(text) == Multiaddr.from_bytes(bytearray.fromhex(hexed)) == ma
    assert Multiaddr(memoryview(bytes.fromhex(hexed))) == ma


def test_aliases_and_canonical_text() -> None:
    assert Multiaddr(f"/ipfs/{RSA_PID}") == Multiaddr(f"/p2p/{RSA_PID}")
    assert str(Multiaddr(f"/ipfs/{RSA_PID}")) == f"/p2p/{RSA_PID}"
    # A CIDv1 peer ID is stored as the bare multihash (as go-multiaddr does).
    cid = Multiaddr(f"/p2p/{RSA_CID}")
    assert cid == Multiaddr(f"/p2p/{RSA_PID}")
    assert str(cid) == f"/p2p/{RSA_PID}"
    # IPv6 text is normalised; one trailing slash is tolerated.
    assert str(Multiaddr("/ip6/2001:DB8:0:0::1/tcp/1/")) == "/ip6/2001:db8::1/tcp/1"
    # Other multibase encodings of a certhash are re-emitted as base64url.
    hexed = "f1220c3ab8ff13720e8ad9047dd39466b3c8974e592c2fa383d4a3960714caef0c4f2"
    assert str(Multiaddr(f"/certhash/{hexed}")) == f"/certhash/{CERTHASH}"
    b32 = Multiaddr(f"/certhash/{CERTHASH}").value_for("certhash")
    assert b32 == CERTHASH
    # http-path: '%' escapes decode, output escapes everything but unreserved characters.
    assert Multiaddr("/http-path/a+b%7e").to_bytes()[3:] == b"a+b~"
    assert str(Multiaddr("/http-path/a+b%7e")) == "/http-path/a%2Bb~"


MALFORMED_TEXT = [
    "",
    "/",
    "//",
    "ip4/1.2.3.4",
    "/ip4",
    "/ip4/",
    "/ip4/1.2.3",
    "/ip4/1.2.3.256",
    "/ip4/01.2.3.4",
    "/ip4/::1",
    "/ip4/1.2.3.4/tcp",
    "/ip4/1.2.3.4/tcp/65536",
    "/ip4/1.2.3.4/tcp/-1",
    "/ip4/1.2.3.4/tcp/+1",
    "/ip4/1.2.3.4/tcp/080",
    "/ip4/1.2.3.4/tcp/1a",
    "/ip4/1.2.3.4/tcp/١",  # a non-ASCII digit
    "/ip4/1.2.3.4//tcp/1",
    "/ip6/1.2.3.4",
    "/ip6/fe80::1%eth0",
    "/ip6/:::",
    "/ip6zone//ip6/::1",
    "/dns4//tcp/1",
    "/dns4/a b",
    "/dns4/" + "a" * 256,
    "/sni/",
    "/unknown/1",
    "/tcp/1/quic-v2",
    "/p2p/QmNotAPeerId",
    "/p2p/12D3KooW",
    "/p2p/bafkreiaaaa",
    "/p2p/zQmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
    "/certhash/uEiDDq4",  # truncated multihash
    "/certhash/xabc",  # unknown multibase
    "/certhash/u",
    "/certhash/uEiDDq4_xNyDorZBH3TlGazyJdOWSwvo4PUo5YHFMrvDE8g=",
    "/http-path/%zz",
    "/http-path/%4",
    "/unix",
    "/unix/",
    "/ipcidr/256",
    "/onion/aaimaq4ygg2iegci:0",
    "/onion/aaimaq4ygg2iegci",
    "/onion/aaimaq4ygg2iegc:80",
    "/ip4/1.2.3.4/" + "ws/" * 2000,
]


@pytest.mark.parametrize("text", MALFORMED_TEXT)
def test_malformed_text_raises_value_error(text: str) -> None:
    with pytest.raises(MultiaddrError) as info:
        Multiaddr(text)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.protocol == "multiaddr"


def test_text_length_cap() -> None:
    with pytest.raises(MultiaddrError, match="longer"):
        Multiaddr("/http-path/" + "a" * 5000)
    # Under the text cap but over the binary cap.
    with pytest.raises(MultiaddrError, match="longer"):
        Multiaddr("/ip4/1.2.3.4" + "/ws" * 700)


# Malformed binary multiaddrs, as a peer could put them in identify listenAddrs/observedAddr,
# relay reservations or peer records (bad-input list B-20).
MALFORMED_BYTES = [
    ("empty", ""),
    ("truncated ip4", "04c00002"),
    ("truncated port", "04c000022a0601"),
    ("unknown code", "ff7f"),
    ("unknown code 0", "00"),
    ("truncated code varint", "80"),
    ("non-minimal code varint", "8400"),
    ("overlong varint", "80808080808080808080"),
    ("missing length", "35"),
    ("truncated length varint", "3580"),
    ("non-minimal length", "358100" + "61"),
    ("zero length", "3500"),
    ("length past end", "3505616263"),
    ("huge length", "35ffffffffffffff7f61"),
    ("dns with slash", "3503612f62"),
    ("dns invalid utf-8", "3502c328"),
    ("dns control char", "35026100"),
    ("ip6zone empty", "2a00"),
    ("p2p not a multihash", "a503020001"),
    ("p2p unsupported multihash", "a503041102aabb"),
    ("p2p sha256 short digest", "a50304120200aa"),
    ("p2p identity too long", "a5032e002c" + "00" * 44),
    ("certhash not a multihash", "d2030212ff"),
    ("certhash digest length mismatch", "d20304120300aa"),
    ("unix relative", "9003036162"),
    ("unix trailing slash", "900303 2f612f".replace(" ", "")),
    ("unix NUL", "9003032f6100"),
    ("after path component", "9003032f6162" + "a202"),
    ("onion zero port", "bc03" + "00" * 12),
    ("http-path empty", "e10300"),
    ("trailing garbage", "04c000022a0601bb" + "04"),
    ("too long", "a202" * (MAX_MULTIADDR_BYTES // 2 + 1)),
]


@pytest.mark.parametrize(("why", "hexed"), MALFORMED_BYTES, ids=[m[0] for m in MALFORMED_BYTES])
def test_malformed_bytes_raise_remote_protocol_error(why: str, hexed: str) -> None:
    with pytest.raises(MultiaddrError) as info:
        Multiaddr(bytes.fromhex(hexed))
    assert isinstance(info.value, RemoteProtocolError)


def test_max_length_accepted() -> None:
    data = bytes.fromhex("a202") * (MAX_MULTIADDR_BYTES // 2)
    assert len(Multiaddr(data)) == MAX_MULTIADDR_BYTES // 2


def test_type_errors() -> None:
    with pytest.raises(TypeError):
        Multiaddr(1234)
    with pytest.raises(TypeError):
        Multiaddr(None)


# --- value semantics ---------------------------------------------------------------------


def test_immutable_hashable_picklable() -> None:
    ma = Multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{ED_PID}")
    with pytest.raises(AttributeError):
        ma._bytes = b""
    with pytest.raises(AttributeError):
        ma.foo = 1
    assert {ma: 1}[Multiaddr(str(ma))] == 1
    assert pickle.loads(pickle.dumps(ma)) == ma
    empty = ma.decapsulate("/ip4/1.2.3.4")
    assert pickle.loads(pickle.dumps(empty)) == empty
    assert Multiaddr(ma) == ma
    assert repr(ma) == f"Multiaddr('/ip4/1.2.3.4/tcp/1/p2p/{ED_PID}')"
    assert ma != str(ma)
    assert (ma == 5) is False


def test_iteration_and_lookup() -> None:
    ma = Multiaddr(f"/ip4/1.2.3.4/udp/9/quic-v1/p2p/{ED_PID}")
    assert list(ma) == [("ip4", "1.2.3.4"), ("udp", "9"), ("quic-v1", None), ("p2p", ED_PID)]
    assert [p.name for p in ma.protocols()] == ["ip4", "udp", "quic-v1", "p2p"]
    assert len(ma) == 4
    assert ma.value_for("udp") == "9"
    assert ma.value_for(273) == "9"
    assert ma.value_for(protocol_by_name("ipfs")) == ED_PID
    assert ma.value_for("quic-v1") == ""
    assert ma.value_for("tcp") is None
    assert ma.has("quic-v1") and not ma.has("tcp")
    with pytest.raises(MultiaddrError):
        ma.value_for("bogus")


def test_encapsulate_decapsulate() -> None:
    base = Multiaddr("/ip4/1.2.3.4/tcp/80")
    full = base.encapsulate("/ws").encapsulate(Multiaddr("/tls"))
    assert str(full) == "/ip4/1.2.3.4/tcp/80/ws/tls"
    assert full.decapsulate("/ws") == base
    assert full.decapsulate("/tcp/80") == Multiaddr("/ip4/1.2.3.4")
    assert full.decapsulate("/udp/80") is full
    assert full.decapsulate("/tcp/81") is full
    # The last occurrence is removed.
    twice = Multiaddr("/ip4/1.2.3.4/tcp/1/ws/tcp/1/ws")
    assert str(twice.decapsulate("/tcp/1")) == "/ip4/1.2.3.4/tcp/1/ws"
    assert str(twice.decapsulate_code("tcp")) == "/ip4/1.2.3.4/tcp/1/ws"
    assert twice.decapsulate_code("udp") is twice
    empty = base.decapsulate(base)
    assert str(empty) == "" and empty.to_bytes() == b"" and len(empty) == 0
    assert empty.encapsulate(base) == base
    with pytest.raises(MultiaddrError):
        Multiaddr("/unix/a/b").encapsulate("/tcp/1")


def test_peer_id_helpers() -> None:
    key = PrivateKey.from_seed(bytes(range(32)))
    pid = key.peer_id
    base = Multiaddr("/ip4/1.2.3.4/tcp/1")
    assert base.peer_id is None
    with_id = base.with_p2p(pid)
    assert with_id.peer_id == pid
    assert str(with_id) == f"/ip4/1.2.3.4/tcp/1/p2p/{pid}"
    assert with_id.with_p2p(pid) is with_id
    assert base.with_p2p(str(pid)) == with_id
    with pytest.raises(MultiaddrError):
        with_id.with_p2p(PeerId.from_string(ED_PID))
    assert with_id.without_p2p() == base
    assert base.without_p2p() is base
    assert isinstance(Multiaddr(f"/p2p/{RSA_PID}").peer_id, PeerId)


def test_relay_helpers() -> None:
    relay = Multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{RSA_PID}")
    circuit = relay.encapsulate("/p2p-circuit").with_p2p(ED_PID)
    assert circuit.is_relayed and not relay.is_relayed
    assert circuit.peer_id == PeerId.from_string(ED_PID)
    assert circuit.split_circuit() == (relay, Multiaddr(f"/p2p/{ED_PID}"))
    assert relay.split_circuit() is None
    assert circuit.transport_kind() == "p2p-circuit"
    # A reservation address (no target) has no peer ID of its own.
    assert relay.encapsulate("/p2p-circuit").peer_id is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/ip4/1.2.3.4/tcp/1", SocketAddress("1.2.3.4", 1, "ip4", "tcp")),
        (f"/ip4/1.2.3.4/tcp/1/p2p/{ED_PID}", SocketAddress("1.2.3.4", 1, "ip4", "tcp")),
        ("/ip6/::1/udp/4001/quic-v1", SocketAddress("::1", 4001, "ip6", "udp")),
        ("/ip6zone/eth0/ip6/fe80::1/tcp/7", SocketAddress("fe80::1%eth0", 7, "ip6", "tcp")),
        ("/dns4/example.com/tcp/443/wss", SocketAddress("example.com", 443, "dns4", "tcp")),
        ("/dns/example.com/udp/53", SocketAddress("example.com", 53, "dns", "udp")),
        ("/dns6/example.com/tcp/1", SocketAddress("example.com", 1, "dns6", "tcp")),
    ],
)
def test_to_socket_address(text: str, expected: SocketAddress) -> None:
    assert Multiaddr(text).to_socket_address() == expected


@pytest.mark.parametrize(
    "text",
    ["/ip4/1.2.3.4", "/tcp/1", "/dnsaddr/example.com/tcp/1", "/ip6zone/x/ip4/1.2.3.4/tcp/1",
     f"/p2p/{ED_PID}", "/ip4/1.2.3.4/sctp/1", "/unix/a/b"],
)  # fmt: skip
def test_to_socket_address_rejects(text: str) -> None:
    with pytest.raises(MultiaddrError):
        Multiaddr(text).to_socket_address()


def test_from_socket_address() -> None:
    assert Multiaddr.from_socket_address("1.2.3.4", 5) == Multiaddr("/ip4/1.2.3.4/tcp/5")
    assert Multiaddr.from_socket_address("::1", 5, "udp") == Multiaddr("/ip6/::1/udp/5")
    assert str(Multiaddr.from_socket_address("fe80::1%eth0", 5)) == (
        "/ip6zone/eth0/ip6/fe80::1/tcp/5"
    )
    assert str(Multiaddr.from_socket_address("example.com", 5)) == "/dns/example.com/tcp/5"
    for ma in ("/ip4/1.2.3.4/tcp/5", "/ip6zone/eth0/ip6/fe80::1/udp/9", "/ip6/::1/tcp/1"):
        sa = Multiaddr(ma).to_socket_address()
        assert Multiaddr.from_socket_address(sa.host, sa.port, sa.transport) == Multiaddr(ma)
    with pytest.raises(MultiaddrError):
        Multiaddr.from_socket_address("1.2.3.4", 70000)
    with pytest.raises(MultiaddrError):
        Multiaddr.from_socket_address("1.2.3.4", 1, "sctp")  # type: ignore[arg-type]
    with pytest.raises(MultiaddrError):
        Multiaddr.from_socket_address("bad host/", 1)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("/ip4/1.2.3.4/tcp/1", "tcp"),
        (f"/ip4/1.2.3.4/tcp/1/p2p/{ED_PID}", "tcp"),
        ("/ip4/1.2.3.4/tcp/1/ws", "ws"),
        ("/ip4/1.2.3.4/tcp/1/wss", "wss"),
        ("/dns4/a.b/tcp/443/tls/sni/a.b/ws", "wss"),
        ("/ip4/1.2.3.4/udp/1/quic-v1", "quic-v1"),
        ("/ip4/1.2.3.4/udp/1/quic", "quic"),
        (f"/ip4/1.2.3.4/udp/1/quic-v1/webtransport/certhash/{CERTHASH}", "webtransport"),
        (f"/ip4/1.2.3.4/udp/1/webrtc-direct/certhash/{CERTHASH}", "webrtc-direct"),
        ("/ip4/1.2.3.4/udp/1", "udp"),
        ("/ip6zone/eth0/ip6/fe80::1/udp/1/quic-v1", "quic-v1"),
        ("/unix/tmp/x", "unix"),
        (f"/p2p/{RSA_PID}/p2p-circuit/webrtc/p2p/{ED_PID}", "p2p-circuit"),
        ("/webrtc", "webrtc"),
        ("/dnsaddr/bootstrap.libp2p.io", None),
        (f"/p2p/{ED_PID}", None),
        ("/ip4/1.2.3.4", None),
        ("/ip4/1.2.3.4/sctp/1", None),
    ],
)
def test_transport_kind(text: str, kind: str | None) -> None:
    assert Multiaddr(text).transport_kind() == kind


@pytest.mark.parametrize(
    ("text", "loopback", "private", "public", "unspecified"),
    [
        ("/ip4/127.0.0.1/tcp/1", True, True, False, False),
        ("/ip4/10.1.2.3/tcp/1", False, True, False, False),
        ("/ip4/172.16.0.1/tcp/1", False, True, False, False),
        ("/ip4/192.168.1.1/tcp/1", False, True, False, False),
        ("/ip4/100.64.0.1/tcp/1", False, True, False, False),
        ("/ip4/169.254.1.1/tcp/1", False, True, False, False),
        ("/ip4/0.0.0.0/tcp/1", False, True, False, True),
        ("/ip4/8.8.8.8/tcp/1", False, False, True, False),
        ("/ip4/224.0.0.1/udp/1", False, False, False, False),
        ("/ip6/::1/tcp/1", True, True, False, False),
        ("/ip6/::/tcp/1", False, True, False, True),
        ("/ip6/fd00::1/tcp/1", False, True, False, False),
        ("/ip6zone/eth0/ip6/fe80::1/tcp/1", False, True, False, False),
        ("/ip6/2606:4700::1111/tcp/1", False, False, True, False),
        ("/ip6/::ffff:127.0.0.1/tcp/1", True, True, False, False),
        ("/ip6/::ffff:8.8.8.8/tcp/1", False, False, True, False),
        ("/dns4/example.com/tcp/1", False, False, True, False),
        ("/dns/localhost/tcp/1", True, False, False, False),
        ("/dns/printer.local/tcp/1", False, False, False, False),
        (f"/p2p/{ED_PID}", False, False, False, False),
    ],
)
def test_address_classes(
    text: str, loopback: bool, private: bool, public: bool, unspecified: bool
) -> None:
    ma = Multiaddr(text)
    assert (ma.is_loopback, ma.is_private, ma.is_public, ma.is_unspecified) == (
        loopback,
        private,
        public,
        unspecified,
    )


def test_ip_property() -> None:
    assert Multiaddr("/ip4/1.2.3.4/tcp/1").ip == ipaddress.IPv4Address("1.2.3.4")
    assert Multiaddr("/ip6zone/eth0/ip6/fe80::1").ip == ipaddress.IPv6Address("fe80::1%eth0")
    assert Multiaddr("/dns/a.b/tcp/1").ip is None


def test_accepts_pypi_multiaddr_objects() -> None:
    multiaddr = pytest.importorskip("multiaddr")
    theirs = multiaddr.Multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{ED_PID}")
    ours = Multiaddr(theirs)
    assert str(ours) == f"/ip4/1.2.3.4/tcp/1/p2p/{ED_PID}"
    assert Multiaddr("/ip4/1.2.3.4").encapsulate(multiaddr.Multiaddr("/tcp/1")) == Multiaddr(
        "/ip4/1.2.3.4/tcp/1"
    )


# --- properties --------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_random_bytes_parse_or_raise_remote_protocol_error(data: bytes) -> None:
    try:
        ma = Multiaddr(data)
    except RemoteProtocolError:
        return
    # Whatever parses re-encodes to the same bytes and survives a text round-trip.
    assert ma.to_bytes() == data
    assert Multiaddr(str(ma)) == ma


_TEXTY = st.lists(
    st.one_of(
        st.sampled_from(["/", "ip4", "ip6", "tcp", "udp", "dns", "p2p", "unix", "http-path", "%"]),
        st.characters(),
        st.sampled_from(["1.2.3.4", "::1", "80", "a.b", "%2F", "QmYyQSo1c1Ym7"]),
    ),
    max_size=12,
).map("".join)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=40), _TEXTY.map(lambda t: "/" + t)))
def test_random_text_parses_or_raises_multiaddr_error(text: str) -> None:
    try:
        ma = Multiaddr(text)
    except MultiaddrError:
        return
    assert Multiaddr(str(ma)) == ma
    assert Multiaddr(ma.to_bytes()) == ma


def test_lone_surrogates_are_refused() -> None:
    for text in ("/dns/\ud800", "/http-path/\ud800", "/unix/\udfff"):
        with pytest.raises(MultiaddrError):
            Multiaddr(text)
    with pytest.raises(MultiaddrError):
        Multiaddr.from_socket_address("\ud800", 1)
    with pytest.raises(MultiaddrError):
        Multiaddr("/ip4/1.2.3.4").with_p2p("not-a-peer-id")


@pytest.mark.parametrize(("text", "hexed"), VALID)
def test_every_proper_prefix_or_bitflip_is_handled(text: str, hexed: str) -> None:
    data = bytes.fromhex(hexed)
    for i in range(len(data)):
        try:
            Multiaddr(data[:i])
        except RemoteProtocolError:
            pass
        for bit in (0x01, 0x80):
            flipped = bytearray(data)
            flipped[i] ^= bit
            try:
                Multiaddr(bytes(flipped))
            except RemoteProtocolError:
                pass


def test_varint_errors_are_wrapped() -> None:
    with pytest.raises(MultiaddrError, match="malformed"):
        Multiaddr(b"\x80" * 9 + b"\x01")
    assert varint.encode(421) == b"\xa5\x03"
