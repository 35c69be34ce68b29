"""The package layout's rules, checked on the source (no imports run): no import cycles, no stage importing
another stage, every import at module level but the few kept lazy on purpose, no function over 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cot_rm", "data_synthesis", "eval")
# Stages: each may use the shared parts (cot_rm.config, protocol, schema, media, model, engine, judge, the
# train package's own modules, the toy world), never another stage's modules.
STAGES = tuple(
    "cot_rm.train.pretrain cot_rm.train.sft cot_rm.train.rft cot_rm.train.grpo cot_rm.serve data_synthesis eval".split()
)
SHARED_INSIDE_A_STAGE = ("data_synthesis.toyworld",)  # the embedded world every stage may build or read
# A stage made of others: RFT samples with GRPO's rollouts and trains with SFT's trainer (one rollout loop
# and one SFT loss, not copies that drift apart). Nothing uses RFT's modules.
COMPOSED = {"cot_rm.train.rft": ("cot_rm.train.sft", "cot_rm.train.grpo")}
# Function-level imports kept on purpose: (file, imported module). Each carries a comment saying why:
# vLLM is the GPU extra's; torch would cost `cot-rm video-info` its start-up time, and so would the
# Python API (`from cot_rm import RewardModel`) in the package every command imports.
LAZY = {
    ("cot_rm/train/grpo/vllm.py", "vllm"),
    ("cot_rm/media/video.py", "torch"),
    ("cot_rm/__init__.py", "cot_rm"),
}
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(name: str, path: Path, known: dict[str, Path]):
    """(in-package module imported, the import node, whether it sits inside a function) for `name`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and is_type_checking(node)
            for n in ast.walk(node)}  # fmt: skip
    in_function = {id(n) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(node)}  # fmt: skip
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in dict.fromkeys(targets):
            yield target, node, id(node) in in_function


def graph() -> dict[str, set[str]]:
    known = modules()
    return {n: {t for t, _, _ in imports(n, p, known) if t in known and t != n} for n, p in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def stage_of(module: str) -> str | None:
    if module.startswith(SHARED_INSIDE_A_STAGE):
        return None
    return next((s for s in STAGES if module == s or module.startswith(s + ".")), None)


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_stage_imports_another_stage():
    crossings = [
        f"{m} -> {t}" for m, targets in graph().items() for t in targets
        if stage_of(m) and stage_of(t) and stage_of(m) != stage_of(t)
        and stage_of(t) not in COMPOSED.get(stage_of(m), ())
    ]  # fmt: skip
    assert crossings == []


def test_imports_sit_at_module_level():
    known, lazy = modules(), []
    for name, path in known.items():
        rel = path.relative_to(REPO).as_posix()
        lines = path.read_text(encoding="utf-8").splitlines()
        for target, node, in_function in imports(name, path, known):
            if not in_function:
                continue
            kept = (rel, target.split(".")[0]) in LAZY and "#" in lines[node.lineno - 1]
            if not kept:
                lazy.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert lazy == []


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []
