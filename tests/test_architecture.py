"""The layout's rules, checked on the source: data flows one way, no circles, no borrowed private names, small files.

Layers, lowest first, in ``LAYERS`` below: a module may import from its own package, a lower layer, or the private
top-level machinery (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "headstart"

#: Rank of each top-level part of the package. Same rank = siblings that must not import each other.
LAYERS = {
    "_version": 0,
    "errors": 0,
    "_lazy": 0,
    "_io": 0,
    "_data_folder": 0,
    "_console": 0,
    "_validation": 0,
    "_onnx": 0,
    "_math": 0,
    "_display": 0,
    "_distributed": 0,
    "_names": 0,
    "_safetensors": 0,
    "_threads": 0,
    "data": 1,
    "features": 2,
    "reports": 3,
    "models": 4,
    "inside": 5,
    "attacks": 5,
    "workflows": 6,
    "audit": 6,
    "serve": 7,
    "cli": 8,
    "__main__": 9,
    "__init__": 9,  # the public face: lazily re-exports everything
}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for every import in the file, also those inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    result = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            result += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            result.append((base, [a.name for a in node.names], node.lineno))
    return result


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = _modules()


def _resolve(target: str, names: list[str]) -> list[str]:
    """The headstart modules an import statement reaches (``from pkg import submodule`` counts the submodule)."""
    if not target.startswith("headstart"):
        return []
    reached = [target] if target in MODULES else []
    reached += [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    return reached or [target]


def _edges() -> dict[str, set[tuple[str, int]]]:
    edges: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for module, path in MODULES.items():
        for target, names, line in _imports(path, module):
            for reached in _resolve(target, names):
                if reached != module:
                    edges[module].add((reached, line))
    return edges


def test_every_part_of_the_package_has_a_layer():
    unknown = sorted({_part(m) for m in MODULES} - set(LAYERS))
    assert not unknown, f"add these to LAYERS (and docs/ARCHITECTURE.md): {unknown}"


def test_data_flows_one_way():
    upward = []
    for module, targets in _edges().items():
        for target, line in targets:
            a, b = _part(module), _part(target)
            sibling = LAYERS[b] == LAYERS[a] and LAYERS[a] != 0  # the private machinery may use each other
            if a != b and (LAYERS[b] > LAYERS[a] or sibling) and module != "headstart":
                upward.append(
                    f"{MODULES[module].relative_to(SRC.parent)}:{line} ({a}, layer {LAYERS[a]}) imports "
                    f"{target} ({b}, layer {LAYERS[b]})"
                )
    assert not upward, "imports from the same or a higher layer:\n" + "\n".join(sorted(upward))


def test_no_import_circle():
    edges = {m: {t for t, _ in ts} for m, ts in _edges().items()}
    # A package's __init__ re-exporting its own modules is not a dependency of those modules on the package.
    edges = {
        m: {t for t in ts if not (m.startswith(t + ".") and MODULES[t].name == "__init__.py")}
        for m, ts in edges.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in MODULES:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_no_private_name_is_borrowed_from_another_package():
    borrowed = []
    for module, path in MODULES.items():
        for target, names, line in _imports(path, module):
            if (
                not target.startswith("headstart.")
                or _part(target) == _part(module)
                or (_part(target) in LAYERS and LAYERS[_part(target)] == 0)
            ):
                continue
            private = [n for n in names if n.startswith("_")] + [
                p for p in target.split(".")[2:] if p.startswith("_") and p != "__init__"
            ]
            if private:
                borrowed.append(f"{path.relative_to(SRC.parent)}:{line}: {target} {private}")
    assert not borrowed, "private names imported from another package:\n" + "\n".join(borrowed)


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_source_file_over_500_lines(path: Path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, (
        f"{path.relative_to(SRC.parent)} has {lines} lines (at most {MAX_LINES}): split it by concern"
    )


def test_the_rules_catch_what_they_should(tmp_path):
    """The checker itself: a made-up upward import and a private borrow are found."""
    module = "headstart.data.fake"
    fake = tmp_path / "fake.py"
    fake.write_text("from headstart.models.classifier import Classifier\nfrom headstart.features.extract import _x\n")
    found = _imports(fake, module)
    assert ("headstart.models.classifier", ["Classifier"], 1) in found
    assert LAYERS[_part("headstart.models.classifier")] > LAYERS[_part(module)]
    assert any(n.startswith("_") for _, names, _ in found for n in names)


def test_architecture_md_names_only_modules_that_exist():
    """docs/ARCHITECTURE.md stays true to the tree: every module it names (``pkg/module.py``) exists."""
    import re

    root = SRC.parents[1]
    doc = (root / "docs" / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`([A-Za-z_][\w/]*\.py)`", doc)) | set(re.findall(r"`([a-z_]+/[\w/]+\.py)[`:]", doc))
    missing = sorted(p for p in named if not any((base / p).is_file() for base in (SRC, root, SRC.parent)))
    assert named and not missing, f"docs/ARCHITECTURE.md names modules that do not exist: {missing}"
