"""Run every fuzz target in this folder for FUZZTIME seconds each.

Each target is a module ``fuzz_*.py`` exposing ``TARGET(data: bytes) -> None`` whose
invariant is "parses, or raises RemoteProtocolError, nothing else".

Engines (``FUZZ_ENGINE``): ``atheris`` runs each target coverage-guided in its own process,
seeded with the target's ``SEEDS`` (the default when atheris is installed); ``random`` feeds
random and mutated seed inputs in-process (the fallback where atheris does not install).

Usage: ``FUZZTIME=30 python3 fuzz/run.py [fuzz_name ...]``.
"""

from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys
import tempfile
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


def _atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_atheris_one(name: str, budget: float) -> None:
    """Run one target under atheris in this process (atheris exits when done)."""
    import atheris

    with atheris.instrument_imports(include=["glueberry"]):
        mod = importlib.import_module(f"fuzz.{name}")
    target: Callable[[bytes], None] = mod.TARGET

    def one_input(data: bytes) -> None:
        try:
            target(data)
        except RemoteProtocolError:
            pass

    corpus = Path(tempfile.mkdtemp(prefix=f"glueberry-{name}-"))
    for i, seed in enumerate(getattr(mod, "SEEDS", [])):
        (corpus / f"seed{i}").write_bytes(seed)
    args = [sys.argv[0], f"-max_total_time={max(1, int(budget))}", "-rss_limit_mb=2048"]
    atheris.Setup([*args, str(corpus)], one_input)
    atheris.Fuzz()


def main() -> int:
    budget = float(os.environ.get("FUZZTIME", "10"))
    args = sys.argv[1:]
    if args[:1] == ["--atheris-one"]:
        run_atheris_one(args[1], budget)
        return 0
    engine = os.environ.get("FUZZ_ENGINE") or ("atheris" if _atheris_available() else "random")
    targets = sorted(p.stem for p in HERE.glob("fuzz_*.py"))
    failed = []
    for name in targets:
        if args and name not in args:
            continue
        if engine == "atheris":
            proc = subprocess.run(
                [sys.executable, __file__, "--atheris-one", name],
                capture_output=True,
                text=True,
                check=False,
            )
            tail = [ln for ln in proc.stderr.splitlines() if ln.startswith(("#", "Done"))][-1:]
            print(f"{name}: atheris exit {proc.returncode} {' '.join(tail)}")
            if proc.returncode != 0:
                print(proc.stderr[-4000:], file=sys.stderr)
                failed.append(name)
            continue
        mod = importlib.import_module(f"fuzz.{name}")
        seeds: list[bytes] = list(getattr(mod, "SEEDS", []))
        run_target(name, mod.TARGET, seeds, budget)
    if failed:
        print(f"fuzz targets with findings: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
