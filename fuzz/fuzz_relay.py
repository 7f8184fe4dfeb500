"""Fuzz target: circuit relay v2 codecs, vouchers and HOP/STOP machines."""

from __future__ import annotations

import ipaddress

from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.proto import relay as r
from glueberry.wire import pb_nat as pb
from glueberry.wire.identity import PrivateKey

_KEY = PrivateKey.from_seed(b"\x11" * 32)
_PEER = PrivateKey.from_seed(b"\x12" * 32).peer_id
_T = 1_700_000_000.0

SEEDS = [
    pb.frame(b""),
    pb.frame(
        pb.encode_hop(pb.HopMessage(type=pb.HopType.CONNECT, peer=pb.PeerInfo(peer_id=_PEER)))
    ),
    pb.frame(
        pb.encode_hop(
            pb.HopMessage(
                type=pb.HopType.STATUS,
                status=pb.RelayStatus.OK,
                reservation=pb.Reservation(
                    expire=int(_T) + 60,
                    voucher=pb.seal_voucher(
                        _KEY, pb.Voucher(relay=_KEY.peer_id, peer=_PEER, expiration=int(_T) + 60)
                    ),
                ),
                limit=pb.Limit(duration=120, data=131072),
            )
        )
    )
    + b"tail",
    pb.frame(
        pb.encode_stop(pb.StopMessage(type=pb.StopType.CONNECT, peer=pb.PeerInfo(peer_id=_PEER)))
    ),
]


def _drive(machine: object, data: bytes, split: bool) -> None:
    feed = machine.receive_data  # type: ignore[attr-defined]
    try:
        if split:
            for i in range(len(data)):
                feed(data[i : i + 1], _T)
        else:
            feed(data, _T)
        feed(b"", _T)
    except (RemoteProtocolError, LocalProtocolError):
        # LocalProtocolError: bytes fed after the exchange handed the stream over.
        pass


def TARGET(data: bytes) -> None:
    for dec in (pb.decode_hop, pb.decode_stop, pb.decode_voucher):
        try:
            dec(data)
        except RemoteProtocolError:
            pass
    for split in (False, True):
        table = r.RelayTable()
        table.reserve(_PEER, None, _T)
        hop = r.HopServer(
            peer=_KEY.peer_id,
            remote_ip=ipaddress.ip_address("198.51.100.1"),
            relayed=False,
            table=table,
            now=_T,
            relay_key=_KEY,
        )
        _drive(hop, data, split)
        assert table.circuit_count in (0, 1)
        _drive(r.HopReserveClient(relay=_KEY.peer_id, local=_PEER, now=_T), data, split)
        _drive(r.HopConnectClient(target=_PEER, now=_T), data, split)
        _drive(r.StopServer(now=_T), data, split)
        _drive(r.StopClient(src=_PEER, limit=None, now=_T), data, split)
