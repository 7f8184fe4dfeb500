"""Micro-benchmark of the Noise transport: encrypt/decrypt throughput in one process.

Not a test. Prints MB/s (10^6 bytes per second) and messages per second for
``NoiseTransport.encrypt`` and ``NoiseTransport.decrypt`` at 1 KiB and 64 KiB, plus the raw
ChaCha20-Poly1305 call for comparison (the floor any Python Noise can reach), and a batched
case: 64 x 1 KiB coalesced into one frame, as the secured connection's write path does.

Run: python3 bench/micro_noise.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from glueberry.proto.noise import NoiseTransport


def best_rate(run: Callable[[], int], seconds: float, rounds: int = 5) -> float:
    """Best of ``rounds`` windows of items per second; ``run()`` does some items, returns how many.

    The best window is reported because the machine is shared: a slower window measures the
    neighbours, not this code.
    """
    best = 0.0
    for _ in range(rounds):
        n = 0
        t0 = time.perf_counter()
        while True:
            n += run()
            dt = time.perf_counter() - t0
            if dt >= seconds / rounds:
                break
        best = max(best, n / dt)
    return best


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn``."""

    def run() -> int:
        for _ in range(100):
            fn()
        return 100

    return best_rate(run, seconds)


def decrypt_rate(frames: list[bytes], key_a: bytes, key_b: bytes, seconds: float) -> float:
    """Decrypt calls per second over ``frames`` (in order), replayed with a reset nonce."""
    rx = NoiseTransport(key_b, key_a)
    dec = rx.decrypt

    def run() -> int:
        rx._rx_n = 0  # replay the same in-order frames (benchmark only)
        for f in frames:
            dec(f)
        return len(frames)

    return best_rate(run, seconds)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=0.5)
    secs = ap.parse_args().seconds
    key_a, key_b = os.urandom(32), os.urandom(32)
    aead = ChaCha20Poly1305(key_a)
    nonce = bytes(12)
    print(f"{'case':<36} {'msgs/s':>12} {'MB/s':>10} {'us/msg':>8}")

    def show(name: str, per_s: float, size: int) -> None:
        print(f"{name:<36} {per_s:>12,.0f} {per_s * size / 1e6:>10,.0f} {1e6 / per_s:>8.2f}")

    for size in (1024, 65536):
        data = os.urandom(size)
        tx = NoiseTransport(key_a, key_b)
        ct = aead.encrypt(nonce, data, None)
        seal = functools.partial(aead.encrypt, nonce, data, None)
        open_ = functools.partial(aead.decrypt, nonce, ct, None)
        show(f"raw AEAD seal {size} B", rate(seal, secs), size)
        show(f"raw AEAD open {size} B", rate(open_, secs), size)
        show(f"encrypt {size} B", rate(functools.partial(tx.encrypt, data), secs), size)
        sender = NoiseTransport(key_a, key_b)
        frames = [sender.encrypt(data) for _ in range(200)]
        show(f"decrypt {size} B", decrypt_rate(frames, key_a, key_b, secs), size)

    # Coalesced: 64 messages of 1 KiB sealed as one frame and opened in one call.
    batch = os.urandom(65519)
    tx = NoiseTransport(key_a, key_b)
    show("encrypt 1 KiB msgs, 64 per frame", rate(lambda: tx.encrypt(batch), secs) * 64, 1024)
    sender = NoiseTransport(key_a, key_b)
    frames = [sender.encrypt(batch) for _ in range(100)]
    show("decrypt 1 KiB msgs, 64 per frame", decrypt_rate(frames, key_a, key_b, secs) * 64, 1024)
    # One 256 KiB socket read holding 4 full frames; and the same split at odd offsets.
    sender = NoiseTransport(key_a, key_b)
    wire = b"".join(sender.encrypt(os.urandom(4 * 65519)) for _ in range(25))
    even = [wire[k : k + 4 * 65537] for k in range(0, len(wire), 4 * 65537)]
    show("decrypt 256 KiB reads, aligned", decrypt_rate(even, key_a, key_b, secs), 4 * 65519)
    odd = [wire[k : k + 262144] for k in range(0, len(wire), 262144)]
    show("decrypt 256 KiB reads, unaligned", decrypt_rate(odd, key_a, key_b, secs), 262144 - 72)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
