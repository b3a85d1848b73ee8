"""The import graph runs one way: each layer imports only the layers below it (docs/layout.md), and
what a device carries (runtime/, verify/, targets/) never imports the exporter or the compiler. No
modules import each other in a circle, none imports another's private name, and weight-format,
precision, artifact-kind and backend names are compared only in their registries: elsewhere code asks
the registry's objects."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Bottom to top. A module of a layer may import its own layer and the layers before it.
LAYERS = ["errors", "contract", "architectures", "atomic", "bundled", "arrays", "state_file", "images", "tokenizer", "platforms", "quantize", "weights", "targets", "model", "artifact", "export", "compile",
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


def module_path(parts: list[str]) -> Path | None:
    """The file of module ``rwkv_edge.<parts>``: a module, or a package's __init__.py; None outside the package."""
    base = ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if parts and path.is_file():
            return path
    return None


def imported_modules(path: Path) -> list[tuple[Path, str, int]]:
    """(file, name, line) of every rwkv_edge name ``path`` imports, lazy ones included: ``from .x import
    y`` is module x's name y, or module x.y where that is a module."""
    package = list(path.relative_to(ROOT).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "rwkv_edge":
                parts = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                target = module_path([*parts, alias.name]) or module_path(parts)
                if target is not None:
                    found.append((target, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rwkv_edge.") and (target := module_path(alias.name.split(".")[1:])):
                    found.append((target, "", node.lineno))
    return found


def import_circles() -> list[list[str]]:
    """Groups of modules that import each other in a loop (Tarjan's strongly connected components), a
    package's __init__.py counted as the module it is."""
    modules = package_modules()
    edges = {p: {t for t, _, _ in imported_modules(p) if t != p} for p in modules}
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    circles = []

    def visit(node: Path) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(str(member.relative_to(ROOT)))
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for module in modules:
        if module not in index:
            visit(module)
    return circles


def test_no_import_circles():
    assert import_circles() == []


def test_no_module_imports_another_modules_private_name():
    private = [f"{path.relative_to(ROOT)}:{line} imports {name} from {target.relative_to(ROOT)}"
               for path in package_modules() for target, name, line in imported_modules(path)
               if name.startswith("_") and not name.startswith("__") and target != path]
    assert private == []


def test_the_checks_see_a_circle_a_private_import_and_a_compared_name():
    probes = [ROOT / "runtime" / "_probe_a.py", ROOT / "runtime" / "_probe_b.py"]
    try:
        probes[0].write_text("from ._probe_b import _hidden\n")
        probes[1].write_text("def _hidden():\n    from . import _probe_a\n")
        assert ["runtime/_probe_a.py", "runtime/_probe_b.py"] in import_circles()
        assert [(t.name, n) for t, n, _ in imported_modules(probes[0])] == [("_probe_b.py", "_hidden")]
        probes[1].write_text("def pick(weights, kind):\n    return weights in ('int8', 'int4') or kind != 'tvm'\n"
                             "def both(weights):\n    return {weights} & {'fp16'}\n")
        found = sorted(compared_names(probes[1]), key=lambda name_line: name_line[1])
        assert found == [("int4", 2), ("int8", 2), ("tvm", 2), ("fp16", 4)]
    finally:
        for probe in probes:
            probe.unlink()


FORMAT_NAMES = {"fp32", "fp16", "int8", "int4"}  # weights.py: weight formats and compute precisions
KIND_NAMES = {"onnx", "tvm", "coreml", "torch", "onnxruntime"}  # artifact kinds and backends
REGISTRIES = {"weights.py", "artifact/manifest.py", "runtime/registry.py"}  # where those names are defined


def compared_names(path: Path) -> list[tuple[str, int]]:
    """(name, line) of every format or kind name ``path`` compares with: ``x == "int8"``, ``k in ("tvm", ...)``,
    ``{x} & {"int8", "int4"}``."""
    def strings(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        return set().union(*map(strings, node.elts)) if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else set()

    def operands(node: ast.AST) -> list[ast.AST]:
        if isinstance(node, ast.Compare):
            return [node.left, *node.comparators]
        sets = isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr, ast.Sub))
        return [node.left, node.right] if sets else []  # {weights} & {"int8", "int4"}

    return [(name, node.lineno) for node in ast.walk(ast.parse(path.read_text())) if (found := operands(node))
            for name in sorted(set().union(*map(strings, found)) & (FORMAT_NAMES | KIND_NAMES))]


def test_format_and_kind_names_are_compared_only_in_their_registries():
    found = [f"{path.relative_to(ROOT)}:{line} compares with {name!r}" for path in package_modules()
             if str(path.relative_to(ROOT)) not in REGISTRIES for name, line in compared_names(path)]
    assert found == []


def test_every_package_is_in_the_distribution():
    """A non-editable install (the README's first command) holds only the packages pyproject.toml lists."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    def packages(directory: Path) -> set[str]:  # the package at ``directory`` and those below it
        name = ".".join(("rwkv_edge", *directory.relative_to(ROOT).parts))
        return {name}.union(*(packages(d) for d in directory.iterdir() if (d / "__init__.py").is_file()))

    found = {name for name in packages(ROOT) if not name.startswith("rwkv_edge.tests")}
    assert found - listed == set()
