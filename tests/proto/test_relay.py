"""Circuit relay v2 machines (glueberry.proto.relay): happy paths and B-23/B-24 bad input."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.proto import relay as r
from glueberry.wire import pb_nat as pb
from glueberry.wire import varint
from glueberry.wire.identity import PrivateKey

RELAY_KEY = PrivateKey.from_seed(b"\x01" * 32)
A_KEY = PrivateKey.from_seed(b"\x02" * 32)
B_KEY = PrivateKey.from_seed(b"\x03" * 32)
RELAY, A, B = RELAY_KEY.peer_id, A_KEY.peer_id, B_KEY.peer_id
T0 = 1_700_000_000.0
IP1 = ipaddress.ip_address("198.51.100.7")
RELAY_ADDR = pb.ip_tcp_multiaddr("203.0.113.1", 4001)


def pump(src: Any, dst: Any, now: float, *, split: bool) -> None:
    """Move bytes src → dst, whole or one byte at a time."""
    data = src.data_to_send()
    if split:
        for i in range(len(data)):
            dst.receive_data(data[i : i + 1], now)
    elif data:
        dst.receive_data(data, now)


def events(m: Any) -> list[Any]:
    return list(m.events())


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def split(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def server(table: r.RelayTable, peer: Any = A, relayed: bool = False, **kw: Any) -> r.HopServer:
    return r.HopServer(
        peer=peer,
        remote_ip=kw.pop("ip", IP1),
        relayed=relayed,
        table=table,
        now=T0,
        relay_key=RELAY_KEY,
        relay_addrs=(RELAY_ADDR,),
        **kw,
    )


def reserve(table: r.RelayTable, peer_key: PrivateKey, split: bool, **kw: Any) -> list[Any]:
    client = r.HopReserveClient(relay=RELAY, local=peer_key.peer_id, now=T0)
    srv = server(table, peer=peer_key.peer_id, **kw)
    pump(client, srv, T0, split=split)
    srv_events = events(srv)
    pump(srv, client, T0, split=split)
    assert srv.finished and client.finished
    return srv_events + events(client)


def test_reserve_with_voucher(split: bool) -> None:
    table = r.RelayTable()
    evs = reserve(table, B_KEY, split)
    served, accepted = evs
    assert served == r.ReservationServed(peer=B, expire=int(T0) + 3600)
    assert isinstance(accepted, r.ReservationAccepted)
    assert accepted.expire == int(T0) + 3600
    assert accepted.addrs == (RELAY_ADDR,)
    assert accepted.limit == pb.Limit(duration=120, data=128 * 1024)
    assert accepted.voucher == pb.Voucher(relay=RELAY, peer=B, expiration=accepted.expire)
    assert accepted.voucher_problem is None
    assert table.has_reservation(B, T0)
    assert not table.has_reservation(B, T0 + 3600)


def test_full_circuit_with_stop_and_trailing_data(split: bool) -> None:
    table = r.RelayTable()
    reserve(table, B_KEY, split)
    # A connects to B through the relay.
    a = r.HopConnectClient(target=B, now=T0)
    hop = server(table, peer=A)
    pump(a, hop, T0, split=split)
    (req,) = events(hop)
    assert req == r.ConnectRequested(src=A, dst=B, limit=table.limits.limit)
    assert table.circuit_count == 1
    # The relay opens STOP to B.
    stop_c = r.StopClient(src=A, limit=req.limit, now=T0)
    stop_s = r.StopServer(now=T0)
    pump(stop_c, stop_s, T0, split=split)
    (offer,) = events(stop_s)
    assert offer == r.StopConnectRequested(src=A, src_addrs=(), limit=req.limit)
    stop_s.accept()
    (est_b,) = events(stop_s)
    assert est_b == r.CircuitEstablished(limit=req.limit, trailing_data=b"")
    # B answers and immediately starts the relayed stream ("/multistream..." bytes).
    stop_c.receive_data(stop_s.data_to_send() + b"hello-from-B", T0)
    (est_relay_b,) = events(stop_c)
    assert est_relay_b.trailing_data == b"hello-from-B"
    hop.stop_succeeded()
    (est_relay_a,) = events(hop)
    assert isinstance(est_relay_a, r.CircuitEstablished)
    a.receive_data(hop.data_to_send() + b"xyz", T0)
    (est_a,) = events(a)
    assert est_a == r.CircuitEstablished(limit=req.limit, trailing_data=b"xyz")
    with pytest.raises(LocalProtocolError):
        a.receive_data(b"more", T0)  # the stream belongs to the driver now
    table.close_circuit(A, B)
    assert table.circuit_count == 0


def test_connect_without_reservation_is_refused(split: bool) -> None:
    table = r.RelayTable()
    a = r.HopConnectClient(target=B, now=T0)
    hop = server(table, peer=A)
    pump(a, hop, T0, split=split)
    assert events(hop) == [r.RequestDenied(kind="connect", status=pb.RelayStatus.NO_RESERVATION)]
    pump(hop, a, T0, split=split)
    assert events(a) == [r.CircuitRefused(status=pb.RelayStatus.NO_RESERVATION)]


def test_stop_refused_releases_circuit() -> None:
    table = r.RelayTable()
    reserve(table, B_KEY, False)
    a = r.HopConnectClient(target=B, now=T0)
    hop = server(table, peer=A)
    pump(a, hop, T0, split=False)
    events(hop)
    stop_c = r.StopClient(src=A, limit=None, now=T0)
    stop_s = r.StopServer(now=T0)
    pump(stop_c, stop_s, T0, split=False)
    events(stop_s)
    stop_s.refuse()
    pump(stop_s, stop_c, T0, split=False)
    assert events(stop_c) == [r.CircuitRefused(status=pb.RelayStatus.CONNECTION_FAILED)]
    hop.stop_failed()
    assert table.circuit_count == 0
    pump(hop, a, T0, split=False)
    assert events(a) == [r.CircuitRefused(status=pb.RelayStatus.CONNECTION_FAILED)]


def test_requests_over_relayed_connection_are_denied() -> None:
    table = r.RelayTable()
    evs = reserve(table, B_KEY, False, relayed=True)
    assert evs == [
        r.RequestDenied(kind="reserve", status=pb.RelayStatus.PERMISSION_DENIED),
        r.ReservationRefused(status=pb.RelayStatus.PERMISSION_DENIED),
    ]
    assert not table.has_reservation(B, T0)
    reserve(table, B_KEY, False)
    a = r.HopConnectClient(target=B, now=T0)
    hop = server(table, peer=A, relayed=True)
    pump(a, hop, T0, split=False)
    assert events(hop)[0].status is pb.RelayStatus.PERMISSION_DENIED
    stop_s = r.StopServer(now=T0, relayed=True)
    stop_c = r.StopClient(src=A, limit=None, now=T0)
    pump(stop_c, stop_s, T0, split=False)
    pump(stop_s, stop_c, T0, split=False)
    assert events(stop_c) == [r.CircuitRefused(status=pb.RelayStatus.PERMISSION_DENIED)]


def test_reservation_caps_total_and_per_ip() -> None:
    keys = [PrivateKey.from_seed(bytes([i + 10]) * 32) for i in range(10)]
    table = r.RelayTable(r.RelayLimits(max_reservations=9, max_reservations_per_ip=8))
    for k in keys[:8]:
        assert isinstance(reserve(table, k, False)[1], r.ReservationAccepted)
    # 9th from the same IP: refused (B-23 "9 reservations from one IP").
    assert reserve(table, keys[8], False)[1] == r.ReservationRefused(
        status=pb.RelayStatus.RESERVATION_REFUSED
    )
    other_ip = ipaddress.ip_address("198.51.100.8")
    assert isinstance(reserve(table, keys[8], False, ip=other_ip)[1], r.ReservationAccepted)
    # 10th overall: the table is full.
    assert reserve(table, keys[9], False, ip=ipaddress.ip_address("198.51.100.9"))[
        1
    ] == r.ReservationRefused(status=pb.RelayStatus.RESERVATION_REFUSED)
    # A refresh from a holder is still fine and keeps the count.
    assert isinstance(reserve(table, keys[0], False)[1], r.ReservationAccepted)
    assert table.reservation_count(T0) == 9
    table.remove_peer(keys[0].peer_id)
    assert table.reservation_count(T0) == 8


def test_default_table_refuses_129th() -> None:
    table = r.RelayTable()
    for i in range(128):
        pid = PrivateKey.from_seed(i.to_bytes(32, "big")).peer_id
        ip = ipaddress.ip_address(f"198.51.{i // 8}.{i % 8 + 1}")
        assert table.reserve(pid, ip, T0)[0] is pb.RelayStatus.OK
    extra = PrivateKey.from_seed(b"\xee" * 32).peer_id
    assert table.reserve(extra, IP1, T0)[0] is pb.RelayStatus.RESERVATION_REFUSED
    # After the TTL everything expired and room is back.
    assert table.get_timer() == T0 + 3600
    table.handle_timer(T0 + 3600)
    assert table.reserve(extra, IP1, T0 + 3600)[0] is pb.RelayStatus.OK


def test_circuit_caps() -> None:
    table = r.RelayTable(r.RelayLimits(max_circuits_per_peer=1))
    reserve(table, B_KEY, False)
    a1 = r.HopConnectClient(target=B, now=T0)
    h1 = server(table, peer=A)
    pump(a1, h1, T0, split=False)
    assert isinstance(events(h1)[0], r.ConnectRequested)
    a2 = r.HopConnectClient(target=B, now=T0)
    h2 = server(table, peer=A)
    pump(a2, h2, T0, split=False)
    assert events(h2) == [
        r.RequestDenied(kind="connect", status=pb.RelayStatus.RESOURCE_LIMIT_EXCEEDED)
    ]
    # Pending CONNECT times out → slot released.
    h1.handle_timer(T0 + 60)
    assert table.circuit_count == 0


def test_pending_connect_released_on_eof() -> None:
    table = r.RelayTable()
    reserve(table, B_KEY, False)
    hop = server(table, peer=A)
    hop.receive_data(r.HopConnectClient(target=B, now=T0).data_to_send(), T0)
    assert table.circuit_count == 1
    with pytest.raises(RemoteProtocolError):
        hop.receive_data(b"", T0)
    assert table.circuit_count == 0


# --- bad input (B-23) ---------------------------------------------------------------------


def status_of(hop: r.HopServer) -> pb.RelayStatus | None:
    reader = pb.DelimitedReader(4096, "t")
    reader.feed(hop.data_to_send())
    body = reader.next_message()
    assert body is not None
    return pb.decode_hop(body).status


@pytest.mark.parametrize(
    ("wire", "status"),
    [
        (pb.frame(b"\x08\x07"), pb.RelayStatus.MALFORMED_MESSAGE),  # unknown type
        (pb.frame(b"\x08\x02\x28\x64"), pb.RelayStatus.UNEXPECTED_MESSAGE),  # client STATUS
        (pb.frame(b"\x08\x01"), pb.RelayStatus.MALFORMED_MESSAGE),  # CONNECT w/o peer
        (pb.frame(b"\xff"), pb.RelayStatus.MALFORMED_MESSAGE),  # garbage
        (varint.encode(4097), pb.RelayStatus.MALFORMED_MESSAGE),  # > 4096 bytes
    ],
)
def test_hop_server_bad_input(wire: bytes, status: pb.RelayStatus) -> None:
    hop = server(r.RelayTable())
    with pytest.raises(RemoteProtocolError):
        hop.receive_data(wire, T0)
    assert status_of(hop) is status
    with pytest.raises(LocalProtocolError):
        hop.receive_data(b"x", T0)


def test_oversize_rejected_before_body() -> None:
    hop = server(r.RelayTable())
    with pytest.raises(RemoteProtocolError):
        for b in varint.encode(1 << 40):
            hop.receive_data(bytes([b]), T0)


def test_client_rejects_wrong_replies() -> None:
    c = r.HopReserveClient(relay=RELAY, local=B, now=T0)
    with pytest.raises(RemoteProtocolError):
        c.receive_data(pb.frame(pb.encode_hop(pb.HopMessage(type=pb.HopType.CONNECT))), T0)
    c = r.HopReserveClient(relay=RELAY, local=B, now=T0)
    ok_without_rsvp = pb.HopMessage(type=pb.HopType.STATUS, status=pb.RelayStatus.OK)
    with pytest.raises(RemoteProtocolError):
        c.receive_data(pb.frame(pb.encode_hop(ok_without_rsvp)), T0)
    c = r.HopReserveClient(relay=RELAY, local=B, now=T0)
    with pytest.raises(RemoteProtocolError):
        c.receive_data(b"", T0)
    c = r.HopReserveClient(relay=RELAY, local=B, now=T0)
    past = pb.HopMessage(
        type=pb.HopType.STATUS,
        status=pb.RelayStatus.OK,
        reservation=pb.Reservation(expire=int(T0) - 1),
    )
    with pytest.raises(RemoteProtocolError):
        c.receive_data(pb.frame(pb.encode_hop(past)), T0)


@pytest.mark.parametrize(
    ("voucher", "problem"),
    [
        (pb.seal_voucher(A_KEY, pb.Voucher(relay=A, peer=B, expiration=int(T0) + 10)), "relay"),
        (
            pb.seal_voucher(RELAY_KEY, pb.Voucher(relay=RELAY, peer=A, expiration=int(T0) + 10)),
            "peer",
        ),
        (
            pb.seal_voucher(RELAY_KEY, pb.Voucher(relay=RELAY, peer=B, expiration=int(T0) + 9)),
            "expiration",
        ),
        (
            pb.seal_envelope(
                RELAY_KEY,
                "libp2p-peer-record",
                pb.VOUCHER_PAYLOAD_TYPE,
                pb.encode_voucher_payload(pb.Voucher(relay=RELAY, peer=B, expiration=int(T0) + 10)),
            ),
            "signature",
        ),
        (b"\x00\x01garbage", ""),
    ],
)
def test_bad_vouchers_are_advisory(voucher: bytes, problem: str) -> None:
    """B-24: a bad voucher never fails the reservation; it is reported."""
    c = r.HopReserveClient(relay=RELAY, local=B, now=T0)
    msg = pb.HopMessage(
        type=pb.HopType.STATUS,
        status=pb.RelayStatus.OK,
        reservation=pb.Reservation(expire=int(T0) + 10, voucher=voucher),
    )
    c.receive_data(pb.frame(pb.encode_hop(msg)), T0)
    (ev,) = events(c)
    assert isinstance(ev, r.ReservationAccepted)
    assert ev.voucher is None and ev.voucher_problem
    assert problem in ev.voucher_problem


def test_timeouts() -> None:
    c = r.HopReserveClient(relay=RELAY, local=B, now=T0, timeout=5)
    assert c.get_timer() == T0 + 5
    c.handle_timer(T0 + 4)
    assert events(c) == []
    c.handle_timer(T0 + 5)
    assert events(c) == [r.RelayRequestTimedOut(waited=5.0)]
    assert c.finished and c.get_timer() is None


def test_stop_server_bad_input() -> None:
    s = r.StopServer(now=T0)
    with pytest.raises(RemoteProtocolError):
        s.receive_data(pb.frame(pb.encode_stop(pb.StopMessage(type=pb.StopType.STATUS))), T0)
    s = r.StopServer(now=T0)
    with pytest.raises(RemoteProtocolError):
        s.receive_data(pb.frame(b""), T0)  # CONNECT without a peer
    with pytest.raises(LocalProtocolError):
        r.StopServer(now=T0).accept()


def test_circuit_limiter_data_and_duration() -> None:
    lim = r.CircuitLimiter(pb.Limit(duration=120, data=128 * 1024), T0)
    assert lim.allow("src_to_dst", 100 * 1024, T0) == 100 * 1024
    assert lim.allow("dst_to_src", 128 * 1024 - 1, T0) == 128 * 1024 - 1
    assert list(lim.events()) == []
    # One byte over the limit: only the remainder passes and the limit is reported.
    assert lim.allow("src_to_dst", 28 * 1024 + 1, T0) == 28 * 1024
    assert list(lim.events()) == [r.CircuitLimitReached(reason="data")]
    assert lim.allow("dst_to_src", 1, T0) == 0
    lim2 = r.CircuitLimiter(pb.Limit(duration=120), T0)
    assert lim2.get_timer() == T0 + 120
    assert lim2.allow("src_to_dst", 10**9, T0 + 1) == 10**9
    lim2.handle_timer(T0 + 120)
    assert list(lim2.events()) == [r.CircuitLimitReached(reason="duration")]
    unlimited = r.CircuitLimiter(None, T0)
    assert unlimited.get_timer() is None
    assert unlimited.allow("src_to_dst", 10**9, T0 + 10**6) == 10**9
