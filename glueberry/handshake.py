"""A ready-made application handshake: the Go integration test's Hello / PubKey / Complete.

Reference: ``glueberry-go-v1.md`` §1.6 (the symmetric flow of
``integration_working_test.go``, the one Go flow that works) and §7.7 (its cramberry
payloads). Glueberry itself defines no handshake messages; this module gives applications —
Python or Go — a working one in a line::

    await glueberry.handshake.establish(node, peer_id, streams=["messages"])

or, for every peer that connects, in either direction::

    async with glueberry.handshake.auto(node, streams=["messages"]):
        ...

Wire messages (cramberry v1.5.5 ``Marshal(HandshakeEnvelope{Message: m})``, then the usual
glueberry frame on ``/glueberry/stream/handshake/1.0.0``)::

    Hello{Version: 1}     14 80 01 10 01 00 00
    PubKey{PublicKey: k}  14 81 01 14 20 <k: 32 bytes> 00 00
    Complete{true}        14 82 01 10 01 00 00          (Complete{false}: 14 82 01 00 00)

Theory of operation
-------------------
:class:`HandshakeMachine` is sans-I/O: ``start()`` and ``receive(payload)`` return
:class:`Action` values (send these bytes, prepare the streams with this key, finalize) and
never touch the network. Each side

1. sends Hello once when the session starts (the dialer after ``connect``, the listener on
   its ``Connected`` event, i.e. when the dialer's Hello opened the handshake stream);
2. answers the peer's first Hello with Hello (if it has not sent one) and PubKey — at most
   once, so two instances never ping-pong (the Go README variant loops forever, §7);
3. on PubKey: checks that the key is the peer's identity key (its peer ID is the key's hash:
   *identity binding*, which Go does not check), calls ``prepare_streams`` and only then
   sends Complete, so the peer's first encrypted message finds the stream accepted;
4. on Complete (once prepared): calls ``finalize_handshake``.

:func:`establish` drives one peer and returns once it is ``Established``; :func:`auto`
drives every peer that reaches ``Connected`` while it is active. Both read the handshake
messages through :meth:`glueberry.Node.intercept_handshake`, so they do not appear in
``node.messages()``. A failure (a bad or foreign message, a key that does not match the
peer ID, the peer reporting ``Complete{false}``) raises :class:`HandshakeError` /
:class:`PeerIdMismatch` and disconnects the peer; the deadline is the node's
``handshake_timeout`` (the peer goes to ``Cooldown``) unless a shorter ``timeout`` is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from glueberry.errors import (
    ConnectionLost,
    GlueberryError,
    HandshakeError,
    HandshakeTimeout,
    PeerIdMismatch,
    RemoteProtocolError,
)
from glueberry.events import ConnectionEvent, EventsDropped
from glueberry.peers.state import ConnectionState
from glueberry.proto.gb_framing import HANDSHAKE_STREAM
from glueberry.wire import varint
from glueberry.wire.identity import Ed25519PublicKey, PeerId

if TYPE_CHECKING:
    from glueberry.events import EventSubscription, IncomingMessage
    from glueberry.node import Node, PeerIdLike
    from glueberry.peers.channels import MessageQueue

__all__ = [
    "COMPLETE_TYPE_ID",
    "HELLO_TYPE_ID",
    "PUBKEY_TYPE_ID",
    "Action",
    "AutoHandshake",
    "Complete",
    "Finalize",
    "HandshakeMachine",
    "Hello",
    "Prepare",
    "PubKey",
    "Send",
    "auto",
    "decode_message",
    "encode_complete",
    "encode_hello",
    "encode_pubkey",
    "establish",
]

logger = logging.getLogger(__name__)

#: cramberry type IDs registered by the Go integration test.
HELLO_TYPE_ID: Final = 128
PUBKEY_TYPE_ID: Final = 129
COMPLETE_TYPE_ID: Final = 130
#: The Hello version the Go test sends.
HELLO_VERSION: Final = 1
#: Longest handshake message accepted (a PubKey is 39 bytes).
MAX_MESSAGE: Final = 256

_ENVELOPE_TAG: Final = 0x14  # field 1, wire type 2 (bytes / interface)
_WT_VARINT: Final = 0
_WT_FIXED64: Final = 1
_WT_BYTES: Final = 2
_WT_FIXED32: Final = 3
_WT_SVARINT: Final = 4


# --- the messages ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PubKey:
    public_key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Complete:
    success: bool


Message = Hello | PubKey | Complete


def _field(number: int, wire_type: int) -> bytes:
    return bytes(((number << 4) | (wire_type << 1),))


def _envelope(type_id: int, body: bytes) -> bytes:
    return bytes((_ENVELOPE_TAG,)) + varint.encode(type_id) + body + b"\x00\x00"


def encode_hello(version: int = HELLO_VERSION) -> bytes:
    """``Hello{Version}``: ``14 80 01 10 01 00 00`` for version 1."""
    body = _field(1, _WT_VARINT) + varint.encode(version) if version else b""
    return _envelope(HELLO_TYPE_ID, body)


def encode_pubkey(public_key: bytes) -> bytes:
    """``PubKey{PublicKey}``: ``14 81 01 14 20 <32 bytes> 00 00``."""
    body = _field(1, _WT_BYTES) + varint.encode(len(public_key)) + bytes(public_key)
    return _envelope(PUBKEY_TYPE_ID, body if public_key else b"")


def encode_complete(success: bool = True) -> bytes:
    """``Complete{Success}``: ``14 82 01 10 01 00 00`` (``14 82 01 00 00`` for false)."""
    body = _field(1, _WT_VARINT) + b"\x01" if success else b""
    return _envelope(COMPLETE_TYPE_ID, body)


def _bad(message: str) -> HandshakeError:
    return HandshakeError(f"malformed handshake message: {message}")


def decode_message(payload: bytes) -> Message:
    """Parse one handshake payload.

    Unknown fields of the three structs are skipped by wire type (cramberry's forward
    compatibility); anything else is refused.

    Raises:
        HandshakeError: malformed, unknown type, or trailing bytes.
    """
    if len(payload) > MAX_MESSAGE:
        raise _bad(f"{len(payload)} bytes (max {MAX_MESSAGE})")
    if len(payload) < 3 or payload[0] != _ENVELOPE_TAG:
        raise _bad("not a HandshakeEnvelope")
    try:
        r = varint.decode(payload, 1)
        if r is None:
            raise _bad("truncated type ID")
        type_id, pos = r
        if type_id not in (HELLO_TYPE_ID, PUBKEY_TYPE_ID, COMPLETE_TYPE_ID):
            raise _bad(f"unknown message type {type_id}")
        value: int | bytes | None = None
        n = len(payload)
        while True:
            if pos >= n:
                raise _bad("truncated struct")
            tag = payload[pos]
            pos += 1
            if tag == 0:
                break
            if tag & 1:
                raise _bad("extended field tags are not used by these messages")
            number, wire_type = tag >> 4, (tag >> 1) & 7
            if wire_type in (_WT_VARINT, _WT_SVARINT):
                r = varint.decode(payload, pos)
                if r is None:
                    raise _bad("truncated varint")
                v, pos = r
                if number == 1 and wire_type == _WT_VARINT:
                    value = v
            elif wire_type == _WT_BYTES:
                r = varint.decode(payload, pos)
                if r is None:
                    raise _bad("truncated length")
                length, pos = r
                if pos + length > n:
                    raise _bad("bytes field runs past the message")
                if number == 1:
                    value = bytes(payload[pos : pos + length])
                pos += length
            elif wire_type == _WT_FIXED64:
                pos += 8
            elif wire_type == _WT_FIXED32:
                pos += 4
            else:
                raise _bad(f"unknown wire type {wire_type}")
        if pos >= n or payload[pos] != 0:
            raise _bad("missing end of envelope")
        if pos + 1 != n:
            raise _bad(f"{n - pos - 1} trailing bytes")
    except RemoteProtocolError as exc:  # a malformed varint
        raise _bad(str(exc)) from exc
    if type_id == HELLO_TYPE_ID:
        if isinstance(value, bytes):
            raise _bad("Hello.Version must be a varint")
        return Hello(version=value or 0)
    if type_id == PUBKEY_TYPE_ID:
        if isinstance(value, int):
            raise _bad("PubKey.PublicKey must be bytes")
        return PubKey(public_key=value or b"")
    if isinstance(value, bytes):
        raise _bad("Complete.Success must be a varint")
    return Complete(success=bool(value))


# --- the machine -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """Send ``payload`` on the handshake stream."""

    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepare:
    """Call ``prepare_streams`` with the peer's (verified) public key."""

    public_key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Finalize:
    """Call ``finalize_handshake``."""


Action = Send | Prepare | Finalize


class HandshakeMachine:
    """The symmetric Hello / PubKey / Complete exchange with one peer (sans-I/O).

    Args:
        peer_id: the remote peer; its PubKey must be the key this ID is the hash of.
        local_public_key: our Ed25519 public key (32 bytes), sent in PubKey.

    Call order: :meth:`start` once, then :meth:`receive` for each handshake payload, executing
    the returned actions in order, until :attr:`done`. After an error the machine is
    :attr:`failed` and raises on further input.
    """

    def __init__(self, peer_id: PeerId, local_public_key: bytes) -> None:
        self.peer_id = peer_id
        self._local_key = bytes(local_public_key)
        self.sent_hello = False
        self.got_hello = False
        self.sent_pubkey = False
        self.sent_complete = False
        self.got_complete = False
        #: The peer's verified public key, once its PubKey arrived.
        self.peer_public_key: bytes | None = None
        self.finalized = False
        self.failed = False

    @property
    def done(self) -> bool:
        return self.finalized

    def start(self) -> list[Action]:
        """Begin: send Hello (once)."""
        if self.sent_hello:
            return []
        self.sent_hello = True
        return [Send(payload=encode_hello())]

    def receive(self, payload: bytes) -> list[Action]:
        """Handle one handshake message from the peer.

        Raises:
            HandshakeError: malformed message, or the peer reported failure.
            PeerIdMismatch: the PubKey is not the peer's identity key.
        """
        if self.failed:
            raise HandshakeError("handshake already failed", peer_id=self.peer_id)
        try:
            return self._receive(decode_message(payload))
        except GlueberryError as exc:
            self.failed = True
            if exc.peer_id is None:
                exc.peer_id = self.peer_id
            raise

    def _receive(self, msg: Message) -> list[Action]:
        out: list[Action] = []
        if isinstance(msg, Hello):
            if self.got_hello:
                return out  # answered once already
            self.got_hello = True
            if not self.sent_hello:
                self.sent_hello = True
                out.append(Send(payload=encode_hello()))
            self._send_pubkey(out)
        elif isinstance(msg, PubKey):
            key = msg.public_key
            if self.peer_public_key is not None:
                if key != self.peer_public_key:
                    raise HandshakeError("the peer sent two different public keys")
                return out
            self._verify(key)
            self.peer_public_key = key
            self._send_pubkey(out)  # the peer needs ours to prepare too
            out.append(Prepare(public_key=key))
            if not self.sent_complete:
                self.sent_complete = True
                out.append(Send(payload=encode_complete(True)))
            if self.got_complete:
                self._finalize(out)
        else:
            if not msg.success:
                raise HandshakeError("the peer reported a failed handshake (Complete{false})")
            if self.got_complete:
                return out
            self.got_complete = True
            if self.peer_public_key is not None:
                self._finalize(out)
        return out

    def _send_pubkey(self, out: list[Action]) -> None:
        if not self.sent_pubkey:
            self.sent_pubkey = True
            out.append(Send(payload=encode_pubkey(self._local_key)))

    def _finalize(self, out: list[Action]) -> None:
        if not self.finalized:
            self.finalized = True
            out.append(Finalize())

    def _verify(self, key: bytes) -> None:
        if len(key) != 32:
            raise HandshakeError(f"PubKey holds {len(key)} bytes, not a 32-byte Ed25519 key")
        try:
            owner = PeerId.from_public_key(Ed25519PublicKey(key))
        except GlueberryError as exc:
            raise HandshakeError(f"PubKey is not a valid Ed25519 key: {exc}") from exc
        if owner != self.peer_id:
            raise PeerIdMismatch(
                f"the PubKey sent by {self.peer_id} belongs to {owner} (identity binding)"
            )


# --- drivers -------------------------------------------------------------------------


async def _execute(node: Node, peer: PeerId, streams: Sequence[str], actions: list[Action]) -> None:
    for action in actions:
        if isinstance(action, Send):
            await node.send(peer, HANDSHAKE_STREAM, action.payload)
        elif isinstance(action, Prepare):
            await node.prepare_streams(peer, action.public_key, streams)
        else:
            await node.finalize_handshake(peer)


async def _drive(
    node: Node,
    peer: PeerId,
    streams: Sequence[str],
    next_payload: Callable[[], Awaitable[bytes]],
) -> HandshakeMachine:
    machine = HandshakeMachine(peer, node.public_key)
    await _execute(node, peer, streams, machine.start())
    while not machine.done:
        payload = await next_payload()
        await _execute(node, peer, streams, machine.receive(payload))
    return machine


def _failure_for(event: ConnectionEvent) -> GlueberryError | None:
    state = event.state
    if state is ConnectionState.COOLDOWN:
        return HandshakeTimeout("handshake timed out", peer_id=event.peer_id)
    if state in (ConnectionState.DISCONNECTED, ConnectionState.RECONNECTING):
        return ConnectionLost(
            f"connection to {event.peer_id} lost during the handshake", peer_id=event.peer_id
        )
    return None


async def _watch(sub: EventSubscription[ConnectionEvent], peer: PeerId) -> GlueberryError:
    async for ev in sub:
        if isinstance(ev, EventsDropped) or ev.peer_id != peer:
            continue
        failure = _failure_for(ev)
        if failure is not None:
            return failure
    return ConnectionLost("the node stopped during the handshake", peer_id=peer)


async def _wait_connected(
    node: Node, sub: EventSubscription[ConnectionEvent], peer: PeerId
) -> None:
    while node.connection_state(peer) not in (
        ConnectionState.CONNECTED,
        ConnectionState.ESTABLISHED,
    ):
        ev = await sub.get()
        if isinstance(ev, EventsDropped):
            continue


async def establish(
    node: Node,
    peer_id: PeerIdLike,
    streams: Sequence[str],
    *,
    connect: bool = True,
    timeout: float | None = None,  # noqa: ASYNC109 - the handshake has a protocol deadline
) -> None:
    """Run the handshake with one peer; return once it is ``Established``.

    Args:
        node: a running node.
        peer_id: the peer.
        streams: encrypted stream names to accept from the peer.
        connect: dial the peer first when it is not connected (its addresses must be
            known); with ``False``, wait for it to connect to us.
        timeout: overall deadline in seconds (default: the node's ``handshake_timeout``).

    Raises:
        HandshakeTimeout: the deadline passed.
        HandshakeError / PeerIdMismatch: the exchange failed (the peer is disconnected).
        ConnectionLost: the connection went away meanwhile.
        and what :meth:`glueberry.Node.connect` raises.
    """
    from glueberry.node import _pid

    peer = _pid(peer_id)
    if node.connection_state(peer) is ConnectionState.ESTABLISHED:
        return
    limit = node.config.handshake_timeout if timeout is None else timeout
    sub = node.events_for_peer(peer)
    inbox = node.intercept_handshake(peer)
    tracer = node.config.tracer
    async with sub, inbox:
        try:
            async with asyncio.timeout(limit):
                if node.connection_state(peer) not in (
                    ConnectionState.CONNECTED,
                    ConnectionState.ESTABLISHED,
                ):
                    if connect:
                        await node.connect(peer)
                    else:
                        await _wait_connected(node, sub, peer)
                if node.connection_state(peer) is ConnectionState.ESTABLISHED:
                    return
                span = tracer.handshake(peer) if tracer is not None else contextlib.nullcontext()
                with span:
                    await _run_watched(node, peer, streams, inbox, sub)
        except TimeoutError as exc:
            raise HandshakeTimeout(
                f"handshake with {peer} did not finish within {limit} s", peer_id=peer
            ) from exc


async def _run_watched(
    node: Node,
    peer: PeerId,
    streams: Sequence[str],
    inbox: MessageQueue,
    sub: EventSubscription[ConnectionEvent],
) -> None:
    async def next_payload() -> bytes:
        msg: IncomingMessage = await inbox.get()
        return msg.data

    drive = asyncio.ensure_future(_drive(node, peer, streams, next_payload))
    watch = asyncio.ensure_future(_watch(sub, peer))
    try:
        await asyncio.wait({drive, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (drive, watch):
            if not t.done():
                t.cancel()
        await asyncio.wait({drive, watch})  # never raises: outcomes are read below
    if drive.done() and not drive.cancelled():
        exc = drive.exception()
        if exc is None:
            return
        if isinstance(exc, HandshakeError | PeerIdMismatch) and node.is_running:
            logger.warning("handshake with %s failed: %s; disconnecting", peer, exc)
            with contextlib.suppress(GlueberryError):
                await node.disconnect(peer)
        raise exc
    raise watch.result()


class AutoHandshake:
    """Run the handshake with every peer that reaches ``Connected`` (dialled or dialling).

    Args:
        node: a running node.
        streams: encrypted stream names to accept from every peer.
        on_established: called with the peer ID when a handshake finished.
        on_failure: called with ``(peer_id, error)`` when one failed (the peer was
            disconnected for a protocol failure; a timeout leaves it in cooldown).

    Use as ``async with glueberry.handshake.auto(node, streams=[...]):``; leaving the block
    stops handshaking (running handshakes are cancelled) and restores normal delivery of
    handshake messages.
    Peers handled by a concurrent :func:`establish` are left to it.
    """

    def __init__(
        self,
        node: Node,
        streams: Sequence[str],
        *,
        on_established: Callable[[PeerId], object] | None = None,
        on_failure: Callable[[PeerId, BaseException], object] | None = None,
    ) -> None:
        self.node = node
        self.streams = list(streams)
        self._on_established = on_established
        self._on_failure = on_failure
        self._sessions: dict[PeerId, asyncio.Queue[IncomingMessage]] = {}
        self._tasks: dict[PeerId, asyncio.Task[None]] = {}
        self._main: asyncio.Task[None] | None = None
        #: Peers that finished / failed the handshake while this was active.
        self.established: list[PeerId] = []
        self.failures: list[tuple[PeerId, BaseException]] = []

    async def __aenter__(self) -> AutoHandshake:
        node = self.node
        self._sub = node.subscribe_events()
        self._inbox = node.intercept_handshake(None)
        self._main = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop: cancel running handshakes, release the event and message taps."""
        tasks = [t for t in (self._main, *self._tasks.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        self._sub.unsubscribe()
        self._inbox.close()

    async def _run(self) -> None:
        async def events() -> None:
            async for ev in self._sub:
                if isinstance(ev, EventsDropped):
                    continue
                if ev.state is ConnectionState.CONNECTED:
                    # Events are delivered after the fact: a session may already have run
                    # and finished on the peer's first message. Only a peer still Connected
                    # needs one (a stale event must not start a second handshake).
                    if self.node.connection_state(ev.peer_id) is ConnectionState.CONNECTED:
                        self._start(ev.peer_id)
                else:
                    failure = _failure_for(ev)
                    if failure is not None:
                        self._stop(ev.peer_id, failure)

        async def messages() -> None:
            async for msg in self._inbox:
                q = self._sessions.get(msg.peer_id)
                if q is None:
                    if self.node.connection_state(msg.peer_id) is not ConnectionState.CONNECTED:
                        # Not part of a handshake we run (e.g. a message after Established):
                        # the application gets it in node.messages(), as without us.
                        self.node.messages().push_nowait([msg])
                        continue
                    q = self._start(msg.peer_id)
                q.put_nowait(msg)

        ev_task = asyncio.ensure_future(events())
        msg_task = asyncio.ensure_future(messages())
        try:
            await asyncio.gather(ev_task, msg_task)
        finally:
            for t in (ev_task, msg_task):
                t.cancel()
            for t in (ev_task, msg_task):
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    def _start(self, peer: PeerId) -> asyncio.Queue[IncomingMessage]:
        q = self._sessions.get(peer)
        if q is not None:
            return q
        q = self._sessions[peer] = asyncio.Queue()
        task = asyncio.ensure_future(self._session(peer, q))
        task.add_done_callback(_log_unexpected)
        self._tasks[peer] = task
        return q

    def _stop(self, peer: PeerId, failure: GlueberryError) -> None:
        self._sessions.pop(peer, None)
        task = self._tasks.pop(peer, None)
        if task is not None and not task.done():
            task.cancel()
            logger.warning("handshake with %s failed: %s", peer, failure)
            self.failures.append((peer, failure))
            if self._on_failure is not None:
                self._on_failure(peer, failure)

    async def _session(self, peer: PeerId, q: asyncio.Queue[IncomingMessage]) -> None:
        async def next_payload() -> bytes:
            return (await q.get()).data

        try:
            await _drive(self.node, peer, self.streams, next_payload)
        except asyncio.CancelledError:
            raise
        except (GlueberryError, OSError) as exc:
            # Leave the session table first: the disconnect below must not look like a
            # second failure of a session still running.
            if self._tasks.get(peer) is asyncio.current_task():
                del self._tasks[peer]
            if self._sessions.get(peer) is q:
                del self._sessions[peer]
            logger.warning("handshake with %s failed: %s", peer, exc)
            self.failures.append((peer, exc))
            if self._on_failure is not None:
                self._on_failure(peer, exc)
            if isinstance(exc, HandshakeError | PeerIdMismatch) and self.node.is_running:
                with contextlib.suppress(GlueberryError):
                    await self.node.disconnect(peer)
        else:
            self.established.append(peer)
            if self._on_established is not None:
                self._on_established(peer)
        finally:
            if self._sessions.get(peer) is q:
                del self._sessions[peer]
            if self._tasks.get(peer) is asyncio.current_task():
                del self._tasks[peer]
            self._hand_back(q)

    def _hand_back(self, q: asyncio.Queue[IncomingMessage]) -> None:
        """Messages left in a session's queue when it ends are the application's, as they
        would be without ``auto``: into ``node.messages()``. After a success they are what
        the peer sent right behind its Complete; after a failure or :meth:`close`, the
        handshake messages the session did not read (nothing is dropped unseen)."""
        left: list[IncomingMessage] = []
        while not q.empty():
            left.append(q.get_nowait())
        if left and self.node.is_running:
            self.node.messages().push_nowait(left)


def _log_unexpected(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("handshake session crashed", exc_info=task.exception())


def auto(
    node: Node,
    streams: Sequence[str],
    *,
    on_established: Callable[[PeerId], object] | None = None,
    on_failure: Callable[[PeerId, BaseException], object] | None = None,
) -> AutoHandshake:
    """``async with auto(node, streams=[...]):`` handshakes with every peer that connects
    (see :class:`AutoHandshake`)."""
    return AutoHandshake(node, streams, on_established=on_established, on_failure=on_failure)
