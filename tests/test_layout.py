"""The layout rules of docs/DESIGN.md, checked on the source: the library's modules import each
other without a cycle, and the runtime library imports nothing from train/ or export/."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_imports() -> dict[str, set[str]]:
    """Module-level imports of every reblur_deploy module, resolved to module names (a
    ``from . import x`` of a submodule counts as importing that submodule)."""
    modules = {}
    for path in (REPO / "reblur_deploy").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        package = name if name.endswith(".__init__") else name.rsplit(".", 1)[0]
        modules[name.removesuffix(".__init__")] = (path, package.removesuffix(".__init__"))
    graph = {}
    for name, (path, package) in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package, one level up per extra dot
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, node.module] if node.module else parts)
                else:
                    base = node.module or ""
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                deps.update(subs if len(subs) == len(node.names) else [base])
        graph[name] = deps - {name}
    return graph


def test_the_library_has_no_import_cycle():
    graph = module_imports()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in graph.get(module, ()):
            assert state.get(dep) != 1, " -> ".join([*path[path.index(dep) :], dep])
            if dep in graph and not state.get(dep):
                visit(dep, [*path, dep])
        state[module] = 2

    for module in graph:
        if not state.get(module):
            visit(module, [module])


def test_the_runtime_library_imports_nothing_from_train_or_export():
    for module, deps in module_imports().items():
        outside = {d for d in deps if d.split(".")[0] in ("train", "export")}
        assert not outside, (module, outside)
