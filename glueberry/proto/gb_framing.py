"""Glueberry v1 stream framing (cramberry v1 ``WriteDelimited(&[]byte)``), sans-I/O.

Reference: ``glueberry-go-v1.md`` §1.4 and §1.5 (cramberry v1.5.5 ``StreamWriter`` /
``MessageIterator``), unsigned varints per https://github.com/multiformats/unsigned-varint.

Wire format, identical on the handshake stream and on encrypted streams::

    frame = uvarint(L) ‖ uvarint(N) ‖ payload[N]        L = len(uvarint(N)) + N
    encrypted payload = nonce(12) ‖ ChaCha20-Poly1305(plaintext) ‖ tag(16)

Theory of operation
-------------------
Encoding is a pure function (:func:`encode_frame`, and batch forms that build one buffer for
many frames so the driver makes one write). :class:`FrameDecoder` is incremental: feed it
whatever bytes arrived, get back a *list* of complete payloads (one call per read, not per
message). It keeps only the bytes of the frame in progress, and validates every length before
buffering for it:

* the outer ``L`` is checked against the configured maximum as soon as its varint is complete,
  so a hostile prefix can make the decoder hold at most ``max_outer_length`` bytes;
* ``L = 0`` is refused: the Go writer never emits it (the smallest frame is ``01 00``) and the
  Go reader fails on it;
* the inner ``N`` must fill the frame exactly. ``N > L − len(uvarint(N))`` is refused, and so —
  a documented choice, Go tolerates them — are trailing bytes after the payload;
* varints must be minimal and at most 9 bytes (what every Go writer produces);
* ``receive_data(b"")`` is end of stream: a partial frame (including a truncated varint)
  raises, a clean boundary returns ``[]``.

Every violation raises :class:`~glueberry.errors.RemoteProtocolError` with
``protocol="glueberry"`` and leaves the decoder in a terminal error state.

Limits: the Go reader refuses ``L > 64 MiB`` (:data:`GO_MAX_OUTER_LENGTH`) and kills that
stream, so a writer must stay below it; :data:`MAX_MESSAGE_SIZE_LIMIT` is the largest
plaintext whose encrypted frame fits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, NamedTuple, Protocol

from glueberry.errors import DecryptionFailed, LocalProtocolError, RemoteProtocolError
from glueberry.wire import varint

__all__ = [
    "DEFAULT_MAX_STREAM_NAME_LENGTH",
    "ENCRYPTION_OVERHEAD",
    "GO_MAX_OUTER_LENGTH",
    "HANDSHAKE_STREAM",
    "MAX_MESSAGE_SIZE_LIMIT",
    "PROTOCOL",
    "DecryptedBatch",
    "FrameDecoder",
    "Opener",
    "Sealer",
    "encode_encrypted_frame",
    "encode_encrypted_frames",
    "encode_frame",
    "encode_frame_header",
    "encode_frames",
    "frame_length",
    "max_outer_length",
    "stream_name_from_protocol_id",
    "stream_protocol_id",
    "validate_stream_name",
]

#: ``protocol`` of every error raised here.
PROTOCOL: Final = "glueberry"
#: cramberry's ``DefaultLimits.MaxMessageSize``: the Go reader refuses larger outer frames.
GO_MAX_OUTER_LENGTH: Final = 64 * 1024 * 1024
#: nonce(12) + Poly1305 tag(16).
ENCRYPTION_OVERHEAD: Final = 28
#: The unencrypted stream the application handshake runs on (Go ``HandshakeStreamName``).
HANDSHAKE_STREAM: Final = "handshake"
#: Go's default ``MaxStreamNameLength`` (bytes).
DEFAULT_MAX_STREAM_NAME_LENGTH: Final = 64
_PID_PREFIX: Final = "/glueberry/stream/"
_PID_SUFFIX: Final = "/1.0.0"


# --- stream names and protocol IDs (reference §1.2) -----------------------------------


def validate_stream_name(
    name: str,
    max_length: int = DEFAULT_MAX_STREAM_NAME_LENGTH,
    *,
    allow_handshake: bool = False,
) -> str:
    """Check a stream name with Go's rules; return it.

    Rules: non-empty; every character a Unicode letter (``str.isalpha``, Go
    ``unicode.IsLetter``), a decimal digit (``str.isdecimal``, Go ``unicode.IsDigit``), ``-``
    or ``_``; at most ``max_length`` UTF-8 bytes. ``"handshake"`` is reserved for the
    handshake stream (Go lets an application shadow it, §1.2) unless ``allow_handshake``.

    Raises:
        LocalProtocolError: the name breaks a rule (the message says which).
    """
    if not isinstance(name, str) or not name:
        raise LocalProtocolError("stream name must be a non-empty string", protocol=PROTOCOL)
    size = len(name.encode())
    if size > max_length:
        raise LocalProtocolError(
            f"stream name is {size} bytes, longer than {max_length}", protocol=PROTOCOL
        )
    for ch in name:
        if not (ch.isalpha() or ch.isdecimal() or ch in "-_"):
            raise LocalProtocolError(
                f"invalid character {ch!r} in stream name {name!r}", protocol=PROTOCOL
            )
    if name == HANDSHAKE_STREAM and not allow_handshake:
        raise LocalProtocolError(
            '"handshake" is reserved for the handshake stream', protocol=PROTOCOL
        )
    return name


def stream_protocol_id(name: str) -> str:
    """``/glueberry/stream/<name>/1.0.0`` (also for the handshake stream)."""
    return _PID_PREFIX + name + _PID_SUFFIX


def stream_name_from_protocol_id(
    protocol_id: str, max_length: int = DEFAULT_MAX_STREAM_NAME_LENGTH
) -> str | None:
    """The stream name of a glueberry protocol ID, or ``None`` if it is not a valid one."""
    if not (protocol_id.startswith(_PID_PREFIX) and protocol_id.endswith(_PID_SUFFIX)):
        return None
    name = protocol_id[len(_PID_PREFIX) : len(protocol_id) - len(_PID_SUFFIX)]
    try:
        return validate_stream_name(name, max_length, allow_handshake=True)
    except LocalProtocolError:
        return None


def frame_length(payload_length: int) -> int:
    """The outer length ``L = len(uvarint(N)) + N`` of a payload of ``N`` bytes."""
    return len(varint.encode(payload_length)) + payload_length


def max_outer_length(max_payload: int) -> int:
    """The largest outer ``L`` a decoder limited to ``max_payload`` accepts."""
    return frame_length(max_payload)


def _largest_payload(max_outer: int) -> int:
    n = max_outer
    while frame_length(n) > max_outer:
        n -= 1
    return n


#: The largest plaintext whose encrypted frame a Go reader accepts (``L ≤ 64 MiB``).
MAX_MESSAGE_SIZE_LIMIT: Final = _largest_payload(GO_MAX_OUTER_LENGTH) - ENCRYPTION_OVERHEAD


class Sealer(Protocol):
    """What the encrypting helpers need (``glueberry.peers.crypto.StreamCipher``)."""

    def seal(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        """Return ``nonce ‖ ciphertext ‖ tag``."""
        ...

    def seal_into(self, out: bytearray, plaintext: bytes | bytearray | memoryview) -> int:
        """Append ``nonce ‖ ciphertext ‖ tag`` to ``out``; return the number of bytes added."""
        ...


class Opener(Protocol):
    """What :meth:`FrameDecoder.receive_encrypted` needs (``StreamCipher``)."""

    def open(self, blob: bytes | bytearray | memoryview) -> bytes:
        """Decrypt one blob or raise :class:`~glueberry.errors.DecryptionFailed`."""
        ...

    def open_frames(
        self, view: memoryview, offsets: list[int]
    ) -> tuple[list[bytes], int, DecryptionFailed | None]:
        """Decrypt the blobs ``view[offsets[2i]:offsets[2i+1]]`` in order.

        Returns the plaintexts that authenticated, how many blobs failed, and the first
        failure; a failure never stops the batch.
        """
        ...


# --- encoding ------------------------------------------------------------------------


def encode_frame_header(payload_length: int) -> bytes:
    """``uvarint(L) ‖ uvarint(N)`` for a payload of ``N`` bytes.

    Raises:
        LocalProtocolError: the frame would exceed :data:`GO_MAX_OUTER_LENGTH`.
    """
    if payload_length < 127:  # L = N + 1 < 128: both varints are one byte
        return bytes((payload_length + 1, payload_length))
    inner = varint.encode(payload_length)
    outer = len(inner) + payload_length
    if outer > GO_MAX_OUTER_LENGTH:
        raise LocalProtocolError(
            f"frame of {outer} bytes exceeds the 64 MiB limit of Go readers", protocol=PROTOCOL
        )
    return varint.encode(outer) + inner


def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    """One frame: ``uvarint(L) ‖ uvarint(N) ‖ payload`` (never the invalid ``00`` frame)."""
    return encode_frame_header(len(payload)) + payload


def encode_frames(payloads: Iterable[bytes | bytearray | memoryview]) -> bytearray:
    """Many frames concatenated into one buffer (one write for the driver)."""
    out = bytearray()
    for p in payloads:
        out += encode_frame_header(len(p))
        out += p
    return out


def encode_encrypted_frame(cipher: Sealer, plaintext: bytes | bytearray | memoryview) -> bytes:
    """Encrypt ``plaintext`` and frame the blob: ``uvarint(L) ‖ uvarint(N) ‖ nonce ‖ ct ‖ tag``."""
    return encode_frame_header(len(plaintext) + ENCRYPTION_OVERHEAD) + cipher.seal(plaintext)


def encode_encrypted_frames(
    cipher: Sealer, plaintexts: Iterable[bytes | bytearray | memoryview]
) -> bytearray:
    """Encrypt and frame many messages, in order, into one buffer (one write)."""
    out = bytearray()
    seal_into = cipher.seal_into
    for p in plaintexts:
        out += encode_frame_header(len(p) + ENCRYPTION_OVERHEAD)
        seal_into(out, p)
    return out


# --- decoding ------------------------------------------------------------------------


class DecryptedBatch(NamedTuple):
    """The result of :meth:`FrameDecoder.receive_encrypted`."""

    #: Plaintexts of the frames that authenticated, in order.
    messages: list[bytes]
    #: How many frames failed to authenticate (they are dropped from ``messages``).
    failures: int
    #: The first failure, or ``None``.
    error: DecryptionFailed | None


_NO_FRAMES: Final[list[int]] = []  # shared, never mutated
_new_tuple = tuple.__new__  # a NamedTuple without its Python-level __new__


class FrameDecoder:
    """Incremental decoder of glueberry frames.

    Args:
        max_payload: the largest ``N`` accepted. For an encrypted stream this is
            ``max_message_size + 28`` (:meth:`for_encrypted`); for the handshake stream, whose
            payloads are plaintext, ``max_message_size`` (:meth:`for_handshake`).

    Call order: ``receive_data(chunk)*`` then optionally ``receive_data(b"")`` (end of stream).
    After an error or end of stream, further calls raise
    :class:`~glueberry.errors.LocalProtocolError`.

    This is a codec inside a driver, not a full sans-I/O machine: it has no timers and
    nothing to send, so ``receive_data`` takes no ``now`` and returns the decoded payloads
    directly (one list per read) instead of queueing events.

    Speed: every frame of up to 16 KiB has one- or two-byte length varints, and those are
    parsed inline (:meth:`_scan`); the first frame the inline path cannot settle, and
    everything after it in the same buffer, goes to the general scanner (:meth:`_scan_codec`),
    which decides exactly as if it had scanned from the start (a differential test checks
    it). Only the frame that straddles two reads is copied: its bytes are joined once, the
    rest of the read is parsed in place.
    """

    __slots__ = ("_chunks", "_closed", "_failed", "_max_outer", "_nbuf", "_need", "max_payload")

    #: :meth:`receive_encrypted` settles a read that is exactly one frame of up to 16 KiB
    #: inline, without the scanner (the differential test turns this off to compare).
    _one_frame_inline: bool = True

    def __init__(self, max_payload: int) -> None:
        if not 0 <= max_payload <= _largest_payload(GO_MAX_OUTER_LENGTH):
            raise LocalProtocolError(
                f"max_payload must be between 0 and the 64 MiB frame limit, got {max_payload}",
                protocol=PROTOCOL,
            )
        #: The largest payload accepted.
        self.max_payload = max_payload
        self._max_outer = max_outer_length(max_payload)
        self._chunks: list[bytes] = []  # bytes of the frame in progress
        self._nbuf = 0
        self._need = 0  # size of the frame in progress when known (0: unknown)
        self._failed = False
        self._closed = False

    @classmethod
    def for_encrypted(cls, max_message_size: int) -> FrameDecoder:
        """A decoder for an encrypted stream whose plaintexts are at most ``max_message_size``."""
        return cls(max_message_size + ENCRYPTION_OVERHEAD)

    @classmethod
    def for_handshake(cls, max_message_size: int) -> FrameDecoder:
        """A decoder for the (plaintext) handshake stream."""
        return cls(max_message_size)

    @property
    def buffered(self) -> int:
        """Bytes held for the frame in progress."""
        return self._nbuf

    # --- buffering ---------------------------------------------------------------------

    def _split(
        self, data: bytes | bytearray | memoryview
    ) -> tuple[bytes | None, bytes | bytearray | memoryview, int] | None:
        """``(head, data, start)``: ``head`` holds the frame in progress completed from the
        front of ``data`` (or ``None``), the rest is scanned from ``data[start:]``. ``None``
        when the frame in progress is still incomplete (``data`` is kept)."""
        if self._failed or self._closed:
            raise LocalProtocolError(
                "frame decoder is closed or failed; no more data accepted", protocol=PROTOCOL
            )
        chunks = self._chunks
        if not chunks:
            return None, data, 0
        have = self._nbuf
        need = self._need
        if need:  # the frame's size is known: complete it, leave the rest in place
            take = need - have
            if len(data) < take:
                chunks.append(bytes(data))
                self._nbuf = have + len(data)
                return None
            chunks.append(bytes(data[:take]))
            head = b"".join(chunks)
            chunks.clear()
            self._nbuf = 0
            return head, data, take
        # A length varint is still incomplete: join everything (at most a few bytes + data).
        chunks.append(bytes(data))
        head = b"".join(chunks)
        chunks.clear()
        self._nbuf = 0
        return head, b"", 0

    def _keep(self, buf: bytes | bytearray | memoryview, pos: int) -> None:
        if pos < len(buf):
            rest = bytes(buf[pos:])
            self._chunks.append(rest)
            self._nbuf = len(rest)

    def _eof(self) -> None:
        self._closed = True
        if self._nbuf:
            self._failed = True
            raise RemoteProtocolError(
                f"stream ended inside a frame ({self._nbuf} bytes pending)", protocol=PROTOCOL
            )

    def _error(self, message: str, cause: Exception | None = None) -> RemoteProtocolError:
        self._failed = True
        self._chunks.clear()
        self._nbuf = 0
        err = RemoteProtocolError(message, protocol=PROTOCOL)
        err.__cause__ = cause
        return err

    # --- scanning ----------------------------------------------------------------------

    def _scan(self, buf: bytes | bytearray | memoryview, pos: int, offsets: list[int]) -> int:
        """Append ``start, end`` of each complete payload in ``buf[pos:]`` to ``offsets``;
        return the position after the last complete frame.

        Inline path: one- and two-byte minimal varints, ``0 < L <= max`` and a payload that
        fills the frame exactly. Anything else (longer or malformed varints, bad lengths, a
        varint cut by the end of ``buf``) is left to :meth:`_scan_codec` from that frame on.
        """
        n = len(buf)
        max_outer = self._max_outer
        append = offsets.append
        while pos < n:
            b = buf[pos]
            if b < 0x80:
                outer = b
                p = pos + 1
            elif pos + 1 < n and 0 < buf[pos + 1] < 0x80:
                outer = (b & 0x7F) | (buf[pos + 1] << 7)
                p = pos + 2
            else:
                break
            if outer == 0 or outer > max_outer:
                break
            end = p + outer
            if end > n:
                self._need = end - pos
                return pos
            b = buf[p]
            if b < 0x80:
                q = p + 1
                if q + b != end:
                    break
            elif p + 1 < end and 0 < buf[p + 1] < 0x80:
                q = p + 2
                if q + ((b & 0x7F) | (buf[p + 1] << 7)) != end:
                    break
            else:
                break
            append(q)
            append(end)
            pos = end
        else:
            self._need = 0
            return pos
        return self._scan_codec(buf, pos, offsets)

    def _scan_codec(self, buf: bytes | bytearray | memoryview, pos: int, offsets: list[int]) -> int:
        """The general scanner behind :meth:`_scan`: any varint, every check, every error."""
        n = len(buf)
        max_outer = self._max_outer
        decode = varint.decode
        try:
            while pos < n:
                b = buf[pos]
                if b < 0x80:
                    outer, p = b, pos + 1
                else:
                    r = decode(buf, pos)
                    if r is None:
                        self._need = 0
                        return pos
                    outer, p = r
                if outer == 0:
                    raise self._error("zero-length frame")
                if outer > max_outer:
                    raise self._error(
                        f"frame length {outer} exceeds the limit of {max_outer} bytes"
                    )
                end = p + outer
                if end > n:
                    self._need = end - pos
                    return pos
                b = buf[p]
                if b < 0x80:
                    inner, q = b, p + 1
                else:
                    r = decode(buf, p)
                    if r is None or r[1] > end:
                        raise self._error("payload length varint runs past the frame")
                    inner, q = r
                stop = q + inner
                if stop != end:
                    if stop > end:
                        raise self._error(
                            f"payload length {inner} exceeds the frame ({end - q} bytes left)"
                        )
                    raise self._error(f"{end - stop} trailing bytes inside a frame")
                offsets.append(q)
                offsets.append(end)
                pos = end
        except RemoteProtocolError as exc:
            if exc.protocol == PROTOCOL:
                raise
            raise self._error(f"malformed varint: {exc}", exc) from exc
        self._need = 0
        return pos

    def _frames(
        self, data: bytes | bytearray | memoryview
    ) -> tuple[bytes | None, list[int], bytes | bytearray | memoryview, list[int]] | None:
        """Scan ``data``: ``(head, head_offsets, data, offsets)``, or ``None`` (incomplete).

        Every length is checked before anything is returned, so an error anywhere in the
        read raises before any payload of it is delivered.
        """
        split = self._split(data)
        if split is None:
            return None
        head, buf, start = split
        head_offsets = _NO_FRAMES
        if head is not None:
            head_offsets = []
            used = self._scan(head, 0, head_offsets)
            if buf:  # ``head`` is exactly the frame in progress: it is complete
                offsets: list[int] = []
                pos = self._scan(buf, start, offsets)
                self._keep(buf, pos)
                return head, head_offsets, buf, offsets
            self._keep(head, used)
            return head, head_offsets, buf, _NO_FRAMES
        offsets = []
        pos = self._scan(buf, start, offsets)
        self._keep(buf, pos)
        return None, head_offsets, buf, offsets

    # --- public ------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Feed bytes; return the payloads of every frame they complete, in order.

        Args:
            data: the next bytes of the stream; ``b""`` means end of stream.

        Returns:
            Complete payloads (possibly none). Each is a fresh ``bytes`` object.

        Raises:
            RemoteProtocolError: malformed or oversized frame, or end of stream mid-frame.
                Payloads completed earlier in the same call are not returned: the stream is
                unusable from that point and the caller resets it.
            LocalProtocolError: called after an error or after end of stream.
        """
        if not data:
            if self._failed or self._closed:
                raise LocalProtocolError("frame decoder is closed or failed", protocol=PROTOCOL)
            self._eof()
            return []
        found = self._frames(data)
        if found is None:
            return []
        head, head_offsets, buf, offsets = found
        out: list[bytes] = []
        if head_offsets:
            assert head is not None
            out = [
                head[head_offsets[i] : head_offsets[i + 1]] for i in range(0, len(head_offsets), 2)
            ]
        if offsets:
            if isinstance(buf, bytes):
                out += [buf[offsets[i] : offsets[i + 1]] for i in range(0, len(offsets), 2)]
            else:
                with memoryview(buf) as view:
                    out += [
                        bytes(view[offsets[i] : offsets[i + 1]]) for i in range(0, len(offsets), 2)
                    ]
        return out

    def receive_encrypted(
        self, data: bytes | bytearray | memoryview, cipher: Opener
    ) -> DecryptedBatch:
        """Like :meth:`receive_data`, decrypting each payload in place (no intermediate copy).

        A frame that fails to authenticate does not break the framing: it is counted and
        skipped, later frames are still decrypted, and the first error is returned so the
        caller can apply its policy (reset the stream, disconnect, or Go-style drop).
        """
        if not data:
            self.receive_data(b"")
            return DecryptedBatch([], 0, None)
        if not (self._chunks or self._failed or self._closed):
            # Nothing pending (the usual case): scan and decrypt the read in place.
            n = len(data)
            b = data[0]
            if not self._one_frame_inline:
                pass
            elif b < 0x80 and b + 1 == n and n > 2 and data[1] + 2 == n:
                # The read is exactly one short frame (one-byte varints): _scan's checks
                # inline (0 < L <= max, N fills the frame exactly).
                if b <= self._max_outer:
                    with memoryview(data) as view:
                        return _new_tuple(DecryptedBatch, cipher.open_frames(view, [2, n]))
            elif (
                b >= 0x80
                and n > 3
                and 0 < data[1] < 0x80
                and ((b & 0x7F) | (data[1] << 7)) + 2 == n
                and 0 < data[3] < 0x80
                and data[2] >= 0x80
                and ((data[2] & 0x7F) | (data[3] << 7)) + 4 == n
                and n - 2 <= self._max_outer
            ):
                # The same for one frame of 128 to 16383 bytes (two-byte varints), e.g. one
                # encrypted 1 KiB message.
                with memoryview(data) as view:
                    return _new_tuple(DecryptedBatch, cipher.open_frames(view, [4, n]))
            offsets: list[int] = []
            pos = self._scan(data, 0, offsets)
            if pos < len(data):
                self._keep(data, pos)
            if not offsets:
                return DecryptedBatch([], 0, None)
            with memoryview(data) as view:
                return _new_tuple(DecryptedBatch, cipher.open_frames(view, offsets))
        found = self._frames(data)
        if found is None:
            return DecryptedBatch([], 0, None)
        head, head_offsets, buf, offsets = found
        if head_offsets:
            assert head is not None
            with memoryview(head) as view:
                out, failures, first = cipher.open_frames(view, head_offsets)
        else:
            out, failures, first = [], 0, None
        if offsets:
            with memoryview(buf) as view:
                more, bad, err = cipher.open_frames(view, offsets)
            if out:
                out += more
            else:
                out = more
            if bad:
                failures += bad
                if first is None:
                    first = err
        return DecryptedBatch(out, failures, first)
