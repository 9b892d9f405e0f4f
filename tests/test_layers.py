"""The package's layers: imports flow one way, and serving never loads torch or transformers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "slimship"

# Lower layers first; a module may import its own layer or any layer below it, never one above.
LAYERS = [
    {"slimship.core"},  # with slimship/__init__.py, which holds only the version
    {"slimship.train", "slimship.serve"},
    {"slimship.compress"},
    {"slimship.app"},  # pipeline, cli, commands, score, containers: everything directly in slimship/
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """The layer a slimship module belongs to: its subpackage, or 'slimship.app' for top-level modules."""
    parts = module.split(".")
    if module == "slimship":
        return "slimship.core"
    if parts[1] in ("core", "train", "serve", "compress"):
        return "slimship." + parts[1]
    return "slimship.app"


def imports_of(path: Path) -> set[str]:
    """Every slimship module a file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "slimship"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "slimship":
                found.add(node.module)
    return found


def test_imports_flow_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        for target in imports_of(path):
            if RANK[layer_of(target)] > RANK[layer_of(here)]:
                wrong.append(f"{here} imports {target} ({layer_of(here)} is below {layer_of(target)})")
            if layer_of(target) != layer_of(here) and RANK[layer_of(target)] == RANK[layer_of(here)]:
                wrong.append(f"{here} imports {target} (sibling layers stay apart)")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules():
    graph = {module_name(p): {t for t in imports_of(p)} for p in PACKAGE.rglob("*.py")}
    # module-level imports only would be stricter; every import counts here, so lazy imports cannot hide a cycle
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_serving_and_core_load_no_torch():
    script = ("import sys, slimship.core.artifact, slimship.core.data, slimship.core.metrics, slimship.core.runtime, "
              "slimship.core.report, slimship.core.config, slimship.serve.batcher, slimship.serve.limits, "
              "slimship.serve.settings, slimship.serve.store, slimship.score\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'optimum')))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_nothing_installs_outside_the_namespace():
    """Only `slimship` is a top-level package: no `train`/`serve`/`compress` to clash in site-packages."""
    for name in ("train", "compress", "serve"):
        assert not (ROOT / name / "__init__.py").exists(), f"top-level package {name}/ is back"
