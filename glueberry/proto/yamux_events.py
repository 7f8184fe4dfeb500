"""yamux session configuration and events (see :mod:`glueberry.proto.yamux`).

Spec: https://github.com/libp2p/specs/blob/master/yamux/README.md (r0, 2023-02-17).

:class:`YamuxConfig` is a frozen, validated dataclass whose defaults follow go-yamux v5 as
go-libp2p configures it. The events are what :class:`~glueberry.proto.yamux.YamuxSession`
yields: frozen, slotted, keyword-only facts (architecture C4), matched with
``match event: case DataReceived(stream_id=sid, data=data): ...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from glueberry.errors import ConfigError, GlueberryError
from glueberry.proto.yamux_frames import HEADER_SIZE, INITIAL_STREAM_WINDOW, MAX_U32

WindowGrowth = Literal["eager", "rtt", "off"]


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True, slots=True, kw_only=True)
class YamuxConfig:
    """Limits and tuning of one session. Defaults follow go-yamux v5 as go-libp2p sets it."""

    initial_window: int = INITIAL_STREAM_WINDOW
    """Receive window granted to each new stream (the excess over 256 KiB rides on SYN/ACK)."""
    max_window: int = 16 * 1024 * 1024
    """Upper bound of a stream's receive window (go-libp2p and js: 16 MiB)."""
    window_growth: WindowGrowth = "eager"
    """``"eager"``: double on every window update; ``"rtt"``: go's rule (consumed within
    4 RTTs); ``"off"``: keep ``initial_window``."""
    connection_window_budget: int = 64 * 1024 * 1024
    """Sum over streams of window growth beyond ``initial_window``; no stream grows past it
    (go reserves the same memory from its resource manager)."""
    max_frame_payload: int = 64 * 1024 - HEADER_SIZE
    """Largest Data payload we send in one frame (go/js MaxMessageSize 64 KiB with header)."""
    max_inbound_streams: int = 1000
    """Concurrent streams the peer may open; further SYNs are reset (go-yamux default)."""
    max_outbound_streams: int = 1000
    """Concurrent streams we may open (js default); enforced through :attr:`can_open_stream`."""
    accept_backlog: int = 256
    """Inbound streams not yet accepted locally; further SYNs are reset (spec: >= 256)."""
    auto_accept: bool = False
    """Acknowledge inbound streams as their SYN arrives (the driver hands every stream to
    the application at once, as go's Accept loop does); ``accept_backlog`` then never fills
    and ``max_inbound_streams`` is the bound."""
    ack_backlog: int = 256
    """Outbound streams the peer has not acknowledged; the driver waits beyond (spec)."""
    keepalive_interval: float | None = 30.0
    """Seconds without inbound traffic before a keepalive ping; ``None`` disables."""
    ping_timeout: float = 10.0
    """Seconds an outstanding ping may go unanswered before the session ends (go: 10 s)."""
    ping_backlog: int = 32
    """Ping replies queued between two :meth:`YamuxSession.data_to_send` calls; the rest of a
    flood is dropped (go: 32)."""

    def __post_init__(self) -> None:
        if self.initial_window < INITIAL_STREAM_WINDOW:
            raise ConfigError("yamux initial_window must be >= 256 KiB (the spec's window)")
        if not self.initial_window <= self.max_window <= MAX_U32:
            raise ConfigError("yamux max_window must be >= initial_window and fit in u32")
        if self.window_growth not in ("eager", "rtt", "off"):
            raise ConfigError("yamux window_growth must be 'eager', 'rtt' or 'off'")
        if self.connection_window_budget < 0:
            raise ConfigError("yamux connection_window_budget must be >= 0")
        if not 1024 <= self.max_frame_payload <= 16 * 1024 * 1024:
            raise ConfigError("yamux max_frame_payload must be between 1 KiB and 16 MiB")
        for name in ("max_inbound_streams", "max_outbound_streams", "accept_backlog"):
            if getattr(self, name) < 1:
                raise ConfigError(f"yamux {name} must be >= 1")
        if self.ack_backlog < 1 or self.ping_backlog < 1:
            raise ConfigError("yamux ack_backlog and ping_backlog must be >= 1")
        if self.keepalive_interval is not None and self.keepalive_interval <= 0:
            raise ConfigError("yamux keepalive_interval must be > 0 (or None)")
        if self.ping_timeout <= 0:
            raise ConfigError("yamux ping_timeout must be > 0")


# --------------------------------------------------------------------------- events
class YamuxEvent:
    """Base of yamux events. Events are facts; they are not meant to be subclassed further."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamOpened(YamuxEvent):
    """The peer opened a stream (SYN). Accept it with :meth:`YamuxSession.accept_stream`."""

    stream_id: int
    """The new stream's ID (even if we are the client, odd if we are the server)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived(YamuxEvent):
    """Payload bytes for one stream (possibly several frames' worth, joined)."""

    stream_id: int
    """The stream the bytes belong to."""
    data: bytes
    """The bytes, in order. Report them with :meth:`YamuxSession.consume` once used."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnded(YamuxEvent):
    """The peer half-closed the stream (FIN): no more data will arrive on it."""

    stream_id: int
    """The stream that ended."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReset(YamuxEvent):
    """The stream was aborted by the peer (RST) or by the end of the session."""

    stream_id: int
    """The stream that was reset."""
    code: int
    """The application error code (go-yamux v5 sends it in ``WindowUpdate|RST``); 0 if none."""
    remote: bool
    """True when the peer or the connection caused it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamAcknowledged(YamuxEvent):
    """The peer acknowledged (ACK) a stream we opened; the ACK backlog shrank by one."""

    stream_id: int
    """Our stream that the peer accepted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SendWindowAvailable(YamuxEvent):
    """A stream whose send window had run out got credit again."""

    stream_id: int
    """The stream that may send again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PingAcknowledged(YamuxEvent):
    """The outstanding ping was answered."""

    rtt: float
    """Seconds between sending the ping and receiving its ACK."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GoAwayReceived(YamuxEvent):
    """The peer sent GoAway: it accepts no new streams (code 0), or is aborting (others)."""

    code: int
    """0 normal, 1 protocol error, 2 internal error; other values are passed on as they are."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionTerminated(YamuxEvent):
    """The session is over; every stream was reset before this event. Always the last event."""

    error: GlueberryError | None
    """None after a clean EOF; otherwise why the session ended."""


__all__ = [
    "ConnectionTerminated",
    "DataReceived",
    "GoAwayReceived",
    "PingAcknowledged",
    "SendWindowAvailable",
    "StreamAcknowledged",
    "StreamEnded",
    "StreamOpened",
    "StreamReset",
    "WindowGrowth",
    "YamuxConfig",
    "YamuxEvent",
]
