"""The package's architecture, checked: a ground floor, wings above it, imports only going down, no cycle.

Every import is read from the source with ast, function-level (lazy) imports included, so a cycle hidden
inside a function is caught as well."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "LLM_fine_turning" / "psydt_lora"
# lowest first; a module may import its own floor and the floors below it, never one above
FLOORS = {"": 0, "data": 1, "safety": 2, "train": 3, "inference": 4, "evaluation": 5, "judge": 6, "export": 6}
TOP = {"psydt_lora.train_cli", "psydt_lora.infer_cli", "psydt_lora.judge_cli"}  # the programs may import anything


def module_name(path: Path, root: Path = PKG.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = PKG.parent) -> set:
    """psydt_lora modules that `path` imports anywhere in its body, as dotted names."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("psydt_lora"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("psydt_lora"):
                for a in node.names:  # `from psydt_lora.data import samples` names a module, not an attribute
                    sub = f"{base}.{a.name}"
                    found.add(sub if (root / (sub.replace(".", "/") + ".py")).exists() else base)
    found.discard(name)
    return found


def floor_of(module: str) -> int:
    parts = module.split(".")
    wing = parts[1] if len(parts) > 2 else ""
    assert wing in FLOORS, f"{module}: wing {wing!r} has no floor in tests/test_layout.py -- give it one"
    return FLOORS[wing]


GRAPH = {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def test_every_wing_has_a_floor():
    wings = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert wings <= set(FLOORS), wings - set(FLOORS)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_go_down(module):
    if module in TOP:
        return
    up = [m for m in GRAPH[module] if m not in TOP and floor_of(m) > floor_of(module)]
    wrong = [m for m in GRAPH[module] if m in TOP]
    assert not up and not wrong, f"{module} imports upward: {up + wrong}"


def test_no_import_cycle():
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if n in GRAPH:
                visit(n)
        stack.pop()

    for m in sorted(GRAPH):
        visit(m)
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """A cycle could hide in a function-level or relative import: the walker must read both."""
    wing = tmp_path / "psydt_lora" / "data"
    wing.mkdir(parents=True)
    (tmp_path / "psydt_lora" / "prompt.py").write_text("")
    (wing / "samples.py").write_text("")
    (wing / "packing.py").write_text(
        "def f():\n    from .samples import Sample\n    from psydt_lora import prompt\n")
    assert imports_of(wing / "packing.py", tmp_path) == {"psydt_lora.data.samples", "psydt_lora.prompt"}
