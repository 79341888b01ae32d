"""The package's layers only point down (docs/architecture.md), checked on every import.

Every ``import`` and ``from ... import`` in the package, at module level or inside a function,
is read from the source; an import of a higher layer (or of a same-layer area not listed as
allowed) fails the test with the file and the imported module. Lazy imports count: they are
dependencies all the same.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "vla_cache_ros"

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors"}),
    frozenset({"compute", "stages", "stamps", "topics", "geometry", "synthetic",
               "image_conversion", "subprocesses"}),
    frozenset({"models"}),
    frozenset({"cache"}),
    frozenset({"policy", "control"}),
    frozenset({"runs", "runtime", "replay", "sim", "training", "serving"}),
    frozenset({"ros"}),
    frozenset({"apps"}),
)
"""Areas from the bottom up: top-level modules and sub-packages of ``vla_cache_ros``."""

SAME_LAYER = {("sim", "replay"), ("training", "sim"), ("training", "replay"), ("runtime", "serving")}
"""Imports allowed between areas of one layer (the simulator records bags; training reads its
dataset, and the learned cache's self-distillation reads a user's bags; the runtime's remote
backend is the policy server's client)."""


def layer_of(area: str) -> int:
    for index, areas in enumerate(LAYERS):
        if area in areas:
            return index
    raise AssertionError(f"area {area!r} is in no layer: add it to LAYERS")


def area_of_module(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "vla_cache_ros" or len(parts) < 2:
        return None
    return parts[1]


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            if node.module == "vla_cache_ros":  # from vla_cache_ros import topics
                found += [f"vla_cache_ros.{alias.name}" for alias in node.names]
    return found


def package_files(root: Path = ROOT) -> list[tuple[str, Path]]:
    files = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).parts
        if relative == ("__init__.py",):
            continue
        files.append((relative[0].removesuffix(".py"), path))
    return files


def test_every_area_has_a_layer() -> None:
    for area, _ in package_files():
        layer_of(area)


def upward_imports(root: Path = ROOT) -> list[str]:
    """Every import in the package under ``root`` that does not point down."""
    upward = []
    for area, path in package_files(root):
        for module in imports(path):
            target = area_of_module(module)
            if target is None or target == area or (area, target) in SAME_LAYER:
                continue
            if layer_of(target) >= layer_of(area):
                upward.append(f"{path.relative_to(root.parent)} imports {module}")
    return upward


def test_imports_only_point_down() -> None:
    upward = upward_imports()
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    """The check itself: a lazy import of the apps from the control layer is reported."""
    package = tmp_path / "vla_cache_ros"
    (package / "control").mkdir(parents=True)
    (package / "apps").mkdir()
    (package / "control" / "loop.py").write_text(
        "def run():\n    from vla_cache_ros.apps.demo import NODE_NAME\n    return NODE_NAME\n")
    (package / "apps" / "demo.py").write_text("from vla_cache_ros.control import loop\n")
    assert upward_imports(package) == ["vla_cache_ros/control/loop.py imports "
                                       "vla_cache_ros.apps.demo"]
