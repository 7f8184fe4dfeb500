"""Metrics hooks (a Protocol), a no-op default, a Prometheus adapter and a tracing helper.

Reference: ``glueberry-go-v1.md`` §4.13 (the Go ``Metrics`` interface, 18 hooks), §6.3 (its
Prometheus adapter and metric names), §6.4 (OpenTelemetry span names) and §9.1 (unbounded
label cardinality, adapters that could not be imported).

Theory of operation
-------------------
The Node reports what happens through a :class:`Metrics` object given in the config. The
hooks are Go's eighteen in snake_case, with counts added where the Node works in batches
(``message_sent(stream, nbytes, count)``: one call per batch, not per message), plus the
hooks Go lacks: stream resets, protocol errors, reconnection attempts, decryption failures
by policy, and a gauge of peers per state. Every hook must be cheap and must not raise.

:class:`PrometheusMetrics` maps them to ``glueberry_*`` series with the Go adapter's names.
Label values are bounded: stream names come from an allow-list (or the first
``max_stream_labels`` names seen) and everything else is reported as ``"other"``; the other
labels (direction, result, state, reason) are closed sets, also folded into ``"other"``.
``prometheus-client`` is imported only when the adapter is built (``pip install
glueberry[prometheus]``).

:class:`Tracer` opens OpenTelemetry spans for the three slow, rare operations — connect,
handshake, stream setup — and nothing on the per-message path. Without
``opentelemetry-api`` installed (``glueberry[otel]``) it does nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Final, Protocol, runtime_checkable

__all__ = [
    "DIRECTIONS",
    "RESULTS",
    "Metrics",
    "NopMetrics",
    "PrometheusMetrics",
    "Tracer",
]

#: Values of the ``direction`` label.
DIRECTIONS: Final = frozenset({"inbound", "outbound"})
#: Values of the ``result`` label (connection attempts, handshakes, reconnects).
RESULTS: Final = frozenset({"success", "failure", "timeout", "cancelled", "rejected"})
#: Values of the ``reason`` label of dropped messages.
DROP_REASONS: Final = frozenset({"buffer_full", "too_large", "decryption_failed", "closed"})
_STATES: Final = frozenset(
    {"disconnected", "connecting", "connected", "established", "reconnecting", "cooldown"}
)
OTHER: Final = "other"


@runtime_checkable
class Metrics(Protocol):
    """What the Node reports. Implementations must be cheap and must never raise."""

    # connections and handshakes
    def connection_opened(self, direction: str) -> None: ...
    def connection_closed(self, direction: str) -> None: ...
    def connection_attempt(self, result: str) -> None: ...
    def handshake_duration(self, seconds: float) -> None: ...
    def handshake_result(self, result: str) -> None: ...
    def reconnect_attempt(self, result: str) -> None: ...
    def peers_in_state(self, state: str, count: int) -> None: ...

    # streams and messages (batched: one call may cover many messages)
    def message_sent(self, stream: str, nbytes: int, count: int = 1) -> None: ...
    def message_received(self, stream: str, nbytes: int, count: int = 1) -> None: ...
    def stream_opened(self, stream: str) -> None: ...
    def stream_closed(self, stream: str) -> None: ...
    def stream_reset(self, stream: str) -> None: ...
    def protocol_error(self, protocol: str) -> None: ...

    # crypto
    def encryption_error(self) -> None: ...
    def decryption_error(self) -> None: ...
    def key_derivation(self, cached: bool) -> None: ...

    # events and drops
    def event_emitted(self, state: str) -> None: ...
    def event_dropped(self, count: int = 1) -> None: ...
    def message_dropped(self, reason: str = "buffer_full", count: int = 1) -> None: ...

    # flow control
    def backpressure_engaged(self, stream: str) -> None: ...
    def backpressure_wait(self, stream: str, seconds: float) -> None: ...
    def pending_messages(self, stream: str, count: int) -> None: ...


class NopMetrics:
    """Discards everything (the default)."""

    __slots__ = ()

    def connection_opened(self, direction: str) -> None:
        pass

    def connection_closed(self, direction: str) -> None:
        pass

    def connection_attempt(self, result: str) -> None:
        pass

    def handshake_duration(self, seconds: float) -> None:
        pass

    def handshake_result(self, result: str) -> None:
        pass

    def reconnect_attempt(self, result: str) -> None:
        pass

    def peers_in_state(self, state: str, count: int) -> None:
        pass

    def message_sent(self, stream: str, nbytes: int, count: int = 1) -> None:
        pass

    def message_received(self, stream: str, nbytes: int, count: int = 1) -> None:
        pass

    def stream_opened(self, stream: str) -> None:
        pass

    def stream_closed(self, stream: str) -> None:
        pass

    def stream_reset(self, stream: str) -> None:
        pass

    def protocol_error(self, protocol: str) -> None:
        pass

    def encryption_error(self) -> None:
        pass

    def decryption_error(self) -> None:
        pass

    def key_derivation(self, cached: bool) -> None:
        pass

    def event_emitted(self, state: str) -> None:
        pass

    def event_dropped(self, count: int = 1) -> None:
        pass

    def message_dropped(self, reason: str = "buffer_full", count: int = 1) -> None:
        pass

    def backpressure_engaged(self, stream: str) -> None:
        pass

    def backpressure_wait(self, stream: str, seconds: float) -> None:
        pass

    def pending_messages(self, stream: str, count: int) -> None:
        pass

    def __repr__(self) -> str:
        return "NopMetrics()"


def _closed(value: str, allowed: frozenset[str]) -> str:
    v = value.lower()
    return v if v in allowed else OTHER


class PrometheusMetrics:
    """:class:`Metrics` as Prometheus series (Go adapter names, bounded labels).

    Args:
        registry: a ``prometheus_client.CollectorRegistry``; default: the global
            ``REGISTRY`` (registering twice in one registry raises, as Go panics).
        namespace: metric name prefix.
        stream_allowlist: stream names that get their own label value. ``None``: the first
            ``max_stream_labels`` names seen (``"handshake"`` is always allowed).
        max_stream_labels: bound used when there is no allow-list.
        protocol_allowlist: protocol names for ``protocol_errors_total``; others are
            ``"other"``.

    Raises:
        ImportError: ``prometheus-client`` is not installed.
    """

    def __init__(
        self,
        registry: Any = None,
        *,
        namespace: str = "glueberry",
        stream_allowlist: Iterable[str] | None = None,
        max_stream_labels: int = 32,
        protocol_allowlist: Iterable[str] = (
            "glueberry",
            "/yamux/1.0.0",
            "/noise",
            "/multistream/1.0.0",
        ),
    ) -> None:
        import prometheus_client as pc

        if registry is None:
            registry = pc.REGISTRY
        self._fixed_streams = None if stream_allowlist is None else frozenset(stream_allowlist)
        self._seen_streams: set[str] = {"handshake"}
        self._max_streams = max_stream_labels
        self._protocols = frozenset(protocol_allowlist)
        self._lock = threading.Lock()
        ns = namespace
        kw: dict[str, Any] = {"namespace": ns, "registry": registry}

        def counter(name: str, doc: str, *labels: str) -> Any:
            return pc.Counter(name, doc, labels, **kw)

        self._conn_opened = counter("connections_opened", "Connections opened", "direction")
        self._conn_closed = counter("connections_closed", "Connections closed", "direction")
        self._conn_attempts = counter("connection_attempts", "Connection attempts", "result")
        self._hs_duration = pc.Histogram(
            "handshake_duration_seconds",
            "Application handshake duration",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            **kw,
        )
        self._hs_results = counter("handshake_results", "Handshake results", "result")
        self._reconnects = counter("reconnect_attempts", "Reconnection attempts", "result")
        self._peers = pc.Gauge("peers", "Peers per connection state", ["state"], **kw)
        self._msg_sent = counter("messages_sent", "Messages sent", "stream")
        self._msg_recv = counter("messages_received", "Messages received", "stream")
        self._bytes_sent = counter("bytes_sent", "Plaintext bytes sent", "stream")
        self._bytes_recv = counter("bytes_received", "Plaintext bytes received", "stream")
        self._streams_opened = counter("streams_opened", "Streams opened", "stream")
        self._streams_closed = counter("streams_closed", "Streams closed", "stream")
        self._streams_reset = counter("streams_reset", "Streams reset", "stream")
        self._protocol_errors = counter("protocol_errors", "Protocol violations", "protocol")
        self._enc_errors = counter("encryption_errors", "Encryption failures")
        self._dec_errors = counter("decryption_errors", "Decryption failures")
        self._key_derivations = counter("key_derivations", "Key derivations", "cached")
        self._events = counter("events_emitted", "Connection events emitted", "state")
        self._events_dropped = counter("events_dropped", "Events dropped by subscriptions")
        self._msgs_dropped = counter("messages_dropped", "Messages dropped", "reason")
        self._bp_engaged = counter("backpressure_engaged", "Backpressure engaged", "stream")
        self._bp_wait = pc.Histogram(
            "backpressure_wait_seconds",
            "Time senders waited for backpressure",
            ["stream"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10),
            **kw,
        )
        self._pending = pc.Gauge("pending_messages", "Messages pending", ["stream"], **kw)

    def stream_label(self, stream: str) -> str:
        """The label value used for ``stream`` (the name itself, or ``"other"``)."""
        if self._fixed_streams is not None:
            return stream if stream in self._fixed_streams or stream == "handshake" else OTHER
        if stream in self._seen_streams:
            return stream
        with self._lock:
            if len(self._seen_streams) < self._max_streams + 1:
                self._seen_streams.add(stream)
                return stream
        return OTHER

    def connection_opened(self, direction: str) -> None:
        self._conn_opened.labels(_closed(direction, DIRECTIONS)).inc()

    def connection_closed(self, direction: str) -> None:
        self._conn_closed.labels(_closed(direction, DIRECTIONS)).inc()

    def connection_attempt(self, result: str) -> None:
        self._conn_attempts.labels(_closed(result, RESULTS)).inc()

    def handshake_duration(self, seconds: float) -> None:
        self._hs_duration.observe(seconds)

    def handshake_result(self, result: str) -> None:
        self._hs_results.labels(_closed(result, RESULTS)).inc()

    def reconnect_attempt(self, result: str) -> None:
        self._reconnects.labels(_closed(result, RESULTS)).inc()

    def peers_in_state(self, state: str, count: int) -> None:
        self._peers.labels(_closed(state, _STATES)).set(count)

    def message_sent(self, stream: str, nbytes: int, count: int = 1) -> None:
        label = self.stream_label(stream)
        self._msg_sent.labels(label).inc(count)
        self._bytes_sent.labels(label).inc(nbytes)

    def message_received(self, stream: str, nbytes: int, count: int = 1) -> None:
        label = self.stream_label(stream)
        self._msg_recv.labels(label).inc(count)
        self._bytes_recv.labels(label).inc(nbytes)

    def stream_opened(self, stream: str) -> None:
        self._streams_opened.labels(self.stream_label(stream)).inc()

    def stream_closed(self, stream: str) -> None:
        self._streams_closed.labels(self.stream_label(stream)).inc()

    def stream_reset(self, stream: str) -> None:
        self._streams_reset.labels(self.stream_label(stream)).inc()

    def protocol_error(self, protocol: str) -> None:
        self._protocol_errors.labels(protocol if protocol in self._protocols else OTHER).inc()

    def encryption_error(self) -> None:
        self._enc_errors.inc()

    def decryption_error(self) -> None:
        self._dec_errors.inc()

    def key_derivation(self, cached: bool) -> None:
        self._key_derivations.labels("true" if cached else "false").inc()

    def event_emitted(self, state: str) -> None:
        self._events.labels(_closed(state, _STATES)).inc()

    def event_dropped(self, count: int = 1) -> None:
        self._events_dropped.inc(count)

    def message_dropped(self, reason: str = "buffer_full", count: int = 1) -> None:
        self._msgs_dropped.labels(_closed(reason, DROP_REASONS)).inc(count)

    def backpressure_engaged(self, stream: str) -> None:
        self._bp_engaged.labels(self.stream_label(stream)).inc()

    def backpressure_wait(self, stream: str, seconds: float) -> None:
        self._bp_wait.labels(self.stream_label(stream)).observe(seconds)

    def pending_messages(self, stream: str, count: int) -> None:
        self._pending.labels(self.stream_label(stream)).set(count)


# --- tracing -------------------------------------------------------------------------


class Tracer:
    """OpenTelemetry spans for connect, handshake and stream setup (no-op without OTel).

    Span names follow the Go adapter: ``glueberry.connect`` (kind CLIENT),
    ``glueberry.handshake`` and ``glueberry.stream_setup``, with attributes ``peer.id``,
    ``stream.name`` and ``connection.direction``. An exception leaving the ``with`` block is
    recorded on the span and sets its status to error.

    Args:
        tracer_provider: an OTel ``TracerProvider``; default: the global one.
        enabled: ``False`` forces the no-op behaviour.
    """

    def __init__(self, tracer_provider: Any = None, *, enabled: bool = True) -> None:
        self._tracer: Any = None
        self._client_kind: Any = None
        if not enabled:
            return
        try:
            from opentelemetry import trace
        except ImportError:
            return
        from glueberry._version import __version__

        self._tracer = trace.get_tracer("glueberry", __version__, tracer_provider=tracer_provider)
        self._client_kind = trace.SpanKind.CLIENT

    @property
    def enabled(self) -> bool:
        """Whether spans are really recorded (OpenTelemetry is installed and enabled)."""
        return self._tracer is not None

    @contextlib.contextmanager
    def _span(self, name: str, attributes: dict[str, str], kind: Any = None) -> Iterator[Any]:
        if self._tracer is None:
            yield None
            return
        extra = {} if kind is None else {"kind": kind}
        with self._tracer.start_as_current_span(name, attributes=attributes, **extra) as span:
            yield span

    def connect(self, peer_id: object, *, direction: str = "outbound") -> Any:
        """``with tracer.connect(peer):`` around a dial."""
        return self._span(
            "glueberry.connect",
            {"peer.id": str(peer_id), "connection.direction": direction},
            self._client_kind,
        )

    def handshake(self, peer_id: object) -> Any:
        """``with tracer.handshake(peer):`` from Connected to Established."""
        return self._span("glueberry.handshake", {"peer.id": str(peer_id)})

    def stream_setup(self, peer_id: object, stream: str) -> Any:
        """``with tracer.stream_setup(peer, name):`` around opening an encrypted stream."""
        return self._span(
            "glueberry.stream_setup", {"peer.id": str(peer_id), "stream.name": stream}
        )

    def __repr__(self) -> str:
        return f"Tracer(enabled={self.enabled})"
