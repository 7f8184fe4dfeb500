"""DCUtR machines (glueberry.proto.dcutr): exchange, RTT timing, B-25 bad input."""

from __future__ import annotations

from typing import Any

import pytest

from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.proto import dcutr as d
from glueberry.wire import pb_nat as pb
from glueberry.wire import protobuf, varint

A_ADDR = pb.ip_tcp_multiaddr("203.0.113.10", 4001)
B_ADDR = pb.ip_tcp_multiaddr("198.51.100.20", 4002)
# 203.0.113.0/24 and 198.51.100.0/24 are documentation ranges: not "global". Use real-looking
# public ranges for the default (public-only) filter.
A_PUB = pb.ip_tcp_multiaddr("8.8.4.4", 4001)
B_PUB = pb.ip_tcp_multiaddr("1.1.1.1", 4002)


def feed(m: Any, data: bytes, now: float, split: bool) -> None:
    if split:
        for i in range(len(data)):
            m.receive_data(data[i : i + 1], now)
    else:
        m.receive_data(data, now)


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def split(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_exchange_and_rtt(split: bool) -> None:
    b = d.DcutrInitiator(local_addrs=[B_PUB], now=100.0)
    a = d.DcutrResponder(local_addrs=[A_PUB], now=100.0)
    feed(a, b.data_to_send(), 100.05, split)
    assert list(a.events()) == [d.ConnectReceived(remote_addrs=(B_PUB,), rtt=None)]
    feed(b, a.data_to_send(), 100.2, split)
    (ev,) = list(b.events())
    assert isinstance(ev, d.ConnectReceived)
    assert ev.remote_addrs == (A_PUB,)
    assert ev.rtt == pytest.approx(0.2)
    assert b.get_timer() == pytest.approx(100.3)
    b.handle_timer(100.29)
    assert list(b.events()) == []
    feed(a, b.data_to_send(), 100.25, split)
    assert list(a.events()) == [
        d.PunchTimeReached(remote_addrs=(B_PUB,), rtt=None, tcp_role="client")
    ]
    timer = b.get_timer()
    assert timer is not None
    b.handle_timer(timer)
    (fire,) = list(b.events())
    assert isinstance(fire, d.PunchTimeReached)
    assert fire.tcp_role == "server" and fire.remote_addrs == (A_PUB,)
    assert a.finished and b.finished
    # Both sides may close now.
    a.receive_data(b"", 101.0)
    b.receive_data(b"", 101.0)


def test_wire_bytes() -> None:
    b = d.DcutrInitiator(local_addrs=[B_PUB], now=0.0)
    out = b.data_to_send()
    body = protobuf.field_varint(1, 100) + protobuf.field_bytes(2, B_PUB)
    assert out == varint.encode(len(body)) + body


def test_sync_before_connect() -> None:
    a = d.DcutrResponder(local_addrs=[A_PUB], now=0.0)
    with pytest.raises(RemoteProtocolError, match="SYNC before CONNECT"):
        a.receive_data(pb.frame(pb.encode_holepunch(pb.HolePunch(type=pb.HolePunchType.SYNC))), 0)
    with pytest.raises(LocalProtocolError):
        a.receive_data(b"x", 0)


def test_initiator_rejects_sync_and_second_connect() -> None:
    b = d.DcutrInitiator(local_addrs=[B_PUB], now=0.0)
    with pytest.raises(RemoteProtocolError):
        b.receive_data(pb.frame(pb.encode_holepunch(pb.HolePunch(type=pb.HolePunchType.SYNC))), 0)
    a = d.DcutrResponder(local_addrs=[A_PUB], now=0.0)
    connect = pb.frame(
        pb.encode_holepunch(pb.HolePunch(type=pb.HolePunchType.CONNECT, obs_addrs=(B_PUB,)))
    )
    a.receive_data(connect, 0)
    with pytest.raises(RemoteProtocolError):
        a.receive_data(connect, 0)


def test_oversize_message_rejected_before_body() -> None:
    a = d.DcutrResponder(local_addrs=[A_PUB], now=0.0)
    with pytest.raises(RemoteProtocolError):
        a.receive_data(varint.encode(4097), 0)


@pytest.mark.parametrize("n", [0, 1000])
def test_connect_with_zero_or_many_addrs(n: int) -> None:
    a = d.DcutrResponder(local_addrs=[A_PUB], now=0.0)
    body = protobuf.field_varint(1, 100) + protobuf.field_bytes(2, b"\x00") * n
    if len(body) > 4096 or n > pb.MAX_ADDRS:
        with pytest.raises(RemoteProtocolError):
            a.receive_data(pb.frame(body), 0)
    else:
        a.receive_data(pb.frame(body), 0)
        assert list(a.events()) == [d.HolePunchFailed(reason="no-usable-addresses")]
        assert a.data_to_send() == b""  # nothing to answer with


def test_addr_filtering_and_cap() -> None:
    circuit = A_PUB + varint.encode(pb.P_CIRCUIT)
    private = pb.ip_tcp_multiaddr("192.168.1.5", 1)
    loop = pb.ip_tcp_multiaddr("127.0.0.1", 1)
    many = [pb.ip_tcp_multiaddr(f"8.8.{i}.1", 1) for i in range(30)]
    addrs = [circuit, private, loop, b"\xff", A_PUB, A_PUB, *many]
    got = d.usable_addrs(addrs, allow_private=False)
    assert got[0] == A_PUB and len(got) == d.MAX_OBS_ADDRS
    assert circuit not in got and private not in got and loop not in got
    lab = d.usable_addrs([private, loop, circuit], allow_private=True)
    assert lab == (private,)


def test_private_addresses_rejected_by_default() -> None:
    a = d.DcutrResponder(local_addrs=[A_ADDR], now=0.0)
    msg = pb.HolePunch(type=pb.HolePunchType.CONNECT, obs_addrs=(B_ADDR,))
    a.receive_data(pb.frame(pb.encode_holepunch(msg)), 0)
    assert list(a.events()) == [d.HolePunchFailed(reason="no-usable-addresses")]
    a = d.DcutrResponder(local_addrs=[A_ADDR], now=0.0, allow_private=True)
    a.receive_data(pb.frame(pb.encode_holepunch(msg)), 0)
    assert list(a.events()) == [d.ConnectReceived(remote_addrs=(B_ADDR,), rtt=None)]


def test_timeout_when_peer_never_syncs() -> None:
    a = d.DcutrResponder(local_addrs=[A_PUB], now=0.0, timeout=60)
    msg = pb.HolePunch(type=pb.HolePunchType.CONNECT, obs_addrs=(B_PUB,))
    a.receive_data(pb.frame(pb.encode_holepunch(msg)), 1.0)
    list(a.events())
    a.handle_timer(59.9)
    assert list(a.events()) == []
    a.handle_timer(60.0)
    assert list(a.events()) == [d.HolePunchFailed(reason="timeout")]
    assert a.finished


def test_eof_mid_exchange() -> None:
    b = d.DcutrInitiator(local_addrs=[B_PUB], now=0.0)
    with pytest.raises(RemoteProtocolError):
        b.receive_data(b"", 0)


def test_trailing_garbage_after_connect_reply() -> None:
    b = d.DcutrInitiator(local_addrs=[B_PUB], now=0.0)
    msg = pb.HolePunch(type=pb.HolePunchType.CONNECT, obs_addrs=(A_PUB,))
    with pytest.raises(RemoteProtocolError):
        b.receive_data(pb.frame(pb.encode_holepunch(msg)) + b"\x01\x00", 0)


def test_local_addrs_required() -> None:
    with pytest.raises(LocalProtocolError):
        d.DcutrInitiator(local_addrs=[], now=0.0)
