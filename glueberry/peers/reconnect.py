"""Reconnection backoff: a pure policy plus a small per-peer schedule.

Reference: ``glueberry-go-v1.md`` §3.6 (Go ``reconnect.go``, ``Manager.reconnectionLoop``).

Theory of operation
-------------------
After the *n*-th failed attempt (``n`` counted from 0) the next attempt waits
``min(base · 2ⁿ, max)``, then ±``jitter`` (10 % by default, uniform, from an injected random
source so tests are deterministic), then capped at ``max`` again. The Go library applies the
cap only before the jitter (so it can exceed ``max`` by 10 %); this policy keeps every delay
within ``[0, max]``. There is no immediate first attempt: the first one also waits ``base``.
With the defaults (1 s, 300 s, 10 attempts) the waits are ≈ 1, 2, 4, … 256, 300 s.

``max_attempts=None`` means unlimited — the Go library documents "0 = unlimited" but cannot
express it (§9.2.8). :class:`ReconnectSchedule` counts attempts and answers "when is the next
one?" given ``now``; it never sleeps and never dials. The Node owns the timer and the dial and
reports the outcome (``DIAL_FAILED`` / ``DIAL_SUCCEEDED`` to the peer's state machine).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from glueberry.errors import ConfigError

__all__ = ["BackoffPolicy", "ReconnectSchedule"]

# Beyond this many doublings every delay is at the cap anyway (and 2.0**n would overflow).
_MAX_SHIFT = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffPolicy:
    """Exponential backoff with jitter and a cap. Immutable and validated."""

    base_delay: float = 1.0
    """Delay before the first attempt, doubled after each failure (seconds, > 0)."""
    max_delay: float = 300.0
    """Upper bound of any delay (seconds, ≥ ``base_delay``)."""
    max_attempts: int | None = 10
    """Attempts before giving up; ``None`` for unlimited."""
    jitter: float = 0.1
    """Relative jitter: each delay is scaled by a uniform factor in ``[1 − j, 1 + j]``."""

    def __post_init__(self) -> None:
        if not self.base_delay > 0:
            raise ConfigError(f"reconnect base delay must be > 0 seconds, got {self.base_delay}")
        if not self.max_delay >= self.base_delay:
            raise ConfigError(
                f"reconnect max delay ({self.max_delay}) must be >= base delay ({self.base_delay})"
            )
        if self.max_attempts is not None and (
            isinstance(self.max_attempts, bool) or self.max_attempts < 1
        ):
            raise ConfigError(
                f"reconnect max attempts must be >= 1 or None (unlimited), got {self.max_attempts}"
            )
        if not 0.0 <= self.jitter < 1.0:
            raise ConfigError(f"reconnect jitter must be in [0, 1), got {self.jitter}")

    def raw_delay(self, attempt: int) -> float:
        """The delay before attempt number ``attempt`` (0-based), without jitter."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        if attempt >= _MAX_SHIFT:
            return self.max_delay
        return min(self.base_delay * (2.0**attempt), self.max_delay)

    def delay(self, attempt: int, rng: Callable[[], float]) -> float:
        """The jittered, capped delay before attempt ``attempt`` (0-based).

        Args:
            rng: returns a uniform float in ``[0, 1)`` (``random.random``).
        """
        raw = self.raw_delay(attempt)
        jittered = raw + raw * self.jitter * (2.0 * rng() - 1.0)
        return min(max(jittered, 0.0), self.max_delay)

    def exhausted(self, attempts: int) -> bool:
        """Whether ``attempts`` attempts use up the budget."""
        return self.max_attempts is not None and attempts >= self.max_attempts


class ReconnectSchedule:
    """The reconnection bookkeeping of one peer.

    Call order: ``next_attempt_at(now)`` → (wait, dial) → on failure ``next_attempt_at(now)``
    again … until it returns ``None`` (exhausted) or the dial succeeds (then drop or
    :meth:`reset` the schedule).

    Args:
        policy: the backoff policy.
        rng: uniform ``[0, 1)`` source for the jitter; inject a seeded one in tests.
    """

    __slots__ = ("_rng", "attempts", "next_at", "policy")

    def __init__(self, policy: BackoffPolicy, rng: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._rng = rng
        #: Attempts scheduled so far.
        self.attempts = 0
        #: When the pending attempt is due, or ``None``.
        self.next_at: float | None = None

    @property
    def exhausted(self) -> bool:
        """True once every allowed attempt has been scheduled."""
        return self.policy.exhausted(self.attempts)

    def next_attempt_at(self, now: float) -> float | None:
        """Schedule the next attempt; return when it is due, or ``None`` when exhausted."""
        if self.exhausted:
            self.next_at = None
            return None
        self.next_at = now + self.policy.delay(self.attempts, self._rng)
        self.attempts += 1
        return self.next_at

    def reset(self) -> None:
        """Start counting again (after a successful connection)."""
        self.attempts = 0
        self.next_at = None

    def __repr__(self) -> str:
        return f"ReconnectSchedule(attempts={self.attempts}, next_at={self.next_at})"
