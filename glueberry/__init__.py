"""glueberry: encrypted peer-to-peer messaging on asyncio, wire-compatible with libp2p.

The public API, flat (architecture C9)::

    import asyncio, glueberry

    async def main() -> None:
        config = glueberry.Config(glueberry.generate_identity(), "book.json",
                                  ["/ip4/0.0.0.0/tcp/9000"])
        async with glueberry.Node(config) as node:
            async with glueberry.handshake.auto(node, streams=["messages"]):
                async for msg in node.messages():
                    print(msg.peer_id, msg.stream_name, msg.data)

    asyncio.run(main())

Everything here is re-exported from private modules; their ``__module__`` is rewritten to
``glueberry`` so reprs, docs and tracebacks show the public path (the httpx convention).
:mod:`glueberry.handshake` (the ready-made handshake) and :mod:`glueberry.testing`
(``FakeClock``) are public submodules.
"""

from __future__ import annotations

from glueberry import handshake
from glueberry._version import PROTOCOL_VERSION, __version__
from glueberry.clock import Clock
from glueberry.config import Config
from glueberry.errors import (
    Backpressure,
    ConfigError,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    DecryptionFailed,
    ErrorCode,
    GlueberryError,
    HandshakeError,
    HandshakeTimeout,
    InvalidTransition,
    LocalProtocolError,
    MessageTooLarge,
    NegotiationFailed,
    NodeStateError,
    PeerBlacklisted,
    PeerIdMismatch,
    PeerNotFound,
    ProtocolError,
    RemoteProtocolError,
    ResourceLimitExceeded,
    SecurityError,
    StreamClosed,
    StreamError,
    StreamReset,
    TransportError,
)
from glueberry.events import (
    ConnectionEvent,
    EventFilter,
    EventsDropped,
    EventSubscription,
    IncomingMessage,
    PeerConnectionChanged,
    RelayLimitReached,
)
from glueberry.node import (
    HANDSHAKE_STREAM,
    HealthCheck,
    HealthStatus,
    Node,
    ProtocolVersion,
    current_version,
    generate_identity,
    load_identity,
    save_identity,
)
from glueberry.peers.addressbook import AddressBookCorrupt, AddressBookError, PeerEntry
from glueberry.peers.channels import MessageQueue
from glueberry.peers.metrics import Metrics, NopMetrics, PrometheusMetrics, Tracer
from glueberry.peers.state import ConnectionState
from glueberry.peers.stats import PeerStats, StreamStats
from glueberry.wire.identity import PeerId, PrivateKey
from glueberry.wire.multiaddr import Multiaddr

__all__ = [
    "HANDSHAKE_STREAM",
    "PROTOCOL_VERSION",
    "AddressBookCorrupt",
    "AddressBookError",
    "Backpressure",
    "Clock",
    "Config",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionEvent",
    "ConnectionLost",
    "ConnectionState",
    "DecryptionFailed",
    "ErrorCode",
    "EventFilter",
    "EventSubscription",
    "EventsDropped",
    "GlueberryError",
    "HandshakeError",
    "HandshakeTimeout",
    "HealthCheck",
    "HealthStatus",
    "IncomingMessage",
    "InvalidTransition",
    "LocalProtocolError",
    "MessageQueue",
    "MessageTooLarge",
    "Metrics",
    "Multiaddr",
    "NegotiationFailed",
    "Node",
    "NodeStateError",
    "NopMetrics",
    "PeerBlacklisted",
    "PeerConnectionChanged",
    "PeerEntry",
    "PeerId",
    "PeerIdMismatch",
    "PeerNotFound",
    "PeerStats",
    "PrivateKey",
    "PrometheusMetrics",
    "ProtocolError",
    "ProtocolVersion",
    "RelayLimitReached",
    "RemoteProtocolError",
    "ResourceLimitExceeded",
    "SecurityError",
    "StreamClosed",
    "StreamError",
    "StreamReset",
    "StreamStats",
    "Tracer",
    "TransportError",
    "__version__",
    "current_version",
    "generate_identity",
    "handshake",
    "load_identity",
    "save_identity",
]


def _rewrite_modules() -> None:
    for name in __all__:
        obj = globals()[name]
        module = getattr(obj, "__module__", None)
        if isinstance(module, str) and module.startswith("glueberry.") and callable(obj):
            try:
                obj.__module__ = "glueberry"
            except (AttributeError, TypeError):  # pragma: no cover - read-only attribute
                pass


_rewrite_modules()
