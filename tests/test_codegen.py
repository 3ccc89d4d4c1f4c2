"""The generated files are fresh, and the generated dispatch is inlined into the sweeps."""

import re

import numba
import numpy as np
import pytest

from fasttape.kernels import codegen, dispatch


@pytest.mark.parametrize("path,gen", codegen.targets(), ids=lambda v: getattr(v, "name", ""))
def test_generated_file_is_fresh(path, gen):
    assert path.read_text() == gen(), (
        f"{path} is stale: run `python -m fasttape.kernels.codegen`"
    )


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
