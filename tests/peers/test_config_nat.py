"""Config's NAT traversal fields: defaults, validation, and which switches run the NAT layer."""

from __future__ import annotations

from typing import Any

import pytest

import glueberry
from glueberry import ConfigError, Multiaddr
from glueberry.nat.manager import NatConfig
from glueberry.proto.relay import RelayLimits

RELAY = "12D3KooWLRPJAA5o6Mn3JNVhNbJqVmzpgDMe9h3Mn8YqHf6ZmV9S"
ADDR = f"/ip4/198.51.100.7/tcp/4001/p2p/{RELAY}"


def cfg(**kw: Any) -> glueberry.Config:
    key = glueberry.PrivateKey.from_seed(b"\x07" * 32)
    return glueberry.Config(key, None, ["/ip4/127.0.0.1/tcp/0"], **kw)


def test_defaults_run_no_nat_layer() -> None:
    c = cfg()
    assert c.relays == () and c.enable_hole_punching is None
    assert not (c.enable_relay_service or c.enable_port_mapping or c.enable_autonat)
    assert not c.nat_enabled and not c.hole_punching


@pytest.mark.parametrize(
    ("kw", "punching"),
    [
        ({"relays": [ADDR]}, True),
        ({"relays": [ADDR], "enable_hole_punching": False}, False),
        ({"enable_hole_punching": True}, True),
        ({"enable_relay_service": True}, True),
        ({"enable_port_mapping": True}, True),
        ({"enable_autonat": True}, True),
    ],
)
def test_switches_that_run_the_nat_layer(kw: dict[str, Any], punching: bool) -> None:
    c = cfg(**kw)
    assert c.nat_enabled and c.hole_punching is punching


def test_relays_are_parsed_and_deduplicated() -> None:
    c = cfg(relays=[ADDR, Multiaddr(ADDR), ADDR])
    assert c.relays == (Multiaddr(ADDR),) and c.relay_addresses == (Multiaddr(ADDR),)


@pytest.mark.parametrize(
    "relays",
    [
        ADDR,  # a string, not a list
        ["not a multiaddr"],
        ["/ip4/198.51.100.7/tcp/4001"],  # no /p2p/<relay>
        [f"/p2p/{RELAY}"],  # no address to reach it
        [f"{ADDR}/p2p-circuit/p2p/{RELAY}"],  # relayed
    ],
)
def test_bad_relays(relays: Any) -> None:
    with pytest.raises(ConfigError, match="relay"):
        cfg(relays=relays)


def test_relay_naming_ourselves_is_refused() -> None:
    me = cfg().peer_id
    with pytest.raises(ConfigError, match="itself"):
        cfg(relays=[f"/ip4/198.51.100.7/tcp/4001/p2p/{me}"])


def test_switch_types_and_nat_config() -> None:
    with pytest.raises(ConfigError, match="enable_hole_punching"):
        cfg(enable_hole_punching="yes")
    with pytest.raises(ConfigError, match="enable_autonat"):
        cfg(enable_autonat=1)
    with pytest.raises(ConfigError, match="NatConfig"):
        cfg(nat_config={"punch_timeout": 1})
    with pytest.raises(ConfigError, match="relays on Config"):
        cfg(nat_config=NatConfig(relays=[ADDR]))
    with pytest.raises(ConfigError, match="enable_relay_service on Config"):
        cfg(nat_config=NatConfig(enable_relay_service=True))
    tuned = cfg(nat_config=NatConfig(punch_timeout=2.0, relay_limits=RelayLimits(circuit_data=1)))
    assert tuned.nat_config is not None and tuned.nat_config.punch_timeout == 2.0
