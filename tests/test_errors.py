"""The dial errors' ``errors`` attribute: typed, empty by default, constructors unchanged."""

from __future__ import annotations

import pytest

from glueberry.errors import (
    ConnectError,
    ConnectTimeout,
    ErrorCode,
    GlueberryError,
    PeerBlacklisted,
)


@pytest.mark.parametrize("kind", [ConnectError, ConnectTimeout, PeerBlacklisted])
def test_errors_default_is_a_fresh_empty_list(kind: type[ConnectError | PeerBlacklisted]) -> None:
    first, second = kind(), kind("refused")
    assert first.errors == [] and second.errors == []
    first.errors.append(("/ip4/127.0.0.1/tcp/1", OSError()))
    assert second.errors == [] and kind().errors == []


def test_connect_error_constructor_is_backwards_compatible() -> None:
    err = ConnectError("no route", peer_id="peer", code=ErrorCode.CONNECT_TIMEOUT, retriable=False)
    assert str(err) == "no route"
    assert err.peer_id == "peer" and err.code is ErrorCode.CONNECT_TIMEOUT
    assert not err.retriable and err.stream is None
    assert isinstance(err, GlueberryError)
    assert ConnectTimeout().code is ErrorCode.CONNECT_TIMEOUT and ConnectTimeout().retriable


def test_errors_keeps_the_pairs_in_order() -> None:
    pairs = [("/ip4/10.0.0.1/tcp/1", ConnectTimeout()), ("/ip6/::1/tcp/2", OSError("refused"))]
    err = ConnectError("all 2 addresses failed", errors=iter(pairs))
    assert err.errors == pairs
    assert [str(addr) for addr, _ in err.errors] == ["/ip4/10.0.0.1/tcp/1", "/ip6/::1/tcp/2"]
    assert PeerBlacklisted("all refused", errors=pairs[:1]).errors == pairs[:1]
