"""The library's structure: no import circle, no strategy-name branching outside the registry, no dead twins."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "fedlib"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """fedlib module -> the fedlib modules it imports (anywhere in it, functions included)."""
    mods = {_module(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                deps |= {t for t in [target] + [f"{target}.{a.name}" for a in node.names] if t in mods}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
        graph[name] = deps - {name}
    return graph


def test_no_import_circle_in_fedlib():
    graph, state, cycles = import_graph(), {}, []

    def visit(u, stack):
        state[u] = "open"
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                cycles.append(stack[stack.index(v) :] + [v])
            elif v not in state:
                visit(v, stack + [v])
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u, [u])
    assert not cycles, cycles
    assert "fedlib.strategies" in graph["fedlib.config"] and "fedlib.config" not in graph["fedlib.strategies"]


def test_no_branching_on_strategy_names_outside_the_registry():
    from fedlib.strategies import STRATEGIES

    names = "|".join(STRATEGIES)
    pattern = re.compile(rf"""(==|!=|\bin\b)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    allowed = {"strategies.py", "fedpeptao.py"}
    hits = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in PKG.rglob("*.py")
        if p.name not in allowed
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line) and "prompt_mode ==" not in line  # "lora"/"shallow" prompt modes, not strategies
    ]
    assert not hits, hits


def test_one_definition_of_each_name_list():
    """Layer roles, partition methods and strategy names are each listed once (others import them)."""
    sources = {p: p.read_text() for p in PKG.rglob("*.py")}
    for literal in ('("shared", "personal", "off")', '("iid", "dirichlet", "quantity", "reference")'):
        assert sum(s.count(literal) for s in sources.values()) == 1, literal
    assert not [p for p, s in sources.items() if re.search(r'"fedavg",\s*"fedprox",\s*"scaffold"', s)]


def test_modules_stay_small():
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
    assert all(n <= 420 for n in sizes.values()), {str(p): n for p, n in sizes.items() if n > 420}
