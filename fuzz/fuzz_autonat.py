"""Fuzz target: AutoNAT v1/v2 codecs and server/client machines."""

from __future__ import annotations

import ipaddress

from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.proto import autonat as an
from glueberry.wire import pb_nat as pb
from glueberry.wire.identity import PrivateKey

_PEER = PrivateKey.from_seed(b"\x21" * 32).peer_id
_ADDR = pb.ip_tcp_multiaddr("8.8.8.8", 4001)
_OBS = ipaddress.ip_address("8.8.8.8")

SEEDS = [
    pb.frame(
        pb.encode_autonat(
            pb.AutoNATMessage(
                type=pb.AutoNATMessageType.DIAL, dial=pb.PeerInfo(peer_id=_PEER, addrs=(_ADDR,))
            )
        )
    ),
    pb.frame(pb.encode_v2(pb.DialRequest(addrs=(_ADDR,), nonce=5))),
    pb.frame(pb.encode_v2(pb.DialDataRequest(addr_idx=0, num_bytes=100))),
    pb.frame(pb.encode_v2(pb.DialResponse(status=pb.ResponseStatus.OK))),
]


def _drive(m: object, data: bytes) -> None:
    try:
        m.receive_data(data, 1.0)  # type: ignore[attr-defined]
        m.receive_data(b"", 2.0)  # type: ignore[attr-defined]
    except (RemoteProtocolError, LocalProtocolError):
        pass


def TARGET(data: bytes) -> None:
    for dec in (pb.decode_autonat, pb.decode_v2, pb.decode_dial_back, pb.decode_dial_back_response):
        try:
            dec(data)
        except RemoteProtocolError:
            pass
    lim = an.AutoNATRateLimiter()
    _drive(
        an.AutoNATv1Server(requester=_PEER, observed_ip=_OBS, relayed=False, limiter=lim, now=0.0),
        data,
    )
    _drive(an.AutoNATv1Client(peer_id=_PEER, addrs=[_ADDR], now=0.0), data)
    _drive(
        an.AutoNATv2Server(requester=_PEER, observed_ip=_OBS, relayed=False, limiter=lim, now=0.0),
        data,
    )
    _drive(an.AutoNATv2Client(addrs=[_ADDR], nonce=1, now=0.0), data)
    _drive(an.DialBackReceiver(now=0.0), data)
