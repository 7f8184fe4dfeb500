"""Glueberry v1 stream encryption: Ed25519 → X25519, ECDH, HKDF and ChaCha20-Poly1305.

Reference: ``glueberry-go-v1.md`` §2 (the Go library ``pkg/crypto``), RFC 7748 (X25519),
RFC 5869 (HKDF), RFC 8439 (ChaCha20-Poly1305).

Theory of operation
-------------------
One Ed25519 identity key is both the libp2p identity and the application key. Two peers that
know each other's Ed25519 public keys derive one symmetric stream key:

1. ``x_priv = clamp(SHA-512(seed)[0:32])`` — the Ed25519 secret scalar, reused as an X25519
   private key (:func:`ed25519_private_to_x25519`).
2. ``x_pub = (1 + y) / (1 − y) mod p`` where ``y`` is read from the peer's Ed25519 public key,
   with exactly the acceptance rules of the Go library (filippo.io/edwards25519 v1.1.0): the
   top bit is ignored, non-canonical ``y ≥ p`` is reduced, the point must be on the curve, and
   there is no small-order or subgroup check (:func:`ed25519_public_to_x25519`).
3. ``shared = X25519(x_priv, x_pub)``; an all-zero result (a low-order peer key) is refused.
4. ``key = HKDF-SHA256(IKM=shared, salt=None, info=b"glueberry-v1-stream-key", L=32)``.

The same key serves both directions, every stream and every session between the same two
identities (static-static: no forward secrecy; see the reference §2.10). Each message is sealed
as ``nonce(12) ‖ ciphertext ‖ tag(16)`` with an empty AAD (:class:`StreamCipher`).

Nonces are 96 random bits, as in Go. To keep ``os.urandom`` off the per-message path they are
drawn from a process-wide pool refilled with one ``os.urandom`` call per
:data:`NONCE_POOL_SIZE` messages. Handing out nonces is atomic under the GIL (a C-level
iterator), so no two callers ever receive the same pooled nonce, and the pool is discarded in
a forked child so parent and child never share nonces.

Key hygiene (best effort)
-------------------------
Python cannot guarantee that secrets are wiped: ``bytes`` are immutable, the interpreter may
copy buffers, and ``cryptography`` keeps its own internal copy of every key. This module keeps
its own long-lived copies (the X25519 private scalar, cached shared keys, a cipher's key) in
``bytearray`` objects and overwrites them with zeros when they are dropped; short-lived
intermediates are zeroed where they are mutable. Key material is never logged and never
appears in a ``repr``.

Unlike the Go library (reference §2.5), :class:`KeyCache` is keyed by the peer's Ed25519 public
key and entries are removed explicitly (and evicted beyond a size bound), so keys for peers
that never entered the address book cannot leak.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from glueberry.errors import DecryptionFailed, SecurityError, StreamClosed
from glueberry.wire.identity import PrivateKey

__all__ = [
    "HKDF_INFO",
    "KEY_SIZE",
    "NONCE_POOL_SIZE",
    "NONCE_SIZE",
    "OVERHEAD",
    "TAG_SIZE",
    "KeyCache",
    "StreamCipher",
    "derive_shared_key",
    "derive_stream_key",
    "ed25519_private_to_x25519",
    "ed25519_public_to_x25519",
    "validate_ed25519_public_key",
    "x25519_shared_secret",
    "zero",
]

NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
KEY_SIZE: Final = 32
#: Bytes an encrypted blob adds to its plaintext: nonce + Poly1305 tag.
OVERHEAD: Final = NONCE_SIZE + TAG_SIZE
#: HKDF ``info`` string of glueberry v1 (23 ASCII bytes).
HKDF_INFO: Final = b"glueberry-v1-stream-key"
#: Nonces drawn from one ``os.urandom`` call.
NONCE_POOL_SIZE: Final = 4096

# Curve25519 / edwards25519 field and curve constants (RFC 7748, RFC 8032).
_P: Final = 2**255 - 19
_D: Final = (-121665 * pow(121666, _P - 2, _P)) % _P
_Y_MASK: Final = (1 << 255) - 1


def zero(buf: bytearray | memoryview) -> None:
    """Overwrite a mutable buffer with zeros (best effort; see the module docstring)."""
    buf[:] = bytes(len(buf))


# --- key conversion ------------------------------------------------------------------


def _seed_of(key: PrivateKey | bytes | bytearray) -> bytes:
    if isinstance(key, PrivateKey):
        return key.seed
    if len(key) in (32, 64):
        return bytes(key[:32])
    raise SecurityError("Ed25519 private key must be a 32-byte seed or 64-byte seed‖public")


def ed25519_private_to_x25519(key: PrivateKey | bytes | bytearray) -> bytearray:
    """X25519 private key of an Ed25519 identity: ``clamp(SHA-512(seed)[0:32])``.

    Args:
        key: a :class:`~glueberry.wire.identity.PrivateKey`, a 32-byte seed, or Go's 64-byte
            ``seed‖public`` form (the public half is not consulted, as in Go).

    Returns:
        The 32-byte clamped scalar as a ``bytearray`` the caller should :func:`zero` when done.

    Raises:
        SecurityError: ``key`` has the wrong length.
    """
    digest = bytearray(hashlib.sha512(_seed_of(key)).digest())
    scalar = digest[:32]
    zero(digest)
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    return scalar


def _y_of(public_key: bytes | bytearray) -> int:
    if len(public_key) != 32:
        raise SecurityError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
    # The top bit is the sign of x, which the Montgomery map does not need; a non-canonical
    # y >= p is reduced, exactly as filippo.io/edwards25519 does.
    y = (int.from_bytes(public_key, "little") & _Y_MASK) % _P
    # On the curve iff x^2 = (y^2 - 1) / (d*y^2 + 1) has a root. d*y^2 + 1 is never 0 because d
    # is not a square, so (y^2 - 1) * (d*y^2 + 1) has the same quadratic character as x^2.
    yy = y * y % _P
    w = (yy - 1) * (_D * yy + 1) % _P
    if w != 0 and pow(w, (_P - 1) // 2, _P) != 1:
        raise SecurityError("Ed25519 public key is not a point on the curve")
    return y


def validate_ed25519_public_key(public_key: bytes | bytearray) -> None:
    """Check what Go's ``ValidateEd25519PublicKey`` checks: 32 bytes, on the curve.

    Raises:
        SecurityError: wrong length, or not a curve point.
    """
    _y_of(public_key)


def ed25519_public_to_x25519(public_key: bytes | bytearray) -> bytes:
    """Montgomery ``u`` of an Ed25519 public key: ``(1 + y) / (1 − y) mod p``.

    The inverse of 0 is taken as 0, so the identity point (``y = 1``) maps to 32 zero bytes,
    which :func:`x25519_shared_secret` then refuses.

    Raises:
        SecurityError: wrong length, or not a curve point.
    """
    y = _y_of(public_key)
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def x25519_shared_secret(x25519_private: bytes | bytearray, x25519_public: bytes) -> bytearray:
    """``X25519(private, public)``, refusing an all-zero (low-order) result.

    Raises:
        SecurityError: the peer key is of low order (the shared secret would be all zeros).
    """
    priv = X25519PrivateKey.from_private_bytes(bytes(x25519_private))
    return _exchange(priv, x25519_public)


def _exchange(priv: X25519PrivateKey, x25519_public: bytes) -> bytearray:
    try:
        shared = bytearray(priv.exchange(X25519PublicKey.from_public_bytes(x25519_public)))
    except ValueError as exc:  # OpenSSL refuses an all-zero result itself
        raise SecurityError("X25519 produced an all-zero output (low-order point)") from exc
    if not any(shared):
        raise SecurityError("X25519 produced an all-zero output (low-order point)")
    return shared


def derive_stream_key(shared_secret: bytes | bytearray) -> bytearray:
    """``HKDF-SHA256(IKM=shared_secret, salt=None, info=HKDF_INFO, L=32)``."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=HKDF_INFO)
    return bytearray(hkdf.derive(bytes(shared_secret)))


def derive_shared_key(
    local_key: PrivateKey | bytes | bytearray, peer_public_key: bytes | bytearray
) -> bytearray:
    """The glueberry v1 stream key between ``local_key`` and a peer's Ed25519 public key.

    Returns:
        32 bytes as a ``bytearray`` (zero it when done).

    Raises:
        SecurityError: the peer key is malformed, not on the curve, or of low order.
    """
    x_priv = ed25519_private_to_x25519(local_key)
    try:
        shared = x25519_shared_secret(x_priv, ed25519_public_to_x25519(peer_public_key))
    finally:
        zero(x_priv)
    try:
        return derive_stream_key(shared)
    finally:
        zero(shared)


# --- nonces ---------------------------------------------------------------------------

_NONCE_SLICES: Final = tuple(
    slice(i, i + NONCE_SIZE) for i in range(0, NONCE_SIZE * NONCE_POOL_SIZE, NONCE_SIZE)
)


class _NoncePool:
    """Random 12-byte nonces, one ``os.urandom`` call per :data:`NONCE_POOL_SIZE`.

    ``next()`` is a C-level ``map`` iterator over a fresh random buffer: advancing it cannot be
    interrupted by another thread, so every pooled nonce is handed out at most once. Two
    threads that both find the pool empty both refill it; each refill is fresh randomness.
    """

    __slots__ = ("next",)

    def __init__(self) -> None:
        self.next: Callable[[], bytes] = self.refill

    def refill(self) -> bytes:
        buf = os.urandom(NONCE_SIZE * NONCE_POOL_SIZE)
        it: Iterator[bytes] = map(buf.__getitem__, _NONCE_SLICES)
        self.next = it.__next__
        return next(it)

    def take(self) -> bytes:
        try:
            return self.next()
        except StopIteration:
            return self.refill()

    def reset(self) -> None:
        """Forget the pooled nonces (used in a forked child)."""
        self.next = self.refill


_POOL: Final = _NoncePool()
os.register_at_fork(after_in_child=_POOL.reset)


# --- the per-stream cipher -----------------------------------------------------------


class StreamCipher:
    """ChaCha20-Poly1305 with glueberry v1 framing of the sealed blob.

    ``seal(plaintext)`` returns ``nonce(12) ‖ ciphertext ‖ tag(16)`` (empty AAD);
    ``open(blob)`` reverses it. One instance may be shared by every stream of a peer: it keeps
    no per-message state. It is meant to be used from one thread (the event loop), although
    nonce allocation itself is thread-safe.

    Args:
        key: the 32-byte stream key (copied; the caller's buffer is not modified).
        nonce_source: for tests only — returns the nonce for each :meth:`seal`. By default
            nonces are random (see the module docstring).
    """

    __slots__ = ("_aead", "_key", "_nonce_source")

    def __init__(
        self,
        key: bytes | bytearray | memoryview,
        *,
        nonce_source: Callable[[], bytes] | None = None,
    ) -> None:
        if len(key) != KEY_SIZE:
            raise SecurityError(f"stream key must be {KEY_SIZE} bytes")
        self._key = bytearray(key)
        self._aead: ChaCha20Poly1305 | None = ChaCha20Poly1305(bytes(self._key))
        self._nonce_source = nonce_source

    def _nonce(self, nonce: bytes | None) -> bytes:
        if nonce is not None:
            if len(nonce) != NONCE_SIZE:
                raise SecurityError("nonce must be 12 bytes")
            return nonce
        if self._nonce_source is not None:
            return self._nonce_source()
        try:
            return _POOL.next()
        except StopIteration:
            return _POOL.refill()

    def seal(
        self, plaintext: bytes | bytearray | memoryview, *, nonce: bytes | None = None
    ) -> bytes:
        """Encrypt ``plaintext``; returns ``nonce ‖ ciphertext ‖ tag``.

        Args:
            nonce: a fixed nonce, for test vectors only. Never reuse a nonce under one key.

        Raises:
            StreamClosed: the cipher was closed.
        """
        aead = self._aead
        if aead is None:
            raise StreamClosed("cipher is closed")
        n = self._nonce(nonce)
        return n + aead.encrypt(n, plaintext, None)

    def seal_into(self, out: bytearray, plaintext: bytes | bytearray | memoryview) -> int:
        """Append ``nonce ‖ ciphertext ‖ tag`` to ``out``; return the number of bytes added.

        The batch path: a run of frames is built in one growing buffer, one call per message
        (the pooled nonce is taken inline). Measured: with ``cryptography`` 50, appending
        ``encrypt()``'s result is faster than ``encrypt_into`` a preallocated buffer, whose
        memoryview slicing costs more than the copy it saves.
        """
        aead = self._aead
        if aead is None:
            raise StreamClosed("cipher is closed")
        source = self._nonce_source
        if source is None:
            try:
                n = _POOL.next()
            except StopIteration:
                n = _POOL.refill()
        else:
            n = source()
        out += n
        out += aead.encrypt(n, plaintext, None)
        return len(plaintext) + OVERHEAD

    def open(self, blob: bytes | bytearray | memoryview) -> bytes:
        """Authenticate and decrypt ``nonce ‖ ciphertext ‖ tag``.

        Raises:
            DecryptionFailed: shorter than 28 bytes, or the tag does not verify (wrong key,
                corruption or tampering).
            StreamClosed: the cipher was closed.
        """
        aead = self._aead
        if aead is None:
            raise StreamClosed("cipher is closed")
        if len(blob) < OVERHEAD:
            raise DecryptionFailed(
                f"ciphertext too short: minimum {OVERHEAD} bytes, got {len(blob)}"
            )
        view = memoryview(blob)
        try:
            return aead.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], None)
        except InvalidTag:
            raise DecryptionFailed(
                "decryption failed: authentication tag mismatch or corrupted data"
            ) from None

    def open_frames(
        self, view: memoryview, offsets: list[int]
    ) -> tuple[list[bytes], int, DecryptionFailed | None]:
        """Decrypt many blobs of one buffer: ``view[offsets[2i]:offsets[2i+1]]``, in order.

        The receive path's batch form of :meth:`open` (one call per read, not per message).
        Returns the plaintexts that authenticated, the number of blobs that did not (too
        short or a bad tag; they are skipped, the batch goes on) and the first such failure.

        Raises:
            StreamClosed: the cipher was closed.
        """
        aead = self._aead
        if aead is None:
            raise StreamClosed("cipher is closed")
        decrypt = aead.decrypt
        out: list[bytes] = []
        append = out.append
        failures = 0
        first: DecryptionFailed | None = None
        for i in range(0, len(offsets), 2):
            start = offsets[i]
            end = offsets[i + 1]
            mid = start + NONCE_SIZE
            if end - start >= OVERHEAD:
                try:
                    append(decrypt(view[start:mid], view[mid:end], None))
                    continue
                except InvalidTag:
                    err = DecryptionFailed(
                        "decryption failed: authentication tag mismatch or corrupted data"
                    )
            else:
                err = DecryptionFailed(
                    f"ciphertext too short: minimum {OVERHEAD} bytes, got {end - start}"
                )
            failures += 1
            if first is None:
                first = err
        return out, failures, first

    @property
    def closed(self) -> bool:
        return self._aead is None

    def close(self) -> None:
        """Drop the AEAD and zero this object's copy of the key. Idempotent."""
        self._aead = None
        zero(self._key)

    def __repr__(self) -> str:
        return f"StreamCipher(closed={self.closed})"


# --- the key cache -------------------------------------------------------------------


class KeyCache:
    """Shared stream keys of one local identity, keyed by the peer's Ed25519 public key.

    Deriving a key costs one X25519 and one HKDF (tens of µs); the cache makes repeated
    ``prepare_streams`` cheap. Entries live until :meth:`remove` (the Node calls it when it
    forgets a peer), :meth:`clear` or :meth:`close`, and at most ``max_entries`` are kept
    (least recently used are evicted and zeroed; they are re-derived on demand).

    Args:
        local_key: this node's identity.
        max_entries: bound on cached keys.
        on_derive: called with ``cached: bool`` on every lookup (the ``key_derivation``
            metric).
    """

    def __init__(
        self,
        local_key: PrivateKey | bytes | bytearray,
        *,
        max_entries: int = 4096,
        on_derive: Callable[[bool], None] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._x_priv = ed25519_private_to_x25519(local_key)
        self._priv: X25519PrivateKey | None = X25519PrivateKey.from_private_bytes(
            bytes(self._x_priv)
        )
        #: This node's X25519 public key.
        self.x25519_public_key: bytes = self._priv.public_key().public_bytes_raw()
        self._keys: OrderedDict[bytes, bytearray] = OrderedDict()
        self._max = max_entries
        self._on_derive = on_derive
        self._lock = threading.Lock()

    def shared_key(self, peer_public_key: bytes | bytearray) -> bytes:
        """The stream key shared with the peer owning ``peer_public_key`` (Ed25519, 32 B).

        Raises:
            SecurityError: the key is malformed, not on the curve, or of low order; or the
                cache is closed.
        """
        pk = bytes(peer_public_key)
        with self._lock:
            key = self._keys.get(pk)
            if key is not None:
                self._keys.move_to_end(pk)
                if self._on_derive is not None:
                    self._on_derive(True)
                return bytes(key)
            priv = self._priv
            if priv is None:
                raise SecurityError("key cache is closed")
            shared = _exchange(priv, ed25519_public_to_x25519(pk))
            try:
                key = derive_stream_key(shared)
            finally:
                zero(shared)
            self._keys[pk] = key
            while len(self._keys) > self._max:
                zero(self._keys.popitem(last=False)[1])
        if self._on_derive is not None:
            self._on_derive(False)
        return bytes(key)

    def cipher(self, peer_public_key: bytes | bytearray) -> StreamCipher:
        """A new :class:`StreamCipher` under the key shared with that peer."""
        return StreamCipher(self.shared_key(peer_public_key))

    def remove(self, peer_public_key: bytes | bytearray) -> bool:
        """Forget (and zero) the key of one peer; returns whether it was cached."""
        with self._lock:
            key = self._keys.pop(bytes(peer_public_key), None)
        if key is None:
            return False
        zero(key)
        return True

    def clear(self) -> None:
        """Forget every cached key."""
        with self._lock:
            for key in self._keys.values():
                zero(key)
            self._keys.clear()

    def close(self) -> None:
        """Forget every key including the local X25519 scalar. The cache is unusable after.

        Unlike Go's ``Module.Close``, the caller's identity key is never modified.
        """
        self.clear()
        with self._lock:
            self._priv = None
            zero(self._x_priv)

    def __contains__(self, peer_public_key: object) -> bool:
        return isinstance(peer_public_key, bytes | bytearray) and (
            bytes(peer_public_key) in self._keys
        )

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeyCache(entries={len(self._keys)})"
