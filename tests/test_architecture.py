"""The package's shape: layers that point one way, no import cycle, modules a reader can hold.

Every module is parsed (not imported) and each ``import`` / ``from ... import`` of an mcf_fast
module, at the top or inside a function, becomes an edge of the module graph; a
``from pkg import name`` counts as an import of ``pkg.name`` when that is a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mcf_fast"
MAX_LINES = 700

#: layer -> the layers it must not import (the layout of docs/architecture.md)
FORBIDDEN = {
    "kernels": {
        "ops",
        "io",
        "metrics",
        "detection",
        "segmentation",
        "framework",
        "slide",
        "evaluation",
        "cli",
    },
    "ops": {"detection", "segmentation", "framework", "slide", "evaluation", "cli"},
    "io": {
        "kernels",
        "ops",
        "detection",
        "segmentation",
        "framework",
        "slide",
        "evaluation",
        "cli",
    },
    "metrics": {"detection", "segmentation", "framework", "slide", "evaluation", "cli"},
    "detection": {"segmentation", "framework", "slide", "evaluation", "cli"},
    "segmentation": {"detection", "framework", "slide", "evaluation", "cli"},
    "framework": {"slide", "evaluation", "cli"},
    "slide": {"evaluation", "cli"},
    "evaluation": {"cli"},
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the mcf_fast modules it imports, anywhere in its body."""
    mods = _modules(root)
    top = root.name
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == top or a.name.startswith(top + "."):
                        edges.add(a.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".")
                    base = base if is_pkg else base[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target != top and not target.startswith(top + "."):
                    continue
                edges.add(target)
                for a in node.names:
                    if f"{target}.{a.name}" in mods:
                        edges.add(f"{target}.{a.name}")
        # only the named modules count (not the package __init__ files an import also runs)
        graph[name] = {e for e in edges if e in mods and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def layer(module: str) -> str:
    """The layer a module belongs to: its first component below the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            ls, ld = layer(src), layer(dst)
            if ld == "cli" and ls not in ("cli", "__main__"):
                bad.append(f"{src} -> {dst} (only the CLI imports the CLI)")
            elif ld in FORBIDDEN.get(ls, ()):
                bad.append(f"{src} -> {dst} ({ls} must not import {ld})")
    return bad


def long_modules(root: Path = PACKAGE, limit: int = MAX_LINES) -> list[str]:
    out = []
    for name, path in _modules(root).items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n >= limit:
            out.append(f"{name}: {n} lines")
    return out


def test_the_import_graph_sees_function_local_imports():
    graph = import_graph()
    assert "mcf_fast.detection.detector" in graph["mcf_fast.framework.model"]  # in a function
    assert "mcf_fast.errors" in graph["mcf_fast.config"]  # at the top
    assert graph["mcf_fast.kernels.features"] <= {"mcf_fast._numba"}


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers_point_one_way():
    bad = layer_violations(import_graph())
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_module_is_too_long():
    long = long_modules()
    assert not long, f"modules of {MAX_LINES} lines or more:\n" + "\n".join(long)


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": set(), "c": {"b"}}, None),
    ],
)
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle


def test_layer_rules_catch_an_upward_import():
    graph = {
        "mcf_fast.ops.x": {"mcf_fast.framework.fit"},
        "mcf_fast.slide.run": {"mcf_fast.cli.common"},
        "mcf_fast.cli.seg": {"mcf_fast.cli.common"},
    }
    assert layer_violations(graph) == [
        "mcf_fast.ops.x -> mcf_fast.framework.fit (ops must not import framework)",
        "mcf_fast.slide.run -> mcf_fast.cli.common (only the CLI imports the CLI)",
    ]


def test_the_public_api_resolves_and_lists_itself():
    import mcf_fast

    names = {
        "McfError",
        "InputError",
        "ConfigError",
        "FormatError",
        "DataError",
        "DetectionConfig",
        "SegmentationConfig",
        "MCFConfig",
        "Template",
        "TemplateSet",
        "Detector",
        "Detection",
        "MCF",
        "MCFModel",
        "Prediction",
        "read_image",
    }
    assert names <= set(mcf_fast.__all__)
    assert dir(mcf_fast) == sorted(mcf_fast.__all__)
    for name in mcf_fast.__all__:
        assert getattr(mcf_fast, name) is not None
