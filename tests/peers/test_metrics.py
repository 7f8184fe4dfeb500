"""Metrics protocol, NopMetrics, the Prometheus adapter (bounded labels) and the tracer."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from glueberry.peers.metrics import Metrics, NopMetrics, PrometheusMetrics, Tracer

HOOKS = [n for n in dir(Metrics) if not n.startswith("_") and callable(getattr(Metrics, n))]


def exercise(m: Metrics) -> None:
    m.connection_opened("outbound")
    m.connection_closed("inbound")
    m.connection_attempt("success")
    m.handshake_duration(0.2)
    m.handshake_result("timeout")
    m.reconnect_attempt("failure")
    m.peers_in_state("established", 3)
    m.message_sent("chat", 100, 2)
    m.message_received("chat", 50)
    m.stream_opened("chat")
    m.stream_closed("chat")
    m.stream_reset("chat")
    m.protocol_error("glueberry")
    m.encryption_error()
    m.decryption_error()
    m.key_derivation(True)
    m.event_emitted("connected")
    m.event_dropped(4)
    m.message_dropped("buffer_full", 2)
    m.backpressure_engaged("chat")
    m.backpressure_wait("chat", 0.003)
    m.pending_messages("chat", 7)


def test_protocol_covers_go_hooks_and_more() -> None:
    go = {
        "connection_opened",
        "connection_closed",
        "connection_attempt",
        "handshake_duration",
        "handshake_result",
        "message_sent",
        "message_received",
        "stream_opened",
        "stream_closed",
        "encryption_error",
        "decryption_error",
        "key_derivation",
        "event_emitted",
        "event_dropped",
        "message_dropped",
        "backpressure_engaged",
        "backpressure_wait",
        "pending_messages",
    }
    assert go <= set(HOOKS)
    assert len(HOOKS) > len(go)


def test_nop_metrics() -> None:
    m = NopMetrics()
    assert isinstance(m, Metrics)
    exercise(m)
    assert repr(m) == "NopMetrics()"


def value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    v = reg.get_sample_value(name, labels)
    assert v is not None, (name, labels)
    return v


def test_prometheus_names_and_values() -> None:
    reg = CollectorRegistry()
    m = PrometheusMetrics(reg)
    assert isinstance(m, Metrics)
    exercise(m)
    assert value(reg, "glueberry_connections_opened_total", direction="outbound") == 1
    assert value(reg, "glueberry_messages_sent_total", stream="chat") == 2
    assert value(reg, "glueberry_bytes_sent_total", stream="chat") == 100
    assert value(reg, "glueberry_messages_received_total", stream="chat") == 1
    assert value(reg, "glueberry_key_derivations_total", cached="true") == 1
    assert value(reg, "glueberry_events_dropped_total") == 4
    assert value(reg, "glueberry_messages_dropped_total", reason="buffer_full") == 2
    assert value(reg, "glueberry_handshake_results_total", result="timeout") == 1
    assert value(reg, "glueberry_handshake_duration_seconds_count") == 1
    assert value(reg, "glueberry_pending_messages", stream="chat") == 7
    assert value(reg, "glueberry_peers", state="established") == 3
    with pytest.raises(ValueError):  # duplicate registration, as Go panics
        PrometheusMetrics(reg)


def test_prometheus_label_cardinality_is_bounded() -> None:
    reg = CollectorRegistry()
    m = PrometheusMetrics(reg, max_stream_labels=2, namespace="t")
    for i in range(50):
        m.message_sent(f"s{i}", 1)
    m.message_sent("handshake", 1)
    m.connection_opened("sideways")
    m.handshake_result("weird")
    m.protocol_error("/evil/1.0.0")
    m.event_emitted("Nope")
    streams = {
        s.labels["stream"]
        for metric in reg.collect()
        if metric.name == "t_messages_sent"
        for s in metric.samples
    }
    assert streams == {"s0", "s1", "other", "handshake"}
    assert value(reg, "t_messages_sent_total", stream="other") == 48
    assert value(reg, "t_connections_opened_total", direction="other") == 1
    assert value(reg, "t_protocol_errors_total", protocol="other") == 1


def test_prometheus_allowlist() -> None:
    m = PrometheusMetrics(CollectorRegistry(), stream_allowlist=["chat"])
    assert m.stream_label("chat") == "chat"
    assert m.stream_label("handshake") == "handshake"
    assert m.stream_label("x") == "other"


def test_tracer_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = Tracer(provider)
    assert tracer.enabled
    with tracer.connect("peerA"):
        pass
    with tracer.handshake("peerA"):
        pass
    with pytest.raises(RuntimeError), tracer.stream_setup("peerA", "chat"):
        raise RuntimeError("boom")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"glueberry.connect", "glueberry.handshake", "glueberry.stream_setup"}
    assert spans["glueberry.connect"].kind is SpanKind.CLIENT
    assert spans["glueberry.connect"].attributes == {
        "peer.id": "peerA",
        "connection.direction": "outbound",
    }
    setup = spans["glueberry.stream_setup"]
    assert setup.attributes is not None and setup.attributes["stream.name"] == "chat"
    assert setup.status.status_code is StatusCode.ERROR
    assert "enabled=True" in repr(tracer)


def test_disabled_tracer_is_a_no_op() -> None:
    tracer = Tracer(enabled=False)
    assert not tracer.enabled
    with tracer.connect("p") as span:
        assert span is None
    with tracer.handshake("p"), tracer.stream_setup("p", "s"):
        pass
