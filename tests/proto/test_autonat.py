"""AutoNAT v1/v2 machines (glueberry.proto.autonat): exchanges and B-26/B-27 bad input."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import pytest

from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.proto import autonat as an
from glueberry.wire import pb_nat as pb
from glueberry.wire import varint
from glueberry.wire.identity import PeerId, PrivateKey

CLIENT = PrivateKey.from_seed(b"\x05" * 32).peer_id
OTHER = PrivateKey.from_seed(b"\x06" * 32).peer_id
OBS = ipaddress.ip_address("8.8.8.8")
MY_ADDR = pb.ip_tcp_multiaddr("8.8.8.8", 4001)
MY_QUIC = pb.ip_udp_multiaddr("8.8.8.8", 4001, quic=True)
THIRD_PARTY = pb.ip_tcp_multiaddr("1.1.1.1", 80)


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def split(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def pump(src: Any, dst: Any, now: float, split: bool) -> None:
    data = src.data_to_send()
    if split:
        for i in range(len(data)):
            dst.receive_data(data[i : i + 1], now)
    elif data:
        dst.receive_data(data, now)


def v1_server(**kw: Any) -> an.AutoNATv1Server:
    args: dict[str, Any] = {
        "requester": CLIENT,
        "observed_ip": OBS,
        "relayed": False,
        "limiter": an.AutoNATRateLimiter(),
        "now": 0.0,
    }
    args.update(kw)
    return an.AutoNATv1Server(**args)


def test_v1_success(split: bool) -> None:
    c = an.AutoNATv1Client(peer_id=CLIENT, addrs=[THIRD_PARTY, MY_ADDR, MY_QUIC], now=0.0)
    s = v1_server()
    pump(c, s, 0.0, split)
    (req,) = list(s.events())
    # Only addresses on the observed IP survive (B-26).
    assert req == an.DialBackRequested(peer=CLIENT, addrs=(MY_ADDR, MY_QUIC))
    s.dial_succeeded(MY_ADDR)
    pump(s, c, 1.0, split)
    assert list(c.events()) == [
        an.DialResponseReceived(status=pb.AutoNATStatus.OK, status_text="OK", addr=MY_ADDR)
    ]
    assert c.finished and s.finished


def test_v1_dial_failed() -> None:
    c = an.AutoNATv1Client(peer_id=CLIENT, addrs=[MY_ADDR], now=0.0)
    s = v1_server()
    pump(c, s, 0.0, False)
    list(s.events())
    s.dial_failed("connection refused")
    pump(s, c, 1.0, False)
    (ev,) = list(c.events())
    assert isinstance(ev, an.DialResponseReceived)
    assert ev.status is pb.AutoNATStatus.E_DIAL_ERROR and ev.status_text == "connection refused"


def refused(s: an.AutoNATv1Server, client: an.AutoNATv1Client) -> pb.AutoNATStatus:
    pump(client, s, 0.0, False)
    evs = list(s.events())
    assert len(evs) == 1 and isinstance(evs[0], an.RequestRefused), evs
    pump(s, client, 0.0, False)
    (ev,) = list(client.events())
    assert isinstance(ev, an.DialResponseReceived)
    return ev.status


def test_v1_refusals() -> None:
    def c(addrs: Sequence[bytes] = (MY_ADDR,), pid: PeerId = CLIENT) -> an.AutoNATv1Client:
        return an.AutoNATv1Client(peer_id=pid, addrs=list(addrs), now=0.0)

    assert refused(v1_server(), c((THIRD_PARTY,))) is pb.AutoNATStatus.E_DIAL_REFUSED
    assert refused(v1_server(relayed=True), c()) is pb.AutoNATStatus.E_DIAL_REFUSED
    assert refused(v1_server(observed_ip=None), c()) is pb.AutoNATStatus.E_DIAL_REFUSED
    assert refused(v1_server(), c(pid=OTHER)) is pb.AutoNATStatus.E_BAD_REQUEST
    private = pb.ip_tcp_multiaddr("10.0.0.1", 1)
    s = v1_server(observed_ip=ipaddress.ip_address("10.0.0.1"))
    assert refused(s, c((private,))) is pb.AutoNATStatus.E_DIAL_REFUSED
    s = v1_server(observed_ip=ipaddress.ip_address("10.0.0.1"), allow_private=True)
    pump(c((private,)), s, 0.0, False)
    assert isinstance(next(s.events()), an.DialBackRequested)


def test_v1_only_first_16_addrs_considered() -> None:
    addrs = [pb.ip_tcp_multiaddr("8.8.8.8", 1000 + i) for i in range(20)]
    body = pb.encode_autonat(
        pb.AutoNATMessage(
            type=pb.AutoNATMessageType.DIAL, dial=pb.PeerInfo(peer_id=CLIENT, addrs=tuple(addrs))
        )
    )
    s = v1_server()
    s.receive_data(pb.frame(body), 0.0)
    (req,) = list(s.events())
    assert isinstance(req, an.DialBackRequested)
    assert len(req.addrs) == 16


def test_v1_rate_limit() -> None:
    lim = an.AutoNATRateLimiter()
    for i in range(3):
        c = an.AutoNATv1Client(peer_id=CLIENT, addrs=[MY_ADDR], now=float(i))
        s = v1_server(limiter=lim, now=float(i))
        pump(c, s, float(i), False)
        assert isinstance(next(s.events()), an.DialBackRequested)
    c = an.AutoNATv1Client(peer_id=CLIENT, addrs=[MY_ADDR], now=5.0)
    s = v1_server(limiter=lim, now=5.0)
    assert refused(s, c) is pb.AutoNATStatus.E_DIAL_REFUSED
    # A minute later the window has moved on.
    assert lim.allow(CLIENT, 60.5)
    # Global limit.
    glim = an.AutoNATRateLimiter(global_limit=30)
    peers = [PrivateKey.from_seed(bytes([i + 40]) * 32).peer_id for i in range(31)]
    assert all(glim.allow(p, 0.0) for p in peers[:30])
    assert not glim.allow(peers[30], 0.0)


def test_v1_malformed() -> None:
    s = v1_server()
    with pytest.raises(RemoteProtocolError):
        s.receive_data(pb.frame(b"\x08\x05"), 0.0)
    reader = pb.DelimitedReader(4096, "t")
    reader.feed(s.data_to_send())
    body = reader.next_message()
    assert body is not None
    resp = pb.decode_autonat(body).dial_response
    assert resp is not None and resp.status is pb.AutoNATStatus.E_BAD_REQUEST
    s = v1_server()
    with pytest.raises(RemoteProtocolError):  # DIAL without a Dial
        s.receive_data(pb.frame(b"\x08\x00"), 0.0)
    s = v1_server()
    with pytest.raises(RemoteProtocolError):
        s.receive_data(varint.encode(5000), 0.0)


def test_v1_timeout_while_dialing() -> None:
    c = an.AutoNATv1Client(peer_id=CLIENT, addrs=[MY_ADDR], now=0.0)
    s = v1_server()
    pump(c, s, 0.0, False)
    list(s.events())
    s.handle_timer(30.0)
    assert list(s.events()) == [an.AutoNATTimedOut(waited=30.0)]
    pump(s, c, 30.0, False)
    ev = next(c.events())
    assert isinstance(ev, an.DialResponseReceived)
    assert ev.status is pb.AutoNATStatus.E_INTERNAL_ERROR
    with pytest.raises(LocalProtocolError):
        s.dial_succeeded(MY_ADDR)


# --- v2 ------------------------------------------------------------------------------------


def v2_server(**kw: Any) -> an.AutoNATv2Server:
    args: dict[str, Any] = {
        "requester": CLIENT,
        "observed_ip": OBS,
        "relayed": False,
        "limiter": an.AutoNATRateLimiter(),
        "now": 0.0,
    }
    args.update(kw)
    return an.AutoNATv2Server(**args)


def test_v2_same_ip_with_dial_back(split: bool) -> None:
    nonce = 0xDEADBEEF_CAFEBABE
    c = an.AutoNATv2Client(addrs=[MY_ADDR], nonce=nonce, now=0.0)
    s = v2_server()
    pump(c, s, 0.0, split)
    (req,) = list(s.events())
    assert req == an.DialBackRequested(peer=CLIENT, addrs=(MY_ADDR,), nonce=nonce)
    # Dial-back stream.
    sender = an.DialBackSender(nonce=nonce, now=0.0)
    receiver = an.DialBackReceiver(now=0.0)
    pump(sender, receiver, 0.1, split)
    (got,) = list(receiver.events())
    assert got == an.DialBackReceived(nonce=nonce)
    assert c.dial_back_received(got.nonce)
    pump(receiver, sender, 0.2, split)
    assert list(sender.events()) == [an.DialBackAcknowledged()]
    s.dial_result(pb.DialStatus.OK)
    pump(s, c, 0.3, split)
    (res,) = list(c.events())
    assert res == an.DialResultReceived(
        status=pb.ResponseStatus.OK, addr=MY_ADDR, dial_status=pb.DialStatus.OK, verified=True
    )
    assert isinstance(res, an.DialResultReceived)
    assert res.reachable is True


def test_v2_nonce_mismatch_is_not_trusted() -> None:
    c = an.AutoNATv2Client(addrs=[MY_ADDR], nonce=1, now=0.0)
    s = v2_server()
    pump(c, s, 0.0, False)
    list(s.events())
    assert not c.dial_back_received(2)
    s.dial_result(pb.DialStatus.OK)
    pump(s, c, 0.0, False)
    (res,) = list(c.events())
    assert isinstance(res, an.DialResultReceived)
    assert not res.verified and res.reachable is None


def test_v2_dial_data_for_other_ip(split: bool) -> None:
    c = an.AutoNATv2Client(addrs=[THIRD_PARTY], nonce=7, now=0.0)
    s = v2_server(dial_data=10_000)
    pump(c, s, 0.0, split)
    assert list(s.events()) == []
    pump(s, c, 0.0, split)
    assert list(c.events()) == [an.DialDataRequested(addr_idx=0, num_bytes=10_000, accepted=True)]
    pump(c, s, 0.0, split)
    (req,) = list(s.events())
    assert isinstance(req, an.DialBackRequested)
    assert req.addrs == (THIRD_PARTY,)
    s.dial_result(pb.DialStatus.E_DIAL_ERROR)
    pump(s, c, 0.0, split)
    (res,) = list(c.events())
    assert isinstance(res, an.DialResultReceived)
    assert res.reachable is False


def test_v2_client_refuses_expensive_dial_data() -> None:
    c = an.AutoNATv2Client(addrs=[THIRD_PARTY], nonce=7, now=0.0)
    c.data_to_send()
    c.receive_data(pb.frame(pb.encode_v2(pb.DialDataRequest(addr_idx=0, num_bytes=100_001))), 0)
    assert list(c.events()) == [an.DialDataRequested(addr_idx=0, num_bytes=100_001, accepted=False)]
    assert c.data_to_send() == b"" and c.finished


def test_v2_bad_input() -> None:
    # DialDataResponse chunk > 4096 (B-27).
    c = an.AutoNATv2Client(addrs=[THIRD_PARTY], nonce=7, now=0.0)
    s = v2_server()
    pump(c, s, 0.0, False)
    with pytest.raises(RemoteProtocolError):
        s.receive_data(pb.frame(pb.encode_v2(pb.DialDataResponse(data=bytes(4097)))), 0)
    # Message > 8192.
    with pytest.raises(RemoteProtocolError):
        v2_server().receive_data(varint.encode(8193), 0)
    # DialDataRequest for an index we never sent.
    c = an.AutoNATv2Client(addrs=[MY_ADDR], nonce=7, now=0.0)
    with pytest.raises(RemoteProtocolError):
        c.receive_data(pb.frame(pb.encode_v2(pb.DialDataRequest(addr_idx=3, num_bytes=1))), 0)
    # Unknown response status is discarded as an error.
    c = an.AutoNATv2Client(addrs=[MY_ADDR], nonce=7, now=0.0)
    with pytest.raises(RemoteProtocolError):
        c.receive_data(pb.frame(b"\x12\x02\x08\x07"), 0)


def test_v2_refusals() -> None:
    cases: list[tuple[dict[str, Any], pb.ResponseStatus]] = [
        ({"relayed": True}, pb.ResponseStatus.E_REQUEST_REJECTED),
        ({"observed_ip": None}, pb.ResponseStatus.E_REQUEST_REJECTED),
        ({}, pb.ResponseStatus.E_DIAL_REFUSED),
    ]
    for kw, status in cases:
        addrs = [pb.ip_tcp_multiaddr("10.1.1.1", 1)] if not kw else [MY_ADDR]
        c = an.AutoNATv2Client(addrs=addrs, nonce=1, now=0.0)
        s = v2_server(**kw)
        pump(c, s, 0.0, False)
        assert isinstance(next(s.events()), an.RequestRefused)
        pump(s, c, 0.0, False)
        (res,) = list(c.events())
        assert isinstance(res, an.DialResultReceived)
        assert res.status is status and res.reachable is None
