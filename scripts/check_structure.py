"""Structure checks that import-linter's contracts do not cover: no import cycles between the
modules of erel_sync (type-checking imports included: they are couplings too), and no module
longer than MAX_LINES. Run by `make lint`; prints every offender and exits 1 if there is one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

MAX_LINES = 400
ROOT = Path(__file__).resolve().parents[1]


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(m for m in graph.modules if m.startswith("erel_sync"))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in modules:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if not child.startswith("erel_sync"):
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
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


def main() -> int:
    problems: list[str] = []
    graph = grimp.build_graph("erel_sync", exclude_type_checking_imports=False)
    for component in cycles(graph):
        problems.append("import cycle: " + " <-> ".join(component))
    for path in sorted((ROOT / "erel_sync").rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            problems.append(f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_LINES})")
    for p in problems:
        print(p)
    if not problems:
        print("structure: no import cycles, every module within", MAX_LINES, "lines")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
