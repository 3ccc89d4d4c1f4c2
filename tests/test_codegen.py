"""The generated docs are fresh; the dispatch module is built from the table into the cache
folder (reused, rebuilt when damaged, compiled from memory when the folder is read-only), is
lint-clean, and is inlined into the sweeps."""

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import fasttape
from fasttape.kernels import codegen, dispatch, forms
from fasttape.ops import OPS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path,gen", codegen.targets(), ids=lambda v: getattr(v, "name", ""))
def test_generated_file_is_fresh(path, gen):
    assert path.read_text() == gen(), (
        f"{path} is stale: run `python -m fasttape.kernels.codegen`"
    )


def test_dispatch_module_lives_in_the_cache_not_the_package():
    path = Path(sys.modules[dispatch.DISPATCH_MODULE].__file__)
    package = Path(fasttape.__file__).resolve().parent
    assert package not in path.resolve().parents
    assert path.read_text(encoding="utf-8") == forms.generate()
    assert not (package / "kernels" / path.name).exists()
    # The sweeps' functions are the generated module's.
    assert dispatch.value.py_func.__module__ == dispatch.DISPATCH_MODULE
    assert list(dispatch.ARITY) == [op.arity for op in OPS]


def _load(folder, name):
    try:
        return dispatch.load_dispatch(folder, name)
    finally:
        sys.modules.pop(name, None)


def test_dispatch_file_is_reused_and_rebuilt_when_damaged(tmp_path):
    first = _load(tmp_path, "fasttape.kernels.test_dispatch_a")
    (path,) = tmp_path.glob("dispatch_*.py")
    assert Path(first.__file__) == path and path.read_text() == forms.generate()
    mtime = path.stat().st_mtime_ns
    _load(tmp_path, "fasttape.kernels.test_dispatch_b")
    assert path.stat().st_mtime_ns == mtime  # current: not rewritten
    path.write_text("raise SystemExit('damaged')\n")
    third = _load(tmp_path, "fasttape.kernels.test_dispatch_c")
    assert path.read_text() == forms.generate()
    assert list(third.ARITY) == [op.arity for op in OPS]
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind


def test_dispatch_compiles_from_memory_when_the_folder_is_a_file(tmp_path):
    # Root can write anywhere, so the portable unwritable folder is a path under a file.
    blocker = tmp_path / "file"
    blocker.write_text("")
    module = _load(blocker / "sub", "fasttape.kernels.test_dispatch_file")
    assert getattr(module, "__file__", None) is None
    assert list(module.NDIFF) == [op.ndiff for op in OPS]
    # Tracebacks and Numba's messages still show the generated source.
    assert "elif op ==" in inspect.getsource(module.value.py_func)


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff not installed")
def test_dispatch_source_is_lint_clean():
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--stdin-filename",
         "fasttape/kernels/generated_dispatch.py", "-"],
        input=forms.generate(), text=True, capture_output=True, cwd=ROOT, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_show_prints_the_dispatch_source(capsys):
    assert codegen.main(["--show"]) == 0
    assert capsys.readouterr().out == forms.generate()


def test_check_flag_reports_fresh(capsys):
    assert codegen.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


@numba.njit(cache=False)
def _caller(ops, args, vals, parts):
    # A fresh (uncached) caller, so that its LLVM can be inspected.
    k = 0
    for i in range(ops.shape[0]):
        f, k = dispatch.value_store_partials(ops[i], vals[args[k]], vals, args, k, parts)
        vals[i] = f


def test_dispatch_is_inlined_without_reference_counting():
    """Regression: the dispatch functions must reach the sweeps' loops as plain code.  Called
    (not inlined), or inlined with their arrays' reference counts (an atomic increment and
    decrement per instruction), the single-point sweeps ran 2-7 times slower."""
    ops = np.array([1, 10], dtype=np.uint8)  # mul, neg
    args = np.array([0, 1, 2], dtype=np.int32)
    vals, parts = np.array([2.0, 3.0, 0.0]), np.zeros(3)
    _caller(ops, args, vals, parts)
    assert vals[0] == 6.0 and parts[0] == 3.0
    ir = _caller.inspect_llvm(_caller.signatures[0])
    called = set(re.findall(r"call [^\n]*@(\S+?)\(", ir))
    assert not any("dispatch" in name for name in called), called
    body = ir[ir.index("define"):]
    body = body[:body.index("\n}\n")]  # the jitted function itself, not its Python wrapper
    assert "NRT_incref" not in body and "NRT_decref" not in body
