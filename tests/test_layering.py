"""Layers point one way: ``kernels`` <- ``clustervig`` <- ``autotune``, ``reports`` and the CLIs;
inside ``kernels``, the shared modules below the op folders, the op folders below the registry,
and no import circle anywhere (imports inside functions count: a lazy import is still an arrow).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: package -> the project packages it must never import
FORBIDDEN = {
    "kernels": {"clustervig", "autotune", "reports"},
    "clustervig": {"autotune", "reports"},
    "autotune": {"reports"},
}

#: The parts of ``kernels``, bottom first: a module may import its own part and the parts below
#: it, never one above. ``ops`` stands for every op folder (``kernels/<op>/``); an op folder
#: imports only its own files and the shared parts, never another op folder.
KERNEL_LAYERS = (
    ("_common",),
    ("tuning_cache",),
    ("tuning", "checking"),
    ("verdicts", "native", "launches"),
    ("backend",),
    ("opdef",),
    ("ops",),
    ("registry", "reference"),
    ("resources", "selfcheck"),
    ("__init__",),
)
OP_FOLDERS = sorted(p.parent.name for p in (ROOT / "kernels").glob("*/__init__.py"))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above_it(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert not {k: v for k, v in offenders.items() if v}


# --------------------------------------------------------------------------------------------
# Inside kernels
# --------------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def kernel_import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the ``kernels`` modules it imports (relative imports resolved; ``from . import
    x`` names the module ``x`` where there is one, else the package)."""
    modules = {_module_name(p): p for p in (root / "kernels").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "kernels"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                if module.split(".")[0] != "kernels":
                    continue
                for alias in node.names:
                    child = f"{module}.{alias.name}"
                    targets.add(child if child in modules else module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _part(module: str) -> str:
    """The layer part of a ``kernels`` module: its first name below ``kernels``, ``ops`` for
    an op folder's modules, ``__init__`` for the package itself."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return "ops" if parts[1] in OP_FOLDERS else parts[1]


def _level(part: str) -> int:
    for level, parts in enumerate(KERNEL_LAYERS):
        if part in parts:
            return level
    raise AssertionError(f"kernels/{part} is in no layer of KERNEL_LAYERS: place it there")


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs up a layer or across op folders, and every circle."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = _part(module), _part(target)
            if _level(b) > _level(a):
                found.append(f"{module} -> {target}: {b} sits above {a}")
            elif a == b == "ops" and module.split(".")[1] != target.split(".")[1]:
                found.append(f"{module} -> {target}: one op folder imports another")
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append("circle: " + " -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_kernels_has_no_circle_and_no_import_running_back_up():
    assert layering_violations(kernel_import_graph()) == []


@pytest.mark.parametrize(
    "module,target",
    [
        ("kernels._common", "kernels.registry"),  # the bottom reaching the top
        ("kernels.knn.kernel", "kernels.kmeans.reference"),  # one op folder into another
        ("kernels.tuning_cache", "kernels.tuning"),  # up one layer, closing a circle
    ],
)
def test_an_added_upward_import_fails_the_check(module, target):
    graph = kernel_import_graph()
    assert layering_violations(graph) == []
    graph[module] = {*graph[module], target}
    assert layering_violations(graph)


def test_every_op_folder_is_in_the_registry_and_names_only_its_own_files():
    from kernels import registry

    folders = set()
    for op in registry.OPS:
        folder = op.kernel.launcher.split(":")[0].split(".")[1]
        folders.add(folder)
        for path in (op.kernel.launcher, op.kernel.cases, *op.kernel.tunables.values()):
            assert path.startswith(f"kernels.{folder}."), (op.name, path)
    assert folders == set(OP_FOLDERS)


def test_every_package_and_c_source_is_installed():
    """A regular install (not the editable one the tests run from) ships every op folder and its
    C twin: ``pyproject.toml`` lists the packages and the package data."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {
        _module_name(p)
        for p in ROOT.rglob("__init__.py")
        if p.relative_to(ROOT).parts[0] in ("kernels", "clustervig", "autotune", "reports")
        and "results" not in p.relative_to(ROOT).parts
    }
    assert packages == set(config["packages"])
    patterns = config["package-data"]["kernels"]
    for source in (ROOT / "kernels").rglob("*.[ch]"):
        relative = source.relative_to(ROOT / "kernels")
        assert any(relative.match(pattern) for pattern in patterns), relative
