"""Per-peer / per-stream statistics recorder."""

from __future__ import annotations

from glueberry.peers.stats import OTHER_STREAM, PeerStats, StatsRecorder


def test_counters_and_snapshot() -> None:
    rec: StatsRecorder[str] = StatsRecorder()
    assert rec.peer_statistics("p") is None
    chat = rec.stream_counters("p", "chat")
    assert rec.stream_counters("p", "chat") is chat
    chat.messages_received += 3  # the hot path: plain attribute updates
    chat.bytes_received += 300
    chat.last_received_at = 5.0
    rec.record_sent("p", "chat", 2, 20, 6.0)
    rec.record_received("p", "handshake", 1, 10, 4.0)
    rec.connection_started("p", 1.0, outbound=True)
    rec.connection_established("p")
    s = rec.peer_statistics("p", now=11.0)
    assert isinstance(s, PeerStats)
    assert (s.messages_sent, s.messages_received, s.bytes_sent, s.bytes_received) == (
        2,
        4,
        20,
        310,
    )
    assert s.connected and s.is_outbound and s.connected_at == 1.0
    assert s.total_connect_time == 10.0 and s.connection_count == 1
    assert s.last_message_at == 6.0
    assert s.stream_stats["chat"].messages_sent == 2
    assert set(s.stream_stats) == {"chat", "handshake"}
    assert rec.messages_sent("p") == 2 and rec.messages_sent("q") == 0
    assert "p" in rec and len(rec) == 1


def test_connection_lifecycle() -> None:
    rec: StatsRecorder[str] = StatsRecorder()
    rec.connection_failed("p", 0.0)
    rec.connection_started("p", 1.0, outbound=False)
    rec.connection_ended("p", 4.0)
    rec.connection_started("p", 10.0, outbound=True)
    rec.connection_started("p", 12.0, outbound=True)  # new session replaces the old one
    rec.connection_ended("p", 13.0)
    rec.connection_ended("unknown", 1.0)
    rec.connection_established("unknown")
    s = rec.peer_statistics("p", now=100.0)
    assert s is not None
    assert s.total_connect_time == 3.0 + 2.0 + 1.0
    assert s.connection_count == 3 and s.failure_count == 1
    assert s.connected_at is None and not s.connected


def test_stream_names_are_bounded() -> None:
    rec: StatsRecorder[str] = StatsRecorder(max_streams_per_peer=2)
    rec.record_sent("p", "a", 1, 1, 0.0)
    rec.record_sent("p", "b", 1, 1, 0.0)
    for i in range(10):
        rec.record_sent("p", f"x{i}", 1, 1, 0.0)
    s = rec.peer_statistics("p")
    assert s is not None
    assert set(s.stream_stats) == {"a", "b", OTHER_STREAM}
    assert s.stream_stats[OTHER_STREAM].messages_sent == 10


def test_prune_and_remove() -> None:
    rec: StatsRecorder[str] = StatsRecorder()
    rec.record_sent("old", "s", 1, 1, 0.0)
    rec.record_sent("kept", "s", 1, 1, 0.0)
    rec.record_sent("recent", "s", 1, 1, 90.0)
    rec.connection_started("live", 0.0, outbound=True)
    assert rec.prune(100.0, 50.0, keep=lambda p: p == "kept") == 1
    assert set(rec.all_peer_statistics()) == {"kept", "recent", "live"}
    rec.remove("kept")
    rec.remove("kept")
    assert "kept" not in rec
