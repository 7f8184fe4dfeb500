"""libp2p Noise: the ``Noise_XX_25519_ChaChaPoly_SHA256`` handshake and transport framing.

Specs:
  https://github.com/libp2p/specs/blob/master/noise/README.md (libp2p profile, r5)
  https://noiseprotocol.org/noise.html (Noise Protocol Framework, revision 34)
  https://github.com/libp2p/specs/blob/master/connections/inlined-muxer-negotiation.md

Theory of operation
-------------------
:class:`NoiseHandshake` is a sans-I/O machine (C2 contract: ``receive_data(data, now)``,
``next_event()``/``events()``, ``data_to_send()``, ``get_timer()``/``handle_timer()``) for
the XX pattern with an empty prologue::

    -> e                     (initiator; 32 bytes, empty payload)
    <- e, ee, s, es          (responder; its libp2p payload)
    -> s, se                 (initiator; its libp2p payload)

Every handshake message is framed by a 2-byte big-endian length. The initiator's first
message is queued at construction (read it with ``data_to_send()``). The payload
(:mod:`glueberry.wire.pb_noise`) carries the libp2p identity key and its signature over
``"noise-libp2p-static-key:" || static X25519 key``; the signature is checked against the
static key the peer used in the handshake, and the peer ID derived from the identity key is
compared with ``expected_peer`` (:class:`~glueberry.errors.PeerIdMismatch`) before the
signature is even verified. The SymmetricState (MixHash/MixKey/HKDF/Split) is written out
here, following the Noise spec section 5, with ``cryptography`` primitives.

When the handshake ends the machine emits one :class:`HandshakeCompleted` carrying a
:class:`NoiseTransport` (the two cipher states) and ``trailing_data``: the raw bytes read
after the last handshake message. The initiator may send its first transport frames in the
same write as message 3, so the responder's driver must feed ``trailing_data`` to
``NoiseTransport.decrypt`` before anything else. The initiator finishes on message 2 (after
queueing message 3: write ``data_to_send()`` before using the transport).

Decisions, each a spec point:

* Message 1: the spec says the initiator MUST NOT send extensions there (they would travel
  in clear); every implementation sends an empty payload, so a message 1 that is not exactly
  32 bytes is rejected (B-02).
* Early muxer negotiation: the responder sends its list in message 2, the initiator in
  message 3; the result is the first muxer of the initiator's list that the responder also
  lists. If either side sent no list (or a list of more than 100 entries, which go ignores)
  the result is ``None``: negotiate the muxer with multistream-select, as go does. If both
  lists are non-empty and disjoint the handshake fails with
  :class:`~glueberry.errors.NegotiationFailed` (the spec's MUST; go falls back instead).
* Sizes: handshake messages are capped at :data:`MAX_HANDSHAKE_MESSAGE` bytes (checked on
  the length prefix, before buffering) and must have at least their fixed part.

Errors: malformed input raises :class:`~glueberry.errors.RemoteProtocolError`; an AEAD
failure raises :class:`~glueberry.errors.DecryptionFailed`; a bad signature raises
:class:`~glueberry.errors.SecurityError`; a wrong peer :class:`~glueberry.errors.PeerIdMismatch`.
After any error the machine is terminal and further calls raise
:class:`~glueberry.errors.LocalProtocolError`.

:class:`NoiseTransport` is the post-handshake data path: ``encrypt`` seals plaintext into
frames of at most 65519 plaintext bytes; ``decrypt`` is incremental (partial frames are
buffered) and returns all the plaintext one socket read completes. It is the hot path
(performance.md): one AEAD object per direction, nonces packed by a precompiled
``struct``, and no per-frame work beyond the AEAD call and the length prefix. The driver uses
the allocation-free variants: ``seal`` (large writes are sealed in place into one buffer,
no per-frame object and no join) and ``decrypt_into`` (the plaintext of a read is written
into a buffer the driver reuses).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from glueberry.errors import (
    DecryptionFailed,
    LocalProtocolError,
    NegotiationFailed,
    PeerIdMismatch,
    RemoteProtocolError,
    SecurityError,
)
from glueberry.wire.identity import PeerId, PrivateKey, PublicKey
from glueberry.wire.pb_noise import (
    NoiseExtensions,
    NoiseHandshakePayload,
    decode_payload,
    encode_payload,
)

PROTOCOL_ID: Final = "/noise"
PROTOCOL_NAME: Final = b"Noise_XX_25519_ChaChaPoly_SHA256"
SIGNATURE_PREFIX: Final = b"noise-libp2p-static-key:"

DH_LEN: Final = 32
TAG_LEN: Final = 16
#: Largest Noise message (spec), and so the largest frame body.
MAX_MESSAGE_LENGTH: Final = 65535
#: Largest plaintext per transport frame (go ``MaxPlaintextLength``).
MAX_PLAINTEXT: Final = MAX_MESSAGE_LENGTH - TAG_LEN
#: Cap on handshake messages 2 and 3: far above any legitimate payload (an RSA-8192 key and
#: signature with a full muxer list stay under 4 KiB), far below what a peer could declare.
MAX_HANDSHAKE_MESSAGE: Final = 16384
#: :meth:`NoiseTransport.seal` writes frames in place from this size on (measured crossover:
#: below it, creating the buffer and views costs more than the copy they save).
SEAL_IN_PLACE: Final = 32 * 1024
#: Nonce 2**64-1 is reserved by Noise; the connection must end before it is used.
NONCE_LIMIT: Final = (1 << 64) - 1

_MSG2_MIN: Final = DH_LEN + (DH_LEN + TAG_LEN) + TAG_LEN
_MSG3_MIN: Final = (DH_LEN + TAG_LEN) + TAG_LEN

_pack_nonce = struct.Struct("<4xQ").pack  # 32 zero bits || 64-bit little-endian counter
_pack_len = struct.Struct(">H").pack
_pack_len_into = struct.Struct(">H").pack_into


# --- Noise primitives (spec sections 4 and 5) -------------------------------------------


def _hash(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def _hmac(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise HKDF with two outputs."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    return out1, _hmac(temp, out1 + b"\x02")


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # low-order point: the shared secret would be all zeros
        raise RemoteProtocolError("invalid X25519 public key", protocol=PROTOCOL_ID) from exc


class _SymmetricState:
    """Noise SymmetricState with its embedded CipherState (handshake only)."""

    __slots__ = ("_aead", "_n", "ck", "h")

    def __init__(self) -> None:
        # The protocol name is exactly HASHLEN (32) bytes long, so h = name, unhashed.
        self.h = PROTOCOL_NAME
        self.ck = PROTOCOL_NAME
        self._aead: ChaCha20Poly1305 | None = None
        self._n = 0
        self.mix_hash(b"")  # the (empty) prologue

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, key = _hkdf2(self.ck, ikm)
        self._aead = ChaCha20Poly1305(key)
        self._n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self._aead is None:
            ciphertext = plaintext
        else:
            ciphertext = self._aead.encrypt(_pack_nonce(self._n), plaintext, self.h)
            self._n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self._aead is None:
            plaintext = ciphertext
        else:
            try:
                plaintext = self._aead.decrypt(_pack_nonce(self._n), ciphertext, self.h)
            except InvalidTag as exc:
                raise DecryptionFailed("Noise handshake message failed authentication") from exc
            self._n += 1
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        return _hkdf2(self.ck, b"")


# --- transport ----------------------------------------------------------------------------


class NoiseTransport:
    """The two post-handshake cipher states and the 2-byte-length frame codec.

    Not thread-safe; one instance per connection. After a :class:`DecryptionFailed` (or a
    nonce exhaustion) every later call raises again: a failed connection never continues
    (B-05, GHSA-6cr6-fmvc-vw2p).
    """

    __slots__ = ("_dead", "_dec", "_dec_into", "_enc", "_enc_into", "_rx_buf", "_rx_n", "_tx_n")

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        send = ChaCha20Poly1305(send_key)
        self._enc = send.encrypt
        self._enc_into = send.encrypt_into
        recv = ChaCha20Poly1305(recv_key)
        self._dec = recv.decrypt
        self._dec_into = recv.decrypt_into
        self._tx_n = 0
        self._rx_n = 0
        self._rx_buf = bytearray()
        self._dead = False

    @property
    def messages_sent(self) -> int:
        return self._tx_n

    @property
    def messages_received(self) -> int:
        return self._rx_n

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete incoming frame held back by :meth:`decrypt`."""
        return len(self._rx_buf)

    def _die(self, exc: SecurityError) -> SecurityError:
        # Both counters jump to the limit, so the one comparison on each hot path also
        # refuses every later call.
        self._dead = True
        self._tx_n = self._rx_n = NONCE_LIMIT
        self._rx_buf = bytearray()
        return exc

    def _refuse(self) -> SecurityError:
        if self._dead:
            return SecurityError("Noise transport failed earlier")
        return self._die(SecurityError("Noise nonce space exhausted: the connection must end"))

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Seal ``data`` into as many frames as needed (65519 plaintext bytes each).

        Returns the frames, length prefixes included, ready to write; ``b""`` for empty input.

        Raises:
            SecurityError: the send nonce space is exhausted, or the transport failed before.
        """
        return bytes(self.seal(data))

    def seal(self, data: bytes | bytearray | memoryview) -> bytearray | bytes:
        """:meth:`encrypt` without the final copy. The data path uses this.

        From :data:`SEAL_IN_PLACE` bytes on, the frames go into one ``bytearray`` the AEAD
        writes into directly (no object per frame, no join, no prefix concatenation); a
        smaller frame is cheaper as the AEAD's own ``bytes`` behind a 2-byte prefix.

        Raises:
            SecurityError: as :meth:`encrypt`.
        """
        n = len(data)
        nonce = self._tx_n
        if n <= MAX_PLAINTEXT:
            if nonce >= NONCE_LIMIT:
                raise self._refuse()
            if n == 0:
                return b""
            self._tx_n = nonce + 1
            if n < SEAL_IN_PLACE:
                return _pack_len(n + TAG_LEN) + self._enc(_pack_nonce(nonce), data, None)
            out = bytearray(n + 2 + TAG_LEN)
            _pack_len_into(out, 0, n + TAG_LEN)
            with memoryview(out) as omv, omv[2:] as body:
                self._enc_into(_pack_nonce(nonce), data, None, body)
            return out
        count = -(-n // MAX_PLAINTEXT)
        if nonce + count > NONCE_LIMIT:
            raise self._refuse()
        enc_into = self._enc_into
        out = bytearray(n + count * (2 + TAG_LEN))
        w = 0
        with memoryview(data) as mv, memoryview(out) as omv:
            for off in range(0, n, MAX_PLAINTEXT):
                take = min(MAX_PLAINTEXT, n - off)
                _pack_len_into(out, w, take + TAG_LEN)
                w += 2
                enc_into(
                    _pack_nonce(nonce), mv[off : off + take], None, omv[w : w + take + TAG_LEN]
                )
                w += take + TAG_LEN
                nonce += 1
        self._tx_n = nonce
        return out

    def decrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Consume bytes read from the socket; return all plaintext they complete.

        A trailing partial frame is kept for the next call. Call once per socket read.

        Raises:
            DecryptionFailed: a frame failed authentication (a frame shorter than the tag
                included); the transport is dead from then on.
            SecurityError: the receive nonce space is exhausted, or the transport failed.
        """
        end = len(data)
        nonce = self._rx_n
        # At most end // 18 + 1 frames complete in this call (every frame holds 2 + 16
        # bytes): one check here keeps the nonce limit off the per-frame path.
        if nonce + end // 18 + 1 >= NONCE_LIMIT:
            if self._dead:
                raise DecryptionFailed("Noise transport failed earlier")
            return self._decrypt_near_limit(data)
        buf = self._rx_buf
        if not buf and end >= 2 and 2 + ((data[0] << 8) | data[1]) == end:
            # Fast path: the read is exactly one frame (small messages, one per read).
            # Copying a small body is cheaper than making a memoryview of it.
            body = data[2:] if end <= 4096 else memoryview(data)[2:]
            try:
                plaintext = self._dec(_pack_nonce(nonce), body, None)
            except InvalidTag:
                raise self._die(
                    DecryptionFailed("Noise transport frame failed authentication")
                ) from None
            self._rx_n = nonce + 1
            return plaintext
        pos = 0
        out: list[bytes] = []
        if buf:
            # Complete the frame left over from the previous read first.
            if len(buf) < 2:
                take = min(2 - len(buf), end)
                buf += data[:take]
                pos = take
                if len(buf) < 2:
                    return b""
            need = 2 + ((buf[0] << 8) | buf[1]) - len(buf)
            if end - pos < need:
                buf += data[pos:]
                return b""
            with memoryview(data) as mv:
                buf += mv[pos : pos + need]
            pos += need
            with memoryview(buf) as bmv, bmv[2:] as frame:
                plaintext = self._open(frame)
            buf.clear()
            if pos == end:
                return plaintext
            out.append(plaintext)
        dec = self._dec
        nonce = self._rx_n  # _open may have advanced it
        with memoryview(data) as mv:
            while end - pos >= 2:
                stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
                if stop > end:
                    break
                try:
                    out.append(dec(_pack_nonce(nonce), mv[pos + 2 : stop], None))
                except InvalidTag:
                    raise self._die(
                        DecryptionFailed("Noise transport frame failed authentication")
                    ) from None
                nonce += 1
                pos = stop
            self._rx_n = nonce
            if pos < end:
                buf += mv[pos:]
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def decrypt_into(self, data: bytes | bytearray | memoryview, out: memoryview) -> int:
        """:meth:`decrypt`, writing the plaintext into ``out``; returns its length.

        ``out`` must hold at least ``len(data) + self.buffered`` bytes (the plaintext is never
        longer than the ciphertext it completes). The AEAD writes each frame's plaintext in
        place: no object per frame and no join, so a driver that owns a reusable buffer reads
        a socket without allocating.

        Raises:
            DecryptionFailed, SecurityError: as :meth:`decrypt`.
            ValueError: ``out`` is too small.
        """
        end = len(data)
        buf = self._rx_buf
        if len(out) < end + len(buf):
            raise ValueError("decrypt_into: output buffer too small")
        nonce = self._rx_n
        if nonce + end // 18 + 1 >= NONCE_LIMIT:
            if self._dead:
                raise DecryptionFailed("Noise transport failed earlier")
            plaintext = self._decrypt_near_limit(data)
            out[: len(plaintext)] = plaintext
            return len(plaintext)
        dec_into = self._dec_into
        pos = 0
        w = 0
        if buf:
            # Complete the frame left over from the previous read first.
            if len(buf) < 2:
                take = min(2 - len(buf), end)
                buf += data[:take]
                pos = take
                if len(buf) < 2:
                    return 0
            need = 2 + ((buf[0] << 8) | buf[1]) - len(buf)
            if end - pos < need:
                buf += data[pos:]
                return 0
            with memoryview(data) as mv:
                buf += mv[pos : pos + need]
            pos += need
            flen = len(buf) - 2
            if flen < TAG_LEN:
                raise self._die(DecryptionFailed("Noise transport frame shorter than its tag"))
            w = flen - TAG_LEN
            try:
                with memoryview(buf) as bmv, bmv[2:] as frame, out[:w] as dst:
                    dec_into(_pack_nonce(nonce), frame, None, dst)
            except InvalidTag:
                raise self._die(
                    DecryptionFailed("Noise transport frame failed authentication")
                ) from None
            nonce += 1
            buf.clear()
        with memoryview(data) as mv:
            while end - pos >= 2:
                flen = (data[pos] << 8) | data[pos + 1]
                stop = pos + 2 + flen
                if stop > end:
                    break
                if flen < TAG_LEN:
                    self._rx_n = nonce
                    raise self._die(DecryptionFailed("Noise transport frame shorter than its tag"))
                size = flen - TAG_LEN
                try:
                    dec_into(_pack_nonce(nonce), mv[pos + 2 : stop], None, out[w : w + size])
                except InvalidTag:
                    raise self._die(
                        DecryptionFailed("Noise transport frame failed authentication")
                    ) from None
                nonce += 1
                w += size
                pos = stop
            self._rx_n = nonce
            if pos < end:
                buf += mv[pos:]
        return w

    def _decrypt_near_limit(self, data: bytes | bytearray | memoryview) -> bytes:
        """The slow path near nonce exhaustion: one frame at a time, limit checked each."""
        buf = self._rx_buf
        buf += data
        out: list[bytes] = []
        while len(buf) >= 2:
            stop = 2 + ((buf[0] << 8) | buf[1])
            if stop > len(buf):
                break
            frame = bytes(buf[2:stop])
            del buf[:stop]
            out.append(self._open(frame))
        return b"".join(out)

    def _open(self, frame: bytes | memoryview) -> bytes:
        """Decrypt one frame body (slow path: frames spanning reads, nonce near the limit)."""
        nonce = self._rx_n
        if nonce >= NONCE_LIMIT:
            raise self._refuse()
        try:
            plaintext = self._dec(_pack_nonce(nonce), frame, None)
        except InvalidTag:
            raise self._die(
                DecryptionFailed("Noise transport frame failed authentication")
            ) from None
        self._rx_n = nonce + 1
        return plaintext


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NoiseEvent:
    """Base class of Noise events. Not meant to be subclassed outside this module."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeCompleted(NoiseEvent):
    """The handshake succeeded and the peer is authenticated."""

    remote_peer: PeerId
    """The peer ID derived from the remote identity key."""
    remote_public_key: PublicKey
    """The remote libp2p identity key (its signature over the static key was verified)."""
    muxer: str | None
    """The muxer agreed in the handshake, or None: negotiate it with multistream-select."""
    transport: NoiseTransport
    """The cipher states for the data path."""
    trailing_data: bytes
    """Raw bytes read after the last handshake message: feed them to ``transport.decrypt``."""


# --- handshake machine ----------------------------------------------------------------------


class _State(enum.Enum):
    AWAIT_MSG1 = "await-msg1"  # responder
    AWAIT_MSG2 = "await-msg2"  # initiator
    AWAIT_MSG3 = "await-msg3"  # responder
    DONE = "done"
    ERROR = "error"


def _match_muxers(initiator: Sequence[str], responder: Sequence[str]) -> str | None:
    if not initiator or not responder:
        return None
    for muxer in initiator:
        if muxer in responder:
            return muxer
    raise NegotiationFailed(
        "no stream muxer in common: we offer "
        f"{', '.join(initiator)}; the responder offers {', '.join(responder)}"
    )


class NoiseStaticKey:
    """An X25519 static key reused across handshakes, with its libp2p signature.

    The handshake payload (identity key, signature over the static key, muxer list) is
    encoded once per muxer list instead of once per handshake, saving a key generation, an
    Ed25519 signature and the payload encoding on every connection. js-libp2p likewise keeps
    one static key per node; go makes one per session. Reuse costs no forward secrecy: the
    session keys also mix the ephemeral-ephemeral DH, and the static key never leaves memory.
    """

    __slots__ = ("_payloads", "_signature", "identity", "peer_id", "private", "public")

    def __init__(self, identity: PrivateKey, private: X25519PrivateKey | None = None) -> None:
        self.identity = identity
        self.peer_id = identity.peer_id
        self.private = private if private is not None else X25519PrivateKey.generate()
        self.public = self.private.public_key().public_bytes_raw()
        self._signature = identity.sign(SIGNATURE_PREFIX + self.public)
        self._payloads: dict[tuple[str, ...], bytes] = {}

    def payload(self, muxers: tuple[str, ...]) -> bytes:
        """The encoded handshake payload offering ``muxers`` (cached per list)."""
        out = self._payloads.get(muxers)
        if out is None:
            extensions = NoiseExtensions(stream_muxers=muxers) if muxers else None
            out = encode_payload(
                NoiseHandshakePayload(
                    identity_key=self.identity.public_key.to_protobuf(),
                    identity_sig=self._signature,
                    extensions=extensions,
                )
            )
            if len(self._payloads) < 8:
                self._payloads[muxers] = out
        return out


class NoiseHandshake:
    """A libp2p Noise XX handshake, initiator or responder (see the module docstring).

    Args:
        initiator: True on the dialing side.
        identity: this node's libp2p identity key (signs the static key).
        expected_peer: the peer we must be talking to. The initiator should always pass the
            dialed peer ID (the spec's MUST); the responder usually passes None.
        muxers: muxers to offer for early negotiation, in order of preference; empty to not
            offer any (then the result is always None).
        static_key: the X25519 static key (default: a fresh one per session, as go does).
        ephemeral_key: the X25519 ephemeral key (default: fresh); for tests only.
        static: a :class:`NoiseStaticKey` of ``identity`` to reuse (its key and cached
            payload); excludes ``static_key``.
    """

    def __init__(
        self,
        initiator: bool,
        identity: PrivateKey,
        *,
        expected_peer: PeerId | None = None,
        muxers: Sequence[str] = ("/yamux/1.0.0",),
        static_key: X25519PrivateKey | None = None,
        ephemeral_key: X25519PrivateKey | None = None,
        static: NoiseStaticKey | None = None,
    ) -> None:
        if isinstance(muxers, str):
            raise LocalProtocolError("muxers must be a sequence of names, not a str")
        if any(not m for m in muxers):
            raise LocalProtocolError("empty muxer name")
        self.initiator = initiator
        self._identity = identity
        self._expected = expected_peer
        self._muxers = tuple(muxers)
        if static is not None:
            if static_key is not None or static.identity is not identity:
                raise LocalProtocolError("static must belong to identity, without static_key")
            self._s = static.private
            self._s_pub = static.public
        else:
            self._s = static_key if static_key is not None else X25519PrivateKey.generate()
            self._s_pub = self._s.public_key().public_bytes_raw()
        self._static = static
        #: Our own peer ID (from ``static`` when given: derived once per key, not per session).
        self.local_peer = static.peer_id if static is not None else identity.peer_id
        self._e = ephemeral_key if ephemeral_key is not None else X25519PrivateKey.generate()
        self._e_pub = self._e.public_key().public_bytes_raw()
        self._re = b""
        self._ss = _SymmetricState()
        self._buf = bytearray()
        self._out = bytearray()
        self._events: list[NoiseEvent] = []
        if initiator:
            # -> e, with an empty payload (EncryptAndHash of nothing still mixes the hash).
            self._ss.mix_hash(self._e_pub)
            self._ss.mix_hash(b"")
            self._out += _pack_len(DH_LEN) + self._e_pub
            self._state = _State.AWAIT_MSG2
        else:
            self._state = _State.AWAIT_MSG1

    # C2 contract ------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float = 0.0) -> None:
        """Feed bytes read from the peer (``b""`` means EOF).

        Raises:
            RemoteProtocolError, DecryptionFailed, SecurityError, PeerIdMismatch,
            NegotiationFailed: see the module docstring; the machine is then terminal.
            LocalProtocolError: called after the machine finished or failed.
        """
        del now
        if self._state is _State.DONE:
            raise LocalProtocolError("Noise handshake already finished", protocol=PROTOCOL_ID)
        if self._state is _State.ERROR:
            raise LocalProtocolError("Noise handshake failed earlier", protocol=PROTOCOL_ID)
        try:
            if not data:
                raise RemoteProtocolError(
                    "connection closed during the Noise handshake", protocol=PROTOCOL_ID
                )
            self._buf += data
            self._process()
        except BaseException:
            self._state = _State.ERROR
            self._buf.clear()
            self._out.clear()
            raise

    def next_event(self) -> NoiseEvent | None:
        return self._events.pop(0) if self._events else None

    def events(self) -> Iterator[NoiseEvent]:
        while self._events:
            yield self._events.pop(0)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        """No timers: the driver bounds the handshake with a deadline."""
        return None

    def handle_timer(self, now: float) -> None:
        del now

    @property
    def is_finished(self) -> bool:
        return self._state is _State.DONE

    # message handling ---------------------------------------------------------------------

    def _next_message(self, min_len: int, max_len: int) -> bytes | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        length = (buf[0] << 8) | buf[1]
        if not min_len <= length <= max_len:
            raise RemoteProtocolError(
                f"Noise handshake message of {length} bytes, expected {min_len}..{max_len}",
                protocol=PROTOCOL_ID,
            )
        if len(buf) < 2 + length:
            return None
        msg = bytes(buf[2 : 2 + length])
        del buf[: 2 + length]
        return msg

    def _process(self) -> None:
        if self._state is _State.AWAIT_MSG1:
            msg = self._next_message(DH_LEN, DH_LEN)
            if msg is None:
                return
            self._read_msg1(msg)
            self._write_msg2()
            self._state = _State.AWAIT_MSG3
        if self._state is _State.AWAIT_MSG2:
            msg = self._next_message(_MSG2_MIN, MAX_HANDSHAKE_MESSAGE)
            if msg is None:
                return
            peer, key, remote_muxers = self._read_msg2(msg)
            muxer = _match_muxers(self._muxers, remote_muxers)
            self._write_msg3()
            k1, k2 = self._ss.split()
            self._finish(peer, key, muxer, NoiseTransport(send_key=k1, recv_key=k2))
        elif self._state is _State.AWAIT_MSG3:
            msg = self._next_message(_MSG3_MIN, MAX_HANDSHAKE_MESSAGE)
            if msg is None:
                return
            peer, key, remote_muxers = self._read_msg3(msg)
            muxer = _match_muxers(remote_muxers, self._muxers)
            k1, k2 = self._ss.split()
            self._finish(peer, key, muxer, NoiseTransport(send_key=k2, recv_key=k1))

    def _finish(
        self, peer: PeerId, key: PublicKey, muxer: str | None, transport: NoiseTransport
    ) -> None:
        trailing = bytes(self._buf)
        self._buf.clear()
        self._state = _State.DONE
        self._events.append(
            HandshakeCompleted(
                remote_peer=peer,
                remote_public_key=key,
                muxer=muxer,
                transport=transport,
                trailing_data=trailing,
            )
        )

    def _our_payload(self) -> bytes:
        if self._static is not None:
            return self._static.payload(self._muxers)
        signature = self._identity.sign(SIGNATURE_PREFIX + self._s_pub)
        extensions = NoiseExtensions(stream_muxers=self._muxers) if self._muxers else None
        return encode_payload(
            NoiseHandshakePayload(
                identity_key=self._identity.public_key.to_protobuf(),
                identity_sig=signature,
                extensions=extensions,
            )
        )

    def _read_msg1(self, msg: bytes) -> None:
        # -> e   (the message is exactly the ephemeral key: the payload must be empty)
        self._re = msg
        self._ss.mix_hash(self._re)
        self._ss.mix_hash(b"")

    def _write_msg2(self) -> None:
        # <- e, ee, s, es, payload
        ss = self._ss
        ss.mix_hash(self._e_pub)
        ss.mix_key(_dh(self._e, self._re))
        enc_s = ss.encrypt_and_hash(self._s_pub)
        ss.mix_key(_dh(self._s, self._re))
        enc_payload = ss.encrypt_and_hash(self._our_payload())
        body = self._e_pub + enc_s + enc_payload
        self._out += _pack_len(len(body)) + body

    def _read_msg2(self, msg: bytes) -> tuple[PeerId, PublicKey, tuple[str, ...]]:
        ss = self._ss
        self._re = msg[:DH_LEN]
        ss.mix_hash(self._re)
        ss.mix_key(_dh(self._e, self._re))
        rs = ss.decrypt_and_hash(msg[DH_LEN : 2 * DH_LEN + TAG_LEN])
        ss.mix_key(_dh(self._e, rs))
        payload = ss.decrypt_and_hash(msg[2 * DH_LEN + TAG_LEN :])
        return self._verify(payload, rs)

    def _write_msg3(self) -> None:
        # -> s, se, payload
        ss = self._ss
        enc_s = ss.encrypt_and_hash(self._s_pub)
        ss.mix_key(_dh(self._s, self._re))
        enc_payload = ss.encrypt_and_hash(self._our_payload())
        body = enc_s + enc_payload
        self._out += _pack_len(len(body)) + body

    def _read_msg3(self, msg: bytes) -> tuple[PeerId, PublicKey, tuple[str, ...]]:
        ss = self._ss
        rs = ss.decrypt_and_hash(msg[: DH_LEN + TAG_LEN])
        ss.mix_key(_dh(self._e, rs))
        payload = ss.decrypt_and_hash(msg[DH_LEN + TAG_LEN :])
        return self._verify(payload, rs)

    def _verify(
        self, raw_payload: bytes, remote_static: bytes
    ) -> tuple[PeerId, PublicKey, tuple[str, ...]]:
        payload = decode_payload(raw_payload)
        if not payload.identity_key:
            raise RemoteProtocolError(
                "Noise handshake payload without identity key", protocol=PROTOCOL_ID
            )
        key = PublicKey.from_protobuf(payload.identity_key)
        peer = PeerId.from_public_key(key)
        if self._expected is not None and peer != self._expected:
            raise PeerIdMismatch(
                f"expected peer {self._expected}, the remote is {peer}", peer_id=peer
            )
        if not key.verify(SIGNATURE_PREFIX + remote_static, payload.identity_sig):
            raise SecurityError("Noise static key signature is invalid: terminating", peer_id=peer)
        ext = payload.extensions
        muxers = () if ext is None or ext.muxers_overflow else ext.stream_muxers
        return peer, key, muxers


__all__ = [
    "MAX_HANDSHAKE_MESSAGE",
    "MAX_PLAINTEXT",
    "NONCE_LIMIT",
    "PROTOCOL_ID",
    "PROTOCOL_NAME",
    "SEAL_IN_PLACE",
    "SIGNATURE_PREFIX",
    "HandshakeCompleted",
    "NoiseEvent",
    "NoiseHandshake",
    "NoiseStaticKey",
    "NoiseTransport",
]
