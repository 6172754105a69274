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


def python_blocks() -> list[tuple[str, list[str]]]:
    """(folder or module the heading names, lines) of every ```python block of DESIGN.md."""
    blocks, heading = [], ""
    parts = DESIGN.split("```")
    for index, part in enumerate(parts):
        if index % 2 == 0:
            headings = re.findall(r"^## (\S+)", part, flags=re.MULTILINE)
            heading = headings[-1] if headings else heading
        elif part.startswith("python\n"):
            blocks.append((heading, part.split("\n")[1:]))
    return blocks


def _top_level_parameters(text: str) -> list[str]:
    """Parameter names of a DESIGN.md signature's argument text ('a [B, D], *, b=0.2 | Tensor') in order."""
    names, depth, piece = [], 0, ""
    for char in text + ",":
        depth += (char in "([{") - (char in ")]}")
        if char == "," and depth == 0:
            match = re.match(r"\s*\*{0,2}([A-Za-z_]\w*)", piece)
            if match and match.group(1) not in ("self", "cls"):
                names.append(match.group(1))
            piece = ""
        else:
            piece += char
    return names


def _signatures(line_text: str) -> list[tuple[str, str]]:
    """(name, argument text) of each `def name(...)` in a line of DESIGN.md (joined continuation lines)."""
    found = []
    for match in re.finditer(r"\bdef (\w+)\(", line_text):
        depth, end = 1, match.end()
        while depth and end < len(line_text):
            depth += (line_text[end] == "(") - (line_text[end] == ")")
            end += 1
        found.append((match.group(1), line_text[match.end():end - 1]))
    return found


def _code_parameters(function: ast.FunctionDef) -> list[str]:
    args = function.args
    every = [*args.posonlyargs, *args.args, *([args.vararg] if args.vararg else []), *args.kwonlyargs,
             *([args.kwarg] if args.kwarg else [])]
    return [arg.arg for arg in every if arg.arg not in ("self", "cls")]


def _definitions(path: Path) -> dict[str, ast.AST]:
    """'name' -> top-level function or class, 'Class.method' -> method, of one source file."""
    found: dict[str, ast.AST] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = node
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    found[f"{node.name}.{item.name}"] = item
    return found


def design_interface_claims() -> list[tuple[list[str], str, list[str] | None]]:
    """(candidate source files, 'name' or 'Class.method', parameter names or None for a class) of every `def`
    and `class` in DESIGN.md's python blocks. The files are those the last `# path.py` comment names (bare
    names relative to the heading's folder), else the heading's own module."""
    claims = []
    for heading, lines in python_blocks():
        folder = heading if heading.endswith("/") else heading.rsplit("/", 1)[0] + "/"
        files = [heading] if heading.endswith(".py") else []
        owner, pending = None, ""
        for line in lines:
            if line.lstrip().startswith("#"):
                named = re.findall(r"[\w/]+\.py", line)
                if named:
                    files = [name if "/" in name else folder + name for name in named]
                continue
            pending += " " + line.split("  #")[0]
            if pending.count("(") > pending.count(")"):
                continue  # a signature continues on the next line
            text, pending = pending, ""
            class_match = re.match(r"\s*class (\w+)", text)
            if class_match:
                owner = class_match.group(1)
                claims.append((files, owner, None))
                continue
            indented = line.startswith(" ") or text.startswith("     ")
            for name, arguments in _signatures(text):
                qualified = f"{owner}.{name}" if owner and indented else name
                claims.append((files, qualified, None if "..." in arguments else _top_level_parameters(arguments)))
            if not line.startswith(" ") and not text.strip().startswith(("def", "@")):
                owner = None
    return claims


def test_design_interface_blocks_match_the_code():
    claims = design_interface_claims()
    assert len(claims) > 20, "DESIGN.md's python blocks were not read"
    wrong = []
    for files, name, parameters in claims:
        definitions = {}
        for file in files:
            if (ROOT / file).is_file():
                definitions.update(_definitions(ROOT / file))
        node = definitions.get(name)
        if node is None:
            wrong.append(f"{name} is not defined in {files}")
        elif parameters is not None and isinstance(node, ast.FunctionDef) and _code_parameters(node) != parameters:
            wrong.append(f"{name}({', '.join(parameters)}) in DESIGN.md, ({', '.join(_code_parameters(node))}) "
                         f"in {files}")
    assert not wrong, "\n".join(wrong)


def test_design_states_the_store_schema_version_of_the_code():
    code = re.search(r"^SCHEMA_VERSION = (\d+)", (ROOT / "features/schema.py").read_text(), re.MULTILINE)
    stated = re.findall(r"SCHEMA_VERSION = (\d+)", DESIGN)
    assert stated and set(stated) == {code.group(1)}, (stated, code.group(1))
