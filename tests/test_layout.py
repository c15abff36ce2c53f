"""The imports of ur point down the flow of data, as DESIGN.md's layout says.

Every ``import`` and ``from ... import`` in ur/, at module level or inside a function,
is an arrow from one part to another; a forbidden arrow fails with the file and line.
"""

import ast
from pathlib import Path

UR = Path(__file__).resolve().parents[1] / "ur"

# What each part may import besides itself. Parts not listed (cli, lightning_cli) see
# everything.
ALLOWED = {
    "io": set(),
    "training": set(),
    "callbacks": set(),
    "data": {"io"},
    "models": {"io", "training"},
    "pretrain": {"io", "training", "callbacks", "data", "models"},
    "reward": {"io", "training", "callbacks", "data", "models"},
    "construct": {"io", "training", "callbacks", "data", "models", "reward"},
    "align": {"io", "training", "callbacks", "data", "models"},
    "runs": {"io"},
    "sweeps": {"io", "runs"},
    "results": {"io", "runs", "data"},
    "loop": {"io", "data", "reward", "construct"},  # chains ur commands; reads their outputs
}


def part(module: str) -> str | None:
    names = module.split(".")
    return names[1] if names[0] == "ur" and len(names) > 1 else None


def arrows():
    for path in sorted(UR.rglob("*.py")):
        rel = path.relative_to(UR.parent).with_suffix("")
        here = part(".".join(rel.parts))
        if here is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                there = part(target)
                if there is not None and there != here:
                    yield here, there, f"{rel}.py:{node.lineno}"


def test_every_import_points_down_the_flow():
    forbidden = sorted({f"{where}: {here} -> {there}" for here, there, where in arrows()
                        if here in ALLOWED and there not in ALLOWED[here]})
    assert not forbidden, "imports DESIGN.md forbids:\n" + "\n".join(forbidden)


def test_the_check_sees_lazy_imports():
    """The walk finds imports inside functions too (the command line imports lazily)."""
    found = {(here, there) for here, there, _ in arrows()}
    assert ("cli", "pretrain") in found and ("lightning_cli", "pretrain") in found
