"""The architecture stays visible: no import cycle among agent's modules, and no stage imports a
later one (capture → windows → analysis → store → sync → supervision → pipeline → CLI), at
module level. Imports inside functions (the CLI and diagnose load stages lazily) are not counted."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parent.parent / "agent"

#: The stages in data-flow order; a module may import its own stage and earlier ones only.
STAGES: list[tuple[str, ...]] = [
    ("agent", "agent.errors", "agent.records", "agent.config", "agent.ops"),  # foundation
    ("agent.capture", "agent.filesource"),
    ("agent.windows",),
    ("agent.analysis",),  # every agent.analysis.* module
    ("agent.store",),  # every agent.store.* module
    ("agent.sync",),
    ("agent.supervise",),
    ("agent.pipeline",),
    ("agent.cli", "agent.diagnose", "agent.maintain", "agent.report", "agent.report_page", "agent.plots"),  # tools
]


def _module(path: Path) -> str:
    parts = path.relative_to(AGENT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> int:
    for i, names in enumerate(STAGES):
        if any(module == n or (n in ("agent.analysis", "agent.store") and module.startswith(n + "."))
               for n in names):
            return i
    raise AssertionError(f"{module} belongs to no stage: add it to STAGES in {__file__}")


def _imports() -> dict[str, set[str]]:
    """Module -> the agent modules it imports at module level (outside TYPE_CHECKING)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(AGENT.rglob("*.py")):
        deps: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "agent":
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == "agent")
        graph[_module(path)] = deps - {_module(path)}
    return graph


def test_no_import_cycle():
    graph = _imports()
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(module):], module]))
        if module in done:
            return
        for dep in graph.get(module, ()):
            visit(dep, [*trail, module])
        done.add(module)

    for module in graph:
        visit(module, [])


def test_no_stage_imports_a_later_one():
    later = [(m, d) for m, deps in _imports().items() for d in deps if _stage(d) > _stage(m)]
    assert later == [], f"modules importing a later stage: {later}"
