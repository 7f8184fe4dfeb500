"""B-01..B-05, B-08, B-30 end to end: a hostile client attacks the security handshake and the
secured channel of a real Host over loopback TCP.

Each attack must end in a typed error that the host logs, the connection closed within the
inbound deadline (1 s here) or at once, and the listener still serving an honest peer."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from glueberry.errors import (
    DecryptionFailed,
    HandshakeTimeout,
    NegotiationFailed,
    PeerIdMismatch,
    RemoteProtocolError,
    SecurityError,
)
from glueberry.net.host import Host
from glueberry.net.upgrader import yamux_muxer
from glueberry.proto.multistream import MultistreamListener, ProtocolSelected, encode_message
from glueberry.proto.noise import SIGNATURE_PREFIX, NoiseHandshake
from glueberry.proto.yamux import YamuxConfig
from glueberry.wire import protobuf
from glueberry.wire.identity import PrivateKey, PublicKey
from glueberry.wire.pb_noise import NoiseExtensions, NoiseHandshakePayload, encode_payload

from .conftest import AT_ONCE, ATTACKER_KEY, Target, config, logged_error, running_target
from .hostile import MSS, Hostile

# --- helpers ------------------------------------------------------------------------------


class BadSigner:
    """An identity whose signature covers the wrong bytes (or is not a signature at all)."""

    def __init__(self, key: PrivateKey, transform: Callable[[bytes], bytes | None]) -> None:
        self._key = key
        self._transform = transform
        self.public_key = key.public_key
        self.peer_id = key.peer_id

    def sign(self, message: bytes) -> bytes:
        what = self._transform(message)
        return os.urandom(64) if what is None else self._key.sign(what)


def payload_with(
    key_protobuf: bytes | None = None,
    *,
    sig: bytes | None = None,
    extensions: NoiseExtensions | None = None,
    extra: bytes = b"",
) -> Callable[[NoiseHandshake], bytes]:
    """A handshake payload hook: our real payload with some fields replaced."""

    def build(machine: NoiseHandshake) -> bytes:
        static = machine._s_pub
        real_sig = ATTACKER_KEY.sign(SIGNATURE_PREFIX + static)
        return (
            encode_payload(
                NoiseHandshakePayload(
                    identity_key=(
                        key_protobuf
                        if key_protobuf is not None
                        else ATTACKER_KEY.public_key.to_protobuf()
                    ),
                    identity_sig=sig if sig is not None else real_sig,
                    extensions=extensions,
                )
            )
            + extra
        )

    return build


async def noise_attacker(target: Target) -> Hostile:
    h = await target.attacker()
    assert await h.select("/noise") == "/noise"
    return h


async def assert_rejected_at_once(h: Hostile, target: Target) -> None:
    """The target hangs up well before its inbound deadline, and keeps serving."""
    t0 = time.monotonic()
    await h.read_until_closed(within=AT_ONCE)
    assert time.monotonic() - t0 < AT_ONCE
    await h.aclose()
    await target.assert_serves_honest_peer()


# --- B-01: framing of handshake messages --------------------------------------------------


async def test_b01_length_beyond_data_then_silence_times_out(
    fast_target: Target, debug_log: pytest.LogCaptureFixture
) -> None:
    target = fast_target
    h = await noise_attacker(target)
    h.write(b"\x00\x20" + os.urandom(10))  # msg1 announces 32 bytes, 10 arrive
    assert await h.is_open_after(0.3)
    await target.assert_serves_honest_peer()  # while the stalled upgrade is pending
    await h.read_until_closed(within=2.0)  # the 1 s inbound deadline
    await h.aclose()
    assert target.host.upgrader.timed_out_inbound == 1
    assert logged_error(debug_log, HandshakeTimeout)


@pytest.mark.parametrize(
    "prefix", [b"\x00\x00", b"\xff\xff", b"\x00\x1f"], ids=["0", "65535", "31"]
)
async def test_b01_msg1_length_prefix_checked_first(
    target: Target, debug_log: pytest.LogCaptureFixture, prefix: bytes
) -> None:
    """Length 0, 65535 or 31: refused on the 2-byte prefix, before any body arrives."""
    h = await noise_attacker(target)
    h.write(prefix)
    await assert_rejected_at_once(h, target)
    assert logged_error(debug_log, RemoteProtocolError)
    assert target.host.upgrader.failed_inbound == 1


async def test_b01_msg3_length_beyond_cap_is_refused_unbuffered(
    target: Target, debug_log: pytest.LogCaptureFixture
) -> None:
    h = await noise_attacker(target)
    await h.secure(ATTACKER_KEY, target.peer_id, msg3=lambda m: b"\xff\xff" + b"\x00" * 100)
    await assert_rejected_at_once(h, target)
    assert logged_error(debug_log, RemoteProtocolError)


async def test_b01_partial_transport_frame_then_silence_ends_by_keepalive() -> None:
    """After the handshake: a frame announcing 65535 bytes, 100 sent, then silence. Only the
    partial frame is held (no allocation for the announced size) and the yamux keepalive
    (0.3 s + 0.3 s here; go: 30 s + 10 s) ends the connection."""
    fast = yamux_muxer(YamuxConfig(keepalive_interval=0.3, ping_timeout=0.3))
    async with running_target(config(muxers={"/yamux/1.0.0": fast})) as target:
        h = await target.secured()
        h.write(b"\xff\xff" + os.urandom(100))
        t0 = time.monotonic()
        await h.read_until_closed(within=2.0)
        assert 0.5 < time.monotonic() - t0 < 2.0
        await h.aclose()
        conn = await target.wait_ended()
        assert conn.is_closed
        await target.assert_serves_honest_peer()


# --- B-02: malformed handshake messages ---------------------------------------------------


@pytest.mark.parametrize("size", [31, 33, 64])
async def test_b02_msg1_not_32_bytes(
    target: Target, debug_log: pytest.LogCaptureFixture, size: int
) -> None:
    """Message 1 carries exactly the ephemeral key: extensions (or garbage) there are refused."""
    h = await noise_attacker(target)
    h.write(size.to_bytes(2, "big") + os.urandom(size))
    await assert_rejected_at_once(h, target)
    assert logged_error(debug_log, RemoteProtocolError)


@pytest.mark.parametrize(
    ("name", "rewrite", "error"),
    [
        ("truncated static key", lambda m: (47).to_bytes(2, "big") + m[2:49], RemoteProtocolError),
        ("tag flipped", lambda m: m[:-1] + bytes([m[-1] ^ 1]), DecryptionFailed),
        ("static key flipped", lambda m: m[:2] + bytes([m[2] ^ 1]) + m[3:], DecryptionFailed),
        ("body cut short", lambda m: (len(m) - 12).to_bytes(2, "big") + m[2:-10], SecurityError),
    ],
)
async def test_b02_bad_msg3(
    target: Target,
    debug_log: pytest.LogCaptureFixture,
    name: str,
    rewrite: Callable[[bytes], bytes],
    error: type[Exception],
) -> None:
    h = await noise_attacker(target)
    await h.secure(ATTACKER_KEY, target.peer_id, msg3=rewrite)
    await assert_rejected_at_once(h, target)
    assert logged_error(debug_log, error), name


async def test_b02_trailing_garbage_after_msg3(
    target: Target, debug_log: pytest.LogCaptureFixture
) -> None:
    """Bytes after message 3 are the first transport frames: garbage fails authentication."""
    h = await noise_attacker(target)
    await h.secure(ATTACKER_KEY, target.peer_id, msg3=lambda m: m + b"\x00\x20" + b"G" * 32)
    await assert_rejected_at_once(h, target)
    assert logged_error(debug_log, DecryptionFailed)


# --- B-03: identity and signature -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "transform"),
    [
        ("random bytes", lambda m: None),
        ("wrong prefix", lambda m: b"noise-libp2p-static-kez:" + m[len(SIGNATURE_PREFIX) :]),
        ("over the identity key", lambda m: SIGNATURE_PREFIX + ATTACKER_KEY.public_key.data),
        ("static key without prefix", lambda m: m[len(SIGNATURE_PREFIX) :]),
    ],
)
async def test_b03_invalid_identity_signature(
    target: Target,
    debug_log: pytest.LogCaptureFixture,
    name: str,
    transform: Callable[[bytes], bytes | None],
) -> None:
    h = await noise_attacker(target)
    await h.secure(BadSigner(ATTACKER_KEY, transform), target.peer_id)
    await assert_rejected_at_once(h, target)
    assert logged_error(debug_log, SecurityError), name
    assert not target.host.connections()


def _huge_rsa_key_protobuf() -> bytes:
    n = (1 << 16383) | (1 << 100) | 1  # a 16384-bit modulus (CVE-2023-39533 wants > 8192)
    der = (
        rsa.RSAPublicNumbers(65537, n)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return protobuf.field_varint(1, 0) + protobuf.field_bytes(2, der)


@pytest.mark.parametrize(
    ("name", "key_protobuf"),
    [
        ("unknown key type 7", protobuf.field_varint(1, 7) + protobuf.field_bytes(2, b"k" * 32)),
        ("Ed25519 of 31 bytes", protobuf.field_varint(1, 1) + protobuf.field_bytes(2, b"k" * 31)),
        ("RSA 16384 bits", _huge_rsa_key_protobuf()),
        (
            "RSA DER with bogus long-form length",
            protobuf.field_varint(1, 0)
            + protobuf.field_bytes(2, b"\x30\x84\xff\xff\xff\xff" + b"\x00" * 40),
        ),
        (
            "non-deterministic key protobuf",
            protobuf.field_bytes(2, b"k" * 32) + protobuf.field_varint(1, 1),
        ),
        ("empty", b""),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_b03_unusable_identity_key(
    target: Target, debug_log: pytest.LogCaptureFixture, name: str, key_protobuf: bytes
) -> None:
    h = await noise_attacker(target)
    t0 = time.process_time()
    await h.secure(ATTACKER_KEY, target.peer_id, payload=payload_with(key_protobuf))
    await assert_rejected_at_once(h, target)
    assert time.process_time() - t0 < 1.0, "a hostile key must not cost CPU"
    assert logged_error(debug_log, RemoteProtocolError), name


async def test_b03_dialed_peer_id_mismatch() -> None:
    """We dial a peer ID; a hostile listener answers with another identity: PeerIdMismatch,
    the connection and its limit reservation are released."""
    impostor = PrivateKey.from_seed(b"\x99" * 32)
    victim_expected = PrivateKey.from_seed(b"\x98" * 32).peer_id

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mss = MultistreamListener(["/noise"])
        writer.write(mss.data_to_send())
        while not mss.is_finished:
            mss.receive_data(await reader.read(4096))
            writer.write(mss.data_to_send())
        noise = NoiseHandshake(False, impostor)
        data = b""
        for ev in mss.events():
            assert isinstance(ev, ProtocolSelected)
            data += ev.trailing_data
        while True:
            noise.receive_data(data or await reader.read(4096))
            data = b""
            writer.write(noise.data_to_send())
            await reader.read(4096)  # the dialer gives up here; wait for it to hang up
            break
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Host(ATTACKER_KEY) as host:
            with pytest.raises(PeerIdMismatch):
                await host.connect(victim_expected, [f"/ip4/127.0.0.1/tcp/{port}"])
            assert host.limiter.connections == 0
            assert not host.connections()
    finally:
        server.close()
        await server.wait_closed()


# --- B-04: payload extensions ------------------------------------------------------------------


async def _yamux_over_mss(h: Hostile) -> None:
    """The muxer was not agreed in the handshake: negotiate it on the secured channel."""
    assert h.handshake is not None and h.handshake.muxer is None
    h.send(encode_message(MSS) + encode_message("/yamux/1.0.0"))
    want = encode_message(MSS) + encode_message("/yamux/1.0.0")
    got = b""
    async with asyncio.timeout(2):
        while len(got) < len(want):
            got += await h.recv()
    assert got[: len(want)] == want
    h._plain += got[len(want) :]


async def test_b04_unknown_payload_fields_are_ignored(target: Target) -> None:
    unknown = protobuf.field_bytes(99, b"future") + protobuf.field_varint(1025, 7)
    ext = NoiseExtensions(stream_muxers=("/yamux/1.0.0",))
    async with await noise_attacker(target) as h:
        await h.secure(
            ATTACKER_KEY, target.peer_id, payload=payload_with(extensions=ext, extra=unknown)
        )
        assert await h.echo(1, b"ok") == b"ok"


@pytest.mark.parametrize(
    "muxers",
    [(), (*(f"/m/{i}" for i in range(100)), "/yamux/1.0.0")],
    ids=["no list", "101 entries"],
)
async def test_b04_no_or_oversized_muxer_list_falls_back_to_multistream(
    target: Target, muxers: tuple[str, ...]
) -> None:
    """No list, or one of more than 100 entries (ignored, as go does): the muxer is then
    negotiated with multistream-select on the secured channel."""
    ext = NoiseExtensions(stream_muxers=muxers) if muxers else None
    async with await noise_attacker(target) as h:
        await h.secure(
            ATTACKER_KEY, target.peer_id, muxers=(), payload=payload_with(extensions=ext)
        )
        await _yamux_over_mss(h)
        assert await h.echo(1, b"fallback") == b"fallback"


async def test_b04_disjoint_muxer_lists_fail(
    target: Target, debug_log: pytest.LogCaptureFixture
) -> None:
    ext = NoiseExtensions(stream_muxers=("/mplex/6.7.0",))
    h = await noise_attacker(target)
    await h.secure(ATTACKER_KEY, target.peer_id, muxers=(), payload=payload_with(extensions=ext))
    await assert_rejected_at_once(h, target)
    assert logged_error(debug_log, NegotiationFailed)


async def test_b04_huge_certhashes_refused_on_the_length_prefix(
    target: Target, debug_log: pytest.LogCaptureFixture
) -> None:
    ext = NoiseExtensions(webtransport_certhashes=(b"\x12\x20" + b"h" * 32,) * 600)
    h = await noise_attacker(target)
    msg3: list[bytes] = []

    def record(m: bytes) -> bytes:
        msg3.append(m)
        return m

    await h.secure(ATTACKER_KEY, target.peer_id, payload=payload_with(extensions=ext), msg3=record)
    assert len(msg3[0]) > 16384 + 2  # over the handshake message cap
    await assert_rejected_at_once(h, target)
    assert logged_error(debug_log, RemoteProtocolError)


async def test_b04_many_small_certhashes_are_bounded(target: Target) -> None:
    """Under the message cap, 400 certhashes: kept at most 16 (unused over TCP), handshake ok."""
    ext = NoiseExtensions(
        webtransport_certhashes=(b"\x12\x04abcd",) * 400, stream_muxers=("/yamux/1.0.0",)
    )
    async with await noise_attacker(target) as h:
        await h.secure(ATTACKER_KEY, target.peer_id, payload=payload_with(extensions=ext))
        assert await h.echo(1, b"ok") == b"ok"


# --- B-05: transport frames --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "corrupt"),
    [
        ("flipped ciphertext bit", lambda f: f[:5] + bytes([f[5] ^ 0x40]) + f[6:]),
        ("shorter than the tag", lambda f: b"\x00\x05" + f[2:7]),
        ("empty frame", lambda f: b"\x00\x00"),
    ],
)
async def test_b05_corrupted_transport_frame_closes_the_connection(
    target: Target,
    debug_log: pytest.LogCaptureFixture,
    name: str,
    corrupt: Callable[[bytes], bytes],
) -> None:
    """A working connection, then one frame that fails authentication: the host aborts at once
    (never decrypts anything after it) and logs the DecryptionFailed."""
    h = await target.secured()
    assert await h.echo(1, b"before") == b"before"
    assert h.tx is not None
    h.write(corrupt(h.tx.encrypt(b"\x00" * 12)))
    h.send(b"\x00" * 12)  # a valid frame after the bad one must not be processed either
    await h.read_frames(within=1.0)  # until closed
    await h.aclose()
    await target.wait_ended()
    assert logged_error(debug_log, DecryptionFailed), name
    await target.assert_serves_honest_peer()


async def test_b05_replayed_frame_closes_the_connection(
    target: Target, debug_log: pytest.LogCaptureFixture
) -> None:
    h = await target.secured()
    assert h.tx is not None
    sealed = h.tx.encrypt(b"\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01")  # a ping
    h.write(sealed + sealed)
    await h.read_frames(within=1.0)
    await h.aclose()
    assert logged_error(debug_log, DecryptionFailed)


# --- B-08 / B-30: negotiation of the security protocol -------------------------------------


async def test_b08_pipelined_proposal_msg1_and_first_frames(target: Target) -> None:
    """A lazy dialer: `/noise` + Noise message 1 in one segment, then message 3 + the first
    yamux frames in one segment. Nothing the host read ahead is lost."""
    h = await target.attacker()
    machine = NoiseHandshake(True, ATTACKER_KEY, expected_peer=target.peer_id)
    h.write(encode_message(MSS) + encode_message("/noise") + machine.data_to_send())
    want = encode_message(MSS) + encode_message("/noise")
    buf = b""
    async with asyncio.timeout(2):
        while len(buf) < len(want):
            buf += await h.read_raw()
    assert buf.startswith(want)
    h._pending = buf[len(want) :]
    # Continue the already-started handshake through the client's own code path.
    from glueberry.proto.noise import HandshakeCompleted

    async with asyncio.timeout(2):
        while True:
            machine.receive_data(await h.read_raw())
            ev = machine.next_event()
            if isinstance(ev, HandshakeCompleted):
                break
    body = encode_message(MSS) + encode_message("/echo/1.0.0") + b"early"
    first = (
        b"\x00\x01\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00"  # WindowUpdate|SYN stream 1
        + b"\x00\x00\x00\x00\x00\x00\x00\x01"
        + len(body).to_bytes(4, "big")
        + body
        + b"\x00\x01\x00\x04\x00\x00\x00\x01\x00\x00\x00\x00"  # FIN
    )
    h.write(machine.data_to_send() + ev.transport.encrypt(first))
    h.tx = ev.transport
    frames = await h.read_frames(lambda f: f.sid == 1 and bool(f.flags & 4))
    data = b"".join(f.body for f in frames if f.sid == 1)
    assert data.endswith(b"early")
    await h.aclose()


async def test_b30_plaintext_and_secio_get_na_then_noise_works(target: Target) -> None:
    async with await target.attacker() as h:
        assert await h.select("/plaintext/2.0.0", "/secio/1.0.0", "/noise") == "/noise"
        await h.secure(ATTACKER_KEY, target.peer_id)
        assert await h.echo(1, b"secured") == b"secured"


async def test_b30_plaintext_only_is_refused(
    target: Target, debug_log: pytest.LogCaptureFixture
) -> None:
    h = await target.attacker()
    with pytest.raises(NegotiationFailed):
        await h.select("/plaintext/2.0.0", "/plaintext/1.0.0", "/secio/1.0.0")
    # the host waits for another proposal until its deadline; nothing was downgraded
    assert not target.host.connections()
    await h.aclose()
    await target.assert_serves_honest_peer()


async def test_b03_noise_with_wrong_expected_peer_is_refused_by_us(target: Target) -> None:
    """Sanity of the client: the target's identity is checked on our side too."""
    h = await noise_attacker(target)
    with pytest.raises(PeerIdMismatch):
        await h.secure(ATTACKER_KEY, PrivateKey.from_seed(b"\x01" * 32).peer_id)
    await h.aclose()
    assert PublicKey.from_protobuf(target.host.identity.public_key.to_protobuf())
