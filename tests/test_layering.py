"""The one-way import rule (docs/architecture.md): protocol cores never do I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "glueberry"

FORBIDDEN = {
    "wire": {
        "asyncio",
        "socket",
        "time",
        "random",
        "selectors",
        "glueberry.proto",
        "glueberry.net",
        "glueberry.transport",
        "glueberry.peers",
        "glueberry.nat",
    },
    "proto": {
        "asyncio",
        "socket",
        "time",
        "random",
        "selectors",
        "glueberry.net",
        "glueberry.transport",
        "glueberry.peers",
        "glueberry.nat",
    },
    "transport": {"glueberry.net", "glueberry.peers", "glueberry.nat"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports(layer: str) -> None:
    bad = []
    for path in sorted((PKG / layer).rglob("*.py")):
        for name in _imports(path):
            for banned in FORBIDDEN[layer]:
                if name == banned or name.startswith(banned + "."):
                    # transport/quic.py drives its own sans-I/O core (architecture C7).
                    if layer == "transport" and path.name == "quic.py":
                        continue
                    bad.append(f"{path.relative_to(PKG)} imports {name}")
    assert not bad, "\n".join(bad)


def test_errors_is_a_leaf() -> None:
    assert not {n for n in _imports(PKG / "errors.py") if n.startswith("glueberry")}
