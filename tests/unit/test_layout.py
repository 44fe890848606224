"""The production path stays lean: `wigzo-pipeline run` loads no development tooling."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"

_SCRIPT = """
import sys
from pipeline.cli import main
code = main(["run", "--bootstrap-servers", "127.0.0.1:1"])
print(code)
print(" ".join(sorted(name for name in sys.modules if name.startswith("pipeline"))))
"""


def test_run_imports_no_development_tooling() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WIGZO_", "KAFKA_"))}
    result = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60, check=True)
    code, modules = result.stdout.splitlines()[-2:]
    loaded = set(modules.split())
    assert code == "2", "without a token `run` stops at its configuration check, after importing everything it uses"
    assert {"pipeline.ops.run", "pipeline.ops.member", "pipeline.kafka.pipeline", "pipeline.wigzo.client"} <= loaded
    assert not {name for name in loaded if name.startswith("pipeline.dev")}, loaded


def test_the_workers_supervisor_loads_neither_kafka_nor_http() -> None:
    """It only starts, watches and restarts members: each member loads the pipeline in its own process."""
    script = ("import sys, pipeline.ops.run, pipeline.ops.supervisor; "
              "print(' '.join(sorted(m for m in ('confluent_kafka', 'requests', 'fastavro', 'pipeline.kafka.pipeline') "
              "if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True)
    assert result.stdout.strip() == ""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every `pipeline` module that `path` imports anywhere: at the top, inside functions or under
    TYPE_CHECKING, since each of those ties the two modules together."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            imported.add(base)
            imported.update(f"{base}.{alias.name}" for alias in node.names)  # `from package import module`
    return (imported & modules) - {name}


def _shortest_cycle(start: str, graph: dict[str, list[str]], avoid: set[str]) -> list[str] | None:
    """The shortest import path from `start` back to itself that passes through no module in `avoid`."""
    trails = deque([[start]])
    seen = {start}
    while trails:
        trail = trails.popleft()
        for target in graph[trail[-1]]:
            if target == start:
                return [*trail, start]
            if target not in seen and target not in avoid:
                seen.add(target)
                trails.append([*trail, target])
    return None


def _import_cycles() -> list[list[str]]:
    """Import cycles among the package's modules: the shortest through each module not named in one already."""
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: sorted(_imported_modules(path, set(paths))) for name, path in paths.items()}
    cycles: list[list[str]] = []
    named: set[str] = set()
    for start in sorted(graph):
        if start not in named and (cycle := _shortest_cycle(start, graph, named)):
            cycles.append(cycle)
            named.update(cycle)
    return cycles


def test_no_module_in_the_package_imports_itself_through_others() -> None:
    """An import cycle makes import order matter and hides which module is the lower layer; a lazy import
    inside a function or one under TYPE_CHECKING counts too, since the two modules still depend on each other."""
    cycles = _import_cycles()
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)
