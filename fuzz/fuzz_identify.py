"""Fuzz target: identify parts, signed envelopes and peer records.

Feeds the bytes to :class:`~glueberry.proto.identify.IdentifyReader` whole and one byte at a
time (both must agree), then ends the stream; also parses them as an envelope and as a peer
record. Invariant: parses, or raises RemoteProtocolError, nothing else.
"""

from __future__ import annotations

from glueberry.errors import RemoteProtocolError
from glueberry.proto.identify import (
    IdentifyReader,
    IdentifyReceived,
    build_identify,
    make_signed_peer_record,
)
from glueberry.wire import pb_identify, varint
from glueberry.wire.identity import PrivateKey
from glueberry.wire.multiaddr import Multiaddr

_KEY = PrivateKey.from_seed(bytes(32))
_PEER = _KEY.peer_id
_ADDRS = [Multiaddr("/ip4/127.0.0.1/tcp/1"), Multiaddr("/ip6/::1/udp/2/quic-v1")]
_RECORD = make_signed_peer_record(_KEY, _ADDRS, seq=7)

SEEDS: list[bytes] = [
    b"",
    build_identify(
        public_key=_KEY.public_key,
        listen_addrs=_ADDRS,
        protocols=["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"],
        observed_addr=_ADDRS[0],
        signed_peer_record=_RECORD,
    ),
    build_identify(public_key=None, listen_addrs=_ADDRS, protocols=None),
    varint.encode_length_prefixed(b"\x42\x02\x03\x01"),
    _RECORD,
]


def _run(data: bytes, *, bytewise: bool) -> IdentifyReceived | None:
    reader = IdentifyReader(_PEER)
    if bytewise:
        for i in range(len(data)):
            reader.receive_data(data[i : i + 1], 0.0)
    elif data:
        reader.receive_data(data, 0.0)
    reader.receive_data(b"", 0.0)
    ev = reader.next_event()
    assert isinstance(ev, IdentifyReceived)
    return ev


def TARGET(data: bytes) -> None:
    results = []
    for bytewise in (False, True):
        try:
            results.append(_run(data, bytewise=bytewise))
        except RemoteProtocolError:
            results.append(None)
    assert results[0] == results[1]
    try:
        pb_identify.decode_envelope(data)
    except RemoteProtocolError:
        pass
    try:
        pb_identify.decode_peer_record(data)
    except RemoteProtocolError:
        pass
