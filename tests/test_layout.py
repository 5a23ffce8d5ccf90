"""The source layout stays honest: no import cycle between library modules, no library import inside a
function, no function a reader must scroll through, no ``sys.path`` manipulation.

Everything is read with :mod:`ast` (nothing is imported), so the checks see the code as written. The same
checker functions run on small fake packages built in ``tmp_path``, so a real cycle would be caught.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = "lyadeq_zoo"
MAX_FUNCTION_LINES = 60

# Functions over MAX_FUNCTION_LINES lines today, by "path::qualified name" (nested functions as
# "outer.inner"). Shrink this list; never add to it. A stale entry (the function is gone or now short
# enough) fails test_long_function_allow_list_has_no_stale_entries, so remove it then.
LONG_FUNCTION_ALLOW_LIST: dict[str, str] = {}  # empty: every library function fits the limit


# -- reading the sources ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Module:
    """One source file of a package: its dotted ``name``, its path, whether it is a package ``__init__``."""

    name: str
    rel: str  # the path relative to the root, with forward slashes
    is_package: bool
    tree: ast.Module


def read_package(root: Path, package: str) -> dict[str, Module]:
    """Every ``.py`` file under ``root / package`` as ``{dotted name: Module}``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        modules[name] = Module(name, path.relative_to(root).as_posix(), is_package, tree)
    return modules


def _parents(name: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``: the packages Python runs before the module itself."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _is_type_checking_block(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_imports(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement that runs, with whether it sits inside a function (``TYPE_CHECKING``
    blocks never run and are skipped)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        elif isinstance(child, ast.If) and _is_type_checking_block(child):
            yield from (pair for other in child.orelse for pair in _walk_imports_of(other, in_function))
        else:
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _walk_imports(child, inside)


def _walk_imports_of(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, in_function
    else:
        yield from _walk_imports(node, in_function)


def _from_base(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from."""
    if node.level == 0:
        return node.module or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(module: Module, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The library modules one import statement of ``module`` runs, parent packages included.

    The packages enclosing ``module`` are already running when it runs, so importing one of them as a
    module (``import lyadeq_zoo``, ``from .. import deq``) is no edge; importing a name defined in one
    (``from lyadeq_zoo import create_model``) is, since that name must exist by then.
    """
    running = {*_parents(module.name), module.name}
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
        edges = names.union(*(_parents(name) for name in names)) - running
    else:
        base = _from_base(module, node)
        submodules = {f"{base}.{alias.name}" for alias in node.names} & known
        edges = (submodules | {base, *_parents(base)}) - running  # base runs before its submodules
        if len(submodules) < len(node.names):  # some names are attributes of base: it must have run
            edges.add(base)
    return (edges & known) - {module.name}


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    """``{module: the library modules it runs when imported}`` (module-level imports only)."""
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, module in modules.items():
        for node, in_function in _walk_imports(module.tree):
            if not in_function:
                graph[name] |= imported_modules(module, node, known)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` in ``graph``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def function_level_library_imports(modules: dict[str, Module], package: str) -> list[str]:
    """``"path:line"`` of every import of a ``package`` module made inside a function."""
    found = []
    for module in modules.values():
        for node, in_function in _walk_imports(module.tree):
            if not in_function:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                names = [_from_base(module, node)] if node.level == 0 else [package]
            if any(n == package or n.startswith(package + ".") for n in names):
                found.append(f"{module.rel}:{node.lineno}: {ast.unparse(node)}")
    return found


def long_functions(root: Path, package: str, limit: int) -> dict[str, int]:
    """``{"path::qualified name": lines}`` of every function or method over ``limit`` lines (decorators
    excluded, docstring included)."""
    found = {}
    for module in read_package(root, package).values():
        for qualname, node in _functions(module.tree, ""):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found[f"{module.rel}::{qualname}"] = lines
    return found


def _functions(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            qualname = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                yield qualname, child
            yield from _functions(child, qualname + ".")
        else:
            yield from _functions(child, prefix)


def sys_path_changes(path: Path) -> list[str]:
    """``"file:line"`` of every change of the import path in one file: ``sys.path`` assigned, mutated or
    imported by name, or ``site.addsitedir`` called."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in sorted(ast.walk(tree), key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0))):
        hit = False
        if isinstance(node, ast.ImportFrom) and node.module == "sys":
            hit = any(alias.name == "path" for alias in node.names)
        elif isinstance(node, ast.Attribute) and _is_sys_path(node.value):
            hit = True  # sys.path.insert / append / extend / remove ...
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            hit = any(_is_sys_path(t) or (isinstance(t, ast.Subscript) and _is_sys_path(t.value)) for t in targets)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            hit = node.func.attr == "addsitedir"
        if hit:
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def _is_sys_path(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    )


# -- the checks on the library -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def library() -> dict[str, Module]:
    return read_package(REPO, LIBRARY)


def test_library_has_no_import_cycle(library: dict[str, Module]) -> None:
    graph = import_graph(library)
    assert sum(map(len, graph.values())) > len(graph), "the import graph was read (many edges)"
    assert graph["lyadeq_zoo.deq.layer"] >= {"lyadeq_zoo.config", "lyadeq_zoo.deq.solvers"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between library modules: " + " -> ".join(cycle or [])


def test_no_function_imports_a_library_module(library: dict[str, Module]) -> None:
    found = function_level_library_imports(library, LIBRARY)
    assert not found, "import library modules at module top level, not inside functions:\n" + "\n".join(found)


def test_no_function_is_too_long() -> None:
    found = long_functions(REPO, LIBRARY, MAX_FUNCTION_LINES)
    print("functions over the limit (allow-listed or not):", *(f"{k}: {v}" for k, v in sorted(found.items())), sep="\n")
    new = {key: lines for key, lines in found.items() if key not in LONG_FUNCTION_ALLOW_LIST}
    assert not new, f"functions longer than {MAX_FUNCTION_LINES} lines; split them into named steps: " + ", ".join(
        f"{key} ({lines} lines)" for key, lines in sorted(new.items())
    )


def test_long_function_allow_list_has_no_stale_entries() -> None:
    found = long_functions(REPO, LIBRARY, MAX_FUNCTION_LINES)
    stale = sorted(set(LONG_FUNCTION_ALLOW_LIST) - set(found))
    assert not stale, f"no longer over {MAX_FUNCTION_LINES} lines (or gone); remove from the allow-list: {stale}"


def test_no_sys_path_manipulation_in_library_or_tools() -> None:
    files = [*sorted((REPO / LIBRARY).rglob("*.py")), *sorted((REPO / "tools").rglob("*.py"))]
    assert len(files) > 20
    found = [hit for path in files for hit in sys_path_changes(path)]
    assert not found, "the package must be importable as installed; do not edit sys.path:\n" + "\n".join(found)


# -- the checkers catch what they are meant to catch ----------------------------------------------------------
def _write_package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cycle_checker_catches_a_direct_cycle(tmp_path: Path) -> None:
    _write_package(
        tmp_path,
        {
            "fake/__init__.py": "",
            "fake/a.py": "from .b import B\nA = 1\n",
            "fake/b.py": "from fake.c import C\nB = 2\n",
            "fake/c.py": "import fake.a\nC = 3\n",
            "fake/d.py": "from . import a, b\n",
        },
    )
    cycle = find_cycle(import_graph(read_package(tmp_path, "fake")))
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) == {"fake.a", "fake.b", "fake.c"}


def test_cycle_checker_counts_the_implicit_import_of_parent_packages(tmp_path: Path) -> None:
    # fake.a imports fake.sub.leaf, which first runs fake/sub/__init__.py, which imports fake.a.
    files = {
        "fake/__init__.py": "",
        "fake/a.py": "from fake.sub.leaf import X\n",
        "fake/sub/__init__.py": "from ..a import X as Y\n",
        "fake/sub/leaf.py": "X = 1\n",
    }
    _write_package(tmp_path, files)
    cycle = find_cycle(import_graph(read_package(tmp_path, "fake")))
    assert cycle is not None and set(cycle) == {"fake.a", "fake.sub"}
    # Without the package's import of fake.a there is no cycle, and a module's own parents are no edge.
    (tmp_path / "fake/sub/__init__.py").write_text("from . import leaf\n")
    (tmp_path / "fake/sub/leaf.py").write_text("from .. import sub\nfrom fake.sub import leaf as again\nX = 1\n")
    assert find_cycle(import_graph(read_package(tmp_path, "fake"))) is None


def test_cycle_checker_ignores_type_checking_and_function_level_imports(tmp_path: Path) -> None:
    _write_package(
        tmp_path,
        {
            "fake/__init__.py": "",
            "fake/a.py": "from .b import B\n",
            "fake/b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n"
                "def f():\n    from . import a\n    import matplotlib\n    return a\nB = 1\n"
            ),
        },
    )
    modules = read_package(tmp_path, "fake")
    assert find_cycle(import_graph(modules)) is None
    found = function_level_library_imports(modules, "fake")
    assert found == ["fake/b.py:5: from . import a"], found  # matplotlib inside a function is allowed


def test_length_and_sys_path_checkers_catch_offenders(tmp_path: Path) -> None:
    def body(indent: int) -> str:
        return "".join(" " * indent + f"x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))

    long_module = (
        f"class K:\n    def method(self):\n{body(8)}\n"
        f"def short():\n    return 1\n\n"
        f"def outer():\n    def inner():\n{body(8)}    return inner\n"
    )
    hack = "import sys\nimport site\nsys.path.insert(0, 'x')\nsys.path[0:0] = ['y']\nsite.addsitedir('z')\n"
    _write_package(
        tmp_path,
        {"fake/__init__.py": "", "fake/long.py": long_module, "fake/hack.py": hack + "print(sys.path, sys.argv)\n"},
    )
    found = long_functions(tmp_path, "fake", MAX_FUNCTION_LINES)
    assert found == {"fake/long.py::K.method": 61, "fake/long.py::outer": 63, "fake/long.py::outer.inner": 61}, found
    hits = sys_path_changes(tmp_path / "fake/hack.py")
    assert [int(h.split(":")[1]) for h in hits] == [3, 4, 5], hits
