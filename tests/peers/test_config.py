"""Config: defaults, key normalization, validation messages."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from glueberry.clock import LoopClock
from glueberry.config import Config
from glueberry.errors import ConfigError
from glueberry.peers.metrics import NopMetrics, Tracer
from glueberry.testing import FakeClock
from glueberry.wire.identity import PrivateKey
from glueberry.wire.multiaddr import Multiaddr

SEED = b"\x01" * 32
KEY = PrivateKey.from_seed(SEED)
ADDR = "/ip4/127.0.0.1/tcp/0"


def make(**kw: Any) -> Config:
    return Config(KEY, "book.json", [ADDR], **kw)


def test_defaults() -> None:
    c = make()
    assert c.identity is KEY and c.peer_id == KEY.peer_id
    assert c.addresses == (Multiaddr(ADDR),) and c.listen_addrs == (Multiaddr(ADDR),)
    assert c.book_path == Path("book.json")
    assert c.handshake_timeout == 30.0
    assert (c.reconnect_initial_backoff, c.reconnect_max_backoff) == (1.0, 300.0)
    assert (c.reconnect_base_delay, c.reconnect_max_delay) == (1.0, 300.0)
    assert c.reconnect_max_attempts == 10
    assert c.failed_handshake_cooldown == 60.0
    assert (c.event_buffer_size, c.message_buffer_size) == (100, 1000)
    assert (c.high_watermark, c.low_watermark) == (1000, 100)
    assert (c.conn_mgr_high_watermark, c.conn_mgr_low_watermark) == (400, 100)
    assert c.max_message_size == 1 << 20
    assert (c.max_stream_name_length, c.max_metadata_size) == (64, 4096)
    assert c.decryption_error_policy == "reset_stream"
    assert c.event_overflow == "drop_oldest"
    assert c.address_book_on_corrupt == "raise"
    assert isinstance(c.metrics, NopMetrics) and isinstance(c.clock, LoopClock)
    assert c.logger is logging.getLogger("glueberry")
    assert c.tracer is None and not c.disable_backpressure
    p = c.backoff_policy
    assert (p.base_delay, p.max_delay, p.max_attempts) == (1.0, 300.0, 10)


@pytest.mark.parametrize(
    "key",
    [
        KEY,
        Ed25519PrivateKey.from_private_bytes(SEED),
        SEED,
        SEED + KEY.public_key.data,
        bytearray(SEED),
        memoryview(SEED + KEY.public_key.data),
    ],
)
def test_key_forms(key: Any) -> None:
    assert make_key(key).identity.seed == SEED


def make_key(key: Any) -> Config:
    return Config(key, None, [Multiaddr(ADDR)])


def test_callers_key_buffer_untouched() -> None:
    buf = bytearray(SEED)
    c = make_key(buf)
    buf[:] = bytes(32)
    assert c.identity.seed == SEED
    assert SEED.hex() not in repr(c)


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (None, "required"),
        (b"\x01" * 31, "32-byte"),
        (SEED + bytes(32), "does not match"),
        ("seed", "got str"),
    ],
)
def test_bad_keys(key: Any, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        make_key(key)


def test_unlimited_reconnects_and_options() -> None:
    calls: list[object] = []
    c = make(
        reconnect_max_attempts=None,
        handshake_timeout=1,
        failed_handshake_cooldown=0,
        clock=FakeClock(),
        on_decryption_error=lambda p, e: calls.append((p, e)),
        decryption_error_policy="disconnect",
        event_overflow="block",
        tracer=Tracer(enabled=False),
    )
    assert c.reconnect_max_attempts is None and c.backoff_policy.max_attempts is None
    assert c.handshake_timeout == 1.0 and isinstance(c.handshake_timeout, float)
    assert dataclasses.replace(c, max_message_size=10).max_message_size == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.max_message_size = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"handshake_timeout": 0}, "handshake_timeout"),
        ({"handshake_timeout": -1}, "handshake_timeout"),
        ({"handshake_timeout": float("inf")}, "handshake_timeout"),
        ({"handshake_timeout": "30"}, "handshake_timeout"),
        ({"handshake_timeout": True}, "handshake_timeout"),
        ({"reconnect_initial_backoff": 0}, "reconnect_initial_backoff"),
        ({"reconnect_initial_backoff": 10, "reconnect_max_backoff": 5}, "reconnect_max_backoff"),
        ({"reconnect_max_attempts": 0}, "reconnect_max_attempts"),
        ({"failed_handshake_cooldown": -1}, "failed_handshake_cooldown"),
        ({"event_buffer_size": 0}, "event_buffer_size"),
        ({"message_buffer_size": 1.5}, "message_buffer_size"),
        ({"low_watermark": 1000}, "low_watermark"),
        ({"conn_mgr_low_watermark": 400}, "conn_mgr_low_watermark"),
        ({"max_message_size": 0}, "max_message_size"),
        ({"max_message_size": 64 << 20}, "max_message_size"),
        ({"max_stream_name_length": 0}, "max_stream_name_length"),
        ({"max_metadata_size": -1}, "max_metadata_size"),
        ({"disable_backpressure": 1}, "disable_backpressure"),
        ({"event_overflow": "drop_newest"}, "event_overflow"),
        ({"decryption_error_policy": "ignore"}, "decryption_error_policy"),
        ({"address_book_on_corrupt": "delete"}, "address_book_on_corrupt"),
        ({"on_decryption_error": 5}, "on_decryption_error"),
        ({"logger": object()}, "logger"),
        ({"metrics": object()}, "metrics"),
        ({"tracer": object()}, "tracer"),
        ({"clock": object()}, "clock"),
    ],
)
def test_validation_names_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        make(**kw)
    assert info.value.permanent


@pytest.mark.parametrize(
    ("addrs", "why"),
    [([], "at least one"), (ADDR, "list"), (["/ip4/999.0.0.1/tcp/1"], "not a valid"), ([3], "3")],
)
def test_bad_listen_addrs(addrs: Any, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        Config(KEY, None, addrs)


def test_bad_book_path() -> None:
    with pytest.raises(ConfigError, match="address_book_path"):
        Config(KEY, "", [ADDR])
    with pytest.raises(ConfigError, match="address_book_path"):
        Config(KEY, 5, [ADDR])  # type: ignore[arg-type]
    assert Config(KEY, Path("/tmp/x.json"), [ADDR]).book_path == Path("/tmp/x.json")


def test_keyword_only_options() -> None:
    with pytest.raises(TypeError):
        Config(KEY, None, [ADDR], 30.0)  # type: ignore[call-arg]  # options are keyword-only
