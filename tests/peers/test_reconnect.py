"""Reconnection backoff policy and schedule, with a fixed random source."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glueberry.errors import ConfigError
from glueberry.peers.reconnect import BackoffPolicy, ReconnectSchedule


def test_go_default_sequence_without_jitter() -> None:
    p = BackoffPolicy()
    assert [p.raw_delay(i) for i in range(12)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        300,
        300,
        300,
    ]
    assert p.delay(3, lambda: 0.5) == 8.0


def test_jitter_bounds() -> None:
    p = BackoffPolicy(base_delay=10.0, max_delay=1000.0)
    assert p.delay(0, lambda: 0.0) == pytest.approx(9.0)
    assert p.delay(0, lambda: 0.999999) == pytest.approx(11.0, rel=1e-5)
    # At the cap the jitter can only shorten the wait.
    assert p.delay(20, lambda: 0.999999) == 1000.0
    assert p.delay(20, lambda: 0.0) == pytest.approx(900.0)


@given(st.integers(0, 10_000), st.floats(0.0, 1.0, exclude_max=True))
def test_delay_always_within_cap(attempt: int, u: float) -> None:
    p = BackoffPolicy(base_delay=0.5, max_delay=60.0, jitter=0.2)
    d = p.delay(attempt, lambda: u)
    assert 0.0 <= d <= 60.0
    assert d >= 0.8 * p.raw_delay(attempt) - 1e-9


def test_schedule_counts_and_exhausts() -> None:
    rng = random.Random(42)
    s = ReconnectSchedule(BackoffPolicy(max_attempts=3), rng.random)
    times = [s.next_attempt_at(100.0) for _ in range(3)]
    assert s.exhausted and s.attempts == 3
    assert all(t is not None for t in times)
    expected_rng = random.Random(42)
    assert times == [100.0 + BackoffPolicy().delay(i, expected_rng.random) for i in range(3)]
    assert s.next_attempt_at(200.0) is None and s.next_at is None
    s.reset()
    assert not s.exhausted and s.attempts == 0
    assert s.next_attempt_at(0.0) is not None
    assert "attempts=1" in repr(s)


def test_unlimited_attempts() -> None:
    s = ReconnectSchedule(BackoffPolicy(max_attempts=None, jitter=0.0))
    for _ in range(1000):
        at = s.next_attempt_at(0.0)
        assert at is not None
    assert at == 300.0 and not s.exhausted


@pytest.mark.parametrize(
    "kw",
    [
        {"base_delay": 0.0},
        {"base_delay": -1.0},
        {"base_delay": 10.0, "max_delay": 5.0},
        {"max_attempts": 0},
        {"max_attempts": -1},
        {"max_attempts": True},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"base_delay": float("nan")},
    ],
)
def test_invalid_policies(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        BackoffPolicy(**kw)  # type: ignore[arg-type]


def test_negative_attempt() -> None:
    with pytest.raises(ValueError):
        BackoffPolicy().raw_delay(-1)
