"""The package's architecture, checked on the source: import graph, private names, layering.

Every module under ``fasttape/`` is parsed with :mod:`ast` (nothing is imported).  The import
graph has one edge per import statement, including imports inside functions; ``if
TYPE_CHECKING:`` blocks are left out because they never run.  ``import a.b.c`` also runs the
``__init__`` of ``a`` and ``a.b`` unless the importer is inside that package already, so those
count as edges too: that is how a package ``__init__`` that re-exports a submodule can close a
cycle at runtime although no module names the importer.

Rules:

(a) the import graph has no cycle;
(b) no module reaches into another module's private names: no ``from m import _name``, no
    import from a private module (``m._private``), and no ``obj._name`` attribute access
    unless ``_name`` is defined in the accessing module itself (``self`` / ``cls`` are always
    fine; dunders are not private);
(c) layering: the tape record imports none of the layers above it, the passes never import a
    tape, the kernels know neither tracing nor tapes, ``compile`` does not import
    checkpointing.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fasttape"

# (module, private name): why the reach-in is allowed.  Keep this short; every entry is debt.
ALLOWED_PRIVATE: dict[tuple[str, str], str] = {
    # A Var is the Graph's node handle, split from graph.py only so that the operators stay
    # cheap: its dunders call the Graph's recording methods directly (tracing hot path).
    **{
        ("fasttape.var", name): "Var is Graph's node handle (tracing hot path)"
        for name in ("_node", "_constant_node", "_foreign")
    },
    # Numba's own internals, used in one place (the JIT wrapper) and pinned by regression tests
    # (tests/test_kernel_cache.py, tests/test_codegen.py) that fail if a Numba upgrade moves them.
    **{
        ("fasttape.kernels.jit", name): "Numba internal: cache locator / LLVM module / py_func"
        for name in ("_CacheLocator", "_shared_module", "_final_module", "_pyfunc",
                     "_cache_file", "_index_path")
    },
    ("fasttape.trace", "_node"): "the op functions record through Graph's recording methods",
    ("fasttape.trace", "_constant_node"): "the op functions record through Graph's recording "
                                          "methods",
    ("fasttape.trace", "_foreign"): "the op functions record through Graph's recording methods",
}

# Import edges that close a cycle, allowed for now: importer -> imported, and why.  Empty.
ALLOWED_CYCLE_EDGES: dict[tuple[str, str], str] = {}

# Modules outside fasttape whose underscore names are their documented API.
EXTERNAL_PRIVATE_OK = {"_getframe", "_exit", "_fields", "_asdict", "_replace", "_make"}


# ------------------------------------------------------------------ reading the source
def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES: dict[str, ast.Module] = {m: ast.parse(p.read_text(), str(p)) for m, p in MODULES.items()}


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def resolve_from(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement imports from."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def imports(module: str) -> Iterator[tuple[str, int, str | None]]:
    """``(imported module, line, imported name or None)`` for each import in ``module``."""
    for node in runtime_nodes(TREES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, None
        elif isinstance(node, ast.ImportFrom):
            source = resolve_from(module, node)
            for alias in node.names:
                yield source, node.lineno, alias.name


def import_edges(module: str) -> dict[str, int]:
    """Modules of the package that importing ``module`` runs: target -> first line."""
    own = set(ancestors(module)) | {module}
    edges: dict[str, int] = {}
    for source, line, name in imports(module):
        target = source
        if name is not None and f"{source}.{name}" in MODULES:
            target = f"{source}.{name}"  # from package import submodule
        if target not in MODULES:
            continue
        # The package __init__s of a dotted import run first, unless they are already
        # running (the importer is inside them).
        for anc in [*ancestors(target), target]:
            if anc in MODULES and (anc == target or anc not in own) and anc != module:
                edges.setdefault(anc, line)
    return edges


GRAPH: dict[str, dict[str, int]] = {
    m: {t: line for t, line in import_edges(m).items() if (m, t) not in ALLOWED_CYCLE_EDGES}
    for m in MODULES
}


def reachable(module: str) -> set[str]:
    seen: set[str] = set()
    stack = [module]
    while stack:
        for nxt in GRAPH[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def find_cycle() -> list[str] | None:
    """One cycle of the import graph as a list of modules (first == last), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(GRAPH, WHITE)
    for start in sorted(GRAPH):
        if color[start] != WHITE:
            continue
        path = [start]
        iters = [iter(sorted(GRAPH[start]))]
        color[start] = GREY
        while iters:  # iterative DFS: no recursion limit to worry about
            nxt = next(iters[-1], None)
            if nxt is None:
                color[path.pop()] = BLACK
                iters.pop()
            elif color[nxt] == GREY:
                return [*path[path.index(nxt):], nxt]
            elif color[nxt] == WHITE:
                color[nxt] = GREY
                path.append(nxt)
                iters.append(iter(sorted(GRAPH[nxt])))
    return None


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_names(tree: ast.Module) -> set[str]:
    """Names a module defines: functions, classes, assignment targets (``x = ``, ``obj.x = ``),
    ``__slots__`` entries and import aliases."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries, setattr(obj, "_x", ...)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def private_reach_ins(allowed: dict[tuple[str, str], str]) -> list[tuple[str, str, str]]:
    """``(module, private name, where)`` for each reach-in not in ``allowed``."""
    found = []
    for module, tree in TREES.items():
        own = defined_names(tree)
        path = MODULES[module].relative_to(ROOT)
        for source, line, name in imports(module):
            if not source.startswith("fasttape"):
                continue
            # A private module is private to its package: siblings may import it.
            parts = source.split(".")
            private_module = next(
                (p for k, p in enumerate(parts)
                 if is_private(p) and not (module + ".").startswith(".".join(parts[:k]) + ".")),
                None,
            )
            what = name if name is not None and is_private(name) else private_module
            if what is not None and source != module and (module, what) not in allowed:
                found.append((module, what, f"{path}:{line}: imports "
                                            f"{source}{'.' + name if name else ''}"))
        for node in runtime_nodes(tree):
            if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in own or node.attr in EXTERNAL_PRIVATE_OK:
                continue
            if (module, node.attr) not in allowed:
                found.append((module, node.attr, f"{path}:{node.lineno}: {ast.unparse(node)}"))
    return found


# ------------------------------------------------------------------ the tests
def test_every_module_parses_and_the_graph_is_not_empty():
    assert "fasttape.tape" in GRAPH and "fasttape.api" in GRAPH
    assert "fasttape.tape" in GRAPH["fasttape.api"]


def test_no_import_cycle():
    cycle = find_cycle()
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} (line {GRAPH[a][b]})" for a, b in itertools.pairwise(cycle)
    ) + f" -> {cycle[-1]}"


def test_no_private_names_across_modules():
    found = [where for _, _, where in private_reach_ins(ALLOWED_PRIVATE)]
    assert not found, "underscore names used outside their module:\n" + "\n".join(found)


def test_the_allow_lists_are_still_needed():
    # An entry that no longer matches anything must be deleted, not kept "just in case".
    used = {(module, name) for module, name, _ in private_reach_ins({})}
    assert set(ALLOWED_PRIVATE) <= used, sorted(set(ALLOWED_PRIVATE) - used)
    for module, target in ALLOWED_CYCLE_EDGES:
        assert target in import_edges(module), (module, target)


LAYERS_ABOVE_THE_TAPE = ("fasttape.batch", "fasttape.derivatives", "fasttape.embed",
                         "fasttape.serialize", "fasttape.checkpoint", "fasttape.api",
                         "fasttape.compile", "fasttape.explain", "fasttape.bench",
                         "fasttape.native")


@pytest.mark.parametrize("layer", LAYERS_ABOVE_THE_TAPE)
def test_the_tape_record_imports_no_layer_above_it(layer):
    reached = reachable("fasttape.tape")
    above = sorted(m for m in reached if m == layer or m.startswith(layer + "."))
    assert not above, f"fasttape/tape.py imports {above} (directly or through another module)"


def test_passes_never_import_a_tape():
    for module in MODULES:
        if module.startswith("fasttape.passes"):
            bad = reachable(module) & {"fasttape.tape", "fasttape.api", "fasttape.compile"}
            assert not bad, f"{module} imports {sorted(bad)}"


def test_kernels_know_neither_tracing_nor_tapes():
    upper = {"fasttape.tape", "fasttape.api", "fasttape.compile", "fasttape.trace",
             "fasttape.var", "fasttape.graph", "fasttape"}
    for module in MODULES:
        if module.startswith("fasttape.kernels"):
            bad = reachable(module) & upper
            assert not bad, f"{module} imports {sorted(bad)}"


def test_compile_does_not_import_checkpointing():
    bad = sorted(m for m in reachable("fasttape.compile") if m.startswith("fasttape.checkpoint"))
    assert not bad, f"fasttape/compile.py imports {bad}"


def test_only_the_package_and_the_families_import_the_user_facing_tape():
    users = sorted(m for m in MODULES if "fasttape.api" in GRAPH[m])
    assert users == ["fasttape", "fasttape.bench.families"], users


def test_the_checker_sees_a_cycle_and_a_reach_in(tmp_path):
    # The rules must be able to fail: a fake graph with a cycle, a fake module with a reach-in.
    saved = dict(GRAPH)
    try:
        GRAPH["fasttape.ops"] = {**GRAPH["fasttape.ops"], "fasttape.tape": 1}
        assert find_cycle() is not None
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
    tree = ast.parse("from fasttape.tape import _hidden\nimport fasttape.x\ny = tape._plan\n")
    TREES["fasttape._probe"] = tree
    MODULES["fasttape._probe"] = PACKAGE / "_probe.py"
    try:
        found = [where for _, _, where in private_reach_ins(ALLOWED_PRIVATE)]
    finally:
        del TREES["fasttape._probe"], MODULES["fasttape._probe"]
    assert any("_hidden" in f for f in found) and any("tape._plan" in f for f in found)
