"""The whole exception tree of glueberry, with stable numeric codes.

Every error raised by this package derives from :class:`GlueberryError` and carries a
:class:`ErrorCode` whose integer values never change (the Go library's codes 0-16 keep their
numbers; codes from 100 on are this library's own). Layers convert the exceptions of the layer
below with ``raise ... from exc``; nothing is ever classified by its message text.

::

    GlueberryError                      .code, .peer_id, .stream, .retriable
    ├── ConfigError
    ├── NodeStateError                  (not started / already started / stopped)
    ├── TransportError
    │   ├── ConnectError                .errors
    │   │   └── ConnectTimeout
    │   └── ConnectionLost
    ├── ProtocolError                   .protocol
    │   ├── LocalProtocolError          we misused a protocol (a bug in the caller)
    │   └── RemoteProtocolError         the peer broke the protocol; .wire_code
    ├── NegotiationFailed               multistream-select "na" / no common protocol
    ├── SecurityError
    │   ├── PeerIdMismatch
    │   └── DecryptionFailed
    ├── HandshakeError
    │   └── HandshakeTimeout
    ├── StreamError                     .remote
    │   ├── StreamClosed                we closed it
    │   └── StreamReset                 the peer or the transport reset it
    ├── ResourceLimitExceeded           .limit names which limit
    ├── PeerBlacklisted                 .errors
    ├── PeerNotFound
    ├── InvalidTransition               illegal state-machine transition
    └── Backpressure
        └── MessageTooLarge

End of stream is not an error: ``async for`` simply ends.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any


class ErrorCode(enum.IntEnum):
    """Stable error codes. 0-16 match the Go library; never renumber."""

    UNKNOWN = 0
    CONNECTION_FAILED = 1
    HANDSHAKE_FAILED = 2
    HANDSHAKE_TIMEOUT = 3
    STREAM_CLOSED = 4
    ENCRYPTION_FAILED = 5
    DECRYPTION_FAILED = 6
    PEER_NOT_FOUND = 7
    PEER_BLACKLISTED = 8
    BUFFER_FULL = 9
    CONTEXT_CANCELED = 10
    INVALID_CONFIG = 11
    NODE_NOT_STARTED = 12
    NODE_ALREADY_STARTED = 13
    VERSION_MISMATCH = 14
    MESSAGE_TOO_LARGE = 15
    BACKPRESSURE = 16
    # This library's own codes.
    PROTOCOL_ERROR = 100
    NEGOTIATION_FAILED = 101
    SECURITY_ERROR = 102
    PEER_ID_MISMATCH = 103
    STREAM_RESET = 104
    RESOURCE_LIMIT = 105
    TRANSPORT_ERROR = 106
    CONNECTION_LOST = 107
    CONNECT_TIMEOUT = 108
    INVALID_TRANSITION = 109
    NODE_STOPPED = 110


class GlueberryError(Exception):
    """Root of every exception raised by glueberry."""

    code: ErrorCode = ErrorCode.UNKNOWN
    retriable: bool = False

    def __init__(
        self,
        message: str = "",
        *,
        code: ErrorCode | None = None,
        peer_id: object | None = None,
        stream: str | None = None,
        retriable: bool | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if retriable is not None:
            self.retriable = retriable
        #: The remote peer concerned, when there is one (a ``PeerId``).
        self.peer_id = peer_id
        #: The stream name concerned, when there is one.
        self.stream = stream

    @property
    def permanent(self) -> bool:
        """True for errors that retrying cannot fix (the Go library's ``IsPermanent``)."""
        return self.code in (ErrorCode.PEER_BLACKLISTED, ErrorCode.INVALID_CONFIG)


class ConfigError(GlueberryError, ValueError):
    code = ErrorCode.INVALID_CONFIG


class NodeStateError(GlueberryError):
    code = ErrorCode.NODE_NOT_STARTED


class TransportError(GlueberryError):
    code = ErrorCode.TRANSPORT_ERROR


class _DialErrors(GlueberryError):
    """Carries ``errors``: the per-address errors of a failed dial, one ``(address,
    exception)`` pair per address in dial order (the address is a
    :class:`~glueberry.wire.multiaddr.Multiaddr`). A dial over several addresses that all
    failed fills it; it is empty otherwise (a dial of a single address raises that
    address's own error)."""

    def __init__(
        self,
        message: str = "",
        *,
        errors: Iterable[tuple[object, BaseException]] = (),
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.errors: list[tuple[object, BaseException]] = list(errors)


class ConnectError(TransportError, _DialErrors):
    """A connection could not be established; ``errors``: see :class:`_DialErrors`."""

    code = ErrorCode.CONNECTION_FAILED
    retriable = True


class ConnectTimeout(ConnectError):
    code = ErrorCode.CONNECT_TIMEOUT


class ConnectionLost(TransportError):
    code = ErrorCode.CONNECTION_LOST
    retriable = True


class ProtocolError(GlueberryError):
    """A protocol was violated. ``protocol`` names it (e.g. ``"/yamux/1.0.0"``)."""

    code = ErrorCode.PROTOCOL_ERROR

    def __init__(self, message: str = "", *, protocol: str = "", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.protocol = protocol


class LocalProtocolError(ProtocolError):
    """This side misused a protocol machine (a bug in the caller, not the peer)."""


class RemoteProtocolError(ProtocolError):
    """The remote peer sent something the protocol forbids.

    ``wire_code`` carries the code to send back where the protocol has one (for example the
    yamux GoAway code 1, "protocol error").
    """

    def __init__(self, message: str = "", *, wire_code: int | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.wire_code = wire_code


class NegotiationFailed(GlueberryError):
    """No protocol in common (multistream-select answered ``na`` to every proposal)."""

    code = ErrorCode.NEGOTIATION_FAILED


class SecurityError(GlueberryError):
    code = ErrorCode.SECURITY_ERROR


class PeerIdMismatch(SecurityError):
    code = ErrorCode.PEER_ID_MISMATCH


class DecryptionFailed(SecurityError):
    code = ErrorCode.DECRYPTION_FAILED


class HandshakeError(GlueberryError):
    code = ErrorCode.HANDSHAKE_FAILED


class HandshakeTimeout(HandshakeError):
    code = ErrorCode.HANDSHAKE_TIMEOUT
    retriable = True


class StreamError(GlueberryError):
    code = ErrorCode.STREAM_CLOSED

    def __init__(self, message: str = "", *, remote: bool = False, **kw: Any) -> None:
        super().__init__(message, **kw)
        #: True when the other side (or the transport) caused it.
        self.remote = remote


class StreamClosed(StreamError):
    code = ErrorCode.STREAM_CLOSED


class StreamReset(StreamError):
    code = ErrorCode.STREAM_RESET


class ResourceLimitExceeded(GlueberryError):
    """A configured limit was hit. ``limit`` names it; ``remote`` tells whose limit it was."""

    code = ErrorCode.RESOURCE_LIMIT

    def __init__(
        self, message: str = "", *, limit: str = "", remote: bool = False, **kw: Any
    ) -> None:
        super().__init__(message, **kw)
        self.limit = limit
        self.remote = remote


class PeerBlacklisted(_DialErrors):
    """The connection gater refused the peer or its address; ``errors`` (as for
    :class:`ConnectError`) is filled when every address of a dial was refused."""

    code = ErrorCode.PEER_BLACKLISTED


class PeerNotFound(GlueberryError, LookupError):
    code = ErrorCode.PEER_NOT_FOUND


class InvalidTransition(GlueberryError):
    code = ErrorCode.INVALID_TRANSITION


class Backpressure(GlueberryError):
    code = ErrorCode.BACKPRESSURE
    retriable = True


class MessageTooLarge(Backpressure):
    code = ErrorCode.MESSAGE_TOO_LARGE
    retriable = False


__all__ = [
    "Backpressure",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "DecryptionFailed",
    "ErrorCode",
    "GlueberryError",
    "HandshakeError",
    "HandshakeTimeout",
    "InvalidTransition",
    "LocalProtocolError",
    "MessageTooLarge",
    "NegotiationFailed",
    "NodeStateError",
    "PeerBlacklisted",
    "PeerIdMismatch",
    "PeerNotFound",
    "ProtocolError",
    "RemoteProtocolError",
    "ResourceLimitExceeded",
    "SecurityError",
    "StreamClosed",
    "StreamError",
    "StreamReset",
    "TransportError",
]
