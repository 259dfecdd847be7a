"""Only public APIs of dependencies.

A private name of httpx, aiohttp, toktok (or any other dependency) may change in any release; the
package pins its dependencies to their compatibility promises, which cover public names only.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"


# underscored by design and documented as public: a named tuple's methods
DOCUMENTED = frozenset({"_asdict", "_replace", "_fields", "_make", "_field_defaults"})


def _private(name: str) -> bool:
    return (name.startswith("_") and not (name.startswith("__") and name.endswith("__")) and name != "_"
            and name not in DOCUMENTED)


def _modules(root: Path) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(root.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _own_private_names(root: Path) -> set[str]:
    """Every private name the package defines itself: functions, classes, modules, attributes it
    sets on ``self``, names it assigns, ``__slots__`` and ``setattr``-style strings."""
    names = {path.stem for path in root.rglob("_*.py")} | {path.name for path in root.rglob("_*") if path.is_dir()}
    for _, tree in _modules(root):
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del)
                  and _is_self_or_super(node.value)):
                names.add(node.attr)  # ``self._x = ...``; not ``answer._content = ...`` on another's object
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _private(node.value):
                names.add(node.value)  # ``__slots__``, ``object.__setattr__(self, "_x", ...)``
    return {name for name in names if _private(name)}


def _external_names(tree: ast.Module) -> set[str]:
    """Names a module binds to a dependency (``import httpx``, ``from httpx import AsyncClient``)."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            bound |= {alias.asname or alias.name for alias in node.names}
    return bound


def private_uses(root: Path) -> list[str]:
    """``file:line: what`` for each private part of a dependency the package reaches."""
    own = _own_private_names(root)
    found: list[str] = []
    for path, tree in _modules(root):
        external = _external_names(tree)
        where = path.relative_to(root.parent)
        found += [f"{where}:{line}: {what}" for line, what in _direct_private_uses(tree, external, own)]
        found += _inherited_private_uses(tree, external, where)
    return found


def _direct_private_uses(tree: ast.Module, external: set[str], own: set[str]) -> Iterator[tuple[int, str]]:
    """Private imports, ``dependency._x``, ``anything._x`` the package never defines, ``getattr(x, "_x")``."""
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if any(_private(part) for part in alias.name.split(".")[1:]):
                    yield line, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            parts = node.module.split(".")
            if any(_private(part) for part in parts[1:]) or any(_private(a.name) for a in node.names):
                yield line, f"from {node.module} import {', '.join(a.name for a in node.names)}"
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in external:
                yield line, f"{base.id}.{node.attr}"
            elif node.attr not in own:
                yield line, f"._{node.attr.lstrip('_')} (defined by no module of the package)"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)):
            target = node.args[0]
            if node.args[1].value not in own or (isinstance(target, ast.Name) and target.id in external):
                yield line, f"{node.func.id}(..., {node.args[1].value!r})"


def _inherited_private_uses(tree: ast.Module, external: set[str], where: Path) -> list[str]:
    """In a class built on a dependency's class, ``self._x`` the class does not define itself is
    the dependency's own (``AsyncClient._state``, ``_merge_url``)."""
    found = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        roots = {b.id if isinstance(b, ast.Name) else b.value.id if isinstance(b, ast.Attribute)
                 and isinstance(b.value, ast.Name) else None for b in cls.bases}
        if not roots & external:
            continue
        defined = {n.name for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
        for node in ast.walk(cls):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del):
                defined.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined.add(node.target.id)
        for node in ast.walk(cls):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and _private(node.attr)
                    and node.attr not in defined and _is_self_or_super(node.value)):
                found.append(f"{where}:{node.lineno}: {cls.name} uses its base's {node.attr}")
    return found


def _is_self_or_super(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def test_the_package_uses_no_private_part_of_a_dependency() -> None:
    assert private_uses(PACKAGE) == []


def test_the_check_finds_each_kind_of_private_use(tmp_path: Path) -> None:
    """The check above on a package that does what this one once did (it must not pass by luck)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mine.py").write_text(
        "import httpx\nimport toktok\nfrom httpx._client import ClientState\nfrom httpx import _exceptions\n"
        "class Client(httpx.AsyncClient):\n"
        "    def __init__(self):\n        self._built = {}\n"
        "    def send(self, request):\n"
        "        self._built.clear()\n"  # its own: fine
        "        return self._transport_for_url(request.url), self._state\n"
        "def whole(answer, body):\n    answer._content = body\n    return answer._content\n"
        "def drop():\n    getattr(toktok, '_CACHE').clear()\n    toktok._CACHE.clear()\n")
    found = "\n".join(private_uses(pkg))
    for what in ("httpx._client", "_exceptions", "_transport_for_url", "_state", "toktok._CACHE", "'_CACHE'",
                 "mine.py:12: ._content", "mine.py:13: ._content"):
        assert what in found, (what, found)
    assert "_built" not in found  # the class's own
