"""The op dispatch functions: the op table's formulas, one ``if op == code`` branch per op.

Their source is a build product, like the machine code the kernels compile to, and lives with
it: when this module is imported, :func:`load_dispatch` writes
:func:`fasttape.kernels.forms.generate`'s text to the kernel cache folder
(:func:`fasttape.kernels.jit.cache_dir`) as ``dispatch_<digest>.py`` and imports it from there.
So it is a real file (readable tracebacks, Python's own bytecode cache, a file the kernel
cache's stamp covers), never stale (its name is the digest of its text, rebuilt from the table
at each import: 5 ms), and never in the source tree or the installed package: the table is
the only thing a contributor edits.  PyTensor's Numba backend keeps its generated sources in
its compile folder the same way.  ``python -m fasttape.kernels.codegen --show`` prints it;
``tests/test_codegen.py`` lints it with ruff.

Every function is inlined by Numba into the sweep that calls it, so a sweep compiles to one
loop around one switch.  The forms, by caller:

- single-point sweeps (``sweep.py``): ``value``, ``value_store_partials``,
  ``value_store_all_partials``, ``partials``, ``unit_adjoint``;
- tangents and second order (``tangent.py``, ``sparsity.py``): ``value_and_partials``,
  ``partials``, ``partials_and_second``;
- batches, a row of points per slot (``batch.py``): ``value_rows``,
  ``value_store_partials_rows``, ``unit_adjoint_rows``, ``adjoint_lean_rows``;
- tensor elementwise groups, a strided range per argument (``tensor.py``):
  ``elementwise_value``, ``elementwise_adjoint``, ``elementwise_tangent``,
  ``elementwise_adjoint_tangent``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import linecache
import sys
import types
from pathlib import Path

from fasttape.atomic import atomic_write_text
from fasttape.kernels.forms import generate
from fasttape.kernels.jit import cache_dir

#: The module name the generated source is imported under (a fasttape name, so that the
#: kernel cache's stamp follows the sweeps into it: fasttape/kernels/jit.py).
DISPATCH_MODULE = "fasttape.kernels.generated_dispatch"


def _written(text: str, folder: Path, digest: str) -> Path | None:
    """``folder / dispatch_<digest>.py`` holding ``text`` (written if absent or different),
    or None if the folder cannot be written."""
    path = folder / f"dispatch_{digest}.py"
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass  # absent, unreadable or damaged: write it
    # Atomically: processes that import fasttape at once each write a whole file, and no one
    # ever imports a partial one.
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError:
        return None
    return path


def import_file(name: str, path: Path) -> types.ModuleType:
    """Import the Python file ``path`` as the module ``name`` (registered in ``sys.modules``
    before it runs, as an ordinary import does)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as {name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_dispatch(folder: Path | None = None, name: str = DISPATCH_MODULE) -> types.ModuleType:
    """Build the dispatch module from the table and import it as ``name``.

    Parameters
    ----------
    folder : Path, optional
        Where its source file goes; :func:`fasttape.kernels.jit.cache_dir` by default.
    name : str
        Module name it gets in ``sys.modules``.

    Returns
    -------
    module
        The imported module.  From a file in ``folder`` when that folder can be written (the
        file is reused while its text is current and rewritten when it is not, whatever it
        holds); otherwise compiled from memory, with its source registered in ``linecache``
        for tracebacks (the kernels then compile without a cache too: fasttape/kernels/jit.py).
    """
    text = generate()
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = _written(text, cache_dir() if folder is None else folder, digest)
    if path is not None:
        return import_file(name, path)
    filename = f"<fasttape dispatch {digest}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(text, filename, "exec"), module.__dict__)
    return module


_generated = load_dispatch()

#: Arguments of each op code, and how many of them (the first ones) are differentiable.
ARITY = _generated.ARITY
NDIFF = _generated.NDIFF

value = _generated.value
value_store_partials = _generated.value_store_partials
value_store_all_partials = _generated.value_store_all_partials
value_and_partials = _generated.value_and_partials
partials = _generated.partials
partials_and_second = _generated.partials_and_second
unit_adjoint = _generated.unit_adjoint
value_rows = _generated.value_rows
value_store_partials_rows = _generated.value_store_partials_rows
unit_adjoint_rows = _generated.unit_adjoint_rows
adjoint_lean_rows = _generated.adjoint_lean_rows
elementwise_value = _generated.elementwise_value
elementwise_adjoint = _generated.elementwise_adjoint
elementwise_tangent = _generated.elementwise_tangent
elementwise_adjoint_tangent = _generated.elementwise_adjoint_tangent

__all__ = [
    "ARITY",
    "DISPATCH_MODULE",
    "NDIFF",
    "adjoint_lean_rows",
    "elementwise_adjoint",
    "elementwise_adjoint_tangent",
    "elementwise_tangent",
    "elementwise_value",
    "import_file",
    "load_dispatch",
    "partials",
    "partials_and_second",
    "unit_adjoint",
    "unit_adjoint_rows",
    "value",
    "value_and_partials",
    "value_rows",
    "value_store_all_partials",
    "value_store_partials",
    "value_store_partials_rows",
]
