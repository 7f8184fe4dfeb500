"""Hypothesis state machine: two YamuxSessions wired back to back.

Random opens, writes, consumes, half-closes, resets, pings and partial deliveries in both
directions. Invariants after every step: no protocol error between two correct peers, every
stream's received bytes are a prefix of what was sent (no loss, duplication or reordering),
windows stay within ``[0, u32]`` and a receive window never exceeds ``max_window``. At the end
everything is delivered and consumed, and streams that were not reset carry all their bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from glueberry.proto.yamux import (
    ConnectionTerminated,
    DataReceived,
    StreamEnded,
    StreamOpened,
    StreamReset,
    YamuxConfig,
    YamuxSession,
)
from glueberry.proto.yamux_frames import MAX_U32

SIDES = ("a", "b")
POOL = random.Random(7).randbytes(1 << 20)
OTHER = {"a": "b", "b": "a"}


@dataclass
class Model:
    sent: dict[str, bytearray] = field(default_factory=lambda: {"a": bytearray(), "b": bytearray()})
    recv: dict[str, bytearray] = field(default_factory=lambda: {"a": bytearray(), "b": bytearray()})
    unconsumed: dict[str, int] = field(default_factory=lambda: {"a": 0, "b": 0})
    fin_sent: dict[str, bool] = field(default_factory=lambda: {"a": False, "b": False})
    fin_seen: dict[str, bool] = field(default_factory=lambda: {"a": False, "b": False})
    reset: bool = False


class TwoSessions(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cfg = YamuxConfig(keepalive_interval=None, connection_window_budget=3 * 1024 * 1024)
        self.s = {
            "a": YamuxSession(True, self.cfg, now=0.0),
            "b": YamuxSession(False, self.cfg, now=0.0),
        }
        self.wire: dict[str, bytearray] = {"a": bytearray(), "b": bytearray()}  # from side
        self.model: dict[int, Model] = {}
        self.counter = 0
        self.now = 0.0

    # ---------------------------------------------------------------- helpers
    def _collect(self, side: str) -> None:
        self.wire[side] += self.s[side].data_to_send()

    def _streams(self, side: str) -> list[int]:
        return sorted(sid for sid in self.model if self.s[side].has_stream(sid))

    def _pick(self, side: str, index: int) -> int | None:
        sids = self._streams(side)
        return sids[index % len(sids)] if sids else None

    def _payload(self, n: int) -> bytes:
        self.counter += 1
        off = (self.counter * 7919) % (len(POOL) - n)
        return POOL[off : off + n]

    def _handle(self, side: str) -> None:
        for ev in self.s[side].events():
            if isinstance(ev, StreamOpened):
                self.model.setdefault(ev.stream_id, Model())
                self.s[side].accept_stream(ev.stream_id)
            elif isinstance(ev, DataReceived):
                m = self.model[ev.stream_id]
                m.recv[side] += ev.data
                m.unconsumed[side] += len(ev.data)
            elif isinstance(ev, StreamEnded):
                self.model[ev.stream_id].fin_seen[side] = True
            elif isinstance(ev, StreamReset):
                self.model[ev.stream_id].reset = True
            elif isinstance(ev, ConnectionTerminated):
                raise AssertionError(f"session {side} terminated: {ev.error!r}")
        self._collect(side)

    # ---------------------------------------------------------------- rules
    @rule(side=st.sampled_from(SIDES))
    def open_stream(self, side: str) -> None:
        if not self.s[side].can_open_stream:
            return
        sid = self.s[side].open_stream()
        self.model[sid] = Model()
        self._collect(side)

    @precondition(lambda self: bool(self.model))
    @rule(
        side=st.sampled_from(SIDES),
        index=st.integers(0, 100),
        size=st.sampled_from([0, 1, 100, 5000, 70_000, 300_000]),
    )
    def write(self, side: str, index: int, size: int) -> None:
        sid = self._pick(side, index)
        if sid is None or self.model[sid].fin_sent[side]:
            return
        data = self._payload(size)
        before = self.s[side].send_window(sid)
        n = self.s[side].send_data(sid, data)
        assert n == min(size, before)
        assert self.s[side].send_window(sid) == before - n
        self.model[sid].sent[side] += data[:n]
        self._collect(side)

    @precondition(lambda self: bool(self.model))
    @rule(side=st.sampled_from(SIDES), index=st.integers(0, 100), frac=st.floats(0, 1))
    def consume(self, side: str, index: int, frac: float) -> None:
        sid = self._pick(side, index)
        if sid is None:
            return
        m = self.model[sid]
        n = int(m.unconsumed[side] * frac)
        assert self.s[side].buffered(sid) >= m.unconsumed[side]
        self.s[side].consume(sid, n)
        m.unconsumed[side] -= n
        self._collect(side)

    @precondition(lambda self: bool(self.model))
    @rule(side=st.sampled_from(SIDES), index=st.integers(0, 100))
    def close(self, side: str, index: int) -> None:
        sid = self._pick(side, index)
        if sid is None:
            return
        self.s[side].close_stream(sid)
        self.model[sid].fin_sent[side] = True
        self._collect(side)

    @precondition(lambda self: bool(self.model))
    @rule(side=st.sampled_from(SIDES), index=st.integers(0, 100), code=st.integers(0, MAX_U32))
    def reset(self, side: str, index: int, code: int) -> None:
        sid = self._pick(side, index)
        if sid is None:
            return
        self.s[side].reset_stream(sid, code)
        self.model[sid].reset = True
        self._collect(side)

    @rule(side=st.sampled_from(SIDES))
    def ping(self, side: str) -> None:
        self.s[side].ping(self.now)
        self._collect(side)

    @precondition(lambda self: bool(self.wire["a"] or self.wire["b"]))
    @rule(side=st.sampled_from(SIDES), size=st.sampled_from([1, 5, 12, 13, 100, 4096, 1 << 30]))
    def deliver(self, side: str, size: int) -> None:
        buf = self.wire[side]
        if not buf:
            return  # (b"" would be EOF)
        chunk = bytes(buf[:size])
        del buf[:size]
        self.now += 0.001
        self.s[OTHER[side]].receive_data(chunk, self.now)
        self._handle(OTHER[side])

    @rule()
    def settle(self) -> None:
        """Deliver everything in flight both ways, then consume everything delivered."""
        for side in SIDES:
            if self.wire[side]:
                chunk = bytes(self.wire[side])
                self.wire[side].clear()
                self.s[OTHER[side]].receive_data(chunk, self.now)
                self._handle(OTHER[side])
        self._consume_all()

    def _consume_all(self) -> bool:
        moved = False
        for sid, m in self.model.items():
            for side in SIDES:
                if m.unconsumed[side] and self.s[side].has_stream(sid):
                    self.s[side].consume(sid, m.unconsumed[side])
                    self._collect(side)
                    moved = True
                m.unconsumed[side] = 0
        return moved

    # ---------------------------------------------------------------- invariants
    @invariant()
    def windows_in_range(self) -> None:
        for side in SIDES:
            s = self.s[side]
            assert not s.is_terminated
            assert 0 <= s.window_budget_used <= self.cfg.connection_window_budget
            for sid in self._streams(side):
                assert 0 <= s.send_window(sid) <= MAX_U32
                credit, size = s.receive_window(sid), s.receive_window_size(sid)
                assert credit >= 0
                assert credit + s.buffered(sid) <= size <= self.cfg.max_window

    @invariant()
    def received_is_prefix_of_sent(self) -> None:
        for m in self.model.values():
            for side in SIDES:
                got, sent = m.recv[OTHER[side]], m.sent[side]
                assert sent[: len(got)] == got

    def teardown(self) -> None:
        # Deliver and consume everything until both sides are quiet.
        for _ in range(10_000):
            moved = False
            for side in SIDES:
                if self.wire[side]:
                    chunk = bytes(self.wire[side])
                    self.wire[side].clear()
                    self.s[OTHER[side]].receive_data(chunk, self.now)
                    self._handle(OTHER[side])
                    moved = True
            moved = self._consume_all() or moved
            self.windows_in_range()
            self.received_is_prefix_of_sent()
            if not moved:
                break
        for m in self.model.values():
            for side in SIDES:
                got, sent = m.recv[OTHER[side]], m.sent[side]
                if m.reset:
                    assert sent[: len(got)] == got
                else:
                    assert got == sent
                    assert m.fin_seen[OTHER[side]] == m.fin_sent[side]


TwoSessions.TestCase.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)
test_two_sessions = TwoSessions.TestCase
