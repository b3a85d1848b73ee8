"""The import graph runs one way: each layer imports only the layers below it (docs/layout.md), and
what a device carries (runtime/, verify/, targets/) never imports the exporter or the compiler."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Bottom to top. A module of a layer may import its own layer and the layers before it.
LAYERS = ["errors", "contract", "architectures", "atomic", "arrays", "images", "platforms", "weights", "quantize", "targets", "model", "artifact", "export", "compile",
          "runtime", "verify", "bench", "cli"]
# On top of the order: what a device runs must work without the exporter and the compiler installed.
NEVER = {(low, high) for low in ("targets", "runtime", "verify") for high in ("export", "compile")}


def package_modules() -> list[Path]:
    top = [ROOT / f"{name}.py" for name in LAYERS if (ROOT / f"{name}.py").is_file()]
    return top + [p for name in LAYERS if (ROOT / name).is_dir() for p in sorted((ROOT / name).rglob("*.py"))]


def layer_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def imported_layers(path: Path) -> set[tuple[str, int]]:
    """(layer, line) of every rwkv_edge module ``path`` imports, relative or absolute, lazy ones included."""
    package = path.relative_to(ROOT).parent.parts  # the importing module's package, below rwkv_edge
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                parts = [*base, *(node.module.split(".") if node.module else [])]
                # `from .. import x`: x is a module of the root, or a name of its __init__ (__version__)
                names = [[alias.name] for alias in node.names if alias.name in LAYERS] if not parts else [parts]
            elif node.module and node.module.split(".")[0] == "rwkv_edge":
                names = [node.module.split(".")[1:]]
            else:
                continue
            found.update((n[0], node.lineno) for n in names if n)
        elif isinstance(node, ast.Import):
            found.update((a.name.split(".")[1], node.lineno) for a in node.names
                         if a.name.startswith("rwkv_edge.") and a.name.count("."))
    return found


def test_every_package_has_a_layer():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"}
    modules = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    assert packages | modules <= set(LAYERS), (packages | modules) - set(LAYERS)


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path):
    here = layer_of(path)
    for layer, line in imported_layers(path):
        assert layer in LAYERS, f"{path.relative_to(ROOT)}:{line} imports {layer}, which has no layer"
        assert (here, layer) not in NEVER, f"{path.relative_to(ROOT)}:{line}: {here} may not import {layer}"
        assert LAYERS.index(layer) <= LAYERS.index(here), \
            f"{path.relative_to(ROOT)}:{line}: {here} imports {layer}, a layer above it"


def test_the_check_sees_a_back_edge(tmp_path, monkeypatch):
    bad = ROOT / "runtime" / "_layering_probe.py"
    try:
        bad.write_text("from ..compile import tvm\nfrom ..bench import run\n")
        assert {("compile", 1), ("bench", 2)} <= imported_layers(bad)
    finally:
        bad.unlink()
