"""libp2p TLS 1.3 over a byte stream (``/tls/1.0.0``): handshake driver and secured connection.

Spec: https://github.com/libp2p/specs/blob/master/tls/tls.md; early muxer negotiation through
ALPN: https://github.com/libp2p/specs/blob/master/connections/inlined-muxer-negotiation.md.
Certificates are made and verified by :mod:`glueberry.wire.tlscert`.

Why pyOpenSSL and not :mod:`ssl`
--------------------------------
libp2p TLS needs three things Python's :mod:`ssl` cannot do (see docs/quic-tls.md):

1. *accept a self-signed client certificate that the server requested*: ``ssl`` has no
   verification callback; with ``CERT_OPTIONAL``/``CERT_REQUIRED`` OpenSSL verifies the
   client's chain against the CA store and aborts on the self-signed certificate, and with
   ``CERT_NONE`` the server never asks for a certificate at all (the spec says the server
   MUST require one);
2. *verify the certificate our way during the handshake* (the libp2p extension, the peer ID
   the client dialed) so that a wrong peer gets a TLS alert, not a connection that dies later;
3. *honour the client's ALPN preference on the server* (early muxer negotiation): ``ssl``
   picks by the server's order and offers no selection callback.

pyOpenSSL (a dependency of aioquic, so present with the ``quic`` extra; its own extra is
``tls``) exposes OpenSSL's verify callback, ALPN selection callback and memory BIOs, which is
all of it. OpenSSL does the record layer; nothing here parses TLS.

Theory of operation
-------------------
Each handshake gets its own ``SSL.Context`` (TLS 1.3 only, our certificate from
:func:`~glueberry.wire.tlscert.generate_certificate`, verify mode
``VERIFY_PEER | VERIFY_FAIL_IF_NO_PEER_CERT``) and an ``SSL.Connection`` on memory BIOs:
bytes read from the raw connection go in with ``bio_write``, OpenSSL's output comes out with
``bio_read`` and is written to the raw connection. The verify callback runs
:func:`~glueberry.wire.tlscert.verify_certificate` on the leaf at depth 0 (a deeper call means
a second certificate: refused), checks the dialed peer ID, and returns False on any failure,
so OpenSSL sends ``bad_certificate``. After the handshake the number of certificates the
peer sent is checked again (exactly one).

ALPN: the client offers its muxers then ``"libp2p"`` (go: ``["/yamux/1.0.0", "libp2p"]``);
the server picks the first client entry that is one of its muxers, else ``"libp2p"``, else
aborts (``no_application_protocol``). A negotiated muxer becomes
:attr:`TlsConnection.early_muxer`; ``"libp2p"`` means "negotiate the muxer with
multistream-select". The client sends no SNI.

Data path (as :class:`glueberry.net.secure.NoiseConnection`): small writes are coalesced
and sealed once per loop iteration (``loop.call_soon``); a write of at least
:data:`FLUSH_THRESHOLD` bytes is sealed at once. Reads decrypt each raw chunk in one pass;
push mode (``set_receiver``) delivers plaintext from the raw connection's callback. A TLS
error after the handshake (bad record MAC, ...) is fatal: the raw connection is aborted and
the receiver gets :class:`~glueberry.errors.DecryptionFailed`. A ``close_notify`` from the
peer is end of stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from glueberry.errors import (
    ConnectionLost,
    DecryptionFailed,
    HandshakeTimeout,
    LocalProtocolError,
    PeerIdMismatch,
    RemoteProtocolError,
    SecurityError,
)
from glueberry.wire import tlscert
from glueberry.wire.identity import PeerId, PublicKey

if TYPE_CHECKING:
    from glueberry.net.upgrader import SecureUpgrade
    from glueberry.transport.base import ByteReceiver, RawConnection
    from glueberry.wire.identity import PrivateKey

logger = logging.getLogger(__name__)

PROTOCOL_ID: Final = "/tls/1.0.0"
DEFAULT_HANDSHAKE_TIMEOUT: Final = 15.0
DEFAULT_MUXERS: Final = ("/yamux/1.0.0",)
#: Plaintext queued beyond this is sealed and written at once.
FLUSH_THRESHOLD: Final = 64 * 1024
_READ_SIZE: Final = 256 * 1024
_ALPN: Final = tlscert.ALPN_LIBP2P.encode()
_VERIFY: Final = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


class _Identity:
    """Our certificate for one identity key, made once and reused (as go does)."""

    _cache: dict[PeerId, tlscert.LocalCertificate] = {}  # noqa: RUF012 - process-wide cache

    @classmethod
    def certificate(cls, identity: PrivateKey) -> tlscert.LocalCertificate:
        local = cls._cache.get(identity.peer_id)
        if local is None:
            if len(cls._cache) > 16:
                cls._cache.clear()
            local = tlscert.generate_certificate(identity, time.time())
            cls._cache[identity.peer_id] = local
        return local


class _Verifier:
    """The per-handshake verify callback: libp2p certificate rules and the dialed peer."""

    def __init__(self, expected_peer: PeerId | None) -> None:
        self.expected_peer = expected_peer
        self.key: PublicKey | None = None
        self.peer: PeerId | None = None
        self.error: SecurityError | None = None

    def __call__(self, conn: SSL.Connection, cert: Any, errnum: int, depth: int, ok: int) -> bool:
        # OpenSSL calls this once per certificate of the chain it built, possibly more than
        # once at depth 0 (its own verdict on the self-signed leaf comes first): decide once.
        if depth != 0:
            if self.error is None:
                self.error = SecurityError("TLS peer sent more than one certificate")
            return False
        if self.key is None and self.error is None:
            try:
                der = cert.to_cryptography().public_bytes(Encoding.DER)
                key = tlscert.verify_certificate(der, time.time())
            except RemoteProtocolError as exc:
                self.error = SecurityError(f"TLS peer certificate refused: {exc}")
                return False
            peer = PeerId.from_public_key(key)
            if self.expected_peer is not None and peer != self.expected_peer:
                self.error = PeerIdMismatch(
                    f"dialed {self.expected_peer}, but {peer} answered", peer_id=peer
                )
                return False
            self.key, self.peer = key, peer
        return self.error is None


def _context(
    identity: PrivateKey, verifier: _Verifier, *, server: bool, muxers: Sequence[str]
) -> SSL.Context:
    local = _Identity.certificate(identity)
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.use_certificate(local.certificate)
    ctx.use_privatekey(local.private_key)
    ctx.set_verify(_VERIFY, verifier)
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ours = [m.encode() for m in muxers]
    if server:

        def select(_conn: SSL.Connection, offered: list[bytes]) -> Any:
            for proto in offered:  # the client's preference, as go-libp2p does
                if proto in ours:
                    return proto
            if _ALPN in offered:
                return _ALPN
            # NO_OVERLAPPING_PROTOCOLS would go on without ALPN; the spec says abort. An
            # exception here makes OpenSSL send a fatal alert; do_handshake re-raises it.
            verifier.error = SecurityError(f"no common ALPN protocol in {offered!r}")
            raise verifier.error

        ctx.set_alpn_select_callback(select)
    else:
        ctx.set_alpn_protos([*ours, _ALPN])
    return ctx


def _bio_drain(ssl: SSL.Connection) -> bytes:
    """Everything OpenSSL wants to send."""
    parts = []
    while True:
        try:
            parts.append(ssl.bio_read(_READ_SIZE))
        except SSL.WantReadError:
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


class TlsConnection:
    """A raw connection secured by libp2p TLS 1.3; implements ``SecureConnection``.

    Made by :func:`secure_outbound` / :func:`secure_inbound`.
    """

    security_protocol: str = PROTOCOL_ID

    def __init__(
        self,
        raw: RawConnection,
        ssl: SSL.Connection,
        *,
        local_peer: PeerId,
        remote_peer: PeerId,
        remote_public_key: PublicKey,
        early_muxer: str | None,
        is_initiator: bool,
    ) -> None:
        self._raw = raw
        self._ssl = ssl
        self._loop = asyncio.get_running_loop()
        self.local_address: tuple[str, int] = raw.local_address
        self.remote_address: tuple[str, int] = raw.remote_address
        self.transport_name: str = raw.transport_name
        self.local_peer = local_peer
        self.remote_peer = remote_peer
        self.remote_public_key = remote_public_key
        self.early_muxer = early_muxer
        self.is_initiator = is_initiator
        self._wbuf = bytearray()
        self._flush_scheduled = False
        self._closed = False
        self._eof = False
        self._failed: SecurityError | None = None
        self._receiver: ByteReceiver | None = None
        self._lost_reported = False
        self._reading = False
        # Application data that came with the last handshake flight is already in OpenSSL.
        self._rbuf = self._decrypt(b"")

    def __repr__(self) -> str:
        return f"<TlsConnection {self.remote_peer} at {self.remote_address}>"

    # --- writing ---------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue plaintext; sealed and written this loop iteration (at once when large).

        Raises:
            ConnectionLost: the connection is closed or failed.
        """
        if self._closed or self._failed is not None:
            raise ConnectionLost("write on a closed TLS connection")
        self._wbuf += data
        if len(self._wbuf) >= FLUSH_THRESHOLD:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        buf = self._wbuf
        if not buf or self._failed is not None or self._raw.is_closing():
            buf.clear()
            return
        try:
            with memoryview(buf) as view:
                pos = 0
                while pos < len(view):
                    pos += self._ssl.send(view[pos:])
            out = _bio_drain(self._ssl)
        except SSL.Error as exc:
            buf.clear()
            self._fail(DecryptionFailed(f"TLS encryption failed: {exc}"))
            return
        buf.clear()
        try:
            self._raw.write(out)
        except ConnectionLost:
            logger.debug("TLS connection to %s lost before a flush", self.remote_peer)

    async def drain(self) -> None:
        """Wait for the raw connection's flow control.

        Raises:
            ConnectionLost: the connection failed or was lost.
        """
        if self._failed is not None:
            raise ConnectionLost("TLS connection failed") from self._failed
        await self._raw.drain()

    # --- reading ---------------------------------------------------------------------------
    def _decrypt(self, data: bytes) -> bytes:
        """Feed ciphertext; return the plaintext it completes (may be empty)."""
        ssl = self._ssl
        if data:
            ssl.bio_write(data)
        parts = []
        while True:
            try:
                parts.append(ssl.recv(_READ_SIZE))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # close_notify
                self._eof = True
                break
            except SSL.Error as exc:
                raise DecryptionFailed(
                    f"TLS record from {self.remote_peer} rejected: {exc}"
                ) from exc
        # OpenSSL may answer by itself (KeyUpdate): send that out.
        out = _bio_drain(ssl)
        if out and not self._raw.is_closing():
            self._raw.write(out)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read(self) -> bytes:
        """Pull mode: the plaintext of the next chunk(s), or ``b""`` at end of stream.

        Raises:
            DecryptionFailed: a record failed authentication (the connection is aborted).
            LocalProtocolError: in push mode, or concurrently with another read.
        """
        if self._receiver is not None:
            raise LocalProtocolError("read() in push mode", protocol=PROTOCOL_ID)
        if self._reading:
            raise LocalProtocolError("concurrent read()", protocol=PROTOCOL_ID)
        self._reading = True
        try:
            while True:
                if self._failed is not None:
                    raise self._failed
                if self._rbuf:
                    data, self._rbuf = self._rbuf, b""
                    return data
                if self._eof:
                    return b""
                chunk = await self._raw.read()
                if not chunk:
                    return b""
                try:
                    self._rbuf = self._decrypt(chunk)
                except DecryptionFailed as exc:
                    self._fail(exc)
                    raise
        finally:
            self._reading = False

    def set_receiver(self, receiver: ByteReceiver) -> None:
        """Switch to push mode; plaintext already decrypted is delivered first.

        Raises:
            LocalProtocolError: a receiver is already set, or a ``read()`` is pending.
        """
        if self._receiver is not None:
            raise LocalProtocolError("receiver already set", protocol=PROTOCOL_ID)
        if self._reading:
            raise LocalProtocolError("set_receiver() while a read() is pending")
        self._receiver = receiver
        if self._rbuf:
            data, self._rbuf = self._rbuf, b""
            receiver.data_received(data)
        if self._failed is not None:
            self._report_lost(self._failed)
            return
        if self._eof:
            receiver.eof_received()
        self._raw.set_receiver(_RawSide(self, receiver))

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    # --- closing ---------------------------------------------------------------------------
    def close(self) -> None:
        """Flush queued plaintext, send close_notify, close the raw connection (idempotent)."""
        if self._closed:
            return
        if self._failed is None and not self._raw.is_closing():
            if self._wbuf:
                self._flush()
            try:
                self._ssl.shutdown()
                out = _bio_drain(self._ssl)
                if out:
                    self._raw.write(out)
            except (SSL.Error, ConnectionLost):
                pass
        self._closed = True
        self._raw.close()

    def abort(self) -> None:
        """Drop queued plaintext and abort the raw connection at once (idempotent)."""
        self._closed = True
        self._wbuf.clear()
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._closed or self._failed is not None or self._raw.is_closing()

    async def wait_closed(self) -> None:
        await self._raw.wait_closed()

    # --- failure ---------------------------------------------------------------------------
    def _fail(self, exc: SecurityError) -> None:
        if self._failed is not None:
            return
        self._failed = exc
        self._wbuf.clear()
        logger.warning("TLS connection to %s failed (%s): aborting", self.remote_peer, exc)
        self._raw.abort()
        if self._receiver is not None:
            self._report_lost(exc)

    def _report_lost(self, exc: BaseException | None) -> None:
        receiver = self._receiver
        if self._lost_reported or receiver is None:
            return
        self._lost_reported = True
        receiver.connection_lost(self._failed if self._failed is not None else exc)


class _RawSide:
    """The raw connection's receiver: decrypts each chunk and forwards the plaintext."""

    __slots__ = ("_conn", "_receiver")

    def __init__(self, conn: TlsConnection, receiver: ByteReceiver) -> None:
        self._conn = conn
        self._receiver = receiver

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn._failed is not None or conn._eof:
            return
        try:
            plaintext = conn._decrypt(data)
        except DecryptionFailed as exc:
            conn._fail(exc)
            return
        if plaintext:
            self._receiver.data_received(plaintext)
        if conn._eof:
            self._receiver.eof_received()

    def eof_received(self) -> None:
        conn = self._conn
        if conn._failed is None and not conn._eof:
            conn._eof = True
            self._receiver.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._conn._report_lost(exc)


# --- handshake -------------------------------------------------------------------------------


async def _handshake(raw: RawConnection, ssl: SSL.Connection, verifier: _Verifier) -> None:
    while True:
        try:
            ssl.do_handshake()
            done = True
        except SSL.WantReadError:
            done = False
        except (SSL.Error, SecurityError) as exc:
            out = _bio_drain(ssl)  # the alert, if OpenSSL wrote one
            if out:
                raw.write(out)
            if verifier.error is not None:
                raise verifier.error from exc
            raise SecurityError(f"TLS handshake failed: {exc}") from exc
        out = _bio_drain(ssl)
        if out:
            raw.write(out)
        if done:
            return
        data = await raw.read()
        if not data:
            raise ConnectionLost("connection closed during the TLS handshake")
        ssl.bio_write(data)


def _finish(
    raw: RawConnection,
    ssl: SSL.Connection,
    verifier: _Verifier,
    identity: PrivateKey,
    *,
    initiator: bool,
    muxers: Sequence[str],
) -> TlsConnection:
    if verifier.error is not None:
        raise verifier.error
    if verifier.key is None or verifier.peer is None:
        raise SecurityError("TLS peer presented no certificate")
    chain = ssl.get_peer_cert_chain() or []
    # OpenSSL lists the leaf in the peer chain on the client side only.
    if len(chain) != (1 if initiator else 0):
        raise SecurityError("TLS peer sent more than one certificate")
    if ssl.get_protocol_version_name() != "TLSv1.3":
        raise SecurityError("TLS peer negotiated a version below 1.3")
    alpn = ssl.get_alpn_proto_negotiated().decode("ascii", "replace")
    if alpn and alpn != tlscert.ALPN_LIBP2P and alpn not in muxers:
        raise SecurityError(f"TLS server selected an ALPN protocol we did not offer: {alpn!r}")
    early = alpn if alpn in muxers else None
    return TlsConnection(
        raw,
        ssl,
        local_peer=identity.peer_id,
        remote_peer=verifier.peer,
        remote_public_key=verifier.key,
        early_muxer=early,
        is_initiator=initiator,
    )


async def _secure(
    raw: RawConnection,
    identity: PrivateKey,
    *,
    initiator: bool,
    expected_peer: PeerId | None,
    muxers: Sequence[str],
    timeout: float | None,  # noqa: ASYNC109 - per-step deadline
) -> TlsConnection:
    verifier = _Verifier(expected_peer)
    ssl = SSL.Connection(_context(identity, verifier, server=not initiator, muxers=muxers), None)
    if initiator:
        ssl.set_connect_state()
    else:
        ssl.set_accept_state()
    try:
        try:
            async with asyncio.timeout(timeout):
                await _handshake(raw, ssl, verifier)
        except TimeoutError as exc:
            raise HandshakeTimeout(f"TLS handshake timed out after {timeout} s") from exc
        conn = _finish(raw, ssl, verifier, identity, initiator=initiator, muxers=muxers)
    except BaseException as exc:
        logger.debug("TLS handshake with %s failed: %r", raw.remote_address, exc)
        raw.abort()
        raise
    logger.debug(
        "TLS handshake with %s at %s done (early muxer %s)",
        conn.remote_peer,
        conn.remote_address,
        conn.early_muxer,
    )
    return conn


async def secure_outbound(
    raw: RawConnection,
    identity: PrivateKey,
    expected_peer: PeerId | None,
    muxers: Sequence[str] = DEFAULT_MUXERS,
    timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,  # noqa: ASYNC109 - per-step deadline
) -> TlsConnection:
    """Run the libp2p TLS handshake as client (dialer) and return the secured connection.

    Same shape as :func:`glueberry.net.secure.secure_outbound` (Noise).

    Args:
        raw: a raw connection in pull mode, right after ``/tls/1.0.0`` was agreed.
        identity: our identity key (it signs our certificate).
        expected_peer: the dialed peer; another authenticated peer raises
            :class:`~glueberry.errors.PeerIdMismatch` (and OpenSSL sends bad_certificate).
        muxers: muxers offered through ALPN, before ``"libp2p"``.
        timeout: deadline for the handshake (None: none).

    Raises:
        HandshakeTimeout, ConnectionLost, SecurityError (PeerIdMismatch, a refused
        certificate, a failed handshake). On failure the raw connection is aborted.
    """
    return await _secure(
        raw,
        identity,
        initiator=True,
        expected_peer=expected_peer,
        muxers=muxers,
        timeout=timeout,
    )


async def secure_inbound(
    raw: RawConnection,
    identity: PrivateKey,
    muxers: Sequence[str] = DEFAULT_MUXERS,
    timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,  # noqa: ASYNC109 - per-step deadline
    *,
    expected_peer: PeerId | None = None,
) -> TlsConnection:
    """Run the libp2p TLS handshake as server (listener); see :func:`secure_outbound`.

    The client's certificate is required and verified; its first ALPN entry that is one of
    ``muxers`` is selected (else ``"libp2p"``; a client offering neither is refused).
    """
    return await _secure(
        raw,
        identity,
        initiator=False,
        expected_peer=expected_peer,
        muxers=muxers,
        timeout=timeout,
    )


def tls_security() -> SecureUpgrade:
    """The ``/tls/1.0.0`` security upgrade for :class:`glueberry.net.upgrader.Upgrader`.

    Use ``security={"/tls/1.0.0": tls_security(), "/noise": noise_security()}`` (go-libp2p's
    order) in the upgrader or ``HostConfig``.
    """

    async def upgrade(
        raw: RawConnection,
        *,
        identity: PrivateKey,
        is_initiator: bool,
        expected_peer: PeerId | None,
        muxers: Sequence[str],
    ) -> TlsConnection:
        if is_initiator:
            return await secure_outbound(raw, identity, expected_peer, muxers, None)
        return await secure_inbound(raw, identity, muxers, None)

    return upgrade


__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MUXERS",
    "PROTOCOL_ID",
    "TlsConnection",
    "secure_inbound",
    "secure_outbound",
    "tls_security",
]
