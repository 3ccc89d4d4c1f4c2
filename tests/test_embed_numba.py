"""tape.numba_kernel(): calling a tape from user @njit code, and the one-sweep VJP kernel."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import fasttape as ft
from fasttape.bench.families import random_local
from fasttape.embed.numba_api import KINDS, vjp
from fasttape.ops import OPS
from tests.reference import internal_form
from tests.reference import value_and_grad as ref_value_and_grad

IDS = [op.name for op in OPS]


def op_tape(spec) -> tuple[ft.Tape, np.ndarray]:
    """Two outputs around one instruction of ``spec`` (plus a repeated output), and a point.

    Outputs: ``op(args)``, ``op(args) * x0 + x_last`` and ``op(args)`` again, so a VJP has to
    seed several outputs, one of them twice.
    """
    n_args = spec.arity if spec.param != "const" else spec.ndiff

    def f(x):
        if spec.name == "powi":
            y = x[0] ** 3
        elif spec.name == "powc":
            y = x[0] ** 0.7
        elif spec.name == "pow":
            y = ft.pow(x[0], x[1])
        elif spec.name == "where":
            y = ft.where(x[2], x[0], x[1])
        elif internal_form(spec.name, x, 1.7) is not None:
            y = internal_form(spec.name, x, 1.7)
        else:
            y = getattr(ft, spec.name)(*x[:n_args])
        return [y, y * x[0] + x[-1], y]

    tape = ft.compile(ft.trace(f, n_inputs=n_args))
    x = np.array([lo + 0.37 * (hi - lo) for lo, hi in spec.domain[:n_args]])
    return tape, x


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("spec", OPS, ids=IDS)
@pytest.mark.parametrize("mode", ["stored", "lean"])
def test_every_op_kernels_match_the_reference(spec, mode):
    tape, x = op_tape(spec)
    tape = tape.with_grad_mode(mode)
    refs = [ref_value_and_grad(tape, x, output=j) for j in range(3)]
    # value_and_grad and value for each output
    for j in range(3):
        fn, arrays = tape.numba_kernel(output=j)
        g = np.empty(tape.n_inputs)
        assert fn(*arrays, x, g) == pytest.approx(refs[j][0], rel=1e-13)
        close(g, refs[j][1])
        fv, av = tape.numba_kernel("value", output=j)
        assert fv(*av, x) == pytest.approx(refs[j][0], rel=1e-13)
    fvs, avs = tape.numba_kernel("values")
    out = np.empty(3)
    fvs(*avs, x, out)
    close(out, [r[0] for r in refs])
    # One reverse sweep seeded with every output's cotangent equals the weighted sum of the
    # reference gradients.
    cot = np.array([0.5, -2.0, 3.0])
    want = sum(c * np.asarray(r[1]) for c, r in zip(cot, refs, strict=True))
    fj, aj = tape.numba_kernel("vjp")
    g = np.empty(tape.n_inputs)
    fj(*aj, x, cot, g)
    close(g, want)
    close(vjp(tape, x, cot), want)
    # The buffers are clean after a call: a second call gives the same result.
    fj(*aj, x, cot, g)
    close(g, want)


@numba.njit
def _descend(fn, arrays, x, steps, lr):
    g = np.empty_like(x)
    v = 0.0
    for _ in range(steps):
        v = fn(*arrays, x, g)
        for i in range(x.shape[0]):
            x[i] -= lr * g[i]
    return v


def _rosenbrock(x):
    return ft.sum(
        100.0 * (x[i + 1] - x[i] ** 2) ** 2 + (1.0 - x[i]) ** 2 for i in range(len(x) - 1)
    )


@pytest.mark.parametrize("mode", ["stored", "lean"])
def test_gradient_descent_in_njit_matches_python(mode):
    tape = ft.compile(ft.trace(_rosenbrock, n_inputs=6), grad_mode=mode)
    x0 = np.linspace(-0.5, 0.8, 6)
    steps, lr = 300, 1e-3
    x_py = x0.copy()
    for _ in range(steps):
        v_py, g = tape.value_and_grad(x_py)
        x_py -= lr * g
    fn, arrays = tape.numba_kernel()
    x_nb = x0.copy()
    v_nb = _descend(fn, arrays, x_nb, steps, lr)
    np.testing.assert_array_equal(x_nb, x_py)  # same kernels, same order: bitwise
    assert v_nb == v_py
    assert tape.value(x_nb) < tape.value(x0)  # and it did descend


@numba.njit
def _call_tuple(fn, arrays, x, g):
    return fn(*arrays, x, g)


def test_bad_lengths_raise_inside_njit():
    tape = random_local(300, window=20)
    fn, arrays = tape.numba_kernel()
    x = np.full(tape.n_inputs, 0.3)
    with pytest.raises(ValueError, match=f"x has {tape.n_inputs - 1} entries, expected "
                                         f"{tape.n_inputs}"):
        _call_tuple(fn, arrays, x[:-1], np.empty(tape.n_inputs))
    with pytest.raises(ValueError, match=r"grad has .* entries"):
        _call_tuple(fn, arrays, x, np.empty(tape.n_inputs + 1))
    other = random_local(200, window=20).numba_kernel().arrays
    with pytest.raises(ValueError, match="vals has"):  # vals of another tape
        _call_tuple(fn, (*arrays[:5], *other[5:]), x, np.empty(tape.n_inputs))
    with pytest.raises(ValueError, match="parts has"):  # parts of another tape
        _call_tuple(fn, (*arrays[:6], other[6], arrays[7]), x, np.empty(tape.n_inputs))
    with pytest.raises(ValueError, match="ops is not the array of the tape this kernel was made"):
        _call_tuple(fn, (*other[:4], *arrays[4:]), x, np.empty(tape.n_inputs))
    with pytest.raises(ValueError, match="args is not the array of the tape"):
        _call_tuple(fn, (arrays[0], np.array(arrays[1]), *arrays[2:]), x,
                     np.empty(tape.n_inputs))
    forged = np.array(arrays[4])  # a writeable copy of the record, with another output index
    forged[6] = 1
    with pytest.raises(ValueError, match="output index"):
        _call_tuple(fn, (*arrays[:4], forged, *arrays[5:]), x, np.empty(tape.n_inputs))
    fj, aj = tape.numba_kernel("vjp")
    with pytest.raises(ValueError, match="cot has 2 entries, expected 1"):
        fj(*aj, x, np.ones(2), np.empty(tape.n_inputs))


# Foreign work buffers that used to pass every check: the sweep then wrote past their ends
# (a segfault on a large tape).  Run in a subprocess so that the unfixed code cannot take the
# test session down with it; each case must raise ValueError naming the buffer.
_FOREIGN_BUFFERS = r"""
import json, sys
import numpy as np
import fasttape as ft

def tape(mode):
    return ft.compile(ft.trace(lambda v: [ft.sum(ft.sin(v[i]) * v[i + 1] * 1.5
                                                 for i in range(4))], 5), grad_mode=mode)

def attempt(fn, arrays, *rest):
    try:
        fn(*arrays, *rest)
    except ValueError as exc:
        return str(exc)
    return "no error"

out = {}
for mode in ("stored", "lean"):
    t = tape(mode)
    fn, a = t.numba_kernel()
    short = t.n_consts + t.n_nodes + 2  # old check: n_inputs = len(vals) - n_consts - n_nodes
    out[mode + "|vals|vals and adj short, x short (the report)"] = attempt(
        fn, (*a[:5], np.zeros(short), a[6], np.zeros(short)), np.zeros(2), np.empty(2))
    out[mode + "|adj|adj short"] = attempt(fn, (*a[:7], np.zeros(3)), np.zeros(5), np.empty(5))
    out[mode + "|parts|parts of the wrong length"] = attempt(
        fn, (*a[:6], np.zeros(max(len(a[6]) - 1, 3)), a[7]), np.zeros(5), np.empty(5))
    out[mode + "|ops is not the array of the tape|a copy of ops"] = attempt(
        fn, (np.array(a[0]), *a[1:]), np.zeros(5), np.empty(5))
    fv, av = t.numba_kernel("values")
    out[mode + "|vals|values: vals short"] = attempt(fv, (*av[:-1], np.zeros(short)), np.zeros(2),
                                                np.empty(1))
    out[mode + "|out|values: out short"] = attempt(fv, av, np.zeros(5), np.empty(0))
    f1, a1 = t.numba_kernel("value")
    out[mode + "|vals|value: vals short"] = attempt(f1, (*a1[:-1], np.zeros(short)), np.zeros(2))
    fj, aj = t.numba_kernel("vjp")
    out[mode + "|adj|vjp: adj short"] = attempt(fj, (*aj[:-1], np.zeros(2)), np.zeros(5),
                                            np.ones(1), np.empty(5))
    out[mode + "|parts|vjp: parts of the wrong length"] = attempt(
        fj, (*aj[:-2], np.zeros(1), aj[-1]), np.zeros(5), np.ones(1), np.empty(5))
print(json.dumps(out))
"""


def test_foreign_work_buffers_are_refused_before_the_sweep():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", _FOREIGN_BUFFERS], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"crashed ({proc.returncode}): {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 18
    for case, message in results.items():
        _, buffer, _ = case.split("|")
        assert message.startswith("fasttape numba_kernel: ") and buffer in message, (case,
                                                                                    message)


@pytest.mark.parametrize(
    ("x", "grad", "words"),
    [
        (np.zeros((1, 3)), np.empty(3), "x must be a 1-D float64 array; got 2-D float64"),
        (np.zeros(3, np.float32), np.empty(3), "x must be a 1-D float64 array; got 1-D float32"),
        (np.zeros(3), np.empty(3, np.int64), "grad must be a writeable 1-D float64 array"),
        (np.zeros(3), np.frombuffer(bytes(24)), "grad must be a writeable 1-D float64 array; "
                                                "got a read-only array"),
    ],
    ids=["x-2d", "x-float32", "grad-int", "grad-read-only"],
)
def test_wrong_array_types_are_named_when_numba_compiles_the_call(x, grad, words):
    tape = ft.compile(ft.trace(lambda v: v[0] * v[1] + v[2], 3))
    fn, arrays = tape.numba_kernel()
    with pytest.raises(numba.core.errors.TypingError, match=re.escape(words)):
        fn(*arrays, x, grad)


def test_meta_and_tape_arrays_cannot_be_made_writeable():
    tape = ft.compile(ft.trace(lambda v: v[0] * v[1] + 2.0, 2))
    _, arrays = tape.numba_kernel()
    for arr in arrays[:5]:
        with pytest.raises(ValueError):
            arr.flags.writeable = True


def test_arguments_are_checked_in_python():
    g = ft.Graph()
    x = g.inputs(2)
    g.output(x[0] * x[1], x[0] + x[1])
    tape = ft.compile(g)
    with pytest.raises(ValueError, match="2 outputs: pass output="):
        tape.numba_kernel()
    with pytest.raises(ValueError, match="kind must be one of"):
        tape.numba_kernel("hessian")
    with pytest.raises(ValueError, match="covers every output"):
        tape.numba_kernel("values", output=0)
    with pytest.raises(ValueError, match="out of range"):
        tape.numba_kernel(output=2)
    with pytest.raises(ValueError, match="cot has 3 entries"):
        vjp(tape, [1.0, 2.0], [1.0, 2.0, 3.0])
    assert set(KINDS) == {"value_and_grad", "value", "values", "vjp"}


def test_each_kernel_owns_its_buffers():
    tape = random_local(500, window=30)
    a = tape.numba_kernel()
    b = tape.numba_kernel()
    for k in range(5, 8):
        assert not np.shares_memory(a.arrays[k], b.arrays[k])
    assert a.arrays[0] is tape.ops  # the tape's own read-only arrays, not copies
    assert not a.arrays[0].flags.writeable
