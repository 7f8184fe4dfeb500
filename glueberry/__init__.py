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

The errors, identities and addresses are imported with the package; the node layer (``Node``,
``Config``, events, statistics, metrics, the handshake helper) is imported on first use
(PEP 562), so a program that uses only the libp2p stack (``glueberry.net``) does not carry it:
about 2 MB of a process's memory.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from glueberry._version import PROTOCOL_VERSION, __version__
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
from glueberry.wire.identity import PeerId, PrivateKey
from glueberry.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from glueberry import handshake
    from glueberry.clock import Clock
    from glueberry.config import Config
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

#: Public name -> the module it lives in (imported on first access).
_LAZY: dict[str, str] = {
    "handshake": "glueberry.handshake",
    "Clock": "glueberry.clock",
    "Config": "glueberry.config",
    **dict.fromkeys(
        (
            "ConnectionEvent",
            "EventFilter",
            "EventsDropped",
            "EventSubscription",
            "IncomingMessage",
            "PeerConnectionChanged",
            "RelayLimitReached",
        ),
        "glueberry.events",
    ),
    **dict.fromkeys(
        (
            "HANDSHAKE_STREAM",
            "HealthCheck",
            "HealthStatus",
            "Node",
            "ProtocolVersion",
            "current_version",
            "generate_identity",
            "load_identity",
            "save_identity",
        ),
        "glueberry.node",
    ),
    **dict.fromkeys(
        ("AddressBookCorrupt", "AddressBookError", "PeerEntry"), "glueberry.peers.addressbook"
    ),
    "MessageQueue": "glueberry.peers.channels",
    **dict.fromkeys(
        ("Metrics", "NopMetrics", "PrometheusMetrics", "Tracer"), "glueberry.peers.metrics"
    ),
    "ConnectionState": "glueberry.peers.state",
    **dict.fromkeys(("PeerStats", "StreamStats"), "glueberry.peers.stats"),
}

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


def _publish(obj: object) -> None:
    """Show a re-exported class or function under ``glueberry`` (reprs, docs, pickles)."""
    module = getattr(obj, "__module__", None)
    if isinstance(module, str) and module.startswith("glueberry.") and callable(obj):
        try:
            obj.__module__ = "glueberry"
        except (AttributeError, TypeError):  # pragma: no cover - read-only attribute
            pass


if not TYPE_CHECKING:
    # Only at run time: type checkers see the imports above, so a misspelt name is still an
    # error for them rather than an attribute of type ``object``.

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'glueberry' has no attribute {name!r}")
        imported = importlib.import_module(module)
        value = imported if name == "handshake" else getattr(imported, name)
        _publish(value)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


for _name in __all__:
    if _name not in _LAZY:
        _publish(globals()[_name])
del _name
