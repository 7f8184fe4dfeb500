"""Fuzz target: DCUtR HolePunch codec and initiator/responder machines."""

from __future__ import annotations

from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.proto import dcutr as d
from glueberry.wire import pb_nat as pb

_ADDR = pb.ip_tcp_multiaddr("8.8.8.8", 4001)

SEEDS = [
    pb.frame(pb.encode_holepunch(pb.HolePunch(type=pb.HolePunchType.CONNECT, obs_addrs=(_ADDR,)))),
    pb.frame(pb.encode_holepunch(pb.HolePunch(type=pb.HolePunchType.CONNECT, obs_addrs=(_ADDR,))))
    + pb.frame(pb.encode_holepunch(pb.HolePunch(type=pb.HolePunchType.SYNC))),
    pb.frame(pb.encode_holepunch(pb.HolePunch(type=pb.HolePunchType.SYNC))),
    b"\x80\x20",
]


def TARGET(data: bytes) -> None:
    try:
        pb.decode_holepunch(data)
    except RemoteProtocolError:
        pass
    for cls in (d.DcutrInitiator, d.DcutrResponder):
        for split in (False, True):
            m = cls(local_addrs=[_ADDR], now=0.0)
            try:
                chunks = [data[i : i + 1] for i in range(len(data))] if split else [data]
                for c in chunks:
                    m.receive_data(c, 0.5)
                t = m.get_timer()
                if t is not None:
                    m.handle_timer(t)
                m.receive_data(b"", 1.0)
            except (RemoteProtocolError, LocalProtocolError):
                pass
            list(m.events())
