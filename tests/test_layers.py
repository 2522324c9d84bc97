"""Imports run one way through src/cord (docs/architecture.md, "Layout"): a package imports only
packages listed before it in LAYERS, counting imports inside functions; none imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cord"

#: bottom to top; a package may import itself, the package root (``cord``: CordError) and
#: anything to its left
LAYERS = ("types", "paths", "locking", "progress", "judges", "objectives", "config", "data", "rollout",
          "models", "train", "eval", "mini", "reproduce", "cli")


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(src: Path = SRC) -> dict[tuple[str, str], list[str]]:
    """(importer package, imported package) -> files, for every cord import under ``src``."""
    edges: dict[tuple[str, str], list[str]] = {}
    known = {p.stem for p in src.iterdir() if p.suffix == ".py"} | {p.name for p in src.iterdir() if p.is_dir()}
    for path in src.rglob("*.py"):
        rel = path.relative_to(src.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        importer = _package(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")[: len(module.split(".")) - node.level + (rel.name == "__init__")]
                    names = [".".join(base + ([node.module] if node.module else []))]
                else:
                    names = [node.module or ""]
                if names[0] == "cord":  # from cord import types / CordError
                    names = [f"cord.{a.name}" for a in node.names]
            for name in names:
                if name.startswith("cord.") or name == "cord":
                    target = _package(name)
                    if target in known and target != importer:
                        edges.setdefault((importer, target), []).append(str(path.relative_to(src)))
    return edges


def test_every_package_has_a_layer():
    packages = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
                if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").exists()}
    assert packages <= set(LAYERS), f"add {sorted(packages - set(LAYERS))} to LAYERS (and to docs/architecture.md)"


def test_imports_run_one_way():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = sorted(f"{a} -> {b} ({', '.join(sorted(set(files)))})"
                    for (a, b), files in imports().items()
                    if b in rank and a in rank and rank[b] > rank[a])
    assert not upward, "imports against the flow:\n" + "\n".join(upward)


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path):
    """Most imports against the flow hid inside functions; the check must see them."""
    root = tmp_path / "cord"
    (root / "train").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "__init__.py").write_text("")
    (root / "train" / "__init__.py").write_text("")
    (root / "models" / "__init__.py").write_text("from cord import CordError\n")
    (root / "models" / "qwen.py").write_text("def load():\n    from ..train import step\n")
    (root / "types.py").write_text("def f():\n    import cord.train.step\n")
    edges = imports(root)
    assert set(edges) == {("models", "train"), ("types", "train")}
    assert edges[("models", "train")] == ["models/qwen.py"]
