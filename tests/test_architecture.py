"""The architecture DESIGN.md draws holds in the code: one-way imports between floors (read from the source with
ast, nothing imported), no package cycle, no file over 400 lines, and a layout section that lists the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN = (ROOT / "DESIGN.md").read_text(encoding="utf-8")
MAX_LINES = 400


def _block(title: str) -> list[str]:
    """Lines of the first fenced block after the heading `title` in DESIGN.md."""
    after = DESIGN.split("\n" + title + "\n", 1)[1]
    return after.split("```", 2)[1].split("\n")[1:]


def floors() -> dict[str, int]:
    """Package or subpackage (or top-level module) -> its floor, from DESIGN.md's floor table."""
    table = {}
    for line in _block("## Floors"):
        match = re.fullmatch(r"\s*(\d+)\s+(.+?)\s*(#.*)?", line)
        if match:
            for name in match.group(2).split():
                table[name] = int(match.group(1))
    return table


FLOORS = floors()


def node_of(module: str) -> str | None:
    """The deepest package of FLOORS holding `module` (None for third-party modules)."""
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        name = ".".join(parts[:length])
        if name in FLOORS:
            return name
    return None


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file of every project module outside tests/ and bench/."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in ("tests", "bench") or any(part.startswith(".") for part in relative.parts):
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path) -> set[str]:
    """Every module `module` imports, at any depth of its code (lazy imports included), resolved to absolute."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from train import losses`
    return found


def edges() -> dict[str, set[str]]:
    """Node -> the other nodes its modules import."""
    graph: dict[str, set[str]] = {}
    for module, path in project_modules().items():
        source = node_of(module)
        assert source is not None, f"{module} ({path}) is in no floor of DESIGN.md; add its package there"
        targets = {node_of(name) for name in imports_of(module, path)} - {None, source}
        graph.setdefault(source, set()).update(targets)
    return graph


def test_design_names_the_floors_of_every_package():
    assert {"common", "features", "eval", "extract", "train", "train.losses", "train.finetune", "retrieval",
            "ablation", "demo", "pipeline"} <= set(FLOORS)
    assert set(edges()) <= set(FLOORS)


def test_imports_only_go_down_the_floors():
    wrong = [f"{source} (floor {FLOORS[source]}) imports {target} (floor {FLOORS[target]})"
             for source, targets in edges().items() for target in sorted(targets)
             if FLOORS[target] >= FLOORS[source] and not source.startswith(target + ".")]
    assert not wrong, wrong


def test_no_cycle_between_packages_or_subpackages():
    graph = edges()
    # A subpackage importing its parent's modules is one floor up: count the parent's own modules as a node.
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(trail + [node, target]))
            if target not in state:
                visit(target, trail + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_ground_floors_import_nothing_above_them():
    graph = edges()
    assert graph.get("eval", set()) == set(), "eval/ (metrics, protocols, ranks) imports nothing of ours"
    assert graph.get("common", set()) == set()
    assert graph.get("features", set()) <= {"common"}


def test_no_source_file_is_longer_than_a_sitting():
    long = {str(path.relative_to(ROOT)): lines for path in [*project_modules().values(), *ROOT.glob("bench/*.py")]
            if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def layout() -> set[str]:
    """Paths DESIGN.md's layout block lists (two spaces of indent per folder level; folders end with /)."""
    listed, folders = set(), []
    for line in _block("## Layout"):
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        folders = folders[:depth]
        path = "".join(folders) + name
        listed.add(path)
        if name.endswith("/"):
            folders.append(name)
    return listed


def test_design_layout_lists_exactly_the_tree():
    tree = {str(path.relative_to(ROOT)) for path in [*project_modules().values(), *ROOT.glob("bench/*.py")]
            if path.name != "__init__.py"}
    tree |= {f"{path.parent.relative_to(ROOT)}/" for path in ROOT.glob("**/__init__.py")
             if path.relative_to(ROOT).parts[0] != "tests"}
    listed = {entry for entry in layout() if entry.endswith(".py") or entry.endswith("/")}
    listed_dirs = {entry for entry in listed if entry.endswith("/")}
    assert {entry for entry in tree if entry.endswith(".py")} - listed == set(), "files missing from DESIGN.md"
    assert {entry for entry in listed if entry.endswith(".py")} - tree == set(), "DESIGN.md lists missing files"
    assert {entry for entry in tree if entry.endswith("/")} - listed_dirs == set(), "packages missing"
