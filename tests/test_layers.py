"""The import graph of the three packages (docs/layers.md): no cycle, and each layer imports only the layers below it."""

import ast
import re
from pathlib import Path

from conftest import REPO

#: Package name -> source folder, as pyproject's package-dir maps them.
ROOTS = {"tinysam_edge": REPO / "tinysam_edge", "tinysam_edge.models": REPO / "models", "tinysam_edge.quantize": REPO / "quantize"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its file (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    resolved = set()
    for target in targets:
        while target not in known and "." in target:
            target = target.rsplit(".", 1)[0]
        if target in known and target != name:
            resolved.add(target)
    return resolved


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], 0
    for root, children in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(children)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 60  # the walk found the packages
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can fail


def test_layers_import_only_downwards():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("tinysam_edge.models"):
            assert not {d for d in deps if d.startswith(("tinysam_edge.label", "tinysam_edge.serve", "tinysam_edge.cli"))}, name
        runtime = not name.startswith(("tinysam_edge.models", "tinysam_edge.quantize", "tinysam_edge.cli"))
        if runtime:  # the edge runtime stands alone: the torch side and the apps sit on it, never under it
            assert not {d for d in deps if d.startswith(("tinysam_edge.models", "tinysam_edge.quantize"))}, name
        if name.startswith("tinysam_edge.") and name.split(".")[1] not in ("cli", "serve", "label", "models", "quantize", "__main__"):
            assert not {d for d in deps if d.startswith(("tinysam_edge.cli", "tinysam_edge.serve", "tinysam_edge.label"))}, name


def test_one_openvino_core_per_process():
    """Only ``devices.shared_core`` makes an ``ov.Core``: two Cores freed in creation order leave the thread on an unmapped
    signal stack, and the next signal kills the process (docs/robustness.md). Tests are held to it too."""
    pattern = re.compile(r"\b(?:ov|openvino)\.Core\(\)")
    makers = [
        f"{path.relative_to(REPO)}:{number}"
        for folder in ("tinysam_edge", "models", "quantize", "demos", "tests")
        for path in (REPO / folder).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) and "re.compile" not in line
    ]
    assert len(makers) == 1 and makers[0].startswith("tinysam_edge/devices.py:"), makers
