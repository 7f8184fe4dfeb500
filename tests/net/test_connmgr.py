"""The connection manager's policy (glueberry.net.connmgr): every rule, with injected time."""

from __future__ import annotations

import pytest

from glueberry.errors import ConfigError
from glueberry.net.connmgr import ConnManager, ConnManagerConfig, ConnRecord

Rec = ConnRecord[str, str]


def rec(
    conn: str,
    peer: str | None = None,
    *,
    at: float = 0.0,
    inbound: bool = True,
    streams: int = 0,
) -> Rec:
    return ConnRecord(
        conn=conn,
        peer=peer if peer is not None else conn,
        opened_at=at,
        inbound=inbound,
        streams=streams,
    )


def manager(
    high: int = 4, low: int = 2, grace: float = 0.0, silence: float = 10.0
) -> ConnManager[str]:
    return ConnManager(
        ConnManagerConfig(
            high_watermark=high, low_watermark=low, grace_period=grace, silence_period=silence
        )
    )


def closed(cm: ConnManager[str], now: float, recs: list[Rec]) -> list[str]:
    return [r.conn for r in cm.select(now, recs)]


def test_config_validation_and_defaults() -> None:
    cfg = ConnManagerConfig()
    assert (cfg.low_watermark, cfg.high_watermark) == (160, 192)
    assert cfg.grace_period == 60.0 and cfg.silence_period == 10.0
    for bad in (
        {"high_watermark": 0, "low_watermark": 0},
        {"high_watermark": 4, "low_watermark": 4},
        {"high_watermark": 4, "low_watermark": -1},
        {"grace_period": -1.0},
        {"silence_period": 0.0},
    ):
        with pytest.raises(ConfigError):
            ConnManagerConfig(**bad)
    ConnManagerConfig(high_watermark=1, low_watermark=0, grace_period=0.0)


def test_trim_due_only_above_the_high_watermark() -> None:
    cm = manager(high=4, low=2)
    assert not cm.trim_due(4)
    assert cm.trim_due(5)
    off: ConnManager[str] = ConnManager(None)
    assert not off.enabled and not off.trim_due(10_000) and not off.may_trim(0.0)


def test_trims_down_to_the_low_watermark() -> None:
    cm = manager(high=4, low=2)
    recs = [rec(f"c{i}", at=float(i)) for i in range(6)]
    out = closed(cm, 100.0, recs)
    assert len(out) == 4
    assert (cm.trims, cm.trimmed) == (1, 4)
    # at or below the low watermark an explicit trim closes nothing (but is counted)
    assert closed(cm, 200.0, recs[:2]) == []
    assert (cm.trims, cm.trimmed) == (2, 4)


def test_manager_off_selects_nothing() -> None:
    off: ConnManager[str] = ConnManager(None)
    off.protect("a", "x")
    off.tag_peer("a", "t", 1)
    assert off.select(100.0, [rec(f"c{i}") for i in range(50)]) == []
    assert off.trims == 0 and off.last_trim is None and off.next_trim_at() is None
    assert off.is_protected("a") and off.value("a") == 1


def test_protected_peers_are_never_trimmed_nor_counted() -> None:
    cm = manager(high=4, low=2)
    cm.protect("p0", "app")
    cm.protect("p1", "app")
    cm.protect("p1", "other")
    recs = [rec(f"c{i}", f"p{i}") for i in range(7)]
    out = closed(cm, 10.0, recs)
    assert "c0" not in out and "c1" not in out
    # 5 closable connections, 2 of them kept: protected ones come on top of the watermark
    assert len(out) == 3
    assert cm.is_protected("p1", "other") and not cm.is_protected("p1", "nope")
    assert cm.unprotect("p1", "app") is True  # "other" remains
    assert cm.unprotect("p1", "other") is False
    assert not cm.is_protected("p1")
    assert cm.unprotect("never", "x") is False
    assert list(cm.protected_peers()) == ["p0"]


def test_grace_period_keeps_young_peers_and_uses_the_oldest_connection() -> None:
    cm = manager(high=4, low=1, grace=60.0)
    now = 1000.0
    recs = [
        rec("old1", at=now - 120),
        rec("old2", at=now - 60),  # exactly at the boundary: past its grace period
        rec("young1", at=now - 59.9),
        rec("young2", at=now - 1),
        # a peer with an old and a new connection is judged by its first connection
        rec("mixed-a", "mixed", at=now - 300),
        rec("mixed-b", "mixed", at=now - 1),
    ]
    out = closed(cm, now, recs)
    assert "young1" not in out and "young2" not in out
    # closable: old1, old2, mixed (2 conns) = 4; keep 1 -> close 3, newest peer first; the
    # last peer goes whole (both connections), so 4 are closed
    assert out == ["old2", "old1", "mixed-a", "mixed-b"]


def test_too_few_closable_connections_closes_nothing() -> None:
    """A flood of young connections does not evict the few established ones."""
    cm = manager(high=4, low=2, grace=60.0)
    now = 1000.0
    established = [rec(f"e{i}", at=0.0) for i in range(2)]
    flood = [rec(f"f{i}", at=now - 1) for i in range(50)]
    assert cm.trim_due(len(established) + len(flood))
    assert closed(cm, now, established + flood) == []
    assert cm.trims == 1 and cm.trimmed == 0
    # once the flood is past its grace period, it goes first (newest first)
    later = now + 61
    out = closed(cm, later, established + flood)
    assert len(out) == 50 and not any(c.startswith("e") for c in out)


def test_lowest_value_first_and_tag_bookkeeping() -> None:
    cm = manager(high=2, low=1)
    cm.tag_peer("a", "score", 10)
    cm.tag_peer("a", "bonus", 5)
    cm.tag_peer("b", "score", 3)
    cm.upsert_tag("c", "score", lambda v: v + 7)  # absent: starts from 0
    cm.upsert_tag("c", "score", lambda v: v + 1)
    assert (cm.value("a"), cm.value("b"), cm.value("c"), cm.value("d")) == (15, 3, 8, 0)
    assert cm.tags("a") == {"score": 10, "bonus": 5}
    recs = [rec("ca", "a"), rec("cb", "b"), rec("cc", "c"), rec("cd", "d")]
    assert closed(cm, 1.0, recs) == ["cd", "cb", "cc"]
    cm.untag_peer("a", "bonus")
    cm.untag_peer("a", "missing")
    cm.untag_peer("nobody", "x")
    assert cm.value("a") == 10
    cm.protect("a", "keep")
    cm.forget("a")  # last connection closed: tags go, protection stays
    assert cm.tags("a") == {} and cm.is_protected("a")
    cm.untag_peer("c", "score")
    assert cm.tags("c") == {}


def test_order_idle_inbound_fewer_streams_newest_then_peer_id() -> None:
    cm = manager(high=2, low=0)
    recs = [
        rec("busy-in-3", streams=3, at=1.0),
        rec("busy-in-1", streams=1, at=1.0),
        rec("busy-out-1", streams=1, inbound=False, at=1.0),
        rec("idle-out", inbound=False, at=1.0),
        rec("idle-in-old", at=1.0),
        rec("idle-in-new", at=5.0),
        rec("idle-in-new-b", at=5.0),
    ]
    assert closed(cm, 100.0, recs) == [
        "idle-in-new",
        "idle-in-new-b",
        "idle-in-old",
        "idle-out",
        "busy-in-1",
        "busy-in-3",
        "busy-out-1",
    ]


def test_whole_peers_are_closed() -> None:
    cm = manager(high=3, low=2)
    recs = [rec("a1", "a", at=5.0), rec("a2", "a", at=5.0), rec("b1", "b"), rec("c1", "c")]
    # one connection over the watermark: the newest peer goes, with both its connections
    assert closed(cm, 100.0, recs) == ["a1", "a2"]


def test_silence_period() -> None:
    cm = manager(silence=10.0)
    assert cm.may_trim(0.0) and cm.next_trim_at() is None and cm.last_trim is None
    cm.select(5.0, [])
    assert cm.last_trim == 5.0
    assert not cm.may_trim(14.9)
    assert cm.next_trim_at() == 15.0
    assert cm.may_trim(15.0)
