"""Glueberry v1 crypto: the reference §2.9 vectors, Go's acceptance rules, cipher and cache."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from glueberry.errors import DecryptionFailed, SecurityError, StreamClosed
from glueberry.peers import crypto
from glueberry.peers.crypto import KeyCache, StreamCipher
from glueberry.proto import gb_framing
from glueberry.wire.identity import PrivateKey

H = bytes.fromhex

SEED_A = b"\x01" * 32
SEED_B = b"\x02" * 32
ED_PUB_A = H("8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c")
ED_PUB_B = H("8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394")
X_PRIV_A = H("58e86efb75fa4e2c410f46e16de9f6acae1a1703528651b69bc176c088bef36e")
X_PUB_A = H("1b1b58dd50ea14b60da17b790cd02754d970c9bab864ebb3c0f3016fe51d3f57")
X_PRIV_B = H("a83c626bc9c38c8c201878ebb1d5b0b50ac40e8986c78793db1d4ef369fca14e")
X_PUB_B = H("60346e7c911a5f6ba154129174cafe75b294ac3bbd5549632f48cec6266f8410")
SHARED = H("4181d7302557342bdb6d061c4b1eebea828ecb625c3368b7111680793307220b")
STREAM_KEY = H("5b7eb24d827b5976a95a65a1ec53336267eabd7288f6868fcc46e7ff1d9c19d3")
FIXED_NONCE = H("000102030405060708090a0b")
BLOB = H("000102030405060708090a0b80fbe2bb10b02de5c3016a4d05403eaf2b73581a81")
FRAME = H("2221000102030405060708090a0b80fbe2bb10b02de5c3016a4d05403eaf2b73581a81")

P = 2**255 - 19


def test_identities_of_the_vectors() -> None:
    a, b = PrivateKey.from_seed(SEED_A), PrivateKey.from_seed(SEED_B)
    assert a.public_key.data == ED_PUB_A
    assert b.public_key.data == ED_PUB_B
    assert str(a.peer_id) == "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"
    assert str(b.peer_id) == "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"


@pytest.mark.parametrize(
    ("seed", "ed_pub", "x_priv", "x_pub"),
    [(SEED_A, ED_PUB_A, X_PRIV_A, X_PUB_A), (SEED_B, ED_PUB_B, X_PRIV_B, X_PUB_B)],
)
def test_conversion_vectors(seed: bytes, ed_pub: bytes, x_priv: bytes, x_pub: bytes) -> None:
    assert crypto.ed25519_private_to_x25519(seed) == x_priv
    assert crypto.ed25519_private_to_x25519(seed + ed_pub) == x_priv  # Go's 64-byte form
    assert crypto.ed25519_private_to_x25519(PrivateKey.from_seed(seed)) == x_priv
    assert crypto.ed25519_public_to_x25519(ed_pub) == x_pub
    # The birational map agrees with the clamped scalar times the base point.
    derived = X25519PrivateKey.from_private_bytes(x_priv).public_key().public_bytes_raw()
    assert derived == x_pub


def test_ecdh_hkdf_and_key_vectors() -> None:
    assert crypto.x25519_shared_secret(X_PRIV_A, X_PUB_B) == SHARED
    assert crypto.x25519_shared_secret(X_PRIV_B, X_PUB_A) == SHARED
    assert crypto.derive_stream_key(SHARED) == STREAM_KEY
    assert crypto.derive_shared_key(SEED_A, ED_PUB_B) == STREAM_KEY
    assert crypto.derive_shared_key(PrivateKey.from_seed(SEED_B), ED_PUB_A) == STREAM_KEY


def test_seal_vector_with_fixed_nonce() -> None:
    cipher = StreamCipher(STREAM_KEY)
    assert cipher.seal(b"hello", nonce=FIXED_NONCE) == BLOB
    assert StreamCipher(STREAM_KEY, nonce_source=lambda: FIXED_NONCE).seal(b"hello") == BLOB
    assert cipher.open(BLOB) == b"hello"
    assert len(BLOB) == 33


def test_frame_vector_with_fixed_nonce() -> None:
    cipher = StreamCipher(STREAM_KEY, nonce_source=lambda: FIXED_NONCE)
    assert bytes(gb_framing.encode_encrypted_frame(cipher, b"hello")) == FRAME
    assert gb_framing.encode_frame(BLOB) == FRAME
    dec = gb_framing.FrameDecoder(max_payload=1024)
    assert [cipher.open(p) for p in dec.receive_data(FRAME)] == [b"hello"]


def test_identity_point_maps_to_zero_and_ecdh_refuses_it() -> None:
    identity = b"\x01" + bytes(31)
    assert crypto.ed25519_public_to_x25519(identity) == bytes(32)
    with pytest.raises(SecurityError):
        crypto.derive_shared_key(SEED_A, identity)


def test_all_zero_ed25519_key_is_low_order() -> None:
    # y = 0 maps to u = 1, a low-order point: the shared secret is all zeros.
    assert crypto.ed25519_public_to_x25519(bytes(32)) == (1).to_bytes(32, "little")
    with pytest.raises(SecurityError):
        crypto.derive_shared_key(SEED_A, bytes(32))


def test_public_key_length_is_checked() -> None:
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(SecurityError):
            crypto.ed25519_public_to_x25519(bad)
    with pytest.raises(SecurityError):
        crypto.ed25519_private_to_x25519(bytes(31))


def _on_curve(y: int) -> bool:
    d = (-121665 * pow(121666, P - 2, P)) % P
    x2 = (y * y - 1) * pow(d * y * y + 1, P - 2, P) % P
    return x2 == 0 or pow(x2, (P - 1) // 2, P) == 1


def test_go_acceptance_rules() -> None:
    # The sign bit is ignored: flipping it gives the same Montgomery u.
    flipped = ED_PUB_A[:31] + bytes([ED_PUB_A[31] ^ 0x80])
    assert crypto.ed25519_public_to_x25519(flipped) == X_PUB_A
    # Non-canonical y >= p is reduced mod p (y = p + 1 encodes the identity, y = 1).
    non_canonical = (P + 1).to_bytes(32, "little")
    assert crypto.ed25519_public_to_x25519(non_canonical) == bytes(32)
    # A y with no x on the curve is refused; one with an x is accepted.
    off = next(y for y in range(2, 100) if not _on_curve(y))
    on = next(y for y in range(2, 100) if _on_curve(y))
    with pytest.raises(SecurityError):
        crypto.ed25519_public_to_x25519(off.to_bytes(32, "little"))
    crypto.validate_ed25519_public_key(on.to_bytes(32, "little"))


@given(st.binary(min_size=32, max_size=32))
def test_public_conversion_matches_curve_membership(pk: bytes) -> None:
    y = (int.from_bytes(pk, "little") & ((1 << 255) - 1)) % P
    if _on_curve(y):
        u = int.from_bytes(crypto.ed25519_public_to_x25519(pk), "little")
        assert u < P
        assert u * (1 - y) % P == (1 + y) % P or y == 1
    else:
        with pytest.raises(SecurityError):
            crypto.ed25519_public_to_x25519(pk)


@given(st.binary(min_size=32, max_size=32))
def test_conversion_commutes_with_base_point(seed: bytes) -> None:
    key = PrivateKey.from_seed(seed)
    x_priv = crypto.ed25519_private_to_x25519(key)
    expected = X25519PrivateKey.from_private_bytes(bytes(x_priv)).public_key().public_bytes_raw()
    assert crypto.ed25519_public_to_x25519(key.public_key.data) == expected


def test_cipher_round_trip_and_random_nonces() -> None:
    cipher = StreamCipher(os.urandom(32))
    blobs = [cipher.seal(b"x" * n) for n in (0, 1, 1000)]
    assert [len(b) for b in blobs] == [28, 29, 1028]
    assert [cipher.open(b) for b in blobs] == [b"", b"x", b"x" * 1000]
    nonces = {cipher.seal(b"")[:12] for _ in range(3 * crypto.NONCE_POOL_SIZE)}
    assert len(nonces) == 3 * crypto.NONCE_POOL_SIZE  # across pool refills too


def test_seal_into_appends() -> None:
    cipher = StreamCipher(STREAM_KEY, nonce_source=lambda: FIXED_NONCE)
    out = bytearray(b"hdr")
    assert cipher.seal_into(out, b"hello") == 33
    assert bytes(out) == b"hdr" + BLOB
    cipher.close()
    with pytest.raises(StreamClosed):
        cipher.seal_into(out, b"x")


def test_open_rejects_short_and_tampered() -> None:
    cipher = StreamCipher(STREAM_KEY)
    with pytest.raises(DecryptionFailed):
        cipher.open(BLOB[:27])
    for i in (0, 12, len(BLOB) - 1):
        bad = bytearray(BLOB)
        bad[i] ^= 1
        with pytest.raises(DecryptionFailed):
            cipher.open(bytes(bad))
    with pytest.raises(DecryptionFailed):
        StreamCipher(bytes(32)).open(BLOB)


def test_cipher_close_zeroes_and_refuses() -> None:
    key = bytearray(STREAM_KEY)
    cipher = StreamCipher(key)
    cipher.close()
    cipher.close()
    assert key == STREAM_KEY  # the caller's buffer is untouched
    assert cipher.closed
    assert not any(cipher._key)
    with pytest.raises(StreamClosed):
        cipher.seal(b"x")
    with pytest.raises(StreamClosed):
        cipher.open(BLOB)
    assert "5b7e" not in repr(cipher)


def test_cipher_rejects_bad_key_and_nonce() -> None:
    with pytest.raises(SecurityError):
        StreamCipher(bytes(31))
    with pytest.raises(SecurityError):
        StreamCipher(STREAM_KEY).seal(b"", nonce=bytes(11))


def test_key_cache_derives_caches_and_removes() -> None:
    seen: list[bool] = []
    cache = KeyCache(PrivateKey.from_seed(SEED_A), on_derive=seen.append)
    assert cache.x25519_public_key == X_PUB_A
    assert cache.shared_key(ED_PUB_B) == STREAM_KEY
    assert cache.shared_key(bytearray(ED_PUB_B)) == STREAM_KEY
    assert seen == [False, True]
    assert ED_PUB_B in cache and len(cache) == 1
    assert cache.cipher(ED_PUB_B).open(BLOB) == b"hello"
    stored = cache._keys[ED_PUB_B]
    assert cache.remove(ED_PUB_B)
    assert not any(stored)
    assert not cache.remove(ED_PUB_B)
    assert len(cache) == 0
    with pytest.raises(SecurityError):
        cache.shared_key(bytes(32))
    assert len(cache) == 0


def test_key_cache_is_bounded() -> None:
    cache = KeyCache(SEED_A, max_entries=2)
    keys = [PrivateKey.generate().public_key.data for _ in range(3)]
    for k in keys:
        cache.shared_key(k)
    assert len(cache) == 2
    assert keys[0] not in cache
    assert keys[2] in cache


def test_key_cache_close_never_touches_caller_key() -> None:
    seed = bytearray(SEED_A)
    cache = KeyCache(seed)
    cache.shared_key(ED_PUB_B)
    cache.close()
    assert seed == SEED_A
    assert len(cache) == 0
    assert not any(cache._x_priv)
    with pytest.raises(SecurityError):
        cache.shared_key(ED_PUB_B)
    assert repr(cache) == "KeyCache(entries=0)"
