"""libp2p TLS 1.3 over byte streams: handshake, ALPN muxer selection, hostile peers (B-06)."""

from __future__ import annotations

import asyncio
import datetime
import os
import time
from collections.abc import Callable, Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from glueberry.errors import (
    ConnectionLost,
    DecryptionFailed,
    HandshakeTimeout,
    PeerIdMismatch,
    SecurityError,
)
from glueberry.net import tls
from glueberry.net.muxer import YamuxConnection
from glueberry.net.negotiate import handle_protocol, select_protocol
from glueberry.net.upgrader import Upgrader, noise_security, yamux_muxer
from glueberry.transport.base import RawConnection, SecureConnection
from glueberry.transport.memory import MemoryConnection, memory_pair
from glueberry.wire import tlscert
from glueberry.wire.identity import PrivateKey

ALICE = PrivateKey.from_seed(b"A" * 32)
BOB = PrivateKey.from_seed(b"B" * 32)
YAMUX = "/yamux/1.0.0"


async def secured(
    *,
    client_muxers: Sequence[str] = (YAMUX,),
    server_muxers: Sequence[str] = (YAMUX,),
    max_chunk: int | None = None,
) -> tuple[tls.TlsConnection, tls.TlsConnection]:
    a, b = memory_pair(max_chunk=max_chunk)
    return await asyncio.gather(
        tls.secure_outbound(a, ALICE, BOB.peer_id, client_muxers, 5),
        tls.secure_inbound(b, BOB, server_muxers, 5),
    )


async def read_exactly(conn: tls.TlsConnection, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = await conn.read()
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


@pytest.mark.parametrize("max_chunk", [None, 7])
async def test_handshake_and_data(max_chunk: int | None) -> None:
    client, server = await secured(max_chunk=max_chunk)
    # SecureConnection is not marked @runtime_checkable itself; on 3.11 it inherits the flag
    # from RawConnection, so this checks every SecureConnection member at run time.
    assert isinstance(client, SecureConnection)
    assert client.remote_peer == BOB.peer_id
    assert server.remote_peer == ALICE.peer_id
    assert client.remote_public_key == BOB.public_key
    assert server.remote_public_key == ALICE.public_key
    assert client.security_protocol == server.security_protocol == "/tls/1.0.0"
    assert client.is_initiator and not server.is_initiator
    client.write(b"hello ")
    client.write(b"over TLS")
    assert await read_exactly(server, 14) == b"hello over TLS"
    big = os.urandom(300_000)
    server.write(big)
    assert await read_exactly(client, len(big)) == big
    client.close()
    assert await server.read() == b""  # close_notify is end of stream
    server.abort()


@pytest.mark.parametrize(
    ("client_muxers", "server_muxers", "early"),
    [
        ((YAMUX,), (YAMUX,), YAMUX),
        (("/mplex/6.7.0", YAMUX), (YAMUX, "/mplex/6.7.0"), "/mplex/6.7.0"),  # client's choice
        ((), (YAMUX,), None),  # the client offers only "libp2p": multistream decides
        (("/other/1.0.0",), (YAMUX,), None),
    ],
)
async def test_early_muxer_through_alpn(
    client_muxers: Sequence[str], server_muxers: Sequence[str], early: str | None
) -> None:
    client, server = await secured(client_muxers=client_muxers, server_muxers=server_muxers)
    assert client.early_muxer == early
    assert server.early_muxer == early
    client.abort()
    server.abort()


async def test_wrong_peer_is_refused() -> None:
    a, b = memory_pair()
    other = PrivateKey.generate().peer_id
    results = await asyncio.gather(
        tls.secure_outbound(a, ALICE, other, (YAMUX,), 5),
        tls.secure_inbound(b, BOB, (YAMUX,), 5),
        return_exceptions=True,
    )
    assert isinstance(results[0], PeerIdMismatch)
    # The client's bad_certificate alert reaches the server, which fails too.
    assert isinstance(results[1], SecurityError | ConnectionLost)


async def test_handshake_timeout() -> None:
    a, _b = memory_pair()
    with pytest.raises(HandshakeTimeout):
        await tls.secure_outbound(a, ALICE, BOB.peer_id, (YAMUX,), 0.1)
    assert a.is_closing()


async def test_eof_during_handshake() -> None:
    a, b = memory_pair()
    task = asyncio.ensure_future(tls.secure_inbound(b, BOB, (YAMUX,), 5))
    await asyncio.sleep(0.01)
    a.close()
    with pytest.raises(ConnectionLost):
        await task


async def test_push_mode_and_early_data() -> None:
    client, server = await secured()
    client.write(b"first")
    await asyncio.sleep(0.01)

    class Rec:
        def __init__(self) -> None:
            self.data = bytearray()
            self.eof = False
            self.lost: list[BaseException | None] = []

        def data_received(self, data: bytes) -> None:
            self.data += data

        def eof_received(self) -> None:
            self.eof = True

        def connection_lost(self, exc: BaseException | None) -> None:
            self.lost.append(exc)
            gone.set()

    gone = asyncio.Event()
    rec = Rec()
    server.set_receiver(rec)
    client.write(b" second")
    client.close()
    await asyncio.wait_for(gone.wait(), 5)
    assert bytes(rec.data) == b"first second"
    assert rec.eof


async def test_corrupted_record_is_fatal() -> None:
    a, b = memory_pair()
    client, server = await asyncio.gather(
        tls.secure_outbound(a, ALICE, BOB.peer_id, (YAMUX,), 5),
        tls.secure_inbound(b, BOB, (YAMUX,), 5),
    )
    # Write a forged application-data record straight onto the raw connection.
    a.write(bytes.fromhex("1703030020") + os.urandom(32))
    with pytest.raises(DecryptionFailed):
        await server.read()
    assert server.is_closing()
    client.abort()


# --- hostile peers built directly with pyOpenSSL -------------------------------------------


def raw_tls_peer(
    *,
    server: bool,
    certs: list[tlscert.LocalCertificate] | None,
    alpn: list[bytes] | None = None,
    sni: bytes | None = None,
    max_version: int | None = None,
    configure: Callable[[SSL.Context], None] | None = None,
) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_METHOD)
    if configure is not None:
        configure(ctx)
    if max_version is not None:
        ctx.set_max_proto_version(max_version)
    if certs:
        ctx.use_certificate(certs[0].certificate)
        ctx.use_privatekey(certs[0].private_key)
        for extra in certs[1:]:
            ctx.add_extra_chain_cert(extra.certificate)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    if alpn is not None and not server:
        ctx.set_alpn_protos(alpn)
    conn = SSL.Connection(ctx, None)
    if server:
        conn.set_accept_state()
    else:
        conn.set_connect_state()
        if sni is not None:
            conn.set_tlsext_host_name(sni)
    return conn


async def drive(peer: SSL.Connection, raw: MemoryConnection, seconds: float = 2.0) -> None:
    """Run a raw pyOpenSSL peer over ``raw`` until its handshake ends or the pipe closes."""
    async with asyncio.timeout(seconds):
        while True:
            try:
                peer.do_handshake()
                done = True
            except SSL.WantReadError:
                done = False
            except SSL.Error:
                return
            try:
                out = peer.bio_read(65536)
            except SSL.WantReadError:
                out = b""
            if out:
                raw.write(out)
            if done:
                return
            data = await raw.read()
            if not data:
                return
            peer.bio_write(data)


def cert(key: PrivateKey = ALICE, **kw: object) -> tlscert.LocalCertificate:
    return tlscert.generate_certificate(key, time.time(), **kw)  # type: ignore[arg-type]


async def server_against(client: SSL.Connection) -> BaseException | tls.TlsConnection:
    a, b = memory_pair()
    res = await asyncio.gather(
        drive(client, a), tls.secure_inbound(b, BOB, (YAMUX,), 3), return_exceptions=True
    )
    return res[1]


async def test_server_requires_a_client_certificate() -> None:
    result = await server_against(raw_tls_peer(server=False, certs=None, alpn=[b"libp2p"]))
    assert isinstance(result, SecurityError)


async def test_server_refuses_two_certificates() -> None:
    chain = [cert(), cert(PrivateKey.generate())]
    result = await server_against(raw_tls_peer(server=False, certs=chain, alpn=[b"libp2p"]))
    assert isinstance(result, SecurityError)


async def test_server_refuses_expired_and_future_certificates() -> None:
    now = time.time()
    for local in (
        cert(not_before=now - 100, not_after=now - 10),
        cert(not_before=now + 100, not_after=now + 1000),
    ):
        result = await server_against(raw_tls_peer(server=False, certs=[local], alpn=[b"libp2p"]))
        assert isinstance(result, SecurityError), local


def bare_cert() -> tlscert.LocalCertificate:
    """A self-signed certificate without the libp2p extension (any ordinary TLS peer)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(5)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    return tlscert.LocalCertificate(builder.sign(key, hashes.SHA256()), key)


async def test_server_refuses_plain_self_signed_certificate() -> None:
    result = await server_against(raw_tls_peer(server=False, certs=[bare_cert()], alpn=[b"libp2p"]))
    assert isinstance(result, SecurityError)


@pytest.mark.parametrize("certs", ["bare", "two"])
async def test_client_refuses_bad_server_certificates(certs: str) -> None:
    chain = [bare_cert()] if certs == "bare" else [cert(BOB), cert(PrivateKey.generate())]

    def configure(ctx: SSL.Context) -> None:
        ctx.set_alpn_select_callback(lambda c, offered: b"libp2p")

    a, b = memory_pair()
    server = raw_tls_peer(server=True, certs=chain, configure=configure)
    results = await asyncio.gather(
        tls.secure_outbound(a, ALICE, BOB.peer_id, (YAMUX,), 3),
        drive(server, b),
        return_exceptions=True,
    )
    assert isinstance(results[0], SecurityError), results[0]


async def test_server_refuses_a_client_without_a_common_alpn() -> None:
    result = await server_against(raw_tls_peer(server=False, certs=[cert()], alpn=[b"h2"]))
    assert isinstance(result, SecurityError)


async def test_server_ignores_sni() -> None:
    client = raw_tls_peer(server=False, certs=[cert()], alpn=[b"libp2p"], sni=b"example.com")
    result = await server_against(client)
    assert isinstance(result, tls.TlsConnection)
    assert result.remote_peer == ALICE.peer_id
    assert result.early_muxer is None
    result.abort()


async def test_tls_1_2_is_refused() -> None:
    client = raw_tls_peer(
        server=False, certs=[cert()], alpn=[b"libp2p"], max_version=SSL.TLS1_2_VERSION
    )
    result = await server_against(client)
    assert isinstance(result, SecurityError)


async def test_client_accepts_ed25519_certificates_and_sends_no_sni() -> None:
    seen_sni: list[bytes | None] = []
    a, b = memory_pair()

    def configure(ctx: SSL.Context) -> None:
        ctx.set_tlsext_servername_callback(lambda c: seen_sni.append(c.get_servername()))
        ctx.set_alpn_select_callback(lambda c, offered: b"libp2p")

    server = raw_tls_peer(server=True, certs=[cert(BOB, key_type="ed25519")], configure=configure)
    results = await asyncio.gather(
        tls.secure_outbound(a, ALICE, BOB.peer_id, (YAMUX,), 3),
        drive(server, b),
        return_exceptions=True,
    )
    # An Ed25519 certificate key with the right extension is fine ...
    assert isinstance(results[0], tls.TlsConnection), results[0]
    assert results[0].remote_peer == BOB.peer_id
    assert seen_sni in ([], [None])  # libp2p clients MUST NOT send SNI
    results[0].abort()


# --- the upgrade pipeline ---------------------------------------------------------------------


async def test_upgrader_with_tls_and_yamux() -> None:
    security = {"/tls/1.0.0": tls.tls_security(), "/noise": noise_security()}
    up_a = Upgrader(ALICE, security=security, muxers={YAMUX: yamux_muxer()})
    up_b = Upgrader(BOB, security=security, muxers={YAMUX: yamux_muxer()})
    a, b = memory_pair()
    accepted: asyncio.Queue[object] = asyncio.Queue()
    ma, mb = await asyncio.gather(
        up_a.upgrade_outbound(a, expected_peer=BOB.peer_id, on_stream=lambda s: None),
        up_b.upgrade_inbound(b, on_stream=accepted.put_nowait),
    )
    assert isinstance(ma, YamuxConnection)
    assert ma.security_protocol == "/tls/1.0.0"
    assert ma.remote_peer == BOB.peer_id and mb.remote_peer == ALICE.peer_id
    stream = await ma.open_stream()
    await stream.write(b"through tls+yamux")
    await stream.close_write()
    remote = await asyncio.wait_for(accepted.get(), 5)
    assert await remote.readexactly(17) == b"through tls+yamux"  # type: ignore[attr-defined]
    await ma.close()
    await mb.close()


async def test_no_early_muxer_falls_back_to_multistream() -> None:
    """A client offering only "libp2p" (older libp2p): the muxer goes through multistream."""
    a, b = memory_pair()

    async def client(raw: RawConnection) -> str:
        secure = await tls.secure_outbound(raw, ALICE, BOB.peer_id, (), 5)
        assert secure.early_muxer is None
        proto, _ = await select_protocol(secure, [YAMUX])
        return proto

    async def server(raw: RawConnection) -> str:
        secure = await tls.secure_inbound(raw, BOB, (YAMUX,), 5)
        assert secure.early_muxer is None
        proto, _ = await handle_protocol(secure, [YAMUX])
        return proto

    assert list(await asyncio.gather(client(a), server(b))) == [YAMUX, YAMUX]
