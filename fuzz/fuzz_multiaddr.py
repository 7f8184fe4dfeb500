"""Fuzz target: binary and text multiaddrs.

Invariant: ``Multiaddr(bytes)`` parses or raises ``RemoteProtocolError``; whatever parses
re-encodes to the same bytes and survives a text round-trip; the text parser on the same
input (decoded as Latin-1) raises nothing but ``RemoteProtocolError`` either.
"""

from __future__ import annotations

from glueberry.errors import RemoteProtocolError
from glueberry.wire.multiaddr import Multiaddr

SEEDS: list[bytes] = [
    bytes.fromhex(h)
    for h in (
        "04c000022a0601bb",  # /ip4/192.0.2.42/tcp/443
        "2900000000000000000000000000000001060fa1",  # /ip6/::1/tcp/4001
        "2a046574683029fe800000000000000000000000000001060001",  # ip6zone
        "360b6578616d706c652e636f6d060001dd03",  # /dns4/example.com/tcp/1/ws
        "040102030491020001cd03d103d203221220"
        "c3ab8ff13720e8ad9047dd39466b3c8974e592c2fa383d4a3960714caef0c4f2",  # webtransport
        "a503260024080112202ffa35a99d3a3cfbb17bb7c1dc5561b18a8dcca4df38dc613ea859c37eb1336b",
        "04010203040601bba50322122"
        "09dff3b17d74cf4d38a50d8b6383e92d181a10395a5e73a726dcccbd21bf6f0b9a202",  # circuit
        "90030d2f746d702f666f6f2e736f636b",  # /unix/tmp/foo.sock
        "e10303612f62",  # /http-path/a%2Fb
        "bd03adadec040be047f9658668b11a504f3155001f231a37f54c4476c07fb4cc139ed7e30304d2",
    )
] + [
    b"/ip4/1.2.3.4/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
    b"/dns/example.com/udp/1/quic-v1/webtransport/certhash/uEiDDq4_xNyDorZBH3TlGazyJdOWSwvo4PUo5YHFMrvDE8g",
    b"/ip6zone/eth0/ip6/fe80::1/tcp/1/ws",
    b"/unix/tmp/x.sock",
]


def TARGET(data: bytes) -> None:
    try:
        ma = Multiaddr(data)
    except RemoteProtocolError:
        pass
    else:
        assert ma.to_bytes() == data
        text = str(ma)
        assert Multiaddr(text) == ma
        list(ma)
        ma.transport_kind()
        _ = (ma.peer_id, ma.is_public, ma.is_private, ma.is_loopback, ma.is_relayed)
    text_ma = Multiaddr(data.decode("latin-1"))
    assert Multiaddr(text_ma.to_bytes()) == text_ma
