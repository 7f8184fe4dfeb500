"""multistream-select 1.0: protocol negotiation as sans-I/O machines.

Specs:
  https://github.com/multiformats/multistream-select (README: wire format, pipelining, ``na``)
  https://github.com/libp2p/specs/blob/master/connections/README.md (how libp2p uses it)

Wire format: every message is ``uvarint(len(line) + 1) || line || "\\n"``. Both sides first
send the header ``/multistream/1.0.0``; the dialer then proposes a protocol; the listener
echoes it (accept) or answers ``na`` (refuse), and the dialer may propose the next one.
Everything after the accepted protocol line belongs to that protocol.

Theory of operation
-------------------
:class:`MultistreamDialer` pipelines header and first proposal (one write, as the README
recommends and go does), proposes the next protocol on each ``na`` and raises
:class:`~glueberry.errors.NegotiationFailed` when every proposal was refused.
:class:`MultistreamListener` queues its header at once (like go), answers each proposal, and
answers ``ls`` with ``na`` (go-multistream removed ``ls``). Both emit one
:class:`ProtocolSelected` event carrying the protocol and **every byte received after the
accepted line** (``trailing_data``): a "lazy" peer may pipeline application data right
behind its proposal (rust ``V1Lazy``, go ``NewMSSelect``) and those bytes must reach the
next layer (bad-input list B-08).

Both machines follow the C2 contract: ``receive_data(data, now)`` (``b""`` is EOF),
``next_event()``/``events()``, ``data_to_send()``, ``get_timer()``/``handle_timer(now)``
(no timers here: the driver bounds negotiation with a timeout).

Limits (bad-input list B-07, B-28), checked *before* buffering a message body:

* length prefix at most 2 bytes (js) and value at most 1024 (go ``ErrTooLarge``, js);
* non-minimal varints and 0-length messages are refused, as are messages not ending in "\\n";
* the first message must be the header;
* protocol names must be UTF-8 without control characters (NUL included);
* the listener refuses at most :data:`MAX_FAILED_PROPOSALS` proposals, then gives up.

Lazy dialer
-----------
``MultistreamDialer([protocol], lazy=True)`` serves a caller that wants to send application
data before the listener answered (0-RTT protocol selection, one protocol only). The driver:

1. writes ``dialer.data_to_send()`` (header + proposal) followed by its first application
   bytes, ideally in one write; it may keep writing application data afterwards, without
   waiting (:attr:`MultistreamDialer.may_send_data` is already True);
2. feeds every byte it reads to ``receive_data`` until :class:`ProtocolSelected` appears;
   its ``trailing_data`` are the first application bytes from the listener;
3. if the listener refused, ``receive_data`` raises :class:`~glueberry.errors.NegotiationFailed`
   and the application data already written is lost: the driver must then reset/close the
   stream (the listener is waiting for another proposal and will treat those bytes as one).

A lazy dialer never proposes a second protocol, so ``data_to_send()`` stays empty after the
first call.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from glueberry.errors import LocalProtocolError, NegotiationFailed, RemoteProtocolError

PROTOCOL_ID: Final = "/multistream/1.0.0"
NA: Final = "na"
LS: Final = "ls"

#: Largest message accepted or sent, newline included (go ``ErrTooLarge``, js).
MAX_MESSAGE_LENGTH: Final = 1024
#: Proposals the listener refuses before it gives up on the peer (B-07).
MAX_FAILED_PROPOSALS: Final = 16

_PROTO: Final = PROTOCOL_ID
# Control characters (C0, DEL, C1): NUL and the newline delimiter itself among them.
_CONTROL_CHARS: Final = re.compile("[\x00-\x1f\x7f-\x9f]")


def encode_message(line: str) -> bytes:
    """Encode one multistream message: ``uvarint(len + 1) || line || "\\n"``.

    Raises:
        LocalProtocolError: ``line`` is not a valid protocol name or is too long.
    """
    raw = line.encode("utf-8")
    _check_name_bytes(raw, local=True)
    n = len(raw) + 1
    if n > MAX_MESSAGE_LENGTH:
        raise LocalProtocolError(f"protocol name longer than {MAX_MESSAGE_LENGTH - 1} bytes")
    prefix = bytes((n,)) if n < 0x80 else bytes(((n & 0x7F) | 0x80, n >> 7))
    return prefix + raw + b"\n"


def _check_name_bytes(raw: bytes, *, local: bool) -> str:
    """Return ``raw`` as text if it is a valid name, else raise."""
    err: type[LocalProtocolError | RemoteProtocolError] = (
        LocalProtocolError if local else RemoteProtocolError
    )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise err("protocol name is not valid UTF-8", protocol=_PROTO) from exc
    if _CONTROL_CHARS.search(text) is not None:
        raise err("protocol name contains control characters", protocol=_PROTO)
    if local and not text:
        raise err("empty protocol name", protocol=_PROTO)
    return text


_HEADER: Final = encode_message(PROTOCOL_ID)
_NA_MSG: Final = encode_message(NA)


# --- events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MultistreamEvent:
    """Base class of multistream events. Not meant to be subclassed outside this module."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolSelected(MultistreamEvent):
    """Both sides agreed on a protocol; the machine is finished."""

    protocol: str
    """The agreed protocol ID."""
    trailing_data: bytes
    """Bytes received after the accepted protocol line: the start of the protocol's data."""


# --- framing shared by both roles -------------------------------------------------------


class _State(enum.Enum):
    AWAIT_HEADER = "await-header"
    NEGOTIATING = "negotiating"
    DONE = "done"
    ERROR = "error"


class _Machine:
    """Buffering, message parsing and the C2 plumbing common to dialer and listener."""

    def __init__(self) -> None:
        self._state = _State.AWAIT_HEADER
        self._buf = bytearray()
        self._out = bytearray()
        self._events: list[MultistreamEvent] = []

    # C2 contract --------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float = 0.0) -> None:
        """Feed bytes read from the peer (``b""`` means EOF).

        Raises:
            RemoteProtocolError: the peer broke the protocol or closed early.
            NegotiationFailed: (dialer) every proposal was refused.
            LocalProtocolError: called after the machine finished or failed.
        """
        del now  # no timers in this protocol
        if self._state is _State.DONE:
            raise LocalProtocolError("negotiation already finished", protocol=_PROTO)
        if self._state is _State.ERROR:
            raise LocalProtocolError("negotiation failed earlier", protocol=_PROTO)
        try:
            if not data:
                raise RemoteProtocolError(
                    "connection closed during protocol negotiation", protocol=_PROTO
                )
            self._buf += data
            self._process()
        except BaseException:
            self._fail()
            raise

    def next_event(self) -> MultistreamEvent | None:
        """The oldest pending event, or None."""
        return self._events.pop(0) if self._events else None

    def events(self) -> Iterator[MultistreamEvent]:
        """Drain pending events."""
        while self._events:
            yield self._events.pop(0)

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer (drained)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        del now

    @property
    def is_finished(self) -> bool:
        return self._state is _State.DONE

    # internals ----------------------------------------------------------------------

    def _fail(self) -> None:
        self._state = _State.ERROR
        self._buf.clear()
        self._out.clear()

    def _next_line(self) -> str | None:
        """Pop one complete message from the buffer, or None if it is incomplete."""
        buf = self._buf
        avail = len(buf)
        if avail == 0:
            return None
        b0 = buf[0]
        if b0 < 0x80:
            length, start = b0, 1
        else:
            if avail < 2:
                return None
            b1 = buf[1]
            if b1 & 0x80:
                raise RemoteProtocolError("length prefix longer than 2 bytes", protocol=_PROTO)
            if b1 == 0:
                raise RemoteProtocolError("non-minimal length prefix", protocol=_PROTO)
            length, start = (b0 & 0x7F) | (b1 << 7), 2
        # Validate the declared length before waiting for (and buffering) the body.
        if length > MAX_MESSAGE_LENGTH:
            raise RemoteProtocolError(
                f"message of {length} bytes exceeds {MAX_MESSAGE_LENGTH}", protocol=_PROTO
            )
        if length == 0:
            raise RemoteProtocolError("empty message", protocol=_PROTO)
        end = start + length
        if avail < end:
            return None
        if buf[end - 1] != 0x0A:
            raise RemoteProtocolError("message does not end in a newline", protocol=_PROTO)
        raw = bytes(buf[start : end - 1])
        del buf[:end]
        return _check_name_bytes(raw, local=False)

    def _expect_header(self) -> bool:
        line = self._next_line()
        if line is None:
            return False
        if line != PROTOCOL_ID:
            raise RemoteProtocolError(
                f"expected the {PROTOCOL_ID} header, got {line[:64]!r}", protocol=_PROTO
            )
        self._state = _State.NEGOTIATING
        return True

    def _select(self, protocol: str) -> None:
        self._state = _State.DONE
        trailing = bytes(self._buf)
        self._buf.clear()
        self._events.append(ProtocolSelected(protocol=protocol, trailing_data=trailing))

    def _process(self) -> None:
        raise NotImplementedError


# --- dialer -----------------------------------------------------------------------------


class MultistreamDialer(_Machine):
    """The initiator's side: proposes ``protocols`` in order until one is accepted.

    The header and the first proposal are queued at construction: call :meth:`data_to_send`
    and write them before reading.

    Args:
        protocols: protocol IDs in order of preference (at least one).
        lazy: 0-RTT mode for a single protocol (see the module docstring).

    Raises:
        LocalProtocolError: no protocol given, an invalid name, or ``lazy`` with several.
    """

    def __init__(self, protocols: Sequence[str], *, lazy: bool = False) -> None:
        super().__init__()
        if isinstance(protocols, str):
            raise LocalProtocolError("protocols must be a sequence of names, not a str")
        self._protocols = tuple(protocols)
        if not self._protocols:
            raise LocalProtocolError("no protocol to propose", protocol=_PROTO)
        if lazy and len(self._protocols) != 1:
            raise LocalProtocolError("lazy negotiation takes exactly one protocol")
        if any(p in (NA, LS, PROTOCOL_ID) for p in self._protocols):
            raise LocalProtocolError("cannot propose a reserved word", protocol=_PROTO)
        self._proposals = [encode_message(p) for p in self._protocols]
        self._lazy = lazy
        self._index = 0
        self._out += _HEADER + self._proposals[0]

    @property
    def may_send_data(self) -> bool:
        """True once the caller may write application data (at once in lazy mode)."""
        return self._lazy or self._state is _State.DONE

    @property
    def current_proposal(self) -> str:
        """The protocol whose answer is awaited."""
        return self._protocols[self._index]

    def _process(self) -> None:
        if self._state is _State.AWAIT_HEADER and not self._expect_header():
            return
        while self._state is _State.NEGOTIATING:
            line = self._next_line()
            if line is None:
                return
            proposed = self._protocols[self._index]
            if line == proposed:
                self._select(proposed)
                return
            if line != NA:
                raise RemoteProtocolError(
                    f"unexpected answer {line[:64]!r} to proposal {proposed!r}",
                    protocol=_PROTO,
                )
            self._index += 1
            if self._lazy or self._index == len(self._protocols):
                raise NegotiationFailed(
                    f"peer refused all proposed protocols: {', '.join(self._protocols)}"
                )
            self._out += self._proposals[self._index]


# --- listener ---------------------------------------------------------------------------


class MultistreamListener(_Machine):
    """The responder's side: accepts the first proposal ``supported`` allows.

    The header is queued at construction (like go), so the driver can write it at once.

    Args:
        supported: a predicate on protocol IDs, or a collection of supported IDs.
        max_failed_proposals: refusals (``na``, including answers to ``ls``) before the
            peer is considered hostile.
    """

    def __init__(
        self,
        supported: Callable[[str], bool] | Collection[str],
        *,
        max_failed_proposals: int = MAX_FAILED_PROPOSALS,
    ) -> None:
        super().__init__()
        if isinstance(supported, str):
            raise LocalProtocolError("supported must be a collection of names, not a str")
        if callable(supported):
            self._supported: Callable[[str], bool] = supported
        else:
            names = frozenset(supported)
            self._supported = names.__contains__
        self._max_failed = max_failed_proposals
        self._failed = 0
        self._out += _HEADER

    def _process(self) -> None:
        if self._state is _State.AWAIT_HEADER and not self._expect_header():
            return
        while self._state is _State.NEGOTIATING:
            line = self._next_line()
            if line is None:
                return
            # "ls" and the reserved words are never protocols; refuse them like go does.
            if line and line not in (NA, LS, PROTOCOL_ID) and self._supported(line):
                self._out += encode_message(line)
                self._select(line)
                return
            self._failed += 1
            if self._failed > self._max_failed:
                raise RemoteProtocolError(
                    f"peer made more than {self._max_failed} refused proposals",
                    protocol=_PROTO,
                )
            self._out += _NA_MSG


__all__ = [
    "LS",
    "MAX_FAILED_PROPOSALS",
    "MAX_MESSAGE_LENGTH",
    "NA",
    "PROTOCOL_ID",
    "MultistreamDialer",
    "MultistreamEvent",
    "MultistreamListener",
    "ProtocolSelected",
    "encode_message",
]
