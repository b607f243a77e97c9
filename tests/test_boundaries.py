"""Product code outside core/compat uses only the public APIs of its dependencies, and no
product module imports itself back through others.

Read from the source (the AST) of every product module: no module outside core/compat
imports a private name of another package, reads or calls another object's private
attribute (Django's documented `_meta` aside), or assigns to an attribute of something it
imported (a module, or a class from another package). Patches of upstreams live in
core/compat, each version-guarded with canary tests (docs/compat.md). And the imports of
product modules (at any level, a function's included; type-only ones aside) form no circle:
an import put inside a function to dodge one still counts.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("core", "jobs", "notifications", "celery_app.py", "manage.py")
EXEMPT = ("core/compat/", "jobs/migrations/")
OWN_PACKAGES = {"core", "jobs", "notifications", "celery_app", "tests", "bench"}
PUBLIC_PRIVATE_NAMES = {"_meta"}  # Django documents Model._meta (the Options API) as public


def product_modules() -> Iterator[Path]:
    for entry in PRODUCT:
        path = ROOT / entry
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if not relative.startswith(EXEMPT):
                yield file


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def root_name(node: ast.expr) -> str | None:
    """The name an attribute chain starts from: `a` in `a.b.c`."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def foreign_imports(tree: ast.Module) -> set[str]:
    """Names this module binds by importing another package (a module or anything in one)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] not in OWN_PACKAGES:
                    names.add((alias.asname or alias.name).split(".")[0])
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.split(".")[0] not in OWN_PACKAGES
        ):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    foreign = foreign_imports(tree)
    found: list[str] = []

    def where(node: ast.AST) -> str:
        return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in OWN_PACKAGES:
                continue
            if any(is_private(part) for part in node.module.split(".")):
                found.append(f"{where(node)}: imports from the private module {node.module}")
            found += [
                f"{where(node)}: imports the private name {alias.name} from {node.module}"
                for alias in node.names
                if is_private(alias.name)
            ]
        elif isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in PUBLIC_PRIVATE_NAMES:
            base = node.value
            if isinstance(base, ast.Name) and base.id in {"self", "cls"}:
                continue
            if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
                continue
            found.append(f"{where(node)}: uses the private attribute {ast.unparse(node)}")
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and root_name(target) in foreign:
                    found.append(f"{where(node)}: assigns to {ast.unparse(target)}, which it imported")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"setattr", "delattr"}
            and node.args
            and root_name(node.args[0]) in foreign
        ):
            found.append(f"{where(node)}: {node.func.id} on {ast.unparse(node.args[0])}, which it imported")
    return found


def test_the_checker_finds_each_kind_of_use_of_an_upstreams_internals(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from channels_redis.utils import _consistent_hash\n"
        "from twisted.internet import tcp\n"
        "from redis import asyncio as aioredis\n"
        "tcp.Connection.write = print\n"
        "setattr(aioredis, 'x', 1)\n"
        "def f(connection):\n"
        "    return connection._tempDataLen + self._ok + Job._meta.db_table\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = violations(sample)
    finally:
        ROOT = saved
    assert len(found) == 4, found
    assert any("_consistent_hash" in line for line in found)
    assert any("tcp.Connection.write" in line for line in found)
    assert any("setattr on aioredis" in line for line in found)
    assert any("connection._tempDataLen" in line for line in found)


@pytest.mark.parametrize("path", list(product_modules()), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_product_code_outside_compat_uses_only_public_apis(path: Path) -> None:
    assert violations(path) == []


# --- no import circles ------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The product modules a module imports anywhere in it (outside `if TYPE_CHECKING:`),
    each as the most specific module name that exists."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                add(f"{node.module}.{alias.name}")
    return found


def import_circles() -> list[list[str]]:
    paths = {module_name(path): path for path in product_modules()}
    graph = {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(name: str) -> None:
        state[name] = 1
        path.append(name)
        for imported in sorted(graph[name]):
            if state.get(imported) == 1:
                circles.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                walk(imported)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)
    return circles


def test_product_modules_import_each_other_in_no_circle() -> None:
    assert import_circles() == []
