"""B-06 end to end: a hostile TLS client (pyOpenSSL on memory BIOs over a raw loopback socket)
against a real Host that offers ``/tls/1.0.0``.

Every bad certificate or handshake is refused during the handshake with a typed
SecurityError that the host logs; the connection is closed at once (well before the 1 s
inbound deadline); the listener keeps serving. The certificate rules themselves are tested in
tests/wire/test_tlscert.py, the driver in tests/net/test_tls.py."""

from __future__ import annotations

import asyncio
import datetime
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from glueberry.errors import DecryptionFailed, SecurityError
from glueberry.net.tls import tls_security
from glueberry.net.upgrader import noise_security
from glueberry.wire import tlscert
from glueberry.wire.identity import PrivateKey

from .conftest import AT_ONCE, ATTACKER_KEY, Target, config, logged_error, running_target
from .hostile import Hostile

TLS = "/tls/1.0.0"


@pytest.fixture
async def tls_target() -> AsyncIterator[Target]:
    cfg = config(security={TLS: tls_security(), "/noise": noise_security()})
    async with running_target(cfg) as target:
        yield target


class _WrongSigner:
    """An identity whose signature in the certificate covers the wrong bytes."""

    def __init__(self, key: PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(b"libp2p-tls-handshake:" + os.urandom(32))


def cert(identity: object = ATTACKER_KEY, **kw: object) -> tlscert.LocalCertificate:
    return tlscert.generate_certificate(identity, time.time(), **kw)  # type: ignore[arg-type]


def bare_cert() -> tlscert.LocalCertificate:
    """An ordinary self-signed certificate, without the libp2p extension."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-libp2p")])
    now = datetime.datetime.now(datetime.UTC)
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return tlscert.LocalCertificate(built, key)


def client(
    certs: list[tlscert.LocalCertificate] | None,
    *,
    alpn: list[bytes] | None = (b"/yamux/1.0.0", b"libp2p"),  # type: ignore[assignment]
    sni: bytes | None = None,
    max_version: int | None = None,
) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_METHOD)
    if max_version is not None:
        ctx.set_max_proto_version(max_version)
    if certs:
        ctx.use_certificate(certs[0].certificate)
        ctx.use_privatekey(certs[0].private_key)
        for extra in certs[1:]:
            ctx.add_extra_chain_cert(extra.certificate)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    if alpn is not None:
        ctx.set_alpn_protos(alpn)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    if sni is not None:
        conn.set_tlsext_host_name(sni)
    return conn


async def handshake(h: Hostile, ssl: SSL.Connection) -> bool:
    """Drive ``ssl`` over the socket; True if our side completed the handshake."""
    async with asyncio.timeout(3):
        while True:
            try:
                ssl.do_handshake()
                done = True
            except SSL.WantReadError:
                done = False
            except SSL.Error:
                return False
            try:
                out = ssl.bio_read(65536)
            except SSL.WantReadError:
                out = b""
            if out:
                h.write(out)
            if done:
                return True
            data = await h.read_raw()
            if not data:
                return False
            ssl.bio_write(data)


async def attack(target: Target, ssl: SSL.Connection) -> Hostile:
    h = await target.attacker()
    assert await h.select(TLS) == TLS
    await handshake(h, ssl)
    return h


async def assert_refused(target: Target, h: Hostile, caplog: pytest.LogCaptureFixture) -> None:
    t0 = time.monotonic()
    await h.read_until_closed(within=AT_ONCE)
    assert time.monotonic() - t0 < AT_ONCE
    assert logged_error(caplog, SecurityError)
    assert not target.host.connections()
    await h.aclose()
    await target.assert_serves_honest_peer()


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("no client certificate", lambda: client(None)),
        ("two certificates", lambda: client([cert(), cert(PrivateKey.generate())])),
        ("expired", lambda: client([cert(not_before=time.time() - 99, not_after=time.time() - 9)])),
        (
            "not yet valid",
            lambda: client([cert(not_before=time.time() + 99, not_after=time.time() + 999)]),
        ),
        ("no libp2p extension", lambda: client([bare_cert()])),
        ("SignedKey over the wrong data", lambda: client([cert(_WrongSigner(ATTACKER_KEY))])),
        ("ALPN without libp2p or a muxer", lambda: client([cert()], alpn=[b"h2", b"http/1.1"])),
        ("TLS 1.2 only", lambda: client([cert()], max_version=SSL.TLS1_2_VERSION)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_b06_bad_client_handshake_is_refused(
    tls_target: Target,
    debug_log: pytest.LogCaptureFixture,
    name: str,
    make: Callable[[], SSL.Connection],
) -> None:
    h = await attack(tls_target, make())
    await assert_refused(tls_target, h, debug_log)


async def test_b06_sni_is_ignored_and_good_certificate_works(tls_target: Target) -> None:
    """SNI is reserved by the spec: present, it is ignored; the connection comes up."""
    ssl = client([cert()], sni=b"example.org")
    async with await tls_target.attacker() as h:
        assert await h.select(TLS) == TLS
        assert await handshake(h, ssl)
        assert ssl.get_alpn_proto_negotiated() == b"/yamux/1.0.0"
        assert await h.is_open_after(0.2)


async def test_b06_corrupted_record_after_the_handshake_closes(
    tls_target: Target, debug_log: pytest.LogCaptureFixture
) -> None:
    """A forged application-data record: the host aborts (never continues after a bad
    record, as with Noise, B-05) and logs a DecryptionFailed."""
    ssl = client([cert()])
    h = await tls_target.attacker()
    assert await h.select(TLS) == TLS
    assert await handshake(h, ssl)
    h.write(bytes.fromhex("1703030020") + os.urandom(32))
    await h.read_until_closed(within=1.0)
    await h.aclose()
    assert logged_error(debug_log, DecryptionFailed) or logged_error(debug_log, SecurityError)
    await tls_target.assert_serves_honest_peer()
