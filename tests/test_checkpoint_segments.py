"""Flat-tape checkpointing (memory_limit=): bitwise equal gradients, memory, the report."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fasttape as ft
from fasttape.bench.families import chain, random_local
from fasttape.bench.timing import traced_peak
from fasttape.checkpoint import CheckpointWarning, checkpointed
from fasttape.checkpoint.segments import plan_nbytes, store_all_nbytes
from fasttape.ops import OPS
from tests.test_random_graphs import EXPONENTS, instructions


def bitwise(a, b) -> bool:
    return np.asarray(a, np.float64).tobytes() == np.asarray(b, np.float64).tobytes()


def assert_same_as_store_all(ct, x, output=None):
    v, g = ct.tape.with_grad_mode("stored").value_and_grad(x, output=output)
    v2, g2 = ct.value_and_grad(x, output=output)
    assert bitwise(v, v2), (v, v2)
    assert bitwise(g, g2), (g, g2)
    assert bitwise(ct.value(x, output=output), v)


@pytest.mark.parametrize("seg", [1, 2, 3, 7, 64, 999, 1000, 5000])
def test_chain_every_segment_length(seg):
    tape = chain(1000, "sin")
    assert_same_as_store_all(checkpointed(tape, 10**9, segment_length=seg), [0.7])


@pytest.mark.parametrize("limit", [3_000, 20_000, 100_000, 10**9])
def test_random_local_graphs_for_every_budget(limit):
    tape = random_local(20_000, n_inputs=50, seed=5)
    x = np.linspace(0.1, 0.9, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        ct = checkpointed(tape, limit)
    assert_same_as_store_all(ct, x)
    if ct.report.within_budget:
        assert ct.report.peak_nbytes <= limit


@st.composite
def random_tapes(draw):
    """A tape over any op (longer than tests/test_random_graphs' ones), reads near and far."""
    n_in = draw(st.integers(1, 4))
    consts = [*EXPONENTS, draw(st.floats(-3, 3))]
    ops, args = draw(instructions(n_in, len(consts), max_ops=80, window=5))
    n_ops = len(ops)
    n_slots = n_in + len(consts) + n_ops
    outputs = [n_slots - 1, *draw(st.lists(st.integers(0, n_slots - 1), max_size=2))]
    x = draw(st.lists(st.floats(-2.0, 2.0), min_size=n_in, max_size=n_in))
    seg = draw(st.integers(1, n_ops + 1))
    return ft.Tape.from_arrays(ops, args, consts, outputs, n_in), x, seg


@settings(max_examples=150, deadline=None)
@given(random_tapes())
def test_hypothesis_random_tapes_over_every_op(case):
    tape, x, seg = case
    ct = checkpointed(tape, 1, segment_length=seg)
    for k in range(tape.n_outputs):
        assert_same_as_store_all(ct, x, output=k)


@pytest.mark.parametrize("spec", OPS, ids=[o.name for o in OPS])
def test_every_op_across_segment_boundaries(spec):
    # A chain through `spec` whose every instruction also reads the input and a value three
    # instructions back, cut into segments of 2: every edge kind crosses a boundary.
    n_in, consts = 2, [2.0, 0.5]
    n_pre = n_in + len(consts)
    mix, add = OPS[1].code, OPS[0].code  # mul, add keep values moving
    ops, args = [], []
    for i in range(30):
        slot = n_pre + i
        prev = slot - 1 if i else 0
        far = slot - 3 if i >= 3 else 1
        if i % 3 == 0:
            ops.append(spec.code)
            for j in range(spec.arity):
                if spec.param == "const" and j >= spec.ndiff:
                    args.append(n_in)  # 2.0: an integral exponent, valid for powi and powc
                else:
                    args.append((prev, far, 1)[j])
        else:
            ops.append(mix if i % 3 == 1 else add)
            args += [prev, far]
    tape = ft.Tape.from_arrays(ops, args, consts, [n_pre + 29], n_in)
    lo, hi = spec.domain[0]
    x = [lo + 0.37 * (hi - lo), 0.3]
    for seg in (1, 2, 5):
        assert_same_as_store_all(checkpointed(tape, 1, segment_length=seg), x)


def test_several_outputs_and_outputs_that_are_inputs_or_crossing_slots():
    tape = random_local(3_000, n_inputs=10, seed=2)
    a = tape.to_arrays()
    n_pre = tape.n_inputs + tape.n_consts
    outs = [a["outputs"][0], 3, n_pre + 10, n_pre + 1500, n_pre + 2999]
    multi = ft.Tape.from_arrays(a["ops"], a["args"], a["consts"], outs, a["n_inputs"])
    x = np.linspace(0.1, 0.9, 10)
    ct = checkpointed(multi, 1, segment_length=64)
    for k in range(len(outs)):
        assert_same_as_store_all(ct, x, output=k)


def _peak_of(fn):
    fn()  # compile and warm the dispatcher
    return traced_peak(fn)


def test_peak_memory_measured_by_tracemalloc_stays_within_the_budget():
    n = 200_000
    tape = chain(n, "sin")
    limit = int(72 * math.sqrt(n))  # about 2 sqrt(n) values (see docs/store-vs-recompute.md)
    ct = checkpointed(tape, limit)
    rep = ct.report
    assert rep.kind == "segments" and rep.within_budget, rep
    peak = _peak_of(lambda: ct.value_and_grad([0.5]))
    # Per call: the work arrays (the plan's arrays were allocated before).  The slack, the
    # documented constant, is NumPy's array headers and Numba's argument dispatch.
    assert peak <= ct.plan.work_nbytes + 4096, (peak, ct.plan)
    assert peak >= ct.plan.work_nbytes - 1024
    assert rep.peak_nbytes <= limit
    # The plain gradient, measured the same way (a fresh tape object allocates its buffers).
    full_peak = _peak_of(lambda: tape.with_grad_mode("stored").value_and_grad([0.5]))
    assert full_peak >= 0.9 * store_all_nbytes(tape)
    assert full_peak > 100 * peak


def test_a_graph_where_every_value_is_read_far_away_is_reported_not_hidden():
    # y_i = sin(y_{i-1}); output = sum of all y_i, summed at the end: every value crosses
    # every boundary up to the summation, so segmenting cannot save memory.
    g = ft.Graph()
    (w,) = g.inputs(1)
    ys, y = [], w
    for _ in range(3000):
        y = ft.sin(y)
        ys.append(y)
    g.output(ft.sum(ys))
    tape = ft.compile(g, optimize=False)  # interleave would move the sums next to the sines
    limit = store_all_nbytes(tape) // 4
    with pytest.warns(CheckpointWarning, match="cannot save memory|below the smallest"):
        ct = checkpointed(tape, limit)
    assert not ct.report.within_budget and ct.report.note
    assert ct.report.peak_nbytes > limit
    assert_same_as_store_all(ct, [0.3])
    # The plan itself shows why: about one checkpoint per instruction.
    assert plan_nbytes(tape, 64).n_cross > 0.45 * tape.n_instructions


def test_store_all_when_it_fits_and_errors():
    tape = chain(100, "tanh")
    ct = checkpointed(tape, 10**9)
    assert ct.report.kind == "store-all" and ct.plan is None
    assert_same_as_store_all(ct, [0.2])
    assert "segments" in repr(checkpointed(tape, 1, segment_length=10))
    with pytest.raises(ValueError, match="memory_limit"):
        checkpointed(tape, 0)
    with pytest.raises(TypeError, match="memory_limit"):
        checkpointed(tape, 1e6)
    with pytest.raises(TypeError, match="Tape"):
        checkpointed("tape", 10)
    with pytest.raises(ValueError, match="segment_length"):
        checkpointed(tape, 10, segment_length=0)
    with pytest.raises(ValueError, match="x has 2 entries"):
        checkpointed(tape, 1, segment_length=10).value_and_grad([1.0, 2.0])


def test_compile_memory_limit_keyword():
    g = ft.Graph()
    x = g.inputs(3)
    y = x[0]
    for i in range(2000):
        y = ft.tanh(y * x[1 + i % 2]) + 0.5 * x[i % 3]
    g.output(y)
    plain = ft.compile(g)
    ct = ft.compile(g, memory_limit=store_all_nbytes(plain) // 4)
    assert ct.report.kind == "segments" and ct.report.within_budget, ct.report
    assert_same_as_store_all(ct, [0.3, 0.9, -0.7])
    assert ct.report.peak_nbytes <= store_all_nbytes(plain) // 4


@pytest.mark.slow
def test_ten_million_node_chain_with_about_two_sqrt_n_values():
    n = 10_000_000
    tape = chain(n, "sin")
    ct = checkpointed(tape, int(72 * math.sqrt(n)))
    assert ct.report.kind == "segments" and ct.report.within_budget
    assert ct.plan.n_cross + ct.plan.seg_len < 2.2 * math.sqrt(n)
    assert_same_as_store_all(ct, [0.5])
