"""asyncio drivers for multistream-select 1.0 (the machines live in glueberry.proto.multistream).

Spec: https://github.com/multiformats/multistream-select

The same functions negotiate on a raw connection (security protocol), on a secured
connection (muxer, when the security handshake did not settle it) and on a muxed stream
(application protocol). Anything with ``async read() -> bytes`` and a ``write(data)`` that
either returns None (a :class:`~glueberry.transport.base.RawConnection`, pull mode) or an
awaitable (a :class:`~glueberry.transport.base.Stream`) will do: see :class:`NegotiationIO`.

Each function returns the agreed protocol and the bytes already read past the negotiation
(``trailing``): hand them to the next layer before reading again, or they are lost (B-08).

Errors: the machine's :class:`~glueberry.errors.RemoteProtocolError` and
:class:`~glueberry.errors.NegotiationFailed` propagate unchanged; end of stream during
negotiation raises :class:`~glueberry.errors.ConnectionLost`; the deadline raises
:class:`~glueberry.errors.HandshakeTimeout`. The connection is left open either way: the
caller owns it and decides whether to reset or close it.

Each function takes ``timeout`` (seconds, None for none) because every set-up step of the
upgrade pipeline has its own budget (go: 10 s per stream negotiation); wrapping the call in
``asyncio.timeout`` works as well but raises a bare ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Final, Protocol

from glueberry.errors import ConnectionLost, HandshakeTimeout
from glueberry.proto.multistream import (
    MultistreamDialer,
    MultistreamListener,
    ProtocolSelected,
)

if TYPE_CHECKING:
    from glueberry.transport.base import RawConnection

#: Default deadline for one negotiation (go: 10 s for streams, js: 10 s).
DEFAULT_TIMEOUT: Final = 10.0


class NegotiationIO(Protocol):
    """What negotiation needs from a connection or stream."""

    async def read(self) -> bytes:
        """The next chunk, or ``b""`` at end of stream."""
        ...

    def write(self, data: bytes) -> Awaitable[None] | None:
        """Send bytes; may be a coroutine (streams) or a plain call (raw connections)."""
        ...


async def _write(conn: NegotiationIO, data: bytes) -> None:
    res = conn.write(data)
    if res is not None and inspect.isawaitable(res):
        await res


async def _run(
    conn: NegotiationIO, machine: MultistreamDialer | MultistreamListener, *, flush_first: bool
) -> tuple[str, bytes]:
    if flush_first:
        out = machine.data_to_send()
        if out:
            await _write(conn, out)
    while True:
        data = await conn.read()
        if not data:
            raise ConnectionLost("connection closed during protocol negotiation")
        machine.receive_data(data)
        out = machine.data_to_send()
        if out:
            await _write(conn, out)
        for event in machine.events():
            if isinstance(event, ProtocolSelected):
                return event.protocol, event.trailing_data


async def _with_timeout(
    coro: Awaitable[tuple[str, bytes]],
    timeout: float | None,  # noqa: ASYNC109 - a deadline is part of the API (C9 exception)
) -> tuple[str, bytes]:
    try:
        async with asyncio.timeout(timeout):
            return await coro
    except TimeoutError as exc:
        raise HandshakeTimeout(f"protocol negotiation timed out after {timeout} s") from exc


async def select_protocol(
    conn: NegotiationIO,
    protocols: Sequence[str],
    *,
    timeout: float | None = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - see module docstring
) -> tuple[str, bytes]:
    """Dialer side: propose ``protocols`` in order until the listener accepts one.

    Returns:
        ``(protocol, trailing)``: the accepted protocol and the bytes read after its echo.

    Raises:
        NegotiationFailed: the listener refused every protocol.
        RemoteProtocolError, ConnectionLost, HandshakeTimeout: see the module docstring.
    """
    machine = MultistreamDialer(protocols)
    return await _with_timeout(_run(conn, machine, flush_first=True), timeout)


async def handle_protocol(
    conn: NegotiationIO,
    supported: Callable[[str], bool] | Collection[str],
    *,
    timeout: float | None = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - see module docstring
) -> tuple[str, bytes]:
    """Listener side: answer proposals until one in ``supported`` arrives.

    Returns:
        ``(protocol, trailing)``: the accepted protocol and the bytes the dialer sent after
        its proposal (lazy dialers pipeline application data there).

    Raises:
        RemoteProtocolError: the dialer broke the protocol or exceeded the refusal cap.
        ConnectionLost, HandshakeTimeout: see the module docstring.
    """
    machine = MultistreamListener(supported)
    return await _with_timeout(_run(conn, machine, flush_first=True), timeout)


class LazySelection:
    """A 0-RTT ("lazy") protocol selection in progress; see :func:`select_protocol_lazy`."""

    def __init__(self, conn: NegotiationIO, machine: MultistreamDialer) -> None:
        self._conn = conn
        self._machine = machine
        self.protocol = machine.current_proposal

    async def confirm(
        self,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - see module docstring
    ) -> bytes:
        """Read the listener's answer.

        Returns:
            The bytes read after the echo (the first application bytes from the listener).

        Raises:
            NegotiationFailed: the listener refused; data sent so far was not accepted and
                the caller must reset or close the stream.
        """
        _, trailing = await _with_timeout(
            _run(self._conn, self._machine, flush_first=False), timeout
        )
        return trailing


async def select_protocol_lazy(
    conn: NegotiationIO, protocol: str, early_data: bytes = b""
) -> LazySelection:
    """Dialer side, lazy: propose ``protocol`` and send ``early_data`` in the same write.

    The caller may go on writing application data at once, then must call
    :meth:`LazySelection.confirm` before (or instead of) its first read of ``conn``.
    """
    machine = MultistreamDialer([protocol], lazy=True)
    await _write(conn, machine.data_to_send() + early_data)
    return LazySelection(conn, machine)


#: Methods a connection wrapper binds straight to the inner connection (no ``__getattr__``
#: per call on the data path).
_PASS_THROUGH: Final = (
    "drain",
    "close",
    "abort",
    "is_closing",
    "wait_closed",
    "set_receiver",
    "pause_reading",
    "resume_reading",
)


def bind_methods(wrapper: object, inner: object, names: Sequence[str]) -> None:
    """Make each of ``names`` that ``inner`` has an attribute of ``wrapper`` bound to it."""
    for name in names:
        method = getattr(inner, name, None)
        if method is not None:
            setattr(wrapper, name, method)


class LazyConnection:
    """A raw connection (pull mode) during a 0-RTT selection of the protocol that runs on it.

    For a dialer with a single candidate (a host configured with one security protocol): the
    multistream header and the proposal ride in front of the first write (the security
    handshake's first message), so the negotiation costs no round trip of its own. The first
    :meth:`read` consumes the listener's header and echo (raising
    :class:`~glueberry.errors.NegotiationFailed` on ``na``) and returns what follows. Every
    other attribute is the inner connection's; once confirmed, ``write`` and ``read`` go
    straight to it.

    A listener that refuses has taken the handshake bytes for a next proposal and will drop
    the connection: with one candidate there is nothing to fall back to anyway.
    """

    def __init__(self, inner: RawConnection, protocol: str) -> None:
        self._inner = inner
        self._machine = MultistreamDialer([protocol], lazy=True)
        self._head: bytes | None = self._machine.data_to_send()
        self.protocol = protocol

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<LazyConnection {self.protocol} over {self._inner!r}>"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        head = self._head
        if head is not None:
            self._head = None
            data = head + bytes(data)
        self._inner.write(data)

    async def read(self) -> bytes:
        """The bytes after the listener's answer, then the inner connection's.

        Raises:
            NegotiationFailed: the listener refused the protocol.
            RemoteProtocolError: the listener broke multistream-select.
            ConnectionLost: end of stream before the answer (a listener that refuses may
                drop the connection as soon as it reads the handshake bytes it takes for a
                second proposal, before its ``na`` arrives).
        """
        machine = self._machine
        if self._head is not None:  # the protocol on top waits for the other side first
            self.write(b"")
        while not machine.is_finished:
            why = f"connection ended before the peer answered the 0-RTT proposal {self.protocol!r}"
            try:
                data = await self._inner.read()
            except ConnectionLost as exc:  # a refusing listener may drop us at once
                raise ConnectionLost(f"{why} (refused?)") from exc
            if not data:
                raise ConnectionLost(f"{why} (refused?)")
            machine.receive_data(data)
            for event in machine.events():
                if isinstance(event, ProtocolSelected):
                    # Confirmed: from now on this is the inner connection, without even a
                    # __getattr__ on the data path.
                    bind_methods(self, self._inner, ("read", "write", *_PASS_THROUGH))
                    if event.trailing_data:
                        return event.trailing_data
        return await self._inner.read()


__all__ = [
    "DEFAULT_TIMEOUT",
    "LazyConnection",
    "LazySelection",
    "NegotiationIO",
    "handle_protocol",
    "select_protocol",
    "select_protocol_lazy",
]
