"""The peer state machine: table, apply, timers, Go bugs not copied, generated docs."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glueberry.errors import HandshakeTimeout, InvalidTransition
from glueberry.peers.state import (
    TRANSITIONS,
    ConnectionState,
    PeerStateChanged,
    PeerStateMachine,
    Trigger,
)
from glueberry.wire.identity import PrivateKey

S, T = ConnectionState, Trigger
PEER = PrivateKey.from_seed(b"\x07" * 32).peer_id
ROOT = Path(__file__).resolve().parents[2]


def machine_in(state: ConnectionState, **kw: float) -> PeerStateMachine:
    m = PeerStateMachine(PEER, **kw)
    m.state = state
    return m


def test_go_values_and_labels() -> None:
    assert [(s.name, int(s)) for s in S] == [
        ("DISCONNECTED", 0),
        ("CONNECTING", 1),
        ("CONNECTED", 2),
        ("ESTABLISHED", 3),
        ("RECONNECTING", 4),
        ("COOLDOWN", 5),
    ]
    assert S.RECONNECTING.label == "Reconnecting"
    assert [s for s in S if s.is_active] == [S.CONNECTING, S.CONNECTED, S.ESTABLISHED]
    assert [s for s in S if s.is_terminal] == [S.DISCONNECTED, S.COOLDOWN]


@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(S, T)))
def test_every_pair(state: ConnectionState, trigger: Trigger) -> None:
    m = machine_in(state)
    m.since = -1.0
    before = (m.state, m.since, m.is_outbound, m.last_error, m.deadline)
    expected = TRANSITIONS.get((state, trigger))
    err = RuntimeError("x")
    if expected is None:
        assert not m.can_apply(trigger)
        with pytest.raises(InvalidTransition) as info:
            m.apply(trigger, 5.0, err)
        assert info.value.peer_id == PEER
        assert (m.state, m.since, m.is_outbound, m.last_error, m.deadline) == before
    else:
        assert m.can_apply(trigger)
        ev = m.apply(trigger, 5.0, err)
        assert ev == PeerStateChanged(
            peer_id=PEER,
            old_state=state,
            new_state=expected,
            trigger=trigger,
            error=err,
            timestamp=5.0,
        )
        assert m.state is expected
        assert ev.changed == (state is not expected)
        assert m.since == (5.0 if ev.changed else -1.0)
        assert m.last_error is err


@given(st.lists(st.sampled_from(list(T)), max_size=40), st.booleans())
def test_random_walks(triggers: list[Trigger], timers: bool) -> None:
    m = PeerStateMachine(PEER, handshake_timeout=10.0, cooldown=60.0)
    now = 0.0
    for trig in triggers:
        now += 1.0
        old = m.state
        snapshot = (m.state, m.since, m.is_outbound, m.deadline)
        try:
            ev = m.apply(trig, now)
        except InvalidTransition:
            assert (m.state, m.since, m.is_outbound, m.deadline) == snapshot
            assert (old, trig) not in TRANSITIONS
            continue
        assert ev.new_state is TRANSITIONS[(old, trig)] is m.state
        # Deadlines exist exactly in CONNECTED and COOLDOWN.
        assert (m.deadline is not None) == (m.state in (S.CONNECTED, S.COOLDOWN))
        if timers and m.deadline is not None:
            assert m.handle_timer(m.deadline - 0.5) is None
            fired = m.handle_timer(m.deadline)
            assert fired is not None and fired.changed
            now = fired.timestamp


def test_every_state_is_reachable_and_can_get_back_to_disconnected() -> None:
    reach = {S.DISCONNECTED}
    frontier = [S.DISCONNECTED]
    while frontier:
        s = frontier.pop()
        for (src, _), dst in TRANSITIONS.items():
            if src is s and dst not in reach:
                reach.add(dst)
                frontier.append(dst)
    assert reach == set(S)
    for s in S:
        assert TRANSITIONS[(s, T.BLACKLISTED)] is S.DISCONNECTED
        assert TRANSITIONS[(s, T.DISCONNECT_REQUESTED)] is S.DISCONNECTED


def test_outbound_happy_path_and_handshake_timer() -> None:
    m = PeerStateMachine(PEER, handshake_timeout=30.0, cooldown=60.0)
    assert m.apply(T.DIAL_STARTED, 1.0).new_state is S.CONNECTING
    assert m.is_outbound and m.get_timer() is None
    m.apply(T.DIAL_SUCCEEDED, 2.0)
    assert m.state is S.CONNECTED and m.get_timer() == 32.0
    # The remote also opens a handshake stream: still our outbound session.
    assert not m.apply(T.INBOUND_HANDSHAKE, 3.0).changed
    assert m.is_outbound and m.get_timer() == 32.0
    assert m.handle_timer(31.9) is None
    m.apply(T.HANDSHAKE_COMPLETED, 10.0)
    state: ConnectionState = m.state  # a fresh read: mypy keeps the CONNECTED from above
    assert state is S.ESTABLISHED and m.get_timer() is None


def test_handshake_timeout_cooldown_then_expiry() -> None:
    m = PeerStateMachine(PEER, handshake_timeout=30.0, cooldown=60.0)
    m.apply(T.INBOUND_HANDSHAKE, 0.0)
    assert not m.is_outbound
    ev = m.handle_timer(30.0)
    assert ev is not None and ev.new_state is S.COOLDOWN
    assert isinstance(ev.error, HandshakeTimeout) and ev.error.peer_id == PEER
    assert m.cooldown_remaining(40.0) == 50.0
    assert m.get_timer() == 90.0
    assert not m.can_apply(T.DIAL_STARTED)  # connect() during cooldown is refused
    assert not m.apply(T.CONNECTION_LOST, 31.0).changed
    ev = m.handle_timer(90.0)
    assert ev is not None and ev.new_state is S.DISCONNECTED
    assert m.cooldown_remaining(91.0) == 0.0
    assert m.apply(T.RECONNECT_SCHEDULED, 90.0).new_state is S.RECONNECTING


def test_reconnect_success_reaches_connected_and_can_finalize() -> None:
    # Go bug §3.9.1: the state stayed Reconnecting and FinalizeHandshake failed.
    m = machine_in(S.RECONNECTING, handshake_timeout=5.0)
    assert not m.apply(T.DIAL_FAILED, 1.0).changed
    assert m.apply(T.DIAL_SUCCEEDED, 2.0).new_state is S.CONNECTED
    assert m.get_timer() == 7.0
    assert m.apply(T.HANDSHAKE_COMPLETED, 3.0).new_state is S.ESTABLISHED


def test_remote_disconnect_is_seen() -> None:
    # Go bug §3.9.2: remote disconnects were invisible.
    m = machine_in(S.ESTABLISHED)
    err = ConnectionResetError()
    ev = m.apply(T.CONNECTION_LOST, 1.0, err)
    assert ev.new_state is S.DISCONNECTED and ev.error is err and m.last_error is err


@pytest.mark.parametrize("state", [S.ESTABLISHED, S.COOLDOWN, S.RECONNECTING, S.DISCONNECTED])
def test_restarted_peer_handshakes_again(state: ConnectionState) -> None:
    # Go bug §3.9.3: an inbound handshake in these states was not tracked.
    m = machine_in(state, handshake_timeout=10.0)
    m.is_outbound = True
    ev = m.apply(T.INBOUND_HANDSHAKE, 1.0)
    assert ev.new_state is S.CONNECTED and ev.changed
    assert not m.is_outbound
    assert m.get_timer() == 11.0


def test_no_deadline_without_durations() -> None:
    m = PeerStateMachine(PEER)
    m.apply(T.INBOUND_HANDSHAKE, 0.0)
    assert m.get_timer() is None and m.handle_timer(1e9) is None
    m.apply(T.DISCONNECT_REQUESTED, 1.0)
    assert "Disconnected" in repr(m)


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_state_diagram", ROOT / "scripts" / "make_state_diagram.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_state_diagram_doc_is_current() -> None:
    mod = _load_script()
    assert (ROOT / "docs" / "state-machine.md").read_text() == mod.render()
    assert mod.main(["--check"]) == 0
