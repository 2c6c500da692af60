"""The layout rules of docs/DESIGN.md, checked on the source: the library's modules import each
other without a cycle, the runtime library imports nothing from train/ or export/, nothing
imports those two by their top-level names, and DESIGN.md's layout map matches the tree."""

import ast
import subprocess
from pathlib import Path

import pytest

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


def tree_files() -> list[str]:
    """The checkout's files, tracked or new, without what git ignores (venvs, build outputs)."""
    try:
        command = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
        listed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [path for path in listed.stdout.splitlines() if (REPO / path).exists()]


def test_no_file_imports_train_or_export_by_their_top_level_names():
    """train/ and export/ install as reblur_deploy.train and reblur_deploy.export; importing
    them as `train` or `export` too would load every module twice in one process."""
    for path in tree_files():
        if not path.endswith(".py"):
            continue
        for node in ast.walk(ast.parse((REPO / path).read_text(), path)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for top in {name.split(".")[0] for name in names} & {"train", "export"}:
                raise AssertionError(f"{path}:{node.lineno}: import reblur_deploy.{top}, not {top}")


MAP_COLUMN = 24  # where the descriptions start in DESIGN.md's map; deeper text continues one


def design_map() -> set[str]:
    """The folders and modules docs/DESIGN.md's layout map lists, as paths from the repo root."""
    text = (REPO / "docs" / "DESIGN.md").read_text()
    block = text.split("## Layout and who may import whom", 1)[1].split("```")[1]
    listed: set[str] = set()
    parents: list[str] = []  # the folder of each indentation level above this line
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        if not line.strip() or indent >= MAP_COLUMN:
            continue
        name = line.split()[0]
        parents[indent // 2 :] = [name]
        base = "".join(parents[:-1])
        parts = name.rstrip("/").split("/")  # "plugin/python/" lists both folders
        listed.update(base + "/".join(parts[: i + 1]) for i in range(len(parts)))
    return listed


def tree_map() -> set[str]:
    """What the map must list: every top-level folder; in the package (train/ and export/ too)
    every folder and every module but __init__.py, except inside the data folder assets/."""
    expected = set()
    for path in tree_files():
        parts = path.split("/")
        if len(parts) < 2 or parts[0].startswith("."):
            continue
        expected.add(parts[0])
        if parts[0] not in ("reblur_deploy", "train", "export"):
            continue
        if parts[:2] == ["reblur_deploy", "assets"]:
            expected.add("reblur_deploy/assets")
            continue
        expected.update("/".join(parts[:i]) for i in range(2, len(parts)))
        if path.endswith(".py") and parts[-1] != "__init__.py":
            expected.add(path)
    return expected


def test_design_md_maps_every_folder_and_module_of_the_tree():
    listed, expected = design_map(), tree_map()
    assert not expected - listed, f"missing from docs/DESIGN.md's map: {sorted(expected - listed)}"
    gone = sorted(p for p in listed if not (REPO / p).exists())
    assert not gone, f"docs/DESIGN.md's map lists what the tree does not have: {gone}"
