"""Native pieces compiled in worker processes (fasttape/native/workers.py)."""

from __future__ import annotations

import numpy as np
import pytest

import fasttape as ft
from fasttape.bench import families
from fasttape.native import machine, native, workers


def test_pieces_compiled_in_workers_give_the_same_code():
    tape = families.random_local(3000)
    x = np.random.default_rng(0).uniform(0.1, 0.9, tape.n_inputs)
    here = native(tape, piece_size=500, cache_entries=False, processes=1)
    there = native(tape, piece_size=500, cache_entries=False, processes=2)
    assert there.n_pieces == here.n_pieces >= 3  # of its live instructions
    v1, g1 = here.value_and_grad(x)
    v2, g2 = there.value_and_grad(x)
    v0, g0 = tape.value_and_grad(x)
    assert v0 == v1 == v2
    np.testing.assert_array_equal(g1.view(np.int64), g0.view(np.int64))
    np.testing.assert_array_equal(g2.view(np.int64), g0.view(np.int64))


def test_a_worker_returns_the_object_code_of_this_process():
    text = machine.header() + 'define double @"f"(double %x) {\n  ret double %x\n}\n'
    here = machine.compile_module(text, 1, with_library=False)
    (there,) = list(workers.compile_in_workers(iter([(text, 1)]), 1))
    assert here == there


def test_a_worker_error_is_raised_here():
    with pytest.raises(RuntimeError, match="native compile worker failed"):
        list(workers.compile_in_workers(iter([("this is not LLVM IR", 0)]), 1))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_processes_must_be_a_positive_int(bad):
    tape = ft.compile(ft.trace(lambda v: v[0] * v[1], 2))
    with pytest.raises(ValueError, match="processes must be a positive int"):
        native(tape, cache_entries=False, processes=bad)
