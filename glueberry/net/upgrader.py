"""The connection upgrade pipeline: raw bytes -> secured -> multiplexed.

Spec: https://github.com/libp2p/specs/blob/master/connections/README.md (upgrading
connections) and connections/inlined-muxer-negotiation.md.

Theory of operation
-------------------
A raw transport connection (TCP, in-memory, relayed) becomes a
:class:`~glueberry.transport.base.MuxedConnection` in up to four steps (architecture C3)::

    raw --multistream-select (security)--> Noise handshake (offers /yamux/1.0.0 early)
        --[no early muxer: multistream-select (muxer) on the secured channel]--> yamux

Each step hands the bytes it read past its end to the next one (``trailing``): a dialer may
pipeline its Noise message 1 right after ``/noise\\n``, so those bytes are replayed to the
next layer through :class:`PrefixedConnection` instead of being lost (B-08).

A dialer configured with a single security protocol does exactly that: the multistream header
and proposal ride in front of the handshake's first message
(:class:`~glueberry.net.negotiate.LazyConnection`) and the listener's echo is checked on the
first read, so selecting the security protocol costs no round trip. With several candidates
the dialer proposes them one round trip at a time, as go and js do (a refused 0-RTT proposal
cannot fall back: the listener takes the handshake bytes for a second proposal and drops the
connection). go, js and rust listeners read multistream messages exactly and leave the
pipelined handshake bytes to the security layer.

The pipeline is pluggable: ``security`` maps protocol IDs to :class:`SecureUpgrade`
functions, in preference order (the dialer proposes them in that order, the listener accepts
any of them); ``muxers`` maps muxer IDs to :class:`MuxerFactory` constructors. The defaults
are ``{"/noise": ...}`` and ``{"/yamux/1.0.0": ...}``; ``/tls/1.0.0`` is added by putting it
in the mapping. ``/plaintext/2.0.0`` and ``/secio/1.0.0`` are never in it, so a peer proposing
them gets ``na`` (B-30).

Deadlines and caps (libp2p-notes §6.3, B-40): an inbound upgrade has
:attr:`Upgrader.inbound_timeout` (15 s, go's accept timeout) in total, an outbound one the
``timeout`` its caller gives (the host's dial timeout). At most
:attr:`Upgrader.max_pending_inbound` inbound upgrades run at once; a connection over the cap
is aborted at once and counted in :attr:`Upgrader.rejected_inbound`, so a flood of half-open
connections cannot starve honest peers of more than the cap.

Errors: every failure aborts the connection and raises a
:class:`~glueberry.errors.GlueberryError`. Typed errors of the lower layers
(:class:`~glueberry.errors.NegotiationFailed`, :class:`~glueberry.errors.PeerIdMismatch`,
:class:`~glueberry.errors.RemoteProtocolError`, ...) pass through unchanged; the deadline
becomes :class:`~glueberry.errors.HandshakeTimeout`, an OS error
:class:`~glueberry.errors.ConnectionLost`, each ``from`` the original.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from glueberry.errors import (
    ConnectionLost,
    GlueberryError,
    HandshakeTimeout,
    NegotiationFailed,
    ResourceLimitExceeded,
)
from glueberry.net.negotiate import (
    LazyConnection,
    bind_methods,
    handle_protocol,
    select_protocol,
)

if TYPE_CHECKING:
    from glueberry.proto.yamux import YamuxConfig
    from glueberry.transport.base import (
        ByteReceiver,
        MuxedConnection,
        RawConnection,
        SecureConnection,
        Stream,
    )
    from glueberry.wire.identity import PeerId, PrivateKey

logger = logging.getLogger(__name__)

NOISE: Final = "/noise"
YAMUX: Final = "/yamux/1.0.0"
#: go-libp2p's accept timeout for the whole inbound upgrade.
DEFAULT_INBOUND_TIMEOUT: Final = 15.0
DEFAULT_MAX_PENDING_INBOUND: Final = 64

StreamCallback = Callable[["Stream"], None]


class SecureUpgrade(Protocol):
    """Runs one security handshake (Noise, TLS) over ``raw``.

    ``muxers`` lists the muxers to offer for early negotiation, in preference order. The
    handshake must check ``expected_peer`` when given (outbound), raising
    :class:`~glueberry.errors.PeerIdMismatch`.
    """

    async def __call__(
        self,
        raw: RawConnection,
        *,
        identity: PrivateKey,
        is_initiator: bool,
        expected_peer: PeerId | None,
        muxers: Sequence[str],
    ) -> SecureConnection: ...


class MuxerFactory(Protocol):
    """Builds a muxed connection on a secured one; ``on_stream`` gets each inbound stream."""

    def __call__(
        self, secure: SecureConnection, *, is_client: bool, on_stream: StreamCallback
    ) -> MuxedConnection: ...


SecuredHook = Callable[["SecureConnection"], None]


def noise_security() -> SecureUpgrade:
    """The Noise XX security upgrade (:mod:`glueberry.net.secure`).

    One X25519 static key (and its signed payload) is made on first use and reused by every
    handshake of this upgrade with the same identity (see
    :class:`~glueberry.proto.noise.NoiseStaticKey`).
    """
    from glueberry.net.secure import secure_inbound, secure_outbound
    from glueberry.proto.noise import NoiseStaticKey

    statics: list[NoiseStaticKey] = []

    async def upgrade(
        raw: RawConnection,
        *,
        identity: PrivateKey,
        is_initiator: bool,
        expected_peer: PeerId | None,
        muxers: Sequence[str],
    ) -> SecureConnection:
        if not statics or statics[0].identity is not identity:
            statics[:] = [NoiseStaticKey(identity)]
        static = statics[0]
        if is_initiator:
            return await secure_outbound(raw, identity, expected_peer, muxers, None, static=static)
        return await secure_inbound(raw, identity, muxers, None, static=static)

    return upgrade


def yamux_muxer(config: YamuxConfig | None = None) -> MuxerFactory:
    """The yamux muxer (:mod:`glueberry.net.muxer`), with an optional yamux config."""
    from glueberry.net.muxer import YamuxConnection

    def make(
        secure: SecureConnection, *, is_client: bool, on_stream: StreamCallback
    ) -> MuxedConnection:
        return YamuxConnection(secure, is_client=is_client, on_stream=on_stream, config=config)

    return make


class PrefixedConnection:
    """A connection whose first bytes were already read by the previous layer.

    ``read()`` (pull mode) or the receiver (push mode) get ``prefix`` first, then the inner
    connection's bytes. Every other attribute is the inner connection's, so it also passes
    for a :class:`~glueberry.transport.base.SecureConnection` when it wraps one.
    """

    def __init__(self, inner: RawConnection, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix
        # The data path then calls the inner connection's methods directly.
        bind_methods(self, inner, ("write", "drain", "close", "abort", "is_closing"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<PrefixedConnection {len(self._prefix)} bytes + {self._inner!r}>"

    async def read(self) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return await self._inner.read()

    def set_receiver(self, receiver: ByteReceiver) -> None:
        prefix, self._prefix = self._prefix, b""
        if prefix:
            # Deliver before the inner connection replays anything it buffered itself.
            receiver.data_received(prefix)
        self._inner.set_receiver(receiver)


class PrefixedStream:
    """A stream whose first bytes were read by multistream-select; delegates the rest.

    What :class:`PrefixedConnection` is for connections: ``read``/``readexactly``/``async
    for`` serve ``prefix`` first. Every other attribute is the inner stream's.
    """

    def __init__(self, inner: Stream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = bytearray(prefix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def protocol(self) -> str:
        return self._inner.protocol

    @protocol.setter
    def protocol(self, value: str) -> None:
        self._inner.protocol = value

    async def read(self, max_bytes: int = -1) -> bytes:
        if self._prefix:
            n = len(self._prefix) if max_bytes < 0 else min(max_bytes, len(self._prefix))
            data = bytes(self._prefix[:n])
            del self._prefix[:n]
            return data
        return await self._inner.read(max_bytes)

    async def readexactly(self, n: int) -> bytes:
        if not self._prefix:
            return await self._inner.readexactly(n)
        take = min(n, len(self._prefix))
        head = bytes(self._prefix[:take])
        del self._prefix[:take]
        if take == n:
            return head
        try:
            rest = await self._inner.readexactly(n - take)
        except asyncio.IncompleteReadError as exc:
            raise asyncio.IncompleteReadError(head + exc.partial, n) from exc
        return head + rest

    def __aiter__(self) -> PrefixedStream:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read()
        if not data:
            raise StopAsyncIteration
        return data

    def __repr__(self) -> str:
        return f"<prefixed {len(self._prefix)} bytes + {self._inner!r}>"


def with_prefix(stream: Stream, trailing: bytes) -> Stream:
    """``stream`` with ``trailing`` (bytes read past a negotiation) served first."""
    if not trailing:
        return stream
    unread = getattr(stream, "unread", None)
    if unread is not None:
        unread(trailing)
        return stream
    return PrefixedStream(stream, trailing)


def _prefixed(conn: RawConnection, trailing: bytes) -> RawConnection:
    return cast("RawConnection", PrefixedConnection(conn, trailing)) if trailing else conn


class Upgrader:
    """Turns raw connections into muxed ones (see the module docstring).

    Args:
        identity: this host's identity key.
        security: protocol ID -> handshake, in preference order (default: Noise only).
        muxers: muxer ID -> factory, in preference order (default: yamux only).
        inbound_timeout: deadline for a whole inbound upgrade, seconds.
        max_pending_inbound: inbound upgrades allowed at once (``None``: unlimited).
    """

    def __init__(
        self,
        identity: PrivateKey,
        *,
        security: Mapping[str, SecureUpgrade] | None = None,
        muxers: Mapping[str, MuxerFactory] | None = None,
        inbound_timeout: float | None = DEFAULT_INBOUND_TIMEOUT,
        max_pending_inbound: int | None = DEFAULT_MAX_PENDING_INBOUND,
    ) -> None:
        self.identity = identity
        self.security: dict[str, SecureUpgrade] = dict(
            security if security is not None else {NOISE: noise_security()}
        )
        self.muxers: dict[str, MuxerFactory] = dict(
            muxers if muxers is not None else {YAMUX: yamux_muxer()}
        )
        if not self.security or not self.muxers:
            raise ValueError("at least one security protocol and one muxer are needed")
        self.inbound_timeout = inbound_timeout
        self.max_pending_inbound = max_pending_inbound
        self._pending_inbound = 0
        #: Inbound connections aborted because too many upgrades were running.
        self.rejected_inbound = 0
        #: Inbound upgrades that hit :attr:`inbound_timeout`.
        self.timed_out_inbound = 0
        #: Inbound upgrades that failed for any other reason.
        self.failed_inbound = 0

    @property
    def pending_inbound(self) -> int:
        """Inbound upgrades running now."""
        return self._pending_inbound

    def inbound_full(self) -> bool:
        """True when a new inbound connection would be rejected by the cap."""
        cap = self.max_pending_inbound
        return cap is not None and self._pending_inbound >= cap

    async def upgrade_outbound(
        self,
        raw: RawConnection,
        *,
        expected_peer: PeerId | None,
        on_stream: StreamCallback,
        on_secured: SecuredHook | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - raises HandshakeTimeout
        is_client: bool = True,
    ) -> MuxedConnection:
        """Upgrade a connection we dialed.

        Args:
            raw: the dialed connection, in pull mode.
            expected_peer: the peer we meant to reach (checked by the handshake), if known.
            on_stream: gets every stream the peer opens.
            on_secured: called once the peer is authenticated; raise to abort (gater, limits).
            timeout: deadline for the whole upgrade, seconds.
            is_client: the yamux client role (odd stream IDs); the dialer by default.

        Raises:
            HandshakeTimeout, NegotiationFailed, SecurityError (incl. PeerIdMismatch),
            RemoteProtocolError, ConnectionLost, or what ``on_secured`` raises.
        """
        return await self._upgrade(
            raw,
            initiator=True,
            expected_peer=expected_peer,
            on_stream=on_stream,
            on_secured=on_secured,
            timeout=timeout,
            is_client=is_client,
        )

    async def upgrade_inbound(
        self,
        raw: RawConnection,
        *,
        on_stream: StreamCallback,
        on_secured: SecuredHook | None = None,
        is_client: bool = False,
    ) -> MuxedConnection:
        """Upgrade an accepted connection, under :attr:`inbound_timeout` and the cap.

        Raises:
            ResourceLimitExceeded: too many inbound upgrades already run (``raw`` is
                aborted at once); otherwise as :meth:`upgrade_outbound`.
        """
        if self.inbound_full():
            self.rejected_inbound += 1
            raw.abort()
            raise ResourceLimitExceeded(
                f"local limit max_pending_upgrades={self.max_pending_inbound} reached",
                limit="max_pending_upgrades",
            )
        self._pending_inbound += 1
        try:
            return await self._upgrade(
                raw,
                initiator=False,
                expected_peer=None,
                on_stream=on_stream,
                on_secured=on_secured,
                timeout=self.inbound_timeout,
                is_client=is_client,
            )
        except HandshakeTimeout:
            self.timed_out_inbound += 1
            raise
        except GlueberryError:
            self.failed_inbound += 1
            raise
        finally:
            self._pending_inbound -= 1

    async def _upgrade(
        self,
        raw: RawConnection,
        *,
        initiator: bool,
        expected_peer: PeerId | None,
        on_stream: StreamCallback,
        on_secured: SecuredHook | None,
        timeout: float | None,  # noqa: ASYNC109 - raises HandshakeTimeout
        is_client: bool,
    ) -> MuxedConnection:
        secure: SecureConnection | None = None
        try:
            try:
                async with asyncio.timeout(timeout):
                    secure = await self._secure(raw, initiator, expected_peer)
                    if on_secured is not None:
                        on_secured(secure)
                    muxer_id, secure = await self._select_muxer(secure, initiator)
            except TimeoutError as exc:
                raise HandshakeTimeout(
                    f"connection upgrade timed out after {timeout} s", peer_id=expected_peer
                ) from exc
            except OSError as exc:
                raise ConnectionLost("connection lost during the upgrade") from exc
            return self.muxers[muxer_id](secure, is_client=is_client, on_stream=on_stream)
        except BaseException:
            if secure is not None:
                secure.abort()
            raw.abort()
            raise

    async def _secure(
        self, raw: RawConnection, initiator: bool, expected_peer: PeerId | None
    ) -> SecureConnection:
        protocols = list(self.security)
        if initiator and len(protocols) == 1:
            # One candidate: select it 0-RTT, the proposal riding on the handshake's first
            # message (a refusal could not fall back to anything anyway).
            proto = protocols[0]
            secured_raw: RawConnection = cast("RawConnection", LazyConnection(raw, proto))
        else:
            if initiator:
                proto, trailing = await select_protocol(raw, protocols, timeout=None)
            else:
                proto, trailing = await handle_protocol(raw, protocols, timeout=None)
            secured_raw = _prefixed(raw, trailing)
        upgrade = self.security.get(proto)
        if upgrade is None:  # the peer "accepted" something we never proposed
            raise NegotiationFailed(f"peer selected unoffered security protocol {proto!r}")
        logger.debug("security %s selected with %s", proto, raw.remote_address)
        return await upgrade(
            secured_raw,
            identity=self.identity,
            is_initiator=initiator,
            expected_peer=expected_peer,
            muxers=list(self.muxers),
        )

    async def _select_muxer(
        self, secure: SecureConnection, initiator: bool
    ) -> tuple[str, SecureConnection]:
        early = secure.early_muxer
        if early is not None:
            if early not in self.muxers:
                raise NegotiationFailed(f"handshake agreed on unsupported muxer {early!r}")
            return early, secure
        protocols = list(self.muxers)
        if initiator:
            proto, trailing = await select_protocol(secure, protocols, timeout=None)
        else:
            proto, trailing = await handle_protocol(secure, protocols, timeout=None)
        if proto not in self.muxers:
            raise NegotiationFailed(f"peer selected unoffered muxer {proto!r}")
        return proto, cast("SecureConnection", _prefixed(secure, trailing))


__all__ = [
    "DEFAULT_INBOUND_TIMEOUT",
    "DEFAULT_MAX_PENDING_INBOUND",
    "NOISE",
    "YAMUX",
    "MuxerFactory",
    "PrefixedConnection",
    "PrefixedStream",
    "SecureUpgrade",
    "StreamCallback",
    "Upgrader",
    "noise_security",
    "with_prefix",
    "yamux_muxer",
]
