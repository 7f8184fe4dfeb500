"""Node configuration: one frozen, validated dataclass.

Reference: ``glueberry-go-v1.md`` §4.11 (Go ``Config``, ``NewConfig`` and its options) and
§9.3 (where the Go docs and code disagree); design ``api.md`` (the Python names).

Theory of operation
-------------------
``Config(private_key, address_book_path, listen_addrs, **options)`` checks every value when it
is built and raises :class:`~glueberry.errors.ConfigError` naming the field; a ``Config`` that
exists is valid. It is immutable (build a changed copy with ``dataclasses.replace``) and never
modifies anything it was given: the private key is copied into a
:class:`~glueberry.wire.identity.PrivateKey` (the Go library zeroes the caller's key slice on
``Stop``, §2.5), listen addresses are parsed into :class:`~glueberry.wire.multiaddr.Multiaddr`.

Unlike Go, zero never means "use the default": every default is explicit here, and "no
limit" is spelled ``None`` (``reconnect_max_attempts=None`` is unlimited, which Go cannot
express, §9.2.8). Durations are ``float`` seconds.

Defaults: where the Go README and the Go code disagree (§9.3) the defaults follow the *code*,
i.e. what running Go nodes actually do, because that is what a mixed network sees:

=========================  ==========  ==========  =================================================
field                      Go code     Go README   chosen, and why
=========================  ==========  ==========  =================================================
handshake_timeout          30 s        60 s        30 s: a Go peer gives up after 30 s anyway
max_message_size           1 MiB       10 MB       1 MiB: a Go sender refuses more by default; the
                                                   receive limit also bounds memory per stream
low_watermark              100         500         100: Go's flow-control hysteresis
reconnect_initial_backoff  1 s         ("Initial   1 s; the README's name is used for the field
                                       Backoff")   (``reconnect_base_delay`` is an alias)
=========================  ==========  ==========  =================================================

Everything else is Go's default too (max delay 5 min, 10 attempts, 1 min cooldown, event
buffer 100, message buffer 1000, watermarks 1000/100, connection manager 400/100, stream
names up to 64 bytes, metadata up to 4096 bytes).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from glueberry.clock import Clock, LoopClock
from glueberry.errors import ConfigError, GlueberryError
from glueberry.events import OverflowPolicy
from glueberry.peers.metrics import Metrics, NopMetrics, Tracer
from glueberry.peers.reconnect import BackoffPolicy
from glueberry.proto.gb_framing import MAX_MESSAGE_SIZE_LIMIT
from glueberry.wire.identity import PeerId, PrivateKey
from glueberry.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from glueberry.nat.manager import NatConfig

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Config",
    "DecryptionErrorCallback",
    "DecryptionErrorPolicy",
    "PrivateKeyInput",
]

DEFAULT_HANDSHAKE_TIMEOUT: Final = 30.0
DEFAULT_MAX_MESSAGE_SIZE: Final = 1 << 20

#: Everything ``Config`` accepts as the identity key.
PrivateKeyInput = PrivateKey | Ed25519PrivateKey | bytes | bytearray | memoryview
#: ``on_decryption_error(peer_id, error)``.
DecryptionErrorCallback = Callable[[PeerId, BaseException], None]
#: What a frame that fails authentication does: reset that stream, or drop the peer.
DecryptionErrorPolicy = Literal["reset_stream", "disconnect"]
AddressBookCorruptPolicy = Literal["raise", "quarantine"]


def _normalize_key(key: object) -> PrivateKey:
    if isinstance(key, PrivateKey):
        return key
    if isinstance(key, Ed25519PrivateKey):
        return PrivateKey(key)
    if isinstance(key, bytes | bytearray | memoryview):
        raw = bytes(key)  # a copy: the caller's buffer is never touched
        if len(raw) not in (32, 64):
            raise ConfigError(
                "private_key must be a 32-byte Ed25519 seed or Go's 64-byte seed‖public key,"
                f" got {len(raw)} bytes"
            )
        try:
            return PrivateKey.from_bytes(raw)
        except GlueberryError as exc:
            raise ConfigError(f"private_key: {exc}") from exc
    if key is None:
        raise ConfigError("private_key is required")
    raise ConfigError(
        "private_key must be a glueberry PrivateKey, a cryptography Ed25519PrivateKey,"
        f" or 32/64 raw bytes; got {type(key).__name__}"
    )


def _normalize_addr(addr: object) -> Multiaddr:
    if isinstance(addr, Multiaddr):
        return addr
    if isinstance(addr, str | bytes):
        try:
            return Multiaddr(addr)
        except ValueError as exc:
            raise ConfigError(f"listen address {addr!r} is not a valid multiaddr: {exc}") from exc
    try:  # objects of the PyPI multiaddr package, or anything Multiaddr understands
        return Multiaddr(addr)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"listen address {addr!r} is not a multiaddr") from exc


def _seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    v = float(value)
    if math.isnan(v) or math.isinf(v) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return v


def _count(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a Node needs. Immutable; validated on construction.

    Positional: ``private_key``, ``address_book_path``, ``listen_addrs``; everything else is
    keyword-only.

    Raises:
        ConfigError: a value is missing, of the wrong type, or out of range. The message
            names the field.
    """

    private_key: PrivateKeyInput = field(repr=False)
    """The identity: a ``PrivateKey``, a ``cryptography`` ``Ed25519PrivateKey``, a 32-byte
    seed or Go's 64-byte seed‖public form. Stored as a ``PrivateKey`` (see :attr:`identity`)."""
    address_book_path: str | os.PathLike[str] | None
    """The JSON address book (Go format). ``None`` keeps the book in memory only."""
    listen_addrs: Sequence[Multiaddr | str]
    """Where to listen (at least one; ``/ip4/0.0.0.0/tcp/9000``). Stored as a tuple of
    ``Multiaddr``."""

    _: KW_ONLY

    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    """Seconds from Connected to ``finalize_handshake`` before the peer goes to Cooldown."""
    reconnect_initial_backoff: float = 1.0
    """First reconnection delay (doubles per attempt). Go: ``ReconnectBaseDelay``."""
    reconnect_max_backoff: float = 300.0
    """Cap of the reconnection delay. Go: ``ReconnectMaxDelay``."""
    reconnect_max_attempts: int | None = 10
    """Reconnection attempts before giving up; ``None`` is unlimited."""
    failed_handshake_cooldown: float = 60.0
    """Seconds a peer stays in Cooldown after a handshake timeout."""
    event_buffer_size: int = 100
    """Capacity of each event subscription."""
    event_overflow: OverflowPolicy = "drop_oldest"
    """What a full event subscription does: ``"drop_oldest"`` (with an ``EventsDropped``
    marker) or ``"block"`` (the node waits for the consumer)."""
    message_buffer_size: int = 1000
    """Received messages queued per node before the network is back-pressured."""
    disable_backpressure: bool = False
    """Go parity switch: skip the send-side flow controller."""
    high_watermark: int = 1000
    """Pending sends per (peer, stream) at which senders start to wait."""
    low_watermark: int = 100
    """Pending sends at which waiting senders resume (< ``high_watermark``)."""
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    """Largest plaintext sent or accepted, in bytes (also bounds receive buffers)."""
    conn_mgr_high_watermark: int = 400
    """Live connections above which the host's connection manager trims
    (:mod:`glueberry.net.connmgr`): it closes the least valuable peers first, never a peer in
    the handshake or ``Established``, nor a peer connected less than 60 s ago (grace
    period); automatic trims run at most every 10 s."""
    conn_mgr_low_watermark: int = 100
    """Closable connections a trim leaves (< high); protected and young connections come
    on top, so nothing is closed while fewer than this many could be."""
    max_stream_name_length: int = 64
    """Longest stream name, in UTF-8 bytes."""
    max_metadata_size: int = 4096
    """Largest address-book metadata (sum of key and value bytes)."""
    on_decryption_error: DecryptionErrorCallback | None = None
    """Called with ``(peer_id, error)`` when a frame fails to authenticate."""
    decryption_error_policy: DecryptionErrorPolicy = "reset_stream"
    """``"reset_stream"``: reset the stream the bad frame came on; ``"disconnect"``: close
    the connection to that peer."""
    address_book_on_corrupt: AddressBookCorruptPolicy = "raise"
    """A corrupt address book file: ``"raise"`` (left untouched) or ``"quarantine"`` (moved
    aside, start empty)."""
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("glueberry"))
    """Where the node logs (anything with the ``logging.Logger`` methods)."""
    metrics: Metrics = field(default_factory=NopMetrics)
    """Metrics hooks (``glueberry.PrometheusMetrics`` or your own)."""
    tracer: Tracer | None = None
    """OpenTelemetry spans for connect / handshake / stream setup; ``None`` for none."""
    clock: Clock = field(default_factory=LoopClock)
    """Time source (``glueberry.testing.FakeClock`` in tests)."""

    # --- NAT traversal (docs/nat.md, "NAT traversal for Node users") ---
    relays: Sequence[Multiaddr | str] = ()
    """Circuit relay v2 relays, ``<addr>/p2p/<relay id>``: the node reserves a slot with
    them while it is not known to be publicly reachable and advertises the relayed
    addresses (``…/p2p-circuit``), so peers can reach it behind a NAT. Stored as a tuple of
    ``Multiaddr``. Non-empty turns the NAT layer on."""
    enable_hole_punching: bool | None = None
    """DCUtR hole punching on relayed connections (both roles). ``None``: on whenever the
    NAT layer runs (relays configured, or another NAT switch on); ``True`` also turns the
    NAT layer on (a node without relays can then dial peers' relayed addresses and punch);
    ``False``: never."""
    enable_relay_service: bool = False
    """Serve as a circuit relay for other peers (a public node); turns the NAT layer on."""
    enable_port_mapping: bool = False
    """Map the TCP listen ports on the gateway (NAT-PMP, then UPnP IGD) and advertise the
    mapped addresses; turns the NAT layer on."""
    enable_autonat: bool = False
    """Probe reachability with AutoNAT (v2, else v1) and serve AutoNAT to others; turns the
    NAT layer on. Off: reservations are kept while reachability is unknown."""
    nat_config: NatConfig | None = None
    """Tuning for the NAT layer (``glueberry.nat.manager.NatConfig``: timings, relay service
    limits, private addresses, forced reachability, ...). Its ``relays`` and ``enable_*``
    switches are replaced by the fields above; setting them here is an error."""

    def __post_init__(self) -> None:
        s = object.__setattr__
        s(self, "private_key", _normalize_key(self.private_key))
        if self.address_book_path is not None:
            if not isinstance(self.address_book_path, str | os.PathLike):
                raise ConfigError(
                    f"address_book_path must be a path or None, got {self.address_book_path!r}"
                )
            if not os.fspath(self.address_book_path):
                raise ConfigError("address_book_path must not be empty (use None for memory)")
        if isinstance(self.listen_addrs, str | bytes) or not isinstance(
            self.listen_addrs, Sequence
        ):
            raise ConfigError("listen_addrs must be a list of multiaddrs")
        addrs = tuple(_normalize_addr(a) for a in self.listen_addrs)
        if not addrs:
            raise ConfigError("at least one listen address is required")
        s(self, "listen_addrs", addrs)

        s(self, "handshake_timeout", _seconds("handshake_timeout", self.handshake_timeout))
        for name in ("reconnect_initial_backoff", "reconnect_max_backoff"):
            s(self, name, _seconds(name, getattr(self, name)))
        s(
            self,
            "failed_handshake_cooldown",
            _seconds("failed_handshake_cooldown", self.failed_handshake_cooldown, allow_zero=True),
        )
        if self.reconnect_max_backoff < self.reconnect_initial_backoff:
            raise ConfigError(
                f"reconnect_max_backoff ({self.reconnect_max_backoff}) must be >="
                f" reconnect_initial_backoff ({self.reconnect_initial_backoff})"
            )
        if self.reconnect_max_attempts is not None:
            _count(
                "reconnect_max_attempts (None = unlimited)", self.reconnect_max_attempts, minimum=1
            )

        for name, minimum in (
            ("event_buffer_size", 1),
            ("message_buffer_size", 1),
            ("high_watermark", 1),
            ("low_watermark", 0),
            ("max_message_size", 1),
            ("conn_mgr_high_watermark", 1),
            ("conn_mgr_low_watermark", 0),
            ("max_stream_name_length", 1),
            ("max_metadata_size", 0),
        ):
            _count(name, getattr(self, name), minimum=minimum)
        if self.low_watermark >= self.high_watermark:
            raise ConfigError(
                f"low_watermark ({self.low_watermark}) must be < high_watermark"
                f" ({self.high_watermark})"
            )
        if self.conn_mgr_low_watermark >= self.conn_mgr_high_watermark:
            raise ConfigError(
                f"conn_mgr_low_watermark ({self.conn_mgr_low_watermark}) must be <"
                f" conn_mgr_high_watermark ({self.conn_mgr_high_watermark})"
            )
        if self.max_message_size > MAX_MESSAGE_SIZE_LIMIT:
            raise ConfigError(
                f"max_message_size {self.max_message_size} is too large: an encrypted frame"
                f" must stay within the 64 MiB Go readers accept (max {MAX_MESSAGE_SIZE_LIMIT})"
            )
        if not isinstance(self.disable_backpressure, bool):
            raise ConfigError("disable_backpressure must be a bool")

        if self.event_overflow not in ("drop_oldest", "block"):
            raise ConfigError(
                f'event_overflow must be "drop_oldest" or "block", got {self.event_overflow!r}'
            )
        if self.decryption_error_policy not in ("reset_stream", "disconnect"):
            raise ConfigError(
                'decryption_error_policy must be "reset_stream" or "disconnect",'
                f" got {self.decryption_error_policy!r}"
            )
        if self.address_book_on_corrupt not in ("raise", "quarantine"):
            raise ConfigError(
                'address_book_on_corrupt must be "raise" or "quarantine",'
                f" got {self.address_book_on_corrupt!r}"
            )
        if self.on_decryption_error is not None and not callable(self.on_decryption_error):
            raise ConfigError("on_decryption_error must be callable")
        for name in ("debug", "info", "warning", "error"):
            if not callable(getattr(self.logger, name, None)):
                raise ConfigError(f"logger must have the logging.Logger methods (no .{name})")
        if not isinstance(self.metrics, Metrics):
            raise ConfigError("metrics must implement the glueberry Metrics protocol")
        if self.tracer is not None and not isinstance(self.tracer, Tracer):
            raise ConfigError("tracer must be a glueberry Tracer or None")
        if not isinstance(self.clock, Clock):
            raise ConfigError("clock must implement the glueberry Clock protocol")
        self._check_nat()

    def _check_nat(self) -> None:
        if isinstance(self.relays, str | bytes) or not isinstance(self.relays, Sequence):
            raise ConfigError("relays must be a list of relay multiaddrs")
        relays: dict[Multiaddr, None] = {}
        for item in self.relays:
            try:
                ma = Multiaddr(item)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"relay address {item!r} is not a valid multiaddr") from exc
            relay_id = ma.peer_id
            if relay_id is None or ma.is_relayed or ma.without_p2p().transport_kind() is None:
                raise ConfigError(
                    f"relay address {ma} must be a direct address ending in /p2p/<relay id>"
                )
            if relay_id == self.identity.peer_id:
                raise ConfigError(f"relay address {ma} names this node itself")
            relays[ma] = None
        object.__setattr__(self, "relays", tuple(relays))
        if self.enable_hole_punching is not None and not isinstance(
            self.enable_hole_punching, bool
        ):
            raise ConfigError("enable_hole_punching must be True, False or None (automatic)")
        for name in ("enable_relay_service", "enable_port_mapping", "enable_autonat"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool")
        if self.nat_config is not None:
            from glueberry.nat.manager import NatConfig as _NatConfig

            nat = self.nat_config
            if not isinstance(nat, _NatConfig):
                raise ConfigError("nat_config must be a glueberry.nat.manager.NatConfig")
            if nat.relays:
                raise ConfigError("set relays on Config, not in nat_config")
            defaults = _NatConfig()
            for name in (
                "enable_relay_service",
                "enable_hole_punching",
                "enable_port_mapping",
                "enable_autonat",
            ):
                if getattr(nat, name) != getattr(defaults, name):
                    raise ConfigError(f"set {name} on Config, not in nat_config")

    # --- derived views ---

    @property
    def identity(self) -> PrivateKey:
        """The identity key, normalized."""
        key = self.private_key
        assert isinstance(key, PrivateKey)
        return key

    @property
    def peer_id(self) -> PeerId:
        """This node's peer ID."""
        return self.identity.peer_id

    @property
    def addresses(self) -> tuple[Multiaddr, ...]:
        """``listen_addrs`` as parsed multiaddrs."""
        addrs = self.listen_addrs
        assert isinstance(addrs, tuple)
        return addrs

    @property
    def book_path(self) -> Path | None:
        """``address_book_path`` as a ``Path``."""
        p = self.address_book_path
        return None if p is None else Path(p)

    @property
    def relay_addresses(self) -> tuple[Multiaddr, ...]:
        """``relays`` as parsed multiaddrs."""
        relays = self.relays
        assert isinstance(relays, tuple)
        return relays

    @property
    def hole_punching(self) -> bool:
        """Whether DCUtR runs (``enable_hole_punching`` resolved)."""
        if self.enable_hole_punching is None:
            return self.nat_enabled
        return self.enable_hole_punching

    @property
    def nat_enabled(self) -> bool:
        """Whether the node runs the NAT layer (relays, relay service, port mapping,
        AutoNAT or hole punching asked for)."""
        return bool(
            self.relays
            or self.enable_relay_service
            or self.enable_port_mapping
            or self.enable_autonat
            or self.enable_hole_punching
        )

    @property
    def reconnect_base_delay(self) -> float:
        """Go's name for :attr:`reconnect_initial_backoff`."""
        return self.reconnect_initial_backoff

    @property
    def reconnect_max_delay(self) -> float:
        """Go's name for :attr:`reconnect_max_backoff`."""
        return self.reconnect_max_backoff

    @property
    def backoff_policy(self) -> BackoffPolicy:
        """The reconnection policy these settings describe."""
        return BackoffPolicy(
            base_delay=self.reconnect_initial_backoff,
            max_delay=self.reconnect_max_backoff,
            max_attempts=self.reconnect_max_attempts,
        )
