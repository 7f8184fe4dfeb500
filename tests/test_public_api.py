"""The flat public namespace: exactly the curated names, with public ``__module__``."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

import glueberry

EXPECTED = {
    # the node and its configuration
    "Node",
    "Config",
    "HANDSHAKE_STREAM",
    "handshake",
    # identities, addresses, versions
    "PeerId",
    "PrivateKey",
    "Multiaddr",
    "generate_identity",
    "load_identity",
    "save_identity",
    "ProtocolVersion",
    "current_version",
    "PROTOCOL_VERSION",
    "__version__",
    # events, messages, statistics, health
    "ConnectionState",
    "ConnectionEvent",
    "EventFilter",
    "EventSubscription",
    "EventsDropped",
    "IncomingMessage",
    "MessageQueue",
    "PeerEntry",
    "PeerStats",
    "StreamStats",
    "PeerConnectionChanged",
    "RelayLimitReached",
    "HealthCheck",
    "HealthStatus",
    # pluggable parts
    "Clock",
    "Metrics",
    "NopMetrics",
    "PrometheusMetrics",
    "Tracer",
    # errors
    "ErrorCode",
    "GlueberryError",
    "ConfigError",
    "NodeStateError",
    "TransportError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "NegotiationFailed",
    "SecurityError",
    "PeerIdMismatch",
    "DecryptionFailed",
    "HandshakeError",
    "HandshakeTimeout",
    "StreamError",
    "StreamClosed",
    "StreamReset",
    "ResourceLimitExceeded",
    "PeerBlacklisted",
    "PeerNotFound",
    "InvalidTransition",
    "Backpressure",
    "MessageTooLarge",
    "AddressBookError",
    "AddressBookCorrupt",
}


def test_all_is_exactly_the_public_names() -> None:
    assert set(glueberry.__all__) == EXPECTED
    assert len(glueberry.__all__) == len(EXPECTED)  # no duplicates
    assert glueberry.__all__ == sorted(glueberry.__all__, key=lambda n: (not n.isupper(), n))
    for name in glueberry.__all__:
        assert hasattr(glueberry, name), name


def test_public_objects_report_the_public_module() -> None:
    for name in glueberry.__all__:
        obj = getattr(glueberry, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == "glueberry", name


def test_error_tree_and_codes() -> None:
    for name in glueberry.__all__:
        obj = getattr(glueberry, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, glueberry.GlueberryError), name
            assert isinstance(obj.code, glueberry.ErrorCode), name
    assert glueberry.MessageTooLarge.code == 15
    established: int = glueberry.ConnectionState.ESTABLISHED  # an IntEnum: Go's int values
    assert established == 3
    assert glueberry.HANDSHAKE_STREAM == glueberry.Node.HANDSHAKE_STREAM == "handshake"


def test_handshake_submodule_surface() -> None:
    hs = glueberry.handshake
    for name in ("establish", "auto", "AutoHandshake", "HandshakeMachine"):
        assert callable(getattr(hs, name)), name
    assert hs.encode_hello() == bytes.fromhex("14800110010000")


def test_dir_lists_every_public_name() -> None:
    assert set(glueberry.__all__) <= set(dir(glueberry))


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nod'"):
        _ = glueberry.Nod  # type: ignore[attr-defined]


def test_node_layer_is_imported_on_first_use() -> None:
    """``import glueberry`` alone (what a program using only the libp2p stack does) does not
    import the node layer; the first access to a name of it does."""
    code = (
        "import json, sys, glueberry\n"
        "layer = ('glueberry.node', 'glueberry.peers.channels', 'glueberry.handshake')\n"
        "before = [m for m in layer if m in sys.modules]\n"
        "module = glueberry.Node.__module__\n"
        "print(json.dumps([before, module, [m for m in layer if m in sys.modules]]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    before, module, after = json.loads(out)
    assert before == []
    assert module == "glueberry"
    assert "glueberry.node" in after and "glueberry.peers.channels" in after
