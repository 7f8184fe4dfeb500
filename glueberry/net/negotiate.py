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
from typing import Final, Protocol

from glueberry.errors import ConnectionLost, HandshakeTimeout
from glueberry.proto.multistream import (
    MultistreamDialer,
    MultistreamListener,
    ProtocolSelected,
)

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


__all__ = [
    "DEFAULT_TIMEOUT",
    "LazySelection",
    "NegotiationIO",
    "handle_protocol",
    "select_protocol",
    "select_protocol_lazy",
]
