"""B-20, B-21, B-22, B-28 end to end: hostile identify, identify-push and ping traffic against
a real Host (with its IdentifyService and PingService) over loopback TCP.

A bad message is refused with a typed error that the service logs, the stream is reset, the
connection and the listener go on; nothing bad reaches the peerstore."""

from __future__ import annotations

import asyncio
import time

import pytest

from glueberry.errors import RemoteProtocolError
from glueberry.net.host import STREAM_PROTOCOL_NEGOTIATION_FAILED
from glueberry.proto.identify import (
    IDENTIFY_PROTOCOL,
    IDENTIFY_PUSH_PROTOCOL,
    build_identify,
    make_signed_peer_record,
)
from glueberry.proto.multistream import encode_message
from glueberry.proto.ping import PING_PROTOCOL
from glueberry.wire import protobuf, varint
from glueberry.wire.identity import PrivateKey
from glueberry.wire.multiaddr import Multiaddr
from glueberry.wire.pb_identify import IdentifyFields, encode_identify

from .conftest import ATTACKER_KEY, Target, logged_error, memory_growth, until
from .hostile import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    MSS,
    TYPE_DATA,
    TYPE_WINDOW_UPDATE,
    Frame,
    Hostile,
    frame,
    mss_open,
)

MiB = 1 << 20
ADDR = Multiaddr("/ip4/10.9.8.7/tcp/4001")


def part(fields: IdentifyFields) -> bytes:
    return varint.encode_length_prefixed(encode_identify(fields))


def open_with(sid: int, protocol: str, payload: bytes, *, fin: bool = True) -> bytes:
    body = mss_open(protocol, payload)
    out = frame(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0) + frame(TYPE_DATA, 0, sid, len(body), body)
    return out + (frame(TYPE_WINDOW_UPDATE, FLAG_FIN, sid, 0) if fin else b"")


async def push(h: Hostile, sid: int, payload: bytes) -> Frame:
    """Push ``payload`` on a new stream; the FIN (accepted) or RST (refused) that ends it."""
    h.send(open_with(sid, IDENTIFY_PUSH_PROTOCOL, payload))
    frames = await h.read_frames(lambda f: f.sid == sid and bool(f.flags & (FLAG_FIN | FLAG_RST)))
    return frames[-1]


# --- B-20 identify(-push) messages ---------------------------------------------------------------

KEY_PB = ATTACKER_KEY.public_key.to_protobuf()
OTHER = PrivateKey.from_seed(b"\x55" * 32)
BAD_RECORD = make_signed_peer_record(OTHER, [ADDR], seq=1)  # a record signed by someone else


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("one part of 8 KiB + 1 (prefix only)", varint.encode(8193) + b"\x0a"),
        ("11 parts", part(IdentifyFields(agent_version="x")) * 11),
        (
            "600 addrs in one part",
            part(IdentifyFields(listen_addrs=[b"\x04\x7f\x00\x00\x01"] * 600)),
        ),
        ("10 000 addrs in one stream", part(IdentifyFields(listen_addrs=[b"\x00"] * 1000)) * 10),
        (
            "10 parts of 400 addrs (merged cap 500)",
            part(IdentifyFields(listen_addrs=[b"\x00"] * 400)) * 10,
        ),
        (
            "10 parts of 1000 protocols (cap 1024)",
            part(IdentifyFields(protocols=["/p"] * 1000)) * 10,
        ),
        ("3000 protocols in one part", part(IdentifyFields(protocols=["/p"] * 3000))),
        (
            "public key of another peer",
            part(IdentifyFields(public_key=OTHER.public_key.to_protobuf())),
        ),
        (
            "RSA DER with a bogus long-form length",
            part(
                IdentifyFields(
                    public_key=protobuf.field_varint(1, 0)
                    + protobuf.field_bytes(2, b"\x30\x84\x7f\xff\xff\xff" + b"\x00" * 300)
                )
            ),
        ),
        ("truncated last part", part(IdentifyFields(agent_version="x" * 100))[:-10]),
        ("malformed protobuf", varint.encode_length_prefixed(b"\x0a\xff\xff\xff\xff\x0f")),
        ("wrong wire type", varint.encode_length_prefixed(protobuf.field_varint(2, 5))),
        ("protocol not UTF-8", varint.encode_length_prefixed(protobuf.field_bytes(3, b"\xff"))),
        # B-28: varint length prefixes
        ("10-byte varint prefix", b"\xff" * 9 + b"\x01"),
        ("11-byte varint prefix", b"\x80" * 10 + b"\x01"),
        ("non-minimal varint prefix", b"\x85\x00" + b"\x32\x01x" + b"xx"),
        ("11-byte varint field key", varint.encode_length_prefixed(b"\x80" * 10 + b"\x01")),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_b20_b28_bad_identify_push_is_refused(
    target: Target, debug_log: pytest.LogCaptureFixture, name: str, payload: bytes
) -> None:
    async with await target.secured() as h:
        t0 = time.process_time()
        end = await push(h, 1, payload)
        assert end.flags & FLAG_RST, name
        assert time.process_time() - t0 < 1.0
        assert logged_error(debug_log, RemoteProtocolError), name
        info = target.identify.identified(ATTACKER_KEY.peer_id)
        assert info is None or not info.listen_addrs
        assert target.host.peerstore.addrs(ATTACKER_KEY.peer_id) == []
        assert await h.echo(3, b"connection lives") == b"connection lives"


async def test_b20_unparseable_addrs_are_dropped_and_bad_record_ignored(target: Target) -> None:
    """Garbage multiaddrs are dropped (counted), a peer record signed by another key is
    ignored (never trusted); the valid rest of the message is applied."""
    payload = part(
        IdentifyFields(
            public_key=KEY_PB,
            listen_addrs=[b"\xff\xff\xff", ADDR.to_bytes(), b"\x04\x01"],
            protocols=["/echo/1.0.0"],
            signed_peer_record=BAD_RECORD,
        )
    )
    async with await target.secured() as h:
        end = await push(h, 1, payload)
        assert end.flags & FLAG_FIN and not end.flags & FLAG_RST
        info = target.identify.identified(ATTACKER_KEY.peer_id)
        assert info is not None
        assert info.listen_addrs == (ADDR,)
        assert info.dropped_addrs == 2
        assert info.signed_peer_record is None and info.signed_record_rejected
        assert target.host.peerstore.addrs(ATTACKER_KEY.peer_id) == [ADDR]


async def test_b20_identify_response_with_a_foreign_key(
    target: Target, debug_log: pytest.LogCaptureFixture
) -> None:
    """The host identifies us at once; we answer with someone else's key: identification
    fails with RemoteProtocolError, the connection stays up."""
    h = await target.attacker()
    h.refuse_inbound = False
    await h.connect_secure(ATTACKER_KEY, target.peer_id)
    frames = await h.read_frames(lambda f: f.type == TYPE_DATA and f.sid % 2 == 0)
    sid = frames[-1].sid
    assert IDENTIFY_PROTOCOL.encode() in frames[-1].body
    lie = build_identify(
        public_key=OTHER.public_key, listen_addrs=[ADDR], protocols=["/x"], observed_addr=None
    )
    body = encode_message(MSS) + encode_message(IDENTIFY_PROTOCOL) + lie
    h.send(
        frame(TYPE_WINDOW_UPDATE, FLAG_ACK, sid, 0)
        + frame(TYPE_DATA, 0, sid, len(body), body)
        + frame(TYPE_WINDOW_UPDATE, FLAG_FIN, sid, 0)
    )
    with pytest.raises(RemoteProtocolError):
        async with asyncio.timeout(3):
            await target.identify.wait_identified(ATTACKER_KEY.peer_id)
    assert target.host.peerstore.addrs(ATTACKER_KEY.peer_id) == []
    assert await h.echo(1, b"still connected") == b"still connected"


# --- B-21 push storm --------------------------------------------------------------------------


async def test_b21_thousand_pushes(target: Target) -> None:
    """1000 pushes in one burst: the token bucket (burst 5, 1/s) admits a handful, the rest are
    reset unread; the stream limits hold the concurrency; memory stays bounded."""
    one = part(IdentifyFields(public_key=KEY_PB, listen_addrs=[ADDR.to_bytes()]))
    async with await target.secured() as h:
        with memory_growth() as grown:
            h.send(b"".join(open_with(2 * i + 1, IDENTIFY_PUSH_PROTOCOL, one) for i in range(1000)))
            ended: dict[int, int] = {}

            def done(f: Frame) -> bool:
                if f.sid % 2 and f.flags & (FLAG_FIN | FLAG_RST):
                    ended.setdefault(f.sid, f.flags)
                return len(ended) == 1000

            await h.read_frames(done, within=5.0)
            assert grown() < 16 * MiB
        stats = target.identify.stats
        assert stats["pushes_received"] <= 10
        assert stats["pushes_received"] + stats["pushes_refused"] <= 1000
        assert sum(1 for fl in ended.values() if fl & FLAG_RST) >= 990
        assert await h.echo(5001, b"after the storm") == b"after the storm"
    await target.assert_serves_honest_peer()


# --- B-22 ping ----------------------------------------------------------------------------------


async def test_b22_third_concurrent_ping_stream_is_reset(target: Target) -> None:
    async with await target.secured() as h:
        for sid in (1, 3, 5):
            h.send(open_with(sid, PING_PROTOCOL, b"p" * 32, fin=False))
        await h.wait_reset(5)
        for sid in (1, 3):

            def echoed(s: int = sid) -> bool:
                return h.stream_data(s).endswith(b"p" * 32)

            await h.wait_for(echoed)
            assert not any(f.flags & FLAG_RST for f in h.frames if f.sid == sid)
        assert target.ping.limiter.active(ATTACKER_KEY.peer_id) == 2


async def test_b22_partial_payload_then_eof_is_not_echoed(target: Target) -> None:
    async with await target.secured() as h:
        h.send(open_with(1, PING_PROTOCOL, b"q" * 31))
        frames = await h.read_frames(lambda f: f.sid == 1 and bool(f.flags & (FLAG_FIN | FLAG_RST)))
        assert frames[-1].flags & FLAG_FIN
        data = b"".join(f.body for f in h.frames if f.sid == 1)
        assert b"q" not in data
        await until(lambda: target.ping.limiter.active(ATTACKER_KEY.peer_id) == 0)


async def test_b22_ping_flood_on_one_stream_holds_a_window(target: Target) -> None:
    """A full window of pings (8191 x 32 bytes) without reading the echo: the host echoes
    until our window is spent, then waits; it never buffers more."""
    async with await target.secured() as h:
        header = mss_open(PING_PROTOCOL)
        payload = header + b"f" * (256 * 1024 - len(header) - 32)
        with memory_growth() as grown:
            h.send(
                frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
                + frame(TYPE_DATA, 0, 1, len(payload), payload)
            )
            await h.wait_for(lambda: len(h.stream_data(1)) >= 200 * 1024)
            assert grown() < 4 * MiB
        assert await h.echo(3, b"other streams fine") == b"other streams fine"


async def test_b22_wrong_echo_is_a_remote_error(target: Target) -> None:
    """The host pings us; we echo the wrong bytes: its ping raises RemoteProtocolError."""
    h = await target.attacker()
    h.refuse_inbound = False
    await h.connect_secure(ATTACKER_KEY, target.peer_id)
    await until(lambda: bool(target.host.connections(ATTACKER_KEY.peer_id)))
    pinger = asyncio.ensure_future(target.ping.ping(ATTACKER_KEY.peer_id))
    try:
        frames = await h.read_frames(
            lambda f: f.type == TYPE_DATA and f.sid % 2 == 0 and PING_PROTOCOL.encode() in f.body
        )
        sid = frames[-1].sid
        body = encode_message(MSS) + encode_message(PING_PROTOCOL)
        h.send(
            frame(TYPE_WINDOW_UPDATE, FLAG_ACK, sid, 0) + frame(TYPE_DATA, 0, sid, len(body), body)
        )
        await h.wait_for(lambda: len(h.stream_data(sid)) >= len(body) + 32)
        h.send(frame(TYPE_DATA, 0, sid, 32, b"w" * 32))
        with pytest.raises(RemoteProtocolError):
            async with asyncio.timeout(3):
                await pinger
    finally:
        pinger.cancel()
        await asyncio.gather(pinger, return_exceptions=True)
    # identify was refused by us meanwhile (sid reset by hand); the connection lives
    for f in h.frames:
        if f.sid % 2 == 0 and f.flags & FLAG_SYN and f.sid != sid:
            h.send(frame(TYPE_WINDOW_UPDATE, FLAG_RST, f.sid, 0))
    assert await h.echo(1, b"ok") == b"ok"


async def test_b22_unknown_protocol_gets_na_not_a_close(target: Target) -> None:
    async with await target.secured() as h:
        h.send(open_with(1, "/ipfs/ping/2.0.0", b""))
        frames = await h.read_frames(lambda f: f.sid == 1 and bool(f.flags & FLAG_RST))
        assert frames[-1].length == STREAM_PROTOCOL_NEGOTIATION_FAILED
        assert encode_message("na") in b"".join(f.body for f in h.frames if f.sid == 1)
        assert await h.echo(3, b"ok") == b"ok"
